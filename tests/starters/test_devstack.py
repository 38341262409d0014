"""`cardflow dev up | status | down` against a real embedded stack on free ports.

The stack runs as the separate processes a user gets (Temporal dev server on
SQLite, PostgreSQL, codec server, three workers), under a CARDFLOW_HOME of the
test's own, and is driven only through the `cardflow` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

from schemas.search import ALL_SEARCH_ATTRIBUTES
from starters.devstack.stack import TEMPORAL_SQLITE_PRAGMAS
from starters.health import ping
from tests import polling
from tests.conftest import free_port, scratch_directory
from tests.starters.conftest import DemoStack, DevStack, stack_env
from tests.starters.test_embedded_postgres import (
    asks_for_the_password,
    lets_in,
    start_as_an_older_cardflow,
)
from workers.client import connect
from workers.secrets import codec_token, codec_ui_endpoint, telegram_bot_token
from workflows.health import ping_workflow_id


def process_lives(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def parts_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {part["name"]: part for part in status["parts"]}


@pytest.fixture(scope="module")
def dev_stack() -> Iterator[DevStack]:
    with scratch_directory("cardflow-test-home-") as home:
        stack = DevStack(home, stack_env(home))
        up = stack.cardflow("dev", "up", "--json")
        try:
            assert up.returncode == 0, f"dev up failed:\n{up.stdout}\n{up.stderr}"
            yield stack
        finally:
            stack.cardflow("dev", "down")


def test_dev_up_starts_every_part_healthy_and_the_web_ui_answers(dev_stack: DevStack) -> None:
    code, status = dev_stack.status()
    assert code == 0 and status["healthy"]
    parts = parts_by_name(status)
    assert set(parts) == {
        "postgres",
        "codec",
        "temporal",
        "simulators",
        "gateway",
        "worker-workflows",
        "worker-ledger",
        "worker-providers",
        "bot",
    }
    for part in parts.values():
        assert part["healthy"] and part["running"] and psutil.pid_exists(part["pid"]), part
    assert "ran the Ping workflow" in parts["worker-workflows"]["detail"]
    assert "database answered" in parts["worker-ledger"]["detail"]
    # Temporal's SQLite file is written ahead, synced at checkpoints.
    temporal_argv = psutil.Process(parts["temporal"]["pid"]).cmdline()
    for pragma in TEMPORAL_SQLITE_PRAGMAS:
        assert ["--sqlite-pragma", pragma] in [
            temporal_argv[i : i + 2] for i in range(len(temporal_argv))
        ]
    database = dev_stack.home / "temporal" / "cardflow.db"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    settings = dev_stack.settings()
    ui = httpx.get(f"http://127.0.0.1:{settings.temporal_ui_port}/api/v1/settings", timeout=10)
    assert ui.status_code == 200
    assert ui.json()["Codec"]["Endpoint"] == codec_ui_endpoint(settings)
    for log in (
        "temporal",
        "codec",
        "simulators",
        "gateway",
        "worker-workflows",
        "worker-ledger",
        "worker-providers",
        "bot",
    ):
        assert (dev_stack.home / "logs" / f"{log}.log").exists()


def test_the_dev_stacks_bot_answers_a_telegram_user_through_the_simulator(
    dev_stack: DevStack,
) -> None:
    settings = dev_stack.settings()
    bot_id = telegram_bot_token(settings).split(":", 1)[0]
    users = f"{settings.providers_base_url}/telegram/simulate/bots/{bot_id}"
    said = httpx.post(f"{users}/users/9191/messages", json={"text": "/balance"}, timeout=10)
    assert said.status_code == 201, said.text

    def answers() -> list[str]:
        found = httpx.get(f"{users}/chats/9191/messages", timeout=10).json()["data"]
        return [message["text"] for message in found]

    said_back = polling.until_sync(answers, bool, "the bot answers", seconds=30)
    # A stranger is told how to link, by the bot the stack runs.
    assert "not linked" in said_back[0], said_back


def test_the_demo_walks_a_customer_through_kyc_and_two_cards(demo_stack: DemoStack) -> None:
    # The package's shared stack has run the demo once (and checked it exited 0).
    output = demo_stack.demo_output
    for step in (
        "KYC provider answered GREEN",
        "Onboarding approved",
        "Virtual card",
        "Shipping delivered",
        "card activated",
    ):
        assert step in output
    assert "open (fee 500)" in output
    assert "/namespaces/default/workflows/onboarding%2F" in output
    # At its end, what an app shows: the overview and the feed, the decline's reason in it.
    assert "The app's home screen" in output and "The app's feed" in output
    assert "declined: insufficient_funds" in output
    assert "decline" in output and "Not enough money in your wallet" in output
    assert "each signature verified" in output and "upstream app was sent 0 " not in output
    # And how to talk to the customer's bot, linked by a fresh code.
    assert "/telegram/simulate/bots/" in output and "/start " in output


async def test_search_attributes_exist_on_the_server_after_dev_up(dev_stack: DevStack) -> None:
    client = await connect(dev_stack.settings())
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    registered = dict(response.custom_attributes)
    expected = {
        "CustomerId": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "CardId": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "ProcessStatus": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "AmountMinor": IndexedValueType.INDEXED_VALUE_TYPE_INT,
        "Currency": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "Provider": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    }
    assert {key.name for key in ALL_SEARCH_ATTRIBUTES} == set(expected)
    for name, value_type in expected.items():
        assert registered.get(name) == value_type, name


async def test_the_codec_server_process_decodes_a_history_of_the_stack(dev_stack: DevStack) -> None:
    settings = dev_stack.settings()
    client = await connect(settings)
    workflow_id = ping_workflow_id(f"devstack-{uuid.uuid4().hex}")
    await ping(client, settings.task_queues, requested_by="operator Ada", workflow_id=workflow_id)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert b"operator Ada" not in started.input.SerializeToString()
    origin = f"http://localhost:{settings.temporal_ui_port}"
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{settings.codec_url}/decode",
            content=json_format.MessageToJson(Payloads(payloads=list(started.input.payloads))),
            headers={
                "Origin": origin,
                "X-Namespace": "default",
                "Content-Type": "application/json",
                "Authorization": f"Bearer {codec_token(settings)}",
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    [decoded] = json_format.Parse(response.text, Payloads()).payloads
    assert json.loads(decoded.data)["requested_by"] == "operator Ada"


def test_a_second_dev_up_reuses_the_running_parts(dev_stack: DevStack) -> None:
    _, before = dev_stack.status()
    again = dev_stack.cardflow("dev", "up", "--json")
    assert again.returncode == 0, again.stderr
    after = json.loads(again.stdout)
    assert {p["name"]: p["pid"] for p in after["parts"]} == {
        p["name"]: p["pid"] for p in before["parts"]
    }


async def test_every_schedule_exists_once_however_often_dev_up_runs(dev_stack: DevStack) -> None:
    from activities.events import CUSTOMERS_ENDPOINT_ID
    from starters.schedules import SCHEDULES
    from workflows.event_delivery import event_delivery_workflow_id

    again = dev_stack.cardflow("dev", "up", "--json")
    assert again.returncode == 0, again.stderr
    ensured = dev_stack.cardflow("schedules", "ensure")
    assert ensured.returncode == 0, ensured.stderr
    expected = sorted(spec.schedule_id for spec in SCHEDULES)
    # And the customers' notifications, started by the first dev up, run once.
    notifications = event_delivery_workflow_id(CUSTOMERS_ENDPOINT_ID)
    standing = [*expected, notifications]
    assert sorted(ensured.stdout.split()) == sorted(
        [f"{name}:" for name in standing] + ["exists"] * len(standing)
    )
    client = await connect(dev_stack.settings())
    described = await client.get_workflow_handle(notifications).describe()
    assert described.status is not None and described.status.name == "RUNNING"
    listed: list[str] = []
    for _ in range(100):  # the schedule list is eventually consistent
        listed = sorted([entry.id async for entry in await client.list_schedules()])
        if listed == expected:
            break
        await asyncio.sleep(0.1)
    assert listed == expected


def test_status_reports_a_stopped_worker_as_unhealthy(dev_stack: DevStack) -> None:
    pid = dev_stack.record_pid("worker-providers")
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(timeout=10) if psutil.pid_exists(pid) else None
    code, status = dev_stack.status()
    parts = parts_by_name(status)
    assert code == 1 and not status["healthy"]
    assert parts["worker-providers"] == {
        **parts["worker-providers"],
        "running": False,
        "healthy": False,
        "pid": None,
    }
    assert parts["worker-ledger"]["healthy"] and parts["worker-workflows"]["healthy"]
    # dev up brings back only what is missing.
    assert dev_stack.cardflow("dev", "up").returncode == 0
    code, status = dev_stack.status()
    assert code == 0 and parts_by_name(status)["worker-providers"]["pid"] not in (None, pid)


def test_status_reports_a_hung_worker_that_still_has_a_pid(dev_stack: DevStack) -> None:
    # A process that exists but does not answer is exactly what a pid check
    # would miss; only the Ping workflow catches it.
    pid = dev_stack.record_pid("worker-ledger")
    os.kill(pid, signal.SIGSTOP)
    try:
        code, status = dev_stack.status()
    finally:
        os.kill(pid, signal.SIGCONT)
    ledger = parts_by_name(status)["worker-ledger"]
    assert code == 1
    assert ledger["running"] and ledger["pid"] == pid and not ledger["healthy"]
    assert "did not answer Ping" in ledger["detail"]
    assert parts_by_name(status)["worker-workflows"]["healthy"]


async def test_state_survives_dev_down_and_up(dev_stack: DevStack) -> None:
    settings = dev_stack.settings()
    client = await connect(settings)
    workflow_id = ping_workflow_id(f"survivor-{uuid.uuid4().hex}")
    await ping(client, settings.task_queues, workflow_id=workflow_id)
    database = await asyncpg.connect(settings.effective_database_url)
    try:
        await database.execute(
            "INSERT INTO ledger_accounts (code, currency, kind)"
            " VALUES ('test:survivor:USD', 'USD', 'bank')"
        )
    finally:
        await database.close()
    pids = [p["pid"] for p in dev_stack.status()[1]["parts"]]

    down = dev_stack.cardflow("dev", "down")
    assert down.returncode == 0 and "postgres" in down.stdout
    psutil.wait_procs([psutil.Process(pid) for pid in pids if process_lives(pid)], timeout=30)
    assert not any(process_lives(pid) for pid in pids)
    code, status = dev_stack.status()
    assert code == 1 and not any(p["running"] for p in status["parts"])

    assert dev_stack.cardflow("dev", "up").returncode == 0
    client = await connect(settings)
    description = await client.get_workflow_handle(workflow_id).describe()
    assert description.status is not None and description.status.name == "COMPLETED"
    database = await asyncpg.connect(settings.effective_database_url)
    try:
        assert (
            await database.fetchval(
                "SELECT count(*) FROM ledger_accounts WHERE code = 'test:survivor:USD'"
            )
            == 1
        )
    finally:
        await database.close()


@pytest.mark.parametrize(
    ("port_name", "variable"),
    [
        ("postgres", "CARDFLOW_POSTGRES_PORT"),
        ("temporal", "CARDFLOW_TEMPORAL_PORT"),
        ("codec", "CARDFLOW_CODEC_PORT"),
        ("gateway", "CARDFLOW_GATEWAY_PORT"),
    ],
)
def test_dev_up_on_a_taken_port_fails_naming_the_port_and_its_owner(
    tmp_path: Path, port_name: str, variable: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = DevStack(tmp_path, stack_env(tmp_path, **{port_name: port}))
        completed = stack.cardflow("dev", "up", timeout=60)
    assert completed.returncode == 1
    assert f"port {port}" in completed.stderr
    assert f"pid {os.getpid()} (" in completed.stderr
    assert variable in completed.stderr
    # Nothing was started: the check runs before any part.
    assert not list((tmp_path / "run").glob("*.json")) if (tmp_path / "run").exists() else True
    assert not (tmp_path / "postgres").exists()


async def test_dev_up_uses_external_temporal_and_database_without_starting_them(
    tmp_path: Path, workflow_env: Any, database_url: str
) -> None:
    temporal_address = workflow_env.client.service_client.config.target_host
    env = stack_env(tmp_path)
    env.update(TEMPORAL_ADDRESS=temporal_address, DATABASE_URL=database_url)
    stack = DevStack(tmp_path, env)
    up = stack.cardflow("dev", "up", "--json")
    try:
        assert up.returncode == 0, up.stderr
        parts = parts_by_name(json.loads(up.stdout))
        for name in ("temporal", "postgres"):
            assert parts[name]["managed"] is False and parts[name]["pid"] is None
            assert parts[name]["healthy"], parts[name]
        assert parts["temporal"]["address"] == temporal_address
        assert all(parts[f"worker-{k}"]["healthy"] for k in ("workflows", "ledger", "providers"))
        assert not (tmp_path / "postgres").exists() and not (tmp_path / "temporal").exists()
        assert not (tmp_path / "secrets" / "postgres-password").exists()
        assert not (tmp_path / "run" / "temporal.json").exists()
    finally:
        down = stack.cardflow("dev", "down")
    assert "temporal" not in down.stdout and "postgres" not in down.stdout
    # The external parts are left running.
    await workflow_env.client.service_client.check_health()
    connection = await asyncpg.connect(database_url)
    await connection.close()


# ----- the embedded PostgreSQL's password --------------------------------------------------


async def test_the_stacks_postgres_asks_every_connection_for_its_owner_only_password(
    dev_stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    settings = dev_stack.settings()
    assert not await lets_in(settings.postgres_port, None), "no password needed"
    password_file = dev_stack.home / "secrets" / "postgres-password"
    password = password_file.read_text().strip()
    await asks_for_the_password(settings.postgres_port, password)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(password_file.parent.stat().st_mode) == 0o700
    # The parts get the file's name, never the password: not in any environment
    # (readable in /proc), not in any log.
    _, status = dev_stack.status()
    for part in status["parts"]:
        environment = psutil.Process(part["pid"]).environ()
        assert not [k for k, v in environment.items() if password in v], part["name"]
    for log in (dev_stack.home / "logs").glob("*.log"):
        assert password not in log.read_text(errors="replace"), log.name


async def test_dev_up_switches_a_trust_postgres_of_an_older_cardflow_to_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    port = free_port()

    def stack_on(home: Path) -> DevStack:
        # Ports chosen just before each `dev up`, the PostgreSQL one kept: the
        # machine's other processes take free ports meanwhile.
        return DevStack(home, stack_env(home, postgres=port))

    with scratch_directory("cardflow-test-home-old-") as home:
        data_dir, log_path = home / "postgres" / "data", home / "logs" / "postgres.log"
        log_path.parent.mkdir(parents=True)
        start_as_an_older_cardflow(data_dir, port=port, log_path=log_path)
        try:
            assert await lets_in(port, None)
            old = await asyncpg.connect(
                host="127.0.0.1", port=port, user="postgres", database="postgres"
            )
            await old.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('x')")
            await old.close()
            # Still running as the older version left it: dev up says what to do.
            refused = stack_on(home).cardflow("dev", "up", timeout=120)
            assert refused.returncode == 1, refused.stdout
            assert "cardflow dev down" in refused.stderr, refused.stderr
            assert await lets_in(port, None)
            assert not (home / "run" / "temporal.json").exists()

            assert stack_on(home).cardflow("dev", "down").returncode == 0
            up = stack_on(home).cardflow("dev", "up", "--json")
            assert up.returncode == 0, f"dev up failed:\n{up.stdout}\n{up.stderr}"
            password = (home / "secrets" / "postgres-password").read_text().strip()
            await asks_for_the_password(port, password)
            parts = parts_by_name(json.loads(up.stdout))
            assert parts["postgres"]["healthy"] and parts["worker-ledger"]["healthy"]
            kept = await asyncpg.connect(
                host="127.0.0.1", port=port, user="postgres", password=password
            )
            assert await kept.fetchval("SELECT note FROM kept") == "x"
            await kept.close()
        finally:
            stack_on(home).cardflow("dev", "down")
