"""Build and serve the simulators from cardflow's settings."""

from __future__ import annotations

from typing import Any

from schemas.providers import PROVIDERS
from simulators import bank
from simulators.app import SimulatorFactory, build_app
from simulators.framework import FaultRegistry, SimulatorContext, Store, WebhookOutbox
from simulators.framework.webhooks import WebhookTarget
from workers.secrets import webhook_secrets
from workers.settings import Settings

# Every simulator, by provider name; each module has create(context) -> FastAPI.
SIMULATORS: dict[str, SimulatorFactory] = {
    bank.NAME: bank.create,
}


def build(settings: Settings) -> Any:
    store = Store(settings.home_path / "simulators" / "state.db")
    secrets = webhook_secrets(settings)
    targets = {
        provider: WebhookTarget(
            f"{settings.gateway_base_url}/webhooks/{provider}", secrets[provider][0]
        )
        for provider in PROVIDERS
        if provider in secrets
    }
    context = SimulatorContext(
        store=store,
        faults=FaultRegistry(),
        outbox=WebhookOutbox(store, targets),
        gateway_url=settings.gateway_base_url,
    )
    return build_app(context, SIMULATORS)
