"""What cardflow takes in at its edge (the API, the CLI, provider webhooks):
only values every layer inside can hold, and text that shows what it says.

A value an inner layer cannot hold does not fail where it enters; it fails
deep inside a process, on every retry: PostgreSQL's text and jsonb cannot
hold NUL (U+0000), UTF-8 cannot encode a lone surrogate (U+D800..U+DFFF,
which a JSON `\\ud800` escape can carry), Temporal refuses a payload over a
few MiB, JSON has no NaN or Infinity (Python's json module reads them), and
date arithmetic overflows at Python's years 1 and 9999. Text an operator
reads (a name, an address, a reason) is shown in terminals, logs, the Web UI
and statements: a control character (ESC starts an ANSI escape, CR rewrites
a line) or a Unicode bidirectional control (which reorders what follows,
"Trojan Source") would make it show something else. So such values are
refused here, with a message naming the field, and never reach a process.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

# Lengths of text cardflow takes in, in characters.
NAME_CHARS_MAX = 100  # a person's first or last name; an operator's name
ADDRESS_LINE_CHARS_MAX = 200  # an address line; a city
POSTAL_CODE_CHARS_MAX = 20
REASON_CHARS_MAX = 500  # a free-text reason or note
# The longest free text (a piece of evidence), and so the bound of every
# string of an EdgeModel whose field names no bound of its own.
TEXT_CHARS_MAX = 2_000

# Not storable: NUL, and lone surrogates (which UTF-8 cannot encode).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Shown as something else: the C0 controls, DEL and the C1 controls (ESC
# starts an ANSI escape); the line and paragraph separators; Unicode's
# bidirectional controls (U+061C, U+200E, U+200F, U+202A..U+202E,
# U+2066..U+2069); the deprecated format characters U+206A..U+206F; the byte
# order mark; interlinear annotation U+FFF9..U+FFFB. Zero-width joiners
# stay: scripts and emoji need them.
_CONTROLS = "\x01-\x08\x0b-\x1f\x7f-\x9f"
_LINE_BREAKS = "\t\n"
_FORMATTING = "\u061c\u200e\u200f\u2028-\u202e\u2066-\u206f\ufeff\ufff9-\ufffb"
_MISLEADING_IN_LINE = re.compile(f"[{_CONTROLS}{_LINE_BREAKS}{_FORMATTING}]")
# Multi-line text (a MultiLine field) may hold line feeds and tabs.
_MISLEADING_IN_TEXT = re.compile(f"[{_CONTROLS}{_FORMATTING}]")


class MultiLine:
    """Marks a field of multi-line text: it may hold line feeds and tabs."""

    def __repr__(self) -> str:
        return "MultiLine()"


MULTI_LINE = MultiLine()


def _unstorable(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    return f"must not contain the character U+{ord(found.group()):04X}, which cannot be stored"


def _refusal(text: str, lines: bool = False) -> str | None:
    unstorable = _unstorable(text)
    if unstorable is not None:
        return unstorable
    found = (_MISLEADING_IN_TEXT if lines else _MISLEADING_IN_LINE).search(text)
    if found is not None:
        character = found.group()
        if unicodedata.category(character) == "Cc":
            kind = "a control character"
        else:
            kind = "which changes how the text around it shows"
        return f"must not contain the character U+{ord(character):04X}, {kind}"
    return None


def storable_text(text: str) -> str:
    """`text`, if PostgreSQL (UTF-8) can store it; else ValueError."""
    refusal = _unstorable(text)
    if refusal is not None:
        raise ValueError(refusal)
    return text


def storable(value: Any, where: str = "", *, lines: bool = False) -> Any:
    """`value`, if every string in it (in lists, dicts and models, however
    deep) can be stored and shows what it says (line feeds and tabs only
    where `lines`), and every number in it is finite; else ValueError naming
    where the first other one is."""
    refusal: str | None = None
    if isinstance(value, str):
        refusal = _refusal(value, lines)
    elif isinstance(value, float | Decimal):
        if not (math.isfinite(value) if isinstance(value, float) else value.is_finite()):
            refusal = "must be a finite number"
    elif isinstance(value, EdgeModel):
        pass  # it checked its own fields
    elif isinstance(value, BaseModel):
        for name, item in value.__dict__.items():
            field = type(value).model_fields.get(name)
            storable(item, f"{where}.{name}" if where else name, lines=_multi_line(field))
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key, where)
            storable(item, f"{where}[{key!r}]", lines=lines)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            storable(item, f"{where}[{index}]", lines=lines)
    if refusal is not None:
        raise ValueError(f"{where} {refusal}" if where else refusal)
    return value


def _multi_line(field: Any) -> bool:
    return field is not None and any(isinstance(m, MultiLine) for m in field.metadata)


class EdgeModel(BaseModel):
    """A model whose values come from outside cardflow: every string in every
    field, however deep, must be storable, show what it says, and be at most
    TEXT_CHARS_MAX characters unless its field says otherwise; every number
    must be finite."""

    model_config = ConfigDict(str_max_length=TEXT_CHARS_MAX)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        return storable(value, lines=_multi_line(field))


# A string field of a model that is not an EdgeModel (a provider's envelope).
StorableText = Annotated[str, AfterValidator(storable_text)]

# Text of one line an operator or customer reads: a name, a reason.
Name = Annotated[str, Field(min_length=1, max_length=NAME_CHARS_MAX)]
# Text of several lines (EdgeModel lets it hold line feeds and tabs).
Text = Annotated[str, Field(min_length=1, max_length=TEXT_CHARS_MAX), MULTI_LINE]

# Calendar days cardflow computes with (a day's end, a period's next month,
# a lookback), the same century billing periods are (YYYY = 20xx): any date
# in it keeps every such computation within Python's and PostgreSQL's range.
DAY_MIN = date(2000, 1, 1)
DAY_MAX = date(2099, 12, 31)
Day = Annotated[
    date,
    Field(ge=DAY_MIN, le=DAY_MAX, description=f"A day from {DAY_MIN} to {DAY_MAX}"),
]
