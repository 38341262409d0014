"""Billing and statements: one client function per action, shared by the CLI
(`cardflow billing run`, `cardflow statement show`), the gateway, the
scenarios and the demo; and the monthly Temporal Schedule that starts the
billing driver.

`bill` bills one customer's period; starting it again for a period already
billed answers the first run's result (the process id is the period's).
`run_billing` runs the driver for a period (any past month: a backfill), which
bills every customer with cards then and skips those already billed. A month
is billed only once it has ended (schemas/periods.py): this month and later
ones are refused (PeriodNotEnded naming `period`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    WorkflowHandle,
)
from temporalio.client import ScheduleSpec as TemporalScheduleSpec
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from schemas.billing import (
    BillingInput,
    BillingResult,
    BillingRunInput,
    BillingRunResult,
    BillingStatus,
    Statement,
    previous_period,
)
from schemas.periods import month_not_ended, refuse_unended_month
from schemas.search import CUSTOMER_ID
from schemas.task_queues import TaskQueues
from starters import console
from starters.arguments import CustomerIdArgument, parse_customer_id
from workers.settings import Settings
from workflows.billing import (
    BILLING_ID_REUSE_POLICY,
    BILLING_RUN_WORKFLOW,
    BILLING_WORKFLOW,
    Billing,
    billing_run_start_metadata,
    billing_run_workflow_id,
    billing_start_metadata,
    billing_workflow_id,
)

BILLING_SCHEDULE_ID = "billing-monthly"
# The schedule's runs get this id plus the time Temporal appends; the billing
# children's ids (billing/{customer}/{period}) are what make a run idempotent.
SCHEDULED_RUN_WORKFLOW_ID = "billing-run/scheduled"
# The first of every month, 02:00 UTC: the month before has ended everywhere.
BILLING_SCHEDULE_DAY_OF_MONTH = 1
BILLING_SCHEDULE_HOUR_UTC = 2
# A run missed while the server was down still happens within this window.
BILLING_SCHEDULE_CATCHUP_WINDOW = timedelta(days=5)


def statements_dir(settings: Settings) -> Path:
    return settings.home_path / "statements"


_Request = TypeVar("_Request", BillingInput, BillingRunInput)


def with_queues(request: _Request, queues: TaskQueues) -> _Request:
    return request.model_copy(
        update={
            "ledger_task_queue": queues.ledger,
            "providers_task_queue": queues.providers,
            "workflows_task_queue": queues.workflows,
        }
    )


async def start_billing(
    client: Client, queues: TaskQueues, request: BillingInput
) -> WorkflowHandle[Any, BillingResult]:
    """Start billing/{customer}/{period}; a period already billed returns that
    process; a month not over is refused (PeriodNotEnded)."""
    refuse_unended_month("period", request.period, datetime.now(UTC))
    workflow_id = billing_workflow_id(request.customer_id, request.period)
    metadata = billing_start_metadata(request)
    try:
        return await client.start_workflow(
            BILLING_WORKFLOW,
            with_queues(request, queues),
            id=workflow_id,
            task_queue=queues.workflows,
            result_type=BillingResult,
            id_reuse_policy=BILLING_ID_REUSE_POLICY,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(CUSTOMER_ID, request.customer_id)]
            ),
            static_summary=metadata.summary,
            static_details=metadata.details,
        )
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle(workflow_id, result_type=BillingResult)


async def bill(client: Client, queues: TaskQueues, request: BillingInput) -> BillingResult:
    """Bill one customer's period and answer the result (the first run's, if billed)."""
    handle = await start_billing(client, queues, request)
    return await handle.result()


async def run_billing(
    client: Client, queues: TaskQueues, request: BillingRunInput
) -> BillingRunResult:
    """Run the driver for a period (a running one is joined) and answer its
    result; a month not over is refused (PeriodNotEnded)."""
    if request.period is None:
        raise ValueError("period: a run started by hand names its period")
    refuse_unended_month("period", request.period, datetime.now(UTC))
    metadata = billing_run_start_metadata(request)
    handle = await client.start_workflow(
        BILLING_RUN_WORKFLOW,
        with_queues(request, queues),
        id=billing_run_workflow_id(request.period),
        task_queue=queues.workflows,
        result_type=BillingRunResult,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=metadata.summary,
        static_details=metadata.details,
    )
    result: BillingRunResult = await handle.result()
    return result


async def billing_status(client: Client, customer_id: str, period: str) -> BillingStatus:
    handle = client.get_workflow_handle(billing_workflow_id(customer_id, period))
    return await handle.query(Billing.status)


def read_statement(settings: Settings, customer_id: str, period: str) -> Statement | None:
    """The statement written for the period, or None if none was written."""
    json_path, _ = statement_paths(settings, customer_id, period)
    path = Path(json_path)
    if path.parent.parent != statements_dir(settings).resolve() or not path.is_file():
        return None
    return Statement.model_validate_json(path.read_text(encoding="utf-8"))


def statement_paths(settings: Settings, customer_id: str, period: str) -> tuple[Path, Path]:
    base = statements_dir(settings) / customer_id
    return (base / f"{period}.json").resolve(), (base / f"{period}.html").resolve()


def describe_statement(statement: Statement, json_path: Path, html_path: Path) -> str:
    """A few readable lines: each wallet's opening, closing and categories; the fees."""
    from schemas.money import Money

    lines = [f"Statement of {statement.customer_id} for {statement.period}"]
    for w in statement.wallets:
        lines.append(
            f"  {w.code}: opening {Money(amount_minor=w.opening_minor, currency=w.currency)},"
            f" closing {Money(amount_minor=w.closing_minor, currency=w.currency)},"
            f" {len(w.entries)} entries"
        )
        for category, amount in sorted(w.by_category_minor.items()):
            lines.append(f"    {category}: {Money(amount_minor=amount, currency=w.currency)}")
    for fee in statement.fees:
        lines.append(
            f"  fee {fee.card_id}: {Money(amount_minor=fee.amount_minor, currency=fee.currency)}"
            f" {fee.status}{' (' + fee.reason + ')' if fee.reason else ''}"
        )
    lines += [f"  json: {json_path}", f"  html: {html_path}"]
    return "\n".join(lines)


async def demo_statement(
    client: Client,
    settings: Settings,
    say: Callable[[str, str | None], Any],
    customer_id: str,
) -> None:
    """Bill the demo customer for the month before (the latest that has
    ended) and say where the statement is."""
    period = previous_period(datetime.now(UTC))
    result = await bill(
        client,
        settings.task_queues,
        BillingInput(
            customer_id=customer_id,
            period=period,
            statements_dir=str(statements_dir(settings)),
        ),
    )
    charged = ", ".join(f"{a} {c.value}" for c, a in result.fees_charged_minor.items()) or "none"
    say(
        f"Statement of {customer_id} for {period} ({len(result.fees)} active cards,"
        f" fees charged in minor units: {charged}): {result.statement.html_path}",
        billing_workflow_id(customer_id, period),
    )


# ----- the monthly schedule ------------------------------------------------------


def billing_schedule(settings: Settings) -> Schedule:
    """On the first of each month, bill the month before for every customer."""
    queues = settings.task_queues
    run = with_queues(BillingRunInput(statements_dir=str(statements_dir(settings))), queues)
    metadata = billing_run_start_metadata(run)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            BILLING_RUN_WORKFLOW,
            run,
            id=SCHEDULED_RUN_WORKFLOW_ID,
            task_queue=queues.workflows,
            static_summary=metadata.summary,
            static_details=metadata.details,
        ),
        spec=TemporalScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    day_of_month=[ScheduleRange(BILLING_SCHEDULE_DAY_OF_MONTH)],
                    hour=[ScheduleRange(BILLING_SCHEDULE_HOUR_UTC)],
                    minute=[ScheduleRange(0)],
                    second=[ScheduleRange(0)],
                    comment="monthly fees and statements",
                )
            ]
        ),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP,
            catchup_window=BILLING_SCHEDULE_CATCHUP_WINDOW,
        ),
    )


# ----- `cardflow billing ...` and `cardflow statement ...` ----------------------

billing_app = typer.Typer(help="Monthly fees and statements.", no_args_is_help=True)
statement_app = typer.Typer(help="Customers' statements.", no_args_is_help=True)


def _with_client(action: Callable[[Client, Settings], Awaitable[str]]) -> None:
    from workers.client import connect

    settings = console.settings()

    async def run() -> str:
        return await action(await connect(settings), settings)

    typer.echo(console.run(run()))


@billing_app.command("run")
def billing_run_command(
    period: Annotated[str, typer.Option("--period", help="The month billed, YYYY-MM")],
    customer: Annotated[
        str | None,
        typer.Option("--customer", parser=parse_customer_id, help="Bill only this customer"),
    ] = None,
) -> None:
    """Bill a period (a past month too): fees per active card, then statements."""
    from pydantic import ValidationError

    try:
        if customer is None:
            driver = BillingRunInput(period=period)
        else:
            single = BillingInput(customer_id=customer, period=period)
    except ValidationError as error:
        console.refuse_input(error)
    refusal = month_not_ended(period, datetime.now(UTC))
    if refusal is not None:
        typer.echo(f"period: {refusal}", err=True)
        raise typer.Exit(2)

    async def action(client: Client, settings: Settings) -> str:
        directory = str(statements_dir(settings))
        if customer is None:
            run = driver.model_copy(update={"statements_dir": directory})
            return (await run_billing(client, settings.task_queues, run)).model_dump_json(indent=2)
        one = single.model_copy(update={"statements_dir": directory})
        return (await bill(client, settings.task_queues, one)).model_dump_json(indent=2)

    _with_client(action)


@statement_app.command("show")
def statement_show_command(
    customer_id: CustomerIdArgument,
    period: Annotated[str, typer.Argument(help="YYYY-MM")],
) -> None:
    """Print a statement's summary and the paths of its JSON and HTML files."""

    settings = console.settings()
    try:
        statement = read_statement(settings, customer_id, period)
    except (OSError, ValueError) as error:
        typer.echo(f"cardflow: the statement cannot be read: {error}", err=True)
        raise typer.Exit(1) from None
    if statement is None:
        typer.echo(
            f"no statement for {customer_id} in {period}; bill it with"
            f" `cardflow billing run --period {period} --customer {customer_id}`",
            err=True,
        )
        raise typer.Exit(1)
    json_path, html_path = statement_paths(settings, customer_id, period)
    typer.echo(describe_statement(statement, json_path, html_path))


__all__ = [
    "BILLING_SCHEDULE_ID",
    "bill",
    "billing_app",
    "billing_status",
    "demo_statement",
    "run_billing",
    "start_billing",
    "statement_app",
]
