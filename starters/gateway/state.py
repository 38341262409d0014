"""What the gateway's routes are given, typed: its Temporal client, its
database pool, its settings, task queues, webhook secrets and metrics.

The app keeps them on `app.state` (create_app sets the settings, queues and
secrets, its lifespan the client, pool and metrics; a test may set any of
them); this module is the one place that reads them there. A route takes
what it needs as a parameter, e.g. `client: TemporalClient`, and
`app.dependency_overrides[temporal_client]` gives it another.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import asyncpg
from fastapi import Depends, Request
from starlette.applications import Starlette
from temporalio.client import Client

from activities.metrics import GatewayMetrics
from activities.providers.activities import ProviderClients
from schemas.task_queues import TaskQueues
from workers.secrets import WebhookSecrets
from workers.settings import Settings

T = TypeVar("T")


def _required(app: Starlette, name: str, kind: type[T]) -> T:
    value = getattr(app.state, name, None)
    # Set by create_app or its lifespan before the first request is served.
    assert isinstance(value, kind), f"the gateway has no {name} ({kind.__name__}) yet"
    return value


def settings_of(app: Starlette) -> Settings:
    return _required(app, "settings", Settings)


def pool_of(app: Starlette) -> asyncpg.Pool:
    return _required(app, "pool", asyncpg.Pool)


def secrets_of(app: Starlette) -> WebhookSecrets:
    return _required(app, "webhook_secrets", WebhookSecrets)


def metrics_of(app: Starlette) -> GatewayMetrics | None:
    """The gateway's metrics, once its lifespan has made them."""
    metrics = getattr(app.state, "metrics", None)
    return metrics if isinstance(metrics, GatewayMetrics) else None


# The request's dependencies below are coroutines, though they await nothing:
# FastAPI runs a plain function dependency in its thread pool, a hop to a
# thread and back for each, on every request (the issuer's real-time
# authorizations among them).


async def temporal_client(request: Request) -> Client:
    return _required(request.app, "client", Client)


async def database_pool(request: Request) -> asyncpg.Pool:
    return pool_of(request.app)


async def gateway_settings(request: Request) -> Settings:
    return settings_of(request.app)


async def task_queues(request: Request) -> TaskQueues:
    return _required(request.app, "queues", TaskQueues)


async def webhook_secrets(request: Request) -> WebhookSecrets:
    return secrets_of(request.app)


async def gateway_metrics(request: Request) -> GatewayMetrics:
    return _required(request.app, "metrics", GatewayMetrics)


async def provider_clients(request: Request) -> ProviderClients:
    return _required(request.app, "providers", ProviderClients)


TemporalClient = Annotated[Client, Depends(temporal_client)]
DatabasePool = Annotated[asyncpg.Pool, Depends(database_pool)]
GatewaySettings = Annotated[Settings, Depends(gateway_settings)]
Queues = Annotated[TaskQueues, Depends(task_queues)]
Secrets = Annotated[WebhookSecrets, Depends(webhook_secrets)]
Metrics = Annotated[GatewayMetrics, Depends(gateway_metrics)]
# The providers' API clients the gateway calls itself (reveal tokens, deposit
# addresses, shipping): made once, their connections kept.
Providers = Annotated[ProviderClients, Depends(provider_clients)]
