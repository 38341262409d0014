"""A burst at twice the authorizations' knee: every answer still in time.

Run: .venv/bin/python -m bench.authorizations --overload [--knee 40]
     [--burst-seconds 60] [--recovery-seconds 30] [--cards 120] [--json]

In one run of the whole embedded stack (as bench/authorizations.py starts it):
the authorizations' knee (given with --knee, else found as --sweep finds it,
from --sweep-start by --sweep-step), then purchases open-loop at twice the
knee for --burst-seconds, and at once after it at the knee for
--recovery-seconds. Prints:

  burst      issuer-seen p50/p99, answers past the issuer's 2 s deadline,
             failed requests, the gateway's stand-ins (`shed`: at its bound of
             decisions in flight; `timeout`: past its budget)
  recovery   p99 of the purchases started each second after the burst, and
             how many seconds after it ended every later purchase's p99 is
             back within 100 ms
  settled    once the stack is idle again: the ledger's own verification, and
             every card's held total against the issuer's pending total for
             it (a stand-in is reconciled by the issuer's webhook of it)

--json prints one object with at least `past_deadline_total`,
`failed_total` and `stand_in_total`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial

import asyncpg

from activities.database import create_pool
from bench.authorization_sweep import (
    P99_MAX_MS,
    Step,
    authorization_step,
    drain,
    knee,
    rate_ladder,
    stack_parts,
    sweep,
)
from bench.authorizations import (
    Acquirer,
    Latency,
    authorization_call,
    open_loop,
    percentile,
    stack_with_cards,
    summarize_authorizations,
)
from bench.chaos.invariants import hold_violations, ledger_violations
from bench.process_cpu import deltas, ms_per_call, sample
from schemas.issuer import Authorization, AuthorizationStatus

RECOVERY_TARGET_SECONDS = 10
# How long the issuer's webhooks of the burst may take to reach every card.
RECONCILED_SECONDS_MAX = 120.0
RECONCILED_POLL_SECONDS = 2.0
SHED_REASON_END = "decisions already"
# A hold outliving its expiry by this much would be a leak (none expire here).
HOLD_MARGIN_SECONDS = 86_400.0


@dataclass
class Burst:
    latency: Latency
    shed: int


def burst_figures(results: list[object]) -> Burst:
    shed = sum(
        1
        for result in results
        if isinstance(result, Authorization)
        and result.decisions[-1].reason.endswith(SHED_REASON_END)
    )
    return Burst(summarize_authorizations(results), shed)


def latency_ms(result: object) -> float | None:
    if not isinstance(result, Authorization):
        return None
    return result.decisions[-1].latency_ms


def recovered_after(latencies: Sequence[float | None], rate: float, seconds: float) -> float | None:
    """The first whole second after which every purchase started from then on
    (purchase i at i / rate) has its p99 within P99_MAX_MS (a failed one, None,
    counts as too late); None if the recovery never got there."""
    started = [(i / rate, ms) for i, ms in enumerate(latencies)]
    for second in range(int(seconds)):
        later = [ms for at, ms in started if at >= second]
        if not later:
            return None
        if (
            all(ms is not None for ms in later)
            and percentile([ms for ms in later if ms is not None], 0.99) <= P99_MAX_MS
        ):
            return float(second)
    return None


def p99_by_second(latencies: Sequence[float | None], rate: float) -> list[float | None]:
    """The p99 of the purchases started in each second (a failed one as infinite)."""
    by_second: dict[int, list[float]] = {}
    for i, ms in enumerate(latencies):
        by_second.setdefault(int(i / rate), []).append(ms if ms is not None else float("inf"))
    return [
        round(percentile(by_second[s], 0.99), 1) if s in by_second else None
        for s in range(max(by_second, default=-1) + 1)
    ]


def failed_by_error(answers: Sequence[object]) -> dict[str, int]:
    """The failed requests by what failed them (the first 80 characters)."""
    kinds: dict[str, int] = {}
    for answer in answers:
        if isinstance(answer, BaseException):
            kind = f"{type(answer).__name__}: {answer}"[:80]
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def issuer_pending(answers: Sequence[object]) -> dict[str, int]:
    """What the issuer holds pending by card, from its answers: nothing here
    clears, reverses or expires a purchase, so each stays as answered."""
    pending: dict[str, int] = {}
    for answer in answers:
        if isinstance(answer, Authorization) and answer.status is AuthorizationStatus.PENDING:
            pending[answer.card_id] = pending.get(answer.card_id, 0) + answer.pending_amount_minor
    return pending


async def held_otherwise(
    pool: asyncpg.Pool, cards: Sequence[str], pending: dict[str, int]
) -> list[str]:
    """Cards whose wallet holds another total than the issuer's pending one."""
    rows = await pool.fetch(
        "SELECT c.card_id, coalesce(sum(b.debits_pending), 0) AS held FROM cards c"
        " JOIN ledger_accounts a ON a.owner_id = c.customer_id AND a.kind = 'wallet'"
        " JOIN ledger_balances b ON b.account_id = a.id"
        " WHERE c.card_id = ANY($1::text[]) GROUP BY c.card_id",
        list(cards),
    )
    held = {row["card_id"]: int(row["held"]) for row in rows}
    return [
        f"{card_id}: held {held.get(card_id, 0)}, issuer pending {pending.get(card_id, 0)}"
        for card_id in cards
        if held.get(card_id, 0) != pending.get(card_id, 0)
    ]


async def run(args: argparse.Namespace) -> dict[str, object]:
    async with stack_with_cards(args.cards) as bench:
        settings, cards = bench.stack.settings, bench.cards
        parts = stack_parts(bench.stack)
        async with Acquirer(settings) as issuer_client:
            call = authorization_call(issuer_client, cards, random.Random(11))
            answers: list[object] = []

            async def one(i: int) -> Authorization:
                try:
                    answer = await call(i)
                except Exception as error:
                    answers.append(error)
                    raise
                answers.append(answer)
                return answer

            # Every card's workflow into the worker's cache first.
            await open_loop(args.sweep_start, len(cards) / args.sweep_start, one)
            await drain(parts)
            steps: list[Step] = []
            found = args.knee
            if found is None:
                ladder = rate_ladder(args.sweep_start, args.sweep_step, args.sweep_max, None)
                steps = await sweep(ladder, partial(authorization_step, one, parts, args.seconds))
                found = knee(steps)
                if found is None:
                    raise SystemExit(f"no rate from {args.sweep_start}/s passed: no knee")
            burst_rate = 2 * found
            before_burst = sample(parts)
            burst_task = asyncio.ensure_future(open_loop(burst_rate, args.burst_seconds, one))
            await asyncio.sleep(args.burst_seconds)
            after_burst = sample(parts)
            recovery_results = await open_loop(found, args.recovery_seconds, one)
            after_recovery = sample(parts)
            burst_results = await burst_task
            burst = burst_figures(burst_results)
            recovery = burst_figures(recovery_results)
            recovery_latencies = [latency_ms(result) for result in recovery_results]
            drained_seconds, _ = await drain(parts)
            pool = await create_pool(settings.effective_database_url, size_max=2)
            try:
                started = time.monotonic()
                while True:
                    mismatched = await held_otherwise(pool, cards, issuer_pending(answers))
                    waited = time.monotonic() - started
                    if not mismatched or waited > RECONCILED_SECONDS_MAX:
                        break
                    await asyncio.sleep(RECONCILED_POLL_SECONDS)
                reconciled_seconds = waited
                violations = [
                    *await ledger_violations(pool),
                    *await hold_violations(pool, margin_seconds=HOLD_MARGIN_SECONDS),
                ]
            finally:
                await pool.close()
    return {
        "cards": len(cards),
        "knee_per_second": found,
        "knee_steps": [
            {"rate_per_second": s.rate_per_second, "passed": s.passed, **asdict(s.latency)}
            for s in steps
        ],
        "burst_rate_per_second": burst_rate,
        "burst_seconds": args.burst_seconds,
        "burst": {**asdict(burst.latency), "shed": burst.shed},
        "recovery_rate_per_second": found,
        "recovery": {**asdict(recovery.latency), "shed": recovery.shed},
        "recovery_p99_ms_by_second": p99_by_second(recovery_latencies, found),
        "recovered_after_seconds": recovered_after(
            recovery_latencies, found, args.recovery_seconds
        ),
        "past_deadline_total": burst.latency.past_deadline + recovery.latency.past_deadline,
        "failed_total": burst.latency.failed + recovery.latency.failed,
        "stand_in_total": burst.latency.gateway_stand_in + recovery.latency.gateway_stand_in,
        "shed_total": burst.shed + recovery.shed,
        # Where the machine's CPU went, per purchase asked in each phase (the
        # work the burst left behind shows in the recovery's figures).
        "cpu_ms_per_purchase": {
            "burst": ms_per_call(deltas(before_burst, after_burst), len(burst_results)),
            "recovery": ms_per_call(deltas(after_burst, after_recovery), len(recovery_results)),
        },
        "drain_seconds": drained_seconds,
        "reconciled_after_seconds": round(reconciled_seconds, 1),
        "cards_held_otherwise_than_the_issuer": mismatched,
        "ledger_violations": [asdict(v) for v in violations],
        "failed_by_error": failed_by_error(answers),
    }


def print_report(report: dict[str, object]) -> None:
    for phase in ("burst", "recovery"):
        f: dict[str, object] = report[phase]  # type: ignore[assignment]
        rate = report[f"{phase}_rate_per_second"]
        print(
            f"{phase:<9} {rate}/s n={f['count']} p50 {f['p50_ms']} ms p99 {f['p99_ms']} ms"
            f"  past deadline {f['past_deadline']}  failed {f['failed']}"
            f"  gateway stand-ins {f['gateway_stand_in']} (shed {f['shed']})"
        )
    print(f"recovery p99 by second (ms): {report['recovery_p99_ms_by_second']}")
    print(
        f"knee {report['knee_per_second']}/s; past deadline {report['past_deadline_total']},"
        f" failed {report['failed_total']}, stand-ins {report['stand_in_total']}"
        f" (shed {report['shed_total']}); p99 back within {P99_MAX_MS:g} ms"
        f" {report['recovered_after_seconds']} s after the burst"
        f" (target {RECOVERY_TARGET_SECONDS} s)"
    )
    print(
        f"settled: {len(report['cards_held_otherwise_than_the_issuer'])} cards"  # type: ignore[arg-type]
        f" held otherwise than the issuer after {report['reconciled_after_seconds']} s;"
        f" ledger violations {len(report['ledger_violations'])}"  # type: ignore[arg-type]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overload", action="store_true", help="a burst at twice the knee")
    parser.add_argument("--knee", type=float, default=None, help="skip finding it")
    parser.add_argument("--burst-seconds", type=float, default=60.0)
    parser.add_argument("--recovery-seconds", type=float, default=30.0)


def main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.knee is not None and args.knee <= 0:
        parser.error("--knee must be positive")
    if args.burst_seconds <= 0 or args.recovery_seconds < RECOVERY_TARGET_SECONDS:
        parser.error(
            "--burst-seconds must be positive,"
            f" --recovery-seconds at least {RECOVERY_TARGET_SECONDS}"
        )
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
