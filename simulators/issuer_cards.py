"""Cardholders and cards: issuing, the card lifecycle and physical shipping.

Card states:

    pending_fulfillment -> pending_activation -> open <-> paused -> closed

A virtual card is open at once. A physical card starts pending_fulfillment,
becomes pending_activation when it is shipped, and opens only when activated
after delivery. Any card that is not closed can be closed or reissued.

Shipping of a physical card:

    pending -> submitted -> shipped -> delivered | returned | failure

(a card may also fail in fulfillment, submitted -> failure).

Delivery may be rescheduled only before the card is shipped.
"""

from __future__ import annotations

import secrets
from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from schemas.money import Currency
from simulators.issuer_models import (
    Card,
    Cardholder,
    CardholderIn,
    CardholderUpdateIn,
    CardIn,
    CardPage,
    CardState,
    CardStateIn,
    CardType,
    Fee,
    ReissueIn,
    ReissueReason,
    RescheduleIn,
    Shipping,
    ShippingAdvanceIn,
    ShippingIn,
    ShippingService,
    ShippingStatus,
)
from simulators.issuer_state import (
    CARDHOLDERS,
    CARDS,
    FEES,
    IssuerState,
    conflict,
    major_to_minor,
    unprocessable,
)

CARD_VALIDITY_YEARS = 3
CARDS_PAGE_SIZE_DEFAULT = 20
CARDS_PAGE_SIZE_MAX = 100
# How far ahead a delivery may be rescheduled.
RESCHEDULE_DAYS_MAX = 60
DELIVERY_DAYS_BY_SERVICE: dict[ShippingService, int] = {"standard": 5, "express": 2}
CARRIER_DEFAULT = "UPS"
# What producing one physical card costs the program, in major units of the
# card's currency; charged when the card is submitted to fulfillment.
CARD_PRODUCTION_FEE_MAJOR = 3

# The states a requested state may be reached from through PATCH. Opening a
# card that was never opened is activation, not a state update.
STATE_UPDATE_FROM: dict[str, frozenset[CardState]] = {
    "paused": frozenset({"open"}),
    "open": frozenset({"paused"}),
    "closed": frozenset({"pending_fulfillment", "pending_activation", "open", "paused"}),
}
STATE_UPDATE_EVENT = {"paused": "card.paused", "open": "card.resumed", "closed": "card.closed"}
STATE_UPDATE_ACTION = {"paused": "pause", "open": "resume", "closed": "close"}

SHIPPING_NEXT: dict[ShippingStatus, frozenset[ShippingStatus]] = {
    "pending": frozenset({"submitted"}),
    "submitted": frozenset({"shipped", "failure"}),
    "shipped": frozenset({"delivered", "returned", "failure"}),
    "delivered": frozenset(),
    "returned": frozenset(),
    "failure": frozenset(),
}
# The next step of a delivery that goes well (the simulate call's default).
SHIPPING_HAPPY_NEXT: dict[ShippingStatus, ShippingStatus] = {
    "pending": "submitted",
    "submitted": "shipped",
    "shipped": "delivered",
}
RESCHEDULABLE: frozenset[ShippingStatus] = frozenset({"pending", "submitted"})


def _new_card(
    state: IssuerState,
    cardholder: Cardholder,
    card_type: CardType,
    currency: Currency,
    shipping: ShippingIn | None,
    last4: str | None = None,
) -> Card:
    now = state.now()
    stamp = now.isoformat()
    shipped_to: Shipping | None = None
    if card_type == "physical":
        wanted = shipping or ShippingIn()
        shipped_to = Shipping(
            status="pending",
            name=wanted.name or f"{cardholder.first_name} {cardholder.last_name}",
            address=wanted.address or cardholder.address,
            service=wanted.service,
            updated_at=stamp,
        )
    return Card(
        id=state.new_id(CARDS),
        cardholder_id=cardholder.id,
        type=card_type,
        currency=currency,
        state="open" if card_type == "virtual" else "pending_fulfillment",
        # The number itself never leaves the issuer; cardflow sees last4 and a token.
        last4=last4 or f"{secrets.randbelow(10_000):04d}",
        token=f"tok_{secrets.token_hex(12)}",
        exp_month=now.month,
        exp_year=now.year + CARD_VALIDITY_YEARS,
        shipping=shipped_to,
        created_at=stamp,
        updated_at=stamp,
        activated_at=stamp if card_type == "virtual" else None,
    )


def _shipping_of(card: Card, action: str) -> Shipping:
    if card.shipping is None:
        conflict(f"card {card.id} is virtual: it is never shipped, so it cannot {action}")
    return card.shipping


def router(state: IssuerState) -> APIRouter:
    api = state.context.router()

    # ----- cardholders -------------------------------------------------------

    @api.post("/v1/cardholders", status_code=201)
    async def create_cardholder(body: CardholderIn) -> Cardholder:
        """Registers a person cards can be issued to; announced as cardholder.created."""
        cardholder = Cardholder(
            **body.model_dump(),
            id=state.new_id(CARDHOLDERS),
            status="active",
            created_at=state.now_iso(),
        )
        state.save(CARDHOLDERS, cardholder)
        state.emit("cardholder.created", cardholder)
        return cardholder

    @api.get("/v1/cardholders/{cardholder_id}")
    async def get_cardholder(cardholder_id: str) -> Cardholder:
        """The cardholder as registered; 404 when unknown."""
        return state.load(CARDHOLDERS, cardholder_id)

    @api.patch("/v1/cardholders/{cardholder_id}")
    async def update_cardholder(cardholder_id: str, body: CardholderUpdateIn) -> Cardholder:
        """Changes the cardholder's e-mail, phone number or (billing) address;
        fields left out stay. Cards already issued keep their shipping address.
        Announced as cardholder.updated when anything changed."""
        cardholder = state.load(CARDHOLDERS, cardholder_id)
        changes = {field: getattr(body, field) for field in body.model_fields_set}
        if not changes:
            unprocessable(["body"], "name at least one of email, phone_number, address", None)
        if changes.get("address", cardholder.address) is None:
            unprocessable(["body", "address"], "a cardholder always has an address", None)
        updated = cardholder.model_copy(update=changes)
        if updated == cardholder:
            return cardholder
        state.save(CARDHOLDERS, updated)
        state.emit("cardholder.updated", updated)
        return updated

    # ----- cards ---------------------------------------------------------------

    @api.post("/v1/cards", status_code=201)
    async def create_card(body: CardIn) -> Card:
        """Issues a card spending in `currency`: virtual cards are open at once,
        physical ones wait for fulfillment, shipped to the cardholder's address
        unless `shipping` says otherwise. Announced as card.created."""
        cardholder = state.load(CARDHOLDERS, body.cardholder_id)
        card = _new_card(state, cardholder, body.type, body.currency, body.shipping)
        state.save(CARDS, card)
        state.emit("card.created", card)
        return card

    @api.get("/v1/cards/{card_id}")
    async def get_card(card_id: str) -> Card:
        """The card: state, last4, token and shipping; never the full number."""
        return state.load(CARDS, card_id)

    @api.get("/v1/cards")
    async def list_cards(
        cardholder_id: Annotated[str, Query(min_length=1)],
        limit: Annotated[int, Query(ge=1, le=CARDS_PAGE_SIZE_MAX)] = CARDS_PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(min_length=1)] = None,
    ) -> CardPage:
        """A cardholder's cards, oldest first, `limit` at a time; the next page
        starts after the last card id of this one."""
        cards = [card for card in state.all(CARDS) if card.cardholder_id == cardholder_id]
        if starting_after is not None:
            ids = [card.id for card in cards]
            if starting_after not in ids:
                unprocessable(
                    ["query", "starting_after"],
                    f"{starting_after} is not a card of {cardholder_id}",
                    starting_after,
                )
            cards = cards[ids.index(starting_after) + 1 :]
        return CardPage(data=cards[:limit], has_more=len(cards) > limit)

    @api.patch("/v1/cards/{card_id}")
    async def update_card_state(card_id: str, body: CardStateIn) -> Card:
        """Pauses (open -> paused), resumes (paused -> open) or closes (any card
        not closed) the card. Asking for the state the card is in changes
        nothing; any other move is a 409 naming the states it needs."""
        card = state.load(CARDS, card_id)
        if card.state == body.state:
            return card
        allowed = STATE_UPDATE_FROM[body.state]
        if card.state not in allowed:
            action = STATE_UPDATE_ACTION[body.state]
            hint = " (a new physical card opens by activation)" if body.state == "open" else ""
            conflict(
                f"cannot {action} card {card.id}: it is {card.state}, and {action} needs "
                f"{' or '.join(sorted(allowed))}{hint}"
            )
        stamp = state.now_iso()
        card.state = body.state
        card.state_reason = body.reason
        card.updated_at = stamp
        if body.state == "closed":
            card.closed_at = stamp
        state.save(CARDS, card)
        state.emit(STATE_UPDATE_EVENT[body.state], card)
        return card

    @api.post("/v1/cards/{card_id}/activate")
    async def activate_card(card_id: str) -> Card:
        """Opens a physical card once it has been delivered, once; 409 for a
        virtual card, before delivery, or when it is not pending activation."""
        card = state.load(CARDS, card_id)
        shipping = _shipping_of(card, "be activated (virtual cards are open at creation)")
        if card.state != "pending_activation":
            conflict(f"cannot activate card {card.id}: it is {card.state}, not pending_activation")
        if shipping.status != "delivered":
            conflict(
                f"cannot activate card {card.id} before delivery: its shipping is {shipping.status}"
            )
        stamp = state.now_iso()
        card.state = "open"
        card.state_reason = None
        card.activated_at = stamp
        card.updated_at = stamp
        state.save(CARDS, card)
        state.emit("card.activated", card)
        return card

    @api.post("/v1/cards/{card_id}/reissue", status_code=201)
    async def reissue_card(card_id: str, body: ReissueIn) -> Card:
        """A new card of the same type and currency replacing this one, which is
        closed. Lost or stolen cards get a new number; damaged or expired ones
        keep the last4. Announced as card.closed (old) and card.reissued (new)."""
        old = state.load(CARDS, card_id)
        if old.state == "closed":
            conflict(f"cannot reissue card {old.id}: it is closed")
        if old.type == "virtual" and body.shipping is not None:
            unprocessable(
                ["body", "shipping"], "only physical cards are shipped; leave shipping out", None
            )
        shipping = body.shipping
        if old.shipping is not None and shipping is None:
            shipping = ShippingIn(
                name=old.shipping.name, address=old.shipping.address, service=old.shipping.service
            )
        cardholder = state.load(CARDHOLDERS, old.cardholder_id)
        keep_number = body.reason in ("damaged", "expired")
        new = _new_card(
            state,
            cardholder,
            old.type,
            old.currency,
            shipping,
            last4=old.last4 if keep_number else None,
        )
        new.replaces = old.id
        new.reissue_reason = body.reason
        stamp = new.created_at
        old.state = "closed"
        old.state_reason = _reissue_close_reason(body.reason)
        old.replaced_by = new.id
        old.closed_at = stamp
        old.updated_at = stamp
        state.save(CARDS, new)
        state.save(CARDS, old)
        state.emit("card.closed", old)
        state.emit("card.reissued", new)
        return new

    # ----- shipping ------------------------------------------------------------

    @api.post("/v1/cards/{card_id}/shipping/reschedule")
    async def reschedule_delivery(card_id: str, body: RescheduleIn) -> Card:
        """Asks for delivery on a later date, at most 60 days ahead; only
        while the card is not yet shipped (409 after). Announced as
        card.shipping.updated."""
        card = state.load(CARDS, card_id)
        shipping = _shipping_of(card, "be rescheduled")
        today = state.today()
        if not today < body.delivery_date <= today + timedelta(days=RESCHEDULE_DAYS_MAX):
            unprocessable(
                ["body", "delivery_date"],
                f"must be after {today} and at most {RESCHEDULE_DAYS_MAX} days ahead",
                body.delivery_date.isoformat(),
            )
        if card.state == "closed":
            conflict(f"cannot reschedule delivery of card {card.id}: it is closed")
        if shipping.status not in RESCHEDULABLE:
            conflict(
                f"cannot reschedule delivery of card {card.id}: it is already {shipping.status}; "
                "delivery can be rescheduled only before shipment"
            )
        stamp = state.now_iso()
        shipping.requested_delivery_date = body.delivery_date
        shipping.updated_at = stamp
        card.updated_at = stamp
        state.save(CARDS, card)
        state.emit("card.shipping.updated", card)
        return card

    @api.post("/v1/simulate/cards/{card_id}/shipping")
    async def simulate_shipping(card_id: str, body: ShippingAdvanceIn) -> Card:
        """Sandbox: moves the shipment one step (the next normal step when no
        status is given). Shipping gives a carrier, tracking number and eta and
        makes the card pending_activation. Announced as card.shipping.updated."""
        card = state.load(CARDS, card_id)
        shipping = _shipping_of(card, "be shipped")
        if card.state == "closed":
            conflict(f"cannot ship card {card.id}: it is closed")
        target = body.status or SHIPPING_HAPPY_NEXT.get(shipping.status)
        if target is None or target not in SHIPPING_NEXT[shipping.status]:
            allowed = " or ".join(sorted(SHIPPING_NEXT[shipping.status])) or "nothing (final)"
            conflict(
                f"shipping of card {card.id} is {shipping.status}; it can move to {allowed}, "
                f"not {target or 'a next step'}"
            )
        stamp = state.now_iso()
        shipping.status = target
        shipping.updated_at = stamp
        card.updated_at = stamp
        fee: Fee | None = None
        if target == "submitted":
            fee = _production_fee(state, card, stamp)
        if target == "shipped":
            shipping.carrier = body.carrier or CARRIER_DEFAULT
            shipping.tracking_number = f"1Z{secrets.token_hex(8).upper()}"
            shipping.eta = _eta(state.today(), shipping)
            card.state = "pending_activation"
        state.save(CARDS, card)
        state.emit("card.shipping.updated", card)
        if fee is not None:
            state.save(FEES, fee)
            state.emit("fee.charged", fee)
        return card

    return api


def _eta(today: date, shipping: Shipping) -> date:
    """The carrier's estimate, or the date asked for when that is later."""
    estimate = today + timedelta(days=DELIVERY_DAYS_BY_SERVICE[shipping.service])
    requested = shipping.requested_delivery_date
    return max(estimate, requested) if requested is not None else estimate


def _production_fee(state: IssuerState, card: Card, stamp: str) -> Fee:
    return Fee(
        id=state.new_id(FEES),
        type="card_production",
        card_id=card.id,
        amount_minor=major_to_minor(CARD_PRODUCTION_FEE_MAJOR, card.currency),
        currency=card.currency,
        created_at=stamp,
    )


def _reissue_close_reason(reason: ReissueReason) -> str:
    return f"reissued ({reason})"
