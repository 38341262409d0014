"""The verifier reports deliberately corrupted rows; `cardflow ledger verify` exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from activities.ledger import Ledger
from activities.ledger.verify import verify
from tests.activities.ledger.helpers import BANK, SETTLEMENT, hold, move, open_basics


@pytest.fixture
async def filled(ledger_pool: asyncpg.Pool) -> Ledger:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a", "w:b")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    await ledger.transfer(move("w:a", "w:b", 250))
    await ledger.transfer(hold("w:a", SETTLEMENT, 100, k="hold-1"))
    assert await verify(ledger_pool) == []
    return ledger


def cardflow(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starters.cli", "ledger", *args],
        env=dict(os.environ, DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_tampered_balance_row_is_reported(
    filled: Ledger, ledger_pool: asyncpg.Pool
) -> None:
    await ledger_pool.execute(
        "UPDATE ledger_balances SET credits_posted = credits_posted + 5 FROM ledger_accounts a"
        " WHERE a.id = account_id AND a.code = 'w:b'"
    )
    checks = {(v.check, v.subject) for v in await verify(ledger_pool)}
    assert ("balance_equals_transfers", "w:b slot 0") in checks
    assert ("currency_balances", "USD") in checks


async def test_a_wallet_forced_below_zero_is_reported(
    filled: Ledger, ledger_pool: asyncpg.Pool
) -> None:
    await ledger_pool.execute(
        "UPDATE ledger_balances SET debits_posted = debits_posted + 10000 FROM ledger_accounts a"
        " WHERE a.id = account_id AND a.code = 'w:a'"
    )
    assert "constraint_respected" in {v.check for v in await verify(ledger_pool)}


async def test_a_forged_transfer_and_a_double_resolution_are_reported(
    filled: Ledger, ledger_pool: asyncpg.Pool
) -> None:
    async with ledger_pool.acquire() as connection:
        # Only an attacker with table rights gets past the immutability trigger
        # and the one-resolution index; the verifier still sees what they did.
        await connection.execute("ALTER TABLE ledger_transfers DISABLE TRIGGER USER")
        await connection.execute("DROP INDEX ledger_transfers_one_resolution")
        await connection.execute(
            """
            INSERT INTO ledger_transfers (idempotency_key, payload_hash, kind, debit_account_id,
                debit_slot, credit_account_id, credit_slot, amount_minor, currency, pending_id)
            SELECT 'forged-' || g, '\\x00', 'void_pending', h.debit_account_id, h.debit_slot,
                   h.credit_account_id, h.credit_slot, h.amount_minor, 'EUR', h.id
            FROM ledger_transfers h, generate_series(1, 2) g WHERE h.idempotency_key = 'hold-1'
            """
        )
    violations = await verify(ledger_pool)
    checks = {v.check for v in violations}
    assert {"hold_resolved_once", "transfer_currency", "balance_equals_transfers"} <= checks
    assert any(v.subject == "hold-1" and "resolved 2 times" in v.detail for v in violations)


async def test_the_cli_exits_non_zero_listing_every_violation(
    filled: Ledger, ledger_pool: asyncpg.Pool, database_url: str
) -> None:
    clean = cardflow(database_url, "verify")
    assert clean.returncode == 0 and "no violations" in clean.stdout
    await ledger_pool.execute("UPDATE ledger_balances SET credits_pending = credits_pending + 1")
    broken = cardflow(database_url, "verify")
    assert broken.returncode == 1
    assert broken.stdout.count("VIOLATION") >= 3
    assert "balance_equals_transfers" in broken.stdout


async def test_the_cli_shows_balance_and_history(filled: Ledger, database_url: str) -> None:
    balance = cardflow(database_url, "balance", "w:a")
    assert balance.returncode == 0
    assert "posted balance 750, available 650" in balance.stdout
    history = cardflow(database_url, "history", "w:a", "--limit", "2")
    assert history.returncode == 0
    assert "+1000 USD" in history.stdout and "-250 USD" in history.stdout
    assert "more: --after" in history.stdout
    expired = cardflow(database_url, "expire-holds")
    assert expired.returncode == 0 and "expired 0 hold(s)" in expired.stdout
    missing = cardflow(database_url, "balance", "nobody")
    assert missing.returncode == 1 and "no account nobody" in missing.stderr
