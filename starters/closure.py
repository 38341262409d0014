"""Starting and steering account closures: one client function per action,
shared by the CLI (`cardflow closure ...`, the `closure_app` below), the
gateway and the tests.

A closure is the customer's one process `closure/{customer_id}`; its
`requested_at` is the starter's clock when it makes the process's input (a
durable input, so a retried or replayed start never moves it). The closure
pays the balance out through child withdrawals on the workflows task queue,
so its input names all three of this deployment's queues, and their watch
for a bank return is this deployment's, as for the withdrawals it starts
(CARDFLOW_WITHDRAWAL_RETURN_WATCH_SECONDS).

A refusal of `decide` reaches the caller as a WorkflowUpdateFailedError
whose cause names the reason ("no decision is pending (stage: ...)"),
including when the closure has already ended: then its outcome is named.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from temporalio.client import (
    Client,
    WorkflowHandle,
)
from temporalio.service import RPCError

from schemas.closures import (
    ClosureDecision,
    ClosureInput,
    ClosurePolicy,
    ClosureRequest,
    ClosureResult,
    ClosureStatus,
)
from schemas.refusals import Refusal
from schemas.task_queues import TaskQueues
from starters import console
from starters.arguments import CustomerIdArgument
from starters.starting import start_once
from starters.updates import UPDATE_RPC_TIMEOUT, ended_result, execute_update, refuse
from workers.settings import Settings
from workflows.closure import (
    CLOSURE_WORKFLOW,
    AccountClosure,
    closure_start_metadata,
    closure_workflow_id,
)


def with_queues(request: ClosureInput, queues: TaskQueues) -> ClosureInput:
    return request.model_copy(
        update={
            "ledger_task_queue": queues.ledger,
            "providers_task_queue": queues.providers,
            "workflows_task_queue": queues.workflows,
        }
    )


def closure_policy(settings: Settings) -> ClosurePolicy:
    """The policy of the closures this deployment starts: its payouts watched
    for a return and the bank asked as its withdrawals are
    (CARDFLOW_WITHDRAWAL_RETURN_WATCH_SECONDS, _OUTCOME_POLL_SECONDS), the
    rest the defaults."""
    return ClosurePolicy(
        return_watch_seconds=settings.withdrawal_return_watch_seconds,
        outcome_poll_seconds=settings.withdrawal_outcome_poll_seconds,
    )


def closure_input(
    request: ClosureRequest,
    queues: TaskQueues,
    requested_at: datetime | None = None,
    policy: ClosurePolicy | None = None,
) -> ClosureInput:
    """The process's input of `request`, requested at `requested_at` (by
    default now, by this clock, in UTC), for this deployment's queues."""
    made = ClosureInput.model_validate(
        {
            **request.model_dump(),
            "requested_at": requested_at or datetime.now(UTC),
            "policy": policy or ClosurePolicy(),
        }
    )
    return with_queues(made, queues)


async def start(
    client: Client, queues: TaskQueues, request: ClosureInput
) -> WorkflowHandle[Any, ClosureResult]:
    """Start closure/{customer_id}; a customer whose closure was already
    started gets that process (which keeps its own input)."""
    workflow_id = closure_workflow_id(request.customer_id)
    metadata = closure_start_metadata(request)
    return await start_once(
        client,
        CLOSURE_WORKFLOW,
        with_queues(request, queues),
        workflow_id=workflow_id,
        task_queue=queues.workflows,
        result_type=ClosureResult,
        customer_id=request.customer_id,
        metadata=metadata,
    )


async def status(client: Client, customer_id: str) -> ClosureStatus:
    """The closure's stage, cards, settled debt, payouts and what an operator
    is asked to decide."""
    return await _handle(client, customer_id).query(
        AccountClosure.status, rpc_timeout=UPDATE_RPC_TIMEOUT
    )


async def decide(
    client: Client,
    customer_id: str,
    decision: ClosureDecision,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """An operator's decision on a closure that cannot go on by itself (the
    cards not closable in time, a payout that failed or came back); refused
    when none is pending. The same `update_id` again answers the first
    one's result."""
    handle = _handle(client, customer_id)
    try:
        return await execute_update(
            handle,
            AccountClosure.decide,
            decision,
            id=update_id,
            rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
        )
    except RPCError as error:
        ended = await ended_result(handle, error, "closure")
        refuse(Refusal.FINISHED, f"closure already finished ({ended.outcome})")


def _handle(client: Client, customer_id: str) -> WorkflowHandle[Any, ClosureResult]:
    return client.get_workflow_handle(closure_workflow_id(customer_id), result_type=ClosureResult)


# ----- `cardflow closure ...` ----------------------------------------------------

closure_app = typer.Typer(
    help="Account closures: start, status, an operator's decision.",
    no_args_is_help=True,
)

IbanOption = Annotated[str | None, typer.Option(help="To a bank account: its IBAN, without spaces")]
NameOption = Annotated[
    str | None, typer.Option(help="To a bank account: its holder, as the bank knows them")
]
AddressOption = Annotated[str | None, typer.Option(help="To a USDT-TRC20 address instead")]


def _destination(
    iban: str | None, name: str | None, address: str | None
) -> dict[str, str | None] | None:
    """The destination as the models take it (they refuse a bad one by
    name); None when none is given; exit 2 when both kinds are."""
    if address is not None and (iban is not None or name is not None):
        typer.echo(
            "--address: the balance goes to an address or to --iban/--name, not both", err=True
        )
        raise typer.Exit(2)
    if address is not None:
        return {"rail": "usdt", "address": address}
    if iban is None and name is None:
        return None
    return {"rail": "bank", "iban": iban, "name": name}


@closure_app.command("start")
def start_command(
    customer_id: CustomerIdArgument,
    iban: IbanOption = None,
    name: NameOption = None,
    address: AddressOption = None,
    reason: Annotated[str, typer.Option(help="Why the account closes")] = "customer request",
) -> None:
    """Close the customer's account: the cards closed, debt settled and the
    balance paid out to their bank account (--iban/--name) or a USDT-TRC20
    address (--address)."""
    from pydantic import ValidationError

    destination = _destination(iban, name, address)
    if destination is None:
        typer.echo(
            "--iban: the balance goes to a bank account (--iban and --name) or to an"
            " address (--address)",
            err=True,
        )
        raise typer.Exit(2)
    try:
        request = ClosureRequest.model_validate(
            {
                "customer_id": customer_id,
                "destination": destination,
                "reason": reason,
            }
        )
    except ValidationError as error:
        console.refuse_input(error)
    settings = console.settings()
    queues = settings.task_queues

    async def action(client: Client) -> str:
        started = await start(
            client, queues, closure_input(request, queues, policy=closure_policy(settings))
        )
        return (
            f"{started.id}: {console.ui_link(settings, started.id)}\n"
            f"follow it: cardflow closure status {request.customer_id}"
        )

    console.send_update(action)


@closure_app.command("status")
def status_command(customer_id: CustomerIdArgument) -> None:
    """The closure's stage, cards, settled debt, payouts and what an operator
    is asked to decide."""
    from workers.client import connect

    settings = console.settings()

    async def run() -> ClosureStatus:
        return await status(await connect(settings), customer_id)

    typer.echo(console.run(run()).model_dump_json(indent=2))


@closure_app.command("decide")
def decide_command(
    customer_id: CustomerIdArgument,
    retry: Annotated[
        bool,
        typer.Option(
            "--retry/--abandon",
            help="Try again (the cards, or the payout) or leave the account open",
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why")],
    operator: Annotated[str, typer.Option(help="Who decides")],
    iban: IbanOption = None,
    name: NameOption = None,
    address: AddressOption = None,
) -> None:
    """Decide a closure waiting for an operator: retry (the payout to another
    account or address, if given) or abandon."""
    from pydantic import ValidationError

    try:
        decided = ClosureDecision.model_validate(
            {
                "action": "retry" if retry else "abandon",
                "destination": _destination(iban, name, address),
                "reason": reason,
                "operator": operator,
            }
        )
    except ValidationError as error:
        console.refuse_input(error)
    console.send_update(lambda client: decide(client, customer_id, decided))
