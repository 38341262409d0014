"""The billing's scenario: a month's run and a customer's statement."""

from __future__ import annotations

import uuid

from temporalio.client import Client

from schemas.cards import CardIssueInput
from starters.cards import issue_card
from starters.scenario_steps import SCENARIO_ADDRESS, fund_wallet
from starters.scenarios_onboarding import onboarding_approved
from workers.settings import Settings


async def billing_period(client: Client, settings: Settings) -> list[str]:
    """A funded customer with a virtual card; the monthly run for the month
    before (the latest that has ended) bills every customer who held a card
    then, and the customer's own billing of that month writes the statement
    (the card came after it: no fee)."""
    from datetime import UTC, datetime

    from schemas.billing import BillingInput, BillingRunInput, previous_period
    from starters.billing import bill, run_billing, statements_dir
    from workflows.billing import billing_run_workflow_id, billing_workflow_id

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await fund_wallet(settings, customer_id, 10_000)
    issued = await issue_card(
        client,
        settings.task_queues,
        CardIssueInput(
            request_id=f"scenario-{uuid.uuid4().hex[:8]}",
            customer_id=customer_id,
            kind="virtual",
            address=SCENARIO_ADDRESS,
        ),
    )
    await issued.result()
    period = previous_period(datetime.now(UTC))
    directory = str(statements_dir(settings))
    await run_billing(
        client,
        settings.task_queues,
        BillingRunInput(period=period, statements_dir=directory),
    )
    await bill(
        client,
        settings.task_queues,
        BillingInput(customer_id=customer_id, period=period, statements_dir=directory),
    )
    return [billing_run_workflow_id(period), billing_workflow_id(customer_id, period)]
