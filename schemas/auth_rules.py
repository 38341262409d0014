"""Authorization rules as data, and the pure engine that evaluates them.

A rule declines an authorization when all its conditions hold. Conditions:
the amount (in the card's currency), the MCC (codes or named groups, see
schemas/card_controls.py), the merchant's country, velocity (the card's
approvals over a trailing window, this one included, by count and/or
amount), the card's age, the customer's segment (their KYC tier) and the
time of day (UTC hours). Each rule is `active` (its decline is the card's
answer, naming the rule) or `shadow` (what it would have done is recorded
and counted; the answer is unchanged). A rule's action is `decline` (the
default) or `challenge`, which decides 3-D Secure authentications only.

Rules are a field of the card's controls (`Controls.rules`), so they come
versioned by scope like any control: usually the program's, replaced as a
whole by a narrower scope that sets them. The engine is pure: the same facts
give the same verdict, in the card and in a backtest over its history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.customers import KycTier
from schemas.edge import EdgeModel
from schemas.merchant_codes import country_codes, mcc_entries, names
from schemas.money import AMOUNT_MINOR_MAX

RULES_MAX = 100
CONDITIONS_MAX = 10
# The longest velocity window a rule may look back over; the card keeps its
# approvals this long for them.
VELOCITY_WINDOW_SECONDS_MAX = 7 * 24 * 3_600
# Approvals a card keeps for velocity rules (the newest).
RULE_HISTORY_MAX = 1_000
RULE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class AmountCondition(EdgeModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["amount"]
    at_least_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MINOR_MAX)
    below_minor: int | None = Field(default=None, ge=1, le=AMOUNT_MINOR_MAX)

    @model_validator(mode="after")
    def _bounded(self) -> AmountCondition:
        if self.at_least_minor is None and self.below_minor is None:
            raise ValueError("an amount condition needs at_least_minor, below_minor or both")
        return self


class MccCondition(EdgeModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["mcc"]
    any_of: list[str] = Field(min_length=1, max_length=200)

    @field_validator("any_of")
    @classmethod
    def _mccs(cls, value: list[str]) -> list[str]:
        checked = mcc_entries(value)
        assert checked is not None
        return checked


class CountryCondition(EdgeModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["country"]
    any_of: list[str] | None = Field(default=None, min_length=1, max_length=250)
    none_of: list[str] | None = Field(default=None, min_length=1, max_length=250)

    @field_validator("any_of", "none_of")
    @classmethod
    def _codes(cls, value: list[str] | None) -> list[str] | None:
        return country_codes(value)

    @model_validator(mode="after")
    def _one_list(self) -> CountryCondition:
        if (self.any_of is None) == (self.none_of is None):
            raise ValueError("a country condition needs exactly one of any_of and none_of")
        return self


class VelocityCondition(EdgeModel):
    """The card's approvals in the trailing window, this one included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["velocity"]
    window_seconds: int = Field(ge=1, le=VELOCITY_WINDOW_SECONDS_MAX)
    count_at_least: int | None = Field(default=None, ge=1, le=100_000)
    amount_at_least_minor: int | None = Field(default=None, ge=1, le=AMOUNT_MINOR_MAX)

    @model_validator(mode="after")
    def _bounded(self) -> VelocityCondition:
        if self.count_at_least is None and self.amount_at_least_minor is None:
            raise ValueError("a velocity condition needs count_at_least, amount_at_least_minor")
        return self


class CardAgeCondition(EdgeModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["card_age"]
    younger_than_days: int = Field(ge=1, le=36_500)


class SegmentCondition(EdgeModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["segment"]
    any_of: list[KycTier] = Field(min_length=1, max_length=len(KycTier))


class TimeOfDayCondition(EdgeModel):
    """From from_hour (inclusive) to to_hour (exclusive), UTC; across midnight
    when from_hour > to_hour."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["time_of_day"]
    from_hour: int = Field(ge=0, le=23)
    to_hour: int = Field(ge=0, le=23)

    @model_validator(mode="after")
    def _spans(self) -> TimeOfDayCondition:
        if self.from_hour == self.to_hour:
            raise ValueError("from_hour and to_hour must differ")
        return self


Condition = Annotated[
    AmountCondition
    | MccCondition
    | CountryCondition
    | VelocityCondition
    | CardAgeCondition
    | SegmentCondition
    | TimeOfDayCondition,
    Field(discriminator="kind"),
]


class Rule(EdgeModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=RULE_ID_PATTERN)
    description: str = Field(default="", max_length=300)
    mode: Literal["active", "shadow"] = "shadow"
    # `decline` decides authorizations (and declines a 3-D Secure
    # authentication too); `challenge` decides 3-D Secure only: a checkout it
    # matches is challenged with a one-time code.
    action: Literal["decline", "challenge"] = "decline"
    conditions: list[Condition] = Field(min_length=1, max_length=CONDITIONS_MAX)


class RuleSet(EdgeModel):
    """A rules file: the rules in the order they are evaluated."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(max_length=RULES_MAX)

    @field_validator("rules")
    @classmethod
    def _unique(cls, value: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in value:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return value


class Approval(BaseModel):
    """One approval a velocity condition counts."""

    at: datetime
    amount_minor: int


@dataclass(frozen=True)
class Facts:
    """What the rules look at, for one authorization."""

    amount_minor: int
    mcc: str
    country: str
    at: datetime
    card_started_at: datetime | None
    segment: KycTier | None
    # The card's earlier approvals (any order).
    approvals: Sequence[Approval] = ()


@dataclass
class Verdict:
    """The first active rule that declines (None: the rules let it through),
    and every shadow rule that would have."""

    declined_by: str | None = None
    shadow_hits: list[str] = field(default_factory=list)


def holds(condition: Condition, facts: Facts) -> bool:
    """Whether one condition holds for the authorization."""
    if isinstance(condition, AmountCondition):
        return (
            condition.at_least_minor is None or facts.amount_minor >= condition.at_least_minor
        ) and (condition.below_minor is None or facts.amount_minor < condition.below_minor)
    if isinstance(condition, MccCondition):
        return names(condition.any_of, facts.mcc)
    if isinstance(condition, CountryCondition):
        if condition.any_of is not None:
            return facts.country in condition.any_of
        return condition.none_of is not None and facts.country not in condition.none_of
    if isinstance(condition, VelocityCondition):
        since = facts.at - timedelta(seconds=condition.window_seconds)
        recent = [a for a in facts.approvals if since < a.at <= facts.at]
        count = len(recent) + 1
        amount = sum(a.amount_minor for a in recent) + facts.amount_minor
        return (condition.count_at_least is None or count >= condition.count_at_least) and (
            condition.amount_at_least_minor is None or amount >= condition.amount_at_least_minor
        )
    if isinstance(condition, CardAgeCondition):
        if facts.card_started_at is None:
            return False
        return facts.at - facts.card_started_at < timedelta(days=condition.younger_than_days)
    if isinstance(condition, SegmentCondition):
        return facts.segment is not None and facts.segment in condition.any_of
    hour = facts.at.hour
    if condition.from_hour < condition.to_hour:
        return condition.from_hour <= hour < condition.to_hour
    return hour >= condition.from_hour or hour < condition.to_hour


def evaluate(rules: Iterable[Rule], facts: Facts, action: str = "decline") -> Verdict:
    """The rules of `action`: every shadow rule is evaluated, active ones
    until the first matches (`declined_by`: the rule that decides)."""
    verdict = Verdict()
    for rule in rules:
        if rule.action != action:
            continue
        if rule.mode == "active" and verdict.declined_by is not None:
            continue
        if all(holds(condition, facts) for condition in rule.conditions):
            if rule.mode == "active":
                verdict.declined_by = rule.id
            else:
                verdict.shadow_hits.append(rule.id)
    return verdict


def keep_approvals(approvals: list[Approval], now: datetime) -> list[Approval]:
    """The approvals a velocity rule may still look at, newest last, bounded."""
    since = now - timedelta(seconds=VELOCITY_WINDOW_SECONDS_MAX)
    kept = [a for a in approvals if a.at > since]
    return kept[-RULE_HISTORY_MAX:]
