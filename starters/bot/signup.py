"""The bot's two questionnaires (aiogram's finite-state machine, one answer
per message, each checked as it arrives):

- `/signup`: a person new to cardflow gives their name, date of birth and
  country; the API saves their customer, links it to them and onboards it,
  and the identity check's link arrives as the next message (the KYC
  provider's upload page, sent by the onboarding on their chosen channel,
  Telegram);
- `/newcard`: a verified customer gives the card's billing address and gets
  a virtual card (once per answer, however often Telegram delivers it).

The state lives in the bot process (a restart forgets a half-answered
questionnaire: the person starts it again); nothing is written until the
last answer.
"""

from __future__ import annotations

import re
from datetime import date

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import Message

from starters.bot.api import ApiRefused, CardflowApi, NotLinked

NAME_CHARS_MAX = 100
COUNTRY = re.compile(r"^[A-Z]{3}$")
# "line 1, city, postal code, country": the four parts of a billing address.
ADDRESS_PARTS = 4
ADDRESS_COUNTRY = re.compile(r"^[A-Z]{2}$")


class SignUp(StatesGroup):
    first_name = State()
    last_name = State()
    date_of_birth = State()
    country = State()


class NewCard(StatesGroup):
    address = State()


def register(router: Router) -> None:
    router.message.register(sign_up, Command("signup"))
    router.message.register(cancel, Command("cancel"))
    router.message.register(first_name, SignUp.first_name, F.text)
    router.message.register(last_name, SignUp.last_name, F.text)
    router.message.register(date_of_birth, SignUp.date_of_birth, F.text)
    router.message.register(country, SignUp.country, F.text)
    router.message.register(new_card, Command("newcard"))
    router.message.register(card_address, NewCard.address, F.text)


async def cancel(message: Message, state: FSMContext) -> None:
    await state.clear()
    await message.answer("Stopped. Nothing was sent.")


async def sign_up(message: Message, state: FSMContext, api: CardflowApi) -> None:
    assert message.from_user is not None
    try:
        await api.customer_of(message.from_user.id)
    except NotLinked:
        await state.set_state(SignUp.first_name)
        await message.answer("Let's open your cardflow account. Your first name? (/cancel stops)")
        return
    await message.answer("You are a cardflow customer already: /balance, /cards.")


def _name(text: str) -> str | None:
    name = text.strip()
    return name if 0 < len(name) <= NAME_CHARS_MAX and not name.startswith("/") else None


async def first_name(message: Message, state: FSMContext) -> None:
    name = _name(message.text or "")
    if name is None:
        await message.answer(f"Your first name, in at most {NAME_CHARS_MAX} characters?")
        return
    await state.update_data(first_name=name)
    await state.set_state(SignUp.last_name)
    await message.answer("Your last name?")


async def last_name(message: Message, state: FSMContext) -> None:
    name = _name(message.text or "")
    if name is None:
        await message.answer(f"Your last name, in at most {NAME_CHARS_MAX} characters?")
        return
    await state.update_data(last_name=name)
    await state.set_state(SignUp.date_of_birth)
    await message.answer("Your date of birth, as YYYY-MM-DD?")


async def date_of_birth(message: Message, state: FSMContext) -> None:
    try:
        born = date.fromisoformat((message.text or "").strip())
    except ValueError:
        await message.answer("Please write it as YYYY-MM-DD, e.g. 1990-12-10.")
        return
    await state.update_data(date_of_birth=born.isoformat())
    await state.set_state(SignUp.country)
    await message.answer("The country you live in, as three letters (e.g. DEU, GBR, FRA)?")


async def country(message: Message, state: FSMContext, api: CardflowApi) -> None:
    assert message.from_user is not None
    code = (message.text or "").strip().upper()
    if not COUNTRY.match(code):
        await message.answer("Three letters, please (ISO 3166: DEU, GBR, FRA...).")
        return
    answers = await state.get_data() | {
        "country": code,
        "telegram_user_id": message.from_user.id,
    }
    await state.clear()
    try:
        # The same person signing up again is the same request: one customer.
        await api.sign_up(answers, f"tg-signup-{message.from_user.id}")
    except ApiRefused as refused:
        await message.answer(f"We could not sign you up: {refused.detail}")
        return
    await message.answer(
        f"Thank you, {answers['first_name']}. Your account is being opened: the link "
        "to verify your identity follows in a moment."
    )


async def new_card(message: Message, state: FSMContext, api: CardflowApi) -> None:
    assert message.from_user is not None
    try:
        await api.customer_of(message.from_user.id)
    except NotLinked:
        await message.answer("Sign up first: /signup")
        return
    await state.set_state(NewCard.address)
    await message.answer(
        "The card's billing address, as: street, city, postal code, country "
        "(two letters), e.g. 1 Main St, London, N1 9GU, GB"
    )


async def card_address(message: Message, state: FSMContext, api: CardflowApi) -> None:
    assert message.from_user is not None
    parts = [part.strip() for part in (message.text or "").split(",")]
    if len(parts) != ADDRESS_PARTS or not all(parts):
        await message.answer("Four parts, separated by commas: street, city, postal code, GB")
        return
    line1, city, postal_code, where = parts
    if not ADDRESS_COUNTRY.match(where.upper()):
        await message.answer("The country as two letters, e.g. GB, DE, FR.")
        return
    await state.clear()
    try:
        customer_id = await api.customer_of(message.from_user.id)
        address = {
            "line1": line1,
            "city": city,
            "postal_code": postal_code,
            "country": where.upper(),
        }
        # This very answer asks once, however often Telegram delivers it.
        key = f"tg-{message.chat.id}-{message.message_id}-card"
        await api.issue_card(customer_id, address, key)
    except (ApiRefused, NotLinked) as refused:
        detail = refused.detail if isinstance(refused, ApiRefused) else "sign up first: /signup"
        await message.answer(f"No card: {detail}")
        return
    await message.answer("Your virtual card is being issued: /cards shows it in a moment.")
