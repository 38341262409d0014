"""The FX conversion's scenarios: a quote confirmed, and a quote left to expire."""

from __future__ import annotations

import uuid

from temporalio.client import Client

from schemas.fx import FxConversionInput, FxPolicy
from schemas.money import Currency
from starters.scenario_steps import fund_wallet
from starters.scenarios_onboarding import onboarding_approved
from workers.settings import Settings


async def _fx_quote(
    client: Client, settings: Settings, tag: str, policy: FxPolicy | None = None
) -> tuple[str, str]:
    """An approved customer with 100.00 USD asks to sell 50.00 USD for EUR;
    returns (customer id, request id) once quoted."""
    from starters.fx import quote

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await fund_wallet(settings, customer_id, 10_000)
    request = FxConversionInput(
        request_id=f"scenario-{tag}-{uuid.uuid4().hex[:8]}",
        customer_id=customer_id,
        sell_currency=Currency.USD,
        buy_currency=Currency.EUR,
        sell_amount_minor=5_000,
        policy=policy or FxPolicy(),
    )
    await quote(client, settings.task_queues, request)
    return customer_id, request.request_id


async def fx_confirmed(client: Client, settings: Settings) -> str:
    """The customer confirms the quote: one atomic batch, then a notice."""
    from starters.fx import confirm
    from workflows.fx import fx_workflow_id

    _, request_id = await _fx_quote(client, settings, "fx-confirmed")
    await confirm(client, request_id)
    handle = client.get_workflow_handle(fx_workflow_id(request_id))
    await handle.result()
    return handle.id


async def fx_expired(client: Client, settings: Settings) -> str:
    """Nobody confirms: the quote expires (policy: 1 s) and nothing is posted."""
    from workflows.fx import fx_workflow_id

    policy = FxPolicy(confirm_wait_seconds_max=1, late_confirm_window_seconds=1)
    _, request_id = await _fx_quote(client, settings, "fx-expired", policy)
    handle = client.get_workflow_handle(fx_workflow_id(request_id))
    await handle.result()
    return handle.id
