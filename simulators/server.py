"""Build and serve the simulators from cardflow's settings."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from schemas.providers import PROVIDERS
from simulators.app import SimulatorFactory, build_app
from simulators.framework import FaultRegistry, SimulatorContext, Store, WebhookOutbox
from simulators.framework.webhooks import WebhookTarget, webhook_url
from workers.secrets import webhook_secrets
from workers.settings import Settings

# Simulators of parts that send cardflow no signed webhooks: an upstream app
# taking cardflow's events, and Telegram, whose Bot API the bot calls.
OTHER_SIMULATORS = ("upstream", "telegram")


def simulators() -> dict[str, SimulatorFactory]:
    """Every simulator, by name: the module simulators/{name}.py with NAME
    and create(context) -> FastAPI, for each provider and each other part."""
    found: dict[str, SimulatorFactory] = {}
    for provider in (*PROVIDERS, *OTHER_SIMULATORS):
        if importlib.util.find_spec(f"simulators.{provider}") is None:
            continue
        module = importlib.import_module(f"simulators.{provider}")
        assert module.NAME == provider, f"simulators/{provider}.py names itself {module.NAME}"
        found[provider] = module.create
    return found


def build(settings: Settings) -> Any:
    store = Store(
        settings.home_path / "simulators" / "state.db", id_offset=settings.simulator_id_offset
    )
    secrets = webhook_secrets(settings)
    targets = {
        provider: WebhookTarget(
            webhook_url(settings.gateway_base_url, provider), secrets[provider][0]
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
    return build_app(context, simulators())
