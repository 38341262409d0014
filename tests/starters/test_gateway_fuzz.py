"""A schemathesis run over the gateway's published OpenAPI: no input makes it answer 5xx."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, find, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from activities.database import create_pool
from activities.providers.activities import ProviderClients
from schemas.task_queues import QUEUE_KINDS
from starters.gateway.app import create_app
from tests.conftest import UNREACHABLE_PROVIDERS_URL, api_key_headers, free_port
from tests.polling import until_sync
from workers.build import build_worker
from workers.client import connect
from workers.settings import load_settings

FUZZ_EXAMPLES_PER_OPERATION = 25
GATEWAY_START_SECONDS_MAX = 30.0


def _load_the_fuzzers_modules() -> None:
    """Import now, at collection, what schemathesis and hypothesis otherwise
    import on first use, mid-test, beside the worker's threads. pytest rewrites
    those plugin modules with ast.parse, and on CPython 3.11 two threads
    building ASTs at once can fail one of them with "SystemError: AST
    constructor recursion depth mismatch" (python/cpython#106905)."""
    warm = schemathesis.openapi.from_dict(
        {
            "openapi": "3.1.0",
            "info": {"title": "warm-up", "version": "1"},
            "paths": {
                "/w/{id}": {
                    "post": {
                        "parameters": [
                            {
                                "name": "id",
                                "in": "path",
                                "required": True,
                                "schema": {"type": "string", "pattern": "^[a-z]+$"},
                            }
                        ],
                        "requestBody": {
                            "required": True,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"n": {"type": "integer", "minimum": 0}},
                                        "required": ["n"],
                                    }
                                }
                            },
                        },
                        "responses": {"200": {"description": "ok"}},
                    }
                }
            },
        }
    )
    for result in warm.get_all_operations():
        if isinstance(result, Ok):
            find(result.ok().as_strategy(), lambda _: True)
    # What only a real run reaches (a run's optimiser; a failing call's report).
    importlib.import_module("hypothesis.internal.conjecture.optimiser")
    importlib.import_module("schemathesis.wfc.escalation")


_load_the_fuzzers_modules()


@dataclass(frozen=True)
class Gateway:
    url: str
    # A key holding every scope: the fuzzer explores inputs, not access control.
    api_headers: dict[str, str]


@pytest.fixture
def gateway(
    workflow_env: Any, database_url: str, tmp_path: Path, simulators: Any
) -> Iterator[Gateway]:
    """The gateway as its own server with its own event loop, client and pool;
    the providers it calls itself (the issuer's reveal tokens, the Tron
    deposit address) are the session's simulators, as in a healthy stack."""
    settings_ = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        DATABASE_URL=database_url,
        CARDFLOW_PROVIDERS_URL=simulators.url,
        TEMPORAL_ADDRESS=workflow_env.client.service_client.config.target_host,
        CARDFLOW_TASK_QUEUE_PREFIX="fuzz",
        # The fuzzer is one client hammering each route: no throttling here.
        CARDFLOW_API_RATE_PER_SECOND="100000",
        CARDFLOW_API_BURST="100000",
    )
    api_headers: dict[str, str] = {}
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings_), host="127.0.0.1", port=port, log_level="warning")
    )

    async def serve_with_workers() -> None:
        # Processes the API starts must answer as in production: their workers
        # run here, on the gateway's own event loop.
        client = await connect(settings_)
        pool = await create_pool(database_url, size_max=5)
        clients = ProviderClients(UNREACHABLE_PROVIDERS_URL)
        try:
            api_headers.update(await api_key_headers(pool, settings_, name="fuzzer"))
            async with contextlib.AsyncExitStack() as running:
                for kind in QUEUE_KINDS:
                    await running.enter_async_context(
                        build_worker(
                            kind,
                            client,
                            settings_.task_queues,
                            pool=pool,
                            pool_size_max=5,
                            provider_clients=clients,
                        )
                    )
                await server.serve()
        finally:
            await clients.aclose()
            await pool.close()

    thread = threading.Thread(target=lambda: asyncio.run(serve_with_workers()), daemon=True)
    thread.start()
    until_sync(lambda: server.started, bool, "the gateway started", GATEWAY_START_SECONDS_MAX)
    try:
        yield Gateway(f"http://127.0.0.1:{port}", api_headers)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


WEBAPP_PREFIX = "/webapp/"


def test_the_api_never_answers_5xx_and_keeps_its_contract(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/health").status_code == 200
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    statuses: set[int] = set()
    assert {op.path for op in operations} >= {"/v1/pings", "/v1/processes/{workflow_id}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=FUZZ_EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        def fuzz(case: Any) -> None:
            response = case.call_and_validate(checks=checks, headers=gateway.api_headers)
            if not case.operation.path.startswith(WEBAPP_PREFIX):
                statuses.add(response.status_code)

        fuzz()
    # The fuzzer's key (every scope) was let in everywhere: the inputs reached the
    # routes. (The WebApp's routes take Telegram's initData, not a key: they are
    # fuzzed for their answers' contract and refuse the key with 401.)
    assert not statuses & {401, 403} and statuses & {200, 202, 404, 422}, statuses
