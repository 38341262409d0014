"""Errors the ledger raises. A business rejection (insufficient funds, closed
account...) is not an error: it is a recorded outcome (schemas.ledger.Rejection).
Every class here is non-retryable: retrying the same call cannot succeed."""

from __future__ import annotations

import asyncpg

from activities.errors import UNREPRESENTABLE_VALUE, is_unrepresentable


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


class UnrepresentableValue(LedgerError):
    """A value of the request, or one computed from it, that the database
    cannot represent (a numeric overflow, an integer beyond 64 bits): the
    same request can never succeed, and only it is refused."""


assert UnrepresentableValue.__name__ == UNREPRESENTABLE_VALUE, "one name for one failure"


_BY_SQLSTATE: dict[str, type[LedgerError]] = {
    "CF400": InvalidLedgerRequest,
    "CF404": AccountNotFound,
    "CF409": IdempotencyConflict,
    "CF422": AccountNotEmpty,
}


def translate(error: asyncpg.PostgresError) -> LedgerError | None:
    """The typed error for one of the ledger functions' SQLSTATEs, or for a
    value the database cannot represent, if it is one."""
    if is_unrepresentable(error):
        # SQLSTATE class 22, data exception: a numeric overflow in the
        # database, or (raised by the driver before sending, as the class's
        # base) an argument it cannot encode, such as an integer beyond 64
        # bits. The ledger functions refuse the overflows they can foresee
        # (balance_overflow); this is the rest, and a retry cannot help.
        return UnrepresentableValue(getattr(error, "message", str(error)))
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
    UnrepresentableValue.__name__,
)
