"""The gateway's ASGI app and its process entry point."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import Client
from temporalio.runtime import Runtime

from activities.database import create_pool
from activities.metrics import GatewayMetrics
from activities.providers.activities import ProviderClients
from starters.gateway import (
    api,
    errors,
    realtime,
    realtime_authentication,
    webapp,
    webapp_page,
    webhooks,
)
from starters.gateway.intake import Intake
from starters.gateway.v1.overview import SectionCache
from workers.client import connect
from workers.secrets import webhook_secrets
from workers.settings import Settings
from workers.telemetry import Telemetry

GATEWAY_POOL_SIZE_MAX = 10


def create_app(
    settings: Settings,
    *,
    client: Client | None = None,
    pool: asyncpg.Pool | None = None,
    telemetry: Telemetry | None = None,
) -> FastAPI:
    """The gateway; a client and pool may be given (tests), else made at startup.

    With `telemetry`, each request is a trace's first span (continuing the
    caller's trace when it sends `traceparent`), and the gateway's metrics go
    to that telemetry's runtime.
    """

    secrets = webhook_secrets(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned_pool = None
        temporal = client or await connect(
            settings, identity="cardflow-gateway", telemetry=telemetry
        )
        runtime = (
            telemetry.runtime
            if telemetry is not None
            else temporal.service_client.config.runtime or Runtime.default()
        )
        if pool is None:
            owned_pool = await create_pool(
                settings.effective_database_url, size_max=GATEWAY_POOL_SIZE_MAX
            )
        # What the routes are given (starters/gateway/state.py).
        app.state.client = temporal
        app.state.pool = pool or owned_pool
        app.state.providers.time_calls_on(runtime.metric_meter)
        app.state.metrics = GatewayMetrics(
            runtime.metric_meter,
            providers=sorted(secrets),
            rejection_reasons=webhooks.REJECTION_REASONS,
        )
        try:
            yield
        finally:
            await app.state.decisions_in_flight.aclose()
            await app.state.providers.aclose()
            if owned_pool is not None:
                await owned_pool.close()

    app = FastAPI(
        title="cardflow API",
        version="1",
        description="Start cardflow's processes and read their status. Every start takes an "
        "Idempotency-Key header, scoped to your API key: a repeat returns the same process.",
        lifespan=lifespan,
    )
    app.state.queues = settings.task_queues
    app.state.webhook_secrets = secrets
    app.state.settings = settings
    app.state.decisions_in_flight = realtime.InFlight(settings.authorization_in_flight_max)
    app.state.providers = ProviderClients(settings.providers_base_url)
    app.state.overview_cache = SectionCache()

    @app.get("/health", tags=["operations"], summary="The gateway answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # One error contract (starters/gateway/errors.py) for every answer but a success.
    app.add_exception_handler(errors.ApiError, errors.api_error_response)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_response)
    app.add_exception_handler(RequestValidationError, errors.validation_error_response)
    app.add_exception_handler(Exception, errors.unexpected_error_response)
    app.include_router(api.router)
    app.include_router(webhooks.router)
    app.include_router(realtime.router)
    app.include_router(realtime_authentication.router)
    app.include_router(webapp.router)
    app.include_router(webapp_page.router)
    if telemetry is not None and telemetry.tracer_provider is not None:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        app.add_middleware(OpenTelemetryMiddleware, tracer_provider=telemetry.tracer_provider)
    # Outermost: a request is weighed (key, size, pace) before anything reads it.
    app.add_middleware(Intake)
    return app
