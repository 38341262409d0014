"""The metrics cardflow records besides the Temporal SDK's own.

They go through the Temporal runtime's meter, so each process serves them on
the same Prometheus endpoint as the SDK's metrics (`workers.telemetry`).
Inside an activity the meter is the activity's (it adds the namespace, task
queue and activity type); elsewhere it is the process's runtime meter.

Names as Prometheus shows them (counters get `_total`, durations are seconds):

| metric | kind | labels |
|---|---|---|
| `cardflow_ledger_posting_seconds` | histogram | operation, outcome |
| `cardflow_ledger_open_holds` | gauge | currency |
| `cardflow_ledger_open_holds_minor` | gauge | currency |
| `cardflow_authorization_decisions_total` | counter | decision, source |
| `cardflow_authorization_seconds` | histogram | decision, source |
| `cardflow_reconciliation_drift_minor` | gauge | provider, currency |
| `cardflow_reconciliation_unexplained_minor` | gauge | provider, currency |
| `cardflow_webhook_deliveries_total` | counter | provider, outcome |
| `cardflow_webhook_rejections_total` | counter | provider, reason |
| `cardflow_ledger_rejections_total` | counter | operation, reason |
| `cardflow_provider_call_seconds` | histogram | provider, outcome |
| `cardflow_reconciliation_records` | gauge | provider, result |
| `cardflow_program_coverage_bps` | gauge | currency |
| `cardflow_program_coverage_threshold_bps` | gauge | currency |
| `cardflow_bank_drift_lines` | gauge | currency, kind |
| `cardflow_custody_missing_minor` | gauge | currency |
| `cardflow_program_funding_last_run_timestamp_seconds` | gauge | |
| `cardflow_fraud_cases_opened_total` | counter | auto_freeze |
| `cardflow_fraud_auto_freezes_total` | counter | |
| `cardflow_fraud_decisions_total` | counter | decision |
| `cardflow_rule_declines_total` | counter | rule |
| `cardflow_rule_shadow_declines_total` | counter | rule |
| `cardflow_settlement_records` | gauge | provider, class |
| `cardflow_settlement_drift_rate_bps` | gauge | provider, class |
| `cardflow_settlement_drift_alert_bps` | gauge | provider |
| `cardflow_settlement_last_ingest_timestamp_seconds` | gauge | provider |

The authorization rules' counters are recorded by the card's workflow (its
worker's meter, never while replaying): each active rule's declines, and
what each shadow rule would have declined.

The workflows worker's census (`workers.census`) adds the processes' own
gauges: `cardflow_processes`, `cardflow_operator_waits`,
`cardflow_operator_wait_oldest_seconds`, the schedules' and its own time.

The program-funding run's gauges are set by whichever ledger worker records
the run, so a replica that recorded an older run keeps its older values: the
rules read them from the replica with the latest run (its timestamp gauge).

The settlement ingest's gauges are its last run's: every record class (0
included) and each drift class's rate of the card postings, the rate its
policy alerts at (class `all` is the day's whole drift), set by the ledger
worker that records the run; the rules read the replica with the latest
run, as they do program funding's.

A decision is timed against the gateway's budget (1.5 s of the issuer's 2 s)
with buckets fine enough to tell 1.25 s from 1.5 s (AUTHORIZATION_BUCKETS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import timedelta

import asyncpg
from temporalio import activity
from temporalio.common import MetricMeter

from schemas.money import Currency

LEDGER_POSTING_SECONDS = "cardflow_ledger_posting_seconds"
LEDGER_OPEN_HOLDS = "cardflow_ledger_open_holds"
LEDGER_OPEN_HOLDS_MINOR = "cardflow_ledger_open_holds_minor"
AUTHORIZATION_DECISIONS = "cardflow_authorization_decisions"
AUTHORIZATION_SECONDS = "cardflow_authorization_seconds"
RECONCILIATION_DRIFT_MINOR = "cardflow_reconciliation_drift_minor"
RECONCILIATION_UNEXPLAINED_MINOR = "cardflow_reconciliation_unexplained_minor"
WEBHOOK_DELIVERIES = "cardflow_webhook_deliveries"
WEBHOOK_REJECTIONS = "cardflow_webhook_rejections"
LEDGER_REJECTIONS = "cardflow_ledger_rejections"
PROVIDER_CALL_SECONDS = "cardflow_provider_call_seconds"
RECONCILIATION_RECORDS = "cardflow_reconciliation_records"
PROGRAM_COVERAGE_BPS = "cardflow_program_coverage_bps"
PROGRAM_COVERAGE_THRESHOLD_BPS = "cardflow_program_coverage_threshold_bps"
BANK_DRIFT_LINES = "cardflow_bank_drift_lines"
CUSTODY_MISSING_MINOR = "cardflow_custody_missing_minor"
PROGRAM_FUNDING_LAST_RUN = "cardflow_program_funding_last_run_timestamp_seconds"
FRAUD_CASES_OPENED = "cardflow_fraud_cases_opened"
FRAUD_AUTO_FREEZES = "cardflow_fraud_auto_freezes"
FRAUD_DECISIONS = "cardflow_fraud_decisions"
SETTLEMENT_RECORDS = "cardflow_settlement_records"
SETTLEMENT_DRIFT_RATE_BPS = "cardflow_settlement_drift_rate_bps"
SETTLEMENT_DRIFT_ALERT_BPS = "cardflow_settlement_drift_alert_bps"
SETTLEMENT_LAST_INGEST = "cardflow_settlement_last_ingest_timestamp_seconds"
# The drift rate of all drift classes together, beside each class's.
SETTLEMENT_DRIFT_ALL = "all"

# The histogram buckets, in seconds, of the durations an alert compares with
# a budget: Temporal's defaults jump from 1 s to 2.5 s.
AUTHORIZATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
PROVIDER_CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
HISTOGRAM_BUCKETS = {
    AUTHORIZATION_SECONDS: AUTHORIZATION_BUCKETS,
    PROVIDER_CALL_SECONDS: PROVIDER_CALL_BUCKETS,
}

# Every name above, as a scrape of /metrics shows it.
EXPOSED_NAMES = (
    LEDGER_POSTING_SECONDS,
    LEDGER_OPEN_HOLDS,
    LEDGER_OPEN_HOLDS_MINOR,
    f"{AUTHORIZATION_DECISIONS}_total",
    AUTHORIZATION_SECONDS,
    RECONCILIATION_DRIFT_MINOR,
    RECONCILIATION_UNEXPLAINED_MINOR,
    f"{WEBHOOK_DELIVERIES}_total",
    f"{WEBHOOK_REJECTIONS}_total",
    f"{LEDGER_REJECTIONS}_total",
    PROVIDER_CALL_SECONDS,
    RECONCILIATION_RECORDS,
    PROGRAM_COVERAGE_BPS,
    PROGRAM_COVERAGE_THRESHOLD_BPS,
    BANK_DRIFT_LINES,
    CUSTODY_MISSING_MINOR,
    PROGRAM_FUNDING_LAST_RUN,
    f"{FRAUD_CASES_OPENED}_total",
    f"{FRAUD_AUTO_FREEZES}_total",
    f"{FRAUD_DECISIONS}_total",
    SETTLEMENT_RECORDS,
    SETTLEMENT_DRIFT_RATE_BPS,
    SETTLEMENT_DRIFT_ALERT_BPS,
    SETTLEMENT_LAST_INGEST,
)
# Counted by fraud cases, which the demo does not open.
FRAUD_NAMES = (
    f"{FRAUD_CASES_OPENED}_total",
    f"{FRAUD_AUTO_FREEZES}_total",
    f"{FRAUD_DECISIONS}_total",
)
# Set by a program-funding run, which the demo does not make.
PROGRAM_FUNDING_NAMES = (
    PROGRAM_COVERAGE_BPS,
    PROGRAM_COVERAGE_THRESHOLD_BPS,
    BANK_DRIFT_LINES,
    CUSTODY_MISSING_MINOR,
    PROGRAM_FUNDING_LAST_RUN,
)
# Set by a settlement ingest, which the demo does not run.
SETTLEMENT_NAMES = (
    SETTLEMENT_RECORDS,
    SETTLEMENT_DRIFT_RATE_BPS,
    SETTLEMENT_DRIFT_ALERT_BPS,
    SETTLEMENT_LAST_INGEST,
)

# Open holds are counted from the ledger itself, by each ledger worker, this often.
OPEN_HOLDS_SAMPLE_SECONDS = 10.0

log = logging.getLogger("cardflow.metrics")


def _meter(fallback: MetricMeter | None = None) -> MetricMeter:
    if activity.in_activity():
        return activity.metric_meter()
    return fallback or MetricMeter.noop


@contextlib.contextmanager
def timed_posting(operation: str) -> Iterator[dict[str, str]]:
    """Record how long a ledger operation took; the caller may set `outcome`."""
    labels = {"operation": operation, "outcome": "error"}
    started = time.perf_counter()
    try:
        yield labels
    finally:
        elapsed = timedelta(seconds=time.perf_counter() - started)
        _meter().create_histogram_timedelta(
            LEDGER_POSTING_SECONDS, "Time to post a ledger operation, lock to commit", "s"
        ).record(elapsed, labels)


def record_ledger_rejection(operation: str, reason: str) -> None:
    """A posting the ledger refused (counted once: not its replays)."""
    _meter().create_counter(
        LEDGER_REJECTIONS, "Ledger postings refused, by operation and reason"
    ).add(1, {"operation": operation, "reason": reason})


def record_provider_call(
    provider: str, outcome: str, elapsed: timedelta, meter: MetricMeter | None = None
) -> None:
    """One call to a provider: `ok`, or the error type it was classified as;
    outside an activity on `meter` (the gateway's), else not at all."""
    _meter(meter).create_histogram_timedelta(
        PROVIDER_CALL_SECONDS, "Provider API calls, retries in the call included", "s"
    ).record(elapsed, {"provider": provider, "outcome": outcome})


def record_reconciliation_records(provider: str, matched: int, differing: int) -> None:
    """How many of the last reconciliation's records matched the ledger and
    how many differed: the drift rate is differing / (matched + differing)."""
    gauge = _meter().create_gauge(
        RECONCILIATION_RECORDS, "Records of the last reconciliation, matched or differing"
    )
    gauge.set(matched, {"provider": provider, "result": "matched"})
    gauge.set(differing, {"provider": provider, "result": "differing"})


def record_reconciliation(provider: str, currency: str, drift_minor: int, unexplained: int) -> None:
    meter = _meter()
    labels = {"provider": provider, "currency": currency}
    meter.create_gauge(
        RECONCILIATION_DRIFT_MINOR, "Drift found by the last reconciliation, minor units"
    ).set(drift_minor, labels)
    meter.create_gauge(
        RECONCILIATION_UNEXPLAINED_MINOR,
        "Drift the last reconciliation left unexplained, minor units",
    ).set(unexplained, labels)


def record_program_funding(
    run_at_seconds: int,
    coverage: Iterable[tuple[str, int, int]],
    bank_drift: Iterable[tuple[str, dict[str, int]]],
    custody: tuple[str, int] | None,
) -> None:
    """A program-funding run's findings: per currency its coverage and the
    threshold it alerts under (bps), each bank currency's drifting statement
    lines by kind (every kind named, 0 included, so a cleared drift reads 0),
    custody's missing money; then the run's time, which tells the rules
    this replica holds the latest run."""
    meter = _meter()
    covered = meter.create_gauge(
        PROGRAM_COVERAGE_BPS, "The issuer's program balance over the customers' money, bps"
    )
    threshold = meter.create_gauge(
        PROGRAM_COVERAGE_THRESHOLD_BPS, "The coverage under which the program-funding run alerts"
    )
    for currency, coverage_bps, threshold_bps in coverage:
        covered.set(coverage_bps, {"currency": currency})
        threshold.set(threshold_bps, {"currency": currency})
    lines = meter.create_gauge(
        BANK_DRIFT_LINES, "Bank statement lines the ledger lacks or has with another amount"
    )
    for currency, counts in bank_drift:
        for kind, count in counts.items():
            lines.set(count, {"currency": currency, "kind": kind})
    if custody is not None:
        currency, missing_minor = custody
        meter.create_gauge(
            CUSTODY_MISSING_MINOR, "The ledger's custody holding less the custodian's, minor units"
        ).set(missing_minor, {"currency": currency})
    meter.create_gauge(
        PROGRAM_FUNDING_LAST_RUN, "When the program-funding run these gauges come from ran"
    ).set(run_at_seconds, {})


def record_settlement_drift(
    provider: str,
    records: dict[str, int],
    drift_rates_bps: dict[str, int],
    drift_rate_bps: int,
    drift_alert_bps: int,
    ingested_at_seconds: int,
) -> None:
    """A settlement ingest's findings: its records by class (every class
    named, 0 included, so a cleared drift reads 0), each drift class's rate
    and the whole drift's (class `all`) in bps of the card postings, the
    rate its policy alerts at; then the run's time, which tells the rules
    this replica holds the latest ingest."""
    meter = _meter()
    counted = meter.create_gauge(
        SETTLEMENT_RECORDS, "Records of the last settlement file ingested, by class"
    )
    for record_class, count in records.items():
        counted.set(count, {"provider": provider, "class": record_class})
    rates = meter.create_gauge(
        SETTLEMENT_DRIFT_RATE_BPS, "Drift of the last settlement file, bps of its card postings"
    )
    for record_class, rate_bps in drift_rates_bps.items():
        rates.set(rate_bps, {"provider": provider, "class": record_class})
    rates.set(drift_rate_bps, {"provider": provider, "class": SETTLEMENT_DRIFT_ALL})
    meter.create_gauge(
        SETTLEMENT_DRIFT_ALERT_BPS, "The drift rate at which the settlement ingest alerts, bps"
    ).set(drift_alert_bps, {"provider": provider})
    meter.create_gauge(
        SETTLEMENT_LAST_INGEST, "When the settlement ingest these gauges come from ended"
    ).set(ingested_at_seconds, {"provider": provider})


def record_fraud_case_opened(auto_freeze: bool) -> None:
    """A fraud case recorded as it opened (counted once: not its retries)."""
    _meter().create_counter(
        FRAUD_CASES_OPENED, "Fraud cases opened, by whether they froze the cards"
    ).add(1, {"auto_freeze": "true" if auto_freeze else "false"})


def record_fraud_auto_freezes(cards: int) -> None:
    """Cards a fraud case froze as it opened (each counted once)."""
    if cards > 0:
        _meter().create_counter(
            FRAUD_AUTO_FREEZES, "Cards frozen by fraud cases as they opened"
        ).add(cards, {})


def record_fraud_decision(decision: str) -> None:
    """An operator's decision on a fraud case (counted once)."""
    _meter().create_counter(FRAUD_DECISIONS, "Operators' decisions on fraud cases").add(
        1, {"decision": decision}
    )


class GatewayMetrics:
    """The gateway's counters, made once per process from its runtime's meter."""

    def __init__(
        self,
        meter: MetricMeter,
        providers: Iterable[str] = (),
        rejection_reasons: Iterable[str] = (),
    ) -> None:
        self._decisions = meter.create_counter(
            AUTHORIZATION_DECISIONS, "Real-time authorization answers given to the issuer"
        )
        self._decision_time = meter.create_histogram_timedelta(
            AUTHORIZATION_SECONDS, "Time from the issuer's request to the answer", "s"
        )
        self._deliveries = meter.create_counter(
            WEBHOOK_DELIVERIES, "Signed provider webhooks accepted, by what became of them"
        )
        self._rejections = meter.create_counter(
            WEBHOOK_REJECTIONS, "Provider webhooks refused, by reason"
        )
        # Series start at 0, so a first rejection shows as an increase.
        for provider in providers:
            for reason in rejection_reasons:
                self._rejections.add(0, {"provider": provider, "reason": reason})

    def authorization(self, decision: str, source: str, elapsed: timedelta) -> None:
        labels = {"decision": decision, "source": source}
        self._decisions.add(1, labels)
        self._decision_time.record(elapsed, labels)

    def delivered(self, provider: str, outcome: str) -> None:
        self._deliveries.add(1, {"provider": provider, "outcome": outcome})

    def rejected(self, provider: str, reason: str) -> None:
        self._rejections.add(1, {"provider": provider, "reason": reason})


@contextlib.asynccontextmanager
async def sampling_every(
    seconds: float, sample: Callable[[], Awaitable[None]], name: str
) -> AsyncIterator[None]:
    """Run `sample` now and then every `seconds` while the block runs (a
    gauge kept current); it is cancelled when the block ends."""

    async def forever() -> None:
        while True:
            await sample()
            await asyncio.sleep(seconds)

    task = asyncio.create_task(forever(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# Holds still pending: neither posted, voided nor expired, and not yet past
# their expiry (the expiry sweep records those as expired).
_OPEN_HOLDS_SQL = """
SELECT t.currency, count(*) AS holds, coalesce(sum(t.amount_minor), 0) AS amount_minor
FROM ledger_transfers t
WHERE t.kind = 'pending'
  AND t.expires_at > now()
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = t.id)
GROUP BY t.currency
"""


async def open_holds(pool: asyncpg.Pool) -> dict[str, tuple[int, int]]:
    """Currency -> (open holds, amount held in minor units)."""
    rows = await pool.fetch(_OPEN_HOLDS_SQL)
    return {row["currency"]: (int(row["holds"]), int(row["amount_minor"])) for row in rows}


@contextlib.asynccontextmanager
async def sampling_open_holds(
    pool: asyncpg.Pool, meter: MetricMeter, *, every_seconds: float = OPEN_HOLDS_SAMPLE_SECONDS
) -> AsyncIterator[None]:
    """Keep the open-holds gauges current while the block runs."""
    count = meter.create_gauge(LEDGER_OPEN_HOLDS, "Card holds not yet posted, voided or expired")
    amount = meter.create_gauge(LEDGER_OPEN_HOLDS_MINOR, "Amount held by open holds, minor units")
    # Every currency reads 0 until it has holds, so the series always exist.
    seen: set[str] = {currency.value for currency in Currency}

    async def sample() -> None:
        try:
            current = await open_holds(pool)
        except (asyncpg.PostgresError, OSError) as error:
            log.warning("could not count open holds: %s", error)
            return
        # A currency whose holds all closed reads 0, not its last value.
        for currency in seen | set(current):
            holds, minor = current.get(currency, (0, 0))
            count.set(holds, {"currency": currency})
            amount.set(minor, {"currency": currency})
        seen.update(current)

    async with sampling_every(every_seconds, sample, "open-holds-gauge"):
        yield
