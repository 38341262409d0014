"""Card controls (schemas/card_controls.py) from outside: a change of the
program's or a customer's controls starts `controls-change/{request_id}`;
a card's own and temporary controls are the card's updates. One client
function per action, shared by the CLI (`cardflow controls ...`), the
gateway and the tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from schemas.card_controls import (
    Controls,
    ControlsChange,
    ControlsChangeInput,
    ControlsChangeResult,
    TemporaryControl,
)
from schemas.task_queues import TaskQueues
from starters import console
from starters.arguments import parse_customer_id
from starters.updates import UPDATE_RPC_TIMEOUT
from workflows.cards import CardEntity, card_workflow_id
from workflows.controls_change import (
    CONTROLS_CHANGE_WORKFLOW,
    controls_change_start_metadata,
    controls_change_workflow_id,
)

controls_app = typer.Typer(help="Card controls: the program's, a customer's, a card's.")


def controls_change_input(change: ControlsChange, queues: TaskQueues) -> ControlsChangeInput:
    return ControlsChangeInput(
        change=change, ledger_task_queue=queues.ledger, providers_task_queue=queues.providers
    )


async def start_controls_change(
    client: Client, change: ControlsChange, queues: TaskQueues
) -> WorkflowHandle[Any, ControlsChangeResult]:
    """Start the change once per request id (a repeat finds the first)."""
    request = controls_change_input(change, queues)
    metadata = controls_change_start_metadata(request)
    workflow_id = controls_change_workflow_id(change.request_id)
    try:
        return await client.start_workflow(
            CONTROLS_CHANGE_WORKFLOW,
            request,
            id=workflow_id,
            task_queue=queues.workflows,
            result_type=ControlsChangeResult,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=metadata.summary,
            static_details=metadata.details,
        )
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle(workflow_id, result_type=ControlsChangeResult)


async def _card_update(
    client: Client,
    card_id: str,
    update: Any,
    argument: Any,
    update_id: str | None,
    rpc_timeout: timedelta | None,
) -> Any:
    handle = client.get_workflow_handle(card_workflow_id(card_id))
    return await handle.execute_update(
        update, argument, id=update_id, rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT
    )


async def set_card_controls(
    client: Client,
    card_id: str,
    controls: Controls,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> Controls:
    """Replace the card's own controls; answers them as the card stored them."""
    stored: Controls = await _card_update(
        client, card_id, CardEntity.set_controls, controls, update_id, rpc_timeout
    )
    return stored


async def add_temporary_control(
    client: Client,
    card_id: str,
    temporary: TemporaryControl,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> list[TemporaryControl]:
    """Add (or replace, by id) temporary controls; answers the card's list."""
    kept: list[TemporaryControl] = await _card_update(
        client, card_id, CardEntity.add_temporary_control, temporary, update_id, rpc_timeout
    )
    return kept


async def remove_temporary_control(
    client: Client,
    card_id: str,
    control_id: str,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> list[TemporaryControl]:
    """Undo a temporary control before its time; answers the card's list."""
    kept: list[TemporaryControl] = await _card_update(
        client, card_id, CardEntity.remove_temporary_control, control_id, update_id, rpc_timeout
    )
    return kept


def _controls_file(path: Path) -> Controls:
    return console.read_model_file(path, Controls, "FILE")


FileArgument = Annotated[Path, typer.Argument(help="The controls as JSON (see the README)")]


@controls_app.command("set")
def set_command(
    file: FileArgument,
    request_id: Annotated[str, typer.Option(help="Names the change; the same id is one change")],
    reason: Annotated[str, typer.Option()],
    operator: Annotated[str, typer.Option(help="Who changes them")],
    customer: Annotated[
        str | None,
        typer.Option(parser=parse_customer_id, help="A customer's controls (else the program's)"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every card was sent them")] = True,
) -> None:
    """Set the program's (or a customer's) card controls: a new version,
    sent to each of its cards."""
    controls = _controls_file(file)
    try:
        change = ControlsChange(
            request_id=request_id,
            customer_id=customer,
            controls=controls,
            reason=reason,
            changed_by=f"operator:{operator}",
        )
    except ValidationError as error:
        console.refuse_input(error)
    from workers.client import connect

    async def run() -> None:
        settings = console.settings()
        client = await connect(settings)
        handle = await start_controls_change(client, change, settings.task_queues)
        typer.echo(f"started {handle.id}: {console.ui_link(settings, handle.id)}")
        if wait:
            typer.echo((await handle.result()).model_dump_json(indent=2))

    console.run(run())


@controls_app.command("card")
def card_command(
    card_id: Annotated[str, typer.Argument()],
    file: FileArgument,
    hours: Annotated[
        int | None,
        typer.Option(min=1, max=24 * 366, help="Temporary: undone after this many hours"),
    ] = None,
    control_id: Annotated[
        str, typer.Option("--id", help="A temporary control's id (the same id replaces it)")
    ] = "temporary",
) -> None:
    """Set a card's own controls, or (with --hours) add temporary ones."""
    controls = _controls_file(file)
    temporary: TemporaryControl | None = None
    if hours is not None:
        try:
            temporary = TemporaryControl(
                id=control_id,
                controls=controls,
                until=datetime.now(UTC) + timedelta(hours=hours),
            )
        except ValidationError as error:
            console.refuse_input(error)

    async def answer(client: Client) -> str:
        if temporary is None:
            stored = await set_card_controls(client, card_id, controls)
            return stored.model_dump_json(indent=2, exclude_none=True)
        kept = await add_temporary_control(client, card_id, temporary)
        return json.dumps([t.model_dump(mode="json") for t in kept], indent=2)

    console.send_update(answer)
