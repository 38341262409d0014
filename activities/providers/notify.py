"""Client of the notification channels: email, push and Telegram."""

from __future__ import annotations

from typing import Any

from activities.providers.http import ProviderClient
from schemas.notify import Channel, Message, MessagePage
from schemas.providers import NOTIFY


class NotifyClient(ProviderClient):
    provider = NOTIFY

    async def send_message(
        self,
        *,
        channel: Channel,
        to: str,
        body: str,
        idempotency_key: str,
        subject: str | None = None,
        template: str | None = None,
        dedupe_key: str | None = None,
    ) -> Message:
        """Send one message. With a `dedupe_key` already sent, the provider sends
        nothing and this returns the message sent before."""
        payload: dict[str, Any] = {"channel": channel.value, "to": to, "body": body}
        optional = {"subject": subject, "template": template, "dedupe_key": dedupe_key}
        payload |= {name: value for name, value in optional.items() if value is not None}
        return await self.call(
            "POST", "/v1/messages", Message, json=payload, idempotency_key=idempotency_key
        )

    async def get_message(self, message_id: str) -> Message:
        return await self.call("GET", f"/v1/messages/{message_id}", Message)

    async def list_messages(
        self,
        *,
        channel: Channel | None = None,
        to: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> MessagePage:
        """One page of messages, oldest first, filtered by channel and recipient
        when given; the provider's default page size unless `limit` is given."""
        filters = {
            "channel": channel.value if channel is not None else None,
            "to": to,
            "limit": limit,
            "starting_after": starting_after,
        }
        params = {name: value for name, value in filters.items() if value is not None}
        return await self.call("GET", "/v1/messages", MessagePage, params=params)
