"""A customer who chose Telegram is told through the customers' bot, by the
Bot API (the Telegram simulator): Telegram's 429 waits its `retry_after`, a
5xx is retried, and a retried notification sends nothing twice."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.customers import CustomerStore
from activities.providers.activities import ProviderActivities, ProviderClients
from schemas.customers import Notification
from schemas.notify import Channel
from tests.customers import profile

BOT_ID = 7_200_000_042
TOKEN = f"{BOT_ID}:" + "t" * 35


async def bot_said(sim: Any, chat: int) -> list[str]:
    async with httpx.AsyncClient(base_url=sim.provider_url("telegram")) as telegram:
        answer = await telegram.get(f"/simulate/bots/{BOT_ID}/chats/{chat}/messages")
    return [message["text"] for message in answer.json()["data"]]


async def test_telegram_notifications_go_through_the_bot_once_through_429_and_5xx(
    sim: Any, ledger_pool: asyncpg.Pool
) -> None:
    chat = uuid.uuid4().int % 10**12
    customer = profile(
        telegram_chat_id=str(chat),
        email="ada@example.com",
        preferred_channels=[Channel.TELEGRAM, Channel.EMAIL],
    )
    await CustomerStore(ledger_pool).save(customer)
    clients = ProviderClients(sim.url, telegram_bot_token=TOKEN)
    providers = ProviderActivities(clients, ledger_pool)
    notification = Notification(
        key=f"topup/{chat}", customer_id=customer.customer_id, subject="Top-up", body="25.00 EUR"
    )
    try:
        # Telegram throttles the send for 7 s: the activity's retry waits that long.
        sim.admin(
            "PUT",
            "/options/telegram",
            {"fault_methods": ["sendMessage"], "too_many_requests": 1, "retry_after": 7},
        )
        with pytest.raises(ApplicationError) as throttled:
            await providers.notify_customer(notification)
        assert throttled.value.type == "ProviderRateLimited"
        assert throttled.value.next_retry_delay == timedelta(seconds=7)
        assert not throttled.value.non_retryable
        # Then it fails with a 502 (retryable), then goes through.
        sim.admin("PUT", "/options/telegram", {"server_errors": 1})
        with pytest.raises(ApplicationError) as failed:
            await providers.notify_customer(notification)
        assert failed.value.type == "ProviderUnavailable" and not failed.value.non_retryable
        sim.admin("PUT", "/options/telegram", {})
        receipt = await providers.notify_customer(notification)
        again = await providers.notify_customer(notification)
    finally:
        sim.admin("PUT", "/options/telegram", {})
        await clients.aclose()
    assert receipt == again
    assert receipt.channels == [Channel.TELEGRAM, Channel.EMAIL]
    assert await bot_said(sim, chat) == ["Top-up\n\n25.00 EUR"]
    # The bot's token is in no error, though it is in every Bot API path.
    assert TOKEN not in str(throttled.value) and TOKEN not in str(failed.value)


async def test_telegram_chosen_without_a_bot_token_is_a_final_error(
    sim: Any, ledger_pool: asyncpg.Pool
) -> None:
    customer = profile(telegram_chat_id="42", preferred_channels=[Channel.TELEGRAM])
    await CustomerStore(ledger_pool).save(customer)
    clients = ProviderClients(sim.url)
    try:
        with pytest.raises(ApplicationError) as refused:
            await ProviderActivities(clients, ledger_pool).notify_customer(
                Notification(key="k", customer_id=customer.customer_id, subject="s", body="b")
            )
    finally:
        await clients.aclose()
    assert refused.value.type == "TelegramNotConfigured" and refused.value.non_retryable


async def test_a_customer_who_blocked_the_bot_is_told_on_their_other_channels(
    sim: Any, ledger_pool: asyncpg.Pool
) -> None:
    chat = uuid.uuid4().int % 10**12
    customer = profile(
        telegram_chat_id=str(chat),
        email="grace@example.com",
        preferred_channels=[Channel.TELEGRAM, Channel.EMAIL],
    )
    await CustomerStore(ledger_pool).save(customer)
    clients = ProviderClients(sim.url, telegram_bot_token=TOKEN)
    sim.admin("PUT", "/options/telegram", {"blocked_chats": [chat]})
    try:
        receipt = await ProviderActivities(clients, ledger_pool).notify_customer(
            Notification(
                key=f"blocked/{chat}", customer_id=customer.customer_id, subject="s", body="b"
            )
        )
    finally:
        sim.admin("PUT", "/options/telegram", {"blocked_chats": []})
        await clients.aclose()
    # Not a failure of the process that tells them: the email went, Telegram is skipped.
    assert receipt.channels == [Channel.EMAIL]
    assert await bot_said(sim, chat) == []
