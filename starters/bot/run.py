"""`cardflow bot run`: the customers' Telegram bot, long-polling the Bot API
(CARDFLOW_TELEGRAM_API_URL; unset, the simulators' /telegram) with the bot's
token, and calling cardflow's API at CARDFLOW_GATEWAY_URL with its key
(CARDFLOW_BOT_API_KEY). `cardflow dev up` runs it as the part `bot`."""

from __future__ import annotations

import asyncio
import logging

import typer

from starters import console
from workers.secrets import telegram_bot_token
from workers.settings import Settings

log = logging.getLogger("cardflow.bot")

BOT_SCOPES = ("telegram:link", "customers:read", "processes:start")
# How long one getUpdates waits for an update (the Bot API allows up to 50 s).
POLLING_TIMEOUT_SECONDS = 10

bot_app = typer.Typer(help="The customers' Telegram bot.", no_args_is_help=True)


def telegram_base_url(settings: Settings) -> str:
    """Where the Bot API is: the configured one, else the simulators'."""
    if settings.telegram_api_url:
        return settings.telegram_api_url.rstrip("/")
    return f"{settings.providers_base_url}/telegram"


async def run_bot(settings: Settings) -> None:
    from starters.bot.api import CardflowApi
    from starters.bot.handlers import dispatcher
    from starters.bot.retries import retrying_bot

    if settings.bot_api_key is None:
        raise typer.BadParameter(
            "set CARDFLOW_BOT_API_KEY: cardflow apikey create --name bot "
            + " ".join(f"--scope {scope}" for scope in BOT_SCOPES)
        )
    api = CardflowApi(settings.gateway_base_url, settings.bot_api_key.get_secret_value())
    bot = retrying_bot(telegram_bot_token(settings), telegram_base_url(settings))
    try:
        me = await bot.get_me()
        log.info("bot @%s polls for updates", me.username)
        await dispatcher(api, settings.webapp_page_url).start_polling(
            bot, polling_timeout=POLLING_TIMEOUT_SECONDS, handle_signals=True
        )
    finally:
        await bot.session.close()
        await api.aclose()


@bot_app.command("run")
def bot_run() -> None:
    """Run the bot until stopped."""
    asyncio.run(run_bot(console.settings()))
