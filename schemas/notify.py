"""What cardflow sends to and reads from the notification channels."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel


class Channel(StrEnum):
    EMAIL = "email"
    PUSH = "push"
    TELEGRAM = "telegram"


MessageStatus = Literal["sent", "failed"]


class Message(BaseModel):
    """A message as the channel recorded it: sent, or failed with a reason."""

    id: str
    channel: Channel
    to: str
    subject: str | None = None
    body: str
    template: str | None = None
    dedupe_key: str | None = None
    status: MessageStatus
    failure_reason: str | None = None
    created_at: str
    delivered_at: str | None = None


class MessagePage(BaseModel):
    """One page of messages, oldest first."""

    data: list[Message]
    has_more: bool
