"""The authorization sweep's own logic: where the knee lies, how the ladder
climbs, when stepping stops, and how CPU time is put down to each process.

The CPU tests read real processes started here (busy loops, held still with
SIGSTOP while they are read, so every reading is exact); nothing here asserts
on time or speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from bench.authorization_overload import p99_by_second, recovered_after
from bench.authorization_sweep import (
    PLATFORM_PARTS,
    PLATFORM_TOTAL,
    Step,
    knee,
    passes,
    rate_ladder,
    sweep,
    sweep_side_by_side,
    with_platform_total,
)
from bench.authorizations import floor_samples, noop_workflows, summarize
from bench.process_cpu import Part, cpu_seconds, deltas, ms_per_call, sample
from starters.devstack.stack import GATEWAY, SIMULATORS
from tests import polling

BUSY_LOOP = "while True: pass"
# A parent that starts a busy child, tells its pid, reaps it once it dies,
# says so, then waits for a line.
PARENT_OF_BUSY_CHILD = (
    "import subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {BUSY_LOOP!r}])\n"
    "print(child.pid, flush=True)\n"
    "child.wait()\n"
    "print('reaped', flush=True)\n"
    "sys.stdin.readline()\n"
)
CPU_SPENT_SECONDS_MIN = 0.1
CPU_WAIT_SECONDS_MAX = 120
CLOCK_TICK_SECONDS = 0.01
"""The kernel's CPU accounting moves in ticks: a figure read two ways may
differ by one."""
SMOKE_RUN_SECONDS_MAX = 120


def step(rate: float, samples_ms: list[float], *, failed: int = 0, past: int = 0) -> Step:
    latency = summarize("authorizations", samples_ms, past=past, failed=failed)
    return Step(rate, len(samples_ms) + failed, latency, passes(latency))


FAST = [5.0] * 99 + [40.0]
SLOW = [5.0] * 90 + [150.0] * 10


@pytest.mark.fast
def test_the_knee_is_the_highest_rate_passing_before_the_first_failing_one() -> None:
    steps = [step(60, SLOW), step(20, FAST), step(80, FAST), step(40, FAST)]
    # 80/s passed too, but after 60/s had failed: a lucky round, not the knee.
    assert knee(steps) == 40


@pytest.mark.fast
def test_there_is_no_knee_when_the_lowest_rate_already_fails() -> None:
    assert knee([step(20, SLOW), step(40, FAST)]) is None
    assert knee([]) is None


@pytest.mark.fast
def test_a_rate_fails_on_one_failed_call_or_one_late_answer_despite_a_low_p99() -> None:
    assert step(20, FAST).passed
    assert not step(20, FAST, failed=1).passed
    assert not step(20, FAST, past=1).passed
    assert not step(20, SLOW).passed
    # A round whose every call failed has no p99 to pass on.
    assert not step(20, [], failed=3).passed


@pytest.mark.fast
def test_the_ladder_climbs_by_steps_or_by_a_factor_up_to_its_top() -> None:
    assert rate_ladder(20, 20, 100) == [20, 40, 60, 80, 100]
    assert rate_ladder(20, 20, 90) == [20, 40, 60, 80]
    assert rate_ladder(0.1, 0.1, 0.3) == [0.1, 0.2, 0.3]
    assert rate_ladder(10, 0, 50, factor=1.5) == [10, 15, 22.5, 33.75]


@pytest.mark.fast
async def test_stepping_stops_at_the_first_failing_rate() -> None:
    measured: list[float] = []

    async def measure(rate: float) -> Step:
        measured.append(rate)
        return step(rate, SLOW if rate >= 60 else FAST)

    steps = await sweep([20, 40, 60, 80, 100], measure)
    assert measured == [20, 40, 60]
    assert [s.passed for s in steps] == [True, True, False]
    assert knee(steps) == 40


@pytest.mark.fast
async def test_the_kinds_take_turns_at_each_rate_and_one_that_fails_stops_alone() -> None:
    measured: list[tuple[str, float]] = []

    def kind(name: str, fails_at: float) -> Callable[[float], Awaitable[Step]]:
        async def measure(rate: float) -> Step:
            measured.append((name, rate))
            return step(rate, SLOW if rate >= fails_at else FAST)

        return measure

    floor, authorizations = await sweep_side_by_side(
        [20, 40, 60, 80, 100], [kind("floor", 80), kind("authorizations", 40)]
    )
    # Side by side at each rate, so a change in the machine's load between
    # rounds touches both kinds; the one that failed is not measured again.
    assert measured == [
        ("floor", 20),
        ("authorizations", 20),
        ("floor", 40),
        ("authorizations", 40),
        ("floor", 60),
        ("floor", 80),
    ]
    assert knee(floor) == 60 and knee(authorizations) == 20


def own_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run_until_spent(pids: list[int], seconds: float) -> None:
    """Let the stopped processes run until each has spent `seconds` more CPU.

    "Spent" is the later reading minus the earlier, as `deltas` computes it:
    `now >= start + seconds` rounds differently (0.37 >= 0.27 + 0.1 holds,
    0.37 - 0.27 >= 0.1 does not).
    """
    starts = {pid: own_seconds(pid) for pid in pids}
    for pid in pids:
        psutil.Process(pid).resume()
    polling.until_sync(
        lambda: {pid: own_seconds(pid) for pid in pids},
        lambda now: all(now[pid] - start >= seconds for pid, start in starts.items()),
        f"the busy loops spent {seconds} s of CPU each",
        CPU_WAIT_SECONDS_MAX,
    )
    for pid in pids:
        psutil.Process(pid).suspend()


@pytest.fixture
def busy_loops() -> Iterator[list[int]]:
    """Two stopped busy loops."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2)]
    try:
        for loop in loops:
            psutil.Process(loop.pid).suspend()
        yield [loop.pid for loop in loops]
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def test_cpu_per_call_is_each_processs_own_cpu_spent_over_the_calls(
    busy_loops: list[int],
) -> None:
    gateway_pid, simulator_pid = busy_loops
    parts = [Part(GATEWAY, gateway_pid), Part(SIMULATORS, simulator_pid)]
    run_until_spent(busy_loops, CPU_SPENT_SECONDS_MIN)
    before = sample(parts)
    own_before = {pid: own_seconds(pid) for pid in busy_loops}
    run_until_spent(busy_loops, CPU_SPENT_SECONDS_MIN)
    after = sample(parts)
    spent = deltas(before, after)

    gateway_spent = own_seconds(gateway_pid) - own_before[gateway_pid]
    simulator_spent = own_seconds(simulator_pid) - own_before[simulator_pid]
    assert spent == pytest.approx({GATEWAY: gateway_spent, SIMULATORS: simulator_spent})
    assert min(spent.values()) >= CPU_SPENT_SECONDS_MIN
    calls = 10
    per_call = ms_per_call(with_platform_total(spent), calls)
    assert per_call[GATEWAY] == pytest.approx(gateway_spent * 1000 / calls, abs=1e-3)
    assert per_call[SIMULATORS] == pytest.approx(simulator_spent * 1000 / calls, abs=1e-3)
    # The simulator is not on the platform's machines: its total leaves it out.
    assert GATEWAY in PLATFORM_PARTS and SIMULATORS not in PLATFORM_PARTS
    assert per_call[PLATFORM_TOTAL] == per_call[GATEWAY]


def test_a_part_that_forks_counts_its_live_child_and_then_the_child_it_reaped() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_OF_BUSY_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None and parent.stdin is not None
    child_pid = int(parent.stdout.readline())
    child = psutil.Process(child_pid)
    try:
        child.suspend()
        run_until_spent([child_pid], CPU_SPENT_SECONDS_MIN)
        psutil.Process(parent.pid).suspend()
        family = cpu_seconds(Part("postgres", parent.pid))
        alone = cpu_seconds(Part("postgres", parent.pid, family=False))
        child_seconds = own_seconds(child_pid)
        assert family is not None and alone is not None
        assert alone == pytest.approx(own_seconds(parent.pid))
        assert family == pytest.approx(alone + child_seconds)

        # The child dies and its parent reaps it: its time moves to the
        # parent's children's time, and the family keeps counting it.
        child.kill()
        psutil.Process(parent.pid).resume()
        assert parent.stdout.readline().strip() == "reaped"
        times = psutil.Process(parent.pid).cpu_times()
        assert times.children_user + times.children_system == pytest.approx(
            child_seconds, abs=2 * CLOCK_TICK_SECONDS
        )
        reaped = cpu_seconds(Part("postgres", parent.pid))
        assert reaped is not None
        assert reaped >= family - 2 * CLOCK_TICK_SECONDS
        assert reaped >= child_seconds + own_seconds(parent.pid) - 2 * CLOCK_TICK_SECONDS
    finally:
        if child.is_running():
            child.kill()
        parent.kill()
        parent.communicate()
    assert cpu_seconds(Part("postgres", parent.pid)) is None


@pytest.mark.timeout(SMOKE_RUN_SECONDS_MAX + 60)
def test_a_short_sweep_reports_both_knees_and_cpu_by_process(tmp_path: Path) -> None:
    finished = subprocess.run(
        [
            *(sys.executable, "-m", "bench.authorizations", "--sweep", "--json"),
            *("--sweep-start", "4", "--sweep-step", "4", "--sweep-max", "8"),
            *("--seconds", "2", "--cards", "4"),
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=SMOKE_RUN_SECONDS_MAX,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads(finished.stdout)
    for kind, knee_key in (
        ("floor_steps", "floor_knee_per_second"),
        ("authorization_steps", "authorizations_knee_per_second"),
    ):
        steps = report[kind]
        assert [s["rate_per_second"] for s in steps] == [4, 8][: len(steps)]
        passed = [s["rate_per_second"] for s in steps if s["passed"]]
        assert report[knee_key] == (max(passed) if passed and steps[0]["passed"] else None)
        # Open-loop: every round makes rate x seconds calls, however they end.
        assert [s["calls"] for s in steps] == [8, 16][: len(steps)]
    cpu = report["cpu_ms_per_authorization"]
    assert set(cpu) == {*PLATFORM_PARTS, PLATFORM_TOTAL, SIMULATORS, "bench"}
    assert cpu[PLATFORM_TOTAL] == pytest.approx(sum(cpu[p] for p in PLATFORM_PARTS), abs=0.01)
    assert cpu[PLATFORM_TOTAL] > 0


async def test_the_floor_spreads_its_updates_over_as_many_workflows_as_cards(
    workflow_env: WorkflowEnvironment,
) -> None:
    """One workflow would meet the server's own limits (10 updates in flight,
    2,000 in all) long before the update path's: a sweep's floor failed at
    60/s that way while its p99 was 37 ms."""
    async with noop_workflows(workflow_env.client, 3) as handles:
        samples, failed = await floor_samples(handles, rate=30, seconds=1)
        counts = [await updates_completed(handle) for handle in handles]
    assert (len(samples), failed) == (30, 0)
    # Each took a third of the round, and its warm-up update.
    assert counts == [11, 11, 11]
    # And each ended while its worker ran: none is left with a task no worker
    # takes (its timeout, later, would stall the server during the next round).
    statuses = [(await handle.describe()).status for handle in handles]
    assert statuses == [WorkflowExecutionStatus.COMPLETED] * 3


async def updates_completed(handle: WorkflowHandle[Any, Any]) -> int:
    kind = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED
    return len([event async for event in handle.fetch_history_events() if event.event_type == kind])


@pytest.mark.fast
def test_recovery_is_the_first_second_from_which_every_later_purchase_is_in_time() -> None:
    rate = 10.0
    slow_then_fast = [900.0] * 25 + [30.0] * 75  # 2.5 s slow, then in time
    assert recovered_after(slow_then_fast, rate, 10) == 3.0
    # One failure late in the window keeps the recovery from being declared.
    failed_late: list[float | None] = [30.0] * 99 + [None]
    assert recovered_after(failed_late, rate, 10) is None
    assert recovered_after([30.0] * 100, rate, 10) == 0.0
    assert p99_by_second(slow_then_fast[:30], rate) == [900.0, 900.0, 900.0]
