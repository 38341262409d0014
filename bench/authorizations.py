"""Real-time authorization latency as the issuer sees it, against a floor.

Run: .venv/bin/python -m bench.authorizations [--rate 30] [--seconds 20] [--cards 120] [--json]

Starts the whole embedded stack in a temporary directory on free ports (the
same parts `cardflow dev up` runs: Temporal dev server, PostgreSQL, codec,
simulators, gateway, one worker per task queue), issues --cards virtual cards
to funded customers, then in one run:

  floor           a bare update on running workflows that do nothing (as
                  many as --cards, each update on the next one),
                  open-loop at --rate, from this process
  authorizations  purchases arriving open-loop at --rate over all cards
                  through the issuer simulator, which asks the gateway in
                  real time; latency is the simulator's own measure of the
                  exchange (what the issuer sees), and an answer past the
                  issuer's deadline is counted (the stand-in applied)

Prints p50/p95/p99 of both and the p99 ratio. Targets on a 2-core machine:
p99 <= 100 ms at 30/s, none past the deadline, p99 within 3x the floor.

Overload: .venv/bin/python -m bench.authorizations --overload [--knee 40]
          [--burst-seconds 60] [--recovery-seconds 30] [--json]

a burst at twice the authorizations' knee, then recovery at the knee, and the
ledger against the issuer once settled; see bench/authorization_overload.py.

Sweep: .venv/bin/python -m bench.authorizations --sweep [--sweep-start 20]
       [--sweep-step 20 | --sweep-factor 1.5] [--sweep-max 400] [--seconds 20]
       [--cards 120] [--json]

steps the rate up, in one stack run, for the floor and then for real
authorizations and finds each one's knee (the highest rate still within
p99 <= 100 ms, none failed, none past the deadline), their ratio, and the CPU
time per authorization by process at the knee; see bench/authorization_sweep.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.customers import CustomerStore
from activities.database import create_pool
from activities.ledger import Ledger
from activities.providers.issuer import IssuerClient
from schemas import accounts
from schemas.cards import CardIssueInput, CardIssueResult
from schemas.customers import CustomerProfile, KycStatus
from schemas.issuer import Address, Authorization, Merchant
from schemas.ledger import AccountSpec, TransferRequest
from schemas.money import Currency
from schemas.providers import ISSUER
from starters.devstack.processes import free_port, free_port_run
from starters.devstack.stack import Stack
from workers.client import connect
from workers.settings import Settings, load_settings
from workflows.card_issue import CARD_ISSUE_WORKFLOW, card_issue_workflow_id

FUNDING_MINOR = 10**12
CARDS_STARTED_AT_ONCE = 20
MERCHANTS = [
    Merchant(name="Corner Shop", mcc="5411", country="GB"),
    Merchant(name="Cafe", mcc="5814", country="FR"),
    Merchant(name="Fuel", mcc="5541", country="DE"),
]
ADDRESS = Address(line1="1 Bench Street", city="London", postal_code="N1 9GU", country="GB")
NOOP_UPDATE = "touch"
WARM_UP_DRAIN_SECONDS = 3.0
DEADLINE_MS = 2_000
"""The issuer's deadline: an answer later than this, it does not wait for."""
FLOOR_NAME = "floor: bare update"
AUTHORIZATIONS_NAME = "authorizations (issuer-seen)"


@workflow.defn(name="BenchNoop", sandboxed=False)
class Noop:
    """Does nothing but answer an update: the floor of any update's latency."""

    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.update(name=NOOP_UPDATE)
    def touch(self, value: int) -> int:
        return value

    @workflow.signal
    def stop(self) -> None:
        self._done = True


@dataclass
class Latency:
    name: str
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    past_deadline: int = 0
    failed: int = 0
    gateway_stand_in: int = 0


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarize(name: str, samples: list[float], past: int = 0, failed: int = 0) -> Latency:
    if not samples:
        return Latency(name, 0, 0.0, 0.0, 0.0, past, failed)
    return Latency(
        name,
        len(samples),
        round(percentile(samples, 0.50), 1),
        round(percentile(samples, 0.95), 1),
        round(percentile(samples, 0.99), 1),
        past,
        failed,
    )


def bench_settings(home: Path) -> Settings:
    os.environ["CARDFLOW_HOME"] = str(home)
    for variable in (
        "CARDFLOW_TEMPORAL_PORT",
        "CARDFLOW_TEMPORAL_UI_PORT",
        "CARDFLOW_POSTGRES_PORT",
        "CARDFLOW_CODEC_PORT",
        "CARDFLOW_SIMULATORS_PORT",
        "CARDFLOW_GATEWAY_PORT",
    ):
        os.environ[variable] = str(free_port())
    # The gateway's and the three workers' metrics ports follow the base.
    os.environ["CARDFLOW_METRICS_PORT_BASE"] = str(free_port_run(4))
    return load_settings()


async def open_loop(rate: float, seconds: float, call: object) -> list[object]:
    """Start call(i) at a fixed rate whatever the earlier ones are doing."""
    count = max(1, int(rate * seconds))
    started = time.monotonic()
    tasks = []
    for i in range(count):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(call(i)))  # type: ignore[operator]
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def issue_cards(client: Client, settings: Settings, count: int) -> list[str]:
    pool = await create_pool(settings.effective_database_url, size_max=4)
    store, ledger = CustomerStore(pool), Ledger(pool)
    queues = settings.task_queues
    await ledger.open_account(accounts.system_account(accounts.bank_inbound("USD")))
    semaphore = asyncio.Semaphore(CARDS_STARTED_AT_ONCE)

    async def one(i: int) -> str:
        async with semaphore:
            customer_id = f"bench-{uuid.uuid4().hex[:10]}"
            await store.save(
                CustomerProfile(
                    customer_id=customer_id,
                    first_name="Bench",
                    last_name=f"Customer{i}",
                    date_of_birth=date(1990, 1, 1),
                    country="GBR",
                    email=f"{customer_id}@example.com",
                )
            )
            await store.set_kyc_status(customer_id, KycStatus.APPROVED)
            wallet = accounts.wallet(customer_id, "USD")
            await ledger.open_account(
                AccountSpec(
                    code=wallet,
                    currency=Currency.USD,
                    kind="wallet",
                    owner_id=customer_id,
                    debits_must_not_exceed_credits=True,
                )
            )
            await ledger.transfer(
                TransferRequest(
                    key=f"bench-fund-{customer_id}",
                    debit=accounts.bank_inbound("USD"),
                    credit=wallet,
                    amount_minor=FUNDING_MINOR,
                    currency=Currency.USD,
                )
            )
            request_id = f"bench-{uuid.uuid4().hex[:10]}"
            result: CardIssueResult = await client.execute_workflow(
                CARD_ISSUE_WORKFLOW,
                CardIssueInput(
                    request_id=request_id,
                    customer_id=customer_id,
                    kind="virtual",
                    address=ADDRESS,
                    ledger_task_queue=queues.ledger,
                    providers_task_queue=queues.providers,
                    workflows_task_queue=queues.workflows,
                ),
                id=card_issue_workflow_id(request_id),
                task_queue=queues.workflows,
                result_type=CardIssueResult,
            )
            return result.card_id or ""

    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def noop_workflows(
    client: Client, count: int
) -> AsyncIterator[list[WorkflowHandle[Noop, None]]]:
    """`count` running no-op workflows on this process's own worker, each
    warmed by one update. The floor's updates are spread over as many
    workflows as the authorizations' cards: one workflow would meet the
    server's own per-workflow limits (10 updates in flight, 2,000 in all)
    long before the update path's."""
    queue = f"bench-noop-{uuid.uuid4().hex[:8]}"
    semaphore = asyncio.Semaphore(CARDS_STARTED_AT_ONCE)

    async def one() -> WorkflowHandle[Noop, None]:
        async with semaphore:
            handle = await client.start_workflow(
                Noop.run, id=f"bench-noop/{uuid.uuid4().hex[:8]}", task_queue=queue
            )
            await handle.execute_update(Noop.touch, 0)  # warm
            return handle

    async with Worker(client, task_queue=queue, workflows=[Noop]):
        handles = list(await asyncio.gather(*(one() for _ in range(count))))
        try:
            yield handles
        finally:
            # Ended while their worker still runs: a workflow left with a task
            # no worker takes has it time out on the worker's sticky queue
            # later, and the server's handling of 120 such timeouts at once
            # stalled every card's authorization for ~400 ms in the next round.
            await asyncio.gather(*(handle.signal(Noop.stop) for handle in handles))
            await asyncio.gather(*(handle.result() for handle in handles))


async def floor_samples(
    handles: list[WorkflowHandle[Noop, None]], rate: float, seconds: float
) -> tuple[list[float], int]:
    """Bare updates open-loop at the rate, update i on workflow i modulo the
    workflows: their latencies (ms) and the failed count."""

    async def one(i: int) -> float:
        started = time.monotonic()
        await handles[i % len(handles)].execute_update(Noop.touch, i)
        return (time.monotonic() - started) * 1000

    results = await open_loop(rate, seconds, one)
    samples = [r for r in results if isinstance(r, float)]
    return samples, len(results) - len(samples)


async def measure_floor(client: Client, rate: float, seconds: float, workflows: int) -> Latency:
    async with noop_workflows(client, workflows) as handles:
        samples, failed = await floor_samples(handles, rate, seconds)
    return summarize(FLOOR_NAME, samples, failed=failed)


# A merchant acquirer's side of the purchases: many small connection pools,
# purchases spread over them in turn, and no wait for a free connection. An
# open loop at twice the knee keeps a few hundred purchases waiting while
# answers take up to the deadline. The platform's own client (one pool of 100
# connections, 2 s for a free one) would fail the bench's own calls then, and
# one pool that large spends the bench's CPU matching requests to connections
# (httpcore's pool scans every waiting request against every connection).
ACQUIRER_POOLS = 32
ACQUIRER_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=5.0, pool=None)


class Acquirer:
    """Clients of the issuer simulator sized for an acquirer's open loop."""

    def __init__(self, settings: Settings, pools: int = ACQUIRER_POOLS) -> None:
        self._clients = [
            IssuerClient(
                f"{settings.providers_base_url}/{ISSUER}",
                timeout=ACQUIRER_TIMEOUT,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            )
            for _ in range(pools)
        ]
        self._turn = itertools.count()

    def next(self) -> IssuerClient:
        """The pool whose turn it is."""
        return self._clients[next(self._turn) % len(self._clients)]

    async def __aenter__(self) -> Acquirer:
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients))


def authorization_call(
    client: Acquirer, cards: list[str], rng: random.Random
) -> Callable[[int], Awaitable[Authorization]]:
    """Purchase i, on card i modulo the cards, through the issuer simulator."""

    async def one(i: int) -> Authorization:
        return await client.next().simulate_authorization(
            card_id=cards[i % len(cards)],
            amount_minor=rng.randint(100, 5_000),
            currency=Currency.USD,
            merchant=MERCHANTS[i % len(MERCHANTS)],
            idempotency_key=f"bench-{uuid.uuid4().hex}",
        )

    return one


def summarize_authorizations(results: list[object]) -> Latency:
    """The issuer-seen figures of a round's results (an exception is a failure)."""
    samples: list[float] = []
    past = failed = stand_in = 0
    for result in results:
        if not isinstance(result, Authorization):
            failed += 1
            continue
        decision = result.decisions[-1]
        if decision.reason.startswith("stand-in"):
            stand_in += 1  # the gateway's own stand-in: the card missed its budget
        if decision.latency_ms is None or decision.decided_by.value == "stand_in":
            past += 1
        elif decision.latency_ms > DEADLINE_MS:
            past += 1
        if decision.latency_ms is not None:
            samples.append(float(decision.latency_ms))
    figures = summarize(AUTHORIZATIONS_NAME, samples, past=past, failed=failed)
    figures.gateway_stand_in = stand_in
    return figures


async def measure_authorizations(
    settings: Settings, cards: list[str], rate: float, seconds: float
) -> Latency:
    rng = random.Random(7)

    # One acquirer's clients for the run, their connections kept open.
    async with Acquirer(settings) as client:
        one = authorization_call(client, cards, rng)
        # Warm every card's workflow into the worker's cache first, then let
        # the webhooks of the warm-up drain.
        await open_loop(rate, len(cards) / rate, one)
        await asyncio.sleep(WARM_UP_DRAIN_SECONDS)
        results = await open_loop(rate, seconds, one)
    return summarize_authorizations(results)


@contextlib.asynccontextmanager
async def bench_stack() -> AsyncIterator[Stack]:
    """The whole embedded stack, up in a temporary home on free ports, then down."""
    with tempfile.TemporaryDirectory(prefix="cardflow-bench-") as home:
        stack = Stack(bench_settings(Path(home)))
        # The stack's own start-up runs its own event loop: off this one.
        await asyncio.to_thread(stack.up)
        try:
            yield stack
        finally:
            await asyncio.to_thread(stack.down)


@dataclass
class BenchCards:
    """The stack up, a client of it, and its funded cards."""

    stack: Stack
    client: Client
    cards: list[str]
    setup_seconds: float


@contextlib.asynccontextmanager
async def stack_with_cards(count: int) -> AsyncIterator[BenchCards]:
    """`bench_stack`, with `count` cards issued to funded customers."""
    async with bench_stack() as stack:
        client = await connect(stack.settings)
        started = time.monotonic()
        cards = await issue_cards(client, stack.settings, count)
        yield BenchCards(stack, client, cards, time.monotonic() - started)


async def run(args: argparse.Namespace) -> dict[str, object]:
    async with stack_with_cards(args.cards) as bench:
        settings, client, cards = bench.stack.settings, bench.client, bench.cards
        setup_seconds = bench.setup_seconds
        rounds: list[tuple[Latency, Latency]] = []
        for _ in range(args.repeats):
            floor = await measure_floor(client, args.rate, args.seconds, len(cards))
            auths = await measure_authorizations(settings, cards, args.rate, args.seconds)
            rounds.append((floor, auths))
    floor_p99 = statistics.median(f.p99_ms for f, _ in rounds)
    auth_p99 = statistics.median(a.p99_ms for _, a in rounds)
    return {
        "rate_per_second": args.rate,
        "seconds": args.seconds,
        "cards": len(cards),
        "setup_seconds": round(setup_seconds, 1),
        "rounds": [{"floor": asdict(f), "authorizations": asdict(a)} for f, a in rounds],
        "median_floor_p99_ms": floor_p99,
        "median_authorizations_p50_ms": statistics.median(a.p50_ms for _, a in rounds),
        "median_authorizations_p95_ms": statistics.median(a.p95_ms for _, a in rounds),
        "median_authorizations_p99_ms": auth_p99,
        "past_deadline_total": sum(a.past_deadline for _, a in rounds),
        "gateway_stand_in_total": sum(a.gateway_stand_in for _, a in rounds),
        "failed_total": sum(a.failed for _, a in rounds),
        "p99_ratio_to_floor": round(auth_p99 / floor_p99, 2) if floor_p99 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=30.0, help="authorizations per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--cards", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    # Imported here: the sweep and the overload import this module's helpers.
    from bench import authorization_overload, authorization_sweep

    authorization_sweep.add_arguments(parser)
    authorization_overload.add_arguments(parser)
    args = parser.parse_args()
    if args.cards < 1 or args.rate <= 0 or args.seconds <= 0 or args.repeats < 1:
        parser.error("--cards, --rate, --seconds and --repeats must be positive")
    if args.sweep:
        authorization_sweep.main(parser, args)
        return
    if args.overload:
        authorization_overload.main(parser, args)
        return
    figures = asyncio.run(run(args))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    rounds: list[dict[str, dict[str, Any]]] = figures["rounds"]  # type: ignore[assignment]
    for i, round_ in enumerate(rounds, 1):
        for name in ("floor", "authorizations"):
            f = round_[name]
            print(
                f"round {i} {f['name']:<30} n={f['count']:<5} p50 {f['p50_ms']:>6} ms  "
                f"p95 {f['p95_ms']:>6} ms  p99 {f['p99_ms']:>6} ms  "
                f"past deadline {f['past_deadline']}  gateway stand-in "
                f"{f['gateway_stand_in']}  failed {f['failed']}"
            )
    print(
        f"median p99: authorizations {figures['median_authorizations_p99_ms']} ms, floor "
        f"{figures['median_floor_p99_ms']} ms, ratio {figures['p99_ratio_to_floor']}x; "
        f"past deadline {figures['past_deadline_total']}; gateway stand-ins "
        f"{figures['gateway_stand_in_total']}; at {figures['rate_per_second']}/s "
        f"over {figures['cards']} cards"
    )


if __name__ == "__main__":
    main()
