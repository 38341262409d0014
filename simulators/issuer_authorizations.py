"""Authorizations and what follows them on the card network: increments,
advice, clearings, reversals and expiry (settled transactions, refunds and
force posts: simulators/issuer_transactions.py).

An authorization arrives in the merchant's currency and is converted at the
network's rate into the card's currency, which is what the issuer holds and
settles; every later message about it (increment, advice, clearing,
reversal) is in the card's currency. Whether to approve is decided in real
time (simulators/issuer_realtime.py).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from simulators.issuer_authentications import require_authentication_of
from simulators.issuer_models import (
    AdviceIn,
    Authorization,
    AuthorizationEntry,
    AuthorizationPage,
    AuthorizationRequestData,
    AuthorizeIn,
    ClearIn,
    Decision,
    IncrementIn,
    Reversal,
    ReverseIn,
    Transaction,
)
from simulators.issuer_realtime import decide
from simulators.issuer_state import (
    AUTHORIZATIONS,
    CARDS,
    NAME,
    REVERSALS,
    TRANSACTIONS,
    IssuerState,
    conflict,
    convert_back_minor,
    convert_minor,
    network_rate,
    unprocessable,
)
from simulators.issuer_transactions import (
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    page_of,
    record_transaction,
)

# How long an approved authorization holds funds before it expires.
AUTHORIZATION_HOLD_DAYS = 7


def _require_pending(authorization: Authorization, action: str) -> None:
    if authorization.status != "pending":
        conflict(
            f"cannot {action} authorization {authorization.id}: it is {authorization.status}, "
            "not pending"
        )


# A request the issuer has put to cardflow but whose decision it has not yet
# recorded. Written before asking and removed once the decision is saved, so
# an issuer that dies in between knows, when it starts again, which requests
# the network never had an answer for: it declines them (the network's
# timeout) and says so, as a real issuer's recovery does, so cardflow
# releases whatever it held for them.
IN_FLIGHT = "issuer-asks-in-flight"
IN_FLIGHT_REASON = "declined: the issuer failed before it recorded the decision"


def _ask_in_flight(state: IssuerState, request: AuthorizationRequestData, decisions: int) -> str:
    ask_id = f"{request.authorization_id}/{decisions}"
    state.context.store.put(
        IN_FLIGHT, ask_id, {"request": request.model_dump(mode="json"), "decisions": decisions}
    )
    return ask_id


def _ask_answered(state: IssuerState, ask_id: str) -> None:
    state.context.store.execute(
        "DELETE FROM documents WHERE kind = ? AND id = ?", IN_FLIGHT, ask_id
    )


# The exit status of an issuer told to die before recording a decision.
DIED_EXIT_STATUS = 137


def _die_if_asked(state: IssuerState) -> None:
    if state.context.option(NAME, "die_before_recording_decision", False) is True:
        os._exit(DIED_EXIT_STATUS)


def recover_asks_in_flight(state: IssuerState) -> int:
    """Decline every request left undecided by an issuer that died while
    cardflow decided it; returns how many."""
    recovered = 0
    for document in state.context.store.list(IN_FLIGHT):
        request = AuthorizationRequestData.model_validate(document["request"])
        stamp = state.now_iso()
        declined = Decision(
            kind=request.kind,
            requested_amount_minor=request.amount_minor,
            approved_amount_minor=0,
            outcome="decline",
            decided_by="issuer",
            reason=IN_FLIGHT_REASON,
            decided_at=stamp,
        )
        found = state.find(AUTHORIZATIONS, request.authorization_id)
        if request.kind == "initial" and found is None:
            authorization = Authorization(
                id=request.authorization_id,
                card_id=request.card_id,
                cardholder_id=request.cardholder_id,
                status="declined",
                merchant=request.merchant,
                merchant_amount_minor=request.merchant_amount_minor,
                merchant_currency=request.merchant_currency,
                conversion_rate=request.conversion_rate,
                currency=request.currency,
                requested_amount_minor=request.amount_minor,
                amount_minor=0,
                pending_amount_minor=0,
                partial_approval_capable=request.partial_approval_capable,
                decided_by="issuer",
                decision_reason=IN_FLIGHT_REASON,
                decisions=[declined],
                history=[],
                created_at=stamp,
                updated_at=stamp,
                expires_at=stamp,
            )
            state.save(AUTHORIZATIONS, authorization)
            state.emit("authorization.created", authorization)
            state.emit("authorization.declined", authorization)
        elif (
            request.kind == "incremental"
            and found is not None
            and len(found.decisions) == document["decisions"]
        ):
            found.decisions.append(declined)
            found.updated_at = stamp
            state.save(AUTHORIZATIONS, found)
            state.emit("authorization.increment_declined", found)
        _ask_answered(state, f"{request.authorization_id}/{document['decisions']}")
        recovered += 1
    return recovered


def router(state: IssuerState) -> APIRouter:
    api = state.context.router()

    @api.get("/v1/authorizations")
    async def list_authorizations(
        card_id: Annotated[str, Query(min_length=1)],
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(min_length=1)] = None,
    ) -> AuthorizationPage:
        """A card's authorizations, oldest first; the next page starts after
        the last id of this one."""
        found = [a for a in state.all(AUTHORIZATIONS) if a.card_id == card_id]
        start, count = page_of([a.id for a in found], starting_after, card_id)
        return AuthorizationPage(data=found[start : start + limit], has_more=count > start + limit)

    @api.get("/v1/authorizations/{authorization_id}")
    async def get_authorization(authorization_id: str) -> Authorization:
        """The authorization with every decision and every change to its amounts."""
        return state.load(AUTHORIZATIONS, authorization_id)

    @api.post("/v1/simulate/authorize", status_code=201)
    async def simulate_authorize(body: AuthorizeIn) -> Authorization:
        """Sandbox: a merchant asks to authorize a card. Paused, closed and
        unactivated cards are declined by the issuer; otherwise cardflow
        decides in real time, or the stand-in decision applies. A partial
        approval only when the merchant can take one. The authorization is
        recorded pending or declined; announced as authorization.created (and
        authorization.declined)."""
        card = state.load(CARDS, body.card_id)
        rate = network_rate(body.currency, card.currency)
        amount_minor = convert_minor(body.amount_minor, body.currency, card.currency, rate)
        if amount_minor == 0:
            unprocessable(
                ["body", "amount_minor"],
                f"converts to nothing in the card's currency {card.currency}",
                body.amount_minor,
            )
        if body.authentication_id is not None:
            require_authentication_of(state, body.authentication_id, card.id)
        request = AuthorizationRequestData(
            authorization_id=state.new_id(AUTHORIZATIONS),
            kind="initial",
            card_id=card.id,
            cardholder_id=card.cardholder_id,
            amount_minor=amount_minor,
            currency=card.currency,
            merchant_amount_minor=body.amount_minor,
            merchant_currency=body.currency,
            conversion_rate=rate,
            merchant=body.merchant,
            partial_approval_capable=body.partial_approval_capable,
            pending_amount_minor=0,
            authentication_id=body.authentication_id,
        )
        ask_id = _ask_in_flight(state, request, 0)
        decision = await decide(state, card, request)
        _die_if_asked(state)
        now = state.now()
        stamp = now.isoformat()
        approved = decision.approved_amount_minor
        history: list[AuthorizationEntry] = []
        if decision.outcome == "approve":
            history.append(
                AuthorizationEntry(
                    kind="authorization",
                    amount_minor=approved,
                    pending_amount_minor=approved,
                    at=stamp,
                )
            )
        authorization = Authorization(
            id=request.authorization_id,
            card_id=card.id,
            cardholder_id=card.cardholder_id,
            status="pending" if decision.outcome == "approve" else "declined",
            merchant=body.merchant,
            merchant_amount_minor=body.amount_minor,
            merchant_currency=body.currency,
            conversion_rate=rate,
            currency=card.currency,
            requested_amount_minor=amount_minor,
            amount_minor=approved,
            pending_amount_minor=approved,
            partial_approval_capable=body.partial_approval_capable,
            decided_by=decision.decided_by,
            decision_reason=decision.reason,
            decisions=[decision],
            history=history,
            created_at=stamp,
            updated_at=stamp,
            expires_at=(now + timedelta(days=AUTHORIZATION_HOLD_DAYS)).isoformat(),
            authentication_id=body.authentication_id,
        )
        state.save(AUTHORIZATIONS, authorization)
        _ask_answered(state, ask_id)
        state.emit("authorization.created", authorization)
        if authorization.status == "declined":
            state.emit("authorization.declined", authorization)
        return authorization

    @api.post("/v1/simulate/authorizations/{authorization_id}/increment")
    async def simulate_increment(authorization_id: str, body: IncrementIn) -> Authorization:
        """Sandbox: the merchant asks to hold more on a pending authorization
        (a hotel stay extended). Decided like an authorization; approved, the
        held amount grows. Announced as authorization.incremented or
        authorization.increment_declined."""
        authorization = state.load(AUTHORIZATIONS, authorization_id)
        _require_pending(authorization, "increment")
        card = state.load(CARDS, authorization.card_id)
        request = AuthorizationRequestData(
            authorization_id=authorization.id,
            kind="incremental",
            card_id=card.id,
            cardholder_id=card.cardholder_id,
            amount_minor=body.amount_minor,
            currency=authorization.currency,
            merchant_amount_minor=convert_back_minor(
                body.amount_minor,
                authorization.currency,
                authorization.merchant_currency,
                authorization.conversion_rate,
            ),
            merchant_currency=authorization.merchant_currency,
            conversion_rate=authorization.conversion_rate,
            merchant=authorization.merchant,
            partial_approval_capable=authorization.partial_approval_capable,
            pending_amount_minor=authorization.pending_amount_minor,
        )
        ask_id = _ask_in_flight(state, request, len(authorization.decisions))
        decision = await decide(state, card, request)
        _die_if_asked(state)
        # Another network message may have changed it while cardflow decided.
        authorization = state.load(AUTHORIZATIONS, authorization_id)
        _require_pending(authorization, "increment")
        stamp = state.now_iso()
        authorization.decisions.append(decision)
        authorization.updated_at = stamp
        if decision.outcome == "approve":
            authorization.amount_minor += decision.approved_amount_minor
            authorization.pending_amount_minor += decision.approved_amount_minor
            authorization.history.append(
                AuthorizationEntry(
                    kind="increment",
                    amount_minor=decision.approved_amount_minor,
                    pending_amount_minor=authorization.pending_amount_minor,
                    at=stamp,
                )
            )
        state.save(AUTHORIZATIONS, authorization)
        _ask_answered(state, ask_id)
        state.emit(
            "authorization.incremented"
            if decision.outcome == "approve"
            else "authorization.increment_declined",
            authorization,
        )
        return authorization

    @api.post("/v1/simulate/authorizations/{authorization_id}/advice")
    async def simulate_advice(authorization_id: str, body: AdviceIn) -> Authorization:
        """Sandbox: the network tells the issuer a pending authorization now
        holds `pending_amount_minor` (a fuel pump's final amount). Nobody is
        asked; the history entry's amount is the signed change. Announced as
        authorization.advice."""
        authorization = state.load(AUTHORIZATIONS, authorization_id)
        _require_pending(authorization, "advise")
        change_minor = body.pending_amount_minor - authorization.pending_amount_minor
        stamp = state.now_iso()
        authorization.pending_amount_minor = body.pending_amount_minor
        authorization.amount_minor += change_minor
        authorization.updated_at = stamp
        authorization.history.append(
            AuthorizationEntry(
                kind="advice",
                amount_minor=change_minor,
                pending_amount_minor=authorization.pending_amount_minor,
                reference=body.reason,
                at=stamp,
            )
        )
        state.save(AUTHORIZATIONS, authorization)
        state.emit("authorization.advice", authorization)
        return authorization

    @api.post("/v1/simulate/authorizations/{authorization_id}/clear", status_code=201)
    async def simulate_clearing(authorization_id: str, body: ClearIn) -> Transaction:
        """Sandbox: the merchant presents a clearing, equal to, lower or higher
        than what is held; several may follow one authorization. A lower one
        leaves the rest pending unless `final`; a higher one settles in full.
        A clearing after expiry (late presentment) settles too. Creates a
        transaction; announced as transaction.cleared (and fee.charged for a
        foreign-currency purchase)."""
        authorization = state.load(AUTHORIZATIONS, authorization_id)
        if authorization.status not in ("pending", "expired"):
            conflict(
                f"cannot clear authorization {authorization.id}: it is {authorization.status}; "
                "a clearing without an open authorization is a force post"
            )
        amount_minor = (
            authorization.pending_amount_minor if body.amount_minor is None else body.amount_minor
        )
        if amount_minor == 0:
            conflict(
                f"nothing is pending on authorization {authorization.id}; "
                "a late presentment must give amount_minor"
            )
        from_hold_minor = min(amount_minor, authorization.pending_amount_minor)
        authorization.pending_amount_minor -= from_hold_minor
        released_minor = 0
        if body.final:
            released_minor = authorization.pending_amount_minor
            authorization.released_amount_minor += released_minor
            authorization.pending_amount_minor = 0
        authorization.cleared_amount_minor += amount_minor
        if authorization.pending_amount_minor == 0:
            authorization.status = "cleared"
        stamp = state.now_iso()
        transaction = Transaction(
            id=state.new_id(TRANSACTIONS),
            type="clearing",
            direction="debit",
            status="settled",
            card_id=authorization.card_id,
            authorization_id=authorization.id,
            amount_minor=amount_minor,
            currency=authorization.currency,
            merchant_amount_minor=convert_back_minor(
                amount_minor,
                authorization.currency,
                authorization.merchant_currency,
                authorization.conversion_rate,
            ),
            merchant_currency=authorization.merchant_currency,
            conversion_rate=authorization.conversion_rate,
            merchant=authorization.merchant,
            authorization_status=authorization.status,
            authorization_pending_amount_minor=authorization.pending_amount_minor,
            released_amount_minor=released_minor,
            created_at=stamp,
        )
        authorization.updated_at = stamp
        authorization.history.append(
            AuthorizationEntry(
                kind="clearing",
                amount_minor=amount_minor,
                pending_amount_minor=authorization.pending_amount_minor,
                reference=transaction.id,
                at=stamp,
            )
        )
        state.save(AUTHORIZATIONS, authorization)
        record_transaction(state, transaction, "transaction.cleared")
        return transaction

    @api.post("/v1/simulate/authorizations/{authorization_id}/reverse", status_code=201)
    async def simulate_reversal(authorization_id: str, body: ReverseIn) -> Reversal:
        """Sandbox: the merchant gives back all or part of what is still held;
        more than is pending is a 409. Announced as authorization.reversed."""
        authorization = state.load(AUTHORIZATIONS, authorization_id)
        _require_pending(authorization, "reverse")
        pending_minor = authorization.pending_amount_minor
        amount_minor = pending_minor if body.amount_minor is None else body.amount_minor
        if amount_minor > pending_minor:
            conflict(
                f"cannot reverse {amount_minor} on authorization {authorization.id}: "
                f"only {pending_minor} is pending"
            )
        authorization.pending_amount_minor -= amount_minor
        authorization.reversed_amount_minor += amount_minor
        if authorization.pending_amount_minor == 0:
            authorization.status = "cleared" if authorization.cleared_amount_minor else "reversed"
        stamp = state.now_iso()
        reversal = Reversal(
            id=state.new_id(REVERSALS),
            authorization_id=authorization.id,
            card_id=authorization.card_id,
            amount_minor=amount_minor,
            currency=authorization.currency,
            authorization_status=authorization.status,
            authorization_pending_amount_minor=authorization.pending_amount_minor,
            created_at=stamp,
        )
        authorization.updated_at = stamp
        authorization.history.append(
            AuthorizationEntry(
                kind="reversal",
                amount_minor=amount_minor,
                pending_amount_minor=authorization.pending_amount_minor,
                reference=reversal.id,
                at=stamp,
            )
        )
        state.save(AUTHORIZATIONS, authorization)
        state.save(REVERSALS, reversal)
        state.emit("authorization.reversed", reversal)
        return reversal

    @api.post("/v1/simulate/authorizations/{authorization_id}/expire")
    async def simulate_expiry(authorization_id: str) -> Authorization:
        """Sandbox: a pending authorization's hold period ends now; what it held
        is released. Announced as authorization.expired."""
        authorization = state.load(AUTHORIZATIONS, authorization_id)
        _require_pending(authorization, "expire")
        stamp = state.now_iso()
        released_minor = authorization.pending_amount_minor
        authorization.released_amount_minor += released_minor
        authorization.pending_amount_minor = 0
        authorization.status = "expired"
        authorization.expires_at = stamp
        authorization.updated_at = stamp
        authorization.history.append(
            AuthorizationEntry(
                kind="expiry", amount_minor=released_minor, pending_amount_minor=0, at=stamp
            )
        )
        state.save(AUTHORIZATIONS, authorization)
        state.emit("authorization.expired", authorization)
        return authorization

    return api
