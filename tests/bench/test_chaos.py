"""The chaos run as CI runs it: a fixed seed, a few hundred operations, kills.

The run starts its own stack in a subprocess (its own CARDFLOW_HOME and
ports, so nothing of it leaks into this session's environment) and must end
with no violation. The plan's own promise, the same seed gives the same run,
is checked directly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.plan import Operation, plan_run
from bench.chaos.run import Dispatcher

CI_SEED = 17
CI_OPERATIONS = 200
CI_CONCURRENCY = 8
CI_KILL_EVERY_SECONDS = 12
CI_FAULT_RATE = 0.05
CI_RUN_SECONDS_MAX = 540
STACK_DOWN_SECONDS_MAX = 120


def test_a_seed_gives_the_same_operations_and_faults_every_time() -> None:
    first = plan_run(5, operations=500, customers=10, fault_rate=0.05, kills=40)
    again = plan_run(5, operations=500, customers=10, fault_rate=0.05, kills=40)
    other = plan_run(6, operations=500, customers=10, fault_rate=0.05, kills=40)
    assert first == again
    assert first.operations != other.operations
    assert first.provider_faults != other.provider_faults
    assert first.kill_order != other.kill_order


async def test_a_busy_customer_holds_one_lane_while_the_others_work() -> None:
    """Operations 0-3 are customer 0's; 4 and 5 are customers 1 and 2's. While
    customer 0's first operation is in flight, the free lanes get 4 and 5,
    not customer 0's next; customer 0's next comes once its first is done, in
    the plan's order; and once all are handed out, a waiting lane is told so."""
    customers = [0, 0, 0, 0, 1, 2]
    operations = [
        Operation(number=n, kind="authorize", customer=c, choice=0, amount_minor=1)
        for n, c in enumerate(customers)
    ]
    dispatcher = Dispatcher(operations)
    assert await dispatcher.next() == 0
    assert await dispatcher.next() == 4
    assert await dispatcher.next() == 5
    waiting = asyncio.ensure_future(dispatcher.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    dispatcher.done(1)
    dispatcher.done(2)
    await asyncio.sleep(0)
    assert not waiting.done()
    dispatcher.done(0)
    assert await asyncio.wait_for(waiting, 1) == 1
    for following in (2, 3):
        last = asyncio.ensure_future(dispatcher.next())
        dispatcher.done(0)
        assert await asyncio.wait_for(last, 1) == following
    finished = asyncio.ensure_future(dispatcher.next())
    dispatcher.done(0)
    assert await asyncio.wait_for(finished, 1) is None


@pytest.mark.timeout(CI_RUN_SECONDS_MAX + STACK_DOWN_SECONDS_MAX + 30)
def test_the_short_chaos_run_ends_with_every_invariant_kept(tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.chaos",
            "--seed",
            str(CI_SEED),
            "--ops",
            str(CI_OPERATIONS),
            "--concurrency",
            str(CI_CONCURRENCY),
            "--kill-every",
            str(CI_KILL_EVERY_SECONDS),
            "--fault-rate",
            str(CI_FAULT_RATE),
            "--report",
            str(report_path),
            "--quiet",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=CI_RUN_SECONDS_MAX)
    except subprocess.TimeoutExpired:
        # Interrupted, the run takes its stack down before it exits.
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=STACK_DOWN_SECONDS_MAX)
        pytest.fail(f"the chaos run did not end in {CI_RUN_SECONDS_MAX} s: {stdout[-3000:]}")
    finished = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert report_path.exists(), finished.stdout[-3000:] + finished.stderr[-5000:]
    report = json.loads(report_path.read_text())
    assert report["violations"] == [], finished.stdout[-5000:]
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    # The run did what it says: every operation, faults, kills of each kind.
    assert report["operations_done"] == CI_OPERATIONS
    assert report["errors"] == 0, report["error_samples"]
    # Every card had applied its events before the day was reconciled.
    assert report["quiesced"] == "settled", report["quiesced"]
    assert report["provider_faults"] > 0
    assert report["kills"]["gateway"] == 1
    assert report["kills"]["simulators"] == 1
    assert sum(n for part, n in report["kills"].items() if part.startswith("worker-")) >= 3
    assert report["authorizations"] > 0 and report["transactions"] > 0
    # The day's reconciliation is told with what it found.
    assert set(report["reconciliation"]) == {"states", "kinds", "examples"}
