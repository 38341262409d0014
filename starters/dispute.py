"""Opening and steering disputes: one client function per action, shared by the
CLI (`cardflow dispute ...`, the `dispute_app` below), the gateway API, the
scenarios, the demo and the tests.

A refusal reaches the caller as a WorkflowUpdateFailedError whose cause names
the reason (e.g. "evidence missing for reason fraudulent: cardholder_statement").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

import typer
from temporalio.client import Client, WorkflowHandle

from schemas.disputes import (
    DisputeInput,
    DisputePolicy,
    DisputeResult,
    DisputeStatusView,
    DisputeSubmission,
    EvidenceItem,
    OperatorAction,
    WithdrawRequest,
)
from schemas.issuer import DisputeOutcome, DisputeReason, EvidenceType
from schemas.money import AMOUNT_MINOR_MAX
from schemas.task_queues import TaskQueues
from starters import console
from starters.arguments import parse_customer_id
from starters.starting import start_once
from starters.updates import UPDATE_RPC_TIMEOUT, execute_update
from workers.settings import Settings
from workflows.dispute import (
    DISPUTE_WORKFLOW,
    DisputeWorkflow,
    dispute_start_metadata,
    dispute_workflow_id,
)

# The demo waits this long at most for each stage it shows.
DEMO_WAIT_SECONDS_MAX = 30.0


def with_queues(request: DisputeInput, queues: TaskQueues) -> DisputeInput:
    return request.model_copy(
        update={
            "ledger_task_queue": queues.ledger,
            "providers_task_queue": queues.providers,
            "workflows_task_queue": queues.workflows,
        }
    )


async def open_dispute(
    client: Client, queues: TaskQueues, request: DisputeInput
) -> WorkflowHandle[Any, DisputeResult]:
    """Start dispute/{transaction_id}; a transaction disputed before answers that process
    (a transaction is disputed once)."""
    workflow_id = dispute_workflow_id(request.transaction_id)
    metadata = dispute_start_metadata(request)
    return await start_once(
        client,
        DISPUTE_WORKFLOW,
        with_queues(request, queues),
        workflow_id=workflow_id,
        task_queue=queues.workflows,
        result_type=DisputeResult,
        customer_id=request.customer_id,
        metadata=metadata,
    )


def handle(client: Client, transaction_id: str) -> WorkflowHandle[Any, DisputeResult]:
    return client.get_workflow_handle(
        dispute_workflow_id(transaction_id), result_type=DisputeResult
    )


async def add_evidence(client: Client, transaction_id: str, item: EvidenceItem) -> None:
    """Hand in one piece of evidence (the signal `add_evidence`)."""
    await handle(client, transaction_id).signal(
        DisputeWorkflow.add_evidence, item, rpc_timeout=UPDATE_RPC_TIMEOUT
    )


async def submit(
    client: Client,
    transaction_id: str,
    evidence: list[EvidenceItem] | None = None,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> DisputeStatusView:
    """Submit the evidence (or answer a representment); refused, naming what is missing."""
    return await execute_update(
        handle(client, transaction_id),
        DisputeWorkflow.submit,
        DisputeSubmission(evidence=evidence or []),
        id=update_id,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )


async def withdraw(
    client: Client,
    transaction_id: str,
    request: WithdrawRequest | None = None,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> DisputeStatusView:
    return await execute_update(
        handle(client, transaction_id),
        DisputeWorkflow.withdraw,
        request or WithdrawRequest(),
        id=update_id,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )


async def operator_action(
    client: Client,
    transaction_id: str,
    action: OperatorAction,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> DisputeStatusView:
    return await execute_update(
        handle(client, transaction_id),
        DisputeWorkflow.operator_action,
        action,
        id=update_id,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )


async def status(client: Client, transaction_id: str) -> DisputeStatusView:
    return await handle(client, transaction_id).query(
        DisputeWorkflow.status, rpc_timeout=UPDATE_RPC_TIMEOUT
    )


async def wait_for_stage(
    client: Client,
    transaction_id: str,
    ready: Callable[[DisputeStatusView], bool],
    seconds: float = DEMO_WAIT_SECONDS_MAX,
) -> DisputeStatusView:
    """Poll the status until `ready` holds; TimeoutError after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        view = await status(client, transaction_id)
        if ready(view):
            return view
        if loop.time() >= deadline:
            raise TimeoutError(f"dispute of {transaction_id} stayed at {view.stage}")
        await asyncio.sleep(0.1)


# ----- the demo -----------------------------------------------------------------

Say = Callable[[str, str | None], Awaitable[None] | None]


async def _say(say: Say, text: str, workflow_id: str | None) -> None:
    said = say(text, workflow_id)
    if said is not None:
        await said


async def dispute_purchase(
    client: Client,
    settings: Settings,
    customer_id: str,
    card_id: str,
    *,
    amount_minor: int,
    outcome: DisputeOutcome,
    contested: bool = False,
    say: Say | None = None,
) -> str:
    """A purchase on the card, cleared, then disputed as fraudulent and credited
    provisionally at once; the network decides `outcome` (after the merchant's
    representment and the customer's answer, when `contested`). Returns the
    dispute's workflow id once it has ended."""
    from starters import simulate

    async def tell(text: str, workflow_id: str | None) -> None:
        if say is not None:
            await _say(say, text, workflow_id)

    queues = settings.task_queues
    authorization = await simulate.authorize(settings, card_id, amount_minor)
    if authorization.status.value != "pending":
        raise RuntimeError(f"purchase declined: {authorization.decision_reason}")
    cleared = await simulate.clear(settings, authorization.id, final=True)
    transaction_id = cleared.id
    await tell(f"purchase {transaction_id} of {amount_minor} USD minor cleared", None)
    await wait_until_recorded(client, transaction_id)
    workflow_id = (
        await open_dispute(
            client,
            queues,
            DisputeInput(
                transaction_id=transaction_id,
                customer_id=customer_id,
                reason=DisputeReason.FRAUDULENT,
                evidence=[
                    EvidenceItem(
                        type=EvidenceType.CARDHOLDER_STATEMENT,
                        description="I did not make this purchase.",
                    )
                ],
                # Credited at once rather than after days.
                policy=DisputePolicy(provisional_credit_after_seconds=0),
            ),
        )
    ).id
    await submit(client, transaction_id)
    view = await wait_for_stage(
        client,
        transaction_id,
        lambda v: v.issuer_dispute_id is not None and v.provisional_credit_minor > 0,
    )
    dispute_id = view.issuer_dispute_id or ""
    await tell(
        f"dispute of {transaction_id} submitted; {view.provisional_credit_minor}"
        " USD minor credited provisionally",
        workflow_id,
    )
    async with simulate.issuer(settings) as issuer:
        if contested:
            await issuer.simulate_dispute_decision(
                dispute_id,
                outcome=DisputeOutcome.REPRESENTMENT,
                idempotency_key=f"scenario-representment-{transaction_id}",
            )
            await wait_for_stage(client, transaction_id, lambda v: v.stage == "representment")
            await tell(f"the merchant contests {transaction_id}; the customer answers", workflow_id)
            await add_evidence(
                client,
                transaction_id,
                EvidenceItem(
                    type=EvidenceType.CORRESPONDENCE,
                    description="The merchant's receipt names another card holder.",
                ),
            )
            await submit(client, transaction_id)
            await wait_for_stage(client, transaction_id, lambda v: v.stage == "pre-arbitration")
        await issuer.simulate_dispute_decision(
            dispute_id, outcome=outcome, idempotency_key=f"scenario-decide-{transaction_id}"
        )
    result = await handle(client, transaction_id).result()
    await tell(
        f"dispute of {transaction_id}: {result.outcome} (kept {result.final_credit_minor},"
        f" taken back {result.reversed_minor}, debt {result.debt_minor} USD minor)",
        workflow_id,
    )
    return workflow_id


async def demo_disputes(
    client: Client, settings: Settings, say: Say, customer_id: str, card_id: str
) -> None:
    """On the demo customer's open, funded USD card: two purchases; one
    disputed, credited provisionally and won, the other disputed and lost."""
    await dispute_purchase(
        client,
        settings,
        customer_id,
        card_id,
        amount_minor=1_250,
        outcome=DisputeOutcome.WON,
        say=say,
    )
    await dispute_purchase(
        client,
        settings,
        customer_id,
        card_id,
        amount_minor=900,
        outcome=DisputeOutcome.LOST,
        say=say,
    )


async def wait_until_recorded(
    client: Client, transaction_id: str, seconds: float = DEMO_WAIT_SECONDS_MAX
) -> None:
    """Wait until the card has recorded a clearing (it then starts the purchase's
    cashback process), which is moments after the issuer's webhook."""
    from temporalio.service import RPCError

    from workflows.cashback import cashback_workflow_id

    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    cashback = client.get_workflow_handle(cashback_workflow_id(transaction_id))
    while True:
        try:
            await cashback.describe()
            return
        except RPCError:
            if loop.time() >= deadline:
                raise TimeoutError(f"the card never recorded {transaction_id}") from None
        await asyncio.sleep(0.1)


# ----- `cardflow dispute ...` ------------------------------------------------------

dispute_app = typer.Typer(
    help="Disputes (chargebacks): open, evidence, submit, status.", no_args_is_help=True
)


@dispute_app.command("open")
def open_command(
    transaction_id: Annotated[str, typer.Argument(help="The cleared transaction's id")],
    customer_id: Annotated[
        str, typer.Option(parser=parse_customer_id, help="Whose transaction it is")
    ],
    reason: Annotated[DisputeReason, typer.Option(help="Why it is disputed")],
    amount_minor: Annotated[
        int | None,
        typer.Option(
            min=1, max=AMOUNT_MINOR_MAX, help="Part of the transaction; left out, all of it"
        ),
    ] = None,
) -> None:
    """Open a dispute; then add evidence and submit it."""
    from pydantic import ValidationError

    try:
        request = DisputeInput(
            transaction_id=transaction_id,
            customer_id=customer_id,
            reason=reason,
            amount_minor=amount_minor,
        )
    except ValidationError as error:
        console.refuse_input(error)
    settings = console.settings()

    async def action(client: Client) -> str:
        started = await open_dispute(client, settings.task_queues, request)
        return f"{started.id}: {console.ui_link(settings, started.id)}"

    console.send_update(action)


@dispute_app.command("evidence")
def evidence_command(
    transaction_id: Annotated[str, typer.Argument()],
    type_: Annotated[EvidenceType, typer.Option("--type", help="What kind of evidence")],
    description: Annotated[str, typer.Option(help="What it shows")],
) -> None:
    """Hand in one piece of evidence."""
    from pydantic import ValidationError

    try:
        item = EvidenceItem(type=type_, description=description)
    except ValidationError as error:
        console.refuse_input(error)

    async def action(client: Client) -> str:
        await add_evidence(client, transaction_id, item)
        return (await status(client, transaction_id)).model_dump_json(indent=2)

    console.send_update(action)


@dispute_app.command("submit")
def submit_command(transaction_id: Annotated[str, typer.Argument()]) -> None:
    """Submit the evidence (or the answer to a representment)."""

    async def action(client: Client) -> str:
        return (await submit(client, transaction_id)).model_dump_json(indent=2)

    console.send_update(action)


@dispute_app.command("withdraw")
def withdraw_command(
    transaction_id: Annotated[str, typer.Argument()],
    by: Annotated[str, typer.Option(help="customer or operator")] = "customer",
) -> None:
    """Withdraw the dispute; any provisional credit is taken back."""
    from pydantic import ValidationError

    try:
        request = WithdrawRequest.model_validate({"by": by})
    except ValidationError as error:
        console.refuse_input(error)

    async def action(client: Client) -> str:
        return (await withdraw(client, transaction_id, request)).model_dump_json(indent=2)

    console.send_update(action)


@dispute_app.command("status")
def status_command(transaction_id: Annotated[str, typer.Argument()]) -> None:
    """The dispute's stage, evidence, deadlines and amounts."""
    from temporalio.service import RPCError

    from workers.client import connect

    settings = console.settings()

    async def run() -> int:
        client = await connect(settings)
        try:
            answer = await status(client, transaction_id)
        except RPCError as error:
            typer.echo(f"no dispute of {transaction_id}: {error.message}", err=True)
            return 1
        typer.echo(json.dumps(answer.model_dump(mode="json"), indent=2))
        return 0

    raise typer.Exit(console.run(run()))
