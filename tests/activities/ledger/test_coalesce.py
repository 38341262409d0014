"""Coalesced transfers behave exactly like single calls, each with its own outcome."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from activities.ledger import IdempotencyConflict, Ledger, UnrepresentableValue
from activities.ledger.activities import LEDGER_RETRY_POLICY
from activities.ledger.coalesce import TransferCoalescer
from activities.ledger.verify import verify
from schemas.ledger import Rejection, TransferOutcome, TransferRequest
from schemas.money import Currency
from tests.activities.ledger.helpers import BANK, SETTLEMENT, hold, key, move, open_basics


async def test_each_caller_gets_its_own_outcome_and_rejections_stay_alone(
    ledger_pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a", "w:b")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    coalescer = TransferCoalescer(ledger, batch_size_max=16)
    requests = [move("w:a", "w:b", 100) for _ in range(15)] + [hold("w:a", SETTLEMENT, 1)]
    outcomes = await asyncio.gather(*(coalescer.transfer(r) for r in requests))
    assert [o.key for o in outcomes] == [r.key for r in requests]
    accepted = [o for o in outcomes if o.accepted]
    refused = [o for o in outcomes if not o.accepted]
    # Arrival order decides: ten transfers of 100 fit in 1,000, then nothing does.
    assert len(accepted) == 10 and all(o.rejection is Rejection.INSUFFICIENT_FUNDS for o in refused)
    assert (await ledger.balance("w:b")).posted == 1_000
    transactions = await ledger_pool.fetchval(
        "SELECT count(DISTINCT t.xmin::text) FROM ledger_transfers t"
        " JOIN ledger_accounts a ON a.id = t.credit_account_id WHERE a.code = 'w:b'"
    )
    assert transactions < 10, "the transfers were not coalesced"
    assert await verify(ledger_pool) == []


async def test_holds_in_a_coalesced_batch_take_from_what_the_next_items_can_spend(
    ledger_pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a", "w:b")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    await ledger.transfer(hold("w:a", SETTLEMENT, 400))
    coalescer = TransferCoalescer(ledger, batch_size_max=16)
    # 600 is left: a hold of 500 fits, then nothing more than 100 does.
    requests = [
        hold("w:a", SETTLEMENT, 500),
        move("w:a", "w:b", 101),
        hold("w:a", SETTLEMENT, 101),
        move("w:a", "w:b", 100),
    ]
    outcomes = await asyncio.gather(*(coalescer.transfer(r) for r in requests))
    assert [o.rejection for o in outcomes] == [
        None,
        Rejection.INSUFFICIENT_FUNDS,
        Rejection.INSUFFICIENT_FUNDS,
        None,
    ]
    balance = await ledger.balance("w:a")
    assert (balance.posted, balance.debits_pending, balance.available) == (900, 900, 0)
    assert await verify(ledger_pool) == []


async def test_same_key_in_flight_replays_and_another_payload_conflicts(
    ledger_pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a")
    coalescer = TransferCoalescer(ledger)
    request = move(BANK, "w:a", 50, k="topup-7")
    changed = move(BANK, "w:a", 51, k="topup-7")
    results = await asyncio.gather(
        coalescer.transfer(request),
        coalescer.transfer(request),
        coalescer.transfer(changed),
        *(coalescer.transfer(move(BANK, "w:a", 1)) for _ in range(5)),
        return_exceptions=True,
    )
    first, second, conflict = results[:3]
    assert isinstance(first, TransferOutcome) and isinstance(second, TransferOutcome)
    # Two batches may be in flight: either request may be the one that commits.
    assert first.transfer_id == second.transfer_id
    assert sorted([first.replayed, second.replayed]) == [False, True]
    assert isinstance(conflict, IdempotencyConflict) and conflict.key == "topup-7"
    assert all(isinstance(r, TransferOutcome) and r.accepted for r in results[3:])
    assert (await ledger.balance("w:a")).posted == 55


class FailsOnce(Ledger):
    """The real ledger, whose first batch is lost with its connection."""

    failed = False

    async def submit(self, requests, *, atomic=True):  # type: ignore[no-untyped-def]
        if not self.failed:
            self.failed = True
            raise ConnectionResetError("connection to the database was lost")
        return await super().submit(requests, atomic=atomic)


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_runs(
    ledger_pool: asyncpg.Pool,
) -> None:
    ledger = FailsOnce(ledger_pool)
    await open_basics(ledger, "w:a")
    coalescer = TransferCoalescer(ledger, in_flight_max=1, batch_size_max=4)
    requests = [move(BANK, "w:a", 10) for _ in range(8)]
    results = await asyncio.gather(
        *(coalescer.transfer(r) for r in requests), return_exceptions=True
    )
    lost = [r for r in results if isinstance(r, ConnectionResetError)]
    assert len(lost) == 4 and all(isinstance(r, TransferOutcome) for r in results[4:])
    # The callers whose batch was lost retry with the same keys: nothing doubles.
    retried = await asyncio.gather(*(coalescer.transfer(r) for r in requests))
    assert all(o.accepted for o in retried)
    assert (await ledger.balance("w:a")).posted == 80


def unchecked(debit: str, credit: str, amount: int) -> TransferRequest:
    """A transfer of an amount past any entry point's bound, as the ledger must
    still survive one (a running total reaches such sums over years, too)."""
    return TransferRequest.model_construct(
        key=key("big"), debit=debit, credit=credit, amount_minor=amount, currency=Currency.USD
    )


async def test_a_transfer_overflowing_a_running_total_is_rejected_alone_in_its_batch(
    ledger_pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a", "w:b", "w:big")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    await ledger.transfer(unchecked(BANK, "w:big", 2**62))
    coalescer = TransferCoalescer(ledger, batch_size_max=16)
    overflowing = unchecked(BANK, "w:big", 2**62)
    oversized_debit = unchecked("w:a", "w:b", 2**63 - 1)
    requests = [
        move("w:a", "w:b", 100),
        overflowing,
        hold("w:a", SETTLEMENT, 200),
        oversized_debit,
        move(BANK, "w:b", 5),
    ]
    outcomes = await asyncio.gather(*(coalescer.transfer(r) for r in requests))
    by_key = {outcome.key: outcome for outcome in outcomes}
    assert by_key[overflowing.key].rejection is Rejection.BALANCE_OVERFLOW
    assert "w:big" in by_key[overflowing.key].detail or BANK in by_key[overflowing.key].detail
    # A debit beyond any wallet is simply more than it holds.
    assert by_key[oversized_debit.key].rejection is Rejection.INSUFFICIENT_FUNDS
    assert [o.accepted for o in outcomes] == [True, False, True, False, True]
    assert (await ledger.balance("w:big")).posted == 2**62
    assert (await ledger.balance("w:b")).posted == 105
    assert (await ledger.balance("w:a")).available == 700
    # The rejection is an outcome like any other: asked again, it is replayed.
    again = await ledger.transfer(overflowing)
    assert again.replayed and again.rejection is Rejection.BALANCE_OVERFLOW
    assert await verify(ledger_pool) == []


async def test_an_amount_the_database_cannot_hold_fails_only_its_own_caller(
    ledger_pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a")
    coalescer = TransferCoalescer(ledger, batch_size_max=16)
    requests = [move(BANK, "w:a", 10), unchecked(BANK, "w:a", 2**63), move(BANK, "w:a", 20)]
    results = await asyncio.gather(
        *(coalescer.transfer(r) for r in requests), return_exceptions=True
    )
    first, poison, last = results
    assert isinstance(poison, UnrepresentableValue), poison
    # The ledger activities raise it as an error their retry policy never retries.
    assert "UnrepresentableValue" in (LEDGER_RETRY_POLICY.non_retryable_error_types or ())
    assert isinstance(first, TransferOutcome) and first.accepted, first
    assert isinstance(last, TransferOutcome) and last.accepted, last
    assert (await ledger.balance("w:a")).posted == 30
    assert await verify(ledger_pool) == []


def test_the_coalescer_refuses_impossible_limits(ledger_pool: asyncpg.Pool) -> None:
    with pytest.raises(AssertionError):
        TransferCoalescer(Ledger(ledger_pool), batch_size_max=8_001)


__all__ = ["TransferRequest"]
