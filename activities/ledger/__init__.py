"""The double-entry ledger: the only writer of balances (see migrations/0001_ledger.sql).

Accounts lock in one global order (account id, balance slot), so no two
writers deadlock; constraints and idempotency are checked inside that lock.
System accounts that take part in almost every transfer stripe their balance
over several rows (`balance_slots`): each database session writes the slot
`backend pid mod slots`, so concurrent transfers update different rows, and
the balance is the sum of the slots. Only unconstrained accounts stripe, so
every constraint is still checked against a single locked row.
"""

from activities.ledger.errors import (
    AccountConflict,
    AccountNotEmpty,
    AccountNotFound,
    IdempotencyConflict,
    InvalidLedgerRequest,
    LedgerError,
    UnrepresentableValue,
)
from activities.ledger.store import Ledger

__all__ = [
    "AccountConflict",
    "AccountNotEmpty",
    "AccountNotFound",
    "IdempotencyConflict",
    "InvalidLedgerRequest",
    "Ledger",
    "LedgerError",
    "UnrepresentableValue",
]
