"""Settlement ingest at scale: the issuer's daily file of --records records
ingested, matched and fixed by `settlement/{provider}/{date}` on the
embedded stack.

Run: .venv/bin/python -m bench.settlement [--records 1000000] [--workers 1]
     [--compare-workers] [--kill-every 30] [--json]

Starts the whole embedded stack in a temporary directory on free ports
(bench.authorizations.bench_stack), then for each run:

  file     the issuer simulator writes the day's file (--records card
           records in gzip members of --member-records) and its manifest is
           fetched: not timed;
  seed     cardflow's own card postings (card_transactions) as the
           simulator says cardflow saw them (its platform view, streamed),
           written with COPY, and the ledger's system accounts opened: not
           timed;
  ingest   the workflow started and waited for: timed, with CPU and peak
           RSS of every process of the stack (workers, simulators,
           PostgreSQL backends, Temporal) sampled meanwhile;
  check    the records by class, the fixes and the items left to operators
           against the simulator's marks, the ledger verified, and a digest
           of every account's balances.

Per stage (from each chunk's own clock, read back from the workflow's
history): read (download and decode), match (stage, classify, read back)
and post (the fixes' ledger batches), each as busy seconds summed over the
chunks and the records per busy second of one chunk.

--workers N runs N worker processes on the providers queue (the stack's own
and N - 1 more). --compare-workers runs the ingest with one and with two, on
two days of the same volume in one stack, and prints both rates.
--kill-every S runs the ingest twice, each on a fresh stack with the same
file: once untouched, once with a worker process of the ingest killed every
S seconds and started again (as bench.chaos does), and prints both ledgers'
balance digests, which must be equal.

Figures are printed, never asserted on; the check's outcome is (exit 1 when
the result is wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import psutil
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.database import create_pool
from activities.ledger import Ledger
from activities.ledger.verify import verify
from activities.providers.settlement_files import SettlementFileClient
from activities.settlement_ingest import INGEST_CHUNK
from bench.process_cpu import Part, deltas, sample
from schemas import accounts
from schemas.money import Currency
from schemas.providers import ISSUER
from schemas.settlement import SettlementFileFormat, SettlementFileManifest
from schemas.settlement_ingest import (
    ChunkResult,
    SettlementIngestPolicy,
    SettlementIngestResult,
)
from starters.devstack import postgres
from starters.devstack.processes import ProcessRecord, spawn, terminate
from starters.devstack.stack import (
    BOT,
    CODEC,
    GATEWAY,
    POSTGRES,
    SIMULATORS,
    TEMPORAL,
    Stack,
    worker_part,
)
from starters.settlement import settlement_input, start
from workers.client import connect
from workers.settings import Settings

DAY = date(2025, 6, 2)
SEED = 26
MEMBER_RECORDS_DEFAULT = 10_000
NEVER_SEEN_BPS = 100
OTHER_AMOUNT_BPS = 50
# Of the clearings, force posts and refunds, those the issuer settles twice.
DUPLICATED_BPS = 20
# Rows written to card_transactions per COPY while seeding.
SEED_COPY_ROWS = 50_000
# How long the issuer may take to write a large day's file.
FILE_WAIT_SECONDS_MAX = 1_800.0
FILE_POLL_SECONDS = 2.0
RSS_SAMPLE_SECONDS = 0.5
DECISION_WAIT_SECONDS = 1
WORKER_READY_SECONDS_MAX = 120.0
RESTART_PAUSE_SECONDS = 1.0
# A chunk of a killed worker resumes elsewhere after this much silence.
KILL_HEARTBEAT_SECONDS = 10
EXTRA_WORKER = "bench-worker-providers"
PROVIDERS = "providers"
CARD_POSTINGS = ("clearing", "force_post", "refund")
SIGN = {"debit": 1, "credit": -1, "none": 0}
BYTES_PER_MB = 1024 * 1024


def say(message: str) -> None:
    """Progress on stderr (stdout carries the figures)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _interrupted(*_: object) -> None:
    # SIGTERM (a timeout) ends the run as Ctrl-C does: the stack is taken down.
    raise KeyboardInterrupt


# ----- what the ingest must find ------------------------------------------------


@dataclass
class Expected:
    """The ingest's outcome, computed from the simulator's marks."""

    classes: Counter[str] = field(default_factory=Counter)
    auto_fixed: int = 0
    operator_items: int = 0
    card_transactions: int = 0


def platform_row(seen: dict[str, Any]) -> tuple[Any, ...]:
    record = seen["record"]
    return (
        record["transaction_id"],
        record["card_id"],
        f"c-{record['card_id']}",
        record["record_type"],
        seen["platform_amount_minor"],
        record["currency"],
        datetime.fromisoformat(record["occurred_at"]),
    )


def expect(seen: dict[str, Any], policy: SettlementIngestPolicy, expected: Expected) -> bool:
    """Counts one record of the platform view; True when cardflow holds a
    card posting for it (a row to seed)."""
    record, view = seen["record"], seen["view"]
    kind = record["record_type"]
    if kind not in CARD_POSTINGS:
        expected.classes[kind] += 1
        return False
    if view == "duplicate":
        # Settled twice by the issuer: all of it left to operators.
        expected.classes["duplicate"] += 1
        expected.operator_items += 1
        return False
    effect = SIGN[record["direction"]] * record["amount_minor"]
    if view == "never_seen":
        expected.classes["missing_in_ledger"] += 1
        delta = effect
    else:
        delta = effect - SIGN[record["direction"]] * seen["platform_amount_minor"]
        expected.classes["matched" if delta == 0 else "amount_mismatch"] += 1
    if delta:
        if abs(delta) < policy.threshold(Currency(record["currency"])):
            expected.auto_fixed += 1
        else:
            expected.operator_items += 1
    return bool(view != "never_seen")


async def seed_platform(
    settings: Settings, pool: asyncpg.Pool, day: date, policy: SettlementIngestPolicy
) -> Expected:
    """cardflow's card postings for the day's file as the simulator says
    cardflow saw them, COPYed in batches while the view streams in."""
    url = f"{settings.providers_base_url}/{ISSUER}/v1/simulate/settlement-files/{day}/platform-view"
    expected = Expected()
    rows: list[tuple[Any, ...]] = []
    columns = [
        "transaction_id",
        "card_id",
        "customer_id",
        "kind",
        "amount_minor",
        "currency",
        "occurred_at",
    ]

    async def flush() -> None:
        await pool.copy_records_to_table("card_transactions", records=rows, columns=columns)
        expected.card_transactions += len(rows)
        rows.clear()

    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http,
        http.stream("GET", url) as response,
    ):
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line:
                continue
            seen = json.loads(line)
            if expect(seen, policy, expected):
                rows.append(platform_row(seen))
                if len(rows) == SEED_COPY_ROWS:
                    await flush()
    if rows:
        await flush()
    ledger = Ledger(pool)
    for currency in Currency:
        for code in (
            accounts.issuer_settlement(currency),
            accounts.suspense_reconciliation(currency),
            accounts.revenue_interchange(currency),
            accounts.expense_issuer_fees(currency),
        ):
            await ledger.open_account(accounts.system_account(code))
    return expected


async def admin(settings: Settings, method: str, path: str, body: Any = None) -> None:
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.request(
            method, f"{settings.providers_base_url}/_admin{path}", json=body
        )
        response.raise_for_status()


async def prepare_file(
    settings: Settings, day: date, records: int, member_records: int
) -> tuple[SettlementFileManifest, float]:
    """The issuer's options for the day's file, and its manifest once written."""
    await admin(
        settings,
        "PUT",
        f"/options/{ISSUER}",
        {
            "settlement_file_volume": records,
            "settlement_file_seed": SEED,
            "settlement_file_member_records": member_records,
            "settlement_file_never_seen_bps": NEVER_SEEN_BPS,
            "settlement_file_other_amount_bps": OTHER_AMOUNT_BPS,
            "settlement_file_duplicated_bps": DUPLICATED_BPS,
        },
    )
    started = time.monotonic()
    client = SettlementFileClient(f"{settings.providers_base_url}/{ISSUER}")
    try:
        while True:
            try:
                manifest = await client.manifest(
                    day, SettlementFileFormat.JSONL, preparing_wait_seconds_max=60.0
                )
                return manifest, time.monotonic() - started
            except Exception:
                if time.monotonic() - started > FILE_WAIT_SECONDS_MAX:
                    raise
                await asyncio.sleep(FILE_POLL_SECONDS)
    finally:
        await client.aclose()


# ----- the stack's processes ------------------------------------------------------


class Workers:
    """The ingest's worker processes on the providers queue: the stack's own
    and extra ones started here, each killed and started again on demand."""

    def __init__(self, stack: Stack, count: int) -> None:
        self.stack = stack
        self.count = count
        self.extra: dict[str, ProcessRecord] = {}

    def _start_extra(self, name: str) -> None:
        self.extra[name] = spawn(
            name,
            [sys.executable, "-m", "starters.cli", "worker", "run", PROVIDERS],
            env=self.stack._children_env(),
            log_path=self.stack.logs / f"{name}.log",
            address=self.stack.settings.task_queues.providers,
        )

    def up(self) -> None:
        for index in range(2, self.count + 1):
            self._start_extra(f"{EXTRA_WORKER}-{index}")
        for name in self.extra:
            self._wait_polling(name)

    def _wait_polling(self, name: str) -> None:
        log = self.stack.logs / f"{name}.log"
        deadline = time.monotonic() + WORKER_READY_SECONDS_MAX
        while time.monotonic() < deadline:
            if log.exists() and log.read_text(errors="replace").count("polling") >= 1:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not start polling; see {log}")

    def down(self) -> None:
        for record in self.extra.values():
            terminate(record.pid)
        self.extra.clear()

    def pids(self) -> dict[str, int]:
        found = {name: record.pid for name, record in self.extra.items() if record.is_alive()}
        return found

    def kill_and_restart(self, part: str) -> None:
        """Kill a part (SIGKILL, its children first) and start it again."""
        if part in self.extra:
            pid: int | None = self.extra[part].pid
        else:
            record = self.stack.run.alive(part)
            pid = record.pid if record is not None else None
        if pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                process = psutil.Process(pid)
                for child in process.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
                process.kill()
                process.wait(timeout=10)
        time.sleep(RESTART_PAUSE_SECONDS)
        if part in self.extra:
            # Its log is appended to: the next "polling" line is the new one's.
            log = self.stack.logs / f"{part}.log"
            polled = log.read_text(errors="replace").count("polling") if log.exists() else 0
            self._start_extra(part)
            deadline = time.monotonic() + WORKER_READY_SECONDS_MAX
            while time.monotonic() < deadline:
                if log.read_text(errors="replace").count("polling") > polled:
                    return
                time.sleep(0.2)
        else:
            self.stack._up_worker(part.removeprefix("worker-"))

    def kill_order(self) -> Iterator[str]:
        """Every worker the ingest runs on, in turn: the chunks' (providers),
        the workflow's, the day totals' (ledger)."""
        providers = [worker_part(PROVIDERS), *self.extra]
        turn = 0
        while True:
            for other in (worker_part("workflows"), worker_part("ledger")):
                yield providers[turn % len(providers)]
                turn += 1
                yield other


STACK_PARTS = (
    TEMPORAL,
    CODEC,
    SIMULATORS,
    GATEWAY,
    BOT,
    *(worker_part(kind) for kind in ("workflows", "ledger", PROVIDERS)),
)


def stack_pids(stack: Stack, workers: Workers) -> dict[str, int]:
    pids: dict[str, int] = {}
    for name in STACK_PARTS:
        record = stack.run.alive(name)
        if record is not None:
            pids[name] = record.pid
    pg = postgres.running_pid(stack.pg_data)
    if pg is not None:
        pids[POSTGRES] = pg
    pids.update(workers.pids())
    return pids


def _high_water_bytes(pid: int) -> int:
    """A process's peak resident set so far (VmHWM), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class PeakMemory:
    """Peak RSS of every process of the stack (a part's children included:
    PostgreSQL's backends, the CLI's server), sampled in a thread while the
    ingest runs; by part, the largest single process."""

    def __init__(self, stack: Stack, workers: Workers) -> None:
        self.stack, self.workers = stack, workers
        self.peak_bytes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for name, pid in stack_pids(self.stack, self.workers).items():
            family = [pid]
            with contextlib.suppress(psutil.Error):
                family += [child.pid for child in psutil.Process(pid).children(recursive=True)]
            for member in family:
                peak = _high_water_bytes(member)
                if peak > self.peak_bytes.get(name, 0):
                    self.peak_bytes[name] = peak

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_part_mb(self) -> dict[str, float]:
        return {
            name: round(peak / BYTES_PER_MB, 1) for name, peak in sorted(self.peak_bytes.items())
        }


def cpu_parts(stack: Stack, workers: Workers) -> list[Part]:
    return [Part(name, pid) for name, pid in stack_pids(stack, workers).items()]


# ----- reading the result back ------------------------------------------------------


@dataclass
class ChunkFigures:
    result: ChunkResult
    worker: str


async def chunk_results(client: Client, workflow_id: str) -> list[ChunkFigures]:
    """Every completed ingest_chunk's result and the worker that ran it, from
    the workflow's history, run after run (it continues as new): from the
    latest run back to the first."""
    found: list[ChunkFigures] = []
    run_id: str | None = None
    while True:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        run_id = None
        kinds: dict[int, str] = {}
        identities: dict[int, str] = {}
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                attributes = event.workflow_execution_started_event_attributes
                run_id = attributes.continued_execution_run_id or None
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled = event.activity_task_scheduled_event_attributes
                kinds[event.event_id] = scheduled.activity_type.name
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = event.activity_task_started_event_attributes
                identities[started.scheduled_event_id] = started.identity
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                completed = event.activity_task_completed_event_attributes
                if kinds.get(completed.scheduled_event_id) != INGEST_CHUNK:
                    continue
                [result] = await client.data_converter.decode(
                    completed.result.payloads, [ChunkResult]
                )
                worker = identities.get(completed.scheduled_event_id, "?")
                found.append(ChunkFigures(result, worker.split("@")[0]))
        if run_id is None:
            return found


_BALANCES_SQL = """
SELECT a.code, sum(b.debits_posted)::bigint, sum(b.credits_posted)::bigint,
       sum(b.debits_pending)::bigint, sum(b.credits_pending)::bigint
FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id
GROUP BY a.code ORDER BY a.code
"""


async def balance_digest(pool: asyncpg.Pool) -> tuple[str, int]:
    """sha256 of every account's balances (code, debits, credits, pending
    both ways, one line each in code order), and the accounts' count."""
    digest = hashlib.sha256()
    rows = await pool.fetch(_BALANCES_SQL)
    for row in rows:
        digest.update(("\t".join(str(value) for value in row) + "\n").encode())
    return digest.hexdigest(), len(rows)


def problems_of(
    result: SettlementIngestResult, expected: Expected, manifest: SettlementFileManifest
) -> list[str]:
    problems = []
    found = {kind.value: count.records for kind, count in result.counts.classes.items()}
    if found != dict(expected.classes):
        problems.append(f"records by class {found}, expected {dict(expected.classes)}")
    if result.counts.records != manifest.record_count:
        problems.append(f"{result.counts.records} records of {manifest.record_count}")
    if result.counts.auto_fixed != expected.auto_fixed:
        problems.append(f"{result.counts.auto_fixed} fixed, expected {expected.auto_fixed}")
    if result.counts.operator_items != expected.operator_items:
        problems.append(
            f"{result.counts.operator_items} for operators, expected {expected.operator_items}"
        )
    return problems


# ----- one run -----------------------------------------------------------------------


@dataclass
class RunOptions:
    records: int
    member_records: int
    workers: int
    policy: SettlementIngestPolicy
    kill_every_seconds: float | None = None


async def killer(
    workers: Workers, every_seconds: float, done: asyncio.Event, killed: list[str]
) -> None:
    order = workers.kill_order()
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), every_seconds)
        if done.is_set():
            return
        part = next(order)
        await asyncio.to_thread(workers.kill_and_restart, part)
        killed.append(part)


async def ingest_day(
    stack: Stack, client: Client, pool: asyncpg.Pool, day: date, options: RunOptions
) -> dict[str, Any]:
    """One day's file written, seeded, ingested with `options.workers`
    providers workers (and kills, if asked), checked; its figures."""
    settings = stack.settings
    say(f"{day}: the issuer writes {options.records} records")
    manifest, file_seconds = await prepare_file(
        settings, day, options.records, options.member_records
    )
    say(f"{day}: written in {file_seconds:.0f} s; seeding card_transactions")
    seed_started = time.monotonic()
    expected = await seed_platform(settings, pool, day, options.policy)
    seed_seconds = time.monotonic() - seed_started
    say(f"{day}: seeded {expected.card_transactions} in {seed_seconds:.0f} s; ingesting")
    await pool.execute("ANALYZE card_transactions")
    workers = Workers(stack, options.workers)
    await asyncio.to_thread(workers.up)
    killed: list[str] = []
    try:
        parts = cpu_parts(stack, workers)
        cpu_before = sample(parts)
        with PeakMemory(stack, workers) as memory:
            started = time.monotonic()
            handle = await start(
                client,
                settings.task_queues,
                settlement_input(settings.task_queues, day, options.policy),
            )
            done = asyncio.Event()
            kills = None
            if options.kill_every_seconds:
                kills = asyncio.ensure_future(
                    killer(workers, options.kill_every_seconds, done, killed)
                )
            try:
                result = await handle.result()
            finally:
                done.set()
                if kills is not None:
                    await kills
            seconds = time.monotonic() - started
        say(f"{day}: ingested in {seconds:.1f} s; checking")
        cpu = deltas(cpu_before, sample(cpu_parts(stack, workers))) if not killed else {}
    finally:
        await asyncio.to_thread(workers.down)
    chunks = await chunk_results(client, handle.id)
    problems = problems_of(result, expected, manifest)
    violations = await verify(pool)
    problems += [f"ledger: {violation}" for violation in violations]
    fixes_in_ledger = await pool.fetchval(
        "SELECT count(*) FROM ledger_transfers t JOIN settlement_records r"
        " ON r.fix_key = t.idempotency_key WHERE r.settlement_date = $1",
        day,
    )
    if fixes_in_ledger != expected.auto_fixed:
        problems.append(f"{fixes_in_ledger} fixes in the ledger, expected {expected.auto_fixed}")
    digest, accounts_count = await balance_digest(pool)
    records = result.counts.records
    stage_ms = {
        "read": sum(chunk.result.read_ms for chunk in chunks),
        "match": sum(chunk.result.match_ms for chunk in chunks),
        "post": sum(chunk.result.post_ms for chunk in chunks),
    }
    by_worker = Counter(chunk.worker for chunk in chunks)
    peak = memory.by_part_mb()
    return {
        "records": records,
        "seconds": round(seconds, 1),
        "records_per_second": round(records / seconds) if seconds else 0,
        "peak_rss_mb": max(peak.values(), default=0.0),
        "peak_rss_mb_by_part": peak,
        "stages": {
            name: {
                "busy_seconds": round(ms / 1000, 1),
                "records_per_busy_second": round(records * 1000 / ms) if ms else None,
            }
            for name, ms in stage_ms.items()
        },
        "workers": options.workers,
        "chunks": result.chunks,
        "chunks_in_flight": options.policy.chunks_in_flight,
        "batch_records": options.policy.batch_records,
        "chunks_by_worker": dict(sorted(by_worker.items())),
        "cpu_seconds_by_part": {name: round(value, 1) for name, value in sorted(cpu.items())},
        "file": {
            "settlement_date": day.isoformat(),
            "bytes": manifest.byte_size,
            "members": len(manifest.members),
            "written_seconds": round(file_seconds, 1),
        },
        "seed": {
            "card_transactions": expected.card_transactions,
            "seconds": round(seed_seconds, 1),
        },
        "counts": {kind.value: count.records for kind, count in result.counts.classes.items()},
        "auto_fixed": result.counts.auto_fixed,
        "operator_items": result.counts.operator_items,
        "drift_rate_bps": result.drift_rate_bps,
        "kills": killed,
        "balance_digest": digest,
        "accounts": accounts_count,
        "correct": not problems,
        "problems": problems,
    }


@contextlib.asynccontextmanager
async def running_stack() -> AsyncIterator[tuple[Stack, Client, asyncpg.Pool]]:
    from bench.authorizations import bench_stack

    async with bench_stack() as stack:
        client = await connect(stack.settings)
        pool = await create_pool(stack.settings.effective_database_url, size_max=4)
        try:
            yield stack, client, pool
        finally:
            await pool.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    policy = SettlementIngestPolicy(
        batch_records=args.batch_records,
        chunks_in_flight=args.chunks_in_flight,
        chunk_heartbeat_seconds=KILL_HEARTBEAT_SECONDS,
        # The items over the threshold are an operator's to decide, after the
        # ingest: the bench waits for none (they are flagged undecided).
        decision_wait_seconds=DECISION_WAIT_SECONDS,
    )

    def options(workers: int, kill_every: float | None = None) -> RunOptions:
        return RunOptions(args.records, args.member_records, workers, policy, kill_every)

    if args.kill_every:
        async with running_stack() as (stack, client, pool):
            calm = await ingest_day(stack, client, pool, DAY, options(args.workers))
        async with running_stack() as (stack, client, pool):
            chaos = await ingest_day(
                stack, client, pool, DAY, options(args.workers, args.kill_every)
            )
        same = calm["balance_digest"] == chaos["balance_digest"]
        return {
            **chaos,
            "without_kills": calm,
            "balance_digest_without_kills": calm["balance_digest"],
            "balance_digest_with_kills": chaos["balance_digest"],
            "same_ledger": same,
            "correct": calm["correct"] and chaos["correct"] and same,
        }
    async with running_stack() as (stack, client, pool):
        if not args.compare_workers:
            return await ingest_day(stack, client, pool, DAY, options(args.workers))
        runs = []
        for offset, workers in enumerate((1, 2)):
            day = DAY + timedelta(days=offset)
            runs.append(await ingest_day(stack, client, pool, day, options(workers)))
    one, two = runs
    return {
        **one,
        "compare_workers": [
            {
                "workers": figures["workers"],
                "seconds": figures["seconds"],
                "records_per_second": figures["records_per_second"],
                "chunks_by_worker": figures["chunks_by_worker"],
            }
            for figures in runs
        ],
        "speedup": round(two["records_per_second"] / one["records_per_second"], 2)
        if one["records_per_second"]
        else None,
        "runs": runs,
        "peak_rss_mb": max(figures["peak_rss_mb"] for figures in runs),
        "correct": all(figures["correct"] for figures in runs),
    }


def print_figures(figures: dict[str, Any]) -> None:
    print(
        f"{figures['records']} records in {figures['seconds']} s:"
        f" {figures['records_per_second']} records/s with {figures['workers']} providers"
        f" worker(s), {figures['chunks']} chunks ({figures['chunks_in_flight']} in flight)"
    )
    for name, stage in figures["stages"].items():
        print(
            f"  {name:<6} busy {stage['busy_seconds']:>7} s"
            f"  {stage['records_per_busy_second']} records per busy second"
        )
    print(f"  chunks by worker: {figures['chunks_by_worker']}")
    print(f"  peak RSS {figures['peak_rss_mb']} MB; by part {figures['peak_rss_mb_by_part']}")
    if figures["cpu_seconds_by_part"]:
        print(f"  CPU seconds by part {figures['cpu_seconds_by_part']}")
    print(
        f"  {figures['auto_fixed']} fixed, {figures['operator_items']} for operators,"
        f" drift {figures['drift_rate_bps']} bps; balances {figures['balance_digest'][:16]}"
    )
    print(f"  correct: {figures['correct']} {figures['problems'] or ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--member-records", type=int, default=MEMBER_RECORDS_DEFAULT)
    parser.add_argument("--workers", type=int, default=1, help="providers worker processes")
    parser.add_argument("--compare-workers", action="store_true", help="one, then two workers")
    parser.add_argument("--kill-every", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--batch-records", type=int, default=SettlementIngestPolicy().batch_records)
    parser.add_argument(
        "--chunks-in-flight", type=int, default=SettlementIngestPolicy().chunks_in_flight
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    if args.records < 1 or args.workers < 1:
        parser.error("--records and --workers must be positive")
    figures = asyncio.run(run(args))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for one in figures.get("runs", [figures]):
            print_figures(one)
        if "compare_workers" in figures:
            rates = ", ".join(
                f"{run['workers']} worker(s) {run['records_per_second']} records/s"
                for run in figures["compare_workers"]
            )
            print(f"scale-out: {rates}; x{figures['speedup']}")
        if "without_kills" in figures:
            print_figures(figures["without_kills"])
            print(
                f"balances without kills {figures['balance_digest_without_kills']}\n"
                f"balances with kills    {figures['balance_digest_with_kills']}\n"
                f"same ledger: {figures['same_ledger']}"
            )
    if not figures["correct"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
