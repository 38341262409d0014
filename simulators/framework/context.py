"""What a simulator is given: its store, faults, webhook outbox and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI

from simulators.framework.atomic import atomic_route
from simulators.framework.faults import FaultRegistry
from simulators.framework.store import Store
from simulators.framework.webhooks import WebhookOutbox, WebhookTarget, webhook_url


@dataclass
class SimulatorContext:
    store: Store
    faults: FaultRegistry
    outbox: WebhookOutbox
    # Where cardflow's gateway listens (real-time authorization requests).
    gateway_url: str
    # Per-simulator knobs settable through the admin API (e.g. the issuer's
    # stand-in decision); simulators read them on every request.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def retarget(self, gateway_url: str) -> None:
        """Send webhooks and real-time requests to the gateway at `gateway_url`
        from now on (each provider's webhooks to its path there, same secret)."""
        self.gateway_url = gateway_url
        self.outbox.targets = {
            provider: WebhookTarget(webhook_url(gateway_url, provider), target.secret)
            for provider, target in self.outbox.targets.items()
        }

    def app(self, **options: Any) -> FastAPI:
        """A simulator's app: each call to it takes effect whole or not at
        all (simulators/framework/atomic.py)."""
        app = FastAPI(**options)
        app.router.route_class = atomic_route(self.store)
        return app

    def router(self) -> APIRouter:
        """A router of a simulator's routes, atomic as `app`'s."""
        return APIRouter(route_class=atomic_route(self.store))

    def option(self, simulator: str, name: str, default: Any) -> Any:
        return self.options.get(simulator, {}).get(name, default)
