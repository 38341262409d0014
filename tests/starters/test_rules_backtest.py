"""`cardflow rules backtest`: candidate rules against the cards' real
histories, with figures computed by hand.

Two cards answer real authorizations through the issuer simulator; card B
then had a rule of its own banning travel. The candidate rules ban gambling,
decline 50.00 or more, decline a third approval within the hour, and (in
shadow) watch purchases under 10.00. By hand:

card A (no rules then): 10.00 grocer stays approved; 60.00 grocer becomes a
decline (`big`); 20.00 casino becomes a decline (`no-gambling`); 5.00 grocer
stays approved (one approval left in the hour before it: velocity 2), and
`watch` matches it.

card B (`old-travel-ban` then): 30.00 airline, declined by the old rule,
becomes an approval; 7.00 grocer stays approved (`watch` matches); 8.00
grocer is the third approval within the hour *counting the airline
purchase the candidate rules let through*, so `third-in-hour` declines it,
and `watch` matches it too.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from schemas.auth_rules import RuleSet
from schemas.issuer import Merchant
from schemas.money import Currency
from starters.cli import app
from starters.rules_backtest import backtest
from tests.conftest import Platform
from tests.customers import authorize, open_card

GROCER = Merchant(name="Corner Shop", mcc="5411", country="GB")
CASINO = Merchant(name="Lucky Star", mcc="7995", country="GB")
AIRLINE = Merchant(name="Sky Air", mcc="4511", country="US")
CANDIDATES = RuleSet.model_validate(
    {
        "rules": [
            {
                "id": "no-gambling",
                "mode": "active",
                "conditions": [{"kind": "mcc", "any_of": ["group:gambling"]}],
            },
            {
                "id": "big",
                "mode": "active",
                "conditions": [{"kind": "amount", "at_least_minor": 5_000}],
            },
            {
                "id": "third-in-hour",
                "mode": "active",
                "conditions": [{"kind": "velocity", "window_seconds": 3_600, "count_at_least": 3}],
            },
            {
                "id": "watch",
                "mode": "shadow",
                "conditions": [{"kind": "amount", "below_minor": 1_000}],
            },
        ]
    }
)


def figures(rule_id: str, mode: str, **found: Any) -> dict[str, Any]:
    empty: dict[str, Any] = {
        "rule_id": rule_id,
        "mode": mode,
        "matched": 0,
        "matched_minor": {},
        "approvals_to_declines": 0,
        "approvals_to_declines_minor": {},
        "declines_to_approvals": 0,
        "declines_to_approvals_minor": {},
    }
    return empty | found


async def test_a_backtests_figures_match_the_hand_computed_ones(platform: Platform) -> None:
    _, card_a, _ = await open_card(platform, {Currency.USD: 100_000})
    _, card_b, _ = await open_card(platform, {Currency.USD: 100_000})
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, headers=platform.api_headers, timeout=60
    ) as http:
        ban = {
            "rules": [
                {
                    "id": "old-travel-ban",
                    "mode": "active",
                    "conditions": [{"kind": "mcc", "any_of": ["group:travel"]}],
                }
            ]
        }
        answer = await http.put(
            f"/v1/cards/{card_b}/controls",
            json=ban,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert answer.status_code == 200, answer.text
    then = [
        (card_a, 1_000, GROCER, "approved"),
        (card_a, 6_000, GROCER, "approved"),
        (card_a, 2_000, CASINO, "approved"),
        (card_a, 500, GROCER, "approved"),
        (card_b, 3_000, AIRLINE, "declined_by_rule"),
        (card_b, 700, GROCER, "approved"),
        (card_b, 800, GROCER, "approved"),
    ]
    for card_id, amount, merchant, reason in then:
        decided = await authorize(platform, card_id, amount, merchant=merchant)
        assert decided.decision_reason == reason

    report = (
        await backtest(platform.stack.client, CANDIDATES, 1, cards={card_a, card_b})
    ).as_json()

    assert (report["cards"], report["authorizations"]) == (2, 7)
    rules = {found["rule_id"]: found for found in report["rules"]}
    samples = {rule_id: rules[rule_id].pop("sample") for rule_id in rules}
    assert rules == {
        "no-gambling": figures(
            "no-gambling",
            "active",
            matched=1,
            matched_minor={"USD": 2_000},
            approvals_to_declines=1,
            approvals_to_declines_minor={"USD": 2_000},
        ),
        "big": figures(
            "big",
            "active",
            matched=1,
            matched_minor={"USD": 6_000},
            approvals_to_declines=1,
            approvals_to_declines_minor={"USD": 6_000},
        ),
        "third-in-hour": figures(
            "third-in-hour",
            "active",
            matched=1,
            matched_minor={"USD": 800},
            approvals_to_declines=1,
            approvals_to_declines_minor={"USD": 800},
        ),
        "watch": figures("watch", "shadow", matched=3, matched_minor={"USD": 2_000}),
        "old-travel-ban": figures(
            "old-travel-ban",
            "removed",
            declines_to_approvals=1,
            declines_to_approvals_minor={"USD": 3_000},
        ),
    }
    assert [(s["card_id"], s["amount_minor"], s["before"], s["after"]) for s in samples["big"]] == [
        (card_a, 6_000, "approved", "declined")
    ]
    assert [(s["card_id"], s["merchant"]) for s in samples["old-travel-ban"]] == [
        (card_b, "Sky Air")
    ]
    assert report["authorizations_per_second"] > 0


def test_a_rules_file_it_cannot_read_or_mean_is_refused_naming_where(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"rules": [{"id": "x", "conditions": [{"kind": "amount"}]}]}))
    runner = CliRunner()
    unreadable = runner.invoke(app, ["rules", "backtest", str(broken)])
    meaningless = runner.invoke(app, ["rules", "backtest", str(wrong), "--days", "7"])
    assert unreadable.exit_code == 2 and "RULES_FILE: cannot read" in unreadable.output
    assert meaningless.exit_code == 2
    assert "rules.0.conditions.0.amount" in meaningless.output
