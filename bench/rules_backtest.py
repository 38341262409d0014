"""How fast `cardflow rules backtest` reads the cards' histories and replays
their authorizations through candidate rules.

Run: .venv/bin/python -m bench.rules_backtest [--cards 40] [--authorizations 2000] [--json]

Starts the embedded stack (bench/authorizations.py's), issues --cards funded
cards, has the issuer simulator ask --authorizations purchases over them
(a few at a time, through the gateway, as in production), then backtests a
candidate rule set (an MCC ban, an amount ceiling, a velocity rule and a
shadow rule) over the last day, and prints the backtest's figures and its
rate: authorizations per second, from listing the cards to the report
(reading the histories through Temporal is nearly all of it). `--repeats`
backtests again on the same histories and reports the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid

from bench.authorizations import MERCHANTS, Acquirer, stack_with_cards
from schemas.auth_rules import RuleSet
from schemas.money import Currency
from starters.rules_backtest import backtest

PURCHASES_AT_ONCE = 8
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
                "conditions": [{"kind": "amount", "at_least_minor": 4_000}],
            },
            {
                "id": "ten-an-hour",
                "mode": "active",
                "conditions": [{"kind": "velocity", "window_seconds": 3_600, "count_at_least": 10}],
            },
            {
                "id": "small-abroad",
                "mode": "shadow",
                "conditions": [
                    {"kind": "amount", "below_minor": 500},
                    {"kind": "country", "none_of": ["GB"]},
                ],
            },
        ]
    }
)


async def run(args: argparse.Namespace) -> dict[str, object]:
    async with stack_with_cards(args.cards) as bench:
        rng = random.Random(args.seed)
        gate = asyncio.Semaphore(PURCHASES_AT_ONCE)
        async with Acquirer(bench.stack.settings) as acquirer:

            async def purchase(i: int) -> None:
                async with gate:
                    await acquirer.next().simulate_authorization(
                        card_id=bench.cards[i % len(bench.cards)],
                        amount_minor=rng.randint(100, 5_000),
                        currency=Currency.USD,
                        merchant=MERCHANTS[i % len(MERCHANTS)],
                        idempotency_key=f"bench-{uuid.uuid4().hex}",
                    )

            started = time.monotonic()
            await asyncio.gather(*(purchase(i) for i in range(args.authorizations)))
            asked_seconds = time.monotonic() - started
        reports = [
            await backtest(bench.client, CANDIDATES, 1, cards=set(bench.cards))
            for _ in range(args.repeats)
        ]
    rates = [r.authorizations / r.seconds for r in reports if r.seconds]
    last = reports[-1].as_json()
    return {
        "cards": last["cards"],
        "authorizations": last["authorizations"],
        "purchases_seconds": round(asked_seconds, 1),
        "backtest_seconds": [round(r.seconds, 2) for r in reports],
        "median_authorizations_per_second": round(statistics.median(rates), 1) if rates else None,
        "rules": [
            {k: rule[k] for k in ("rule_id", "matched", "approvals_to_declines")}
            for rule in last["rules"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=40)
    parser.add_argument("--authorizations", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"backtest of {figures['authorizations']} authorizations on {figures['cards']} cards:"
        f" {figures['median_authorizations_per_second']} authorizations/s"
        f" (runs of {figures['backtest_seconds']} s)"
    )
    for rule in figures["rules"]:  # type: ignore[attr-defined]
        print(
            f"  {rule['rule_id']}: matched {rule['matched']},"
            f" approvals turned declines {rule['approvals_to_declines']}"
        )


if __name__ == "__main__":
    main()
