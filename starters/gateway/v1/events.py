"""Events out: the customer's transaction feed, the event stream, and the
webhook endpoints events are delivered to (schemas/events.py).

- `GET /v1/customers/{id}/transactions` (scope `customers:read`): the feed,
  newest first, paged by `cursor`, filtered by card, kind and time;
- `POST/GET/DELETE /v1/webhook-endpoints` and
  `POST /v1/webhook-endpoints/{id}/rotate-secret` (scope `webhooks:manage`):
  where events go; each endpoint has its delivery process
  `events/{endpoint_id}` (workflows/event_delivery.py);
- `GET /v1/events?after=` and `POST /v1/events/{id}/redeliver` (scope
  `webhooks:manage`): catch up on events, have one delivered again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import Path, Query

from activities.api_keys import SCOPE_CUSTOMERS_READ, SCOPE_WEBHOOKS_MANAGE
from activities.events import (
    ENDPOINTS_MAX,
    EVENTS_PAGE_MAX,
    FEED_PAGE_MAX,
    FeedQuery,
    TooManyEndpoints,
    delete_endpoint,
    event_by_id,
    events_after,
    feed_page,
    rotate_secret,
)
from schemas.events import (
    EventPage,
    EventType,
    FeedKind,
    FeedPage,
    SecretRotation,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPage,
    WebhookEndpointView,
)
from schemas.refusals import Refusal
from starters.events import register_endpoint, wake_delivery
from starters.gateway.errors import ApiError, ErrorBody
from starters.gateway.state import DatabasePool, GatewaySettings, Queues, TemporalClient
from starters.gateway.v1.customers import known_customer
from starters.gateway.v1.ownership import OwnCustomerId
from starters.gateway.v1.shared import READ, process_router, route, steer
from workflows.event_delivery import (
    EventDelivery,
    event_delivery_workflow_id,
)

router = process_router()

# Positions are PostgreSQL bigints.
SEQ_MAX = 2**63 - 1

CursorQuery = Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor")]
EndpointIdPath = Annotated[str, Path(pattern=r"^we_[a-z0-9]{1,40}$")]
EventIdPath = Annotated[str, Path(pattern=r"^evt_[a-f0-9]{32}$")]
_NOT_FOUND = {404: {"model": ErrorBody}}


@route(
    router,
    READ,
    "/customers/{customer_id}/transactions",
    "A customer's feed, newest first: holds, declines with their reason, clearings, refunds, "
    "reversals, top-ups, fees, FX, cashback, disputes",
    scope=SCOPE_CUSTOMERS_READ,
    responses=_NOT_FOUND,
)
async def transactions_route(
    customer_id: OwnCustomerId,
    pool: DatabasePool,
    cursor: CursorQuery = None,
    card_id: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    kind: Annotated[list[FeedKind] | None, Query(max_length=len(FeedKind))] = None,
    since: Annotated[datetime | None, Query(description="Occurred at or after")] = None,
    until: Annotated[datetime | None, Query(description="Occurred before")] = None,
    limit: Annotated[int, Query(ge=1, le=FEED_PAGE_MAX)] = 25,
) -> FeedPage:
    await known_customer(pool, customer_id)
    return await feed_page(
        pool,
        FeedQuery(
            customer_id=customer_id,
            before_seq=int(cursor) if cursor is not None else None,
            card_id=card_id,
            kinds=kind,
            since=since,
            until=until,
            limit=limit,
        ),
    )


# ----- the event stream ---------------------------------------------------------------


@route(
    router,
    READ,
    "/events",
    "Events after a position, oldest first: catch up on what webhooks deliver",
    scope=SCOPE_WEBHOOKS_MANAGE,
    program_wide=True,
)
async def events_route(
    pool: DatabasePool,
    after: Annotated[
        int, Query(ge=0, le=SEQ_MAX, description="The position (seq) to continue after")
    ] = 0,
    type: Annotated[list[EventType] | None, Query(max_length=len(EventType))] = None,  # noqa: A002
    customer_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=EVENTS_PAGE_MAX)] = EVENTS_PAGE_MAX,
) -> EventPage:
    found = await events_after(
        pool,
        after,
        limit,
        customer_id=customer_id,
        types=[t.value for t in type] if type else None,
    )
    return EventPage(data=found, next_cursor=str(found[-1].seq) if found else None)


@route(
    router,
    READ,
    "/events/{event_id}/redeliver",
    "Deliver an event again to every enabled endpoint that takes its type",
    method="POST",
    scope=SCOPE_WEBHOOKS_MANAGE,
    program_wide=True,
    status_code=202,
    responses=_NOT_FOUND,
)
async def redeliver_route(
    event_id: EventIdPath, pool: DatabasePool, client: TemporalClient
) -> dict[str, list[str]]:
    event = await event_by_id(pool, event_id)
    if event is None:
        raise ApiError(Refusal.NOT_FOUND, f"no event {event_id}")
    endpoints = await pool.fetch(
        "SELECT endpoint_id FROM webhook_endpoints WHERE status = 'enabled'"
        " AND $1 = ANY (event_types) ORDER BY created_at",
        event.type,
    )
    sent_to = []
    for row in endpoints:
        handle = client.get_workflow_handle(event_delivery_workflow_id(row["endpoint_id"]))
        await steer(handle.signal(EventDelivery.redeliver, event_id), row["endpoint_id"])
        sent_to.append(row["endpoint_id"])
    return {"endpoints": sent_to}


# ----- webhook endpoints ----------------------------------------------------------------


def _view(row: asyncpg.Record | None) -> WebhookEndpointView:
    # Read or written just now under its id: the row is there.
    assert row is not None
    return WebhookEndpointView(
        id=row["endpoint_id"],
        url=row["url"],
        event_types=list(row["event_types"]),
        status=row["status"],
        disabled_reason=row["disabled_reason"],
        created_at=row["created_at"],
        delivery_process_id=event_delivery_workflow_id(row["endpoint_id"]),
    )


async def _endpoint(pool: asyncpg.Pool, endpoint_id: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT * FROM webhook_endpoints WHERE endpoint_id = $1 AND status <> 'deleted'",
        endpoint_id,
    )
    if row is None:
        raise ApiError(Refusal.NOT_FOUND, f"no webhook endpoint {endpoint_id}")
    return row


@route(
    router,
    READ,
    "/webhook-endpoints",
    "Register a URL for events of the types named; the answer shows its signing secret once",
    method="POST",
    scope=SCOPE_WEBHOOKS_MANAGE,
    program_wide=True,
    status_code=201,
    responses={409: {"model": ErrorBody}},
)
async def create_endpoint_route(
    body: WebhookEndpointCreate,
    pool: DatabasePool,
    client: TemporalClient,
    queues: Queues,
    settings: GatewaySettings,
) -> WebhookEndpointCreated:
    try:
        row, secret = await register_endpoint(
            pool, client, queues, str(body.url), [t.value for t in body.event_types], settings
        )
    except TooManyEndpoints as error:
        raise ApiError(Refusal.NOT_ALLOWED, str(error)) from None
    return WebhookEndpointCreated(**_view(row).model_dump(), secret=secret)


@route(
    router,
    READ,
    "/webhook-endpoints",
    "The webhook endpoints, enabled and disabled",
    scope=SCOPE_WEBHOOKS_MANAGE,
    program_wide=True,
)
async def list_endpoints_route(pool: DatabasePool) -> WebhookEndpointPage:
    rows = await pool.fetch(
        "SELECT * FROM webhook_endpoints WHERE status <> 'deleted' ORDER BY created_at LIMIT $1",
        ENDPOINTS_MAX,
    )
    return WebhookEndpointPage(data=[_view(row) for row in rows])


@route(
    router,
    READ,
    "/webhook-endpoints/{endpoint_id}",
    "One webhook endpoint: its URL, event types and status (disabled, and why)",
    scope=SCOPE_WEBHOOKS_MANAGE,
    program_wide=True,
    responses=_NOT_FOUND,
)
async def endpoint_route(endpoint_id: EndpointIdPath, pool: DatabasePool) -> WebhookEndpointView:
    return _view(await _endpoint(pool, endpoint_id))


@route(
    router,
    READ,
    "/webhook-endpoints/{endpoint_id}",
    "Stop sending events to an endpoint; its delivery process ends",
    method="DELETE",
    scope=SCOPE_WEBHOOKS_MANAGE,
    program_wide=True,
    responses=_NOT_FOUND,
)
async def delete_endpoint_route(
    endpoint_id: EndpointIdPath, pool: DatabasePool, client: TemporalClient
) -> WebhookEndpointView:
    row = await delete_endpoint(pool, endpoint_id)
    if row is None:
        raise ApiError(Refusal.NOT_FOUND, f"no webhook endpoint {endpoint_id}")
    await wake_delivery(client, endpoint_id)
    return _view(row)


@route(
    router,
    READ,
    "/webhook-endpoints/{endpoint_id}/rotate-secret",
    "A new signing secret; the previous one keeps signing beside it for the overlap",
    method="POST",
    scope=SCOPE_WEBHOOKS_MANAGE,
    program_wide=True,
    responses=_NOT_FOUND,
)
async def rotate_secret_route(
    endpoint_id: EndpointIdPath, body: SecretRotation, pool: DatabasePool
) -> WebhookEndpointCreated:
    rotated = await rotate_secret(pool, endpoint_id, body.overlap_seconds)
    if rotated is None:
        raise ApiError(Refusal.NOT_FOUND, f"no webhook endpoint {endpoint_id}")
    row, secret = rotated
    return WebhookEndpointCreated(**_view(row).model_dump(), secret=secret)
