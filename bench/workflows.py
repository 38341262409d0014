"""Top-ups completed per second, end to end, against a skeleton workflow.

Run: .venv/bin/python -m bench.workflows [--topups N] [--concurrency C]
                                         [--repeats R] [--json]

Starts its own embedded stack in a temporary directory: PostgreSQL (or
DATABASE_URL, into a scratch database it creates and drops) with the
migrations, a Temporal dev server with cardflow's search attributes and the
production data converter (pydantic JSON + AES-GCM), the provider simulators
(the top-up's receipt goes to the notification simulator; their webhooks are
held, nobody listens), and the real workers of workers/build.py on one set of
task queues, in this process.

Each repeat measures, on the same server and queues, one after the other:

  top-ups    N bank top-ups (distinct transfer ids, C in flight), each started
             as the gateway starts it (signal-with-start with the transfer)
             and awaited to its result: match, daily usage, the atomic credit
             + fee batch, then the receipt beside the usage's "credited" mark
  skeleton   N workflows defined here, started the same way, that run the
             same number of activities on the same queues in the same rounds
             (read from a finished top-up's history), each a no-op: the
             health probes every real worker carries (providers_ping returns
             at once; ledger_ping reads one row count)

Rates are workflows completed per second from the first start to the last
result, with the CPU this stack's processes (this one, the Temporal server,
the simulators, PostgreSQL) spent per workflow. The figures are medians over
the repeats; the ratio is the median of each repeat's top-ups / skeleton
(measured back to back, so a change in the machine's load between repeats
touches both sides). The target is 0.9 or more. It prints, never asserts.

The skeleton needs its own workflow worker: between phases the real workflow
worker stops and a skeleton one (same sandbox, same queue) takes its place;
the ledger and providers workers are the real ones throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import psutil
    from temporalio.client import Client
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.customers import CustomerStore
    from activities.database import create_pool
    from activities.health import LedgerHealthActivities, providers_ping
    from activities.ledger import Ledger
    from activities.migrate import migrate
    from activities.providers.activities import ProviderClients
    from activities.queues import QueueKind
    from schemas import accounts
    from schemas.bank import InboundTransfer
    from schemas.customers import CustomerProfile, KycStatus
    from schemas.ledger import AccountSpec
    from schemas.money import Currency
    from schemas.providers import PROVIDERS
    from schemas.search import ALL_SEARCH_ATTRIBUTES
    from schemas.task_queues import TaskQueues
    from schemas.topup import TopupResult
    from starters.devstack import postgres
    from starters.devstack.processes import free_port
    from starters.devstack.stack import temporal_cli_path
    from starters.topup import start_bank_topup
    from workers.build import build_worker, sandboxed_runner
    from workers.converter import build_data_converter, generate_key
    from workers.secrets import new_webhook_secret
    from workflows.steps import STEP_POLICIES, step
    from workflows.topup import topup_workflow_id

SKELETON_WORKFLOW = "BenchSkeleton"
SKELETON_START_SIGNAL = "start"
TOPUP_AMOUNT_MINOR = 10_000
CUSTOMERS_MAX = 100
POOL_SIZE_MAX = 10
SIMULATOR_STARTUP_SECONDS_MAX = 30
# Nothing listens here: the simulators' webhooks are held anyway.
NOWHERE_URL = "http://127.0.0.1:9"


class SkeletonPlan(BaseModel):
    """The queue kind ("ledger" or "providers") of each activity, in rounds:
    a round's activities run side by side, as the top-up scheduled them."""

    rounds: list[list[str]]
    ledger_task_queue: str
    providers_task_queue: str


def activity_count(plan: SkeletonPlan) -> int:
    return sum(len(kinds) for kinds in plan.rounds)


@workflow.defn(name=SKELETON_WORKFLOW)
class Skeleton:
    """Started like a top-up (signal-with-start), then the same number of
    activities on the same queues in the same rounds, each a no-op."""

    def __init__(self) -> None:
        self._started = False

    @workflow.run
    async def run(self, plan: SkeletonPlan) -> int:
        await workflow.wait_condition(lambda: self._started)
        for kinds in plan.rounds:
            await asyncio.gather(*(self._noop(plan, kind) for kind in kinds))
        return activity_count(plan)

    async def _noop(self, plan: SkeletonPlan, kind: str) -> None:
        if kind == "ledger":
            await step(plan, LedgerHealthActivities.ping)
        else:
            policy = STEP_POLICIES[QueueKind.PROVIDERS]
            await workflow.execute_activity(
                providers_ping,
                task_queue=plan.providers_task_queue,
                start_to_close_timeout=policy.start_to_close,
                retry_policy=policy.retry_policy,
            )

    @workflow.signal(name=SKELETON_START_SIGNAL)
    def start(self, note: str) -> None:
        self._started = True


@dataclass
class Figure:
    name: str
    rates_per_second: list[float]
    median_per_second: float
    cpu_ms_per_workflow: list[float]
    median_cpu_ms_per_workflow: float


@dataclass
class Measured:
    rate_per_second: float
    cpu_ms_per_workflow: float


class StackCpu:
    """CPU seconds spent so far by this process, its children (the Temporal
    server, the simulators) and the embedded PostgreSQL with its backends."""

    def __init__(self, postmaster_pid: int | None) -> None:
        self.postmaster = psutil.Process(postmaster_pid) if postmaster_pid else None

    def seconds(self) -> float:
        me = psutil.Process()
        processes = [me, *me.children(recursive=True)]
        if self.postmaster is not None:
            processes += [self.postmaster, *self.postmaster.children(recursive=True)]
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total


@contextlib.contextmanager
def simulators(home: Path) -> Iterator[str]:
    """The provider simulators as a process, webhooks held; yields their base URL."""
    port = free_port()
    env = dict(
        os.environ,
        CARDFLOW_HOME=str(home),
        CARDFLOW_SIMULATORS_PORT=str(port),
        CARDFLOW_GATEWAY_URL=NOWHERE_URL,
        CARDFLOW_WEBHOOK_SECRETS=json.dumps({p: new_webhook_secret() for p in PROVIDERS}),
    )
    url = f"http://127.0.0.1:{port}"
    with open(home / "simulators.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "starters.cli", "simulators", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SIMULATOR_STARTUP_SECONDS_MAX
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_admin/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulators did not start; see {home / 'simulators.log'}")
            time.sleep(0.1)
        httpx.post(f"{url}/_admin/webhooks", json={"hold": True}, timeout=5).raise_for_status()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


@contextlib.asynccontextmanager
async def database(scratch: Path) -> AsyncIterator[tuple[str, int | None]]:
    """A migrated scratch database on the embedded PostgreSQL (or DATABASE_URL's
    server); yields its URL and the embedded postmaster's pid."""
    external = os.environ.get("DATABASE_URL")
    data_dir, log_path = scratch / "postgres", scratch / "postgres.log"
    postmaster_pid = None
    if external:
        server_url = external.rsplit("/", 1)[0] + "/postgres"
    else:
        port = free_port()
        password = secrets.token_urlsafe(32)
        postmaster_pid = postgres.start(
            data_dir, host="127.0.0.1", port=port, log_path=log_path, password=password
        )
        server_url = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        database_url = server_url.rsplit("/", 1)[0] + f"/{name}"
        await migrate(database_url)
        yield database_url, postmaster_pid
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if not external:
            postgres.stop(data_dir, log_path=log_path)


async def open_customers(pool: asyncpg.Pool, count: int) -> list[str]:
    """Approved customers with a USD wallet and an e-mail for the receipt."""
    store, ledger = CustomerStore(pool), Ledger(pool)
    customer_ids = [f"bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
    for customer_id in customer_ids:
        await store.save(
            CustomerProfile(
                customer_id=customer_id,
                first_name="Bench",
                last_name="Customer",
                date_of_birth=date(1990, 1, 1),
                country="DEU",
                email=f"{customer_id}@example.com",
            )
        )
        await store.set_kyc_status(customer_id, KycStatus.APPROVED)
        await ledger.open_account(
            AccountSpec(
                code=accounts.wallet(customer_id, Currency.USD),
                currency=Currency.USD,
                kind="wallet",
                owner_id=customer_id,
                debits_must_not_exceed_credits=True,
            )
        )
    return customer_ids


def transfer(customer_id: str, transfer_id: str) -> InboundTransfer:
    return InboundTransfer(
        id=transfer_id,
        reference=customer_id,
        amount_minor=TOPUP_AMOUNT_MINOR,
        currency=Currency.USD,
        sender_name="Bench payer",
        status="received",
        received_at="2026-01-01T00:00:00Z",
    )


async def topup_rounds(client: Client, workflow_id: str, queues: TaskQueues) -> list[list[str]]:
    """The queue kind of each activity a finished top-up ran, from its history,
    grouped by the workflow task that scheduled them (they ran side by side)."""
    kinds = {queues.ledger: "ledger", queues.providers: "providers"}
    rounds: dict[int, list[str]] = {}
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            scheduled = event.activity_task_scheduled_event_attributes
            rounds.setdefault(scheduled.workflow_task_completed_event_id, []).append(
                kinds[scheduled.task_queue.name]
            )
    return [rounds[task] for task in sorted(rounds)]


@dataclass
class Phases:
    """One stack's clients and queues, and how to run each kind of workflow on it."""

    client: Client
    queues: TaskQueues
    pool: asyncpg.Pool
    clients: ProviderClients
    customers: list[str]
    cpu: StackCpu
    run_id: str
    plan: SkeletonPlan | None = None

    def real_worker(self, kind: str) -> Worker:
        return build_worker(
            kind,
            self.client,
            self.queues,
            pool=self.pool,
            pool_size_max=POOL_SIZE_MAX,
            provider_clients=self.clients,
        )

    def skeleton_worker(self) -> Worker:
        """The workflow worker of the skeleton phase: build_worker's settings."""
        # Imported by its package name, not as __main__: the sandbox re-imports
        # a workflow's module by name.
        skeleton = importlib.import_module("bench.workflows").Skeleton
        return Worker(
            self.client,
            task_queue=self.queues.workflows,
            workflows=[skeleton],
            workflow_runner=sandboxed_runner(),
        )

    def transfer_id(self, label: str, index: int) -> str:
        return f"bench-{self.run_id}-{label}-{index}"

    async def topup(self, label: str, index: int) -> None:
        customer_id = self.customers[index % len(self.customers)]
        handle = await start_bank_topup(
            self.client, self.queues, transfer(customer_id, self.transfer_id(label, index))
        )
        result: TopupResult = await handle.result()
        assert result.outcome == "credited", result

    async def skeleton(self, label: str, index: int) -> None:
        assert self.plan is not None
        handle = await self.client.start_workflow(
            SKELETON_WORKFLOW,
            self.plan,
            id=f"bench-skeleton/{self.run_id}-{label}-{index}",
            task_queue=self.queues.workflows,
            start_signal=SKELETON_START_SIGNAL,
            start_signal_args=["go"],
            result_type=int,
        )
        assert await handle.result() == activity_count(self.plan)

    async def completed(
        self, count: int, concurrency: int, one: Callable[[int], Awaitable[None]]
    ) -> Measured:
        """Run `one(i)` for i < count, `concurrency` at a time."""
        gate = asyncio.Semaphore(concurrency)

        async def bounded(index: int) -> None:
            async with gate:
                await one(index)

        cpu_before, started = self.cpu.seconds(), time.perf_counter()
        await asyncio.gather(*(bounded(index) for index in range(count)))
        elapsed = time.perf_counter() - started
        cpu_ms = (self.cpu.seconds() - cpu_before) * 1000 / count
        return Measured(count / elapsed, cpu_ms)


def figure(name: str, measured: list[Measured]) -> Figure:
    rates = [m.rate_per_second for m in measured]
    cpu = [m.cpu_ms_per_workflow for m in measured]
    return Figure(name, rates, statistics.median(rates), cpu, statistics.median(cpu))


async def measure(
    phases: Phases, topups: int, concurrency: int, repeats: int
) -> tuple[Figure, Figure, list[list[str]]]:
    async with phases.real_worker("ledger"), phases.real_worker("providers"):
        async with phases.real_worker("workflows"):
            # Warm up, and learn the activities a top-up runs from its history.
            # The first credit of a currency also opens its system accounts;
            # the second is every later one's shape.
            await phases.topup("warmup", 0)
            await phases.topup("warmup", 1)
            rounds = await topup_rounds(
                phases.client,
                topup_workflow_id("bank", phases.transfer_id("warmup", 1)),
                phases.queues,
            )
        phases.plan = SkeletonPlan(
            rounds=rounds,
            ledger_task_queue=phases.queues.ledger,
            providers_task_queue=phases.queues.providers,
        )
        async with phases.skeleton_worker():
            await phases.skeleton("warmup", 0)

        topup_runs: list[Measured] = []
        skeleton_runs: list[Measured] = []

        async def topup_phase(label: str) -> None:
            async with phases.real_worker("workflows"):
                topup_runs.append(
                    await phases.completed(topups, concurrency, partial(phases.topup, label))
                )

        async def skeleton_phase(label: str) -> None:
            async with phases.skeleton_worker():
                skeleton_runs.append(
                    await phases.completed(topups, concurrency, partial(phases.skeleton, label))
                )

        for repeat in range(repeats):
            # Alternate which goes first, so a drift in the machine's load
            # does not favour one side.
            first, second = (topup_phase, skeleton_phase)[:: 1 if repeat % 2 == 0 else -1]
            await first(f"r{repeat}")
            await second(f"r{repeat}")
    return figure("bank top-ups", topup_runs), figure("skeleton", skeleton_runs), rounds


async def run(
    topups: int, concurrency: int, repeats: int, scratch: Path
) -> tuple[Figure, Figure, list[list[str]]]:
    keys = [("bench", base64.b64decode(generate_key()))]
    async with database(scratch) as (database_url, postmaster_pid):
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(temporal_cli_path()),
            search_attributes=ALL_SEARCH_ATTRIBUTES,
            data_converter=build_data_converter(keys),
            dev_server_extra_args=["--ui-disable-news-fetch"],
            # Picked as the stacks pick theirs, never a port the OS may hand out.
            port=free_port(),
        )
        (scratch / "simulators").mkdir()
        try:
            with simulators(scratch / "simulators") as providers_url:
                pool = await create_pool(database_url, size_max=POOL_SIZE_MAX)
                clients = ProviderClients(providers_url)
                try:
                    phases = Phases(
                        client=env.client,
                        queues=TaskQueues(prefix=f"bench-{uuid.uuid4().hex[:8]}"),
                        pool=pool,
                        clients=clients,
                        customers=await open_customers(pool, min(CUSTOMERS_MAX, topups)),
                        cpu=StackCpu(postmaster_pid),
                        run_id=uuid.uuid4().hex[:8],
                    )
                    return await measure(phases, topups, concurrency, repeats)
                finally:
                    await pool.close()
                    await clients.aclose()
        finally:
            await env.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--topups", type=int, default=200, help="workflows per phase")
    parser.add_argument("--concurrency", type=int, default=20, help="workflows in flight")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args()
    # The sandbox re-imports each workflow's module for every run; as deployed
    # (pip compiles the installed code) that reads bytecode, not source, so
    # let this process cache bytecode even under PYTHONDONTWRITEBYTECODE.
    sys.dont_write_bytecode = False
    with tempfile.TemporaryDirectory(prefix="cardflow-bench-workflows-") as scratch:
        # PostgreSQL may run as another user: its data's parents stay traversable.
        Path(scratch).chmod(0o755)
        topup, skeleton, rounds = asyncio.run(
            run(arguments.topups, arguments.concurrency, arguments.repeats, Path(scratch))
        )
    ratios = [t / s for t, s in zip(topup.rates_per_second, skeleton.rates_per_second, strict=True)]
    ratio = statistics.median(ratios)
    if arguments.json:
        document: dict[str, Any] = {
            "topups": arguments.topups,
            "concurrency": arguments.concurrency,
            "repeats": arguments.repeats,
            "cpus": os.cpu_count(),
            "activity_rounds": rounds,
            "figures": [asdict(topup), asdict(skeleton)],
            "ratios": ratios,
            "ratio": ratio,
        }
        print(json.dumps(document))
        return
    print(
        f"workflow benchmark: {arguments.topups} workflows x {arguments.repeats} repeats, "
        f"{arguments.concurrency} in flight, {os.cpu_count()} CPUs; "
        f"{sum(len(r) for r in rounds)} activities in rounds {rounds}"
    )
    print(f"{'workflow':<14}{'median/s':>10}{'CPU ms/wf':>11}  per repeat (/s)")
    for each in (topup, skeleton):
        rates = ", ".join(f"{rate:.1f}" for rate in each.rates_per_second)
        print(
            f"{each.name:<14}{each.median_per_second:>10.1f}"
            f"{each.median_cpu_ms_per_workflow:>11.1f}  {rates}"
        )
    print(
        f"top-ups / skeleton: {ratio:.2f} (median of repeats "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.90); "
        f"CPU per workflow skeleton / top-ups: "
        f"{skeleton.median_cpu_ms_per_workflow / topup.median_cpu_ms_per_workflow:.2f}"
    )


if __name__ == "__main__":
    main()
