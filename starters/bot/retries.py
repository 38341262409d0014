"""The bot's calls to the Bot API, retried as Telegram asks: after a 429 it
waits the `retry_after` Telegram names; after a 5xx or a lost connection it
backs off. Past the attempts below the call fails (the person's next message
tries again). getUpdates is the dispatcher's own loop, which backs off itself."""

from __future__ import annotations

from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import Response
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

ATTEMPTS_MAX = 5
BACKOFF_SECONDS_MAX = 30.0
# Telegram's asked wait is kept, up to this (a longer one fails the call).
RETRY_AFTER_SECONDS_MAX = 60.0


def _wait(state: Any) -> float:
    """Telegram's retry_after after a 429, else exponential backoff."""
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, TelegramRetryAfter):
        return float(min(error.retry_after, RETRY_AFTER_SECONDS_MAX))
    backoff: float = wait_exponential(multiplier=0.5, max=BACKOFF_SECONDS_MAX)(state)
    return backoff


class RetriedCalls(BaseRequestMiddleware):
    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[Any],
        bot: Bot,
        method: TelegramMethod[Any],
    ) -> Response[Any]:
        if isinstance(method, GetUpdates):
            return await make_request(bot, method)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(
                (TelegramRetryAfter, TelegramServerError, TelegramNetworkError)
            ),
            wait=_wait,
            stop=stop_after_attempt(ATTEMPTS_MAX),
            reraise=True,
        ):
            with attempt:
                return await make_request(bot, method)
        raise AssertionError("unreachable: the last attempt returned or raised")


def retrying_bot(token: str, api_base_url: str) -> Bot:
    """A bot calling the Bot API at `api_base_url`, each call retried as above."""
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base_url))
    session.middleware(RetriedCalls())
    return Bot(token, session=session)
