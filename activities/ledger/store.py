"""The ledger API over asyncpg: every write is one call of a SQL function."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from activities.ledger.errors import AccountConflict, AccountNotFound, LedgerError, translate
from schemas.ledger import (
    HISTORY_PAGE_SIZE_MAX,
    Account,
    AccountSpec,
    Balance,
    HistoryEntry,
    HistoryPage,
    HoldRequest,
    HoldResolution,
    TransferOutcome,
    TransferRequest,
)

# Two calls with one new key race to insert it; the loser's unique violation
# is retried and then finds the winner's outcome. One retry always suffices;
# the bound guards against a bug turning this into a loop.
KEY_RACE_RETRIES_MAX = 3

# Stands in for "no expiry" in the submit arrays, which carry no NULLs.
NOT_A_HOLD = datetime(9999, 12, 31, tzinfo=UTC)

_SUBMIT = "SELECT * FROM ledger_submit($1, $2, $3, $4, $5, $6, $7, $8, $9)"
# One transfer or hold, as ledger_submit would do it, with scalar arguments
# and a few plan-cached statements: the call a lone caller makes.
_TRANSFER_ONE = "SELECT * FROM ledger_transfer_one($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_RESOLVE = "SELECT * FROM ledger_resolve_hold($1, $2, $3, $4, $5)"
_RESOLVE_PARTIAL = "SELECT * FROM ledger_resolve_hold_partial($1, $2, $3, $4, $5, $6)"


def payload_hash(*fields: object) -> bytes:
    """A stable digest of what a key promises to do, to detect a reused key."""
    return hashlib.sha256(json.dumps(fields, separators=(",", ":"), default=str).encode()).digest()


def transfer_hash(request: TransferRequest) -> bytes:
    expires = request.expires_at.isoformat() if isinstance(request, HoldRequest) else None
    kind = "pending" if isinstance(request, HoldRequest) else "posted"
    return payload_hash(
        kind, request.debit, request.credit, request.amount_minor, request.currency.value, expires
    )


def resolution_hash(request: HoldResolution) -> bytes:
    if request.rest_key is not None:
        return payload_hash(
            "resolve", request.action, request.hold_key, request.amount_minor, request.rest_key
        )
    return payload_hash("resolve", request.action, request.hold_key, request.amount_minor)


class Ledger:
    """Accounts, transfers, holds and balances; safe to share across tasks."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # ----- accounts -----------------------------------------------------

    async def open_account(self, spec: AccountSpec) -> Account:
        """Open the account, or return it if it exists with the same spec."""
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                """
                INSERT INTO ledger_accounts (code, currency, kind, owner_id,
                    debits_must_not_exceed_credits, credits_must_not_exceed_debits, balance_slots)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (code) DO NOTHING
                RETURNING *
                """,
                spec.code,
                spec.currency.value,
                spec.kind,
                spec.owner_id,
                spec.debits_must_not_exceed_credits,
                spec.credits_must_not_exceed_debits,
                spec.balance_slots,
            )
            if row is not None:
                await connection.execute(
                    "INSERT INTO ledger_balances (account_id, slot)"
                    " SELECT $1, generate_series(0, $2 - 1)",
                    row["id"],
                    spec.balance_slots,
                )
            else:
                row = await connection.fetchrow(
                    "SELECT * FROM ledger_accounts WHERE code = $1", spec.code
                )
                assert row is not None
        account = _account(row)
        if AccountSpec(**account.model_dump(include=set(AccountSpec.model_fields))) != spec:
            raise AccountConflict(f"account {spec.code} exists with other attributes")
        return account

    async def get_account(self, code: str) -> Account:
        row = await self._pool.fetchrow("SELECT * FROM ledger_accounts WHERE code = $1", code)
        if row is None:
            raise AccountNotFound(f"no account {code}")
        return _account(row)

    async def close_account(self, code: str) -> bool:
        """Close at zero balance with no open holds; False if it was already closed."""
        result = await self.keyed_call(self._pool.fetchval, "SELECT ledger_close_account($1)", code)
        return bool(result == "closed")

    # ----- transfers and holds ----------------------------------------

    async def transfer(self, request: TransferRequest) -> TransferOutcome:
        """One transfer or hold (a HoldRequest)."""
        [outcome] = await self.submit([request], atomic=True)
        return outcome

    async def submit(
        self, requests: Sequence[TransferRequest], *, atomic: bool = True
    ) -> list[TransferOutcome]:
        """Transfers and holds in one call. Atomic: all accepted or all rejected."""
        if len(requests) == 1:
            return [await self._submit_one(requests[0], atomic=atomic)]
        keys, hashes, pending, debits, credits, amounts, currencies, expires = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for request in requests:
            keys.append(request.key)
            hashes.append(transfer_hash(request))
            is_hold = isinstance(request, HoldRequest)
            pending.append(is_hold)
            debits.append(request.debit)
            credits.append(request.credit)
            amounts.append(request.amount_minor)
            currencies.append(request.currency.value)
            expires.append(request.expires_at if isinstance(request, HoldRequest) else NOT_A_HOLD)
        rows = await self.keyed_call(
            self._pool.fetch,
            _SUBMIT,
            atomic,
            keys,
            hashes,
            pending,
            debits,
            credits,
            amounts,
            currencies,
            expires,
        )
        return [outcome_of(keys[row["item"] - 1], amounts[row["item"] - 1], row) for row in rows]

    async def _submit_one(self, request: TransferRequest, *, atomic: bool) -> TransferOutcome:
        """One transfer or hold, with the outcome ledger_submit would give it."""
        row = await self.keyed_call(
            self._pool.fetchrow,
            _TRANSFER_ONE,
            atomic,
            request.key,
            transfer_hash(request),
            isinstance(request, HoldRequest),
            request.debit,
            request.credit,
            request.amount_minor,
            request.currency.value,
            request.expires_at if isinstance(request, HoldRequest) else NOT_A_HOLD,
        )
        return outcome_of(request.key, request.amount_minor, row)

    async def resolve_hold(self, request: HoldResolution) -> TransferOutcome:
        """Post (all or part), void or expire a hold; with rest_key, the part not
        posted or voided stays held under that key."""
        partial = request.rest_key is not None
        row = await self.keyed_call(
            self._pool.fetchrow,
            _RESOLVE_PARTIAL if partial else _RESOLVE,
            request.key,
            resolution_hash(request),
            request.action,
            request.hold_key,
            request.amount_minor,
            *((request.rest_key,) if partial else ()),
        )
        return TransferOutcome(
            key=request.key,
            transfer_id=row["transfer_id"],
            rejection=row["rejection"],
            detail=row["detail"],
            replayed=row["replayed"],
            created_at=row["created_at"],
            amount_minor=row["amount_minor"],
        )

    async def expire_due_holds(self, limit: int = 1_000) -> list[TransferOutcome]:
        """Expire holds whose time has passed and that nobody resolved."""
        hold_keys = await self._pool.fetch(
            """
            SELECT h.idempotency_key FROM ledger_transfers h
            WHERE h.kind = 'pending' AND h.expires_at < clock_timestamp()
              AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = h.id)
            ORDER BY h.expires_at LIMIT $1
            """,
            limit,
        )
        return [
            await self.resolve_hold(
                HoldResolution(key=f"expire:{row[0]}", hold_key=row[0], action="expire")
            )
            for row in hold_keys
        ]

    # ----- reads --------------------------------------------------------

    async def balance(self, code: str, *, as_of: datetime | None = None) -> Balance:
        """Current balance (sum of the slots), or as of an instant (from transfers)."""
        account = await self.get_account(code)
        if as_of is None:
            row = await self._pool.fetchrow(
                """
                SELECT sum(debits_posted) AS dp, sum(credits_posted) AS cp,
                       sum(debits_pending) AS dpend, sum(credits_pending) AS cpend
                FROM ledger_balances WHERE account_id = $1
                """,
                account.id,
            )
        else:
            row = await self._pool.fetchrow(_BALANCE_AS_OF, account.id, as_of)
        assert row is not None
        return Balance(
            code=code,
            currency=account.currency,
            debits_posted=row["dp"] or 0,
            credits_posted=row["cp"] or 0,
            debits_pending=row["dpend"] or 0,
            credits_pending=row["cpend"] or 0,
            as_of=as_of,
        )

    async def history(
        self, code: str, *, after: int | None = None, limit: int = 100
    ) -> HistoryPage:
        """Transfers of an account in id order, a page at a time (for statements)."""
        if not 1 <= limit <= HISTORY_PAGE_SIZE_MAX:
            raise ValueError(f"limit must be 1 to {HISTORY_PAGE_SIZE_MAX}")
        account = await self.get_account(code)
        rows = await self._pool.fetch(_HISTORY, account.id, after or 0, limit + 1)
        entries = [
            HistoryEntry(
                transfer_id=row["id"],
                key=row["idempotency_key"],
                kind=row["kind"],
                direction="debit" if row["debit_account_id"] == account.id else "credit",
                counterparty=row["counterparty"],
                amount_minor=row["amount_minor"],
                currency=row["currency"],
                created_at=row["created_at"],
                pending_id=row["pending_id"],
            )
            for row in rows[:limit]
        ]
        next_cursor = entries[-1].transfer_id if len(rows) > limit else None
        return HistoryPage(entries=entries, next_cursor=next_cursor)

    # ----- plumbing -----------------------------------------------------

    async def keyed_call(self, method: Any, query: str, *args: Any) -> Any:
        """`method(query, *args)` for a statement that writes under an
        idempotency key: retried when a concurrent first use of the key won its
        insert (the retry finds that outcome); the database's ledger errors
        raised as their LedgerError."""
        for _ in range(KEY_RACE_RETRIES_MAX):
            try:
                return await method(query, *args)
            except asyncpg.UniqueViolationError:
                continue
            except asyncpg.PostgresError as error:
                typed = translate(error)
                if typed is not None:
                    raise typed from None
                raise
        raise LedgerError(f"idempotency key race did not settle after {KEY_RACE_RETRIES_MAX} tries")


def outcome_of(key: str, amount_minor: int, row: asyncpg.Record) -> TransferOutcome:
    """The outcome of one item from a row of ledger_submit or ledger_transfer_one."""
    return TransferOutcome(
        key=key,
        transfer_id=row["transfer_id"],
        rejection=row["rejection"],
        detail=row["detail"],
        replayed=row["replayed"],
        created_at=row["created_at"],
        amount_minor=None if row["rejection"] else amount_minor,
    )


def _account(row: asyncpg.Record) -> Account:
    return Account(
        id=row["id"],
        code=row["code"],
        currency=row["currency"],
        kind=row["kind"],
        owner_id=row["owner_id"],
        debits_must_not_exceed_credits=row["debits_must_not_exceed_credits"],
        credits_must_not_exceed_debits=row["credits_must_not_exceed_debits"],
        balance_slots=row["balance_slots"],
        status=row["status"],
        created_at=row["created_at"],
    )


# Posted amounts count when the transfer existed at the instant; a hold counts
# as pending when it existed and had not been resolved at that instant.
_BALANCE_AS_OF = """
WITH moves AS (
    SELECT t.* FROM ledger_transfers t WHERE t.debit_account_id = $1 AND t.created_at <= $2
    UNION ALL
    SELECT t.* FROM ledger_transfers t WHERE t.credit_account_id = $1 AND t.created_at <= $2
)
SELECT
    sum(amount_minor) FILTER (WHERE debit_account_id = $1 AND kind IN ('posted', 'post_pending'))
        AS dp,
    sum(amount_minor) FILTER (WHERE credit_account_id = $1 AND kind IN ('posted', 'post_pending'))
        AS cp,
    sum(amount_minor) FILTER (WHERE debit_account_id = $1 AND kind = 'pending' AND NOT EXISTS (
        SELECT 1 FROM ledger_transfers r WHERE r.pending_id = moves.id AND r.created_at <= $2))
        AS dpend,
    sum(amount_minor) FILTER (WHERE credit_account_id = $1 AND kind = 'pending' AND NOT EXISTS (
        SELECT 1 FROM ledger_transfers r WHERE r.pending_id = moves.id AND r.created_at <= $2))
        AS cpend
FROM moves
"""

_HISTORY = """
SELECT t.*, other.code AS counterparty
FROM (
    (SELECT * FROM ledger_transfers WHERE debit_account_id = $1 AND id > $2 ORDER BY id LIMIT $3)
    UNION ALL
    (SELECT * FROM ledger_transfers WHERE credit_account_id = $1 AND id > $2 ORDER BY id LIMIT $3)
) t
JOIN ledger_accounts other
  ON other.id = CASE WHEN t.debit_account_id = $1 THEN t.credit_account_id
                     ELSE t.debit_account_id END
ORDER BY t.id
LIMIT $3
"""
