"""A card's controls as data: what the program, the customer and the card
itself allow, the narrower one winning field by field, and controls that
undo themselves on the card's own timers.

- Scopes: program, customer and card each hold a `Controls`; a field left
  None at a scope is not set there. The card's effective controls take each
  field from the card's active temporary controls (newest first), else the
  card's own, else the customer's, else the program's.
- MCC lists hold MCCs ("5411") and named groups ("group:travel", see
  MCC_GROUPS). An allow list lets only what it names; a block list refuses
  what it names; both may apply.
- Countries are the merchant's ISO 3166-1 alpha-2 code, as authorizations
  carry it.
- Merchant lock: `first` locks the card to the merchant of its first
  approved purchase; `named` to one merchant's name (case-insensitive).
- Single use: one purchase; the card closes itself once that purchase has
  cleared and nothing is held.
- Window limits: amount and/or count of approvals per day, ISO week, month,
  year (UTC) or the card's lifetime, overall or for one MCC group.
- Nightly freeze: declines between two UTC hours every day (from_hour
  inclusive, to_hour exclusive; across midnight when from > to).

Pure: no I/O, no clock (`now` is always passed in).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.auth_rules import RULES_MAX, Rule
from schemas.edge import EdgeModel
from schemas.merchant_codes import MCC_GROUPS, country_codes, mcc_entries
from schemas.money import AMOUNT_MINOR_MAX

Window = Literal["day", "week", "month", "year", "lifetime"]
WINDOWS: tuple[Window, ...] = ("day", "week", "month", "year", "lifetime")
# Temporary controls a card keeps at once.
TEMPORARY_CONTROLS_MAX = 20
LIST_ENTRIES_MAX = 200


class WindowLimit(EdgeModel):
    """At most `amount_max_minor` and/or `count_max` approvals per window,
    over all purchases or those of one MCC group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Window
    amount_max_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MINOR_MAX)
    count_max: int | None = Field(default=None, ge=0, le=1_000_000)
    mcc_group: str | None = Field(default=None, max_length=40)

    @field_validator("mcc_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and value not in MCC_GROUPS:
            known = ", ".join(sorted(MCC_GROUPS))
            raise ValueError(f"{value!r} names no MCC group; groups: {known}")
        return value

    @model_validator(mode="after")
    def _limits_something(self) -> WindowLimit:
        if self.amount_max_minor is None and self.count_max is None:
            raise ValueError("a window limit needs amount_max_minor, count_max or both")
        return self


class MerchantLock(EdgeModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["first", "named"]
    name: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _named_has_name(self) -> MerchantLock:
        if (self.mode == "named") != (self.name is not None):
            raise ValueError("a named lock needs the merchant's name, a first lock none")
        return self


class NightlyFreeze(EdgeModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    from_hour: int = Field(ge=0, le=23)
    to_hour: int = Field(ge=0, le=23)

    @model_validator(mode="after")
    def _spans_time(self) -> NightlyFreeze:
        if self.from_hour == self.to_hour:
            raise ValueError("from_hour and to_hour must differ")
        return self

    def frozen_at(self, now: datetime) -> bool:
        hour = now.hour
        if self.from_hour < self.to_hour:
            return self.from_hour <= hour < self.to_hour
        return hour >= self.from_hour or hour < self.to_hour


class Controls(EdgeModel):
    """One scope's controls; None leaves a field to the wider scope."""

    model_config = ConfigDict(extra="forbid")

    mcc_allow: list[str] | None = Field(default=None, max_length=LIST_ENTRIES_MAX)
    mcc_block: list[str] | None = Field(default=None, max_length=LIST_ENTRIES_MAX)
    country_allow: list[str] | None = Field(default=None, max_length=LIST_ENTRIES_MAX)
    country_block: list[str] | None = Field(default=None, max_length=LIST_ENTRIES_MAX)
    merchant_lock: MerchantLock | None = None
    single_use: bool | None = None
    limits: list[WindowLimit] | None = Field(default=None, max_length=20)
    nightly_freeze: NightlyFreeze | None = None
    # Authorization rules (schemas/auth_rules.py), evaluated in order; the
    # narrowest scope that sets them replaces the wider ones' as a whole.
    rules: list[Rule] | None = Field(default=None, max_length=RULES_MAX)

    @field_validator("mcc_allow", "mcc_block")
    @classmethod
    def _mccs(cls, value: list[str] | None) -> list[str] | None:
        return mcc_entries(value)

    @field_validator("country_allow", "country_block")
    @classmethod
    def _country_codes(cls, value: list[str] | None) -> list[str] | None:
        return country_codes(value)


FIELDS: tuple[str, ...] = tuple(Controls.model_fields)


class TemporaryControl(EdgeModel):
    """Controls that apply to one card until `until`, then undo themselves."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    controls: Controls
    until: AwareDatetime
    reason: str = Field(default="", max_length=200)


class ScopedControls(BaseModel):
    """A program's or customer's controls at a version, as a card keeps them."""

    scope: Literal["program", "customer"]
    version: int = Field(ge=0)
    controls: Controls = Field(default_factory=Controls)


def effective(
    program: Controls | None,
    customer: Controls | None,
    card: Controls | None,
    temporaries: list[TemporaryControl],
    now: datetime,
) -> Controls:
    """Each field from the narrowest scope that sets it (active temporary
    controls, newest first; the card; the customer; the program)."""
    layers = [t.controls for t in reversed(temporaries) if t.until > now]
    layers += [c for c in (card, customer, program) if c is not None]
    chosen: dict[str, object] = {}
    for field in FIELDS:
        for layer in layers:
            value = getattr(layer, field)
            if value is not None:
                chosen[field] = value
                break
    return Controls.model_construct(**chosen)  # type: ignore[arg-type]


def period(window: Window, now: datetime) -> str:
    """The window's period `now` falls in (UTC)."""
    if window == "day":
        return now.strftime("%Y-%m-%d")
    if window == "week":
        year, week, _ = now.isocalendar()
        return f"{year}-W{week:02d}"
    if window == "month":
        return now.strftime("%Y-%m")
    if window == "year":
        return now.strftime("%Y")
    return "lifetime"


class WindowSpend(BaseModel):
    """Approvals counted in one window's current period."""

    period: str
    amount_minor: int = 0
    count: int = 0


def counter_key(window: Window, group: str | None) -> str:
    return f"{window}|{group or ''}"


# ----- changes of the program's and customers' controls ------------------------

CONTROLLED_CARDS_PAGE_MAX = 500


class ControlsChange(EdgeModel):
    """New controls for the program (`customer_id` None) or one customer's
    cards: a new version of that scope, sent to each of its cards."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    customer_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    controls: Controls
    reason: str = Field(min_length=1, max_length=200)
    changed_by: str = Field(min_length=1, max_length=200)
    # Only these fields change (the rest kept from the version in force);
    # None replaces the scope's controls as a whole.
    only_fields: list[str] | None = Field(default=None, max_length=len(Controls.model_fields))

    @field_validator("only_fields")
    @classmethod
    def _known_fields(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if name not in Controls.model_fields:
                raise ValueError(f"{name!r} is not a control")
        return value

    @property
    def scope(self) -> Literal["program", "customer"]:
        return "program" if self.customer_id is None else "customer"


class ControlsChangeInput(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    change: ControlsChange
    ledger_task_queue: str
    providers_task_queue: str
    # Where a continued run resumes sending (the last card id sent to).
    after_card_id: str = ""
    cards_sent: int = 0
    cards_gone: int = 0


class ControlledCardsPage(BaseModel):
    """Cards of the program (or of one customer) after `after_card_id`, in id order."""

    customer_id: str | None = None
    after_card_id: str = ""
    limit: int = Field(default=CONTROLLED_CARDS_PAGE_MAX, ge=1, le=CONTROLLED_CARDS_PAGE_MAX)


class ControlsChangeResult(BaseModel):
    scope: Literal["program", "customer"]
    customer_id: str | None
    version: int
    # Cards sent the new version, and cards whose process had ended (a
    # closed card past its linger: it decides nothing any more).
    cards_sent: int
    cards_gone: int


class ControlsChangeStatus(BaseModel):
    stage: str
    version: int | None
    cards_sent: int
    cards_gone: int
