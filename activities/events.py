"""Customer events (schemas/events.py): reading them in order, the
customer's feed, the issuer's word turned into events, webhook endpoints,
and the activities that deliver events to the endpoints.

Where events are written is activities/migrations/0021_customer_events.sql;
the gateway records the issuer's (issuer_events below) in the transaction
that remembers the webhook.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets as token_source
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
import httpx
from pydantic import BaseModel, Field
from standardwebhooks import Webhook
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.queues import ledger_activity, provider_activity
from schemas.customers import Notification, NotificationReceipt
from schemas.events import (
    CustomerEvent,
    EventType,
    FeedEntry,
    FeedKind,
    FeedMerchant,
    decline_sentence,
)
from schemas.money import Currency, Money

SEQUENCE_BATCH_MAX = 10_000
EVENTS_PAGE_MAX = 100
FEED_PAGE_MAX = 100
ENDPOINTS_MAX = 50
# One delivery attempt: an endpoint slower than this is retried later.
DELIVERY_TIMEOUT_SECONDS = 10.0
# Of an endpoint's answer, this much is kept to say why it failed.
DELIVERY_ANSWER_CHARS_MAX = 200
SECRET_BYTES = 24

# The endpoint that is the customers themselves: its events are sent to each
# customer as a notification on the channels they prefer, not to a URL.
CUSTOMERS_ENDPOINT_ID = "we_customers"
CUSTOMERS_SINK_URL = "cardflow:customers"
CUSTOMER_NOTIFIED_TYPES = (EventType.AUTHORIZATION_DECLINED, EventType.TRANSACTION_CLEARED)

EVENTS_NEXT_FOR_ENDPOINT = "events.next_for_endpoint"
EVENTS_DISABLE_ENDPOINT = "events.disable_endpoint"
EVENTS_DELIVER = "events.deliver"


def event_id(source: str) -> str:
    """An event's id from what it reports (the same words as the SQL triggers)."""
    return "evt_" + hashlib.sha256(source.encode()).hexdigest()[:32]


# ----- the issuer's word as events ---------------------------------------------


@dataclass(frozen=True)
class IssuerEventRow:
    """A customer event from one issuer webhook; its customer is the card's."""

    event_id: str
    type: EventType
    card_id: str
    authorization_id: str | None
    feed_kind: FeedKind | None
    currency: str | None
    occurred_at: datetime
    data: dict[str, Any]


def _when(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    found = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def _merchant(data: dict[str, Any]) -> dict[str, Any]:
    merchant = data.get("merchant") or {}
    return {
        "merchant_name": merchant.get("name"),
        "mcc": merchant.get("mcc"),
        "merchant_amount_minor": data.get("merchant_amount_minor"),
        "merchant_currency": data.get("merchant_currency"),
    }


def issuer_event(issuer_event_id: str, kind: str, data: dict[str, Any]) -> IssuerEventRow | None:
    """The customer event an issuer webhook reports, if any. Transactions are
    not among them: the card reports what it settles (card_transactions)."""
    source = event_id(f"issuer/{issuer_event_id}")
    card_id = data.get("card_id") if not kind.startswith("card.") else data.get("id")
    if not isinstance(card_id, str):
        return None
    if kind.startswith("authorization."):
        status = data.get("status")
        decisions = data.get("decisions") or []
        last = decisions[-1] if decisions else {}
        common = {
            **_merchant(data),
            "requested_minor": last.get(
                "requested_amount_minor", data.get("requested_amount_minor")
            ),
            "held_minor": data.get("amount_minor"),
            "pending_minor": data.get("pending_amount_minor"),
            "authorization_status": status,
            "expires_at": data.get("expires_at"),
        }
        if kind == "authorization.created":
            if status == "declined":
                return None  # its authorization.declined follows
            type_, feed = EventType.AUTHORIZATION_APPROVED, FeedKind.AUTHORIZATION
        elif kind == "authorization.declined":
            reason = str(data.get("decision_reason") or last.get("reason") or "")
            common |= {"reason_code": reason, "reason": decline_sentence(reason)}
            type_, feed = EventType.AUTHORIZATION_DECLINED, FeedKind.DECLINE
        elif kind == "authorization.expired":
            # The same id as the card's own expiry of the hold (the ledger's
            # trigger): one event, whichever comes first.
            source = event_id(f"hold-expired/{data.get('id')}")
            type_, feed = EventType.HOLD_EXPIRED, None
        elif kind == "authorization.reversed":
            # The issuer's reversal, not the authorization.
            return IssuerEventRow(
                source,
                EventType.AUTHORIZATION_REVERSED,
                card_id,
                data.get("authorization_id"),
                FeedKind.REVERSAL,
                data.get("currency"),
                _when(data.get("created_at")),
                {
                    "reversal_id": data.get("id"),
                    "amount_minor": data.get("amount_minor"),
                    "pending_minor": data.get("authorization_pending_amount_minor"),
                    "authorization_status": data.get("authorization_status"),
                },
            )
        else:
            type_, feed = EventType.AUTHORIZATION_UPDATED, None
        if decisions and kind == "authorization.declined" and len(decisions) > 1:
            # An increment declined is not a declined purchase.
            type_, feed = EventType.AUTHORIZATION_UPDATED, None
        return IssuerEventRow(
            source,
            type_,
            card_id,
            data.get("id"),
            feed,
            data.get("currency"),
            _when(data.get("updated_at")),
            {k: v for k, v in common.items() if v is not None},
        )
    if kind == "card.shipping.updated":
        shipping = data.get("shipping") or {}
        return IssuerEventRow(
            source,
            EventType.CARD_SHIPPING_UPDATED,
            card_id,
            None,
            None,
            None,
            _when(data.get("updated_at")),
            {
                k: shipping.get(k)
                for k in ("status", "carrier", "tracking_number", "eta", "service")
                if shipping.get(k) is not None
            },
        )
    if kind.startswith("card."):
        return IssuerEventRow(
            source,
            EventType.CARD_STATE_CHANGED,
            card_id,
            None,
            None,
            None,
            _when(data.get("updated_at")),
            {
                k: v
                for k, v in {
                    "state": data.get("state"),
                    "reason": data.get("state_reason"),
                    "change": kind.removeprefix("card."),
                    "replaced_by": data.get("replaced_by"),
                }.items()
                if v is not None
            },
        )
    if kind.startswith("dispute."):
        return IssuerEventRow(
            source,
            EventType.DISPUTE_UPDATED,
            card_id,
            data.get("authorization_id"),
            None,
            data.get("currency"),
            _when(data.get("updated_at")),
            {
                "dispute_id": data.get("id"),
                "transaction_id": data.get("transaction_id"),
                "status": data.get("status"),
                "amount_minor": data.get("amount_minor"),
                "change": kind.removeprefix("dispute."),
            },
        )
    return None


# The customer event of an issuer webhook, written with the webhook's memory
# (gateway_webhook_events) in one statement: both or neither.
REMEMBER_WITH_EVENT_SQL = """
WITH remembered AS (
    INSERT INTO gateway_webhook_events
        (provider, event_id, event_type, outcome, workflow_id, signed_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT DO NOTHING
    RETURNING true AS fresh
), recorded AS (
    INSERT INTO customer_events (event_id, type, customer_id, card_id, authorization_id,
                                 feed_kind, currency, process_id, occurred_at, data)
    SELECT $7, $8, c.customer_id, c.card_id, $9, $10, $11, 'card/' || c.card_id, $12, $13::jsonb
    FROM cards c
    WHERE c.card_id = $14 AND EXISTS (SELECT 1 FROM remembered)
    ON CONFLICT (event_id) DO NOTHING
)
SELECT fresh FROM remembered
"""


def remember_with_event_args(row: IssuerEventRow) -> tuple[Any, ...]:
    return (
        row.event_id,
        row.type.value,
        row.authorization_id,
        row.feed_kind.value if row.feed_kind else None,
        row.currency,
        row.occurred_at,
        json.dumps(row.data),
        row.card_id,
    )


# ----- events a process records ---------------------------------------------------


@dataclass(frozen=True)
class RecordedEvent:
    """An event whose state is not in the database, recorded by the activity
    of the process that caused it; `source` names what it reports, once."""

    source: str
    type: EventType
    customer_id: str
    process_id: str
    occurred_at: datetime
    data: dict[str, Any]
    card_id: str | None = None


async def record_event(pool: asyncpg.Pool, event: RecordedEvent) -> bool:
    """Write the event once; False when it was written before."""
    written = await pool.fetchval(
        "INSERT INTO customer_events (event_id, type, customer_id, card_id, process_id,"
        " occurred_at, data) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING true",
        event_id(event.source),
        event.type.value,
        event.customer_id,
        event.card_id,
        event.process_id,
        event.occurred_at,
        json.dumps(event.data),
    )
    return written is True


# ----- reading events in order ------------------------------------------------------


async def sequence(connection: asyncpg.Pool | asyncpg.pool.PoolConnectionProxy[Any]) -> int:
    """Give positions to committed events without one (see the migration)."""
    return int(await connection.fetchval("SELECT customer_events_sequence($1)", SEQUENCE_BATCH_MAX))


_EVENT_COLUMNS = (
    "event_id, seq, type, customer_id, card_id, authorization_id, process_id, occurred_at, data"
)


def _event(row: asyncpg.Record) -> CustomerEvent:
    return CustomerEvent(
        id=row["event_id"],
        seq=row["seq"],
        type=row["type"],
        customer_id=row["customer_id"],
        card_id=row["card_id"],
        authorization_id=row["authorization_id"],
        process_id=row["process_id"],
        occurred_at=row["occurred_at"],
        data=json.loads(row["data"]),
    )


async def events_after(
    pool: asyncpg.Pool,
    after: int,
    limit: int,
    *,
    customer_id: str | None = None,
    types: list[str] | None = None,
) -> list[CustomerEvent]:
    """Events positioned after `after`, oldest first."""
    await sequence(pool)
    rows = await pool.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM customer_events"
        " WHERE seq > $1 AND ($2::text IS NULL OR customer_id = $2)"
        " AND ($3::text[] IS NULL OR type = ANY ($3)) ORDER BY seq LIMIT $4",
        after,
        customer_id,
        types,
        min(limit, EVENTS_PAGE_MAX),
    )
    return [_event(row) for row in rows]


async def event_by_id(pool: asyncpg.Pool, found_id: str) -> CustomerEvent | None:
    await sequence(pool)
    row = await pool.fetchrow(
        f"SELECT {_EVENT_COLUMNS} FROM customer_events WHERE event_id = $1 AND seq IS NOT NULL",
        found_id,
    )
    return None if row is None else _event(row)


# ----- the customer's feed ---------------------------------------------------------

_FEED_SQL = """
SELECT e.event_id, e.seq, e.feed_kind, e.card_id, e.authorization_id, e.posted_minor, e.currency,
       e.process_id, e.occurred_at, e.data, h.cleared, h.expired, h.latest
FROM customer_events e
LEFT JOIN LATERAL (
    SELECT bool_or(l.type = 'transaction.cleared') AS cleared,
           bool_or(l.type = 'hold.expired') AS expired,
           (array_agg(l.data ORDER BY l.occurred_at DESC, l.recorded_at DESC)
                FILTER (WHERE l.data ? 'pending_minor'))[1] AS latest
    FROM customer_events l
    WHERE e.feed_kind = 'authorization' AND l.authorization_id = e.authorization_id
      AND l.customer_id = e.customer_id
) h ON true
WHERE e.customer_id = $1 AND e.feed_kind IS NOT NULL AND e.seq IS NOT NULL
  AND ($2::bigint IS NULL OR e.seq < $2)
  AND ($3::text IS NULL OR e.card_id = $3)
  AND ($4::text[] IS NULL OR e.feed_kind = ANY ($4))
  AND ($5::timestamptz IS NULL OR e.occurred_at >= $5)
  AND ($6::timestamptz IS NULL OR e.occurred_at < $6)
ORDER BY e.seq DESC
LIMIT $7
"""


@dataclass(frozen=True)
class FeedQuery:
    customer_id: str
    before_seq: int | None = None
    card_id: str | None = None
    kinds: list[FeedKind] | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 25


async def feed(pool: asyncpg.Pool, query: FeedQuery) -> tuple[list[FeedEntry], int | None]:
    """The customer's feed, newest first, and the position to continue
    behind (None when this page is the last)."""
    await sequence(pool)
    limit = min(query.limit, FEED_PAGE_MAX)
    rows = await pool.fetch(
        _FEED_SQL,
        query.customer_id,
        query.before_seq,
        query.card_id,
        [kind.value for kind in query.kinds] if query.kinds else None,
        query.since,
        query.until,
        limit + 1,
    )
    entries = [_entry(row) for row in rows[:limit]]
    more = len(rows) > limit
    return entries, (int(rows[limit - 1]["seq"]) if more else None)


def _amount(data: dict[str, Any], name: str) -> int:
    found = data.get(name)
    return int(found) if found is not None else 0


def _entry(row: asyncpg.Record) -> FeedEntry:
    data: dict[str, Any] = json.loads(row["data"])
    kind = FeedKind(row["feed_kind"])
    posted = int(row["posted_minor"] or 0)
    merchant = None
    if data.get("merchant_name") or data.get("mcc"):
        merchant = FeedMerchant(
            name=data.get("merchant_name"),
            mcc=data.get("mcc"),
            amount_minor=data.get("merchant_amount_minor"),
            currency=data.get("merchant_currency"),
        )
    entry: dict[str, Any] = {
        "id": row["event_id"],
        "kind": kind,
        "status": "posted",
        "occurred_at": row["occurred_at"],
        "amount_minor": posted,
        "posted_minor": posted,
        "currency": row["currency"],
        "card_id": row["card_id"],
        "authorization_id": row["authorization_id"],
        "transaction_id": data.get("transaction_id"),
        "merchant": merchant,
        "process_id": row["process_id"],
    }
    if kind is FeedKind.AUTHORIZATION:
        latest: dict[str, Any] = json.loads(row["latest"]) if row["latest"] else data
        if row["cleared"]:
            status, pending = "cleared", 0
        elif row["expired"]:
            status, pending = "expired", 0
        else:
            pending = _amount(latest, "pending_minor")
            status = "pending" if pending > 0 else "reversed"
        entry |= {
            "status": status,
            "amount_minor": -_amount(data, "held_minor"),
            "pending_minor": pending,
            "hold_expires_at": data.get("expires_at"),
        }
    elif kind is FeedKind.DECLINE:
        entry |= {
            "status": "declined",
            "amount_minor": -_amount(data, "requested_minor"),
            "reason_code": data.get("reason_code"),
            "reason": data.get("reason"),
        }
    elif kind is FeedKind.REVERSAL:
        entry |= {"amount_minor": _amount(data, "amount_minor")}
    elif kind in (FeedKind.CLEARING, FeedKind.FORCE_POST):
        # The merchant's whole amount; the wallet paid `posted_minor` of it so far.
        entry |= {
            "amount_minor": -_amount(data, "amount_minor"),
            "unposted_minor": _amount(data, "unposted_minor"),
        }
    return FeedEntry.model_validate(entry)


# ----- webhook endpoints ------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and base64 of random bytes."""
    return "whsec_" + base64.b64encode(token_source.token_bytes(SECRET_BYTES)).decode()


def new_endpoint_id() -> str:
    return "we_" + token_source.token_hex(12)


class TooManyEndpoints(Exception):
    """The program has ENDPOINTS_MAX endpoints already."""


async def create_endpoint(
    pool: asyncpg.Pool, url: str, event_types: list[str]
) -> tuple[asyncpg.Record, str, int]:
    """A new enabled endpoint: its row, its secret, and the position its
    deliveries start behind (every event written so far is behind it)."""
    secret = new_secret()
    async with pool.acquire() as connection, connection.transaction():
        # One creation at a time, so the count below holds.
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('webhook_endpoints', 0))"
        )
        count = await connection.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE status <> 'deleted'"
        )
        if count >= ENDPOINTS_MAX:
            raise TooManyEndpoints(f"at most {ENDPOINTS_MAX} webhook endpoints; delete one first")
        await sequence(connection)
        after = await connection.fetchval("SELECT coalesce(max(seq), 0) FROM customer_events")
        row = await connection.fetchrow(
            "INSERT INTO webhook_endpoints (endpoint_id, url, event_types, secret)"
            " VALUES ($1, $2, $3, $4) RETURNING *",
            new_endpoint_id(),
            url,
            sorted(set(event_types)),
            secret,
        )
    assert row is not None  # just inserted
    return row, secret, int(after)


async def delete_endpoint(pool: asyncpg.Pool, endpoint_id: str) -> asyncpg.Record | None:
    """Mark the endpoint deleted (its process ends at its next look); None if unknown."""
    found: asyncpg.Record | None = await pool.fetchrow(
        "UPDATE webhook_endpoints SET status = 'deleted', updated_at = now()"
        " WHERE endpoint_id = $1 AND status <> 'deleted' RETURNING *",
        endpoint_id,
    )
    return found


def signing_secrets(row: asyncpg.Record, now: datetime) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the
    previous one while its overlap lasts."""
    found = [row["secret"]]
    if row["previous_secret"] and row["previous_expires_at"] > now:
        found.append(row["previous_secret"])
    return found


def sign(secrets: list[str], message_id: str, at: datetime, body: str) -> str:
    """The webhook-signature header: one signature per secret, space separated,
    as Standard Webhooks lets a receiver accept any of them."""
    return " ".join(Webhook(secret).sign(message_id, at, body) for secret in secrets)


def delivery_body(event: CustomerEvent) -> str:
    return event.model_dump_json()


def _money(data: dict[str, Any], name: str, currency: str | None) -> str:
    amount = data.get(name)
    if amount is None or currency is None:
        return "a payment"
    return str(Money(amount_minor=int(amount), currency=Currency(currency)))


def customer_notification(event: CustomerEvent, currency: str | None) -> Notification | None:
    """What the customer is told of an event: a declined purchase and why,
    or a purchase that cleared."""
    merchant = event.data.get("merchant_name") or "A merchant"
    if event.type == EventType.AUTHORIZATION_DECLINED:
        amount = _money(event.data, "requested_minor", currency)
        reason = event.data.get("reason") or decline_sentence("")
        return Notification(
            key=f"events/{event.id}",
            customer_id=event.customer_id,
            subject="Payment declined",
            body=f"{merchant}: {amount} was declined. {reason}",
        )
    if event.type == EventType.TRANSACTION_CLEARED:
        amount = _money(event.data, "amount_minor", currency)
        return Notification(
            key=f"events/{event.id}",
            customer_id=event.customer_id,
            subject="Card payment",
            body=f"{merchant}: {amount} paid with your card.",
        )
    return None


# ----- delivering events ------------------------------------------------------------


class CustomerNotifier(Protocol):
    async def notify_customer(self, notification: Notification) -> NotificationReceipt: ...


class EndpointBatchRequest(BaseModel):
    endpoint_id: str = Field(min_length=1, max_length=100)
    after_seq: int = Field(ge=0)
    limit: int = Field(default=EVENTS_PAGE_MAX, ge=1, le=EVENTS_PAGE_MAX)


class EventRef(BaseModel):
    seq: int
    event_id: str


class EndpointBatch(BaseModel):
    endpoint_status: str
    events: list[EventRef]


class DeliveryRequest(BaseModel):
    endpoint_id: str = Field(min_length=1, max_length=100)
    event_id: str = Field(min_length=1, max_length=100)
    # The delivery's attempt in the endpoint's process (a redelivery is another).
    redelivery: int = Field(default=0, ge=0)


class DeliveryOutcome(BaseModel):
    delivered: bool
    status_code: int | None = None
    skipped: str | None = None


class DisableRequest(BaseModel):
    endpoint_id: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=500)


class EventDeliveryActivities:
    """What the delivery process of an endpoint (workflows/event_delivery.py) runs."""

    def __init__(self, pool: asyncpg.Pool, notifier: CustomerNotifier | None = None) -> None:
        self._pool = pool
        self._notifier = notifier
        self._http: httpx.AsyncClient | None = None

    @ledger_activity(EVENTS_NEXT_FOR_ENDPOINT)
    async def next_for_endpoint(self, request: EndpointBatchRequest) -> EndpointBatch:
        """The endpoint's status and the next events of its types after a position."""
        await sequence(self._pool)
        endpoint = await self._pool.fetchrow(
            "SELECT status, event_types FROM webhook_endpoints WHERE endpoint_id = $1",
            request.endpoint_id,
        )
        if endpoint is None:
            return EndpointBatch(endpoint_status="deleted", events=[])
        rows = await self._pool.fetch(
            "SELECT seq, event_id FROM customer_events WHERE seq > $1 AND type = ANY ($2)"
            " ORDER BY seq LIMIT $3",
            request.after_seq,
            list(endpoint["event_types"]),
            request.limit,
        )
        return EndpointBatch(
            endpoint_status=endpoint["status"],
            events=[EventRef(seq=row["seq"], event_id=row["event_id"]) for row in rows],
        )

    @ledger_activity(EVENTS_DISABLE_ENDPOINT)
    async def disable_endpoint(self, request: DisableRequest) -> bool:
        """Disable an endpoint that kept failing; True if this call did."""
        done = await self._pool.fetchval(
            "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2,"
            " updated_at = now() WHERE endpoint_id = $1 AND status = 'enabled' RETURNING true",
            request.endpoint_id,
            request.reason,
        )
        return bool(done)

    @provider_activity(EVENTS_DELIVER)
    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome:
        """POST one event to the endpoint, signed with its secrets now. A
        2xx answer delivers it; anything else fails this attempt (retried
        by the process's policy)."""
        endpoint = await self._pool.fetchrow(
            "SELECT url, status, secret, previous_secret, previous_expires_at"
            " FROM webhook_endpoints WHERE endpoint_id = $1",
            request.endpoint_id,
        )
        if endpoint is None or endpoint["status"] != "enabled":
            return DeliveryOutcome(delivered=False, skipped="endpoint not enabled")
        event = await event_by_id(self._pool, request.event_id)
        if event is None:
            return DeliveryOutcome(delivered=False, skipped="no such event")
        if endpoint["url"] == CUSTOMERS_SINK_URL:
            return await self._notify(event)
        now = datetime.now(UTC)
        body = delivery_body(event)
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sign(signing_secrets(endpoint, now), event.id, now, body),
        }
        try:
            answer = await self._client().post(endpoint["url"], content=body, headers=headers)
        except httpx.HTTPError as error:
            raise ApplicationError(
                f"endpoint unreachable: {type(error).__name__}", type="EndpointUnreachable"
            ) from None
        if not answer.is_success:
            raise ApplicationError(
                f"endpoint answered {answer.status_code}: "
                f"{answer.text[:DELIVERY_ANSWER_CHARS_MAX]}",
                type="EndpointRefused",
            )
        activity.logger.info("delivered %s to %s", event.id, request.endpoint_id)
        return DeliveryOutcome(delivered=True, status_code=answer.status_code)

    async def _notify(self, event: CustomerEvent) -> DeliveryOutcome:
        """Tell the customer, once per event and channel (the key dedupes)."""
        assert self._notifier is not None, "the providers worker sends notifications"
        currency = await self._pool.fetchval(
            "SELECT currency FROM customer_events WHERE event_id = $1", event.id
        )
        notification = customer_notification(event, currency)
        if notification is None:
            return DeliveryOutcome(delivered=False, skipped=f"{event.type} is not notified")
        receipt = await self._notifier.notify_customer(notification)
        return DeliveryOutcome(delivered=bool(receipt.message_ids))

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_SECONDS, follow_redirects=False)
        return self._http

    def all(self) -> list[object]:
        return [self.next_for_endpoint, self.disable_endpoint, self.deliver]

    def ledger(self) -> list[object]:
        return [self.next_for_endpoint, self.disable_endpoint]

    def providers(self) -> list[object]:
        return [self.deliver]


def overlap_ends(now: datetime, seconds: int) -> datetime:
    return now + timedelta(seconds=seconds)
