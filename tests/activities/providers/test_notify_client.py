"""The notification client against the real simulator: its contract and how it meets faults."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.providers.notify import NotifyClient
from schemas.notify import Channel, Message

FAST_TIMEOUT = httpx.Timeout(connect=1.0, read=1.0, write=1.0, pool=1.0)


def client(sim: Any, **kwargs: Any) -> NotifyClient:
    return NotifyClient(sim.provider_url("notify"), **kwargs)


async def send_email(notify: NotifyClient, key: str, dedupe_key: str | None = None) -> Message:
    return await notify.send_message(
        channel=Channel.EMAIL,
        to="ada@example.com",
        subject="Top-up received",
        body="250.00 EUR is on your card.",
        template="topup.credited",
        dedupe_key=dedupe_key,
        idempotency_key=key,
    )


async def test_messages_are_sent_read_and_listed_through_the_client(
    sim: Any, webhook_sink: Any
) -> None:
    async with client(sim) as notify:
        email = await send_email(notify, "email-1")
        chat = await notify.send_message(
            channel=Channel.TELEGRAM, to="482910", body="Card frozen", idempotency_key="tg-1"
        )
        assert (email.status, email.channel) == ("sent", Channel.EMAIL)
        assert email.template == "topup.credited" and email.subject == "Top-up received"
        assert await notify.get_message(email.id) == email
        assert (await notify.list_messages()).data == [email, chat]
        assert (await notify.list_messages(channel=Channel.TELEGRAM, to="482910")).data == [chat]
        first = await notify.list_messages(limit=1)
        assert first.data == [email] and first.has_more
        rest = await notify.list_messages(limit=1, starting_after=email.id)
        assert rest.data == [chat] and not rest.has_more
    received = await webhook_sink.wait_for(2)
    assert [r.event["data"]["id"] for r in received] == [email.id, chat.id]


async def test_a_dedupe_key_returns_the_first_message_under_a_new_idempotency_key(
    sim: Any, webhook_sink: Any
) -> None:
    async with client(sim) as notify:
        first = await send_email(notify, "send-1", dedupe_key="topup/bank/INV-1")
        again = await send_email(notify, "send-2", dedupe_key="topup/bank/INV-1")
        assert again == first
        assert len((await notify.list_messages()).data) == 1
    await webhook_sink.wait_for(1)


async def test_a_dropped_connection_on_a_keyed_send_is_retried_leaving_one_message(
    sim: Any, webhook_sink: Any
) -> None:
    sim.fault(path_prefix="/notify/v1/messages", kind="drop", times=1)
    async with client(sim) as notify:
        sent = await send_email(notify, "send-1")
        assert (await notify.list_messages()).data == [sent]
    [delivery] = await webhook_sink.wait_for(1)
    assert delivery.event["type"] == "message.delivered"


async def test_a_503_is_retryable_and_the_keyed_retry_sends_one_message(
    sim: Any, webhook_sink: Any
) -> None:
    sim.fault(path_prefix="/notify/v1/messages", kind="error", status=503, times=1)
    async with client(sim, timeout=FAST_TIMEOUT) as notify:
        with pytest.raises(ApplicationError) as error:
            await send_email(notify, "send-1")
        assert error.value.type == "ProviderUnavailable" and not error.value.non_retryable
        # Temporal's retry and any repeat of it, with the same key: one message.
        sent = await send_email(notify, "send-1")
        assert await send_email(notify, "send-1") == sent
        assert (await notify.list_messages()).data == [sent]
    await webhook_sink.wait_for(1)


async def test_unknown_messages_and_bad_recipients_are_final_errors(sim: Any) -> None:
    async with client(sim) as notify:
        with pytest.raises(ApplicationError) as missing:
            await notify.get_message("msg_none")
        with pytest.raises(ApplicationError) as rejected:
            await notify.send_message(
                channel=Channel.TELEGRAM, to="@ada", body="Hi", idempotency_key="tg-1"
            )
    assert missing.value.type == "ProviderNotFound" and missing.value.non_retryable
    assert rejected.value.type == "ProviderRejectedRequest" and rejected.value.non_retryable
    assert "at body.to" in str(rejected.value)
