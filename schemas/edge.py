"""What cardflow takes in at its edge (the API, the CLI, provider webhooks):
only values every layer inside can hold.

A value an inner layer cannot hold does not fail where it enters; it fails
deep inside a process, on every retry: PostgreSQL's text and jsonb cannot
hold NUL (U+0000), UTF-8 cannot encode a lone surrogate (U+D800..U+DFFF,
which a JSON `\\ud800` escape can carry), and date arithmetic overflows at
Python's years 1 and 9999. So such values are refused here, with a message
naming the field, and never reach a process.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, field_validator

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _refusal(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    return f"must not contain the character U+{ord(found.group()):04X}, which cannot be stored"


def storable_text(text: str) -> str:
    """`text`, if PostgreSQL (UTF-8) can store it; else ValueError."""
    refusal = _refusal(text)
    if refusal is not None:
        raise ValueError(refusal)
    return text


def storable(value: Any, where: str = "") -> Any:
    """`value`, if every string in it (in lists, dicts and models, however
    deep) can be stored; else ValueError naming where the first one is."""
    if isinstance(value, str):
        refusal = _refusal(value)
        if refusal is not None:
            raise ValueError(f"{where} {refusal}" if where else refusal)
    elif isinstance(value, EdgeModel):
        pass  # it checked its own fields
    elif isinstance(value, BaseModel):
        for name, item in value.__dict__.items():
            storable(item, f"{where}.{name}" if where else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key, where)
            storable(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            storable(item, f"{where}[{index}]")
    return value


class EdgeModel(BaseModel):
    """A model whose values come from outside cardflow: every string in every
    field, however deep, must be storable."""

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return storable(value)


# A string field of a model that is not an EdgeModel (a provider's envelope).
StorableText = Annotated[str, AfterValidator(storable_text)]

# Calendar days cardflow computes with (a day's end, a period's next month,
# a lookback), the same century billing periods are (YYYY = 20xx): any date
# in it keeps every such computation within Python's and PostgreSQL's range.
DAY_MIN = date(2000, 1, 1)
DAY_MAX = date(2099, 12, 31)
Day = Annotated[
    date,
    Field(ge=DAY_MIN, le=DAY_MAX, description=f"A day from {DAY_MIN} to {DAY_MAX}"),
]
