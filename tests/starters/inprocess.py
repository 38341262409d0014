"""The gateway in the test's own process, over a test's stack: as an ASGI app,
or served over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from schemas.providers import PROVIDERS
from starters.gateway.app import create_app
from starters.gateway.server import gateway_config
from tests.conftest import RunningStack, api_key_headers, free_port, shut_down_later
from workers.secrets import new_webhook_secret
from workers.settings import load_settings
from workers.telemetry import start_telemetry


@dataclass
class InProcessGateway:
    """The gateway's app, and an HTTP client of it holding an API key with every scope."""

    app: FastAPI
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def gateway_app(
    stack: RunningStack, home: Path, **settings: str
) -> AsyncIterator[InProcessGateway]:
    """The gateway on `stack`, started (its lifespan run), with a client of it.

    An exception in a route is answered 500, as a server would, not raised here.
    """
    configured = load_settings(
        CARDFLOW_HOME=str(home),
        CARDFLOW_TASK_QUEUE_PREFIX=stack.queues.prefix,
        DATABASE_URL=stack.database_url,
        **settings,
    )
    app = create_app(configured, client=stack.client, pool=stack.pool)
    headers = await api_key_headers(stack.pool, configured)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=headers, timeout=60
        ) as http,
    ):
        yield InProcessGateway(app, http)


@contextlib.asynccontextmanager
async def gateway(
    stack: RunningStack, home: Path, **settings: str
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a gateway on `stack`, holding an API key with every scope."""
    async with gateway_app(stack, home, **settings) as started:
        yield started.http


@dataclass
class ServedGateway:
    """A gateway served over real HTTP on a loopback port, its metrics on another."""

    url: str
    metrics_url: str
    secrets: dict[str, str]
    # `Authorization: Bearer cfk_...` of a key holding every scope, for `/v1` calls.
    api_headers: dict[str, str]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` (a counter: its `_total`) carrying `labels`."""
        text = httpx.get(self.metrics_url, timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
            and all(sample.labels.get(key) == value for key, value in labels.items())
        )


@contextlib.asynccontextmanager
async def served_gateway(stack: RunningStack, home: Path) -> AsyncIterator[ServedGateway]:
    """The gateway as `cardflow gateway` serves it (uvicorn, its own metrics
    endpoint), over `stack`, with a webhook secret of its own per provider."""
    secrets = {provider: new_webhook_secret() for provider in PROVIDERS}
    metrics_port = free_port()
    settings = load_settings(
        CARDFLOW_HOME=str(home),
        CARDFLOW_TASK_QUEUE_PREFIX=stack.queues.prefix,
        CARDFLOW_WEBHOOK_SECRETS=json.dumps(secrets),
        DATABASE_URL=stack.database_url,
    ).model_copy(update={"metrics_port": metrics_port})
    telemetry = start_telemetry(settings, "gateway")
    app = create_app(settings, client=stack.client, pool=stack.pool, telemetry=telemetry)
    port = free_port()
    server = uvicorn.Server(
        gateway_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # the server could not start: say why
        await asyncio.sleep(0.01)
    try:
        yield ServedGateway(
            url=f"http://127.0.0.1:{port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            secrets=secrets,
            api_headers=await api_key_headers(stack.pool, settings),
        )
    finally:
        server.should_exit = True

        async def shut_down() -> None:
            await task
            telemetry.shutdown()

        shut_down_later(shut_down())
