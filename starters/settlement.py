"""Starting and watching the ingest of the issuer's daily settlement file
`settlement/{provider}/{date}`: one client function per action, shared by
the CLI (`cardflow settlement ingest|status`), the scenarios and tests.

`ingest` starts the day's ingest (or joins the one running) and waits for
it, showing its chunks and records as progress bars (from the workflow's
`status` query), then a summary table of the records by class.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import date
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError

from schemas.edge import DAY_MAX, DAY_MIN
from schemas.reconciliation import ISSUER_PROVIDER
from schemas.settlement_ingest import (
    SETTLEMENT_INGEST_WORKFLOW,
    SettlementIngestInput,
    SettlementIngestPolicy,
    SettlementIngestResult,
    SettlementIngestStatus,
)
from schemas.task_queues import TaskQueues
from starters import console
from workers.settings import Settings
from workflows.settlement import (
    SettlementIngest,
    settlement_start_metadata,
    settlement_workflow_id,
)

# How often the progress bars ask the workflow where it is.
PROGRESS_POLL_SECONDS = 1.0


def settlement_input(
    queues: TaskQueues, settlement_date: date, policy: SettlementIngestPolicy | None = None
) -> SettlementIngestInput:
    return SettlementIngestInput(
        settlement_date=settlement_date,
        policy=policy or SettlementIngestPolicy(),
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )


async def start(
    client: Client,
    queues: TaskQueues,
    request: SettlementIngestInput,
    *,
    workflow_id: str | None = None,
) -> WorkflowHandle[SettlementIngest, SettlementIngestResult]:
    """Start the day's ingest, or the handle of the one already running."""
    workflow_id = workflow_id or settlement_workflow_id(request.provider, request.settlement_date)
    metadata = settlement_start_metadata(request)
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            SETTLEMENT_INGEST_WORKFLOW,
            request,
            id=workflow_id,
            task_queue=queues.workflows,
            static_summary=metadata.summary,
            static_details=metadata.details,
        )
    return client.get_workflow_handle_for(SettlementIngest.run, workflow_id)


async def status(client: Client, settlement_date: date) -> SettlementIngestStatus:
    handle = client.get_workflow_handle(settlement_workflow_id(ISSUER_PROVIDER, settlement_date))
    return await handle.query(SettlementIngest.status)


async def watch(
    handle: WorkflowHandle[SettlementIngest, SettlementIngestResult], out: Console
) -> SettlementIngestResult:
    """The ingest's result, with its chunks and records as progress bars meanwhile."""
    result_task = asyncio.ensure_future(handle.result())
    columns = (
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out, transient=True) as progress:
        chunks = progress.add_task("chunks", total=None)
        records = progress.add_task("records", total=None)
        while not result_task.done():
            with contextlib.suppress(Exception):  # not started yet, or between runs
                now = await handle.query(SettlementIngest.status)
                progress.update(chunks, completed=now.chunks_done, total=now.chunks_total or None)
                progress.update(
                    records, completed=now.records_done, total=now.records_total or None
                )
            await asyncio.wait({result_task}, timeout=PROGRESS_POLL_SECONDS)
    return await result_task


def summary_table(workflow_id: str, result: SettlementIngestResult) -> Table:
    table = Table(title=f"{workflow_id}: {result.counts.records} records, {result.chunks} chunks")
    table.add_column("class")
    table.add_column("records", justify="right")
    table.add_column("delta (minor)", justify="right")
    for record_class, count in sorted(result.counts.classes.items()):
        table.add_row(record_class.value, str(count.records), str(count.delta_minor))
    table.caption = (
        f"drift {result.drift_records} records, {result.drift_rate_bps} bps"
        f"{' (operators alerted)' if result.alerted else ''}; "
        f"{result.counts.auto_fixed} fixed, {result.counts.operator_items} for operators; "
        + ", ".join(
            f"{posting.currency.value} interchange {posting.interchange_minor}"
            f" fees {posting.fees_minor}"
            for posting in result.day_postings
        )
    )
    return table


# ----- `cardflow settlement ...` ------------------------------------------------------

settlement_app = typer.Typer(
    help="The issuer's daily settlement file: ingest a day, see its progress.",
    no_args_is_help=True,
)


def _date(value: str) -> date:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        typer.echo(f"date: {value!r} is not YYYY-MM-DD", err=True)
        raise typer.Exit(2) from None
    if not DAY_MIN <= day <= DAY_MAX:
        typer.echo(f"date: {value} is not a day from {DAY_MIN} to {DAY_MAX}", err=True)
        raise typer.Exit(2)
    return day


@settlement_app.command("ingest")
def ingest_command(
    day: Annotated[str, typer.Option("--date", help="The UTC day, YYYY-MM-DD")],
) -> None:
    """Ingest the issuer's settlement file of the day; shows progress, then a summary."""
    from workers.client import connect

    settlement_date = _date(day)
    settings: Settings = console.settings()

    async def go() -> int:
        client = await connect(settings)
        request = settlement_input(settings.task_queues, settlement_date)
        handle = await start(client, settings.task_queues, request)
        typer.echo(f"{handle.id}: {console.ui_link(settings, handle.id)}")
        out = Console()
        result = await watch(handle, out)
        out.print(summary_table(handle.id, result))
        return 0

    raise typer.Exit(console.run(go()))


@settlement_app.command("status")
def status_command(
    day: Annotated[str, typer.Option("--date", help="The UTC day, YYYY-MM-DD")],
) -> None:
    """The day's ingest: its stage, chunks and records done, records by class."""
    from workers.client import connect

    settlement_date = _date(day)
    settings = console.settings()

    async def go() -> int:
        client = await connect(settings)
        typer.echo((await status(client, settlement_date)).model_dump_json(indent=2))
        return 0

    raise typer.Exit(console.run(go()))
