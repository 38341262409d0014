"""Start the Ping workflow and wait for its answer, within a deadline; and
`cardflow ping`, which prints what each task queue answered."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import typer
from temporalio.client import Client

from schemas.health import PingInput, PingResult
from schemas.task_queues import TaskQueues
from starters import console
from workflows.health import PING_WORKFLOW, ping_start_metadata, ping_workflow_id

# Long enough for a worker to pick up a task on a busy machine, short enough
# that `dev status` answers promptly when a worker is down.
PROBE_TIMEOUT_SECONDS = 5
DEADLINE_MARGIN_SECONDS = 5.0
PING_EXECUTION_TIMEOUT = timedelta(seconds=60)


class WorkflowWorkerSilent(Exception):
    """The Ping workflow never got a workflow task: no workflow worker answered."""


async def ping(
    client: Client,
    queues: TaskQueues,
    *,
    requested_by: str = "cardflow",
    probe_timeout_seconds: int = PROBE_TIMEOUT_SECONDS,
    deadline_margin_seconds: float = DEADLINE_MARGIN_SECONDS,
    workflow_id: str | None = None,
) -> PingResult:
    """Run Ping on the workflow queue; raise WorkflowWorkerSilent if nobody runs it."""
    ping = PingInput(
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        requested_by=requested_by,
        probe_timeout_seconds=probe_timeout_seconds,
    )
    metadata = ping_start_metadata(ping)
    handle = await client.start_workflow(
        PING_WORKFLOW,
        ping,
        id=workflow_id or ping_workflow_id(uuid.uuid4().hex),
        task_queue=queues.workflows,
        execution_timeout=PING_EXECUTION_TIMEOUT,
        result_type=PingResult,
        static_summary=metadata.summary,
        static_details=metadata.details,
    )
    # Both activity probes run in parallel, each bounded by the probe timeout;
    # the margin covers the workflow tasks around them.
    deadline_seconds = probe_timeout_seconds + deadline_margin_seconds
    try:
        return await asyncio.wait_for(handle.result(), timeout=deadline_seconds)
    except TimeoutError:
        try:
            await handle.terminate(reason="no workflow worker answered the health check")
        except Exception:  # noqa: BLE001 - best effort; the execution timeout ends it anyway
            pass
        raise WorkflowWorkerSilent(
            f"no worker on {queues.workflows} ran the health check within {deadline_seconds}s"
            " (none is polling, or its workflow task fails: see the worker's log)"
        ) from None


def ping_command() -> None:
    """Run the Ping workflow and print what each task queue answered."""
    from workers.client import connect

    settings = console.settings()

    async def run() -> int:
        client = await connect(settings)
        try:
            result = await ping(client, settings.task_queues, requested_by="cardflow ping")
        except WorkflowWorkerSilent as error:
            typer.echo(str(error), err=True)
            return 1
        typer.echo(result.model_dump_json(indent=2))
        return 0 if result.healthy else 1

    raise typer.Exit(asyncio.run(run()))
