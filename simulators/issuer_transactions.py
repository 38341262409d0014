"""The issuer's settled transactions: clearings (recorded by the clearing of
an authorization, simulators/issuer_authorizations.py), refunds and force
posts, each with the network's fee on a purchase in another currency, and
their listings.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from schemas.units import BASIS_POINTS_PER_UNIT
from simulators.issuer_models import Fee, MerchantTransactionIn, Transaction, TransactionPage
from simulators.issuer_state import (
    CARDS,
    FEES,
    TRANSACTIONS,
    IssuerState,
    convert_minor,
    network_rate,
    unprocessable,
)

# What the network charges the program on a transaction in another currency
# than the card's, in basis points of the card-currency amount.
CURRENCY_CONVERSION_FEE_BPS = 100


def conversion_fee(state: IssuerState, transaction: Transaction) -> Fee | None:
    """The network's fee on a transaction made in another currency, half up."""
    if transaction.merchant_currency in (None, transaction.currency):
        return None
    fee_minor = (
        transaction.amount_minor * CURRENCY_CONVERSION_FEE_BPS + BASIS_POINTS_PER_UNIT // 2
    ) // BASIS_POINTS_PER_UNIT
    if fee_minor == 0:
        return None
    return Fee(
        id=state.new_id(FEES),
        type="currency_conversion",
        card_id=transaction.card_id,
        authorization_id=transaction.authorization_id,
        transaction_id=transaction.id,
        amount_minor=fee_minor,
        currency=transaction.currency,
        created_at=transaction.created_at,
    )


def record_transaction(state: IssuerState, transaction: Transaction, event_type: str) -> None:
    transaction.settlement_date = state.late_settlement_date(transaction.created_at)
    state.save(TRANSACTIONS, transaction)
    state.emit(event_type, transaction)
    fee = conversion_fee(state, transaction) if transaction.direction == "debit" else None
    if fee is not None:
        state.save(FEES, fee)
        state.emit("fee.charged", fee)


# The listings page like the cards': oldest first, `limit` at a time.
PAGE_SIZE_DEFAULT = 20
PAGE_SIZE_MAX = 100


def page_of(ids: list[str], starting_after: str | None, card_id: str) -> tuple[int, int]:
    """Where a page starts in `ids`, and how many ids there are."""
    if starting_after is None:
        return 0, len(ids)
    if starting_after not in ids:
        unprocessable(
            ["query", "starting_after"],
            f"{starting_after} is not of card {card_id}",
            starting_after,
        )
    return ids.index(starting_after) + 1, len(ids)


def router(state: IssuerState) -> APIRouter:
    api = state.context.router()

    @api.get("/v1/transactions")
    async def list_transactions(
        card_id: Annotated[str, Query(min_length=1)],
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(min_length=1)] = None,
    ) -> TransactionPage:
        """A card's settled transactions, oldest first, paged as authorizations."""
        found = [t for t in state.all(TRANSACTIONS) if t.card_id == card_id]
        start, count = page_of([t.id for t in found], starting_after, card_id)
        return TransactionPage(data=found[start : start + limit], has_more=count > start + limit)

    @api.get("/v1/transactions/{transaction_id}")
    async def get_transaction(transaction_id: str) -> Transaction:
        """A settled clearing, force post, refund or chargeback."""
        return state.load(TRANSACTIONS, transaction_id)

    def merchant_transaction(body: MerchantTransactionIn, kind: str) -> Transaction:
        card = state.load(CARDS, body.card_id)
        rate = network_rate(body.currency, card.currency)
        amount_minor = convert_minor(body.amount_minor, body.currency, card.currency, rate)
        if amount_minor == 0:
            unprocessable(
                ["body", "amount_minor"],
                f"converts to nothing in the card's currency {card.currency}",
                body.amount_minor,
            )
        refunded = body.refunded_transaction_id if kind == "refund" else None
        if refunded is not None and state.find(TRANSACTIONS, refunded) is None:
            unprocessable(["body", "refunded_transaction_id"], "no such transaction", refunded)
        return Transaction(
            id=state.new_id(TRANSACTIONS),
            type="refund" if kind == "refund" else "force_post",
            refunded_transaction_id=refunded,
            direction="credit" if kind == "refund" else "debit",
            status="settled",
            card_id=card.id,
            amount_minor=amount_minor,
            currency=card.currency,
            merchant_amount_minor=body.amount_minor,
            merchant_currency=body.currency,
            conversion_rate=rate,
            merchant=body.merchant,
            created_at=state.now_iso(),
        )

    @api.post("/v1/simulate/refunds", status_code=201)
    async def simulate_refund(body: MerchantTransactionIn) -> Transaction:
        """Sandbox: a merchant refunds money to a card, in any state; a credit
        transaction. Announced as transaction.refunded."""
        transaction = merchant_transaction(body, "refund")
        record_transaction(state, transaction, "transaction.refunded")
        return transaction

    @api.post("/v1/simulate/force_posts", status_code=201)
    async def simulate_force_post(body: MerchantTransactionIn) -> Transaction:
        """Sandbox: a clearing with no authorization before it, which the issuer
        must settle whatever the card's state. Announced as
        transaction.force_posted."""
        transaction = merchant_transaction(body, "force_post")
        record_transaction(state, transaction, "transaction.force_posted")
        return transaction

    return api
