"""Program funding: the Temporal Schedule that runs `program-funding` every
PROGRAM_FUNDING_INTERVAL (registered in starters.schedules), and one client
function per action, shared by the CLI (`cardflow funding run|status`,
`funding_app` below), the scenarios and the tests.

A run by hand is `program-funding-manual-{UTC second}`: asked twice in the
same second, the second joins the first. Its findings are the run's report
(workflows/program_funding.py); an alerting run also e-mails the operations
mailbox (`operators_email`, default OPERATORS_EMAIL_DEFAULT).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy

from schemas.money import Money
from schemas.program_funding import (
    IssuerAccount,
    ProgramFundingInput,
    ProgramFundingPolicy,
    ProgramFundingReport,
)
from schemas.task_queues import TaskQueues
from schemas.tron import CUSTODY_OPENING_BALANCE_MINOR_DEFAULT
from starters import console
from workers.settings import Settings
from workflows.program_funding import (
    PROGRAM_FUNDING_WORKFLOW,
    PROGRAM_FUNDING_WORKFLOW_ID,
    ProgramFunding,
    program_funding_start_metadata,
)

PROGRAM_FUNDING_SCHEDULE_ID = "program-funding"
# The program's coverage is checked, and a short one funded, this often; a
# wire takes days, so an hour late costs little, and an hour's spend is small
# beside the target's buffer.
PROGRAM_FUNDING_INTERVAL = timedelta(hours=1)
# A run missed while the server was down is not caught up past the next one.
PROGRAM_FUNDING_CATCHUP_WINDOW = PROGRAM_FUNDING_INTERVAL
# The runs the status command looks through for the latest.
LATEST_RUNS_LISTED_MAX = 20


def program_funding_input(
    queues: TaskQueues, policy: ProgramFundingPolicy | None = None
) -> ProgramFundingInput:
    return ProgramFundingInput(
        policy=policy or ProgramFundingPolicy(),
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
    )


def manual_workflow_id(at: datetime) -> str:
    return f"{PROGRAM_FUNDING_WORKFLOW_ID}-manual-{at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


async def start(
    client: Client, queues: TaskQueues, request: ProgramFundingInput, workflow_id: str
) -> WorkflowHandle[Any, ProgramFundingReport]:
    """Start a run under `workflow_id`; one running under it is joined."""
    metadata = program_funding_start_metadata(request)
    return await client.start_workflow(
        PROGRAM_FUNDING_WORKFLOW,
        request,
        id=workflow_id,
        task_queue=queues.workflows,
        result_type=ProgramFundingReport,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


async def run(
    client: Client, queues: TaskQueues, request: ProgramFundingInput, workflow_id: str
) -> ProgramFundingReport:
    """Run (or join) `workflow_id` and wait for its report."""
    return await (await start(client, queues, request, workflow_id)).result()


async def status(client: Client, workflow_id: str) -> ProgramFundingReport:
    handle = client.get_workflow_handle(workflow_id, result_type=ProgramFundingReport)
    return await handle.query(ProgramFunding.status)


async def latest_run(client: Client) -> str | None:
    """The id of the run that started last (the schedule's or by hand), if any."""
    latest: tuple[datetime, str] | None = None
    async for execution in client.list_workflows(
        f'WorkflowType = "{PROGRAM_FUNDING_WORKFLOW}"', limit=LATEST_RUNS_LISTED_MAX
    ):
        if latest is None or execution.start_time > latest[0]:
            latest = (execution.start_time, execution.id)
    return latest[1] if latest else None


def summary(report: ProgramFundingReport) -> str:
    """A few readable lines: each currency's coverage and funding, the bank's
    and custody's drift."""
    lines = [f"{report.workflow_id}: {report.stage}"]
    for funding in report.currencies:
        currency = funding.currency

        def money(amount_minor: int) -> str:
            return str(Money(amount_minor=amount_minor, currency=currency))  # noqa: B023

        funded = (
            f"funded {money(funding.funded_minor)} as {funding.funding_id}"
            f" ({funding.funding_status})"
            if funding.funded_minor
            else f"not funded: {funding.refused}"
            if funding.refused
            else "nothing to fund"
        )
        lines.append(
            f"{currency.value}: issuer {money(funding.issuer_balance_minor)}"
            f" (+{money(funding.pending_minor)} pending), customers"
            f" {money(funding.customers_minor)}, spend {money(funding.spend_per_day_minor)}/day,"
            f" target {money(funding.target_minor)}; {funded};"
            f" coverage {funding.coverage_bps} bps" + (" (LOW)" if funding.coverage_low else "")
        )
    for recovered in report.recovered:
        lines.append(f"told the issuer of {recovered.reference} ({recovered.state})")
    for check in report.bank:
        drift = ", ".join(f"{kind.value} {count}" for kind, count in check.drift_counts.items())
        lines.append(
            f"bank {check.currency.value}: {check.lines} lines, {check.matched} matched,"
            f" {check.in_flight} in flight, {check.drift_lines} drift"
            + (f": {drift}" if drift else "")
        )
        for item in check.drift:
            lines.append(
                f"  {item.kind.value}: {item.line_id} {item.source_id} {item.reference!r}"
                f" bank {item.bank_minor} ledger {item.ledger_minor}"
            )
    if report.custody is not None:
        custody = report.custody
        lines.append(
            f"custody {custody.currency.value}: ledger {custody.ledger_minor}, custodian"
            f" {custody.custodian_minor} (opening {custody.opening_minor}),"
            f" missing {custody.missing_minor}"
        )
    return "\n".join(lines)


# ----- the schedule --------------------------------------------------------------------


def funding_policy(settings: Settings) -> ProgramFundingPolicy:
    """The policy of this deployment's runs: the issuer's account and the
    custodian's opening float from the settings (CARDFLOW_FUNDING_*); on a
    stack of its own simulators, the Tron simulator's opening balance is that
    float, so its runs do not report it as custody drift."""
    account = IssuerAccount.model_validate(
        {
            key: value
            for key, value in (
                ("iban", settings.funding_issuer_iban),
                ("name", settings.funding_issuer_name),
            )
            if value is not None
        }
    )
    opening = settings.funding_custody_opening_minor
    if opening is None:
        opening = 0 if settings.providers_url else CUSTODY_OPENING_BALANCE_MINOR_DEFAULT
    return ProgramFundingPolicy(custody_opening_minor=opening, issuer_account=account)


def program_funding_schedule(settings: Settings) -> Schedule:
    request = program_funding_input(settings.task_queues, funding_policy(settings))
    metadata = program_funding_start_metadata(request)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            PROGRAM_FUNDING_WORKFLOW,
            request,
            id=PROGRAM_FUNDING_WORKFLOW_ID,
            task_queue=settings.task_queues.workflows,
            static_summary=metadata.summary,
            static_details=metadata.details,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=PROGRAM_FUNDING_INTERVAL)]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=PROGRAM_FUNDING_CATCHUP_WINDOW
        ),
    )


# ----- `cardflow funding ...` ----------------------------------------------------------

funding_app = typer.Typer(
    help="Program funding: coverage at the issuer, the bank account and custody reconciled.",
    no_args_is_help=True,
)


@funding_app.command("run")
def run_command() -> None:
    """Run the program-funding process now (as the schedule does); waits for its report."""
    from workers.client import connect

    settings = console.settings()

    async def go() -> int:
        client = await connect(settings)
        workflow_id = manual_workflow_id(datetime.now(UTC))
        typer.echo(f"{workflow_id}: {console.ui_link(settings, workflow_id)}")
        report = await run(
            client,
            settings.task_queues,
            program_funding_input(settings.task_queues, funding_policy(settings)),
            workflow_id,
        )
        typer.echo(summary(report))
        return 0

    raise typer.Exit(console.run(go()))


@funding_app.command("status")
def status_command(
    workflow_id: Annotated[
        str | None, typer.Option("--id", help="A run's workflow id (default: the latest run)")
    ] = None,
) -> None:
    """A run's stage and findings (the latest run's unless --id names one)."""
    from workers.client import connect

    settings = console.settings()

    async def go() -> int:
        client = await connect(settings)
        found = workflow_id or await latest_run(client)
        if found is None:
            typer.echo("no program-funding run yet", err=True)
            return 1
        typer.echo(summary(await status(client, found)))
        return 0

    raise typer.Exit(console.run(go()))
