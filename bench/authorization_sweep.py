"""The knee of authorizations against the knee of the floor, and where the CPU goes.

Run: .venv/bin/python -m bench.authorizations --sweep [--sweep-start 20]
     [--sweep-step 20 | --sweep-factor 1.5] [--sweep-max 400] [--seconds 20]
     [--cards 120] [--json]

In one run of the whole embedded stack (as bench/authorizations.py starts it),
the rate steps up from --sweep-start by --sweep-step (or times --sweep-factor)
to --sweep-max, one open-loop round of --seconds per rate for the floor (a
bare update on a no-op workflow) and then one for real authorizations (the
issuer simulator asks the gateway in real time), side by side at each rate so
that this machine's changing load touches both. A kind stops stepping at its
first failing rate, the other goes on; its knee is the highest rate before it, where p99 <= 100 ms
with none failed and none past the issuer's 2 s deadline. Between rounds the
stack drains: the next round starts once its processes are idle again.

CPU is read with psutil (user + system) from each process of the stack before
a round and after its drain (so the work an authorization leaves behind, its
webhooks and postings, is counted), and divided by the round's calls. A part
that forks counts its children: PostgreSQL is the postmaster and all its
backends. The issuer simulator is reported apart from the platform's total (in
production it is not on this machine), and so is this bench process. What
the idle stack spends a second is read once before the first round and
reported: it is part of every round's figures, and weighs most on low rates.

Prints both knees, their ratio (authorizations knee / floor knee) and the CPU
milliseconds per authorization by process at the authorizations knee; --json
prints one object with every step's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

from bench.authorizations import (
    DEADLINE_MS,
    FLOOR_NAME,
    Acquirer,
    Latency,
    authorization_call,
    floor_samples,
    noop_workflows,
    open_loop,
    stack_with_cards,
    summarize,
    summarize_authorizations,
)
from bench.process_cpu import Part, deltas, ms_per_call, sample, total
from schemas.task_queues import QUEUE_KINDS
from starters.devstack import postgres
from starters.devstack.stack import (
    CODEC,
    GATEWAY,
    POSTGRES,
    SIMULATORS,
    TEMPORAL,
    Stack,
    worker_part,
)

P99_MAX_MS = 100.0
"""A rate passes while the p99 stays within this (and nothing fails or is late)."""
BENCH = "bench"
PLATFORM_TOTAL = "platform total"
PLATFORM_PARTS: tuple[str, ...] = (
    GATEWAY,
    *(worker_part(kind) for kind in QUEUE_KINDS),
    TEMPORAL,
    POSTGRES,
    CODEC,
)
"""What runs on the platform's machines; the simulator and the bench do not."""
DRAIN_IDLE_CORES_MAX = 0.1
"""The stack counts as drained once its processes together use less than this
many cores: above an idle stack's pollers and timers (0.05 core or so), below
the webhooks and postings a round leaves behind (0.5 core at 20/s)."""
DRAIN_WINDOW_SECONDS = 1.0
DRAIN_IDLE_WINDOWS = 2
"""Windows in a row under the idle mark: one quiet window can fall between bursts."""
DRAIN_SECONDS_MAX = 60.0
RATE_DECIMALS = 3
IDLE_SECONDS = 5.0
"""How long the idle stack's own CPU is read for, before the first round."""


@dataclass
class Step:
    """One round at one rate: its figures, whether it passed, CPU per call."""

    rate_per_second: float
    calls: int
    latency: Latency
    passed: bool
    cpu_ms_per_call: dict[str, float] = field(default_factory=dict)
    drain_seconds: float = 0.0
    drained: bool = True


def passes(latency: Latency) -> bool:
    """Within the target: p99 <= 100 ms, none failed, none past the deadline."""
    return (
        latency.count > 0
        and latency.failed == 0
        and latency.past_deadline == 0
        and latency.p99_ms <= P99_MAX_MS
    )


def rate_ladder(
    start: float, step: float, maximum: float, factor: float | None = None
) -> list[float]:
    """The rates to try, from start up to maximum: +step each, or times factor."""
    assert start > 0 and (step > 0 if factor is None else factor > 1), "the ladder must climb"
    rates: list[float] = []
    rate = start
    while rate <= maximum * (1 + 1e-9):
        rates.append(round(rate, RATE_DECIMALS))
        rate = rate * factor if factor is not None else rate + step
    return rates


def knee(steps: Sequence[Step]) -> float | None:
    """The highest rate that passed before the first one that did not; None if
    the lowest rate already failed."""
    best: float | None = None
    for step in sorted(steps, key=lambda s: s.rate_per_second):
        if not step.passed:
            break
        best = step.rate_per_second
    return best


def step_at(steps: Sequence[Step], rate: float | None) -> Step | None:
    return next((s for s in steps if s.rate_per_second == rate), None)


async def sweep(rates: Sequence[float], measure: Callable[[float], Awaitable[Step]]) -> list[Step]:
    """Measure each rate in turn, up to and including the first that fails."""
    [steps] = await sweep_side_by_side(rates, [measure])
    return steps


async def sweep_side_by_side(
    rates: Sequence[float], measures: Sequence[Callable[[float], Awaitable[Step]]]
) -> list[list[Step]]:
    """Sweep several kinds side by side: at each rate every kind still
    stepping is measured in turn, so a change in the machine's load between
    rounds touches them all. A kind stops at its first failing rate, the
    others go on."""
    steps: list[list[Step]] = [[] for _ in measures]
    for rate in rates:
        stepping = [i for i, kind in enumerate(steps) if not kind or kind[-1].passed]
        if not stepping:
            break
        for i in stepping:
            steps[i].append(await measures[i](rate))
    return steps


async def authorization_step(
    one: Callable[[int], Awaitable[object]], parts: Sequence[Part], seconds: float, rate: float
) -> Step:
    """A round of purchases `one(i)` open-loop at the rate, measured."""

    async def round_() -> tuple[Latency, int]:
        results = await open_loop(rate, seconds, one)
        return summarize_authorizations(results), len(results)

    return await measured_step(rate, parts, round_)


def with_platform_total(spent: dict[str, float]) -> dict[str, float]:
    return {**spent, PLATFORM_TOTAL: total(spent, PLATFORM_PARTS)}


def stack_parts(stack: Stack) -> list[Part]:
    """Every process of the stack by part, and this bench process (alone)."""
    parts: list[Part] = []
    for name in (*PLATFORM_PARTS, SIMULATORS):
        if name == POSTGRES:
            pid = postgres.running_pid(stack.pg_data)
        else:
            record = stack.run.alive(name)
            pid = record.pid if record is not None else None
        if pid is None:
            raise RuntimeError(f"the stack's {name} is not running")
        parts.append(Part(name, pid))
    # The stack's parts are this process's children: its own CPU only.
    parts.append(Part(BENCH, os.getpid(), family=False))
    return parts


async def drain(parts: Sequence[Part]) -> tuple[float, bool]:
    """Wait until the stack's processes are idle: the seconds waited, and
    whether they became idle (rather than the wait reaching its limit)."""
    stack_only = [part for part in parts if part.name != BENCH]
    started = time.monotonic()
    idle_windows = 0
    before = sample(stack_only)
    while idle_windows < DRAIN_IDLE_WINDOWS:
        if time.monotonic() - started >= DRAIN_SECONDS_MAX:
            return round(time.monotonic() - started, 1), False
        await asyncio.sleep(DRAIN_WINDOW_SECONDS)
        after = sample(stack_only)
        cores = sum(deltas(before, after).values()) / DRAIN_WINDOW_SECONDS
        idle_windows = idle_windows + 1 if cores < DRAIN_IDLE_CORES_MAX else 0
        before = after
    return round(time.monotonic() - started, 1), True


async def idle_cpu_ms_per_second(parts: Sequence[Part]) -> dict[str, float]:
    """What the idle stack spends by part, per second: the pollers and timers
    that a round's CPU figures include too (and that weigh on low rates)."""
    before = sample(parts)
    await asyncio.sleep(IDLE_SECONDS)
    spent = with_platform_total(deltas(before, sample(parts)))
    return {name: round(seconds * 1000 / IDLE_SECONDS, 1) for name, seconds in spent.items()}


async def measured_step(
    rate: float, parts: Sequence[Part], round_: Callable[[], Awaitable[tuple[Latency, int]]]
) -> Step:
    """One round, its CPU by part from before it to the end of its drain."""
    before = sample(parts)
    latency, calls = await round_()
    drain_seconds, drained = await drain(parts)
    spent = deltas(before, sample(parts))
    return Step(
        rate_per_second=rate,
        calls=calls,
        latency=latency,
        passed=passes(latency),
        cpu_ms_per_call=ms_per_call(with_platform_total(spent), max(calls, 1)),
        drain_seconds=drain_seconds,
        drained=drained,
    )


async def run(args: argparse.Namespace) -> dict[str, object]:
    rates = rate_ladder(args.sweep_start, args.sweep_step, args.sweep_max, args.sweep_factor)
    async with stack_with_cards(args.cards) as bench:
        settings, client, cards = bench.stack.settings, bench.client, bench.cards
        setup_seconds = bench.setup_seconds
        parts = stack_parts(bench.stack)
        await drain(parts)
        idle = await idle_cpu_ms_per_second(parts)

        # One acquirer's clients for the run, their connections kept open.
        async with (
            noop_workflows(client, len(cards)) as handles,
            Acquirer(settings) as issuer_client,
        ):

            async def floor_step(rate: float) -> Step:
                async def round_() -> tuple[Latency, int]:
                    samples, failed = await floor_samples(handles, rate, args.seconds)
                    past = sum(1 for sample_ms in samples if sample_ms > DEADLINE_MS)
                    return summarize(FLOOR_NAME, samples, past, failed), len(samples) + failed

                return await measured_step(rate, parts, round_)

            one = authorization_call(issuer_client, cards, random.Random(7))
            # Every card's workflow into the worker's cache first, at the first rate.
            await open_loop(rates[0], len(cards) / rates[0], one)
            await drain(parts)

            floor_steps, authorization_steps = await sweep_side_by_side(
                rates, [floor_step, partial(authorization_step, one, parts, args.seconds)]
            )
    report = figures(args, rates, len(cards), setup_seconds, floor_steps, authorization_steps)
    return {**report, "idle_cpu_ms_per_second": idle}


def figures(
    args: argparse.Namespace,
    rates: list[float],
    cards: int,
    setup_seconds: float,
    floor_steps: list[Step],
    authorization_steps: list[Step],
) -> dict[str, object]:
    floor_knee = knee(floor_steps)
    authorizations_knee = knee(authorization_steps)
    cpu_step = step_at(authorization_steps, authorizations_knee) or next(
        iter(authorization_steps), None
    )
    return {
        "rates_per_second": rates,
        "seconds": args.seconds,
        "cards": cards,
        "setup_seconds": round(setup_seconds, 1),
        "p99_max_ms": P99_MAX_MS,
        "deadline_ms": DEADLINE_MS,
        "floor_knee_per_second": floor_knee,
        # No rate failed: the knee lies at or above the ladder's top.
        "floor_knee_is_lower_bound": all(s.passed for s in floor_steps),
        "authorizations_knee_per_second": authorizations_knee,
        "authorizations_knee_is_lower_bound": all(s.passed for s in authorization_steps),
        "knee_ratio": (
            round(authorizations_knee / floor_knee, 2)
            if authorizations_knee is not None and floor_knee
            else None
        ),
        # At the knee; with no knee, at the lowest rate, which already failed.
        "cpu_ms_per_authorization": cpu_step.cpu_ms_per_call if cpu_step is not None else None,
        "cpu_rate_per_second": cpu_step.rate_per_second if cpu_step is not None else None,
        "floor_steps": [step_figures(s, "cpu_ms_per_update") for s in floor_steps],
        "authorization_steps": [
            step_figures(s, "cpu_ms_per_authorization") for s in authorization_steps
        ],
    }


def step_figures(step: Step, cpu_key: str) -> dict[str, object]:
    return {
        "rate_per_second": step.rate_per_second,
        "calls": step.calls,
        "passed": step.passed,
        **asdict(step.latency),
        cpu_key: step.cpu_ms_per_call,
        "drain_seconds": step.drain_seconds,
        "drained": step.drained,
    }


def print_report(report: dict[str, object]) -> None:
    for kind in ("floor_steps", "authorization_steps"):
        steps: list[dict[str, object]] = report[kind]  # type: ignore[assignment]
        for s in steps:
            print(
                f"{kind.split('_')[0]:<13} {s['rate_per_second']:>7}/s n={s['count']:<6} "
                f"p50 {s['p50_ms']:>7} ms  p95 {s['p95_ms']:>7} ms  p99 {s['p99_ms']:>7} ms  "
                f"past deadline {s['past_deadline']}  failed {s['failed']}  "
                f"{'pass' if s['passed'] else 'FAIL'}  drained in {s['drain_seconds']} s"
                f"{'' if s['drained'] else ' (still busy)'}"
            )

    def knee_text(name: str) -> str:
        rate = report[f"{name}_knee_per_second"]
        if rate is None:
            return "none (the first rate failed)"
        bound = " or more (no rate failed)" if report[f"{name}_knee_is_lower_bound"] else ""
        return f"{rate}/s{bound}"

    print(
        f"knees: floor {knee_text('floor')}, authorizations {knee_text('authorizations')}, "
        f"ratio {report['knee_ratio']}; p99 <= {report['p99_max_ms']} ms, none failed or "
        f"past {report['deadline_ms']} ms, {report['seconds']} s a rate, "
        f"{report['cards']} cards"
    )
    cpu: dict[str, float] | None = report["cpu_ms_per_authorization"]  # type: ignore[assignment]
    if cpu is None:
        return
    at_knee = report["cpu_rate_per_second"] == report["authorizations_knee_per_second"]
    print(
        f"CPU ms per authorization at {report['cpu_rate_per_second']}/s"
        f"{' (the knee)' if at_knee else ' (no knee: the lowest rate)'}:"
    )
    for name in (*PLATFORM_PARTS, PLATFORM_TOTAL):
        print(f"  {name:<18} {cpu.get(name, 0.0):>8.3f}")
    print(f"  {SIMULATORS + ' (issuer)':<18} {cpu.get(SIMULATORS, 0.0):>8.3f}  not the platform's")
    print(f"  {BENCH + ' (this)':<18} {cpu.get(BENCH, 0.0):>8.3f}  not the platform's")
    idle: dict[str, float] = report["idle_cpu_ms_per_second"]  # type: ignore[assignment]
    print(
        f"(included above: the idle stack's own {idle.get(PLATFORM_TOTAL, 0.0)} ms of CPU "
        "a second, over each round and its drain)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", action="store_true", help="step the rate up to each knee")
    parser.add_argument("--sweep-start", type=float, default=20.0, help="first rate per second")
    parser.add_argument("--sweep-step", type=float, default=20.0, help="added at each step")
    parser.add_argument(
        "--sweep-factor", type=float, default=None, help="multiply instead (e.g. 1.5)"
    )
    parser.add_argument("--sweep-max", type=float, default=400.0, help="last rate per second")


def main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.sweep_start <= 0 or args.sweep_step <= 0 or args.sweep_max < args.sweep_start:
        parser.error("--sweep-start and --sweep-step must be positive, --sweep-max >= the start")
    if args.sweep_factor is not None and args.sweep_factor <= 1:
        parser.error("--sweep-factor must be above 1")
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
