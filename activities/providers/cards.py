"""Issuer calls for card issuing and the card entity (providers queue)."""

from __future__ import annotations

from datetime import date

import asyncpg
from pydantic import BaseModel
from temporalio import activity

from activities.customers import CustomerStore
from activities.providers.issuer import IssuerClient
from schemas.issuer import (
    Address,
    Card,
    CardState,
    CardType,
    ReissueReason,
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


class CardholderRequest(BaseModel):
    customer_id: str
    address: Address


class CreateCard(BaseModel):
    key: str
    cardholder_id: str
    kind: str
    currency: Currency


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

    @activity.defn(name=ENSURE_CARDHOLDER)
    async def ensure_cardholder(self, request: CardholderRequest) -> str:
        """The customer's cardholder at the issuer, created once (keyed by customer)."""
        profile = await self.customers.get(request.customer_id)
        cardholder = await self.issuer.create_cardholder(
            first_name=profile.first_name,
            last_name=profile.last_name,
            email=profile.email or f"{profile.customer_id}@customers.invalid",
            address=request.address,
            idempotency_key=f"cardholder/{request.customer_id}",
        )
        return cardholder.id

    @activity.defn(name=CREATE_CARD)
    async def create_card(self, request: CreateCard) -> Card:
        shipping = ShippingRequest() if request.kind == "physical" else None
        return await self.issuer.create_card(
            cardholder_id=request.cardholder_id,
            card_type=CardType(request.kind),
            currency=request.currency,
            shipping=shipping,
            idempotency_key=request.key,
        )

    @activity.defn(name=SET_CARD_STATE)
    async def set_card_state(self, request: CardStateRequest) -> Card:
        return await self.issuer.update_card_state(
            request.card_id, state=request.state, reason=request.reason, idempotency_key=request.key
        )

    @activity.defn(name=RESCHEDULE_DELIVERY)
    async def reschedule_delivery(self, card_id: str, delivery_date: date, key: str) -> Card:
        return await self.issuer.reschedule_delivery(
            card_id, delivery_date=delivery_date, idempotency_key=key
        )

    @activity.defn(name=ACTIVATE_CARD)
    async def activate_card(self, card_id: str, key: str) -> Card:
        return await self.issuer.activate_card(card_id, idempotency_key=key)

    @activity.defn(name=REISSUE_CARD)
    async def reissue_card(self, card_id: str, reason: str, key: str) -> Card:
        """A replacement card; the issuer closes the old one."""
        return await self.issuer.reissue_card(
            card_id, reason=ReissueReason(reason), idempotency_key=key
        )

    @activity.defn(name=RECORD_CARD)
    async def record_card(self, record: CardRecord) -> None:
        await self.pool.execute(
            "INSERT INTO cards (card_id, request_id, customer_id, kind, replaces)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (card_id) DO NOTHING",
            record.card_id,
            record.request_id,
            record.customer_id,
            record.kind,
            record.replaces,
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
