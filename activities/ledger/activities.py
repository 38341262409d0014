"""Temporal activities over the ledger, for the ledger task queue.

A business rejection (insufficient funds, closed account...) is returned as
the outcome, not raised: the first outcome is final, and retrying could not
change it. Malformed calls and reused keys raise non-retryable errors; only
infrastructure failures (connection lost, timeout) are retried, and the
idempotency key makes every retry safe.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta

import asyncpg
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from activities.ledger.coalesce import TransferCoalescer
from activities.ledger.errors import NON_RETRYABLE_ERROR_TYPES, LedgerError
from activities.ledger.store import Ledger
from activities.metrics import record_ledger_rejection, timed_posting
from activities.queues import ledger_activity
from schemas.ledger import (
    Account,
    AccountSpec,
    Balance,
    HoldRequest,
    HoldResolution,
    TransferBatch,
    TransferOutcome,
    TransferRequest,
)

OPEN_ACCOUNT = "ledger.open_account"
OPEN_ACCOUNTS = "ledger.open_accounts"
CLOSE_ACCOUNT = "ledger.close_account"
TRANSFER = "ledger.transfer"
HOLD = "ledger.hold"
RESOLVE_HOLD = "ledger.resolve_hold"
SUBMIT_BATCH = "ledger.submit_batch"
GET_BALANCE = "ledger.balance"

# Ledger calls are short; a call that has not finished in this time is stuck
# on a lock or a lost connection and is better retried (idempotently).
LEDGER_START_TO_CLOSE = timedelta(seconds=30)
# Accounts one open_accounts call may open: a process's system accounts.
OPEN_ACCOUNTS_MAX = 32
LEDGER_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
)


def _non_retryable(error: LedgerError) -> ApplicationError:
    return ApplicationError(str(error), type=type(error).__name__, non_retryable=True)


class LedgerActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.ledger = Ledger(pool)
        # Concurrent transfer and hold activities of this worker share batches.
        self.coalescer = TransferCoalescer(self.ledger)

    @ledger_activity(OPEN_ACCOUNT)
    async def open_account(self, spec: AccountSpec) -> Account:
        try:
            return await self.ledger.open_account(spec)
        except LedgerError as error:
            raise _non_retryable(error) from error

    @ledger_activity(OPEN_ACCOUNTS)
    async def open_accounts(self, specs: list[AccountSpec]) -> list[Account]:
        """Open each account (or find it open with the same spec), in order."""
        if len(specs) > OPEN_ACCOUNTS_MAX:
            raise ApplicationError(
                f"at most {OPEN_ACCOUNTS_MAX} accounts per call, got {len(specs)}",
                type="InvalidLedgerRequest",
                non_retryable=True,
            )
        try:
            return [await self.ledger.open_account(spec) for spec in specs]
        except LedgerError as error:
            raise _non_retryable(error) from error

    @ledger_activity(CLOSE_ACCOUNT)
    async def close_account(self, code: str) -> bool:
        try:
            return await self.ledger.close_account(code)
        except LedgerError as error:
            raise _non_retryable(error) from error

    @ledger_activity(TRANSFER)
    async def transfer(self, request: TransferRequest) -> TransferOutcome:
        return await _posted("transfer", self.coalescer.transfer(request))

    @ledger_activity(HOLD)
    async def hold(self, request: HoldRequest) -> TransferOutcome:
        return await _posted("hold", self.coalescer.transfer(request))

    @ledger_activity(RESOLVE_HOLD)
    async def resolve_hold(self, request: HoldResolution) -> TransferOutcome:
        return await _posted("resolve_hold", self.ledger.resolve_hold(request))

    @ledger_activity(SUBMIT_BATCH)
    async def submit_batch(self, batch: TransferBatch) -> list[TransferOutcome]:
        with timed_posting("submit_batch") as labels:
            try:
                outcomes = await self.ledger.submit(batch.items, atomic=batch.atomic)
            except LedgerError as error:
                raise _non_retryable(error) from error
            labels["outcome"] = (
                "posted" if all(outcome.accepted for outcome in outcomes) else "rejected"
            )
            for outcome in outcomes:
                _count_rejection("submit_batch", outcome)
            return outcomes

    @ledger_activity(GET_BALANCE)
    async def balance(self, code: str) -> Balance:
        try:
            return await self.ledger.balance(code)
        except LedgerError as error:
            raise _non_retryable(error) from error

    def all(self) -> list[object]:
        return [
            self.open_account,
            self.open_accounts,
            self.close_account,
            self.transfer,
            self.hold,
            self.resolve_hold,
            self.submit_batch,
            self.balance,
        ]


async def _posted(operation: str, posting: Awaitable[TransferOutcome]) -> TransferOutcome:
    """Await one ledger posting, timed for the posting-latency metric by outcome."""
    with timed_posting(operation) as labels:
        try:
            outcome = await posting
        except LedgerError as error:
            raise _non_retryable(error) from error
        labels["outcome"] = "posted" if outcome.accepted else "rejected"
        _count_rejection(operation, outcome)
        return outcome


def _count_rejection(operation: str, outcome: TransferOutcome) -> None:
    """Count a refusal once: a retry's replayed refusal is the same one."""
    if outcome.rejection is not None and not outcome.replayed:
        record_ledger_rejection(operation, outcome.rejection.value)
