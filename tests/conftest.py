"""One Temporal dev server (in memory) and one PostgreSQL per test session.

Both come from the pinned wheels; nothing is downloaded. Each test that needs
them gets its own database (copied from a migrated template) and its own task
queues with freshly started workers, so tests never see each other's state.
Set DATABASE_URL to use an existing PostgreSQL server instead of the embedded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.database import create_pool
from activities.migrate import migrate
from activities.providers.activities import ProviderClients
from schemas.search import ALL_SEARCH_ATTRIBUTES
from schemas.task_queues import QUEUE_KINDS, TaskQueues
from starters.devstack import postgres
from starters.devstack.processes import free_port
from starters.devstack.stack import temporal_cli_path
from tests import polling
from tests.faults import WorkflowTaskFaults
from workers.build import build_worker
from workers.converter import EncryptionCodec, build_data_converter, generate_key
from workers.interceptors import PostCloseQueryInterceptor

TEMPLATE_DATABASE = "cardflow_template"
# Stacks that never call a provider point their clients here (nothing listens).
UNREACHABLE_PROVIDERS_URL = "http://127.0.0.1:9"
TEST_POOL_SIZE_MAX = 5


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[Path]:
    """A directory outside pytest's own temp tree.

    PostgreSQL runs as another user when the suite runs as root, so its data
    directory's ancestors must stay traversable; pytest resets the mode of
    its temp root when any pytest session starts on the machine.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


# Tests of pure rules (no server, no database): part of the fast tier.
PURE_TEST_DIRECTORIES = ("schemas",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_root = Path(__file__).resolve().parent
    pure = [tests_root / directory for directory in PURE_TEST_DIRECTORIES]
    for item in items:
        if any(item.path.resolve().is_relative_to(directory) for directory in pure):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def encryption_keys() -> list[tuple[str, bytes]]:
    import base64

    return [("test-key-1", base64.b64decode(generate_key()))]


@pytest.fixture(scope="session")
def codec(encryption_keys: list[tuple[str, bytes]]) -> EncryptionCodec:
    return EncryptionCodec(encryption_keys)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def workflow_env(
    encryption_keys: list[tuple[str, bytes]],
) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli_path()),
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        data_converter=build_data_converter(encryption_keys),
        dev_server_extra_args=["--ui-disable-news-fetch"],
        # Picked as the stacks pick theirs, never a port the OS may hand out.
        port=free_port(),
        # As every cardflow client has it (workers.client.connect).
        interceptors=[PostCloseQueryInterceptor()],
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterable[str]:
    """URL of a PostgreSQL server's `postgres` database."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield with_database(external, "postgres")
        return
    with scratch_directory("cardflow-test-postgres-") as root:
        data_dir, log_path = root / "data", root / "postgres.log"
        port = free_port()
        # Like the dev stack's, the suite's server asks every connection for
        # its password: other accounts on the machine cannot use it.
        password = secrets.token_urlsafe(32)
        postgres.start(data_dir, host="127.0.0.1", port=port, log_path=log_path, password=password)
        try:
            yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
        finally:
            postgres.stop(data_dir, log_path=log_path)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def template_database(postgres_server_url: str) -> str:
    """A migrated database that each test's database is copied from."""
    connection = await asyncpg.connect(postgres_server_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DATABASE}"')
        await connection.execute(f'CREATE DATABASE "{TEMPLATE_DATABASE}"')
    finally:
        await connection.close()
    await migrate(with_database(postgres_server_url, TEMPLATE_DATABASE))
    return TEMPLATE_DATABASE


@contextlib.asynccontextmanager
async def scratch_database(
    server_url: str, prefix: str, template: str | None = None
) -> AsyncIterator[str]:
    """A database of its own for one test, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    copy_of = f' TEMPLATE "{template}"' if template else ""
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"{copy_of}')
        yield with_database(server_url, name)
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


class DatabaseSupply:
    """Fresh copies of the migrated template, each made while the test before
    the one that takes it runs (PostgreSQL copies on its own time), and
    dropped after its test without holding up the next one."""

    def __init__(self, server_url: str, template: str) -> None:
        self._server_url = server_url
        self._template = template
        self._next: asyncio.Task[str] | None = None
        self._drops: set[asyncio.Task[None]] = set()

    async def _execute(self, statement: str) -> None:
        connection = await asyncpg.connect(self._server_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async def _create(self) -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        await self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        return name

    async def take(self) -> str:
        """The URL of a database no test has used; the next one is started."""
        made = self._next or asyncio.ensure_future(self._create())
        self._next = None
        name = await made
        self._next = asyncio.ensure_future(self._create())
        return with_database(self._server_url, name)

    def give_back(self, url: str) -> None:
        """Drop the database at `url` (its test is over), in the background."""
        name = urlsplit(url).path.lstrip("/")
        drop = asyncio.ensure_future(
            self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )
        self._drops.add(drop)
        drop.add_done_callback(self._drops.discard)

    async def close(self) -> None:
        if self._next is not None:
            self.give_back(with_database(self._server_url, await self._next))
            self._next = None
        await asyncio.gather(*self._drops)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_supply(
    postgres_server_url: str, template_database: str
) -> AsyncIterator[DatabaseSupply]:
    supply = DatabaseSupply(postgres_server_url, template_database)
    try:
        yield supply
    finally:
        await supply.close()


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(database_supply: DatabaseSupply) -> AsyncIterator[str]:
    """A fresh, migrated database of the test's own."""
    url = await database_supply.take()
    try:
        yield url
    finally:
        database_supply.give_back(url)


@pytest_asyncio.fixture(loop_scope="session")
async def empty_database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A database with no migrations applied, for the migration runner's tests."""
    async with scratch_database(postgres_server_url, "empty") as url:
        yield url


@dataclass
class RunningStack:
    """What a workflow test talks to: its own queues, database and workers."""

    client: Client
    queues: TaskQueues
    database_url: str
    pool: asyncpg.Pool
    codec: EncryptionCodec
    # Workflow-task faults a test may arm (a worker "killed" mid-task).
    faults: WorkflowTaskFaults
    # `async with stack.workflows_worker_away():` stops the workflows worker
    # for the block and starts a new one after it: a worker killed and
    # restarted, which takes its workflows without them in memory.
    workflows_worker_away: Callable[[], contextlib.AbstractAsyncContextManager[None]]


StackFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningStack]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_stack(
    workflow_env: WorkflowEnvironment, database_url: str, codec: EncryptionCodec
) -> AsyncIterator[StackFactory]:
    """Start workers for the chosen task-queue kinds on queues of the test's own."""

    @contextlib.asynccontextmanager
    async def start(
        kinds: Iterable[str] = QUEUE_KINDS,
        *,
        providers_url: str = UNREACHABLE_PROVIDERS_URL,
        prefix: str | None = None,
        telegram_bot_token: str | None = None,
    ) -> AsyncIterator[RunningStack]:
        queues = TaskQueues(prefix=prefix or f"test-{uuid.uuid4().hex[:12]}")
        pool = await create_pool(database_url, size_max=TEST_POOL_SIZE_MAX)
        clients = ProviderClients(providers_url, telegram_bot_token=telegram_bot_token)
        faults = WorkflowTaskFaults()

        def worker_of(kind: str) -> Worker:
            return build_worker(
                kind,
                workflow_env.client,
                queues,
                pool=pool,
                pool_size_max=TEST_POOL_SIZE_MAX,
                provider_clients=clients,
                interceptors=[faults.interceptor()],
            )

        try:
            async with contextlib.AsyncExitStack() as running:
                workers: dict[str, Worker] = {}
                for kind in kinds:
                    workers[kind] = worker_of(kind)
                    await running.enter_async_context(workers[kind])

                @contextlib.asynccontextmanager
                async def workflows_worker_away() -> AsyncIterator[None]:
                    await workers["workflows"].shutdown()
                    try:
                        yield
                    finally:
                        workers["workflows"] = worker_of("workflows")
                        await running.enter_async_context(workers["workflows"])

                yield RunningStack(
                    workflow_env.client,
                    queues,
                    database_url,
                    pool,
                    codec,
                    faults,
                    workflows_worker_away,
                )
        finally:
            await pool.close()
            await clients.aclose()

    yield start


@pytest_asyncio.fixture(loop_scope="session")
async def stack(make_stack: StackFactory) -> AsyncIterator[RunningStack]:
    async with make_stack() as running:
        yield running


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


__all__: list[Any] = ["RunningStack", "free_port", "project_root", "with_database"]


@pytest_asyncio.fixture(loop_scope="session")
async def ledger_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, size_max=40)
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def webhook_sink() -> AsyncIterator[Any]:
    """A webhook receiver standing where the gateway stands (session-wide)."""
    from tests.providers import webhook_receiver

    async with webhook_receiver(free_port()) as receiver:
        yield receiver


@pytest.fixture(scope="session")
def simulators(tmp_path_factory: pytest.TempPathFactory, webhook_sink: Any) -> Iterable[Any]:
    """The provider simulators as a real process on loopback, webhooks to webhook_sink."""
    from tests.providers import running, simulator_process

    process = simulator_process(
        tmp_path_factory.mktemp("simulators"), free_port(), webhook_sink.url
    )
    webhook_sink.secrets.update(process.secrets)
    with running(process):
        yield process


SIMULATOR_DRAIN_SECONDS_MAX = 3.0
GATEWAY_START_SECONDS_MAX = 30.0


@pytest_asyncio.fixture(loop_scope="session")
async def sim(simulators: Any, webhook_sink: Any) -> Any:
    """The session's simulators, reset: no state, no faults, nothing received.

    Webhooks still on their way from the previous test are let arrive first
    (the sink runs on this event loop), so none lands in this test.
    """

    async def outbox_empty() -> bool:
        return bool(simulators.admin("GET", "/health")["webhooks_pending"] == 0)

    await polling.settled(outbox_empty, SIMULATOR_DRAIN_SECONDS_MAX)
    await asyncio.sleep(0.05)
    simulators.reset()
    webhook_sink.received.clear()
    webhook_sink.script.clear()
    webhook_sink.rejected = 0
    webhook_sink.realtime = None
    webhook_sink.realtime_received.clear()
    return simulators


async def api_key_headers(
    pool: asyncpg.Pool,
    settings: Any,
    *scopes: str,
    name: str = "tests",
    customers: list[str] | None = None,
) -> dict[str, str]:
    """Headers carrying a new API key (every scope unless named; bound to
    `customers` when given) for a gateway of `settings`."""
    from activities.api_keys import SCOPES, ApiKeyStore, NewApiKey, api_key_pepper

    new = NewApiKey(
        name=name,
        scopes=list(scopes or SCOPES),  # type: ignore[arg-type]
        customers=customers,
    )
    issued = await ApiKeyStore(pool, api_key_pepper(settings)).create(new)
    return {"Authorization": f"Bearer {issued.key}"}


@dataclass
class Platform:
    """Workers, provider simulators and the gateway between them, for one test."""

    stack: RunningStack
    sim: Any
    gateway_url: str
    settings: Any
    # The gateway's app: tests may swap app.state.settings (e.g. its budgets).
    app: Any = None
    # `Authorization: Bearer cfk_...` of a key holding every scope, for `/v1` calls.
    api_headers: Any = None

    async def key_headers(self, *scopes: str, customers: list[str] | None = None) -> dict[str, str]:
        """Headers of a new key with these scopes, bound to `customers` when given."""
        return await api_key_headers(self.stack.pool, self.settings, *scopes, customers=customers)


# Servers the tests are done with, shutting down gracefully (uvicorn takes
# about 0.2 s) while the next test runs: each test's gateway has a port of its
# own, so nothing waits for the port. All are awaited when the session ends.
_SHUTTING_DOWN: set[asyncio.Task[None]] = set()


def shut_down_later(shutdown: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(shutdown)
    _SHUTTING_DOWN.add(task)
    task.add_done_callback(_SHUTTING_DOWN.discard)


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def servers_shut_down() -> AsyncIterator[None]:
    yield
    await asyncio.gather(*_SHUTTING_DOWN)


@pytest.fixture(scope="session")
def platform_simulators() -> Iterable[Any]:
    """The provider simulators every platform test shares (one process for the
    session), each test pointing them at its own gateway after a reset."""
    from tests.providers import running, simulator_process

    with scratch_directory("cardflow-test-simulators-") as home:
        process = simulator_process(home, free_port(), UNREACHABLE_PROVIDERS_URL)
        with running(process):
            yield process


def simulators_for(process: Any, gateway_url: str) -> Any:
    """The session's simulators, fresh for one test: no state, no faults, no
    webhook left from an earlier test (those went to its gateway, now gone),
    pointed at `gateway_url`, with readable ids from a range of their own so
    workflow ids derived from provider ids (card/{card_id}) never collide with
    other tests' on the shared Temporal server."""
    id_offset = secrets.randbelow(10**9) * 1000
    if not process.alive():
        process.env["CARDFLOW_GATEWAY_URL"] = gateway_url
        process.env["CARDFLOW_SIMULATOR_ID_OFFSET"] = str(id_offset)
        process.process = None
        process.start()
    process.reset(gateway_url=gateway_url, id_offset=id_offset)
    return process


@pytest_asyncio.fixture(loop_scope="session")
async def platform(
    make_stack: StackFactory, database_url: str, tmp_path: Path, platform_simulators: Any
) -> AsyncIterator[Platform]:
    import json

    import uvicorn

    from starters.gateway.app import create_app
    from starters.gateway.server import gateway_config
    from workers.secrets import telegram_bot_token
    from workers.settings import load_settings

    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    sim = simulators_for(platform_simulators, gateway_url)
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_TASK_QUEUE_PREFIX=prefix,
        CARDFLOW_WEBHOOK_SECRETS=json.dumps(sim.secrets),
        DATABASE_URL=database_url,
        CARDFLOW_PROVIDERS_URL=sim.url,
    )
    # The customers' bot's token, as the gateway (WebApp initData) and the
    # providers worker (Telegram notifications) both know it.
    bot_token = telegram_bot_token(settings)
    async with make_stack(
        providers_url=sim.url, prefix=prefix, telegram_bot_token=bot_token
    ) as stack:
        pool = await create_pool(database_url, size_max=4)
        app = create_app(settings, client=stack.client, pool=pool)
        # The production server and its deadlines (starters/gateway/server.py).
        server = uvicorn.Server(
            gateway_config(app, settings, host="127.0.0.1", port=gateway_port, log_level="warning")
        )
        task = asyncio.get_running_loop().create_task(server.serve())

        async def started_or_ended() -> bool:
            return server.started or task.done()

        await polling.settled(started_or_ended, GATEWAY_START_SECONDS_MAX)
        if not server.started:
            server.should_exit = True
            raise AssertionError(f"the gateway did not start on port {gateway_port}")
        try:
            headers = await api_key_headers(pool, settings)
            yield Platform(stack, sim, gateway_url, settings, app, headers)
        finally:
            server.should_exit = True

            async def shut_down() -> None:
                await task
                await pool.close()

            shut_down_later(shut_down())
