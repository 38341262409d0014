"""Client of the Telegram Bot API for the messages cardflow's bot sends to
customers (the bot's conversation itself is starters/bot/, with aiogram).

The API is `{base}/bot{token}/{method}`: the client's base URL carries the
token, so the paths its errors name never do. Its errors are the Bot API's
`{"ok": false, "error_code", "description", "parameters": {"retry_after"}}`,
classified by the provider boundary like any provider's (a 429 waits
`retry_after`; 403, the user blocked the bot, is not retried).
"""

from __future__ import annotations

from pydantic import BaseModel

from activities.providers.http import ProviderClient
from schemas.providers import TELEGRAM

# The Bot API's limit on one message's text.
TEXT_CHARS_MAX = 4_096


class SentMessage(BaseModel):
    message_id: int


class SendMessageAnswer(BaseModel):
    ok: bool
    result: SentMessage


class TelegramBotClient(ProviderClient):
    provider = TELEGRAM

    def __init__(self, api_url: str, token: str) -> None:
        super().__init__(f"{api_url.rstrip('/')}/bot{token}")

    async def send_message(self, chat_id: int, text: str, *, idempotency_key: str) -> int:
        """Send `text` to the chat; the message's id. The Bot API ignores the
        key: sending again sends again (the caller remembers what it sent)."""
        answer = await self.call(
            "POST",
            "/sendMessage",
            SendMessageAnswer,
            json={"chat_id": chat_id, "text": text[:TEXT_CHARS_MAX]},
            idempotency_key=idempotency_key,
        )
        return answer.result.message_id
