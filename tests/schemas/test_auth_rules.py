"""The authorization rules engine, pure: each condition on its own, the
order rules are evaluated in, and the rules file refusing what it cannot
mean."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from schemas.auth_rules import Approval, Condition, Facts, Rule, RuleSet, evaluate, holds
from schemas.customers import KycTier

AT = datetime(2026, 12, 5, 23, 15, tzinfo=UTC)
CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)


def facts(**changes: Any) -> Facts:
    fields: dict[str, Any] = {
        "amount_minor": 5_000,
        "mcc": "7995",
        "country": "GB",
        "at": AT,
        "card_started_at": AT - timedelta(days=3),
        "segment": KycTier.BASIC,
        "approvals": [
            Approval(at=AT - timedelta(minutes=10), amount_minor=2_000),
            Approval(at=AT - timedelta(minutes=50), amount_minor=3_000),
            Approval(at=AT - timedelta(hours=5), amount_minor=9_000),
        ],
    }
    return Facts(**(fields | changes))


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"kind": "amount", "at_least_minor": 5_000}, True),
        ({"kind": "amount", "at_least_minor": 5_001}, False),
        ({"kind": "amount", "below_minor": 5_000}, False),
        ({"kind": "mcc", "any_of": ["group:gambling"]}, True),
        ({"kind": "mcc", "any_of": ["5411", "group:travel"]}, False),
        ({"kind": "country", "any_of": ["GB"]}, True),
        ({"kind": "country", "none_of": ["GB", "US"]}, False),
        # Two approvals in the hour, and this one: three.
        ({"kind": "velocity", "window_seconds": 3_600, "count_at_least": 3}, True),
        ({"kind": "velocity", "window_seconds": 3_600, "count_at_least": 4}, False),
        ({"kind": "velocity", "window_seconds": 3_600, "amount_at_least_minor": 10_000}, True),
        ({"kind": "velocity", "window_seconds": 3_600, "amount_at_least_minor": 10_001}, False),
        ({"kind": "velocity", "window_seconds": 6 * 3_600, "count_at_least": 4}, True),
        ({"kind": "card_age", "younger_than_days": 4}, True),
        ({"kind": "card_age", "younger_than_days": 3}, False),
        ({"kind": "segment", "any_of": ["basic"]}, True),
        ({"kind": "segment", "any_of": ["standard", "enhanced"]}, False),
        ({"kind": "time_of_day", "from_hour": 22, "to_hour": 6}, True),
        ({"kind": "time_of_day", "from_hour": 6, "to_hour": 22}, False),
    ],
)
def test_each_condition(condition: dict[str, Any], expected: bool) -> None:
    assert holds(CONDITION.validate_python(condition), facts()) is expected


def test_a_card_of_unknown_age_or_a_customer_of_unknown_segment_matches_neither() -> None:
    age = CONDITION.validate_python({"kind": "card_age", "younger_than_days": 30})
    segment = CONDITION.validate_python({"kind": "segment", "any_of": ["basic"]})
    assert not holds(age, facts(card_started_at=None))
    assert not holds(segment, facts(segment=None))


def rule(rule_id: str, mode: str, *conditions: dict[str, Any]) -> Rule:
    return Rule.model_validate({"id": rule_id, "mode": mode, "conditions": list(conditions)})


def test_the_first_active_rule_declines_and_every_shadow_rule_is_evaluated() -> None:
    rules = [
        rule("shadow-1", "shadow", {"kind": "country", "any_of": ["GB"]}),
        rule("misses", "active", {"kind": "country", "any_of": ["FR"]}),
        rule("first", "active", {"kind": "mcc", "any_of": ["7995"]}),
        rule("second", "active", {"kind": "amount", "at_least_minor": 1}),
        rule("shadow-2", "shadow", {"kind": "amount", "at_least_minor": 1}),
        rule("shadow-3", "shadow", {"kind": "amount", "below_minor": 1}),
    ]
    verdict = evaluate(rules, facts())
    assert (verdict.declined_by, verdict.shadow_hits) == ("first", ["shadow-1", "shadow-2"])
    # Every condition of a rule must hold.
    both = rule(
        "both",
        "active",
        {"kind": "mcc", "any_of": ["7995"]},
        {"kind": "country", "any_of": ["FR"]},
    )
    assert evaluate([both], facts()).declined_by is None


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"rules": [{"id": "a", "conditions": []}]}, ("rules", 0, "conditions")),
        (
            {"rules": [{"id": "a b", "conditions": [{"kind": "amount", "below_minor": 1}]}]},
            ("rules", 0, "id"),
        ),
        (
            {"rules": [{"id": "a", "conditions": [{"kind": "colour"}]}]},
            ("rules", 0, "conditions", 0),
        ),
        (
            {"rules": [{"id": "a", "conditions": [{"kind": "amount"}]}]},
            ("rules", 0, "conditions", 0, "amount"),
        ),
        (
            {"rules": [{"id": "a", "conditions": [{"kind": "mcc", "any_of": ["group:x"]}]}]},
            ("rules", 0, "conditions", 0, "mcc", "any_of"),
        ),
        (
            {
                "rules": [
                    {
                        "id": "a",
                        "conditions": [{"kind": "country", "any_of": ["GB"], "none_of": ["FR"]}],
                    }
                ]
            },
            ("rules", 0, "conditions", 0, "country"),
        ),
        (
            {
                "rules": [
                    {
                        "id": "a",
                        "mode": "live",
                        "conditions": [{"kind": "amount", "below_minor": 1}],
                    }
                ]
            },
            ("rules", 0, "mode"),
        ),
        (
            {
                "rules": [
                    {"id": "a", "conditions": [{"kind": "amount", "below_minor": 1}]},
                    {"id": "a", "conditions": [{"kind": "amount", "below_minor": 2}]},
                ]
            },
            ("rules",),
        ),
    ],
)
def test_a_rules_file_refuses_what_it_cannot_mean_naming_where(
    document: dict[str, Any], where: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as refused:
        RuleSet.model_validate(document)
    assert [error["loc"] for error in refused.value.errors()] == [where]
