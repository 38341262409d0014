"""The gateway as an ASGI app in the test's own process, over a test's stack."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from starters.gateway.app import create_app
from tests.conftest import RunningStack, api_key_headers
from workers.settings import load_settings


@contextlib.asynccontextmanager
async def gateway(
    stack: RunningStack, home: Path, **settings: str
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a gateway on `stack`, holding an API key with every scope.

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
        yield http
