"""The card controls' scenario: a customer's controls changed (a new
version sent to their card), the card's own daily limit, a temporary raise
of it that the card's timer undoes, and purchases each of them decides."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from temporalio.client import Client

from schemas.card_controls import Controls, ControlsChange, TemporaryControl, WindowLimit
from schemas.issuer import Merchant
from starters.scenario_steps import wait_until
from starters.scenarios_cards import funded_virtual_card
from workers.settings import Settings
from workflows.cards import CardEntity, card_workflow_id

BISTRO = Merchant(name="Le Bistro", mcc="5812", country="FR")
# The temporary raise lasts this long: long enough for its purchase.
RAISE_SECONDS = 3


async def card_controls(client: Client, settings: Settings) -> list[str]:
    from starters.controls import add_temporary_control, set_card_controls, start_controls_change
    from starters.simulate import authorize

    customer_id, _, card_id = await funded_virtual_card(client, settings, funds_minor=50_000)
    change = await start_controls_change(
        client,
        ControlsChange(
            request_id=f"scenario-{uuid.uuid4().hex[:8]}",
            customer_id=customer_id,
            controls=Controls(country_block=["FR"]),
            reason="scenario",
            changed_by="scenario",
        ),
        settings.task_queues,
    )
    await change.result()
    declined = await authorize(settings, card_id, 1_000, merchant=BISTRO)
    if declined.decision_reason != "country_not_allowed":
        raise RuntimeError(f"the customer's controls did not apply: {declined.decision_reason}")
    daily = Controls(limits=[WindowLimit(window="day", amount_max_minor=5_000)])
    await set_card_controls(client, card_id, daily)
    raised = Controls(limits=[WindowLimit(window="day", amount_max_minor=20_000)])
    await add_temporary_control(
        client,
        card_id,
        TemporaryControl(
            id="scenario-raise",
            controls=raised,
            until=datetime.now(UTC) + timedelta(seconds=RAISE_SECONDS),
        ),
    )
    await authorize(settings, card_id, 8_000)
    card = client.get_workflow_handle(card_workflow_id(card_id))

    async def undone() -> bool:
        return not (await card.query(CardEntity.status)).temporary_controls

    await wait_until(undone, "the temporary raise undoes itself")
    over = await authorize(settings, card_id, 1_000)
    if over.decision_reason != "over_daily_limit":
        raise RuntimeError(f"the raise outlived its time: {over.decision_reason}")
    return [change.id, card_workflow_id(card_id)]
