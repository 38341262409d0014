"""The ledger's own guards, each at the database: an account never pays
itself, a credit-constrained account refuses more credit than its debits, a
hold is never posted for more than it holds, and a resolution key reused with
another payload is a conflict."""

from __future__ import annotations

import pytest

from activities.ledger import IdempotencyConflict, Ledger
from schemas.ledger import AccountSpec, HoldResolution, Rejection
from schemas.money import Currency
from tests.activities.ledger.helpers import (
    BANK,
    SETTLEMENT,
    hold,
    key,
    move,
    open_basics,
    resolve,
)


async def test_a_credit_constrained_account_takes_no_more_than_its_debits(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    debt = AccountSpec(
        code="debt:a", currency=Currency.USD, kind="debt", credits_must_not_exceed_debits=True
    )
    await ledger.open_account(debt)
    await ledger.transfer(move("debt:a", BANK, 300))
    over = await ledger.transfer(move(BANK, "debt:a", 301))
    assert over.rejection is Rejection.CREDITS_EXCEED_DEBITS
    assert (await ledger.transfer(move(BANK, "debt:a", 300))).accepted


async def test_a_hold_is_never_posted_for_more_than_it_holds(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    held = await ledger.transfer(hold("w:a", SETTLEMENT, 200))
    over = await ledger.resolve_hold(resolve(held.key, "post", 201))
    assert over.rejection is Rejection.INVALID_AMOUNT
    assert (await ledger.balance("w:a")).posted == 1_000


async def test_a_resolution_key_reused_with_another_payload_is_a_conflict(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    held = await ledger.transfer(hold("w:a", SETTLEMENT, 200))
    first = resolve(held.key, "post", 100)
    assert (await ledger.resolve_hold(first)).accepted
    other = HoldResolution(key=first.key, hold_key=held.key, action="post", amount_minor=150)
    with pytest.raises(IdempotencyConflict):
        await ledger.resolve_hold(other)


async def test_the_database_refuses_an_account_paying_itself_even_without_pydantic(
    ledger: Ledger,
) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 100))
    forged = move(BANK, "w:a", 5).model_construct(
        key=key(), debit="w:a", credit="w:a", amount_minor=5, currency=Currency.USD
    )
    outcome = await ledger.transfer(forged)
    assert outcome.rejection is Rejection.SAME_ACCOUNT
