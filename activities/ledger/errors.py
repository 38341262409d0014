"""Errors the ledger raises. A business rejection (insufficient funds, closed
account...) is not an error: it is a recorded outcome (schemas.ledger.Rejection).
Every class here is non-retryable: retrying the same call cannot succeed."""

from __future__ import annotations

import asyncpg


class LedgerError(Exception):
    """Base of the ledger's non-retryable errors."""


class IdempotencyConflict(LedgerError):
    """The key was used before with a different payload."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidLedgerRequest(LedgerError):
    """The call itself is malformed (batch size, duplicate keys in a batch)."""


class AccountNotFound(LedgerError):
    """No account has that code."""


class AccountNotEmpty(LedgerError):
    """The account cannot close: it has a balance or open holds."""


class AccountConflict(LedgerError):
    """An account with this code exists with other attributes."""


_BY_SQLSTATE: dict[str, type[LedgerError]] = {
    "CF400": InvalidLedgerRequest,
    "CF404": AccountNotFound,
    "CF409": IdempotencyConflict,
    "CF422": AccountNotEmpty,
}


def translate(error: asyncpg.PostgresError) -> LedgerError | None:
    """The typed error for one of the ledger functions' SQLSTATEs, if it is one."""
    kind = _BY_SQLSTATE.get(getattr(error, "sqlstate", "") or "")
    if kind is None:
        return None
    message = getattr(error, "message", str(error))
    if kind is IdempotencyConflict:
        key = message.split('"')[1] if message.count('"') >= 2 else None
        return IdempotencyConflict(message, key)
    return kind(message)


NON_RETRYABLE_ERROR_TYPES: tuple[str, ...] = (
    IdempotencyConflict.__name__,
    InvalidLedgerRequest.__name__,
    AccountNotFound.__name__,
    AccountNotEmpty.__name__,
    AccountConflict.__name__,
)
