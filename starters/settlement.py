"""Starting, watching and steering the ingest of the issuer's daily
settlement file `settlement/{provider}/{date}`: one client function per
action, shared by the CLI (`cardflow settlement ingest|status|decide`), the
gateway, the scenarios and tests; and the daily schedule that ingests
yesterday's file (`settlement-issuer-daily`, registered in starters.schedules).

`ingest` starts the day's ingest (or joins the one running) and waits for
it, showing a progress bar per stage (from the workflow's `status` query:
the manifest, chunks, records, the day's totals, the operators' decisions),
then a summary table of the records by class. Operators
hear about the items over the auto-fix threshold by e-mail and answer each
with `decide` (adjust or dismiss).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    WorkflowHandle,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from schemas.edge import DAY_MAX, DAY_MIN
from schemas.reconciliation import ISSUER_PROVIDER, DecisionAction
from schemas.settlement_ingest import (
    SETTLEMENT_INGEST_WORKFLOW,
    OperatorItem,
    ScheduledSettlementInput,
    SettlementDecision,
    SettlementIngestInput,
    SettlementIngestPolicy,
    SettlementIngestResult,
    SettlementIngestStatus,
)
from schemas.task_queues import TaskQueues
from starters import console
from starters.updates import execute_update
from workers.settings import Settings
from workflows.reconciliation import STAGE_AWAITING_DECISIONS
from workflows.scheduled_settlement import (
    SCHEDULED_SETTLEMENT_WORKFLOW,
    scheduled_settlement_start_metadata,
)
from workflows.settlement import (
    STAGE_CHUNKS,
    SettlementIngest,
    settlement_start_metadata,
    settlement_workflow_id,
)

# How often the progress bars ask the workflow where it is.
PROGRESS_POLL_SECONDS = 1.0
SETTLEMENT_SCHEDULE_ID = "settlement-issuer-daily"
# The issuer closes a UTC day's file at its cut-off, shortly after midnight
# (a manifest asked before it is written is answered 503 and waited for);
# the ingest runs at 03:00, after the cut-off and an hour after the day's
# reconciliation (02:00), so the two do not contend for the ledger.
SETTLEMENT_RUN_HOUR_UTC = 3
# A run missed while the server was down still runs within this window.
SETTLEMENT_CATCHUP_WINDOW = timedelta(hours=12)


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
    return await _handle(client, settlement_date).query(SettlementIngest.status)


async def decide(
    client: Client,
    settlement_date: date,
    decision: SettlementDecision,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> OperatorItem:
    """An operator's decision on one item over the threshold of the day's
    ingest; the validator refuses an item the ingest does not hold or one
    no longer awaiting a decision. The same `update_id` again answers the
    first one's result."""
    return await execute_update(
        _handle(client, settlement_date),
        SettlementIngest.decide,
        decision,
        id=update_id,
        rpc_timeout=rpc_timeout,
    )


def _handle(
    client: Client, settlement_date: date
) -> WorkflowHandle[SettlementIngest, SettlementIngestResult]:
    return client.get_workflow_handle_for(
        SettlementIngest.run, settlement_workflow_id(ISSUER_PROVIDER, settlement_date)
    )


# ----- the daily schedule ------------------------------------------------------------


def settlement_schedule(settings: Settings) -> Schedule:
    """Every day at SETTLEMENT_RUN_HOUR_UTC: ingest yesterday's file under
    `settlement/issuer/{yesterday}` (the driver starts it and ends)."""
    queues = settings.task_queues
    driver = ScheduledSettlementInput(
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )
    metadata = scheduled_settlement_start_metadata(driver)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SCHEDULED_SETTLEMENT_WORKFLOW,
            driver,
            id=SETTLEMENT_SCHEDULE_ID,
            task_queue=queues.workflows,
            static_summary=metadata.summary,
            static_details=metadata.details,
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    hour=[ScheduleRange(SETTLEMENT_RUN_HOUR_UTC)], minute=[ScheduleRange(0)]
                )
            ]
        ),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=SETTLEMENT_CATCHUP_WINDOW
        ),
    )


@dataclass(frozen=True)
class StageBar:
    """One stage of the ingest as a progress bar: done of total (None: not
    known yet)."""

    label: str
    completed: int
    total: int | None


# The ingest's stages in order (workflows/settlement.py): a stage after
# another's means that one is over.
STAGE_ORDER = (
    "starting",
    "reading_manifest",
    STAGE_CHUNKS,
    "posting_day_totals",
    STAGE_AWAITING_DECISIONS,
)
STAGES_FINISHED = ("settled", "drift")


def stage_bars(now: SettlementIngestStatus) -> list[StageBar]:
    """Where the ingest is, a bar per stage: the file's manifest recorded,
    its chunks and records ingested (read, matched and fixed), the day's
    interchange and fees posted, the items over the threshold decided."""
    reached = (
        len(STAGE_ORDER)
        if now.stage in STAGES_FINISHED
        else STAGE_ORDER.index(now.stage)
        if now.stage in STAGE_ORDER
        else 0
    )

    def over(stage: str) -> int:
        return int(reached > STAGE_ORDER.index(stage))

    decided = sum(1 for item in now.items if item.state != "awaiting_decision")
    held = len(now.items)
    return [
        StageBar("manifest", over("reading_manifest"), 1),
        StageBar("chunks", now.chunks_done, now.chunks_total or None),
        StageBar("records", now.records_done, now.records_total or None),
        StageBar("day totals", over("posting_day_totals"), 1),
        StageBar(
            "decisions",
            decided if held else over(STAGE_AWAITING_DECISIONS),
            held if held else (1 if reached >= len(STAGE_ORDER) else None),
        ),
    ]


async def watch(
    handle: WorkflowHandle[SettlementIngest, SettlementIngestResult], out: Console
) -> SettlementIngestResult:
    """The ingest's result, with a progress bar per stage meanwhile (each
    stops its clock when done, so the bars end as the time of each stage)."""
    result_task = asyncio.ensure_future(handle.result())
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out) as progress:
        tasks: dict[str, TaskID] = {}
        while True:
            with contextlib.suppress(Exception):  # not started yet, or between runs
                now = await handle.query(SettlementIngest.status)
                for bar in stage_bars(now):
                    if bar.label not in tasks:
                        tasks[bar.label] = progress.add_task(bar.label, total=bar.total)
                    progress.update(tasks[bar.label], completed=bar.completed, total=bar.total)
            if result_task.done():
                break
            await asyncio.wait({result_task}, timeout=PROGRESS_POLL_SECONDS)
    return await result_task


def summary(workflow_id: str, result: SettlementIngestResult) -> list[str | Table]:
    """What the ingest found: the records by class as a table, then its
    drift, fixes, decisions and the day's postings, a line each."""
    table = Table()
    table.add_column("class")
    table.add_column("records", justify="right")
    table.add_column("delta (minor)", justify="right")
    for record_class, count in sorted(result.counts.classes.items()):
        table.add_row(record_class.value, str(count.records), str(count.delta_minor))
    lines: list[str | Table] = [
        f"{workflow_id}: {result.counts.records} records, {result.chunks} chunks",
        table,
        f"drift: {result.drift_records} records, {result.drift_rate_bps} bps"
        + (" (operators alerted)" if result.alerted else ""),
        f"fixes: {result.counts.auto_fixed} fixed, {result.counts.operator_items} for operators"
        f" ({result.adjusted} adjusted, {result.dismissed} dismissed,"
        f" {len(result.undecided)} undecided"
        + (f", {result.items_not_held} left for the next run" if result.items_not_held else "")
        + ")",
    ]
    lines += [
        f"day totals {posting.currency.value}: interchange {posting.interchange_minor},"
        f" fees {posting.fees_minor}" + (" (posted before)" if posting.replayed else "")
        for posting in result.day_postings
    ]
    return lines


# ----- `cardflow settlement ...` ------------------------------------------------------

settlement_app = typer.Typer(
    help="The issuer's daily settlement file: ingest a day, see its progress, decide items.",
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
        for part in summary(handle.id, result):
            out.print(part)
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


@settlement_app.command("decide")
def decide_command(
    day: Annotated[str, typer.Option("--date", help="The ingested UTC day, YYYY-MM-DD")],
    item: Annotated[str, typer.Argument(help="The item's record id")],
    operator: Annotated[str, typer.Option("--operator", help="Who decides")],
    reason: Annotated[str, typer.Option("--reason", help="Why")],
    adjust: Annotated[bool, typer.Option("--adjust", help="Post the fix through suspense")] = False,
    dismiss: Annotated[bool, typer.Option("--dismiss", help="Post nothing")] = False,
) -> None:
    """Decide one item over the auto-fix threshold: --adjust or --dismiss."""
    from pydantic import ValidationError

    settlement_date = _date(day)
    if adjust == dismiss:
        typer.echo("action: give exactly one of --adjust, --dismiss", err=True)
        raise typer.Exit(2)
    action = DecisionAction.ADJUST if adjust else DecisionAction.DISMISS
    try:
        decision = SettlementDecision.model_validate(
            {"item_id": item, "action": action, "operator": operator, "reason": reason}
        )
    except ValidationError as error:
        console.refuse_input(error)

    async def action_(client: Client) -> str:
        return (await decide(client, settlement_date, decision)).model_dump_json(indent=2)

    console.send_update(action_)
