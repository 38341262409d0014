"""Issuer calls for card issuing and the card entity (providers queue)."""

from __future__ import annotations

import hashlib
import json

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel

from activities.customers import CustomerStore
from activities.events import event_id
from activities.providers.issuer import IssuerClient
from activities.queues import provider_activity
from schemas.cards import CardActivationRequest, CardReissueRequest, DeliveryRescheduleRequest
from schemas.events import EventType
from schemas.issuer import (
    Address,
    Card,
    CardState,
    CardType,
    ShippingRequest,
)
from schemas.money import Currency

ENSURE_CARDHOLDER = "issuer.ensure_cardholder"
CREATE_CARD = "issuer.create_card"
SET_CARD_STATE = "issuer.set_card_state"
RESCHEDULE_DELIVERY = "issuer.reschedule_delivery"
ACTIVATE_CARD = "issuer.activate_card"
RECORD_CARD = "cards.record"
REISSUE_CARD = "issuer.reissue_card"


# Enough of a SHA-256 to tell two requests of one customer apart.
CARDHOLDER_DIGEST_CHARS = 32


class CardholderRequest(BaseModel):
    customer_id: str
    address: Address
    # The key of this request's address change, if the cardholder has another
    # address. Requests scheduled before it existed have none (see _address_key).
    key: str | None = None


class CreateCard(BaseModel):
    key: str
    cardholder_id: str
    kind: str
    currency: Currency
    # Where a physical card goes. Requests scheduled before it existed have
    # none: their card goes to the cardholder's address, as it did then.
    address: Address | None = None


class CardStateRequest(BaseModel):
    key: str
    card_id: str
    state: CardState
    reason: str | None = None


class CardRecord(BaseModel):
    card_id: str
    request_id: str
    customer_id: str
    kind: str
    # The card this one was reissued for (lost or stolen), if any.
    replaces: str | None = None


class CardActivities:
    def __init__(self, issuer: IssuerClient, pool: asyncpg.Pool) -> None:
        self.issuer = issuer
        self.pool = pool
        self.customers = CustomerStore(pool)

    @provider_activity(ENSURE_CARDHOLDER)
    async def ensure_cardholder(self, request: CardholderRequest) -> str:
        """The customer's one cardholder at the issuer, with `address` as its
        address: created with the customer's first card, reused (its address
        updated when it differs) for every later one.

        Like a real card platform, cardflow keeps the issuer's cardholder id
        against the customer and updates the person in place (Stripe's and
        Lithic's cardholder update) rather than registering them again per
        address: the issuer holds one verified person, whose cards, limits
        and disputes belong together.
        """
        cardholder_id = await self._known_cardholder(request.customer_id)
        if cardholder_id is None:
            created = await self._create_cardholder(request)
            if created is not None:
                return created
            cardholder_id = await self._known_cardholder(request.customer_id)
            assert cardholder_id is not None, "a cardholder recorded under the lock"
        cardholder = await self.issuer.get_cardholder(cardholder_id)
        if cardholder.address != request.address:
            await self.issuer.update_cardholder(
                cardholder_id, address=request.address, idempotency_key=_address_key(request)
            )
        return cardholder_id

    async def _known_cardholder(self, customer_id: str) -> str | None:
        """The recorded cardholder, or for a customer whose cards predate the
        record, the cardholder of their first card (recorded now)."""
        known = await self.pool.fetchval(
            "SELECT cardholder_id FROM cardholders WHERE customer_id = $1", customer_id
        )
        if known is not None:
            return str(known)
        first_card = await self.pool.fetchval(
            "SELECT card_id FROM cards WHERE customer_id = $1 ORDER BY created_at, card_id LIMIT 1",
            customer_id,
        )
        if first_card is None:
            return None
        card = await self.issuer.get_card(str(first_card))
        await self._record_cardholder(self.pool, customer_id, card.cardholder_id)
        return card.cardholder_id

    async def _create_cardholder(self, request: CardholderRequest) -> str | None:
        """A new cardholder for the customer, recorded; None when another card
        of theirs created one first (read it from the record)."""
        profile = await self.customers.get(request.customer_id)
        person = {
            "first_name": profile.first_name,
            "last_name": profile.last_name,
            "email": profile.email or f"{profile.customer_id}@customers.invalid",
        }
        async with self.pool.acquire() as connection, connection.transaction():
            # Two first cards of one customer issued at once register one
            # person: the second waits here, then finds the first's cardholder.
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"cardholder/{request.customer_id}",
            )
            if await connection.fetchval(
                "SELECT 1 FROM cardholders WHERE customer_id = $1", request.customer_id
            ):
                return None
            # The key names this very request (customer and everything sent),
            # so a retry is answered once and a later request with another
            # address or e-mail is never refused as a reuse of the key. The
            # one-person-per-customer rule is the record's, not the key's.
            sent = {**person, "address": request.address.model_dump(mode="json")}
            digest = hashlib.sha256(json.dumps(sent, sort_keys=True).encode()).hexdigest()
            cardholder = await self.issuer.create_cardholder(
                **person,
                address=request.address,
                idempotency_key=(
                    f"cardholder/{request.customer_id}/{digest[:CARDHOLDER_DIGEST_CHARS]}"
                ),
            )
            await self._record_cardholder(connection, request.customer_id, cardholder.id)
        return cardholder.id

    @staticmethod
    async def _record_cardholder(
        connection: asyncpg.Pool | PoolConnectionProxy, customer_id: str, cardholder_id: str
    ) -> None:
        await connection.execute(
            "INSERT INTO cardholders (customer_id, cardholder_id) VALUES ($1, $2)"
            " ON CONFLICT (customer_id) DO NOTHING",
            customer_id,
            cardholder_id,
        )

    @provider_activity(CREATE_CARD)
    async def create_card(self, request: CreateCard) -> Card:
        # The address is sent, not left to the cardholder's: two cards of one
        # customer issued at once to two addresses each go where asked.
        shipping = ShippingRequest(address=request.address) if request.kind == "physical" else None
        return await self.issuer.create_card(
            cardholder_id=request.cardholder_id,
            card_type=CardType(request.kind),
            currency=request.currency,
            shipping=shipping,
            idempotency_key=request.key,
        )

    @provider_activity(SET_CARD_STATE)
    async def set_card_state(self, request: CardStateRequest) -> Card:
        return await self.issuer.update_card_state(
            request.card_id, state=request.state, reason=request.reason, idempotency_key=request.key
        )

    @provider_activity(RESCHEDULE_DELIVERY)
    async def reschedule_delivery(self, request: DeliveryRescheduleRequest) -> Card:
        return await self.issuer.reschedule_delivery(
            request.card_id, delivery_date=request.delivery_date, idempotency_key=request.key
        )

    @provider_activity(ACTIVATE_CARD)
    async def activate_card(self, request: CardActivationRequest) -> Card:
        return await self.issuer.activate_card(request.card_id, idempotency_key=request.key)

    @provider_activity(REISSUE_CARD)
    async def reissue_card(self, request: CardReissueRequest) -> Card:
        """A replacement card; the issuer closes the old one."""
        return await self.issuer.reissue_card(
            request.card_id, reason=request.reason, idempotency_key=request.key
        )

    @provider_activity(RECORD_CARD)
    async def record_card(self, record: CardRecord) -> None:
        """Record the card cardflow issued, and its `card.issued` event with it."""
        await self.pool.execute(
            "WITH recorded AS (INSERT INTO cards (card_id, request_id, customer_id, kind, replaces)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (card_id) DO NOTHING RETURNING *)"
            " INSERT INTO customer_events (event_id, type, customer_id, card_id, process_id,"
            " occurred_at, data)"
            " SELECT $6, $7, r.customer_id, r.card_id, $8, r.created_at,"
            " jsonb_strip_nulls(jsonb_build_object('kind', r.kind, 'replaces', r.replaces))"
            " FROM recorded r ON CONFLICT (event_id) DO NOTHING",
            record.card_id,
            record.request_id,
            record.customer_id,
            record.kind,
            record.replaces,
            event_id(f"card-issued/{record.card_id}"),
            EventType.CARD_ISSUED.value,
            f"card-issue/{record.request_id}",
        )

    def all(self) -> list[object]:
        return [
            self.ensure_cardholder,
            self.create_card,
            self.set_card_state,
            self.reschedule_delivery,
            self.activate_card,
            self.record_card,
            self.reissue_card,
        ]


def _address_key(request: CardholderRequest) -> str:
    """The idempotency key of the address change this request makes. A request
    from before keys were passed gets one derived from what it asks, which is
    stable across its retries."""
    if request.key is not None:
        return request.key
    digest = hashlib.sha256(request.address.model_dump_json().encode()).hexdigest()
    return f"cardholder/{request.customer_id}/address/{digest[:CARDHOLDER_DIGEST_CHARS]}"
