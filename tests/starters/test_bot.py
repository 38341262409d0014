"""The customers' Telegram bot, end to end through the Telegram simulator and
the public API: a new person signs up, verifies at the KYC provider's page
the bot's messages hand them, is funded, gets a card and disputes a payment
from the list; a customer linked by the app's deep link sees the balance,
freezes the card once however often the button is pressed, and sees the
decline that follows with its reason; Telegram's 429 and 5xx are ridden
out; a button naming someone else's card does nothing."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
import segno

from activities.api_keys import SCOPE_CUSTOMERS_READ, SCOPE_PROCESSES_START, SCOPE_TELEGRAM_LINK
from activities.customers import CustomerStore
from activities.providers.tron import TronClient
from schemas.cards import CardInput
from schemas.disputes import DisputeStatusView
from schemas.issuer import CardState, DisputeOutcome
from schemas.money import Currency
from schemas.notify import Channel
from schemas.onboarding import OnboardingStatus
from starters import topup as starter
from starters.bot.api import CardflowApi
from starters.bot.handlers import QR_SCALE, CardPress, dispatcher
from starters.bot.retries import retrying_bot
from tests import polling
from tests.conftest import Platform
from tests.customers import (
    SHOP,
    authorize,
    bot_id,
    card_state,
    issuer,
    open_card,
    upload_at,
)
from workers.secrets import telegram_bot_token
from workflows.dispute import dispute_workflow_id
from workflows.onboarding import onboarding_workflow_id


@dataclass
class Chat:
    """One Telegram user talking to the bot, through the simulator."""

    telegram: httpx.AsyncClient
    bot_id: int
    user_id: int

    async def say(self, text: str) -> None:
        said = await self.telegram.post(
            f"/simulate/bots/{self.bot_id}/users/{self.user_id}/messages", json={"text": text}
        )
        assert said.status_code == 201, said.text

    async def press(self, message_id: int, data: str) -> str:
        pressed = await self.telegram.post(
            f"/simulate/bots/{self.bot_id}/users/{self.user_id}/presses",
            json={"message_id": message_id, "data": data},
        )
        assert pressed.status_code == 201, pressed.text
        query_id: str = pressed.json()["callback_query_id"]
        return query_id

    async def bot_said(self) -> list[dict[str, Any]]:
        answer = await self.telegram.get(
            f"/simulate/bots/{self.bot_id}/chats/{self.user_id}/messages"
        )
        said: list[dict[str, Any]] = answer.json()["data"]
        return said

    async def reply_to(self, text: str) -> dict[str, Any]:
        """Say `text` and wait for the bot's next message."""
        before = len(await self.bot_said())
        await self.say(text)

        async def answered() -> bool:
            return len(await self.bot_said()) > before

        await polling.eventually(answered, f"the bot answers {text!r}")
        return (await self.bot_said())[before]

    async def told(self, fragment: str) -> str:
        """Wait for a message of the bot's (an answer or a notification) that
        says `fragment`; its text."""

        async def said() -> list[str]:
            return [str(m.get("text") or m.get("caption")) for m in await self.bot_said()]

        found = await polling.until(
            said, lambda texts: any(fragment in text for text in texts), f"told {fragment!r}"
        )
        return next(text for text in found if fragment in text)

    async def answered(self, query_id: str) -> bool:
        found = await self.telegram.get(f"/simulate/bots/{self.bot_id}/presses/{query_id}")
        return bool(found.json()["answered"])


@pytest_asyncio.fixture(loop_scope="session")
async def chat(platform: Platform) -> AsyncIterator[Chat]:
    """A new Telegram user and the customers' bot, the one whose token the
    platform's gateway and workers know (they send its notifications)."""
    headers = await platform.key_headers(
        SCOPE_TELEGRAM_LINK, SCOPE_CUSTOMERS_READ, SCOPE_PROCESSES_START
    )
    api = CardflowApi(platform.gateway_url, headers["Authorization"].removeprefix("Bearer "))
    telegram_url = platform.sim.provider_url("telegram")
    bot = retrying_bot(telegram_bot_token(platform.settings), telegram_url)
    bot_dispatcher = dispatcher(api, f"{platform.gateway_url}/webapp/")
    polling_task = asyncio.ensure_future(
        bot_dispatcher.start_polling(bot, handle_signals=False, polling_timeout=1)
    )
    try:
        async with httpx.AsyncClient(base_url=telegram_url, timeout=10) as telegram:
            yield Chat(telegram, bot_id(platform), 4_000_000 + uuid.uuid4().int % 1_000_000)
    finally:
        # Stopped, not cancelled: a cancelled start_polling leaves its poller
        # running (aiogram waits on it without cancelling it), and the next
        # test's bot, the same one, would share its updates with it.
        if not polling_task.done():
            await bot_dispatcher.stop_polling()
        await polling_task
        await bot.session.close()
        await api.aclose()


async def test_linked_by_the_app_the_bot_shows_money_freezes_once_and_says_why_declined(
    platform: Platform, chat: Chat
) -> None:
    customer_id, card_id, card = await open_card(platform)
    not_yet = await chat.reply_to("/balance")
    assert "not linked" in not_yet["text"]
    app = await platform.key_headers(SCOPE_PROCESSES_START, customers=[customer_id])
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=app) as http:
        issued = await http.post(f"/v1/customers/{customer_id}/telegram-link")
    code = issued.json()["code"]
    linked = await chat.reply_to(f"/start {code}")
    assert "linked" in linked["text"]
    shown = await chat.reply_to("/balance")
    assert "USD: 100.00 USD available" in shown["text"]
    await topup_told(platform, chat, customer_id)
    await told_here_from_now_on(platform, chat, customer_id)
    await card_page_opened(platform, chat, customer_id)

    listed = await chat.reply_to("/cards")
    assert listed["text"] == f"Card {card_id} (virtual): open"
    [[button]] = listed["reply_markup"]["inline_keyboard"]
    assert button["text"] == "Freeze"
    # Pressed twice before the bot answers the first: one freeze.
    first = await chat.press(listed["message_id"], button["callback_data"])
    second = await chat.press(listed["message_id"], button["callback_data"])

    async def both_answered() -> bool:
        return await chat.answered(first) and await chat.answered(second)

    await polling.eventually(both_answered, "both presses are answered")
    state: CardInput = await card_state(card)
    assert state.state is CardState.PAUSED and state.changes == 1

    declined = await authorize(platform, card_id, 700)
    assert declined.status.value == "declined"

    async def decline_listed() -> bool:
        said = await chat.reply_to("/transactions")
        return "frozen" in said["text"]

    await polling.eventually(decline_listed, "the decline and its reason are listed")


async def told_here_from_now_on(platform: Platform, chat: Chat, customer_id: str) -> None:
    """/notifications: the customer chooses Telegram (pressed twice: set
    once), and the next top-up's receipt arrives here."""
    asked = await chat.reply_to("/notifications")
    assert asked["text"] == "You are told by email."
    [[button]] = asked["reply_markup"]["inline_keyboard"]
    assert button["text"] == "Tell me here in Telegram"
    presses = [await chat.press(asked["message_id"], button["callback_data"]) for _ in range(2)]

    async def both_answered() -> bool:
        return all([await chat.answered(press) for press in presses])

    await polling.eventually(both_answered, "both presses are answered")
    profile = await CustomerStore(platform.stack.pool).get(customer_id)
    assert profile.preferred_channels == [Channel.TELEGRAM, Channel.EMAIL]
    assert profile.telegram_chat_id == str(chat.user_id)
    await starter.simulate_bank_transfer(platform.settings, customer_id, 1_000, Currency.USD)
    receipt = await chat.told("Your top-up of")
    assert receipt.startswith("Your top-up of 9.73 USD is in your wallet")


async def card_page_opened(platform: Platform, chat: Chat, customer_id: str) -> None:
    """/app: the WebApp's button; Telegram opens it with initData signed for
    this user, by which the gateway knows them as their customer."""
    said = await chat.reply_to("/app")
    [[button]] = said["reply_markup"]["inline_keyboard"]
    assert button["web_app"] == {"url": f"{platform.gateway_url}/webapp/"}
    opened = await chat.telegram.post(f"/simulate/bots/{chat.bot_id}/users/{chat.user_id}/webapp")
    init_data = opened.json()["init_data"]
    async with httpx.AsyncClient(base_url=platform.gateway_url) as http:
        page = await http.get("/webapp/")
        me = await http.get("/webapp/v1/me", headers={"Authorization": f"tma {init_data}"})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert me.status_code == 200 and me.json()["customer_id"] == customer_id, me.text


async def topup_told(platform: Platform, chat: Chat, customer_id: str) -> None:
    """/topup: the bank reference, then the USDT address with its QR code."""
    before = len(await chat.bot_said())
    await chat.say("/topup")

    async def both() -> bool:
        return len(await chat.bot_said()) >= before + 2

    await polling.eventually(both, "the bot tells how to top up")
    bank, usdt = (await chat.bot_said())[before : before + 2]
    assert f"write {customer_id} as the payment reference" in bank["text"]
    async with TronClient(platform.sim.provider_url("tron")) as tron:
        address = (await tron.customer_address(customer_id)).address
    assert usdt["caption"] == f"USDT on Tron (TRC-20) to {address}"
    # The picture is the QR code of that very address.
    expected = io.BytesIO()
    segno.make(address, error="m").save(expected, kind="png", scale=QR_SCALE)
    [photo] = usdt["photo"]
    assert photo["file_size"] == len(expected.getvalue())
    assert photo["file_unique_id"] == hashlib.sha256(expected.getvalue()).hexdigest()[:16]


async def test_the_bot_answers_through_telegrams_429_and_5xx(
    platform: Platform, chat: Chat
) -> None:
    # Telegram throttles the bot's next answer (retry after 1 s), then fails two with 502.
    platform.sim.admin(
        "PUT",
        "/options/telegram",
        {"fault_methods": ["sendMessage"], "too_many_requests": 1, "retry_after": 1},
    )
    throttled = await chat.reply_to("/start")
    assert "not linked" in throttled["text"]
    platform.sim.admin("PUT", "/options/telegram", {"server_errors": 2})
    failed_twice = await chat.reply_to("/balance")
    assert "not linked" in failed_twice["text"]
    options = platform.sim.admin("PUT", "/options/telegram", {})
    # Both faults were taken by the answers, which got through all the same.
    assert (options["too_many_requests"], options["server_errors"]) == (0, 0)
    # Each answer was sent once, not once per attempt.
    assert [m["text"] for m in await chat.bot_said()].count(failed_twice["text"]) == 2


def test_only_the_bot_imports_aiogram() -> None:
    """aiogram's import costs a process 2.6 s and 170 MB: every command, the
    gateway and the workers start without it."""
    probe = (
        "import sys, starters.cli, starters.gateway.app, workers.run; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiogram'))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert found.stdout.strip() == "[]", found.stdout


async def test_a_new_person_signs_up_verifies_tops_up_gets_a_card_and_disputes_a_payment(
    platform: Platform, chat: Chat
) -> None:
    assert "/signup" in (await chat.reply_to("/start"))["text"]
    assert "first name" in (await chat.reply_to("/signup"))["text"]
    assert "last name" in (await chat.reply_to("Ada"))["text"]
    assert "date of birth" in (await chat.reply_to("Lovelace"))["text"]
    # A wrong answer is asked again; nothing is sent until the last one.
    assert "YYYY-MM-DD" in (await chat.reply_to("10/12/1990"))["text"]
    assert "three letters" in (await chat.reply_to("1990-12-10"))["text"]
    assert (await chat.reply_to("deu"))["text"].startswith("Thank you, Ada.")
    customer_id = f"tg-{chat.user_id}"

    # The onboarding sends the KYC provider's page here; the person uploads there.
    verify = await chat.told("Verify your identity")
    url = verify.split("Open ", 1)[1].split(" ", 1)[0]
    assert (await upload_at(url, "Ada Lovelace")).status_code == 201
    onboarding = platform.stack.client.get_workflow_handle(onboarding_workflow_id(customer_id))
    status = await polling.until(
        lambda: onboarding.query("status", result_type=OnboardingStatus),
        lambda found: found.stage == "waiting for the KYC result",
        "the check started by the upload is awaited",
    )
    decided = httpx.post(
        f"{platform.sim.provider_url('kyc')}/v1/simulate/applicants/{status.applicant_id}/decide",
        json={"result": "GREEN"},
        timeout=10,
    )
    assert decided.status_code == 200, decided.text
    await chat.told("Your identity is verified")

    # Funded by the bank transfer /topup asks for; the receipt comes here too.
    await starter.simulate_bank_transfer(platform.settings, customer_id, 10_000, Currency.USD)
    await chat.told("Your top-up of 99.55 USD is in your wallet")
    assert "USD: 99.55 USD available" in (await chat.reply_to("/balance"))["text"]

    assert "billing address" in (await chat.reply_to("/newcard"))["text"]
    issuing = await chat.reply_to("1 Main St, London, N1 9GU, GB")
    assert "being issued" in issuing["text"]

    async def card_listed() -> dict[str, Any]:
        return await chat.reply_to("/cards")

    listed = await polling.until(
        card_listed, lambda said: said["text"].endswith("(virtual): open"), "the card is open"
    )
    card_id = listed["text"].removeprefix("Card ").split(" ", 1)[0]
    bought = await authorize(platform, card_id, 2_500)
    async with issuer(platform) as network:
        cleared = await network.simulate_clearing(
            bought.id, amount_minor=2_500, final=True, idempotency_key=f"clear-{bought.id}"
        )

    # A button that names another customer's card acts on nothing.
    _, other_card, other = await open_card(platform)
    forged = await chat.press(
        listed["message_id"], CardPress(action="freeze", card_id=other_card).pack()
    )
    await polling.eventually(lambda: chat.answered(forged), "the forged press is answered")
    assert (await card_state(other)).state is CardState.OPEN

    async def payment_listed() -> dict[str, Any]:
        return await chat.reply_to("/transactions")

    payments = await polling.until(
        payment_listed,
        lambda said: "reply_markup" in said,
        "the payment is listed with its Dispute button",
    )
    [[dispute_button]] = payments["reply_markup"]["inline_keyboard"]
    assert dispute_button["text"] == f"Dispute 25.00 USD {SHOP.name}"
    before = len(await chat.bot_said())
    await chat.press(payments["message_id"], dispute_button["callback_data"])
    reasons = await polling.until(
        chat.bot_said, lambda said: len(said) > before, "the bot asks why"
    )
    question = reasons[before]
    assert question["text"] == "What is wrong with this payment?"
    fraud = question["reply_markup"]["inline_keyboard"][0][0]
    assert fraud["text"] == "I did not make it"
    # Pressed twice: one dispute, opened and submitted once.
    first = await chat.press(question["message_id"], fraud["callback_data"])
    second = await chat.press(question["message_id"], fraud["callback_data"])

    async def both_answered() -> bool:
        return await chat.answered(first) and await chat.answered(second)

    await polling.eventually(both_answered, "both presses are answered")
    dispute = platform.stack.client.get_workflow_handle(dispute_workflow_id(cleared.id))
    view = await dispute.query("status", result_type=DisputeStatusView)
    assert (view.customer_id, view.reason.value, view.amount_minor) == (
        customer_id,
        "fraudulent",
        2_500,
    )
    assert [item.description for item in view.evidence] == ["I did not make or allow this payment."]
    assert view.missing_evidence == []
    sent = await chat.told("Your dispute of")
    assert sent.startswith(f"Your dispute of {cleared.id} is sent")
    # The card network decides for the customer: told here.
    at_issuer = await polling.until(
        lambda: dispute.query("status", result_type=DisputeStatusView),
        lambda found: found.issuer_dispute_id is not None,
        "the issuer has the dispute",
    )
    async with issuer(platform) as network:
        await network.simulate_dispute_decision(
            str(at_issuer.issuer_dispute_id),
            outcome=DisputeOutcome.WON,
            idempotency_key=f"decide-{cleared.id}",
        )
    assert await chat.told("You won your dispute") == (
        "You won your dispute\n\n25.00 USD is yours to keep."
    )

    # Frozen from the list, the card declines, and the list says why.
    cards_now = await chat.reply_to("/cards")
    [[freeze]] = cards_now["reply_markup"]["inline_keyboard"]
    assert freeze["text"] == "Freeze"
    frozen = await chat.press(cards_now["message_id"], freeze["callback_data"])
    await polling.eventually(lambda: chat.answered(frozen), "the freeze is answered")
    declined = await authorize(platform, card_id, 700)
    assert declined.status.value == "declined"

    async def decline_listed() -> bool:
        return "frozen" in (await chat.reply_to("/transactions"))["text"]

    await polling.eventually(decline_listed, "the decline and its reason are listed")
