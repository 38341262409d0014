"""Traces, metrics and log lines as `workers.telemetry` sets them up.

The trace test runs the real gateway, workers and Temporal dev server with
the spans going to an in-memory exporter: one signed webhook must yield one
trace that holds the HTTP request, the workflow it started and the
activities that workflow ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from standardwebhooks import Webhook
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.database import create_pool
from activities.health import LEDGER_PING, PROVIDERS_PING
from activities.providers.activities import ProviderClients
from schemas.health import PingResult
from schemas.providers import PROVIDERS
from schemas.task_queues import QUEUE_KINDS, TaskQueues
from starters.gateway.app import create_app
from tests.conftest import UNREACHABLE_PROVIDERS_URL, free_port
from workers.build import build_worker
from workers.client import connect
from workers.interceptors import PostCloseQueryInterceptor
from workers.secrets import new_webhook_secret
from workers.settings import load_settings
from workers.telemetry import (
    CardflowJsonFormatter,
    TemporalContextFilter,
    configure_logging,
    start_telemetry,
)
from workflows.health import ping_workflow_id


def spans_named(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


async def test_a_webhook_trace_links_the_request_to_the_workflow_and_its_activities(
    workflow_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    queues = TaskQueues(prefix=f"trace-{uuid.uuid4().hex[:10]}")
    secrets = {provider: [new_webhook_secret()] for provider in PROVIDERS}
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_TASK_QUEUE_PREFIX=queues.prefix,
        CARDFLOW_WEBHOOK_SECRETS=json.dumps(secrets),
        DATABASE_URL=database_url,
    )
    telemetry = start_telemetry(settings, "trace-test", span_exporter=exporter)
    assert telemetry.tracer_provider is not None
    # The same server and converter as the suite's client, with the tracing interceptor.
    config = workflow_env.client.config()
    config["interceptors"] = list(telemetry.interceptors)
    client = Client(**config)

    pool = await create_pool(database_url, size_max=4)
    provider_clients = ProviderClients(UNREACHABLE_PROVIDERS_URL)
    workers = [
        build_worker(kind, client, queues, pool=pool, provider_clients=provider_clients)
        for kind in QUEUE_KINDS
    ]
    app = create_app(settings, client=client, pool=pool, telemetry=telemetry)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.get_running_loop().create_task(server.serve())
    try:
        for worker in workers:
            await worker.__aenter__()
        while not server.started:
            await asyncio.sleep(0.01)
        ping_id = f"traced-{uuid.uuid4().hex[:8]}"
        event: dict[str, Any] = {
            "id": f"evt_{uuid.uuid4().hex[:16]}",
            "type": "cardflow.ping",
            "created_at": datetime.now(UTC).isoformat(),
            "data": {"ping_id": ping_id, "expected": 1, "sequence": 0},
        }
        body = json.dumps(event)
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": event["id"],
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secrets["bank"][0]).sign(event["id"], now, body),
        }
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            response = await http.post("/webhooks/bank", content=body, headers=headers)
        assert response.status_code == 200, response.text
        handle = client.get_workflow_handle(
            ping_workflow_id(f"webhook-{ping_id}"), result_type=PingResult
        )
        result = await asyncio.wait_for(handle.result(), 60)
        assert len(result.webhook_events) == 1
    finally:
        for worker in reversed(workers):
            await worker.__aexit__(None, None, None)
        server.should_exit = True
        await serving
        await provider_clients.aclose()
        await pool.close()
    telemetry.tracer_provider.force_flush()
    spans = exporter.get_finished_spans()

    requests = [span for span in spans if span.name.startswith("POST /webhooks/")]
    assert requests, [span.name for span in spans]
    trace_id = requests[0].context.trace_id
    in_trace = [span for span in spans if span.context.trace_id == trace_id]
    names = {span.name for span in in_trace}
    assert "SignalWithStartWorkflow:Ping" in names, sorted(names)
    assert "RunWorkflow:Ping" in names, sorted(names)
    for activity_type in (LEDGER_PING, PROVIDERS_PING):
        assert f"StartActivity:{activity_type}" in names, sorted(names)
        assert f"RunActivity:{activity_type}" in names, sorted(names)
    # The start is a child of the HTTP request's span, not a trace of its own.
    start = spans_named(in_trace, "SignalWithStartWorkflow:")[0]
    request_span_ids = {span.context.span_id for span in requests}
    assert start.parent is not None and start.parent.span_id in request_span_ids


def test_tracing_is_off_unless_an_otlp_endpoint_or_exporter_is_given(tmp_path: Path) -> None:
    off = start_telemetry(load_settings(CARDFLOW_HOME=str(tmp_path)), "worker-ledger")
    assert off.interceptors == () and off.tracer_provider is None
    assert off.service_name == "cardflow-worker-ledger" and off.metrics_address is None
    on = start_telemetry(
        load_settings(
            CARDFLOW_HOME=str(tmp_path),
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",
            OTEL_SERVICE_NAME="ledger-eu-1",
            CARDFLOW_METRICS_PORT=str(free_port()),
        ),
        "worker-ledger",
    )
    try:
        assert [type(i) for i in on.interceptors] == [TracingInterceptor]
        assert on.service_name == "ledger-eu-1"
        assert on.metrics_address is not None
        metrics = httpx.get(f"http://{on.metrics_address}/metrics", timeout=5)
        assert metrics.status_code == 200
    finally:
        on.shutdown()


def _formatted(record: logging.LogRecord) -> dict[str, object]:
    TemporalContextFilter().filter(record)
    document: dict[str, object] = json.loads(CardflowJsonFormatter("svc").format(record))
    return document


async def test_a_line_logged_inside_an_activity_carries_its_ids() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    # As in a process, the filter runs when the line is emitted, inside the activity.
    keep = Keep()
    keep.addFilter(TemporalContextFilter())
    logger = logging.getLogger("cardflow.test.activity")
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)

    @activity.defn(name="test.logs")
    async def logs() -> None:
        logger.info("posted %d", 5)

    environment = ActivityEnvironment()
    await environment.run(logs)
    document = _formatted(records[0])
    info = environment.info
    assert document["message"] == "posted 5" and document["service"] == "svc"
    assert document["activity_id"] == info.activity_id
    assert document["workflow_id"] == info.workflow_id
    assert document["activity_type"] == info.activity_type


def test_the_sdk_workflow_context_is_lifted_to_top_level_fields() -> None:
    record = logging.LogRecord("temporalio.workflow", logging.WARNING, "x", 1, "stalled", (), None)
    record.temporal_workflow = {
        "workflow_id": "topup/bank/ref-1",
        "run_id": "r-1",
        "workflow_type": "Topup",
        "task_queue": "cardflow-workflows",
        "namespace": "default",
        "attempt": 1,
    }
    document = _formatted(record)
    assert document["workflow_id"] == "topup/bank/ref-1"
    assert document["workflow_type"] == "Topup"
    assert document["level"] == "WARNING" and "temporal_workflow" not in document


def test_text_logs_remain_available(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(load_settings(CARDFLOW_LOG_FORMAT="text"), "svc")
        assert not isinstance(root.handlers[0].formatter, CardflowJsonFormatter)
        configure_logging(load_settings(), "svc")
        assert isinstance(root.handlers[0].formatter, CardflowJsonFormatter)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


async def test_a_starters_client_traces_when_an_otlp_endpoint_is_configured(
    workflow_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    target = workflow_env.client.service_client.config.target_host
    plain = await connect(load_settings(CARDFLOW_HOME=str(tmp_path), TEMPORAL_ADDRESS=target))
    # Every client asks a query again after the SDK's post-close race; only
    # a configured endpoint adds tracing.
    assert [type(i) for i in plain.config()["interceptors"]] == [PostCloseQueryInterceptor]
    traced = await connect(
        load_settings(
            CARDFLOW_HOME=str(tmp_path),
            TEMPORAL_ADDRESS=target,
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        )
    )
    assert [type(i) for i in traced.config()["interceptors"]] == [
        PostCloseQueryInterceptor,
        TracingInterceptor,
    ]
