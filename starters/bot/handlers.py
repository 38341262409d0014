"""What the customers' bot answers (aiogram), every answer read from or
acted on through the public API (starters/bot/api.py):

- `/start <code>`: the deep link from the customer's app links this Telegram
  user to the customer; `/start` alone tells a linked user what to ask, and
  anyone else how to link;
- `/balance`: each wallet's available and held amounts;
- `/cards`: each card with its state and a Freeze or Unfreeze button; a
  button acts once however often it is pressed (its Idempotency-Key is the
  message and the action);
- `/transactions`: the last entries of the feed, declines with their reason,
  and a Dispute button under each card payment; the dispute's reason is
  asked with buttons, then the dispute is opened with the customer's
  statement and submitted (once, however often either button is pressed);
- `/topup`: how to top up: the bank transfer's reference (the customer's id,
  which the bank top-up matches) and the USDT-TRC20 deposit address, with
  its QR code;
- `/app`: a button that opens the WebApp (the card, balances, feed, freeze,
  limits) inside Telegram;
- `/notifications`: the channels the customer is told on, with a button
  that has the bot tell them (declines, payments, top-ups, disputes'
  decisions, shipping...) here in Telegram, or stop;
- `/signup` and `/newcard` (starters/bot/signup.py): a new person's account,
  and a virtual card;
- a 3-D Secure code: a message of just the six digits the customer was sent
  answers their newest challenge waiting for one (the same message sent
  twice answers once).
"""

from __future__ import annotations

import io
from typing import Any

import segno
from aiogram import Dispatcher, F, Router
from aiogram.filters import Command, CommandObject, CommandStart, StateFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    WebAppInfo,
)

from schemas.money import Currency, Money
from starters.bot import signup
from starters.bot.api import ApiRefused, CardflowApi, NotLinked

NOT_LINKED = (
    "This Telegram account is not linked to a cardflow customer yet. "
    "New to cardflow? /signup. A customer already? Open the cardflow app and tap "
    "Connect Telegram."
)
MENU = (
    "/balance your money, /cards your cards, /transactions what happened lately, "
    "/topup how to add money, /newcard a virtual card, /notifications where you are told, "
    "/app your card in the WebApp"
)
NOT_YOURS = "This is not one of your cards or payments."
TELEGRAM = "telegram"
# What a customer may dispute from the list, with the statement that goes with it.
DISPUTE_REASONS = {
    "fraudulent": ("I did not make it", "I did not make or allow this payment."),
    "other": ("Something else is wrong", "This payment is wrong; I ask for it back."),
}
DISPUTABLE = {"clearing", "force_post"}
# Telegram's limit on a button's callback data, in bytes.
CALLBACK_DATA_BYTES_MAX = 64
# A QR code's module size in pixels: a phone's camera reads it off a screen.
QR_SCALE = 8
# What each card state lets the customer do from here, and the button's label.
BUTTONS = {"open": ("freeze", "Freeze"), "paused": ("unfreeze", "Unfreeze")}
BUTTON_ACTIONS = [action for action, _ in BUTTONS.values()]
# A message that is only a one-time code answers a 3-D Secure challenge.
AUTHENTICATION_CODE = r"^\s*[0-9]{6}\s*$"


class CardPress(CallbackData, prefix="card"):
    action: str
    card_id: str


class NotifyPress(CallbackData, prefix="notify"):
    """Be told in Telegram (`on`), or stop."""

    on: bool


class DisputePress(CallbackData, prefix="dispute"):
    """Dispute a payment (no reason yet), or with the reason chosen."""

    transaction_id: str
    reason: str = ""


def money(amount_minor: int, currency: str) -> str:
    return str(Money(amount_minor=amount_minor, currency=Currency(currency)))


def dispatcher(api: CardflowApi, webapp_url: str) -> Dispatcher:
    """The bot's dispatcher (a new one each time), its handlers given `api`
    and the WebApp's URL."""
    router = Router(name="cardflow")
    router.message.register(start_with_code, CommandStart(deep_link=True))
    router.message.register(start, CommandStart())
    router.message.register(balance, Command("balance"))
    router.message.register(cards, Command("cards"))
    router.message.register(transactions, Command("transactions"))
    router.message.register(topup, Command("topup"))
    router.callback_query.register(press, CardPress.filter(F.action.in_(set(BUTTON_ACTIONS))))
    router.message.register(notifications, Command("notifications"))
    router.message.register(app, Command("app"))
    router.callback_query.register(notify_press, NotifyPress.filter())
    router.callback_query.register(dispute_reasons, DisputePress.filter(F.reason == ""))
    router.callback_query.register(dispute, DisputePress.filter(F.reason.in_(set(DISPUTE_REASONS))))
    # Only outside a conversation's question (a postal code may be six digits).
    router.message.register(
        authentication_code, StateFilter(None), F.text.regexp(AUTHENTICATION_CODE)
    )
    signup.register(router)
    found = Dispatcher()
    found["api"] = api
    found["webapp_url"] = webapp_url
    found.include_router(router)
    return found


async def _customer(message: Message, api: CardflowApi) -> str | None:
    assert message.from_user is not None
    try:
        return await api.customer_of(message.from_user.id)
    except NotLinked:
        await message.answer(NOT_LINKED)
        return None


async def start_with_code(message: Message, command: CommandObject, api: CardflowApi) -> None:
    assert message.from_user is not None
    try:
        await api.link(command.args or "", message.from_user.id)
    except ApiRefused as refused:
        await message.answer(f"This link did not work: {refused.detail}")
        return
    await message.answer(f"Your Telegram is linked to cardflow. {MENU}")


async def start(message: Message, api: CardflowApi) -> None:
    if await _customer(message, api) is not None:
        await message.answer(f"Welcome back. {MENU}")


async def balance(message: Message, api: CardflowApi) -> None:
    customer_id = await _customer(message, api)
    if customer_id is None:
        return
    view = await api.customer(customer_id)
    lines = [
        f"{w['currency']}: {money(w['available_minor'], w['currency'])} available"
        + (f", {money(w['pending_minor'], w['currency'])} held" if w["pending_minor"] else "")
        for w in view["wallets"]
    ]
    await message.answer("\n".join(lines) or "No wallet yet.")


def _card_markup(card: dict[str, Any]) -> InlineKeyboardMarkup | None:
    button = BUTTONS.get(card["state"])
    if button is None:
        return None
    action, label = button
    data = CardPress(action=action, card_id=card["card_id"]).pack()
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text=label, callback_data=data)]]
    )


async def cards(message: Message, api: CardflowApi) -> None:
    customer_id = await _customer(message, api)
    if customer_id is None:
        return
    view = await api.customer(customer_id)
    if not view["cards"]:
        await message.answer("No card yet.")
    for card in view["cards"]:
        await message.answer(
            f"Card {card['card_id']} ({card['kind']}): {card['state']}",
            reply_markup=_card_markup(card),
        )


async def press(query: CallbackQuery, callback_data: CardPress, api: CardflowApi) -> None:
    message = query.message
    assert message is not None
    # The same button pressed again names the same action: it acts once.
    key = f"tg-{message.chat.id}-{message.message_id}-{callback_data.action}"
    try:
        customer_id = await api.customer_of(query.from_user.id)
        if not await api.owns_card(customer_id, callback_data.card_id):
            await query.answer(NOT_YOURS, show_alert=True)
            return
        result = await api.card_action(callback_data.card_id, callback_data.action, key)
    except NotLinked:
        await query.answer(NOT_LINKED[:200], show_alert=True)
        return
    except ApiRefused as refused:
        await query.answer(refused.detail[:200], show_alert=True)
        return
    state = "paused" if callback_data.action == "freeze" else "open"
    await query.answer(result[:200])
    if isinstance(message, Message):
        await message.edit_text(
            f"Card {callback_data.card_id}: {state}",
            reply_markup=_card_markup({"card_id": callback_data.card_id, "state": state}),
        )


async def transactions(message: Message, api: CardflowApi) -> None:
    customer_id = await _customer(message, api)
    if customer_id is None:
        return
    entries = await api.feed(customer_id)
    lines = []
    buttons = []
    for entry in entries:
        merchant = (entry.get("merchant") or {}).get("name") or entry["kind"]
        amount = money(entry["amount_minor"], entry["currency"])
        line = f"{amount} {merchant} ({entry['status']})"
        if entry.get("reason"):
            line += f": {entry['reason']}"
        lines.append(line)
        transaction_id = entry.get("transaction_id")
        if entry["kind"] in DISPUTABLE and transaction_id:
            data = DisputePress(transaction_id=transaction_id).pack()
            if len(data.encode()) <= CALLBACK_DATA_BYTES_MAX:
                paid = money(abs(entry["amount_minor"]), entry["currency"])
                label = f"Dispute {paid} {merchant}"
                buttons.append([InlineKeyboardButton(text=label, callback_data=data)])
    markup = InlineKeyboardMarkup(inline_keyboard=buttons) if buttons else None
    await message.answer("\n".join(lines) or "Nothing yet.", reply_markup=markup)


async def dispute_reasons(query: CallbackQuery, callback_data: DisputePress) -> None:
    """Which is wrong with the payment: a button per reason."""
    message = query.message
    assert message is not None
    choices = [
        [
            InlineKeyboardButton(
                text=label,
                callback_data=DisputePress(
                    transaction_id=callback_data.transaction_id, reason=reason
                ).pack(),
            )
        ]
        for reason, (label, _) in DISPUTE_REASONS.items()
    ]
    await query.answer()
    await message.answer(
        "What is wrong with this payment?",
        reply_markup=InlineKeyboardMarkup(inline_keyboard=choices),
    )


async def dispute(query: CallbackQuery, callback_data: DisputePress, api: CardflowApi) -> None:
    """Open and submit the dispute; a second press finds it open (one dispute)."""
    message = query.message
    assert message is not None
    _, statement = DISPUTE_REASONS[callback_data.reason]
    transaction_id = callback_data.transaction_id
    try:
        customer_id = await api.customer_of(query.from_user.id)
        if not await api.owns_payment(customer_id, transaction_id):
            await query.answer(NOT_YOURS, show_alert=True)
            return
        stage = await api.dispute(
            customer_id,
            transaction_id,
            callback_data.reason,
            statement,
            f"tg-dispute-{transaction_id}-{callback_data.reason}",
        )
    except NotLinked:
        await query.answer(NOT_LINKED[:200], show_alert=True)
        return
    except ApiRefused as refused:
        await query.answer(refused.detail[:200], show_alert=True)
        return
    await query.answer("Dispute sent")
    if isinstance(message, Message):
        await message.edit_text(
            f"Your dispute of {transaction_id} is sent ({stage}). We will tell you the decision."
        )


async def topup(message: Message, api: CardflowApi) -> None:
    customer_id = await _customer(message, api)
    if customer_id is None:
        return
    view = await api.customer(customer_id)
    await message.answer(
        f"By bank transfer: write {customer_id} as the payment reference; it is credited "
        "to the wallet of the transfer's currency."
    )
    address = view.get("usdt_deposit_address")
    if not address:
        await message.answer("The USDT address is not available right now: try /topup later.")
        return
    image = io.BytesIO()
    segno.make(address, error="m").save(image, kind="png", scale=QR_SCALE)
    await message.answer_photo(
        BufferedInputFile(image.getvalue(), filename="usdt-trc20.png"),
        caption=f"USDT on Tron (TRC-20) to {address}",
    )


def _channels_said(channels: list[str]) -> tuple[str, InlineKeyboardMarkup]:
    here = TELEGRAM in channels
    said = f"You are told by {', '.join(channels)}."
    label = "Stop telling me here" if here else "Tell me here in Telegram"
    data = NotifyPress(on=not here).pack()
    button = InlineKeyboardButton(text=label, callback_data=data)
    return said, InlineKeyboardMarkup(inline_keyboard=[[button]])


async def notifications(message: Message, api: CardflowApi) -> None:
    customer_id = await _customer(message, api)
    if customer_id is None:
        return
    said, markup = _channels_said(list((await api.customer(customer_id))["preferred_channels"]))
    await message.answer(said, reply_markup=markup)


async def notify_press(query: CallbackQuery, callback_data: NotifyPress, api: CardflowApi) -> None:
    """Add or remove Telegram; what is set is the whole list, so pressing
    twice sets it once."""
    message = query.message
    assert message is not None
    try:
        customer_id = await api.customer_of(query.from_user.id)
        channels = [
            channel
            for channel in (await api.customer(customer_id))["preferred_channels"]
            if channel != TELEGRAM
        ]
        if callback_data.on:
            channels.insert(0, TELEGRAM)
        if not channels:
            await query.answer("Telegram is your only channel: it stays.", show_alert=True)
            return
        chosen = await api.set_channels(customer_id, channels)
    except NotLinked:
        await query.answer(NOT_LINKED[:200], show_alert=True)
        return
    except ApiRefused as refused:
        await query.answer(refused.detail[:200], show_alert=True)
        return
    await query.answer("Done")
    said, markup = _channels_said(chosen)
    if isinstance(message, Message):
        await message.edit_text(said, reply_markup=markup)


async def app(message: Message, api: CardflowApi, webapp_url: str) -> None:
    """The WebApp's button: Telegram opens the page with the user's signed
    initData, which is all the page shows the customer by."""
    if await _customer(message, api) is None:
        return
    button = InlineKeyboardButton(text="Open my card", web_app=WebAppInfo(url=webapp_url))
    await message.answer(
        "Your card, balances and payments:",
        reply_markup=InlineKeyboardMarkup(inline_keyboard=[[button]]),
    )


async def authentication_code(message: Message, api: CardflowApi) -> None:
    """The code of a 3-D Secure challenge: it answers the customer's newest
    challenge waiting for one."""
    customer_id = await _customer(message, api)
    if customer_id is None or message.text is None:
        return
    pending = await api.pending_authentications(customer_id)
    if not pending:
        await message.answer("No payment is waiting for a code right now.")
        return
    challenge = pending[0]
    key = f"tg-{message.chat.id}-{message.message_id}-3ds"
    try:
        reply = await api.answer_authentication(
            challenge["card_id"], challenge["authentication_id"], message.text.strip(), key
        )
    except ApiRefused as refused:
        await message.answer(f"That code could not be used: {refused.detail}")
        return
    merchant = challenge["merchant_name"]
    if reply["outcome"] == "authenticated":
        await message.answer(f"Confirmed: your payment at {merchant} can go ahead.")
    elif reply["outcome"] == "failed":
        await message.answer(
            f"That code is wrong too many times: the payment at {merchant} is refused."
        )
    else:
        await message.answer(
            f"That code is wrong: {reply['attempts_left']} more tries for {merchant}."
        )
