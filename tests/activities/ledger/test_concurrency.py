"""Many concurrent writers on a few accounts: exact balances, no overdraft, no deadlock."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import asyncpg
import pytest

from activities.ledger import Ledger
from activities.ledger.coalesce import TransferCoalescer
from activities.ledger.verify import verify
from schemas.ledger import Rejection
from tests.activities.ledger.helpers import BANK, SETTLEMENT, hold, move, open_basics, resolve

TASKS = 48
OPERATIONS_PER_TASK = 60
WALLETS = ("w:0", "w:1", "w:2", "w:3")


@pytest.mark.parametrize("mode", ["one call each", "coalesced"])
async def test_concurrent_writers_keep_every_balance_exact(
    ledger_pool: asyncpg.Pool, mode: str
) -> None:
    ledger = Ledger(ledger_pool)
    # Single transfers and holds either hit the database one call each (the
    # most lock contention) or go through the worker's coalescer.
    send = TransferCoalescer(ledger).transfer if mode == "coalesced" else ledger.transfer
    await open_basics(ledger, *WALLETS, settlement_slots=8)
    for wallet in WALLETS:
        await ledger.transfer(move(BANK, wallet, 2_000))
    expected: Counter[str] = Counter({w: 2_000 for w in WALLETS})
    expected[BANK] -= 2_000 * len(WALLETS)
    outcomes: Counter[str] = Counter()

    def book(debit: str, credit: str, amount: int) -> None:
        expected[debit] -= amount
        expected[credit] += amount

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(OPERATIONS_PER_TASK):
            a, b = rng.sample(WALLETS, 2)
            amount = rng.randint(1, 400)
            choice = rng.random()
            if choice < 0.35:
                outcome = await send(move(a, b, amount))
                if outcome.accepted:
                    book(a, b, amount)
            elif choice < 0.6:
                # Card spend: every one touches the hot settlement account.
                outcome = await send(move(a, SETTLEMENT, amount))
                if outcome.accepted:
                    book(a, SETTLEMENT, amount)
            elif choice < 0.7:
                outcome = await send(move(BANK, a, amount))
                book(BANK, a, amount)
            elif choice < 0.85:
                outcome = await send(hold(a, SETTLEMENT, amount))
                if outcome.accepted:
                    action = rng.choice(["post", "void"])
                    posted = rng.randint(1, amount) if action == "post" else None
                    resolved = await ledger.resolve_hold(resolve(outcome.key, action, posted))
                    assert resolved.accepted, resolved.detail
                    if posted:
                        book(a, SETTLEMENT, posted)
            else:
                batch = [move(a, b, amount), move(b, SETTLEMENT, amount // 2 + 1)]
                results = await ledger.submit(batch)
                if results[0].accepted:
                    book(a, b, amount)
                    book(b, SETTLEMENT, amount // 2 + 1)
                outcome = results[0]
            outcomes[outcome.rejection or "accepted"] += 1

    # Any deadlock or serialization error would surface here as an exception.
    await asyncio.gather(*(writer(seed) for seed in range(TASKS)))

    assert outcomes["accepted"] > TASKS * OPERATIONS_PER_TASK // 4
    assert outcomes[Rejection.INSUFFICIENT_FUNDS] > 0, "the wallets were never contended"
    for code, amount in expected.items():
        balance = await ledger.balance(code)
        assert balance.posted == amount, code
        assert balance.debits_pending == 0 and balance.credits_pending == 0
        if code in WALLETS:
            assert balance.available >= 0
    used_slots = await ledger_pool.fetchval(
        "SELECT count(*) FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id"
        " WHERE a.code = $1 AND b.credits_posted > 0",
        SETTLEMENT,
    )
    assert used_slots > 1, "the hot account's writes were not spread over its slots"
    assert await verify(ledger_pool) == []
