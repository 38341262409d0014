"""Linking a customer's Telegram account (activities/telegram.py):

- `POST /v1/customers/{customer_id}/telegram-link` (scope `processes:start`,
  the customer's own step): a single-use code, valid 10 minutes, and the
  bot's deep link that carries it (`https://t.me/<bot>?start=<code>`);
- `POST /v1/telegram/links` (scope `telegram:link`, the bot's): the bot
  redeems the code for the Telegram user who pressed Start;
- `GET /v1/telegram/links/{telegram_user_id}` (scope `telegram:link`): the
  customer a Telegram user is linked to;
- `PUT /v1/customers/{customer_id}/notification-channels` (scope
  `processes:start`, the customer's own choice): the channels the customer
  is told on, each with its address on file (linking Telegram records the
  chat; choosing it makes the bot send the customer's notifications);
- `POST /v1/telegram/signups` (scope `telegram:link`, the bot's): a person
  new to cardflow signs up in the bot: their customer (`tg-<user id>`) is
  saved and linked to them, told on Telegram, and onboarded with the KYC
  provider's upload page (its link arrives as a Telegram message).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Path, Response
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from activities.api_keys import SCOPE_PROCESSES_START, SCOPE_TELEGRAM_LINK
from activities.customers import CustomerNotFound, CustomerStore, NoAddress
from activities.telegram import LINK_CODE_PATTERN, AlreadyLinked, LinkCodeInvalid, TelegramLinks
from schemas.customers import BirthDate, CustomerProfile
from schemas.edge import EdgeModel, Name
from schemas.notify import Channel
from schemas.onboarding import OnboardingInput
from schemas.refusals import Refusal
from starters.gateway.errors import ApiError, ErrorBody
from starters.gateway.state import DatabasePool, GatewaySettings, Queues
from starters.gateway.v1.customers import known_customer
from starters.gateway.v1.idempotency import ProcessStarter, StartKey
from starters.gateway.v1.ownership import OwnCustomerId
from starters.gateway.v1.shared import READ, START, ProcessRef, process_router, route
from starters.onboarding import with_queues
from workflows.onboarding import (
    ONBOARDING_WORKFLOW,
    onboarding_start_metadata,
    onboarding_workflow_id,
)

router = process_router()

TELEGRAM_CUSTOMER_PREFIX = "tg-"

# Telegram user ids are positive 64-bit integers.
TELEGRAM_USER_ID_MAX = 2**63 - 1
TelegramUserId = Annotated[int, Path(ge=1, le=TELEGRAM_USER_ID_MAX)]


class TelegramLinkCode(BaseModel):
    code: str
    url: str = Field(description="The bot's deep link: opening it links the Telegram user")
    expires_at: datetime


class LinkRedemption(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=16, max_length=64, pattern=LINK_CODE_PATTERN)
    telegram_user_id: int = Field(ge=1, le=TELEGRAM_USER_ID_MAX)


class TelegramSignup(EdgeModel):
    """What the bot asked a person signing up."""

    model_config = ConfigDict(extra="forbid")

    telegram_user_id: int = Field(ge=1, le=TELEGRAM_USER_ID_MAX)
    first_name: Name
    last_name: Name
    date_of_birth: BirthDate
    country: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 3166-1 alpha-3")
    email: EmailStr | None = None


def signup_customer_id(telegram_user_id: int) -> str:
    """The customer a Telegram user signing up in the bot becomes."""
    return f"{TELEGRAM_CUSTOMER_PREFIX}{telegram_user_id}"


def signup_profile(body: TelegramSignup) -> CustomerProfile:
    """Told on Telegram (and by email too when they gave one)."""
    return CustomerProfile(
        customer_id=signup_customer_id(body.telegram_user_id),
        first_name=body.first_name,
        last_name=body.last_name,
        date_of_birth=body.date_of_birth,
        country=body.country,
        email=body.email,
        telegram_chat_id=str(body.telegram_user_id),
        preferred_channels=[Channel.TELEGRAM, *([Channel.EMAIL] if body.email else [])],
    )


class NotificationChannels(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    preferred_channels: list[Channel] = Field(min_length=1, max_length=len(Channel))

    @field_validator("preferred_channels")
    @classmethod
    def _each_once(cls, channels: list[Channel]) -> list[Channel]:
        if len(set(channels)) != len(channels):
            raise ValueError("each channel at most once")
        return channels


class TelegramLink(BaseModel):
    telegram_user_id: int
    customer_id: str


@route(
    router,
    READ,
    "/customers/{customer_id}/telegram-link",
    "A single-use code and the bot's deep link that links the customer's Telegram account",
    method="POST",
    scope=SCOPE_PROCESSES_START,
    status_code=201,
    responses={404: {"model": ErrorBody}},
)
async def link_code_route(
    customer_id: OwnCustomerId, pool: DatabasePool, settings: GatewaySettings
) -> TelegramLinkCode:
    await known_customer(pool, customer_id)
    code, expires_at = await TelegramLinks(pool).issue_code(customer_id)
    return TelegramLinkCode(
        code=code,
        url=f"https://t.me/{settings.telegram_bot_username}?start={code}",
        expires_at=expires_at,
    )


@route(
    router,
    READ,
    "/telegram/links",
    "Redeem a link code for the Telegram user who pressed Start (the bot's call)",
    method="POST",
    scope=SCOPE_TELEGRAM_LINK,
    program_wide=True,
    status_code=201,
    responses={409: {"model": ErrorBody}},
)
async def redeem_route(
    body: LinkRedemption, pool: DatabasePool, response: Response
) -> TelegramLink:
    links = TelegramLinks(pool)
    before = await links.customer_of(body.telegram_user_id)
    try:
        customer_id = await links.redeem(body.code, body.telegram_user_id)
    except LinkCodeInvalid as error:
        raise ApiError(Refusal.INVALID_REQUEST, str(error)) from None
    except AlreadyLinked as error:
        raise ApiError(Refusal.ALREADY_DONE, str(error)) from None
    if before == customer_id:
        response.status_code = 200
    return TelegramLink(telegram_user_id=body.telegram_user_id, customer_id=customer_id)


@route(
    router,
    READ,
    "/telegram/links/{telegram_user_id}",
    "The customer a Telegram user is linked to",
    scope=SCOPE_TELEGRAM_LINK,
    program_wide=True,
    responses={404: {"model": ErrorBody}},
)
async def link_route(telegram_user_id: TelegramUserId, pool: DatabasePool) -> TelegramLink:
    customer_id = await TelegramLinks(pool).customer_of(telegram_user_id)
    if customer_id is None:
        raise ApiError(Refusal.NOT_FOUND, f"Telegram user {telegram_user_id} is linked to no one")
    return TelegramLink(telegram_user_id=telegram_user_id, customer_id=customer_id)


@route(
    router,
    START,
    "/telegram/signups",
    "A person signs up in the bot: their customer, linked to them, and its onboarding",
    scope=SCOPE_TELEGRAM_LINK,
    program_wide=True,
)
async def signup_route(
    response: Response,
    body: TelegramSignup,
    idempotency: StartKey,
    pool: DatabasePool,
    queues: Queues,
    starter: ProcessStarter,
) -> ProcessRef:
    """The customer is saved and linked before its onboarding starts, so the
    bot knows them at once; a repeat (the same user) saves nothing again."""
    profile = signup_profile(body)
    customer_id = profile.customer_id
    links = TelegramLinks(pool)
    linked = await links.customer_of(body.telegram_user_id)
    if linked is not None and linked != customer_id:
        raise ApiError(
            Refusal.ALREADY_DONE,
            f"Telegram user {body.telegram_user_id} is linked to customer {linked} already",
        )
    if linked is None:
        await CustomerStore(pool).save(profile)
        try:
            await links.link(body.telegram_user_id, customer_id)
        except AlreadyLinked as error:
            raise ApiError(Refusal.ALREADY_DONE, str(error)) from None
    onboarding = with_queues(OnboardingInput(profile=profile, documents=[]), queues)
    return await starter.start(
        response,
        route="telegram-signups",
        idempotency=idempotency,
        body=body,
        workflow=ONBOARDING_WORKFLOW,
        workflow_id=onboarding_workflow_id(customer_id),
        argument=onboarding,
        metadata=onboarding_start_metadata(onboarding),
        customer_id=customer_id,
    )


@route(
    router,
    READ,
    "/customers/{customer_id}/notification-channels",
    "Choose the channels the customer is told on (each needs its address on file)",
    method="PUT",
    scope=SCOPE_PROCESSES_START,
    responses={404: {"model": ErrorBody}},
)
async def channels_route(
    customer_id: OwnCustomerId, body: NotificationChannels, pool: DatabasePool
) -> NotificationChannels:
    """Setting the same channels again changes nothing (a PUT)."""
    try:
        chosen = await CustomerStore(pool).set_channels(customer_id, body.preferred_channels)
    except CustomerNotFound:
        raise ApiError(Refusal.NOT_FOUND, f"no customer {customer_id}") from None
    except NoAddress as error:
        raise ApiError(Refusal.INVALID_REQUEST, f"preferred_channels: {error}") from None
    return NotificationChannels(preferred_channels=chosen)
