"""Starting card issuing and steering cards: one function per action, shared by
the CLI, the gateway and the scenarios."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from schemas.cards import (
    CardInput,
    CardIssueInput,
    CardIssueResult,
    CardStateChange,
    ExceptionDecision,
    RescheduleDelivery,
    SpendingLimits,
)
from schemas.money import AMOUNT_MINOR_MAX
from schemas.search import CUSTOMER_ID
from schemas.task_queues import TaskQueues
from starters import console
from starters.arguments import CustomerIdArgument
from starters.updates import UPDATE_RPC_TIMEOUT, execute_update
from workflows.card_issue import (
    CARD_ISSUE_WORKFLOW,
    CardIssue,
    card_issue_start_metadata,
    card_issue_workflow_id,
)
from workflows.cards import CardEntity, card_workflow_id

# The card's state changes, by the action's name (the CLI's and the API's).
CARD_ACTIONS = {
    "freeze": CardEntity.freeze,
    "unfreeze": CardEntity.unfreeze,
    "close": CardEntity.close,
    "report_lost": CardEntity.report_lost,
    "report_stolen": CardEntity.report_stolen,
}


async def issue_card(
    client: Client, queues: TaskQueues, request: CardIssueInput
) -> WorkflowHandle[Any, CardIssueResult]:
    request = request.model_copy(
        update={
            "ledger_task_queue": queues.ledger,
            "providers_task_queue": queues.providers,
            "workflows_task_queue": queues.workflows,
        }
    )
    metadata = card_issue_start_metadata(request)
    return await client.start_workflow(
        CARD_ISSUE_WORKFLOW,
        request,
        id=card_issue_workflow_id(request.request_id),
        task_queue=queues.workflows,
        result_type=CardIssueResult,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(CUSTOMER_ID, request.customer_id)]
        ),
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


async def change_card(
    client: Client,
    card_id: str,
    update: str,
    reason: str,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """`update` is one of CARD_ACTIONS (freeze, unfreeze, close, report_lost,
    report_stolen); returns the new state (or the replacement card's id)."""
    handle = client.get_workflow_handle(card_workflow_id(card_id))
    return await execute_update(
        handle,
        CARD_ACTIONS[update],
        CardStateChange(reason=reason),
        id=update_id,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )


async def set_limits(
    client: Client,
    card_id: str,
    limits: SpendingLimits,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> SpendingLimits:
    """Replace the card's spending limits; answers them as the card stored them."""
    handle = client.get_workflow_handle(card_workflow_id(card_id))
    return await handle.execute_update(
        CardEntity.set_limits,
        limits,
        id=update_id,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )


async def reschedule(
    client: Client,
    request_id: str,
    change: RescheduleDelivery,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    handle = client.get_workflow_handle(card_issue_workflow_id(request_id))
    return await execute_update(
        handle,
        CardIssue.reschedule_delivery,
        change,
        id=update_id,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )


async def activate(
    client: Client,
    request_id: str,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    handle = client.get_workflow_handle(card_issue_workflow_id(request_id))
    return await execute_update(
        handle, CardIssue.activate, id=update_id, rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT
    )


async def resolve_exception(
    client: Client,
    card_id: str,
    decision: ExceptionDecision,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """An operator's decision on money the issuer moved that the card could
    not mirror on its own (charge the wallet, or write it off to suspense)."""
    handle = client.get_workflow_handle(card_workflow_id(card_id))
    return await execute_update(
        handle,
        CardEntity.resolve_exception,
        decision,
        id=update_id,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )


async def card_status(client: Client, card_id: str) -> CardInput:
    """The card's state: limits, open authorizations and their holds, exceptions."""
    return await client.get_workflow_handle(card_workflow_id(card_id)).query(CardEntity.status)


# ----- `cardflow card ...` ---------------------------------------------------

card_app = typer.Typer(help="Cards: issue and steer.", no_args_is_help=True)


@card_app.command("issue")
def card_issue_command(
    customer_id: CustomerIdArgument,
    kind: Annotated[str, typer.Option(help="virtual or physical")] = "virtual",
    request_id: Annotated[str | None, typer.Option(help="Your id for this request")] = None,
    line1: Annotated[str, typer.Option(help="Address line")] = "1 Main Street",
    city: Annotated[str, typer.Option()] = "London",
    postal_code: Annotated[str, typer.Option()] = "N1 9GU",
    country: Annotated[str, typer.Option(help="ISO 3166-1 alpha-2")] = "GB",
    wait: Annotated[bool, typer.Option(help="Wait for the outcome")] = False,
) -> None:
    """Issue a card to an approved customer."""
    from workers.client import connect

    settings = console.settings()
    try:
        request = CardIssueInput.model_validate(
            {
                "request_id": request_id or uuid.uuid4().hex[:16],
                "customer_id": customer_id,
                "kind": kind,
                "address": {
                    "line1": line1,
                    "city": city,
                    "postal_code": postal_code,
                    "country": country,
                },
            }
        )
    except ValidationError as error:
        console.refuse_input(error)

    async def run() -> None:
        client = await connect(settings)
        handle = await issue_card(client, settings.task_queues, request)
        typer.echo(f"started {handle.id}: {console.ui_link(settings, handle.id)}")
        if wait:
            typer.echo((await handle.result()).model_dump_json(indent=2))

    console.run(run())


def _card_change(card_id: str, update: str, reason: str) -> None:
    try:
        CardStateChange(reason=reason)
    except ValidationError as error:
        console.refuse_input(error)

    async def action(client: Client) -> str:
        return f"card {card_id}: {await change_card(client, card_id, update, reason)}"

    console.send_update(action)


@card_app.command("freeze")
def card_freeze(card_id: str, reason: str = "customer request") -> None:
    """Pause a card: authorizations are declined until it is unfrozen."""
    _card_change(card_id, "freeze", reason)


@card_app.command("unfreeze")
def card_unfreeze(card_id: str, reason: str = "customer request") -> None:
    """Open a paused card again."""
    _card_change(card_id, "unfreeze", reason)


@card_app.command("close")
def card_close(card_id: str, reason: str = "customer request") -> None:
    """Close a card for good."""
    _card_change(card_id, "close", reason)


@card_app.command("report-lost")
def card_report_lost(card_id: str, reason: str = "reported lost") -> None:
    """Block a lost card and issue its replacement."""
    _card_change(card_id, "report_lost", reason)


@card_app.command("report-stolen")
def card_report_stolen(card_id: str, reason: str = "reported stolen") -> None:
    """Block a stolen card and issue its replacement."""
    _card_change(card_id, "report_stolen", reason)


# A spending limit, as the ledger holds amounts.
LimitOption = typer.Option(min=0, max=AMOUNT_MINOR_MAX, help="minor units")


@card_app.command("limits")
def card_limits(
    card_id: str,
    per_transaction: Annotated[int | None, LimitOption] = None,
    per_day: Annotated[int | None, LimitOption] = None,
    per_month: Annotated[int | None, LimitOption] = None,
    block_mcc: Annotated[list[str] | None, typer.Option(help="MCC to decline (repeatable)")] = None,
) -> None:
    """Set the card's spending limits (replacing the previous ones)."""
    try:
        limits = SpendingLimits(
            per_transaction_minor=per_transaction,
            per_day_minor=per_day,
            per_month_minor=per_month,
            blocked_mccs=block_mcc or [],
        )
    except ValidationError as error:
        console.refuse_input(error)

    async def action(client: Client) -> str:
        return (await set_limits(client, card_id, limits)).model_dump_json(indent=2)

    console.send_update(action)


@card_app.command("show")
def card_show(card_id: str) -> None:
    """The card's state: limits, open authorizations and holds, exceptions."""
    from workers.client import connect

    async def run() -> None:
        state = await card_status(await connect(console.settings()), card_id)
        typer.echo(state.model_dump_json(indent=2, exclude={"seen_events", "recent"}))

    console.run(run())


@card_app.command("resolve-exception")
def card_resolve_exception(
    card_id: str,
    exception_id: str,
    action: Annotated[
        str,
        typer.Option(
            help="charge (the wallet), write_off (to suspense), or dismiss"
            " (a ledger_conflict put right by hand)"
        ),
    ],
    reason: Annotated[str, typer.Option()],
) -> None:
    """An operator's decision on money the issuer settled that the card could not post."""
    try:
        decision = ExceptionDecision(exception_id=exception_id, action=action, reason=reason)  # type: ignore[arg-type]
    except ValidationError as error:
        console.refuse_input(error)
    console.send_update(lambda client: resolve_exception(client, card_id, decision))


@card_app.command("reschedule")
def card_reschedule(
    request_id: str, delivery_date: Annotated[date, typer.Argument(help="YYYY-MM-DD")]
) -> None:
    """Move a physical card's delivery (YYYY-MM-DD), until it ships."""
    try:
        change = RescheduleDelivery(delivery_date=delivery_date)
    except ValidationError as error:
        console.refuse_input(error)
    console.send_update(lambda client: reschedule(client, request_id, change))


@card_app.command("activate")
def card_activate(request_id: str) -> None:
    """Activate a delivered physical card (a lost or stolen card's replacement: by its card id)."""
    console.send_update(lambda client: activate(client, request_id))
