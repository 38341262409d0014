"""The reconciliation's scenario: a day's card activity reconciled clean."""

from __future__ import annotations

import uuid

from temporalio.client import Client

from starters.scenario_steps import wait_until
from starters.scenarios_cards import funded_virtual_card
from workers.settings import Settings
from workflows.cards import CardEntity, card_workflow_id


async def reconciliation_clean(client: Client, settings: Settings) -> list[str]:
    """A funded customer's card clears a purchase on a day that has ended
    (the issuer's clock set a day behind for it); the daily action, started
    by hand for that day, reconciles it: every record matched, no drift."""
    from schemas.reconciliation import (
        ReconciliationResult,
        ScheduledReconciliationInput,
        ScheduledReconciliationResult,
    )
    from starters.reconcile import DAILY_SCHEDULE_ID, reports_dir, summary
    from starters.simulate import authorize, clear, set_issuer_clock_behind
    from workflows.scheduled_reconciliation import (
        SCHEDULED_RECONCILIATION_WORKFLOW,
        scheduled_reconciliation_start_metadata,
    )

    _, _, card_id = await funded_virtual_card(client, settings)
    day = await set_issuer_clock_behind(settings, days=1)
    try:
        authorization = await authorize(settings, card_id, 3_000)
        cleared = await clear(settings, authorization.id, 3_000, final=True)
    finally:
        await set_issuer_clock_behind(settings, days=0)
    card = client.get_workflow_handle(card_workflow_id(card_id))

    async def settled() -> bool:
        state = await card.query(CardEntity.status)
        return cleared.id in state.seen_events and not state.authorizations

    await wait_until(settled, f"the card settles {cleared.id}")
    queues = settings.task_queues
    driver_id = f"{DAILY_SCHEDULE_ID}-manual-{uuid.uuid4().hex[:8]}"
    driver = ScheduledReconciliationInput(
        settlement_date=day,
        reports_dir=reports_dir(settings),
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )
    metadata = scheduled_reconciliation_start_metadata(driver)
    started: ScheduledReconciliationResult = await client.execute_workflow(
        SCHEDULED_RECONCILIATION_WORKFLOW,
        driver,
        id=driver_id,
        task_queue=queues.workflows,
        static_summary=metadata.summary,
        static_details=metadata.details,
        result_type=ScheduledReconciliationResult,
    )
    result = await client.get_workflow_handle(
        started.workflow_id, result_type=ReconciliationResult
    ).result()
    if result.report.items or result.report.records_matched < 1:
        raise RuntimeError(f"the day did not reconcile clean:\n{summary(result)}")
    return [driver_id, started.workflow_id]
