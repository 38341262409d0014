"""Notification channels: email, push and Telegram sends, recorded and listable.

    POST /notify/v1/messages          send one message on one channel
    GET  /notify/v1/messages          list, oldest first, filtered by channel and recipient
    GET  /notify/v1/messages/{id}     read one back

A sent message has status `sent`; on a channel made to fail it has status
`failed` with a reason. A message carrying a `dedupe_key` is sent at most
once per key: a later send with that key, under any Idempotency-Key, returns
the message already sent (200 instead of 201) and sends nothing. A failed
send does not hold the key, so the same notification can be tried again.

Webhooks, with the message: `message.delivered` for each sent message (the
simulated channels deliver at once; the receipt still arrives asynchronously,
as a real one does) and `message.failed` for each failed one.

Options (PUT /_admin/options/notify), read on every request:
    failing_channels   channels whose sends fail, e.g. ["telegram"] ([])
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Query, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from simulators.framework.context import SimulatorContext
from simulators.framework.paging import page_after
from simulators.framework.store import now_iso

NAME = "notify"

MESSAGES = "notify.message"
DEDUPE_KEYS = "notify.dedupe"

Channel = Literal["email", "push", "telegram"]
MessageStatus = Literal["sent", "failed"]

# RFC 5321's limit on a forward path.
EMAIL_ADDRESS_CHARS_MAX = 254
EMAIL_SUBJECT_CHARS_MAX = 255
EMAIL_BODY_CHARS_MAX = 100_000
# APNs and FCM both cap a payload at 4 KB; the text leaves room for the rest.
PUSH_BODY_CHARS_MAX = 2_000
PUSH_TOKEN_CHARS_MIN = 8
PUSH_TOKEN_CHARS_MAX = 4_096
# Telegram chat ids are signed 64-bit integers.
TELEGRAM_CHAT_ID_CHARS_MAX = 20
# Telegram's Bot API limit on one message's text.
TELEGRAM_TEXT_CHARS_MAX = 4_096
RECIPIENT_CHARS_MAX = {
    "email": EMAIL_ADDRESS_CHARS_MAX,
    "push": PUSH_TOKEN_CHARS_MAX,
    "telegram": TELEGRAM_CHAT_ID_CHARS_MAX,
}
BODY_CHARS_MAX = {
    "email": EMAIL_BODY_CHARS_MAX,
    "push": PUSH_BODY_CHARS_MAX,
    "telegram": TELEGRAM_TEXT_CHARS_MAX,
}
TEMPLATE_CHARS_MAX = 100
DEDUPE_KEY_CHARS_MAX = 255
MESSAGE_ID_CHARS_MAX = 64
MESSAGES_PAGE_SIZE_DEFAULT = 50
MESSAGES_PAGE_SIZE_MAX = 200

RECIPIENT_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "email": (re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$"), "an email address"),
    # APNs tokens are hex; FCM tokens add ':', '-' and '_'.
    "push": (re.compile(rf"^[A-Za-z0-9:_\-.]{{{PUSH_TOKEN_CHARS_MIN},}}$"), "a device token"),
    # Private chats have positive ids; groups and channels negative ones.
    "telegram": (re.compile(r"^-?[0-9]+$"), "a numeric Telegram chat id"),
}


class MessageIn(BaseModel):
    """One message to send. Checked per channel, so every error names its field."""

    model_config = ConfigDict(extra="forbid")

    # Declared first: the validators below read it.
    channel: Channel
    to: str = Field(min_length=1, max_length=max(RECIPIENT_CHARS_MAX.values()))
    subject: str | None = Field(
        default=None, max_length=EMAIL_SUBJECT_CHARS_MAX, validate_default=True
    )
    body: str = Field(min_length=1, max_length=EMAIL_BODY_CHARS_MAX)
    template: str | None = Field(
        default=None, max_length=TEMPLATE_CHARS_MAX, pattern=r"^[a-z0-9_.\-]+$"
    )
    dedupe_key: str | None = Field(default=None, min_length=1, max_length=DEDUPE_KEY_CHARS_MAX)

    @field_validator("to")
    @classmethod
    def _recipient_fits_channel(cls, to: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        if channel is None:  # the channel's own error is already reported
            return to
        pattern, expected = RECIPIENT_PATTERNS[channel]
        if not pattern.match(to):
            raise ValueError(f"a {channel} recipient must be {expected}")
        if len(to) > RECIPIENT_CHARS_MAX[channel]:
            raise ValueError(
                f"a {channel} recipient has at most {RECIPIENT_CHARS_MAX[channel]} characters"
            )
        return to

    @field_validator("subject")
    @classmethod
    def _subject_for_email_only(cls, subject: str | None, info: ValidationInfo) -> str | None:
        channel = info.data.get("channel")
        if channel == "email" and not subject:
            raise ValueError("an email needs a subject")
        if channel not in (None, "email") and subject is not None:
            raise ValueError(f"a {channel} message has no subject")
        return subject

    @field_validator("body")
    @classmethod
    def _body_fits_channel(cls, body: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        if channel is not None and len(body) > BODY_CHARS_MAX[channel]:
            raise ValueError(f"a {channel} body has at most {BODY_CHARS_MAX[channel]} characters")
        return body


class Message(BaseModel):
    id: str
    channel: Channel
    to: str
    subject: str | None
    body: str
    template: str | None
    dedupe_key: str | None
    status: MessageStatus
    failure_reason: str | None
    created_at: str
    delivered_at: str | None


class MessagePage(BaseModel):
    data: list[Message]
    has_more: bool


FAILING_CHANNELS = TypeAdapter(list[Channel])


def create(context: SimulatorContext) -> FastAPI:
    app = context.app(title="Notification channels (simulated)")

    def failing_channels() -> list[Channel]:
        try:
            return FAILING_CHANNELS.validate_python(context.option(NAME, "failing_channels", []))
        except ValidationError as error:
            raise HTTPException(status_code=500, detail=f"bad notify options: {error}") from None

    @app.post("/v1/messages", status_code=201)
    async def send_message(body: MessageIn, response: Response) -> Message:
        """Send the message: 201 with status sent (webhook message.delivered), or
        status failed on a failing channel (webhook message.failed). With a
        dedupe_key already sent, 200 with that message and nothing sent."""
        # No await between the dedupe check and recording the key, so two
        # concurrent sends with one key cannot both pass it.
        if body.dedupe_key is not None:
            held = context.store.get(DEDUPE_KEYS, body.dedupe_key)
            if held is not None:
                original = context.store.get(MESSAGES, held["message_id"])
                assert original is not None, f"dedupe key {body.dedupe_key} names no message"
                response.status_code = 200
                return Message(**original)
        stamp = now_iso()
        failed = body.channel in failing_channels()
        message = Message(
            **body.model_dump(),
            id=f"msg_{context.store.next_number(MESSAGES):06d}",
            status="failed" if failed else "sent",
            failure_reason=f"the {body.channel} channel is unavailable" if failed else None,
            created_at=stamp,
            delivered_at=None if failed else stamp,
        )
        context.store.put(MESSAGES, message.id, message.model_dump(mode="json"))
        if not failed and body.dedupe_key is not None:
            context.store.put(DEDUPE_KEYS, body.dedupe_key, {"message_id": message.id})
        event_type = "message.failed" if failed else "message.delivered"
        context.outbox.emit(NAME, event_type, message.model_dump(mode="json"))
        return message

    @app.get("/v1/messages")
    async def list_messages(
        channel: Channel | None = None,
        to: Annotated[str | None, Query(max_length=max(RECIPIENT_CHARS_MAX.values()))] = None,
        limit: Annotated[int, Query(ge=1, le=MESSAGES_PAGE_SIZE_MAX)] = MESSAGES_PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(max_length=MESSAGE_ID_CHARS_MAX)] = None,
    ) -> MessagePage:
        """Messages sent (or failed), oldest first, only those on `channel` and to
        `to` when given, `limit` at a time; pass the last id as `starting_after`
        for the next page."""
        messages = [
            found
            for found in context.store.list(MESSAGES)
            if (channel is None or found["channel"] == channel)
            and (to is None or found["to"] == to)
        ]
        page, has_more = page_after(
            messages,
            key="id",
            starting_after=starting_after,
            limit=limit,
            missing=f"no message {starting_after} in this listing",
        )
        return MessagePage(data=[Message(**found) for found in page], has_more=has_more)

    @app.get("/v1/messages/{message_id}")
    async def get_message(message_id: str) -> Message:
        """One message as recorded, with its status."""
        found = context.store.get(MESSAGES, message_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no message {message_id}")
        return Message(**found)

    return app
