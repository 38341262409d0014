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
from tests.polling import until_sync
from tests.starters.conftest import DemoStack
from workers.telemetry import METRICS_PARTS, metrics_port_of

# The open-holds gauges are sampled this often: three samples' time to catch up.
SCRAPE_WAIT_SECONDS = OPEN_HOLDS_SAMPLE_SECONDS * 3
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
    unmet = [f"{name} exposed by no part" for name in sorted(set(EXPOSED_NAMES) - exposed)]
    holds = open_holds_read(by_part["worker-ledger"])
    if holds != NO_OPEN_HOLDS:
        unmet.append(f"open holds read {holds}, not {NO_OPEN_HOLDS}")
    return unmet


def scraped_when(
    demo_stack: DemoStack, unmet: Callable[[dict[str, list[Sample]]], list[str]]
) -> dict[str, list[Sample]]:
    """Every part's samples once `unmet` finds nothing missing in them; fails
    naming what was still missing when SCRAPE_WAIT_SECONDS have passed."""
    by_part = until_sync(
        lambda: {part: scrape(demo_stack, part) for part in METRICS_PARTS},
        lambda scraped: not unmet(scraped),
        "every named metric exposed",
        SCRAPE_WAIT_SECONDS,
        every=SCRAPE_POLL_SECONDS,
    )
    return by_part


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
