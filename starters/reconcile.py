"""Starting and steering reconciliations: one client function per action,
shared by the CLI (`cardflow reconcile ...`, `reconcile_app` below), the
gateway, the scenarios and the demo; and the daily schedule that runs
`reconciliation/issuer/{yesterday}` (registered in starters.schedules).

Operators hear about differences over the threshold by e-mail to
`operators_email` (the notification provider's e-mail channel; default
OPERATORS_EMAIL_DEFAULT) and answer with `cardflow reconcile decide`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import typer
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
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from schemas.edge import DAY_MAX, DAY_MIN
from schemas.periods import day_not_ended, refuse_unended_day
from schemas.reconciliation import (
    ISSUER_PROVIDER,
    Decision,
    DecisionAction,
    ReconciliationInput,
    ReconciliationItem,
    ReconciliationPolicy,
    ReconciliationResult,
    ReconciliationStatus,
    ScheduledReconciliationInput,
)
from schemas.search import PROVIDER
from schemas.task_queues import TaskQueues
from starters import console
from starters.updates import execute_update
from workers.settings import Settings
from workflows.reconciliation import (
    RECONCILIATION_WORKFLOW,
    Reconciliation,
    reconciliation_start_metadata,
    reconciliation_workflow_id,
)
from workflows.scheduled_reconciliation import (
    SCHEDULED_RECONCILIATION_WORKFLOW,
    scheduled_reconciliation_start_metadata,
)

DAILY_SCHEDULE_ID = "reconciliation-issuer-daily"
# The issuer closes a UTC day's report shortly after midnight; run at 02:00.
DAILY_RUN_HOUR_UTC = 2
# A schedule that missed its time (server down) still runs within this window.
CATCHUP_WINDOW = timedelta(hours=12)
SAY = Callable[[str], Awaitable[None] | None]


def reports_dir(settings: Settings) -> str:
    return str(settings.home_path / "reports")


def reconciliation_input(
    settings: Settings,
    queues: TaskQueues,
    settlement_date: date,
    policy: ReconciliationPolicy | None = None,
) -> ReconciliationInput:
    return ReconciliationInput(
        settlement_date=settlement_date,
        reports_dir=reports_dir(settings),
        policy=policy or ReconciliationPolicy(),
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )


async def start(
    client: Client, queues: TaskQueues, request: ReconciliationInput
) -> WorkflowHandle[Any, ReconciliationResult]:
    """Start reconciliation/{provider}/{date}; one running or done answers
    with that run (a failed one is started again). A day that has not ended
    is refused (PeriodNotEnded naming settlement_date): reconciled early,
    it would leave nothing for the run once it is over."""
    refuse_unended_day("settlement_date", request.settlement_date, datetime.now(UTC))
    workflow_id = reconciliation_workflow_id(request.provider, request.settlement_date)
    metadata = reconciliation_start_metadata(request)
    try:
        return await client.start_workflow(
            RECONCILIATION_WORKFLOW,
            request,
            id=workflow_id,
            task_queue=queues.workflows,
            result_type=ReconciliationResult,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(PROVIDER, request.provider)]
            ),
            static_summary=metadata.summary,
            static_details=metadata.details,
        )
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle(workflow_id, result_type=ReconciliationResult)


async def run(
    client: Client, queues: TaskQueues, request: ReconciliationInput
) -> ReconciliationResult:
    """Reconcile the day and wait for the report."""
    handle = await start(client, queues, request)
    return await handle.result()


async def decide(
    client: Client,
    settlement_date: date,
    decision: Decision,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> ReconciliationItem:
    """An operator's decision on one item over the threshold; the validator
    refuses an unknown item or one no longer awaiting a decision. The same
    `update_id` again answers the first one's result."""
    handle = _handle(client, settlement_date)
    return await execute_update(
        handle, Reconciliation.decide, decision, id=update_id, rpc_timeout=rpc_timeout
    )


async def status(client: Client, settlement_date: date) -> ReconciliationStatus:
    return await _handle(client, settlement_date).query(Reconciliation.status)


def _handle(client: Client, settlement_date: date) -> WorkflowHandle[Any, ReconciliationResult]:
    return client.get_workflow_handle(
        reconciliation_workflow_id(ISSUER_PROVIDER, settlement_date),
        result_type=ReconciliationResult,
    )


def summary(result: ReconciliationResult) -> str:
    report = result.report
    counts = ", ".join(f"{kind} {count}" for kind, count in report.counts.items())
    lines = [
        f"{report.workflow_id}: {report.records_total} records in {report.download.pages} pages, "
        f"{report.records_matched} matched, {report.records_not_applicable} not card postings",
        f"differences: {counts}",
    ]
    for currency in report.currencies:
        lines.append(
            f"{currency.currency.value}: volume {currency.volume_minor}, drift "
            f"{currency.drift_minor} (rate {currency.drift_rate}), fixed {currency.fixed_minor}, "
            f"unexplained {currency.unexplained_minor} (rate {currency.unexplained_drift_rate})"
            + (
                f", {currency.reversals} earlier fixes reversed after a late posting or "
                f"settlement ({currency.reversed_minor})"
                if currency.reversals
                else ""
            )
        )
    lines.append(f"report: {result.paths.json_path}")
    lines.append(f"        {result.paths.csv_path}")
    return "\n".join(lines)


# ----- the daily schedule ------------------------------------------------------------


def build_daily_schedule(settings: Settings) -> Schedule:
    queues = settings.task_queues
    driver = ScheduledReconciliationInput(
        reports_dir=reports_dir(settings),
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )
    metadata = scheduled_reconciliation_start_metadata(driver)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SCHEDULED_RECONCILIATION_WORKFLOW,
            driver,
            id=DAILY_SCHEDULE_ID,
            task_queue=queues.workflows,
            static_summary=metadata.summary,
            static_details=metadata.details,
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    hour=[ScheduleRange(DAILY_RUN_HOUR_UTC)], minute=[ScheduleRange(0)]
                )
            ]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=CATCHUP_WINDOW),
    )


# ----- the demo ------------------------------------------------------------------------


async def demo_reconciliation(
    client: Client, settings: Settings, say: SAY, settlement_date: date
) -> None:
    """Reconcile the demo's day (one that has ended: the demo runs the
    issuer's clock behind, so its card activity settles on it) and say the
    counts, the unexplained drift and where the report is."""
    result = await run(
        client,
        settings.task_queues,
        reconciliation_input(settings, settings.task_queues, settlement_date),
    )
    unexplained = sum(currency.unexplained_minor for currency in result.report.currencies)
    for line in [*summary(result).splitlines(), f"unexplained drift: {unexplained}"]:
        said = say(line)
        if said is not None:
            await said


# ----- `cardflow reconcile ...` ------------------------------------------------------

reconcile_app = typer.Typer(
    help="Reconciliation with the issuer: run a day, decide differences.", no_args_is_help=True
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


@reconcile_app.command("run")
def run_command(
    day: Annotated[str, typer.Option("--date", help="The UTC day, YYYY-MM-DD")],
) -> None:
    """Reconcile the issuer's settlement report of the day; waits for the report."""
    from workers.client import connect

    settlement_date = _date(day)
    refusal = day_not_ended(settlement_date, datetime.now(UTC))
    if refusal is not None:
        typer.echo(f"date: {refusal}", err=True)
        raise typer.Exit(2)
    settings = console.settings()

    async def go() -> int:
        client = await connect(settings)
        request = reconciliation_input(settings, settings.task_queues, settlement_date)
        workflow_id = reconciliation_workflow_id(ISSUER_PROVIDER, settlement_date)
        typer.echo(f"{workflow_id}: {console.ui_link(settings, workflow_id)}")
        result = await run(client, settings.task_queues, request)
        typer.echo(summary(result))
        return 0

    raise typer.Exit(console.run(go()))


@reconcile_app.command("decide")
def decide_command(
    day: Annotated[str, typer.Option("--date", help="The reconciled UTC day, YYYY-MM-DD")],
    item: Annotated[str, typer.Option("--item", help="The item id (issuer transaction id)")],
    action: Annotated[str, typer.Option("--action", help="adjust or dismiss")],
    operator: Annotated[str, typer.Option("--operator", help="Who decides")],
    reason: Annotated[str, typer.Option("--reason")] = "",
) -> None:
    """Decide one difference over the threshold: adjust through suspense, or dismiss."""
    from pydantic import ValidationError

    settlement_date = _date(day)
    if action not in {choice.value for choice in DecisionAction}:
        typer.echo(f"action: {action!r} is not one of adjust, dismiss", err=True)
        raise typer.Exit(2)
    try:
        decision = Decision.model_validate(
            {"item_id": item, "action": action, "operator": operator, "reason": reason}
        )
    except ValidationError as error:
        console.refuse_input(error)

    async def action_(client: Client) -> str:
        return (await decide(client, settlement_date, decision)).model_dump_json(indent=2)

    console.send_update(action_)


@reconcile_app.command("status")
def status_command(
    day: Annotated[str, typer.Option("--date", help="The reconciled UTC day, YYYY-MM-DD")],
) -> None:
    """The reconciliation's stage and its items."""
    from workers.client import connect

    settlement_date = _date(day)
    settings = console.settings()

    async def go() -> int:
        client = await connect(settings)
        typer.echo((await status(client, settlement_date)).model_dump_json(indent=2))
        return 0

    raise typer.Exit(console.run(go()))
