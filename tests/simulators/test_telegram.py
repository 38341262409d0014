"""The Telegram simulator, driven by aiogram as the bot drives the real Bot
API: updates by long poll, messages with inline keyboards, button presses
answered, photos, the WebApp's initData, and Telegram's 429 and 5xx."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup
from aiogram.utils.web_app import safe_parse_webapp_init_data

from tests import polling

BOT_ID = 7_000_000_077


def new_token() -> str:
    return f"{BOT_ID}:{uuid.uuid4().hex}"


@pytest_asyncio.fixture(loop_scope="session")
async def bot(sim: Any) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(sim.provider_url("telegram")))
    running = Bot(new_token(), session=session)
    try:
        yield running
    finally:
        await running.session.close()


def users(sim: Any) -> httpx.Client:
    return httpx.Client(base_url=f"{sim.provider_url('telegram')}/simulate/bots/{BOT_ID}")


async def test_a_user_talks_and_presses_a_button_and_the_bot_answers_once(
    bot: Bot, sim: Any
) -> None:
    me = await bot.get_me()
    assert (me.id, me.is_bot) == (BOT_ID, True)
    user_id = 4_000 + uuid.uuid4().int % 1_000_000
    with users(sim) as telegram:
        said = telegram.post(f"/users/{user_id}/messages", json={"text": "/start link-1"})
        assert said.status_code == 201, said.text
    [update] = await bot.get_updates(offset=0, timeout=1)
    assert update.message is not None and update.message.text == "/start link-1"
    assert update.message.from_user is not None and update.message.from_user.id == user_id
    # Confirmed by the next offset: not handed out again.
    assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == []

    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Freeze", callback_data="freeze:card_1")]]
    )
    sent = await bot.send_message(user_id, "Your card", reply_markup=keyboard)
    with users(sim) as telegram:
        shown = telegram.get(f"/chats/{user_id}/messages").json()["data"]
        assert [m["text"] for m in shown] == ["Your card"]
        assert shown[0]["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == (
            "freeze:card_1"
        )
        pressed = telegram.post(
            f"/users/{user_id}/presses",
            json={"message_id": sent.message_id, "data": "freeze:card_1"},
        ).json()
    [press] = await bot.get_updates(offset=update.update_id + 1, timeout=1)
    assert press.callback_query is not None and press.callback_query.data == "freeze:card_1"
    assert await bot.answer_callback_query(press.callback_query.id, text="Frozen")
    await bot.edit_message_reply_markup(chat_id=user_id, message_id=sent.message_id)
    with users(sim) as telegram:
        answered = telegram.get(f"/presses/{pressed['callback_query_id']}").json()
        assert answered == {"answered": True, "answer_text": "Frozen", "data": "freeze:card_1"}
        [edited] = telegram.get(f"/chats/{user_id}/messages").json()["data"]
        assert "reply_markup" not in edited and edited["edit_date"]

    photo = await bot.send_photo(
        user_id, BufferedInputFile(b"\x89PNG fake qr", filename="qr.png"), caption="Deposit"
    )
    assert photo.photo is not None and photo.photo[-1].file_size == len(b"\x89PNG fake qr")


async def test_a_long_poll_returns_as_soon_as_a_user_writes(bot: Bot, sim: Any) -> None:
    user_id = 5_000 + uuid.uuid4().int % 1_000_000
    backlog = await bot.get_updates(offset=0, timeout=0)
    offset = backlog[-1].update_id + 1 if backlog else 0
    waiting = asyncio.ensure_future(bot.get_updates(offset=offset, timeout=20))
    async with httpx.AsyncClient(
        base_url=f"{sim.provider_url('telegram')}/simulate/bots/{BOT_ID}"
    ) as telegram:

        async def poll_waits() -> bool:
            return bool((await telegram.get("/polls")).json()["waiting"])

        # The user writes once Telegram reports the bot's poll waiting.
        await polling.eventually(poll_waits, "the bot's long poll waits")
        await telegram.post(f"/users/{user_id}/messages", json={"text": "balance"})
    # Answered at the message, well before the poll's 20 s.
    updates = await asyncio.wait_for(waiting, 10)
    assert [u.message.text for u in updates if u.message] == ["balance"]


async def test_a_newer_poll_ends_a_waiting_one_with_409_and_update_ids_only_grow(
    bot: Bot, sim: Any
) -> None:
    """A bot instance that stopped while its long poll waited, and the one
    started after it: the old poll ends with Telegram's 409 and confirms
    nothing, even across a reset of the simulator to lower ids."""
    user_id = 5_000 + uuid.uuid4().int % 1_000_000
    async with httpx.AsyncClient(
        base_url=f"{sim.provider_url('telegram')}/simulate/bots/{BOT_ID}"
    ) as telegram:
        await telegram.post(f"/users/{user_id}/messages", json={"text": "first"})
        [first] = [u for u in await bot.get_updates(offset=0, timeout=0) if u.message]
        stale = asyncio.ensure_future(bot.get_updates(offset=first.update_id + 1, timeout=20))

        async def old_poll_waits() -> bool:
            return bool((await telegram.get("/polls")).json()["waiting"])

        await polling.eventually(old_poll_waits, "the old poll waits")
        sim.admin("POST", "/reset", {"id_offset": 0})
        fresh = asyncio.ensure_future(bot.get_updates(offset=0, timeout=20))
        with pytest.raises(TelegramConflictError, match="terminated by other getUpdates"):
            await asyncio.wait_for(stale, 10)
        await telegram.post(f"/users/{user_id}/messages", json={"text": "second"})
        updates = await asyncio.wait_for(fresh, 10)
    [second] = [u for u in updates if u.message]
    assert second.message is not None and second.message.text == "second"
    assert second.update_id > first.update_id


async def test_the_webapp_init_data_verifies_with_the_bots_token_only(bot: Bot, sim: Any) -> None:
    await bot.get_me()
    with users(sim) as telegram:
        init_data = telegram.post("/users/4242/webapp").json()["init_data"]
    parsed = safe_parse_webapp_init_data(bot.token, init_data)
    assert parsed.user is not None and parsed.user.id == 4242
    with pytest.raises(ValueError):
        safe_parse_webapp_init_data(f"{BOT_ID}:{'x' * 32}", init_data)


async def test_telegrams_429_and_5xx_reach_the_bot_as_aiogram_names_them(
    bot: Bot, sim: Any
) -> None:
    sim.admin("PUT", "/options/telegram", {"too_many_requests": 1, "retry_after": 3})
    with pytest.raises(TelegramRetryAfter) as throttled:
        await bot.send_message(4242, "hello")
    assert throttled.value.retry_after == 3
    sim.admin("PUT", "/options/telegram", {"server_errors": 1})
    with pytest.raises(TelegramServerError):
        await bot.send_message(4242, "hello")
    assert (await bot.send_message(4242, "hello")).text == "hello"
    session = AiohttpSession(api=TelegramAPIServer.from_base(sim.provider_url("telegram")))
    stranger = Bot("1:" + "a" * 10, session=session)
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await stranger.get_me()
    finally:
        await session.close()
