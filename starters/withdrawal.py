"""Starting and steering withdrawals: one client function per action, shared
by the CLI (`cardflow withdrawal ...`, the `withdrawal_app` below), the
gateway and the tests.

A withdrawal's month (the one its tier's monthly limit counts it in) is the
month of its `requested_at`, which the starter sets from its own clock when
it makes the process's input: a durable input, so a retried or replayed
start never moves it.

A refusal of `review` reaches the caller as a WorkflowUpdateFailedError
whose cause names the reason ("no review is pending (stage: ...)"),
including when the withdrawal has already ended: then its outcome is named.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from temporalio.client import (
    Client,
    WorkflowHandle,
)
from temporalio.service import RPCError

from schemas.refusals import Refusal
from schemas.task_queues import TaskQueues
from schemas.withdrawals import (
    WithdrawalInput,
    WithdrawalPolicy,
    WithdrawalRequest,
    WithdrawalResult,
    WithdrawalReview,
    WithdrawalStatus,
)
from starters import console
from starters.arguments import CustomerIdArgument
from starters.starting import start_once
from starters.updates import UPDATE_RPC_TIMEOUT, ended_result, execute_update, refuse
from workers.settings import Settings
from workflows.withdrawal import (
    WITHDRAWAL_WORKFLOW,
    Withdrawal,
    withdrawal_start_metadata,
    withdrawal_workflow_id,
)


def with_queues(request: WithdrawalInput, queues: TaskQueues) -> WithdrawalInput:
    return request.model_copy(
        update={"ledger_task_queue": queues.ledger, "providers_task_queue": queues.providers}
    )


def withdrawal_policy(settings: Settings) -> WithdrawalPolicy:
    """The policy of the withdrawals this deployment starts: its waits from
    the settings (CARDFLOW_WITHDRAWAL_*), the rest the defaults."""
    return WithdrawalPolicy(
        new_destination_cooling_seconds=settings.withdrawal_cooling_seconds,
        return_watch_seconds=settings.withdrawal_return_watch_seconds,
        outcome_poll_seconds=settings.withdrawal_outcome_poll_seconds,
    )


def withdrawal_input(
    request: WithdrawalRequest,
    queues: TaskQueues,
    requested_at: datetime | None = None,
    policy: WithdrawalPolicy | None = None,
) -> WithdrawalInput:
    """The process's input of `request`, requested at `requested_at` (by
    default now, by this clock, in UTC), for this deployment's queues."""
    made = WithdrawalInput.model_validate(
        {
            **request.model_dump(),
            "requested_at": requested_at or datetime.now(UTC),
            "policy": policy or WithdrawalPolicy(),
        }
    )
    return with_queues(made, queues)


async def start(
    client: Client, queues: TaskQueues, request: WithdrawalInput
) -> WorkflowHandle[Any, WithdrawalResult]:
    """Start withdrawal/{request_id}; a request id already used returns that
    process (which keeps its own input)."""
    workflow_id = withdrawal_workflow_id(request.request_id)
    metadata = withdrawal_start_metadata(request)
    return await start_once(
        client,
        WITHDRAWAL_WORKFLOW,
        with_queues(request, queues),
        workflow_id=workflow_id,
        task_queue=queues.workflows,
        result_type=WithdrawalResult,
        customer_id=request.customer_id,
        metadata=metadata,
    )


async def status(client: Client, request_id: str) -> WithdrawalStatus:
    """The withdrawal's stage, amounts, destination's standing and payout."""
    return await _handle(client, request_id).query(
        Withdrawal.status, rpc_timeout=UPDATE_RPC_TIMEOUT
    )


async def review(
    client: Client,
    request_id: str,
    decision: WithdrawalReview,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """An operator's decision on a withdrawal to a new destination above the
    review threshold; refused when none is pending. The same `update_id`
    again answers the first one's result."""
    handle = _handle(client, request_id)
    try:
        return await execute_update(
            handle,
            Withdrawal.review,
            decision,
            id=update_id,
            rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
        )
    except RPCError as error:
        ended = await ended_result(handle, error, "withdrawal")
        refuse(Refusal.FINISHED, f"withdrawal already finished ({ended.outcome})")


def _handle(client: Client, request_id: str) -> WorkflowHandle[Any, WithdrawalResult]:
    return client.get_workflow_handle(
        withdrawal_workflow_id(request_id), result_type=WithdrawalResult
    )


# ----- `cardflow withdrawal ...` -------------------------------------------------

withdrawal_app = typer.Typer(
    help="Withdrawals to a bank account or a USDT-TRC20 address: start, status, review.",
    no_args_is_help=True,
)


@withdrawal_app.command("start")
def start_command(
    customer_id: CustomerIdArgument,
    amount_minor: Annotated[str, typer.Argument(help="Amount in minor units, e.g. 10000")],
    currency: Annotated[
        str, typer.Option(help="The wallet paid from: USD, EUR, GBP or JPY")
    ] = "USD",
    iban: Annotated[
        str | None, typer.Option(help="To a bank account: its IBAN, without spaces")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="To a bank account: its holder, as the bank knows them")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="To a USDT-TRC20 address instead (converted at a quote)")
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Your id for this request")] = None,
) -> None:
    """Pay out of the customer's wallet to their bank account or a USDT-TRC20
    address, less the fee."""
    from pydantic import ValidationError

    if address is not None and (iban is not None or name is not None):
        typer.echo(
            "--address: a withdrawal goes to an address or to --iban/--name, not both", err=True
        )
        raise typer.Exit(2)
    destination = (
        {"rail": "usdt", "address": address}
        if address is not None
        else {"rail": "bank", "iban": iban, "name": name}
    )
    try:
        request = WithdrawalRequest.model_validate(
            {
                "request_id": request_id or f"w-{uuid.uuid4().hex[:16]}",
                "customer_id": customer_id,
                "amount_minor": _integer(amount_minor),
                "currency": currency,
                "destination": destination,
            }
        )
    except ValidationError as error:
        console.refuse_input(error)
    settings = console.settings()
    queues = settings.task_queues

    async def action(client: Client) -> str:
        started = await start(
            client,
            queues,
            withdrawal_input(request, queues, policy=withdrawal_policy(settings)),
        )
        return (
            f"{started.id}: {console.ui_link(settings, started.id)}\n"
            f"follow it: cardflow withdrawal status {request.request_id}"
        )

    console.send_update(action)


@withdrawal_app.command("status")
def status_command(request_id: Annotated[str, typer.Argument()]) -> None:
    """The withdrawal's stage, amounts, cooling period and the payout."""
    from workers.client import connect

    settings = console.settings()

    async def run() -> WithdrawalStatus:
        return await status(await connect(settings), request_id)

    typer.echo(console.run(run()).model_dump_json(indent=2))


@withdrawal_app.command("review")
def review_command(
    request_id: Annotated[str, typer.Argument()],
    approve: Annotated[bool, typer.Option("--approve/--reject", help="The decision")],
    reason: Annotated[str, typer.Option(help="Why")],
    operator: Annotated[str, typer.Option(help="Who decides")],
) -> None:
    """Decide a withdrawal to a new destination above the review threshold."""
    from pydantic import ValidationError

    try:
        decided = WithdrawalReview.model_validate(
            {"decision": "approve" if approve else "reject", "reason": reason, "operator": operator}
        )
    except ValidationError as error:
        console.refuse_input(error)
    console.send_update(lambda client: review(client, request_id, decided))


def _integer(text: str) -> int | str:
    """An integer as typed; anything else is passed on for the model to refuse by name."""
    try:
        return int(text, 10)
    except ValueError:
        return text
