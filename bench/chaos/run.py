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

This module drives the run (its set-up, lanes, quiescence and checks); what
it does to the stack (faults, kills) is in bench/chaos/stack.py, what it
reports in bench/chaos/report.py, its options in bench/chaos/options.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import signal
import sys
import time
from collections import deque
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from activities.api_keys import SCOPES, NewApiKey
from activities.database import create_pool
from activities.providers.issuer import IssuerClient
from bench.chaos import invariants
from bench.chaos.evidence import Evidence
from bench.chaos.invariants import Violation
from bench.chaos.money import money_violations
from bench.chaos.options import Options
from bench.chaos.plan import Operation, Plan, WebhookWindow, plan_run
from bench.chaos.report import (
    ERROR_SAMPLES_MAX,
    InFlight,
    Reporting,
    Tally,
    reconciliation_findings,
    summary,
)
from bench.chaos.stack import (
    ISSUER_CLOCK_BEHIND_SECONDS,
    QUIESCE_SECONDS_MAX,
    KeptForInvestigation,
    StackHandling,
    stack_for,
)
from bench.chaos.workload import Workload
from bench.chaos.workload_calls import OperationSkipped
from schemas.providers import ISSUER
from schemas.reconciliation import ReconciliationResult
from starters.apikeys import create_key
from starters.devstack.stack import Stack
from workers.client import connect
from workflows.cards import CARD_WORKFLOW
from workflows.reconciliation import Reconciliation

MINE_EVERY_SECONDS = 0.5
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


class Chaos(StackHandling, Reporting):
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

    # ----- the run ---------------------------------------------------------

    async def miner(self, workload: Workload) -> None:
        while True:
            with contextlib.suppress(Exception):
                await workload.tron.mine_blocks(
                    1, idempotency_key=workload.key("mine", time.monotonic_ns())
                )
            await asyncio.sleep(MINE_EVERY_SECONDS)

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
        violations += await invariants.feed_violations(pool)
        violations += await invariants.tier_spend_violations(pool)
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


__all__ = ["main", "run"]
