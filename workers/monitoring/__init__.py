"""The monitoring of the production stack, as files: Prometheus's scrape
configuration and alert rules (with their unit tests), Alertmanager's routes,
and Grafana's provisioning and dashboards. This module finds them and the
metric names they use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PROMETHEUS_CONFIG = HERE / "prometheus.yml"
ALERTMANAGER_CONFIG = HERE / "alertmanager.yml"
RULES = HERE / "rules" / "cardflow.rules.yml"
RULES_TESTS = HERE / "rules" / "cardflow.rules.test.yml"
DASHBOARDS = HERE / "grafana" / "dashboards"
GRAFANA_PROVISIONING = HERE / "grafana" / "provisioning"

# Series made at their first event, so a scrape of a healthy stack may not
# show them yet: the SDK's failures, the ledger's refusals, and the gauges a
# program-funding run sets (the demo makes none; tests/workflows/
# test_program_funding.py proves a run sets every one), and the fraud cases'
# counters (tests/workflows/test_fraud.py counts them).
MADE_AT_FIRST_EVENT = frozenset(
    {
        "temporal_workflow_failed_total",
        "temporal_workflow_task_execution_failed_total",
        "temporal_activity_execution_failed_total",
        "cardflow_ledger_rejections_total",
        "cardflow_program_coverage_bps",
        "cardflow_program_coverage_threshold_bps",
        "cardflow_bank_drift_lines",
        "cardflow_custody_missing_minor",
        "cardflow_program_funding_last_run_timestamp_seconds",
        "cardflow_fraud_cases_opened_total",
        "cardflow_fraud_auto_freezes_total",
        "cardflow_fraud_decisions_total",
        # Only once a program loads rules (tests/workflows/test_auth_rules.py).
        "cardflow_rule_declines_total",
        "cardflow_rule_shadow_declines_total",
        # Only once a settlement file is ingested (tests/workflows/
        # test_settlement_decisions.py proves an ingest sets every one).
        "cardflow_settlement_records",
        "cardflow_settlement_drift_rate_bps",
        "cardflow_settlement_drift_alert_bps",
        "cardflow_settlement_last_ingest_timestamp_seconds",
    }
)

_METRIC = re.compile(r"\b((?:cardflow|temporal)_[a-z0-9_]+)\b")
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> dict[str, str]:
    """'file: panel title [refId]' -> PromQL, for every query of every dashboard."""
    queries = {}
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                queries[f"{name}: {panel['title']} [{target['refId']}]"] = target["expr"]
    return queries


def metric_names(expression: str) -> set[str]:
    """The cardflow and Temporal metric names an expression reads, as exported
    (a histogram's series by the histogram's name)."""
    names = set()
    for name in _METRIC.findall(expression):
        for suffix in _SERIES_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


def names_used() -> dict[str, set[str]]:
    """Metric name -> where the rules and dashboards use it."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for where, expression in dashboard_queries().items():
        for name in metric_names(expression):
            used.setdefault(name, set()).add(where)
    return used
