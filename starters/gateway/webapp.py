"""The Telegram WebApp's API (`/webapp/v1`): what the customer's card page
inside Telegram reads, for the customer the Telegram user is linked to.

Every request carries the WebApp's initData as `Authorization: tma
<initData>`. It is checked with the bot's token (Telegram's HMAC-SHA256, by
telegram-webapp-auth), its `auth_date` must be at most
CARDFLOW_WEBAPP_INIT_DATA_SECONDS_MAX old, and its user must be linked to a
customer (activities/telegram.py):

- a forged or malformed initData, or a stale one, is 401 `unauthenticated`;
- a user linked to no customer is 403 `customer_not_allowed`.

The routes take no customer id: a user only ever reads their own customer.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from telegram_webapp_auth.auth import TelegramAuthenticator, generate_secret_key
from telegram_webapp_auth.errors import BaseTWAError, ExpiredInitDataError

from activities.events import FEED_PAGE_MAX, FeedQuery, feed_page
from activities.telegram import TelegramLinks
from schemas.events import FeedKind, FeedPage
from starters.gateway.errors import ApiError, ErrorBody, GatewayCode
from starters.gateway.state import DatabasePool, Providers, TemporalClient, settings_of
from starters.gateway.v1.customers import CustomerView, customer_route
from workers.secrets import telegram_bot_token

WEBAPP_AUTH_SCHEME = "tma"
# initData is a query string of a few hundred bytes; anything far longer is not one.
INIT_DATA_CHARS_MAX = 4_096

router = APIRouter(
    prefix="/webapp/v1",
    tags=["webapp"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


def _authenticator(request: Request) -> TelegramAuthenticator:
    """The initData checker keyed by the bot's token, made once per app."""
    found: TelegramAuthenticator | None = getattr(request.app.state, "webapp_authenticator", None)
    if found is None:
        token = telegram_bot_token(settings_of(request.app))
        found = TelegramAuthenticator(generate_secret_key(token))
        request.app.state.webapp_authenticator = found
    return found


async def webapp_customer(request: Request, pool: DatabasePool) -> str:
    """The customer the WebApp's user is linked to, from checked initData."""
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
    return customer_id


WebAppCustomer = Annotated[str, Depends(webapp_customer)]


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
