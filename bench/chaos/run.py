"""One chaos run: the stack, the plan's traffic and faults, the kills, the checks.

    cardflow chaos [--seed N] [--ops N] [--minutes M] [--kill-every S]
                   [--fault-rate F] [--concurrency N] [--existing] [--report FILE]

Starts the embedded stack in a temporary directory (or uses the running one
with --existing), onboards and funds the run's customers, then does the
plan's operations, CONCURRENCY in flight (one at a time per customer), while
the plan's faults fire: provider faults through the simulators' admin API,
webhook windows (every event twice; events held and released newest first
or oldest first), a worker SIGKILLed and restarted every --kill-every
seconds, the gateway and the simulators killed once each. Then the faults
stop, the stack quiesces, the day is reconciled and the month billed, and
every invariant is checked. The exit status is 0 with no violation, 1 with
any; a failing run prints the command that replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
from temporalio.client import Client

from activities.api_keys import SCOPES, NewApiKey
from activities.database import create_pool
from activities.providers.issuer import IssuerClient
from bench.authorizations import bench_settings
from bench.chaos import invariants
from bench.chaos.invariants import Violation
from bench.chaos.money import money_violations
from bench.chaos.plan import (
    WEBHOOK_WINDOW_SECONDS_MAX,
    Operation,
    Plan,
    ProviderFault,
    Resend,
    WebhookWindow,
    plan_run,
)
from bench.chaos.workload import Evidence, OperationSkipped, Workload
from schemas.providers import ISSUER
from schemas.reconciliation import (
    ReconciliationItem,
    ReconciliationResult,
)
from schemas.task_queues import QUEUE_KINDS
from schemas.units import DAY_SECONDS
from starters.apikeys import create_key
from starters.devstack.processes import wait_for_port
from starters.devstack.stack import GATEWAY, SIMULATORS, Stack, worker_part
from workers.client import connect
from workers.settings import load_settings
from workers.telemetry import metrics_port_of
from workflows.cards import CARD_WORKFLOW
from workflows.reconciliation import Reconciliation

DEFAULT_SEED = 1
DEFAULT_OPERATIONS = 1_000
DEFAULT_CONCURRENCY = 16
DEFAULT_KILL_EVERY_SECONDS = 20.0
DEFAULT_FAULT_RATE = 0.05
# Customers per operation in flight: enough that concurrent operations rarely
# wait for one another's customer.
CUSTOMERS_PER_SLOT = 2
# The simulated issuer's clock runs a day behind: the run's card activity
# settles yesterday, a day that has ended and can be reconciled at the end.
ISSUER_CLOCK_BEHIND_SECONDS = DAY_SECONDS
# A short quote, so a confirmation after expiry costs a few seconds.
FX_QUOTE_TTL_SECONDS = 15
MINE_EVERY_SECONDS = 0.5
RESTART_PAUSE_SECONDS = 1.0
RESTART_ATTEMPTS_MAX = 30
WORKER_READY_SECONDS_MAX = 120.0
LIVE_LINE_EVERY_SECONDS = 1.0
LEDGER_PROBE_EVERY_SECONDS = 30.0
# No operation finished for this long: what every lane is doing, with the
# stack of every task, goes to the stall file, once per stall.
STALL_REPORT_SECONDS = 90.0
# After the faults stop: how long the stack has to drain, and how long a
# difference may take to converge before it is a violation.
QUIESCE_SECONDS_MAX = 300.0
# The cards' executions, for the quiescence's wait on their work in flight.
CARDS_RUNNING = f'WorkflowType="{CARD_WORKFLOW}" AND ExecutionStatus="Running"'
# Checks are repeated while something is still settling: at least twice,
# and until this long after the first check ended.
CONVERGE_SECONDS_MAX = 90.0
CONVERGE_ROUNDS_MIN = 2
CONVERGE_PAUSE_SECONDS = 10.0
STUCK_AFTER_SECONDS = 60.0
HOLD_EXPIRY_MARGIN_SECONDS = 120.0
# The day's reconciliation reads every issuer transaction of the run.
RECONCILIATION_WAIT_SECONDS_MIN = 180.0
RECONCILIATION_WAIT_SECONDS_PER_OPERATION = 0.06
# The money model's reads of the issuer: a listing of a busy card is slow.
MODEL_READ_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=10.0, pool=60.0)
ADMIN_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Options:
    seed: int = DEFAULT_SEED
    operations: int = DEFAULT_OPERATIONS
    minutes: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    kill_every_seconds: float = DEFAULT_KILL_EVERY_SECONDS
    fault_rate: float = DEFAULT_FAULT_RATE
    customers: int | None = None
    existing: bool = False
    report_path: Path | None = None
    live: bool = True
    # Leave a fresh stack running after a run with violations, to investigate.
    keep_on_violation: bool = False

    @property
    def customer_count(self) -> int:
        return self.customers or max(2, self.concurrency * CUSTOMERS_PER_SLOT)

    def replay_command(self) -> str:
        parts = [
            "cardflow chaos",
            f"--seed {self.seed}",
            f"--ops {self.operations}",
            f"--concurrency {self.concurrency}",
            f"--kill-every {self.kill_every_seconds:g}",
            f"--fault-rate {self.fault_rate:g}",
            f"--customers {self.customer_count}",
        ]
        if self.minutes is not None:
            parts.append(f"--minutes {self.minutes:g}")
        return " ".join(parts)


@dataclass
class Tally:
    started_at: float = field(default_factory=time.monotonic)
    done: int = 0
    skipped: int = 0
    errors: int = 0
    faults: int = 0
    webhook_windows: int = 0
    resends: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    violations_seen: int = 0
    restart_failures: int = 0
    check_rounds: int = 0
    last_done_at: float = field(default_factory=time.monotonic)
    stalls: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "setting up customers"
    error_samples: list[str] = field(default_factory=list)

    def killed(self, part: str) -> None:
        self.kills[part] = self.kills.get(part, 0) + 1


ERROR_SAMPLES_MAX = 20


@dataclass(frozen=True)
class InFlight:
    """What one lane is doing."""

    number: int
    kind: str
    customer: int
    since: float = field(default_factory=time.monotonic)

    def line(self, now: float) -> str:
        age = now - self.since
        return f"op {self.number} {self.kind} (customer {self.customer}) for {age:.0f} s"


class Dispatcher:
    """Hands the plan's operations to the lanes: each customer's in the
    plan's order and one at a time, otherwise the lowest number first. A lane
    never waits behind a busy customer while another customer has work (the
    busy customer alone would otherwise hold every lane)."""

    def __init__(self, operations: list[Operation]) -> None:
        self.queued: dict[int, deque[int]] = {}
        for operation in operations:
            self.queued.setdefault(operation.customer, deque()).append(operation.number)
        self.ready = [(numbers[0], customer) for customer, numbers in self.queued.items()]
        heapq.heapify(self.ready)
        self.busy: set[int] = set()
        self.freed = asyncio.Event()

    async def next(self) -> int | None:
        """The next operation, or None once every operation has been handed out."""
        while True:
            if self.ready:
                number, customer = heapq.heappop(self.ready)
                self.queued[customer].popleft()
                self.busy.add(customer)
                return number
            if not self.busy:
                return None
            self.freed.clear()
            await self.freed.wait()

    def done(self, customer: int) -> None:
        self.busy.discard(customer)
        numbers = self.queued[customer]
        if numbers:
            heapq.heappush(self.ready, (numbers[0], customer))
        self.freed.set()


@contextlib.asynccontextmanager
async def stack_for(options: Options) -> AsyncIterator[Stack]:
    if options.existing:
        yield Stack(load_settings())
        return
    home = tempfile.mkdtemp(prefix="cardflow-chaos-")
    os.chmod(home, 0o755)  # the embedded PostgreSQL may run as another user
    # Free ports and a home of its own, as the benchmarks start their stacks.
    stack = Stack(bench_settings(Path(home)))
    kept = False
    try:
        await asyncio.to_thread(stack.up)
        yield stack
    except KeptForInvestigation:
        kept = True
        raise
    finally:
        if not kept:
            await asyncio.to_thread(stack.down)
            shutil.rmtree(home, ignore_errors=True)


class KeptForInvestigation(Exception):
    """The run found violations and its stack is left running (--keep)."""


class Chaos:
    def __init__(self, options: Options, stack: Stack, client: Client) -> None:
        self.options = options
        self.stack = stack
        self.settings = stack.settings
        self.client = client
        # How the quiescence before the checks ended (the report says it).
        self.quiesced = "not reached"
        self.plan: Plan = plan_run(
            options.seed,
            operations=options.operations,
            customers=options.customer_count,
            fault_rate=options.fault_rate,
            kills=max(1, int(3600 / max(options.kill_every_seconds, 1.0))),
        )
        self.tally = Tally()
        self.evidence = Evidence()
        self.admin_url = f"{self.settings.providers_base_url}/_admin"
        self.webhook_mode: dict[str, bool] = {"hold": False, "duplicate": False}
        self.restarting = asyncio.Lock()
        self.stop_faults = asyncio.Event()
        self.faults_log: list[str] = []
        self.lanes: dict[int, InFlight] = {}
        self.part_kills: list[asyncio.Future[None]] = []
        # The plan's faults fire one operation at a time, in order; a webhook
        # window closing by time takes the same lock.
        self.order = asyncio.Lock()
        self.window_open: WebhookWindow | None = None
        self.window_timers: list[asyncio.Future[None]] = []
        self.stall_path = (options.report_path or Path(f"chaos-{options.seed}.json")).with_suffix(
            ".stalls.txt"
        )

    # ----- the simulators' admin API -----------------------------------

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        deadline = time.monotonic() + QUIESCE_SECONDS_MAX
        while True:
            try:
                async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_SECONDS) as http:
                    response = await http.request(method, f"{self.admin_url}{path}", json=body)
                response.raise_for_status()
                return response.json() if response.content else None
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def sandbox_options(self) -> None:
        """What the run needs of the simulators; set again after they restart."""
        await self.admin(
            "PUT", f"/options/{ISSUER}", {"clock_offset_seconds": -ISSUER_CLOCK_BEHIND_SECONDS}
        )
        await self.admin("PUT", "/options/fx", {"quote_ttl_seconds": FX_QUOTE_TTL_SECONDS})
        await self.admin("POST", "/webhooks", self.webhook_mode)

    # ----- kills ---------------------------------------------------------

    def _kill(self, part: str) -> bool:
        record = self.stack.run.alive(part)
        if record is None:
            return False
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(record.pid)
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            process.kill()
            process.wait(timeout=10)
        self.tally.killed(part)
        return True

    def _start(self, part: str) -> None:
        if part == GATEWAY:
            self.stack._up_http_part(GATEWAY, ["gateway"], self.settings.gateway_port, "/health")
        elif part == SIMULATORS:
            self.stack._up_http_part(
                SIMULATORS, ["simulators", "serve"], self.settings.simulators_port, "/_admin/health"
            )
        else:
            self.stack._up_worker(part.removeprefix("worker-"))

    async def kill_and_restart(self, part: str) -> None:
        async with self.restarting:
            # A part found dead already is started again all the same, as
            # its supervisor would.
            await asyncio.to_thread(self._kill, part)
            await asyncio.sleep(RESTART_PAUSE_SECONDS)
            for _ in range(RESTART_ATTEMPTS_MAX):
                await asyncio.to_thread(self._start, part)
                if part == SIMULATORS:
                    await self.sandbox_options()
                elif part.startswith("worker-"):
                    # The next kill's interval counts from when this worker is
                    # up again (its metrics listen just before it polls): on a
                    # loaded machine a worker takes seconds to start, and kills
                    # faster than that would only keep the stack down.
                    port = metrics_port_of(self.settings, part)
                    await asyncio.to_thread(
                        wait_for_port, self.settings.bind_host, port, WORKER_READY_SECONDS_MAX
                    )
                # The port may answer for another process (another stack on
                # this machine took it while the part was down): the part
                # itself must be alive, or it is started again.
                await asyncio.sleep(RESTART_PAUSE_SECONDS)
                if self.stack.run.alive(part) is not None:
                    return
                self.tally.restart_failures += 1

    async def killer(self) -> None:
        for part in self.plan.kill_order:
            await asyncio.sleep(self.options.kill_every_seconds)
            if self.stop_faults.is_set():
                return
            await self.kill_and_restart(part)

    async def ensure_all_running(self) -> None:
        for part in (
            SIMULATORS,
            GATEWAY,
            *(worker_part(kind) for kind in QUEUE_KINDS),
        ):
            if self.stack.run.alive(part) is None:
                await asyncio.to_thread(self._start, part)
        await self.sandbox_options()

    # ----- faults by operation ------------------------------------------

    async def arm_fault(self, fault: ProviderFault) -> None:
        await self.admin(
            "POST",
            "/faults",
            {
                "kind": fault.kind,
                "path_prefix": fault.path_prefix,
                "times": fault.times,
                "seconds": fault.seconds,
                "status": fault.status,
            },
        )
        self.tally.faults += 1

    async def open_window(self, window: WebhookWindow) -> None:
        if window.kind == "duplicate":
            self.webhook_mode = {"hold": False, "duplicate": True}
        else:
            self.webhook_mode = {"hold": True, "duplicate": False}
        await self.admin("POST", "/webhooks", self.webhook_mode)
        self.window_open = window
        self.tally.webhook_windows += 1
        self.window_timers.append(asyncio.ensure_future(self._close_in_time(window)))

    async def _close_in_time(self, window: WebhookWindow) -> None:
        """Close the window after WEBHOOK_WINDOW_SECONDS_MAX if its operations
        have not: they may be waiting for the very webhooks it holds."""
        await asyncio.sleep(WEBHOOK_WINDOW_SECONDS_MAX)
        async with self.order:
            await self.close_window(window)

    async def close_window(self, window: WebhookWindow) -> None:
        if self.window_open is not window:
            return  # closed already, by time or by the quiescence
        self.window_open = None
        self.webhook_mode = {"hold": False, "duplicate": False}
        await self.admin("POST", "/webhooks", self.webhook_mode)
        if window.kind != "duplicate":
            order = "reverse" if window.kind == "hold_reverse" else "forward"
            await self.admin("POST", "/webhooks/release", {"order": order})

    async def before_operation(self, number: int) -> None:
        """The plan's faults due when operation `number` starts."""
        for fault in self.faults_at.get(number, []):
            await self.arm_fault(fault)
        for resend in self.resends_at.get(number, []):
            answer = await self.admin(
                "POST", "/webhooks/resend", {"back": resend.back, "simulator": ISSUER}
            )
            if answer and answer.get("resent"):
                self.tally.resends += 1
        for window in self.windows_open_at.get(number, []):
            await self.open_window(window)
        for window in self.windows_close_at.get(number, []):
            await self.close_window(window)
        # The gateway and simulators restart beside the traffic: a lane that
        # waited for them would hold up every lane behind the order lock.
        if number == self.plan.gateway_kill_at and number > 0:
            self.part_kills.append(asyncio.ensure_future(self.kill_and_restart(GATEWAY)))
        if number == self.plan.simulators_kill_at and number > 0:
            self.part_kills.append(asyncio.ensure_future(self.kill_and_restart(SIMULATORS)))
        worker = self.plan.worker_kills_at.get(number)
        if worker is not None:
            self.part_kills.append(asyncio.ensure_future(self.kill_and_restart(worker)))

    def index_faults(self) -> None:
        self.faults_at: dict[int, list[ProviderFault]] = {}
        for fault in self.plan.provider_faults:
            self.faults_at.setdefault(fault.at_operation, []).append(fault)
        self.resends_at: dict[int, list[Resend]] = {}
        for resend in self.plan.resends:
            self.resends_at.setdefault(resend.at_operation, []).append(resend)
        self.windows_open_at: dict[int, list[WebhookWindow]] = {}
        self.windows_close_at: dict[int, list[WebhookWindow]] = {}
        # Windows never overlap: one that starts inside another is dropped.
        open_until = -1
        for window in self.plan.webhook_windows:
            if window.at_operation <= open_until:
                continue
            close = min(window.at_operation + window.length_ops, self.options.operations - 1)
            self.windows_open_at.setdefault(window.at_operation, []).append(window)
            self.windows_close_at.setdefault(close, []).append(window)
            open_until = close

    # ----- the run ---------------------------------------------------------

    async def miner(self, workload: Workload) -> None:
        while True:
            with contextlib.suppress(Exception):
                await workload.tron.mine_blocks(
                    1, idempotency_key=workload.key("mine", time.monotonic_ns())
                )
            await asyncio.sleep(MINE_EVERY_SECONDS)

    async def live_line(self) -> None:
        pool = await create_pool(self.settings.effective_database_url, size_max=1)
        last_probe = 0.0
        try:
            while True:
                if time.monotonic() - last_probe > LEDGER_PROBE_EVERY_SECONDS:
                    last_probe = time.monotonic()
                    with contextlib.suppress(Exception):
                        found = await invariants.ledger_violations(pool)
                        self.tally.violations_seen = max(self.tally.violations_seen, len(found))
                self.watch_for_stall()
                if self.options.live:
                    sys.stderr.write("\r" + self.status_line() + "\033[K")
                    sys.stderr.flush()
                await asyncio.sleep(LIVE_LINE_EVERY_SECONDS)
        finally:
            await pool.close()

    def watch_for_stall(self) -> None:
        t = self.tally
        now = time.monotonic()
        if t.phase != "operating" or not self.lanes:
            return
        stalled_since = max(t.last_done_at, t.stalls[-1]["at_monotonic"] if t.stalls else 0.0)
        if now - stalled_since < STALL_REPORT_SECONDS:
            return
        lanes = [flight.line(now) for flight in sorted(self.lanes.values(), key=lambda f: f.since)]
        t.stalls.append(
            {
                "at_monotonic": now,
                "at_seconds": round(now - t.started_at),
                "done": t.done,
                "lanes": lanes,
            }
        )
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=stacks)
        with self.stall_path.open("a") as out:
            out.write(f"== no operation finished for {now - t.last_done_at:.0f} s ")
            out.write(f"at {now - t.started_at:.0f} s, {t.done} done\n")
            out.write("\n".join(lanes) + "\n" + stacks.getvalue() + "\n")

    def status_line(self) -> str:
        t = self.tally
        elapsed = time.monotonic() - t.started_at
        kills = sum(t.kills.values())
        now = time.monotonic()
        oldest = min(self.lanes.values(), key=lambda f: f.since, default=None)
        slowest = f" | oldest {oldest.line(now)}" if oldest and now - oldest.since > 30 else ""
        return (
            f"[{elapsed:6.0f}s] {t.phase}: ops {t.done}/{self.options.operations} "
            f"(skipped {t.skipped}, errors {t.errors}) | faults {t.faults} "
            f"webhook windows {t.webhook_windows} resends {t.resends} | kills {kills} | "
            f"stand-ins {self.evidence.stand_ins} | ledger violations {t.violations_seen}"
            f"{slowest}"
        )

    async def operate(self, workload: Workload) -> None:
        dispatcher = Dispatcher(self.plan.operations)
        deadline = time.monotonic() + self.options.minutes * 60 if self.options.minutes else None
        dispatched = 0

        async def lane(index: int) -> None:
            nonlocal dispatched
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    return
                number = await dispatcher.next()
                if number is None:
                    return
                operation = self.plan.operations[number]
                # The plan's faults fire by how many operations have started,
                # whichever customer's operation it is.
                async with self.order:
                    started = dispatched
                    dispatched += 1
                    await self.before_operation(started)
                self.lanes[index] = InFlight(number, operation.kind, operation.customer)
                try:
                    outcome = await workload.run(operation)
                except OperationSkipped as skipped:
                    self.tally.skipped += 1
                    outcome = f"skipped: {skipped}"
                except Exception as error:  # noqa: BLE001 - counted, the run goes on
                    self.tally.errors += 1
                    outcome = f"error: {type(error).__name__}"
                    if len(self.tally.error_samples) < ERROR_SAMPLES_MAX:
                        self.tally.error_samples.append(
                            f"operation {number} ({operation.kind}): {error!r}"[:400]
                        )
                finally:
                    self.lanes.pop(index, None)
                    dispatcher.done(operation.customer)
                self.evidence.count(operation.kind, outcome.split(":")[0])
                self.tally.done += 1
                self.tally.last_done_at = time.monotonic()

        await asyncio.gather(*(lane(i) for i in range(self.options.concurrency)))

    async def quiesce(self) -> None:
        """Faults off, every part up, every webhook delivered, every money process ended."""
        self.stop_faults.set()
        await asyncio.gather(*self.part_kills)
        for timer in self.window_timers:
            timer.cancel()
        self.window_open = None
        await self.admin("DELETE", "/faults")
        if self.webhook_mode["hold"] or self.webhook_mode["duplicate"]:
            self.webhook_mode = {"hold": False, "duplicate": False}
            await self.admin("POST", "/webhooks", self.webhook_mode)
            await self.admin("POST", "/webhooks/release", {"order": "reverse"})
        async with self.restarting:
            await self.ensure_all_running()
        deadline = time.monotonic() + QUIESCE_SECONDS_MAX
        watched = [*self.evidence.topups, *self.evidence.conversions, *self.evidence.card_issues]
        settled_reads = 0
        while time.monotonic() < deadline:
            health = await self.admin("GET", "/health")
            settled = (
                health["webhooks_pending"] == 0
                and await self._all_closed(watched)
                # Every card has applied the events delivered to it (a card
                # that took a burst works through it after the last delivery):
                # the day's reconciliation must not race the cards' postings.
                and not await invariants.busy_workflows(self.client, CARDS_RUNNING)
            )
            # Two reads in a row: a card between two events is idle for a moment.
            settled_reads = settled_reads + 1 if settled else 0
            if settled_reads >= 2:
                self.quiesced = "settled"
                return
            await asyncio.sleep(1.0)
        busy = await invariants.busy_workflows(self.client, CARDS_RUNNING)
        self.quiesced = (
            f"not settled after {QUIESCE_SECONDS_MAX:g} s; cards still working: {busy[:10]}"
        )

    async def _all_closed(self, workflow_ids: list[str]) -> bool:
        from temporalio.client import WorkflowExecutionStatus

        for workflow_id in workflow_ids:
            try:
                described = await self.client.get_workflow_handle(workflow_id).describe()
            except Exception:  # noqa: BLE001 - not started yet: not closed
                return False
            if described.status is WorkflowExecutionStatus.RUNNING:
                return False
        return True

    async def day_end(self, workload: Workload) -> tuple[str, str]:
        settlement_day = (datetime.now(UTC) - timedelta(seconds=ISSUER_CLOCK_BEHIND_SECONDS)).date()
        last_month = (date.today().replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
        reconciliation = await workload.reconcile(settlement_day)
        billing = await workload.bill(last_month)
        return reconciliation, billing

    async def check(
        self, pool: Any, issuer: IssuerClient, reconciliation_id: str
    ) -> tuple[list[Violation], dict[str, Any]]:
        violations: list[Violation] = []
        violations += await invariants.ledger_violations(pool)
        violations += await invariants.hold_violations(
            pool, margin_seconds=HOLD_EXPIRY_MARGIN_SECONDS
        )
        violations += await invariants.workflow_violations(
            self.client, stuck_after_seconds=STUCK_AFTER_SECONDS
        )
        violations += await invariants.webhook_violations(pool, self.admin_url)
        money, figures = await money_violations(self.client, pool, issuer, self.evidence)
        violations += money
        found, figures["reconciliation"] = await self.reconciliation_violations(reconciliation_id)
        violations += found
        return violations, figures

    async def reconciliation_violations(
        self, workflow_id: str
    ) -> tuple[list[Violation], dict[str, Any]]:
        """The day's reconciliation's violations, and what it found: its
        differences per kind and state, with the first few of them."""
        handle = self.client.get_workflow_handle(workflow_id, result_type=ReconciliationResult)
        try:
            wait_seconds = max(
                RECONCILIATION_WAIT_SECONDS_MIN,
                self.options.operations * RECONCILIATION_WAIT_SECONDS_PER_OPERATION,
            )
            result = await asyncio.wait_for(handle.result(), wait_seconds)
        except TimeoutError:
            # Still running: say where it waits (an operator's decision, a page).
            try:
                status = await handle.query(Reconciliation.status)
            except Exception as error:  # noqa: BLE001 - the timeout is the finding
                where = f"its status unreadable: {error!r}"
                return [Violation("reconciliation_unfinished", workflow_id, where[:300])], {}
            found = reconciliation_findings(status.items)
            where = f"stage {status.stage!r}, items {found['states']}, kinds {found['kinds']}"
            return [Violation("reconciliation_unfinished", workflow_id, where[:300])], found
        except Exception as error:  # noqa: BLE001 - reported as a violation
            return [Violation("reconciliation_failed", workflow_id, repr(error)[:300])], {}
        return [
            Violation(
                "reconciliation_drift",
                f"{workflow_id} {summary.currency}",
                f"{summary.unexplained_minor} unexplained",
            )
            for summary in result.report.currencies
            if summary.unexplained_minor
        ], reconciliation_findings(result.report.items)

    async def pause_schedules(self) -> None:
        """Pause cardflow's schedules for the run: the issuer's clock runs a
        day behind, so the daily reconciliation, firing while the run goes,
        would reconcile the issuer's day while its traffic still flows (and
        take the id of the run's own reconciliation at the end)."""
        from temporalio.service import RPCError

        from starters.schedules import SCHEDULES

        for spec in SCHEDULES:
            with contextlib.suppress(RPCError):  # a schedule the stack lacks
                await self.client.get_schedule_handle(spec.schedule_id).pause(
                    note=f"paused by the chaos run, seed {self.options.seed}"
                )

    async def execute(self) -> dict[str, Any]:
        self.index_faults()
        await self.pause_schedules()
        await self.sandbox_options()
        issued = await create_key(
            self.settings,
            NewApiKey(name=f"chaos-{self.options.seed}", scopes=list(SCOPES)),  # type: ignore[arg-type]
        )
        run_tag = f"{int(time.time()) % 100_000:05d}"
        workload = Workload(
            self.settings,
            self.client,
            issued.key,
            self.evidence,
            seed=self.options.seed,
            run_tag=run_tag,
        )
        background = [
            asyncio.ensure_future(self.miner(workload)),
            asyncio.ensure_future(self.live_line()),
        ]
        try:
            gate = asyncio.Semaphore(self.options.concurrency)

            async def one(index: int) -> Any:
                async with gate:
                    return await workload.set_up_customer(index)

            self.evidence.customers = list(
                await asyncio.gather(*(one(i) for i in range(self.options.customer_count)))
            )
            set_up_seconds = time.monotonic() - self.tally.started_at
            killer = asyncio.ensure_future(self.killer())
            background.append(killer)
            operating_started = time.monotonic()
            self.tally.phase = "operating"
            await self.operate(workload)
            operating_seconds = time.monotonic() - operating_started
            killer.cancel()
            self.tally.phase = "quiescing"
            await self.quiesce()
            self.tally.phase = "reconciling and billing"
            reconciliation, billing = await self.day_end(workload)
            pool = await create_pool(self.settings.effective_database_url, size_max=4)
            issuer = IssuerClient(
                f"{self.settings.providers_base_url}/{ISSUER}", timeout=MODEL_READ_TIMEOUT
            )
            try:
                deadline: float | None = None
                checks = 0
                while True:
                    checks += 1
                    self.tally.check_rounds = checks
                    self.tally.phase = f"checking (round {checks})"
                    violations, figures = await self.check(pool, issuer, reconciliation)
                    if deadline is None:
                        deadline = time.monotonic() + CONVERGE_SECONDS_MAX
                    if not violations or (
                        checks >= CONVERGE_ROUNDS_MIN and time.monotonic() > deadline
                    ):
                        break
                    await asyncio.sleep(CONVERGE_PAUSE_SECONDS)
            finally:
                await issuer.aclose()
                await pool.close()
        finally:
            for task in background:
                task.cancel()
            await workload.close()
            if self.options.live:
                sys.stderr.write("\r" + self.status_line() + "\033[K\n")
        return self.report(violations, figures, set_up_seconds, operating_seconds, billing)

    def report(
        self,
        violations: list[Violation],
        figures: dict[str, Any],
        set_up_seconds: float,
        operating_seconds: float,
        billing: str,
    ) -> dict[str, Any]:
        t = self.tally
        return {
            "seed": self.options.seed,
            "replay": self.options.replay_command(),
            "operations_planned": self.options.operations,
            "operations_done": t.done,
            "skipped": t.skipped,
            "errors": t.errors,
            "error_samples": t.error_samples,
            "operations_by_kind": self.evidence.outcomes,
            "customers": len(self.evidence.customers),
            "cards": len(self.evidence.cards),
            "authorizations": len(self.evidence.authorizations),
            "transactions": len(self.evidence.transactions),
            "stand_ins": self.evidence.stand_ins,
            "resent_events": self.evidence.resent,
            "provider_faults": t.faults,
            "webhook_windows": t.webhook_windows,
            "webhook_resends": t.resends,
            "kills": t.kills,
            "restart_failures": t.restart_failures,
            "stalls": [{k: v for k, v in s.items() if k != "at_monotonic"} for s in t.stalls],
            "quiesced": self.quiesced,
            "set_up_seconds": round(set_up_seconds, 1),
            "operating_seconds": round(operating_seconds, 1),
            "wall_seconds": round(time.monotonic() - t.started_at, 1),
            "billing_run": billing,
            "check_rounds": t.check_rounds,
            "violations": [v.line() for v in violations],
            **figures,
        }


async def run(options: Options) -> dict[str, Any]:
    report: dict[str, Any] = {}
    try:
        async with stack_for(options) as stack:
            client = await connect(stack.settings)
            report = await Chaos(options, stack, client).execute()
            if report["violations"] and options.keep_on_violation and not options.existing:
                s = stack.settings
                report["kept_stack"] = {
                    "home": str(stack.home),
                    "temporal": s.temporal_target,
                    "web_ui": s.web_ui_url,
                    "database": s.embedded_database_url_without_password,
                    "simulators": s.providers_base_url,
                    "gateway": f"http://{s.bind_host}:{s.gateway_port}",
                    "stop": f"CARDFLOW_HOME={stack.home} cardflow dev down",
                }
                raise KeptForInvestigation
    except KeptForInvestigation:
        pass
    return report


def summary(report: dict[str, Any]) -> str:
    """The end-of-run table."""
    lines = [f"chaos run, seed {report['seed']}: {len(report['violations'])} violations"]
    lines.append(f"{'operation':<14} " + "outcomes")
    for kind, outcomes in sorted(report["operations_by_kind"].items()):
        shown = ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items()))
        lines.append(f"{kind:<14} {shown}")
    kills = ", ".join(f"{part} {count}" for part, count in sorted(report["kills"].items()))
    lines += [
        f"operations     {report['operations_done']}/{report['operations_planned']} "
        f"(skipped {report['skipped']}, errors {report['errors']})",
        f"customers      {report['customers']}, cards {report['cards']}, "
        f"authorizations {report['authorizations']}, transactions {report['transactions']}",
        f"faults         provider {report['provider_faults']}, "
        f"webhook windows {report['webhook_windows']}, resends {report['webhook_resends']}",
        f"kills          {kills or 'none'}",
        f"stand-ins      {report['stand_ins']}",
        f"time           set-up {report['set_up_seconds']} s, operations "
        f"{report['operating_seconds']} s, wall {report['wall_seconds']} s",
    ]
    for violation in report["violations"]:
        lines.append(f"VIOLATION {violation}")
    if report["violations"]:
        lines.append(f"replay: {report['replay']}")
    if "kept_stack" in report:
        lines.append(f"stack kept running for investigation: {report['kept_stack']}")
    return "\n".join(lines)


def _interrupted(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal_number}")


def main(options: Options) -> int:
    # Stopped by a timeout or a supervisor (SIGTERM), the run still takes its
    # stack down, as it does on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupted)
    report = asyncio.run(run(options))
    path = options.report_path or Path(f"chaos-{options.seed}.json")
    path.write_text(json.dumps(report, indent=2, default=str))
    print(summary(report))
    print(f"report: {path}")
    return 1 if report["violations"] else 0


__all__ = ["Options", "main", "run", "summary"]


# Differences of the day's reconciliation shown in the report, each whole.
RECONCILIATION_EXAMPLES = 12


def reconciliation_findings(items: list[ReconciliationItem]) -> dict[str, Any]:
    """What the day's reconciliation found: its items per state and per kind
    of difference, and the first few differences (enough to investigate)."""
    return {
        "states": dict(Counter(str(item.state) for item in items)),
        "kinds": dict(Counter(str(item.difference.kind) for item in items)),
        "examples": [
            item.difference.model_dump(mode="json") for item in items[:RECONCILIATION_EXAMPLES]
        ],
    }
