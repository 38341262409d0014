"""What `cardflow` commands take on their command line, checked as it is parsed.

A value is refused before a command calls anyone, with a message naming the
argument, when it is not what the layers behind the command can hold: every
number a command takes has a lower and an upper bound (`min=`/`max=` on its
option, at most what the ledger or PostgreSQL hold), and every customer id
is parsed by `parse_customer_id`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from pydantic import TypeAdapter, ValidationError

from schemas.customers import CUSTOMER_ID_CHARS_MAX, CustomerId
from schemas.edge import DAY_MAX, DAY_MIN

# PostgreSQL's bigint: a transfer id, a cursor.
BIGINT_MAX = 2**63 - 1

_CUSTOMER_ID: TypeAdapter[str] = TypeAdapter(CustomerId)


def parse_customer_id(text: str) -> str:
    """`text`, if it is a customer id; else ValueError saying what one is."""
    try:
        return _CUSTOMER_ID.validate_python(text)
    except ValidationError:
        raise ValueError(
            "a customer id is letters, digits, '_', '.' and '-', starting with a letter"
            f" or a digit, at most {CUSTOMER_ID_CHARS_MAX} characters"
        ) from None


def instant(text: str) -> datetime:
    """An ISO 8601 instant with its time zone, from DAY_MIN to DAY_MAX (UTC);
    else ValueError."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 instant") from None
    if value.tzinfo is None:
        raise ValueError("needs a time zone, e.g. 2026-11-01T00:00:00+00:00")
    out_of_range = ValueError(f"must be from {DAY_MIN} to {DAY_MAX} (UTC)")
    try:
        day = value.astimezone(UTC).date()
    except OverflowError:  # before year 1 or after 9999, in UTC
        raise out_of_range from None
    if not DAY_MIN <= day <= DAY_MAX:
        raise out_of_range
    return value


# A command's CUSTOMER_ID argument.
CustomerIdArgument = Annotated[
    str, typer.Argument(parser=parse_customer_id, help="The customer's id")
]
