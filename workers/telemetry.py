"""What every long-running cardflow process reports about itself.

- **Metrics**: one Prometheus endpoint per process, served by the Temporal
  runtime itself, so the SDK's own metrics (task latencies, slots, polls) and
  cardflow's (see `workers.metrics`) come from one `/metrics`.
- **Traces**: Temporal's OpenTelemetry interceptor on the client (and so on
  every worker built from it), exported over OTLP/HTTP when
  `OTEL_EXPORTER_OTLP_ENDPOINT` is set. A span context travels in Temporal's
  headers, so a webhook's trace continues into the workflow it starts and the
  activities that workflow runs.
- **Logs**: JSON lines on stderr; a line logged inside a workflow or an
  activity carries its workflow and activity ids.
"""

from __future__ import annotations

import atexit
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from temporalio import activity, workflow
from temporalio.client import Interceptor
from temporalio.common import MetricMeter
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from activities.metrics import HISTOGRAM_BUCKETS
from workers.settings import Settings

# Traces name the library that made them; dashboards group by service name.
TRACER_NAME = "cardflow"
DEFAULT_SERVICE_PREFIX = "cardflow"


@dataclass
class Telemetry:
    """The runtime, tracer and interceptors one process uses for all its clients."""

    service_name: str
    runtime: Runtime
    metrics_address: str | None = None
    tracer_provider: TracerProvider | None = None
    interceptors: Sequence[Interceptor] = field(default_factory=tuple)

    @property
    def meter(self) -> MetricMeter:
        return self.runtime.metric_meter

    def shutdown(self) -> None:
        """Flush spans still buffered; metrics need nothing (they are pulled)."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


# The dev stack's parts that serve metrics, in the order of their ports.
METRICS_PARTS = ("gateway", "worker-workflows", "worker-ledger", "worker-providers")


def metrics_port_of(settings: Settings, part: str) -> int:
    """The dev stack's metrics port for a part: the base plus the part's place."""
    return settings.metrics_port_base + METRICS_PARTS.index(part)


def prometheus_config(bind_address: str) -> PrometheusConfig:
    """Counters end in _total and durations are in seconds, as Prometheus
    conventions and its standard dashboards expect; the histograms an alert
    reads against a budget get buckets around it."""
    return PrometheusConfig(
        bind_address=bind_address,
        counters_total_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides={
            name: list(buckets) for name, buckets in HISTOGRAM_BUCKETS.items()
        },
    )


def start_telemetry(
    settings: Settings,
    service: str,
    *,
    span_exporter: SpanExporter | None = None,
) -> Telemetry:
    """Set up metrics and tracing for one process named `service` (e.g. "worker-ledger").

    Tracing is on when an OTLP endpoint is configured or an exporter is given
    (tests give an in-memory one); off, no interceptor runs at all, so the
    authorization path pays nothing for it.
    """
    service_name = settings.service_name or f"{DEFAULT_SERVICE_PREFIX}-{service}"
    metrics_address = None
    metrics = None
    if settings.metrics_port is not None:
        metrics_address = f"{settings.bind_host}:{settings.metrics_port}"
        metrics = prometheus_config(metrics_address)
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=metrics, global_tags={"service": service_name}, attach_service_name=False
        )
    )
    tracer_provider = None
    interceptors: list[Interceptor] = []
    if span_exporter is None and settings.otlp_endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        span_exporter = OTLPSpanExporter(endpoint=endpoint)
    if span_exporter is not None:
        tracer_provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        interceptors.append(TracingInterceptor(tracer_provider.get_tracer(TRACER_NAME)))
    return Telemetry(
        service_name=service_name,
        runtime=runtime,
        metrics_address=metrics_address,
        tracer_provider=tracer_provider,
        interceptors=tuple(interceptors),
    )


_process_telemetry: Telemetry | None = None


def process_telemetry(settings: Settings) -> Telemetry:
    """The telemetry of a short-lived process (the CLI's starters), made once
    and flushed when the process exits, so a started workflow's trace begins
    at the command that started it."""
    global _process_telemetry
    if _process_telemetry is None:
        # A command run beside a worker (`cardflow ping` in its container)
        # must not take the worker's metrics port; commands serve no metrics.
        _process_telemetry = start_telemetry(
            settings.model_copy(update={"metrics_port": None}), "cli"
        )
        atexit.register(_process_telemetry.shutdown)
    return _process_telemetry


# ----- logs -----------------------------------------------------------------

# The SDK puts these dicts on records logged through workflow.logger and
# activity.logger; the ids are lifted to the top of the JSON line.
_WORKFLOW_FIELDS = ("workflow_id", "run_id", "workflow_type", "task_queue", "namespace")
_ACTIVITY_FIELDS = ("activity_id", "activity_type", "workflow_id", "workflow_run_id", "attempt")


class TemporalContextFilter(logging.Filter):
    """Adds the current workflow's or activity's ids to every record, whichever
    logger made it, so plain `logging.getLogger(...)` lines inside an activity
    are found by workflow id as well."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields: dict[str, Any] = {}
        nested_workflow = getattr(record, "temporal_workflow", None)
        nested_activity = getattr(record, "temporal_activity", None)
        if isinstance(nested_workflow, dict):
            fields.update({k: nested_workflow[k] for k in _WORKFLOW_FIELDS if k in nested_workflow})
        if isinstance(nested_activity, dict):
            fields.update({k: nested_activity[k] for k in _ACTIVITY_FIELDS if k in nested_activity})
        if not fields and activity.in_activity():
            info = activity.info()
            fields = {
                "activity_id": info.activity_id,
                "activity_type": info.activity_type,
                "workflow_id": info.workflow_id,
                "workflow_run_id": info.workflow_run_id,
                "attempt": info.attempt,
            }
        for name, value in fields.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class CardflowJsonFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, ids, extras."""

    def __init__(self, service_name: str) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC
            static_fields={"service": service_name},
            # The SDK's nested dicts are already lifted to the top.
            reserved_attrs=[*RESERVED_ATTRS, "temporal_workflow", "temporal_activity"],
        )


def configure_logging(settings: Settings, service_name: str) -> None:
    """Root logging for a long-running process, as `CARDFLOW_LOG_FORMAT` says."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TemporalContextFilter())
    if settings.log_format == "json":
        handler.setFormatter(CardflowJsonFormatter(service_name))
        # The ids are fields of the line; the SDK need not repeat them in the text.
        workflow.logger.workflow_info_on_message = False
        activity.logger.activity_info_on_message = False
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
