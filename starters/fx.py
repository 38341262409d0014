"""Starting and steering FX conversions: one client function per action, shared
by the CLI (`cardflow fx ...`, the `fx_app` below), the gateway and the scenarios.

Every refusal reaches the caller the same way, as a WorkflowUpdateFailedError
whose cause names the reason ("declined: insufficient funds ...", "expired:
quote ... expired at ..."), including when the process has already ended:
then the answer comes from its result. So a repeated confirm is idempotent:
it answers the first confirm's result.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer
from temporalio.client import (
    Client,
    WorkflowHandle,
)
from temporalio.service import RPCError

from schemas.fx import FxConversionInput, FxConversionResult, FxOutcome, FxQuoteOffer, FxStatus
from schemas.money import AMOUNT_MINOR_MAX
from schemas.task_queues import TaskQueues
from starters import console
from starters.arguments import CustomerIdArgument
from starters.starting import start_once
from starters.updates import UPDATE_RPC_TIMEOUT, ended_result, execute_update, refuse
from workflows.fx import (
    CANCEL_UPDATE_ID,
    CONFIRM_UPDATE_ID,
    FX_WORKFLOW,
    FxConversion,
    fx_start_metadata,
    fx_workflow_id,
)


def with_queues(request: FxConversionInput, queues: TaskQueues) -> FxConversionInput:
    return request.model_copy(
        update={
            "ledger_task_queue": queues.ledger,
            "providers_task_queue": queues.providers,
            "workflows_task_queue": queues.workflows,
        }
    )


async def start(
    client: Client, queues: TaskQueues, request: FxConversionInput
) -> WorkflowHandle[Any, FxConversionResult]:
    """Start fx/{request_id}; a request id already used returns that process."""
    workflow_id = fx_workflow_id(request.request_id)
    metadata = fx_start_metadata(request)
    return await start_once(
        client,
        FX_WORKFLOW,
        with_queues(request, queues),
        workflow_id=workflow_id,
        task_queue=queues.workflows,
        result_type=FxConversionResult,
        customer_id=request.customer_id,
        metadata=metadata,
    )


async def quote(client: Client, queues: TaskQueues, request: FxConversionInput) -> FxQuoteOffer:
    """Start the conversion and answer its offer (quote, fee, expires_at) once
    the rate source has quoted; a refusal raises WorkflowUpdateFailedError."""
    await start(client, queues, request)
    return await wait_quote(client, request.request_id)


async def wait_quote(client: Client, request_id: str) -> FxQuoteOffer:
    """The running conversion's offer, once there."""
    handle = _handle(client, request_id)
    try:
        # The process bounds its own wait for the quote (quote_wait_seconds):
        # no answer within UPDATE_RPC_TIMEOUT means its workers are down.
        offer = await execute_update(
            handle, FxConversion.wait_quote, rpc_timeout=UPDATE_RPC_TIMEOUT
        )
    except RPCError as error:
        ended = await ended_result(handle, error, "conversion")
        refuse(ended.refusal(), ended.summary())
    return offer


async def confirm(client: Client, request_id: str) -> FxConversionResult:
    """Convert at the quote. Answers the result once the batch is posted;
    raises WorkflowUpdateFailedError with the reason when the quote expired,
    was cancelled, or the ledger declined ("declined: insufficient funds ...")."""
    handle = _handle(client, request_id)
    try:
        result = await execute_update(
            handle, FxConversion.confirm, id=CONFIRM_UPDATE_ID, rpc_timeout=UPDATE_RPC_TIMEOUT
        )
    except RPCError as error:
        ended = await ended_result(handle, error, "conversion")
        if ended.outcome is FxOutcome.CONVERTED:
            return ended
        refuse(ended.refusal(), ended.summary())
    return result


async def cancel(client: Client, request_id: str) -> str:
    """End the conversion with nothing posted, before it is confirmed."""
    handle = _handle(client, request_id)
    try:
        return await execute_update(
            handle, FxConversion.cancel, id=CANCEL_UPDATE_ID, rpc_timeout=UPDATE_RPC_TIMEOUT
        )
    except RPCError as error:
        ended = await ended_result(handle, error, "conversion")
        if ended.outcome is FxOutcome.CANCELLED:
            return ended.summary()
        refuse(ended.refusal(), ended.summary())


async def status(client: Client, request_id: str) -> FxStatus:
    return await _handle(client, request_id).query(
        FxConversion.status, rpc_timeout=UPDATE_RPC_TIMEOUT
    )


def _handle(client: Client, request_id: str) -> WorkflowHandle[Any, FxConversionResult]:
    return client.get_workflow_handle(fx_workflow_id(request_id), result_type=FxConversionResult)


# ----- `cardflow fx ...` ------------------------------------------------------

fx_app = typer.Typer(help="FX conversions: quote, confirm, cancel.", no_args_is_help=True)


@fx_app.command("quote")
def quote_command(
    customer_id: CustomerIdArgument,
    sell: Annotated[str, typer.Option("--sell", help="Currency sold, e.g. USD")],
    buy: Annotated[str, typer.Option("--buy", help="Currency bought, e.g. EUR")],
    sell_amount: Annotated[
        int | None,
        typer.Option("--sell-amount", min=1, max=AMOUNT_MINOR_MAX, help="Amount sold, minor units"),
    ] = None,
    buy_amount: Annotated[
        int | None,
        typer.Option(
            "--buy-amount", min=1, max=AMOUNT_MINOR_MAX, help="Amount bought, minor units"
        ),
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Your id for this request")] = None,
) -> None:
    """Ask for a firm quote; confirm it with `cardflow fx confirm` before it expires."""
    from pydantic import ValidationError

    try:
        request = FxConversionInput.model_validate(
            {
                "request_id": request_id or uuid.uuid4().hex[:16],
                "customer_id": customer_id,
                "sell_currency": sell.upper(),
                "buy_currency": buy.upper(),
                "sell_amount_minor": sell_amount,
                "buy_amount_minor": buy_amount,
            }
        )
    except ValidationError as error:
        console.refuse_input(error)
    settings = console.settings()

    async def action(client: Client) -> str:
        offer = await quote(client, settings.task_queues, request)
        workflow_id = fx_workflow_id(request.request_id)
        return (
            f"{offer.model_dump_json(indent=2)}\n"
            f"confirm before {offer.expires_at.isoformat()}:"
            f" cardflow fx confirm {request.request_id}\n"
            f"{workflow_id}: {console.ui_link(settings, workflow_id)}"
        )

    console.send_update(action)


@fx_app.command("confirm")
def confirm_command(request_id: Annotated[str, typer.Argument()]) -> None:
    """Convert at the quote (before it expires)."""

    async def action(client: Client) -> str:
        return (await confirm(client, request_id)).model_dump_json(indent=2)

    console.send_update(action)


@fx_app.command("cancel")
def cancel_command(request_id: Annotated[str, typer.Argument()]) -> None:
    """Drop the quote; nothing is converted."""

    async def action(client: Client) -> str:
        return await cancel(client, request_id)

    console.send_update(action)


@fx_app.command("status")
def status_command(request_id: Annotated[str, typer.Argument()]) -> None:
    """The conversion's stage, quote, amounts and expiry."""
    from workers.client import connect

    settings = console.settings()

    async def run() -> int:
        client = await connect(settings)
        try:
            answer = await status(client, request_id)
        except RPCError as error:
            typer.echo(f"no conversion {request_id}: {error.message}", err=True)
            return 1
        typer.echo(answer.model_dump_json(indent=2))
        return 0

    raise typer.Exit(console.run(run()))
