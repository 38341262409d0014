"""What the delivery process of a webhook endpoint
(workflows/event_delivery.py) runs: the next events of the endpoint's types
after its position, one delivery signed with Standard Webhooks (or, for the
customers' own endpoint, a notification on the customer's channels), and
disabling an endpoint that kept failing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import httpx
from pydantic import BaseModel, Field
from standardwebhooks import Webhook
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.events import (
    CUSTOMERS_SINK_URL,
    EVENTS_PAGE_MAX,
    event_by_id,
    sequence,
)
from activities.queues import ledger_activity, provider_activity
from schemas.customers import Notification, NotificationReceipt
from schemas.events import CustomerEvent, EventType, decline_sentence
from schemas.money import Currency, Money

# One delivery attempt: an endpoint slower than this is retried later.
DELIVERY_TIMEOUT_SECONDS = 10.0
# Of an endpoint's answer, this much is kept to say why it failed.
DELIVERY_ANSWER_CHARS_MAX = 200

EVENTS_NEXT_FOR_ENDPOINT = "events.next_for_endpoint"
EVENTS_DISABLE_ENDPOINT = "events.disable_endpoint"
EVENTS_DELIVER = "events.deliver"


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
