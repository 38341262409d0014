"""The Telegram WebApp's API (`/webapp/v1`): what the customer's card page
inside Telegram reads and does, for the customer the Telegram user is linked to.

Every request carries the WebApp's initData as `Authorization: tma
<initData>`. It is checked with the bot's token (Telegram's HMAC-SHA256, by
telegram-webapp-auth), its `auth_date` must be at most
CARDFLOW_WEBAPP_INIT_DATA_SECONDS_MAX old, and its user must be linked to a
customer (activities/telegram.py):

- a forged or malformed initData, or a stale one, is 401 `unauthenticated`;
- a user linked to no customer is 403 `customer_not_allowed`;
- a card that is not the customer's (another customer's, or none at all) is
  403 `customer_not_allowed`, the same answer either way.

The routes take no customer id: a user only ever reads and acts on their own
customer. Each route is its `/v1` twin (starters/gateway/v1/) called for that
customer, so both answer alike; a change a user asks for carries an
Idempotency-Key scoped to the Telegram user, as a `/v1` one is to its API key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict
from telegram_webapp_auth.auth import TelegramAuthenticator, generate_secret_key
from telegram_webapp_auth.errors import BaseTWAError, ExpiredInitDataError

from activities.events import FEED_PAGE_MAX, FeedQuery, feed_page
from activities.telegram import TelegramLinks
from schemas.cards import SpendingLimits
from schemas.edge import EdgeModel
from schemas.events import FeedKind, FeedPage
from schemas.issuer import RevealToken
from schemas.views import CardView
from starters.gateway import access
from starters.gateway.errors import ApiError, ErrorBody, GatewayCode, ValidationErrorBody
from starters.gateway.state import DatabasePool, Providers, TemporalClient, settings_of
from starters.gateway.v1 import cards
from starters.gateway.v1.customers import CustomerView, customer_route
from starters.gateway.v1.idempotency import (
    Idempotency,
    IdempotencyKey,
    OptionalIdempotencyKey,
    ProcessUpdates,
)
from starters.gateway.v1.shared import READ_RESPONSES, STEER_RESPONSES
from workers.secrets import telegram_bot_token

WEBAPP_AUTH_SCHEME = "tma"
# initData is a query string of a few hundred bytes; anything far longer is not one.
INIT_DATA_CHARS_MAX = 4_096
# Whom a WebApp request's Idempotency-Key belongs to, as an API key id does on
# `/v1`: no API key id has a colon, so the two never share a key.
WEBAPP_REQUESTER_PREFIX = "telegram-webapp:"
# What a card's history says of a change the customer made in the WebApp.
WEBAPP_ACTION_REASON = "the customer, in the Telegram WebApp"

router = APIRouter(
    prefix="/webapp/v1",
    tags=["webapp"],
    responses={
        401: {"model": ErrorBody, "description": "initData forged, malformed or stale"},
        403: {
            "model": ErrorBody,
            "description": "The user is linked to no customer, or the card is not the "
            "customer's (customer_not_allowed)",
        },
        422: {"model": ValidationErrorBody, "description": "Validation Error"},
    },
)


@dataclass(frozen=True)
class WebAppUser:
    """A Telegram user whose initData verified, and the customer they are linked to."""

    telegram_user_id: int
    customer_id: str

    def idempotency(self, key: str) -> Idempotency:
        """This user's Idempotency-Key, scoped to them as a `/v1` one is to its API key."""
        return Idempotency(f"{WEBAPP_REQUESTER_PREFIX}{self.telegram_user_id}", key)


def _authenticator(request: Request) -> TelegramAuthenticator:
    """The initData checker keyed by the bot's token, made once per app."""
    found: TelegramAuthenticator | None = getattr(request.app.state, "webapp_authenticator", None)
    if found is None:
        token = telegram_bot_token(settings_of(request.app))
        found = TelegramAuthenticator(generate_secret_key(token))
        request.app.state.webapp_authenticator = found
    return found


async def webapp_user(request: Request, pool: DatabasePool) -> WebAppUser:
    """The WebApp's user and the customer they are linked to, from checked initData."""
    scheme, _, init_data = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != WEBAPP_AUTH_SCHEME or not init_data:
        raise ApiError(
            GatewayCode.UNAUTHENTICATED, "send the WebApp's initData: Authorization: tma ..."
        )
    if len(init_data) > INIT_DATA_CHARS_MAX:
        raise ApiError(GatewayCode.UNAUTHENTICATED, "initData is too long to be one")
    age_max = timedelta(seconds=settings_of(request.app).webapp_init_data_seconds_max)
    try:
        parsed = _authenticator(request).validate(init_data, expr_in=age_max)
    except ExpiredInitDataError:
        raise ApiError(
            GatewayCode.UNAUTHENTICATED, "initData is too old: open the WebApp again"
        ) from None
    except (BaseTWAError, ValueError):
        raise ApiError(GatewayCode.UNAUTHENTICATED, "initData does not verify") from None
    if parsed.user is None:
        raise ApiError(GatewayCode.UNAUTHENTICATED, "initData names no user")
    customer_id = await TelegramLinks(pool).customer_of(parsed.user.id)
    if customer_id is None:
        raise ApiError(
            GatewayCode.CUSTOMER_NOT_ALLOWED,
            "this Telegram user is linked to no customer: /start the bot",
        )
    return WebAppUser(parsed.user.id, customer_id)


CurrentUser = Annotated[WebAppUser, Depends(webapp_user)]


async def webapp_customer(user: CurrentUser) -> str:
    """The customer the WebApp's user is linked to."""
    return user.customer_id


WebAppCustomer = Annotated[str, Depends(webapp_customer)]


async def webapp_card(user: CurrentUser, pool: DatabasePool, card_id: cards.CardIdPath) -> str:
    """The path's card, once it is known to be the user's customer's (the cards
    table, as the card's issue recorded it)."""
    if await access.card_customer(pool, card_id) != user.customer_id:
        # The same answer for a card that does not exist: nothing is learnt
        # of other customers' cards.
        raise ApiError(
            GatewayCode.CUSTOMER_NOT_ALLOWED, f"card {card_id} is not one of this customer's cards"
        )
    return card_id


OwnCard = Annotated[str, Depends(webapp_card)]


class WebAppCardAction(EdgeModel):
    """What the customer may do to a card from the WebApp."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["freeze", "unfreeze"]


@router.get("/me", summary="The linked customer: KYC, wallets, debt, cards, deposit address")
async def me_route(
    customer_id: WebAppCustomer,
    pool: DatabasePool,
    client: TemporalClient,
    providers: Providers,
) -> CustomerView:
    return await customer_route(customer_id, pool, client, providers)


@router.get("/transactions", summary="The linked customer's feed, newest first")
async def transactions_route(
    customer_id: WebAppCustomer,
    pool: DatabasePool,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    kind: Annotated[list[FeedKind] | None, Query(max_length=len(FeedKind))] = None,
    limit: Annotated[int, Query(ge=1, le=FEED_PAGE_MAX)] = 25,
) -> FeedPage:
    return await feed_page(
        pool,
        FeedQuery(
            customer_id=customer_id,
            before_seq=int(cursor) if cursor is not None else None,
            kinds=kind,
            limit=limit,
        ),
    )


@router.get(
    "/cards/{card_id}",
    summary="One of the customer's cards: its state, limits and what it holds and has spent",
    responses=READ_RESPONSES,
)
async def card_route(card_id: OwnCard, client: TemporalClient) -> CardView:
    return await cards.card_route(card_id, client)


@router.post(
    "/cards/{card_id}/actions",
    summary="Freeze or unfreeze one of the customer's cards, once per Idempotency-Key",
    responses=STEER_RESPONSES,
)
async def card_action_route(
    card_id: OwnCard,
    body: WebAppCardAction,
    user: CurrentUser,
    key: IdempotencyKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    action = cards.CardAction(action=body.action, reason=WEBAPP_ACTION_REASON)
    return await cards.card_action_route(card_id, action, user.idempotency(key), updates)


@router.put(
    "/cards/{card_id}/limits",
    summary="Set one of the customer's cards' spending limits",
    responses=STEER_RESPONSES,
)
async def limits_route(
    card_id: OwnCard,
    body: SpendingLimits,
    user: CurrentUser,
    updates: ProcessUpdates,
    key: OptionalIdempotencyKey = None,
) -> SpendingLimits:
    idempotency = None if key is None else user.idempotency(key)
    return await cards.limits_route(card_id, body, idempotency, updates)


@router.post(
    "/cards/{card_id}/reveal",
    summary="A single-use token with which the page fetches the card's number from the issuer",
    status_code=201,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def reveal_route(card_id: OwnCard, providers: Providers) -> RevealToken:
    """The issuer's token and URL; the page fetches the number there itself,
    so the number, expiry and CVV never pass through cardflow."""
    return await cards.reveal_route(card_id, providers)
