"""A Temporal runtime serving its metrics on a port of its own, and reading
them back: for tests that prove a metric is recorded under its name."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from starters.devstack.processes import free_port
from workers.telemetry import prometheus_config


def prometheus_runtime() -> tuple[Runtime, int]:
    """A runtime exporting as every cardflow process does, and its port."""
    port = free_port()
    config: PrometheusConfig = prometheus_config(f"127.0.0.1:{port}")
    return Runtime(telemetry=TelemetryConfig(metrics=config)), port


async def scrape(port: int) -> list[Sample]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]
