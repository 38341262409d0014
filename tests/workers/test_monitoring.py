"""The monitoring files (workers/monitoring), checked by Prometheus's and
Alertmanager's own tools: every alert fires on the series it guards against
and stays quiet on healthy ones (`promtool test rules`), every dashboard
query is valid PromQL, and both configurations load.

The tools are Debian's `prometheus` and `prometheus-alertmanager` packages,
which `make test` installs (CARDFLOW_PROMTOOL and CARDFLOW_AMTOOL point
elsewhere). That every metric named here is one the platform exports is
checked against a running stack in tests/starters/test_observability.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.metrics import prometheus_runtime, scrape
from tests.polling import until
from workers.monitoring import (
    ALERTMANAGER_CONFIG,
    GRAFANA_PROVISIONING,
    MADE_AT_FIRST_EVENT,
    PROMETHEUS_CONFIG,
    RULES,
    RULES_TESTS,
    alert_rules,
    dashboard_queries,
    dashboards,
    panels,
)

PROMTOOL = os.environ.get("CARDFLOW_PROMTOOL", "/usr/bin/promtool")
AMTOOL = os.environ.get("CARDFLOW_AMTOOL", "/usr/bin/amtool")
TOOL_SECONDS_MAX = 60


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    assert Path(argv[0]).is_file(), (
        f"{argv[0]} is missing: `make test` installs Debian's prometheus and "
        "prometheus-alertmanager packages (or set CARDFLOW_PROMTOOL / CARDFLOW_AMTOOL)"
    )
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TOOL_SECONDS_MAX, check=False
    )


def rules_tests_with_runbooks(directory: Path) -> Path:
    """The rules and their unit tests copied into `directory`, each expected
    alert given its rule's runbook: the tests name each summary (rendered
    with the alert's value), the runbook is the rule's text, written once."""
    runbooks = {rule["alert"]: rule["annotations"]["runbook"] for rule in alert_rules()}
    tests = yaml.safe_load(RULES_TESTS.read_text())
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            for alert in case.get("exp_alerts") or []:
                alert["exp_annotations"]["runbook"] = runbooks[case["alertname"]]
    shutil.copy(RULES, directory / RULES.name)
    path = directory / RULES_TESTS.name
    path.write_text(yaml.safe_dump(tests, sort_keys=False, width=10_000))
    return path


def test_every_alert_fires_on_what_it_guards_against_and_is_quiet_otherwise(
    tmp_path: Path,
) -> None:
    result = run_tool(PROMTOOL, "test", "rules", str(rules_tests_with_runbooks(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    tests = yaml.safe_load(RULES_TESTS.read_text())
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - firing == set(), "never shown firing"
    assert alerts - quiet == set(), "never shown quiet"


def test_each_alert_says_what_happened_and_what_to_do() -> None:
    for rule in alert_rules():
        annotations: dict[str, str] = rule.get("annotations", {})
        assert annotations.get("summary"), f"{rule['alert']} has no summary"
        runbook = annotations.get("runbook", "")
        assert len(runbook.split()) >= 10, f"{rule['alert']}'s runbook says too little"
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]


def test_the_alert_rules_and_prometheus_configuration_load() -> None:
    result = run_tool(PROMTOOL, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_alertmanager_configuration_loads_and_routes_by_severity() -> None:
    result = run_tool(AMTOOL, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    for severity, receiver in (("page", "on-call"), ("ticket", "operations")):
        routed = run_tool(
            AMTOOL,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"severity={severity}",
        )
        assert routed.stdout.strip() == receiver, routed.stdout + routed.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 40
    # promtool checks PromQL inside rule files: one recording rule per query.
    rules = [
        {"record": f"dashboard:query_{index}", "expr": expression}
        for index, expression in enumerate(queries.values())
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_tool(PROMTOOL, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("title", "question"),
    [
        ("Authorizations", "stand-in"),
        ("Money", "reconciliation drift"),
        ("Providers and webhooks", "webhook"),
        ("Workflows", "operator"),
    ],
)
def test_each_dashboard_is_provisioned_from_prometheus_and_answers_its_questions(
    title: str, question: str
) -> None:
    found = {board["title"]: board for board in dashboards().values()}
    board = found[f"cardflow · {title}"]
    datasources = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text()
    )
    [datasource] = datasources["datasources"]
    ids: list[int] = []
    for panel in panels(board):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel.get("description"), f"{panel['title']} does not say what it answers"
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    assert len(ids) == len(set(ids)), f"{title}: panel ids repeat"
    texts = " ".join(
        f"{panel['title']} {panel.get('description', '')}".lower() for panel in panels(board)
    )
    assert question in texts, f"{title} answers nothing about {question}"


def test_dashboards_have_distinct_uids() -> None:
    uids: list[Any] = [board["uid"] for board in dashboards().values()]
    assert len(uids) == 4 and len(set(uids)) == 4, uids


# ----- the counters made at their first failure ------------------------------

FAILURE_QUEUE = "monitoring-failures"


@activity.defn(name="monitoring.fails_once")
async def fails_once() -> str:
    if activity.info().attempt == 1:
        raise RuntimeError("the first attempt fails")
    return "done"


@workflow.defn(name="MonitoringFails", sandboxed=False)
class Fails:
    """Runs an activity that fails once, then fails itself."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(fails_once, start_to_close_timeout=timedelta(seconds=10))
        raise ApplicationError("this process fails", non_retryable=True)


@workflow.defn(name="MonitoringBreaksItsTask", sandboxed=False)
class BreaksItsTask:
    """Its workflow task fails (a bug in the workflow's code), every time."""

    @workflow.run
    async def run(self) -> None:
        raise RuntimeError("a bug in the workflow")


async def test_the_failure_counters_are_exported_under_the_names_the_rules_read(
    workflow_env: WorkflowEnvironment,
) -> None:
    runtime, port = prometheus_runtime()
    config = workflow_env.client.config()
    client = await Client.connect(
        workflow_env.client.service_client.config.target_host,
        namespace=workflow_env.client.namespace,
        runtime=runtime,
        data_converter=config["data_converter"],
    )
    queue = f"{FAILURE_QUEUE}-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[Fails, BreaksItsTask], activities=[fails_once]
    ):
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(Fails.run, id=f"fails/{queue}", task_queue=queue)
        broken = await client.start_workflow(
            BreaksItsTask.run, id=f"breaks/{queue}", task_queue=queue
        )

        async def exported() -> set[str]:
            return {sample.name for sample in await scrape(port) if sample.value > 0}

        sdk_names = {name for name in MADE_AT_FIRST_EVENT if name.startswith("temporal_")}
        await until(exported, lambda names: sdk_names <= names, "the failures counted", 20)
        await broken.terminate("the test is over")
