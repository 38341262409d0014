"""Fraud's scenario: a customer makes five small purchases at one merchant
within minutes; a scan (by hand, as the schedule's would) scores them over
the threshold and opens their case, which freezes their card; an operator
clears the case and the card is unfrozen."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from temporalio.client import Client

from schemas.issuer import Merchant
from starters.scenario_steps import wait_until
from starters.scenarios_cards import funded_virtual_card
from workers.settings import Settings
from workflows.cards import CardEntity, card_workflow_id

SMALL_PURCHASES = 5
SMALL_PURCHASE_MINOR = 300
# The scan's window ends a little after now, so the purchases just made are in it.
WINDOW_END_SLACK = timedelta(minutes=5)


async def fraud_case_cleared(client: Client, settings: Settings) -> list[str]:
    """The scan's and the case's workflow ids."""
    from schemas.fraud import CashbackFarmingPolicy, FraudDecision, FraudPolicy, fraud_case_id
    from starters.fraud import decide, fraud_scan_input, scan, status
    from starters.simulate import authorize, clear
    from workflows.fraud import STAGE_WAITING, fraud_case_workflow_id

    _, _, card_id = await funded_virtual_card(client, settings)
    card = client.get_workflow_handle(card_workflow_id(card_id))
    merchant = Merchant(name=f"Coffee Cart {uuid.uuid4().hex[:6]}", mcc="5814", country="GB")
    cleared = []
    for _ in range(SMALL_PURCHASES):
        authorization = await authorize(settings, card_id, SMALL_PURCHASE_MINOR, merchant=merchant)
        cleared.append((await clear(settings, authorization.id, final=True)).id)

    async def settled() -> bool:
        state = await card.query(CardEntity.status)
        return all(event in state.seen_events for event in cleared) and not state.authorizations

    await wait_until(settled, "the card settles its purchases")
    policy = FraudPolicy(
        cashback_farming=CashbackFarmingPolicy(min_count=SMALL_PURCHASES, weight=60),
        case_threshold=50,
        auto_freeze_threshold=60,
    )
    as_of = datetime.now(UTC) + WINDOW_END_SLACK
    scan_id = f"fraud-scan-scenario-{uuid.uuid4().hex[:8]}"
    report = await scan(
        client,
        settings.task_queues,
        fraud_scan_input(settings.task_queues, policy).model_copy(update={"as_of": as_of}),
        scan_id,
    )
    customer_id = (await card.query(CardEntity.status)).customer_id
    case_id = fraud_case_id(customer_id, as_of.date())
    if case_id not in report.cases_opened:
        raise RuntimeError(f"the scan opened no case for {customer_id}: {report}")

    async def waiting() -> bool:
        return (await status(client, case_id)).stage == STAGE_WAITING

    await wait_until(waiting, f"case {case_id} waits for an operator")
    await decide(
        client,
        case_id,
        FraudDecision(action="clear", reason="a regular at the coffee cart", operator="ops"),
    )
    case = client.get_workflow_handle(fraud_case_workflow_id(case_id))
    await case.result()
    return [scan_id, case.id]
