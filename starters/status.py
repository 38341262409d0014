"""`cardflow status <workflow id>`: any process's state, as Temporal sees it
and as the process itself answers its `status` query."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from starters import console
from workflows.billing import BILLING_RUN_WORKFLOW, BILLING_WORKFLOW, Billing, BillingRun
from workflows.cards import CARD_ISSUE_WORKFLOW, CARD_WORKFLOW, CardEntity, CardIssue
from workflows.cashback import CASHBACK_WORKFLOW, Cashback
from workflows.dispute import DISPUTE_WORKFLOW, DisputeWorkflow
from workflows.fx import FX_WORKFLOW, FxConversion
from workflows.health import PING_WORKFLOW, Ping
from workflows.onboarding import ONBOARDING_WORKFLOW, Onboarding
from workflows.reconciliation import (
    RECONCILIATION_WORKFLOW,
    SCHEDULED_RECONCILIATION_WORKFLOW,
    Reconciliation,
    ScheduledReconciliation,
)
from workflows.topup import TOPUP_WORKFLOW, Topup

# The `status` query of every workflow type cardflow runs, by the type's name.
STATUS_QUERIES: dict[str, Callable[[Any], Any]] = {
    PING_WORKFLOW: Ping.status,
    ONBOARDING_WORKFLOW: Onboarding.status,
    CARD_ISSUE_WORKFLOW: CardIssue.status,
    CARD_WORKFLOW: CardEntity.status,
    CASHBACK_WORKFLOW: Cashback.status,
    TOPUP_WORKFLOW: Topup.status,
    FX_WORKFLOW: FxConversion.status,
    DISPUTE_WORKFLOW: DisputeWorkflow.status,
    BILLING_WORKFLOW: Billing.status,
    BILLING_RUN_WORKFLOW: BillingRun.status,
    RECONCILIATION_WORKFLOW: Reconciliation.status,
    SCHEDULED_RECONCILIATION_WORKFLOW: ScheduledReconciliation.status,
}


def status_command(workflow_id: Annotated[str, typer.Argument()]) -> None:
    """A process's state: Temporal's view and the workflow's own status query."""
    from workers.client import connect

    async def run() -> None:
        client = await connect(console.settings())
        handle = client.get_workflow_handle(workflow_id)
        description = await handle.describe()
        status = description.status.name if description.status else "UNKNOWN"
        typer.echo(f"{workflow_id} ({description.workflow_type}): {status}")
        try:
            query = STATUS_QUERIES.get(description.workflow_type)
            if query is None:
                raise LookupError(f"{description.workflow_type} is not a process cardflow runs")
            answer = await handle.query(query)
            if isinstance(answer, BaseModel):
                answer = answer.model_dump(mode="json")
            typer.echo(json.dumps(answer, indent=2, default=str))
        except Exception as error:  # noqa: BLE001 - a closed or query-less process
            typer.echo(f"(no status query answer: {error})")

    console.run(run())
