"""What operators scrape and read from a running stack, after the demo's processes ran.

Each worker and the gateway serve Prometheus metrics on a port of their own
(the SDK's metrics and cardflow's); their logs are JSON lines, and a line
written inside an activity carries the activity's and its workflow's ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from activities.metrics import (
    EXPOSED_NAMES,
    LEDGER_OPEN_HOLDS,
    LEDGER_OPEN_HOLDS_MINOR,
    OPEN_HOLDS_SAMPLE_SECONDS,
)
from schemas.money import Currency
from starters.billing import BILLING_SCHEDULE_ID
from starters.reconcile import DAILY_SCHEDULE_ID
from tests.polling import until_sync
from tests.starters.conftest import DemoStack
from workers import census
from workers.monitoring import MADE_AT_FIRST_EVENT, names_used
from workers.telemetry import METRICS_PARTS, metrics_port_of
from workflows.cards import CARD_WORKFLOW

# The open-holds gauges are sampled this often, the census taken this often:
# time for three samples or two censuses to catch up.
SCRAPE_WAIT_SECONDS = max(OPEN_HOLDS_SAMPLE_SECONDS * 3, census.CENSUS_SECONDS * 2)
# Every name the platform exports, but those made at their first event (a
# failure, a refusal), which a healthy demo may never have: the dashboards and
# alert rules read no other name (test_the_dashboards_and_alerts_read_only_...).
EXPECTED_NAMES = (set(EXPOSED_NAMES) | set(census.EXPOSED_NAMES)) - MADE_AT_FIRST_EVENT
SCRAPE_POLL_SECONDS = 0.5
# Every hold the demo placed was cleared (the rest released): none is left
# open in any currency, and the gauges publish every currency from the start.
NO_OPEN_HOLDS = {
    (name, currency.value): 0.0
    for name in (LEDGER_OPEN_HOLDS, LEDGER_OPEN_HOLDS_MINOR)
    for currency in Currency
}


def scrape(demo_stack: DemoStack, part: str) -> list[Sample]:
    settings = demo_stack.stack.settings()
    url = f"http://127.0.0.1:{metrics_port_of(settings, part)}/metrics"
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, f"{part}: {response.status_code}"
    return [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def named(samples: list[Sample], name: str, **labels: str) -> Iterator[Sample]:
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            yield sample


def base_names(samples: list[Sample]) -> set[str]:
    suffixes = ("_bucket", "_count", "_sum")
    names = set()
    for sample in samples:
        names.add(sample.name)
        for suffix in suffixes:
            if sample.name.endswith(suffix):
                names.add(sample.name.removesuffix(suffix))
    return names


def open_holds_read(samples: list[Sample]) -> dict[tuple[str, str], float]:
    """(gauge, currency) -> value, of the open-holds gauges among `samples`."""
    return {
        (sample.name, sample.labels["currency"]): sample.value
        for name in (LEDGER_OPEN_HOLDS, LEDGER_OPEN_HOLDS_MINOR)
        for sample in named(samples, name)
    }


def unmet_after_the_demo(by_part: dict[str, list[Sample]]) -> list[str]:
    """What the scrape does not show yet of the demo's end: a named metric no
    part exposes, or open-holds gauges not (yet) sampled with none open."""
    exposed = set().union(*(base_names(samples) for samples in by_part.values()))
    unmet = [f"{name} exposed by no part" for name in sorted(EXPECTED_NAMES - exposed)]
    holds = open_holds_read(by_part["worker-ledger"])
    if holds != NO_OPEN_HOLDS:
        unmet.append(f"open holds read {holds}, not {NO_OPEN_HOLDS}")
    open_cards = sum(
        sample.value
        for sample in named(by_part["worker-workflows"], census.PROCESSES)
        if sample.labels["workflow_type"] == CARD_WORKFLOW and sample.labels["status"] == "open"
    )
    if not open_cards:
        unmet.append("the census counts no open card")
    return unmet


def scraped_when(
    demo_stack: DemoStack, unmet: Callable[[dict[str, list[Sample]]], list[str]]
) -> dict[str, list[Sample]]:
    """Every part's samples once `unmet` finds nothing missing in them; fails
    naming what was still missing when SCRAPE_WAIT_SECONDS have passed."""
    last: dict[str, list[Sample]] = {}

    def scraped() -> dict[str, list[Sample]]:
        last.update({part: scrape(demo_stack, part) for part in METRICS_PARTS})
        return dict(last)

    try:
        return until_sync(
            scraped,
            lambda by_part: not unmet(by_part),
            "every named metric exposed",
            SCRAPE_WAIT_SECONDS,
            every=SCRAPE_POLL_SECONDS,
        )
    except AssertionError:
        # Name what is missing, not the whole scrape.
        raise AssertionError(f"after {SCRAPE_WAIT_SECONDS} s: {unmet(last)}") from None


def test_every_worker_and_the_gateway_expose_each_named_metric_after_the_demo(
    demo_stack: DemoStack,
) -> None:
    by_part = scraped_when(demo_stack, unmet_after_the_demo)

    gateway = by_part["gateway"]
    workflows = by_part["worker-workflows"]
    ledger = by_part["worker-ledger"]

    # The demo's purchase was authorized by the card itself, in real time.
    approved = list(
        named(gateway, "cardflow_authorization_decisions_total", decision="approve", source="card")
    )
    assert approved and approved[0].value >= 1
    assert any(s.value >= 1 for s in named(gateway, "cardflow_authorization_seconds_count"))
    # Provider webhooks were delivered to processes; every rejection series
    # starts at 0, and the simulators signed every webhook they sent.
    delivered = named(gateway, "cardflow_webhook_deliveries_total", outcome="delivered")
    assert sum(s.value for s in delivered) >= 5
    refused = list(
        named(gateway, "cardflow_webhook_rejections_total", provider="issuer", reason="signature")
    )
    assert [sample.value for sample in refused] == [0], refused

    # A card's hold is a local activity on the workflows worker; everything
    # else posts on the ledger worker.
    holds = named(workflows, "cardflow_ledger_posting_seconds_count", operation="hold")
    assert sum(s.value for s in holds) >= 1
    batches = named(ledger, "cardflow_ledger_posting_seconds_count", outcome="posted")
    assert sum(s.value for s in batches) >= 10
    # The ledger worker samples the holds still open: the demo left none.
    assert open_holds_read(ledger) == NO_OPEN_HOLDS

    # The day's reconciliation reported its drift: zero, as the demo prints.
    drift = list(named(ledger, "cardflow_reconciliation_unexplained_minor", provider="issuer"))
    assert drift and all(sample.value == 0 for sample in drift)

    # The day's reconciliation matched records and found none differing.
    records = {
        sample.labels["result"]: sample.value
        for sample in named(ledger, "cardflow_reconciliation_records", provider="issuer")
    }
    assert records["matched"] >= 1 and records["differing"] == 0, records
    # Every provider call was timed, by provider and outcome.
    providers = by_part["worker-providers"]
    calls = named(providers, "cardflow_provider_call_seconds_count", outcome="ok")
    assert {s.labels["provider"] for s in calls} >= {"issuer", "kyc"}

    # The census of processes: the demo's cards, and both schedules, none
    # paused, none missed, their last run no later than now.
    open_cards = named(workflows, census.PROCESSES, workflow_type=CARD_WORKFLOW, status="open")
    assert sum(sample.value for sample in open_cards) >= 1
    for schedule in (BILLING_SCHEDULE_ID, DAILY_SCHEDULE_ID):
        [paused] = named(workflows, census.SCHEDULE_PAUSED, schedule=schedule)
        [missed] = named(workflows, census.SCHEDULE_MISSED_RUNS, schedule=schedule)
        [interval] = named(workflows, census.SCHEDULE_INTERVAL, schedule=schedule)
        assert paused.value == 0 and missed.value == 0 and interval.value >= 86_400
    [taken] = named(workflows, census.CENSUS_TIMESTAMP)
    assert taken.value > 0

    # The SDK's own metrics come from the same endpoints.
    assert any(name.startswith("temporal_workflow_task") for name in base_names(workflows))
    assert any(name.startswith("temporal_activity_execution") for name in base_names(ledger))


def test_worker_logs_are_json_lines_carrying_activity_and_workflow_ids(
    demo_stack: DemoStack,
) -> None:
    log_path = demo_stack.stack.home / "logs" / "worker-providers.log"
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # Every line the worker wrote is JSON (nothing printed around the logger).
    assert records and len(records) == len(lines), lines[:5]
    for record in records:
        assert {"time", "level", "logger", "message", "service"} <= set(record), record
        assert record["service"] == "cardflow-worker-providers"
    calls = [record for record in records if record["logger"] == "cardflow.providers"]
    assert calls, "no provider call was logged"
    for call in calls:
        assert call["activity_id"] and call["activity_type"], call
        assert call["workflow_id"] and call["workflow_run_id"], call
        assert isinstance(call["http_status"], int) and isinstance(call["duration_ms"], int)
    assert any(call["workflow_id"].startswith("onboarding/") for call in calls)


def test_dev_status_names_each_metrics_endpoint(demo_stack: DemoStack) -> None:
    code, status = demo_stack.stack.status()
    assert code == 0
    settings = demo_stack.stack.settings()
    details = {part["name"]: part["detail"] for part in status["parts"]}
    for part in METRICS_PARTS:
        url = f"http://{settings.bind_host}:{metrics_port_of(settings, part)}/metrics"
        assert url in details[part], details[part]


def test_the_dashboards_and_alerts_read_only_metrics_the_platform_exports(
    demo_stack: DemoStack,
) -> None:
    """A renamed metric would leave a panel empty and an alert silent: every
    name the monitoring files read is scraped from the running stack after the
    demo, or is a counter made at its first event (its name is proven where
    that event is made to happen: tests/workers/test_monitoring.py and the
    ledger's activity tests)."""
    by_part = scraped_when(demo_stack, unmet_after_the_demo)
    exported = set().union(*(base_names(samples) for samples in by_part.values()))
    unknown = {
        name: sorted(where)
        for name, where in names_used().items()
        if name not in exported and name not in MADE_AT_FIRST_EVENT
    }
    assert not unknown, f"read by the monitoring, exported by no part: {unknown}"
