"""The issuer's word as customer events: which issuer webhooks are events
(authorizations approved, declined with their reason, reversed and expired;
cards' state and shipping; disputes), and the statement that writes one with
the gateway's memory of the webhook, both or neither. Transactions are not
among them: the card reports what it settles (card_transactions)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from activities.events import event_id
from schemas.cards import CARD_REASONS, DeclineReason
from schemas.events import EventType, FeedKind, decline_sentence


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


# The issuer's own refusals (it declines a paused or closed card without
# asking the card), by what its reason says.
ISSUER_REFUSALS = (
    ("is paused", DeclineReason.CARD_PAUSED),
    ("is closed", DeclineReason.CARD_CLOSED),
)
ISSUER_DECLINED = "issuer_declined"


def decline_code(reason: str) -> str:
    """The reason code of a decline: the card's own, or the issuer's refusal
    named the same way, else `issuer_declined` (a stand-in, say)."""
    if reason in CARD_REASONS:
        return reason
    for words, code in ISSUER_REFUSALS:
        if words in reason:
            return code.value
    return ISSUER_DECLINED


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
            reason = decline_code(str(data.get("decision_reason") or last.get("reason") or ""))
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
