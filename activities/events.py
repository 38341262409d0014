"""Customer events (schemas/events.py): their ids, the events a process
records, reading them in order, the customer's feed, and webhook endpoints.

Who writes events is activities/migrations/0021_customer_events.sql; the
issuer's word becomes events in activities/issuer_events.py, and
activities/event_delivery.py delivers them to the endpoints.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets as token_source
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from schemas.events import (
    CustomerEvent,
    EventType,
    FeedEntry,
    FeedKind,
    FeedMerchant,
    FeedPage,
)

SEQUENCE_BATCH_MAX = 10_000
EVENTS_PAGE_MAX = 100
FEED_PAGE_MAX = 100
ENDPOINTS_MAX = 50
SECRET_BYTES = 24

# The endpoint that is the customers themselves: its events are sent to each
# customer as a notification on the channels they prefer, not to a URL.
CUSTOMERS_ENDPOINT_ID = "we_customers"
CUSTOMERS_SINK_URL = "cardflow:customers"
CUSTOMER_NOTIFIED_TYPES = (EventType.AUTHORIZATION_DECLINED, EventType.TRANSACTION_CLEARED)


def event_id(source: str) -> str:
    """An event's id from what it reports (the same words as the SQL triggers)."""
    return "evt_" + hashlib.sha256(source.encode()).hexdigest()[:32]


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
    """An event that has its position. Its id was learnt from the stream or a
    delivery, both of which read positioned events: no sequencing here (it
    would cost every delivery a second round trip)."""
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


async def feed_page(pool: asyncpg.Pool, query: FeedQuery) -> FeedPage:
    """One page of the feed as the API answers it."""
    entries, more = await feed(pool, query)
    return FeedPage(data=entries, next_cursor=None if more is None else str(more))


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


async def rotate_secret(
    pool: asyncpg.Pool, endpoint_id: str, overlap_seconds: int
) -> tuple[asyncpg.Record, str] | None:
    """A new signing secret; the previous one signs beside it for the
    overlap (none when 0). None when there is no such endpoint."""
    secret = new_secret()
    row: asyncpg.Record | None = await pool.fetchrow(
        "UPDATE webhook_endpoints SET previous_secret = CASE WHEN $3 > 0 THEN secret END,"
        " previous_expires_at = CASE WHEN $3 > 0 THEN $4::timestamptz END,"
        " secret = $2, updated_at = now()"
        " WHERE endpoint_id = $1 AND status <> 'deleted' RETURNING *",
        endpoint_id,
        secret,
        overlap_seconds,
        datetime.now(UTC) + timedelta(seconds=overlap_seconds),
    )
    return None if row is None else (row, secret)
