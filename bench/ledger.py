"""Ledger throughput and latency, each figure also as a ratio to a bare-commit ceiling.

Run: .venv/bin/python -m bench.ledger [--connections N] [--seconds S] [--json]

Starts its own embedded PostgreSQL in a temporary directory (or uses
DATABASE_URL, into a scratch database it creates and drops), applies the
migrations, then measures, in one run on the same server:

  ceiling      bare one-row UPDATE commits, one row per connection
  50 accounts  single transfers between random pairs of 50 constrained wallets
  2 accounts   single transfers back and forth between 2 constrained wallets
  hot account  single transfers from 50 wallets into one striped system account
  batches      atomic batches of 8,000 transfers over 50 wallets
  no events    the single transfers again with the customer-events trigger
               off (each wallet has an owner, so with it on every transfer
               writes an event for each of its two wallets): its cost

All constraints and idempotency are on: every transfer has its own key, is
checked against the wallet's available balance inside the lock, and is
recorded with its payload hash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg

from activities.database import create_pool
from activities.ledger import Ledger
from activities.ledger.coalesce import TransferCoalescer
from activities.migrate import migrate
from schemas.ledger import BATCH_SIZE_MAX, AccountSpec, TransferOutcome, TransferRequest
from schemas.money import Currency
from starters.devstack import postgres
from starters.devstack.processes import free_port

# activities/migrations/0021_customer_events.sql
EVENTS_TRIGGER = "ledger_transfers_customer_events"  # and its WHEN
CARD_KEY_PREFIX = "card/bench/auth/"
FUNDING_MINOR = 10**15
HOT_ACCOUNT_SLOTS = 16
BATCHES_IN_FLIGHT = 2


@dataclass
class Figure:
    name: str
    rate_per_second: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio_to_ceiling: float = 0.0


def pick_two(rng: random.Random, codes: list[str]) -> tuple[str, str]:
    debit, credit = rng.sample(codes, 2)
    return debit, credit


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed_loop(
    connections: int, seconds: float, operation: Callable[[int], Awaitable[int]]
) -> tuple[float, list[float]]:
    """Run `operation(worker)` in `connections` loops for `seconds`; return rate and latencies."""
    latencies: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            # Await first, then add: `done += await ...` would read `done`
            # before the await and lose the other loops' increments.
            finished = await operation(worker)
            done += finished
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(loop(worker) for worker in range(connections)))
    return done / (time.perf_counter() - started), latencies


async def measure_ceiling(pool: asyncpg.Pool, connections: int, seconds: float) -> Figure:
    await pool.execute(
        "CREATE TABLE bench_ceiling (id integer PRIMARY KEY, n bigint NOT NULL);"
        "INSERT INTO bench_ceiling SELECT g, 0 FROM generate_series(0, 255) g"
    )

    async def update(worker: int) -> int:
        await pool.execute("UPDATE bench_ceiling SET n = n + 1 WHERE id = $1", worker)
        return 1

    rate, latencies = await timed_loop(connections, seconds, update)
    return Figure(
        "bare one-row UPDATE (ceiling)",
        rate,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        1.0,
    )


async def open_wallets(ledger: Ledger, prefix: str, count: int) -> list[str]:
    source = f"{prefix}:funding"
    await ledger.open_account(AccountSpec(code=source, currency=Currency.USD, kind="bank"))
    codes = [f"{prefix}:wallet:{i}" for i in range(count)]
    for code in codes:
        await ledger.open_account(
            AccountSpec(
                code=code,
                currency=Currency.USD,
                kind="wallet",
                owner_id=code.replace(":", "-"),
                debits_must_not_exceed_credits=True,
            )
        )
    await ledger.submit(
        [
            TransferRequest(
                key=f"{prefix}:fund:{code}",
                debit=source,
                credit=code,
                amount_minor=FUNDING_MINOR,
                currency=Currency.USD,
            )
            for code in codes
        ]
    )
    return codes


async def measure_transfers(
    submit: Callable[[TransferRequest], Awaitable[TransferOutcome]],
    name: str,
    pairs: Callable[[random.Random], tuple[str, str]],
    connections: int,
    seconds: float,
    key_prefix: str = "",
) -> Figure:
    run = key_prefix + uuid.uuid4().hex[:8]
    rngs = [random.Random(worker) for worker in range(connections)]
    counters = [0] * connections

    async def one(worker: int) -> int:
        debit, credit = pairs(rngs[worker])
        counters[worker] += 1
        outcome = await submit(
            TransferRequest(
                key=f"{run}:{worker}:{counters[worker]}",
                debit=debit,
                credit=credit,
                amount_minor=rngs[worker].randint(1, 10_000),
                currency=Currency.USD,
            )
        )
        assert outcome.accepted, outcome.detail
        return 1

    rate, latencies = await timed_loop(connections, seconds, one)
    return Figure(name, rate, percentile(latencies, 0.5), percentile(latencies, 0.99))


async def measure_batches(ledger: Ledger, wallets: list[str], seconds: float) -> Figure:
    rng = random.Random(7)
    run = uuid.uuid4().hex[:8]
    made = 0

    def next_batch() -> list[TransferRequest]:
        nonlocal made
        made += 1
        batch = []
        for index in range(BATCH_SIZE_MAX):
            debit, credit = rng.sample(wallets, 2)
            batch.append(
                TransferRequest.model_construct(
                    key=f"{run}:{made}:{index}",
                    debit=debit,
                    credit=credit,
                    amount_minor=rng.randint(1, 10_000),
                    currency=Currency.USD,
                )
            )
        return batch

    # Requests are built before the clock starts: a caller has them already.
    ready = [next_batch() for _ in range(max(4, int(seconds * 4)))]
    latencies: list[float] = []

    async def feed() -> None:
        while ready:
            batch = ready.pop()
            started = time.perf_counter()
            outcomes = await ledger.submit(batch)
            latencies.append((time.perf_counter() - started) * 1000)
            assert all(o.accepted for o in outcomes)

    total = sum(len(batch) for batch in ready)
    started = time.perf_counter()
    await asyncio.gather(*(feed() for _ in range(BATCHES_IN_FLIGHT)))
    rate = total / (time.perf_counter() - started)
    return Figure(
        f"batches of {BATCH_SIZE_MAX}",
        rate,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
    )


async def run(connections: int, seconds: float, database_url: str) -> list[Figure]:
    pool = await create_pool(database_url, size_max=connections + BATCHES_IN_FLIGHT)
    try:
        ledger = Ledger(pool)
        ceiling = await measure_ceiling(pool, connections, seconds)
        fifty = await open_wallets(ledger, "fifty", 50)
        two = await open_wallets(ledger, "two", 2)
        hot = "issuer:settlement:USD"
        await ledger.open_account(
            AccountSpec(
                code=hot, currency=Currency.USD, kind="settlement", balance_slots=HOT_ACCOUNT_SLOTS
            )
        )
        workloads: list[tuple[str, Callable[[random.Random], tuple[str, str]]]] = [
            ("50 accounts", lambda r: pick_two(r, fifty)),
            ("2 accounts", lambda r: (two[0], two[1]) if r.random() < 0.5 else (two[1], two[0])),
            ("1 hot account", lambda r: (r.choice(fifty), hot)),
        ]
        figures = [ceiling]
        # As the ledger worker runs them: concurrent calls coalesced into batches.
        coalescer = TransferCoalescer(ledger)
        for label, pairs in workloads:
            figures.append(
                await measure_transfers(
                    coalescer.transfer, f"single transfers, {label}", pairs, connections, seconds
                )
            )
        # For comparison: one database call per transfer.
        for label, pairs in workloads:
            figures.append(
                await measure_transfers(
                    ledger.transfer, f"  one call each, {label}", pairs, connections, seconds
                )
            )
        figures.append(await measure_batches(ledger, fifty, seconds))
        # A card's own transfers (its keys start card/), which the trigger
        # looks at and writes no event for: the cost it adds to a card's hold.
        label, pairs = workloads[0]
        figures.append(
            await measure_transfers(
                ledger.transfer,
                f"card keys, one call, {label}",
                pairs,
                connections,
                seconds,
                key_prefix=CARD_KEY_PREFIX,
            )
        )
        # Side by side: the same transfers with the trigger off.
        await pool.execute(f"ALTER TABLE ledger_transfers DISABLE TRIGGER {EVENTS_TRIGGER}")
        try:
            for call, name, prefix in (
                (coalescer.transfer, f"no events, single, {label}", ""),
                (ledger.transfer, f"no events, one call, {label}", ""),
                (ledger.transfer, f"no trigger, card keys, one call, {label}", CARD_KEY_PREFIX),
            ):
                figures.append(
                    await measure_transfers(
                        call, name, pairs, connections, seconds, key_prefix=prefix
                    )
                )
        finally:
            await pool.execute(f"ALTER TABLE ledger_transfers ENABLE TRIGGER {EVENTS_TRIGGER}")
    finally:
        await pool.close()
    for figure in figures:
        figure.ratio_to_ceiling = figure.rate_per_second / ceiling.rate_per_second
    return figures


def print_table(figures: list[Figure], connections: int) -> None:
    print(f"ledger benchmark: {connections} connections, {os.cpu_count()} CPUs")
    print(f"{'workload':<38}{'rate/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x ceiling':>11}")
    for f in figures:
        p50 = f"{f.p50_ms:.2f}" if f.p50_ms is not None else "-"
        p99 = f"{f.p99_ms:.2f}" if f.p99_ms is not None else "-"
        print(f"{f.name:<38}{f.rate_per_second:>10.0f}{p50:>9}{p99:>9}{f.ratio_to_ceiling:>11.2f}")
    fifty = figures[1].rate_per_second
    print(
        f"single transfers: 2 accounts / 50 accounts {figures[2].rate_per_second / fifty:.2f}, "
        f"hot account / 50 accounts {figures[3].rate_per_second / fifty:.2f}"
    )
    by_name = {f.name: f for f in figures}
    with_events = (
        by_name["single transfers, 50 accounts"],
        by_name["  one call each, 50 accounts"],
    )
    without = (
        by_name["no events, single, 50 accounts"],
        by_name["no events, one call, 50 accounts"],
    )
    card = by_name["card keys, one call, 50 accounts"]
    card_without = by_name["no trigger, card keys, one call, 50 accounts"]
    print(
        "with customer events / without, 50 accounts: coalesced "
        f"{with_events[0].rate_per_second / without[0].rate_per_second:.2f}, one call each "
        f"{with_events[1].rate_per_second / without[1].rate_per_second:.2f}; card keys (no "
        f"event written) {card.rate_per_second / card_without.rate_per_second:.2f}"
    )


async def main_async(connections: int, seconds: float, as_json: bool) -> None:
    external = os.environ.get("DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="cardflow-bench-") as scratch:
        data_dir, log_path = Path(scratch) / "data", Path(scratch) / "postgres.log"
        if external:
            server_url = external.rsplit("/", 1)[0] + "/postgres"
        else:
            port = free_port()
            password = secrets.token_urlsafe(32)
            postgres.start(
                data_dir, host="127.0.0.1", port=port, log_path=log_path, password=password
            )
            server_url = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
        database = f"bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(server_url)
        await admin.execute(f'CREATE DATABASE "{database}"')
        database_url = server_url.rsplit("/", 1)[0] + f"/{database}"
        try:
            await migrate(database_url)
            figures = await run(connections, seconds, database_url)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.close()
            if not external:
                postgres.stop(data_dir, log_path=log_path)
    if as_json:
        print(
            json.dumps(
                {
                    "connections": connections,
                    "seconds_per_workload": seconds,
                    "figures": [asdict(f) for f in figures],
                }
            )
        )
    else:
        print_table(figures, connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args()
    asyncio.run(main_async(arguments.connections, arguments.seconds, arguments.json))


if __name__ == "__main__":
    main()
