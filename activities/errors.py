"""Failures no retry can fix, whichever activity meets them.

An activity handed a value its layer cannot represent fails the same way on
every attempt: PostgreSQL's SQLSTATE class 22, data exception (a NUL that
text refuses, a character outside UTF-8, a numeric overflow, or an argument
the driver cannot encode), or Python's OverflowError (a date past year 9999,
a number past a float). Retrying such an activity loops forever and leaves
its process stuck; classified here, once for every activity (the workers'
UnrepresentableValueInterceptor), it fails once, and its process moves on:
compensates, or ends failed with the reason.
"""

from __future__ import annotations

import asyncpg
from temporalio.exceptions import ApplicationError

# The ApplicationError type; the ledger's own refusal of such a value
# (activities.ledger.errors.UnrepresentableValue) has the same name.
UNREPRESENTABLE_VALUE = "UnrepresentableValue"
# How far down an exception's causes to look for one of these.
CAUSE_DEPTH_MAX = 8


def is_unrepresentable(error: BaseException) -> bool:
    """Whether `error` says a value cannot be represented (see the module)."""
    return isinstance(error, asyncpg.DataError | OverflowError)


def unrepresentable_value(error: BaseException) -> ApplicationError | None:
    """A non-retryable ApplicationError for `error` (or a cause of it) that is
    an unrepresentable value, if it is one; an ApplicationError the activity
    raised itself is its own classification and is left alone."""
    found: BaseException | None = error
    for _ in range(CAUSE_DEPTH_MAX):
        if found is None or isinstance(found, ApplicationError):
            return None
        if is_unrepresentable(found):
            message = getattr(found, "message", None) or str(found)
            return ApplicationError(
                f"{type(found).__name__}: {message}",
                type=UNREPRESENTABLE_VALUE,
                non_retryable=True,
            )
        found = found.__cause__ or found.__context__
    return None
