"""Fraud scans and cases: the Temporal Schedule that runs `fraud-scan` every
FRAUD_SCAN_INTERVAL (registered in starters.schedules), and one client
function per action, shared by the CLI (`cardflow fraud scan|status|decide`,
`fraud_app` below), the gateway, the scenarios and the tests.

A scan by hand is `fraud-scan-manual-{UTC second}`: asked twice in the same
second, the second joins the first. A case is `fraud-case/{case_id}`; its
operator's decision is the update `decide`, refused (as a
WorkflowUpdateFailedError naming why) when none is pending, when the case
was decided, or once it has ended.
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
from temporalio.service import RPCError

from schemas.fraud import (
    CASE_ID_PATTERN,
    FraudCaseStatus,
    FraudDecision,
    FraudPolicy,
    FraudScanInput,
    FraudScanReport,
)
from schemas.refusals import Refusal
from schemas.task_queues import TaskQueues
from starters import console
from starters.updates import UPDATE_RPC_TIMEOUT, ended_result, execute_update, refuse
from workers.settings import Settings
from workflows.fraud import (
    FRAUD_SCAN_WORKFLOW,
    FRAUD_SCAN_WORKFLOW_ID,
    FraudCase,
    FraudScan,
    fraud_case_workflow_id,
    fraud_scan_start_metadata,
)

FRAUD_SCAN_SCHEDULE_ID = "fraud-scan"
# Customers are scored over days of activity; a few hours late costs little,
# and a case id per day opens at most one case per customer a day.
FRAUD_SCAN_INTERVAL = timedelta(hours=6)
# A scan missed while the server was down is not caught up past the next one.
FRAUD_SCAN_CATCHUP_WINDOW = FRAUD_SCAN_INTERVAL


def fraud_scan_input(queues: TaskQueues, policy: FraudPolicy | None = None) -> FraudScanInput:
    return FraudScanInput(
        policy=policy or FraudPolicy(),
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
    )


def manual_workflow_id(at: datetime) -> str:
    return f"{FRAUD_SCAN_WORKFLOW_ID}-manual-{at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


async def start_scan(
    client: Client, queues: TaskQueues, request: FraudScanInput, workflow_id: str
) -> WorkflowHandle[Any, FraudScanReport]:
    """Start a scan under `workflow_id`; one running under it is joined."""
    metadata = fraud_scan_start_metadata(request)
    return await client.start_workflow(
        FRAUD_SCAN_WORKFLOW,
        request,
        id=workflow_id,
        task_queue=queues.workflows,
        result_type=FraudScanReport,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


async def scan(
    client: Client, queues: TaskQueues, request: FraudScanInput, workflow_id: str
) -> FraudScanReport:
    """Run (or join) the scan `workflow_id` and wait for its report (its
    last run's, when it continued as new)."""
    return await (await start_scan(client, queues, request, workflow_id)).result()


async def scan_status(client: Client, workflow_id: str) -> FraudScanReport:
    handle = client.get_workflow_handle(workflow_id, result_type=FraudScanReport)
    return await handle.query(FraudScan.status)


def _case(client: Client, case_id: str) -> WorkflowHandle[Any, FraudCaseStatus]:
    return client.get_workflow_handle(fraud_case_workflow_id(case_id), result_type=FraudCaseStatus)


async def status(client: Client, case_id: str) -> FraudCaseStatus:
    """The case's stage, score and signals, the cards it froze, its decision."""
    return await _case(client, case_id).query(FraudCase.status, rpc_timeout=UPDATE_RPC_TIMEOUT)


async def decide(
    client: Client,
    case_id: str,
    decision: FraudDecision,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """An operator's decision on a case waiting for one. The same
    `update_id` again answers the first one's result."""
    handle = _case(client, case_id)
    try:
        return await execute_update(
            handle,
            FraudCase.decide,
            decision,
            id=update_id,
            rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
        )
    except RPCError as error:
        ended = await ended_result(handle, error, "fraud case")
        refuse(Refusal.FINISHED, f"fraud case already finished ({ended.outcome})")


def summary(report: FraudScanReport) -> str:
    lines = [
        f"{report.workflow_id}: {report.stage}; {report.customers_scored} customers scored,"
        f" {report.over_threshold} over the threshold",
    ]
    lines += [f"case opened: {case_id}" for case_id in report.cases_opened]
    lines += [f"already open: {case_id}" for case_id in report.cases_already_open]
    for score in report.top_scores:
        lines.append(f"{score.customer_id}: {score.score}")
        lines += [f"  {line}" for line in score.describe()]
    return "\n".join(lines)


# ----- the schedule --------------------------------------------------------------------


def fraud_scan_schedule(settings: Settings) -> Schedule:
    request = fraud_scan_input(settings.task_queues)
    metadata = fraud_scan_start_metadata(request)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            FRAUD_SCAN_WORKFLOW,
            request,
            id=FRAUD_SCAN_WORKFLOW_ID,
            task_queue=settings.task_queues.workflows,
            static_summary=metadata.summary,
            static_details=metadata.details,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=FRAUD_SCAN_INTERVAL)]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=FRAUD_SCAN_CATCHUP_WINDOW
        ),
    )


# ----- `cardflow fraud ...` ----------------------------------------------------------

fraud_app = typer.Typer(
    help="Fraud: scans of customers' activity, and operators' fraud cases.",
    no_args_is_help=True,
)


def _case_id(value: str) -> str:
    import re

    if re.fullmatch(CASE_ID_PATTERN, value) is None:
        raise typer.BadParameter("a case id is {customer_id}-{YYYYMMDD}, e.g. c-123-20250101")
    return value


CaseIdArgument = Annotated[
    str, typer.Argument(help="The case id ({customer_id}-{YYYYMMDD})", callback=_case_id)
]


@fraud_app.command("scan")
def scan_command() -> None:
    """Score customers' recent activity now (as the schedule does) and open
    cases over the threshold; waits for the scan's report."""
    from workers.client import connect

    settings = console.settings()

    async def go() -> int:
        client = await connect(settings)
        workflow_id = manual_workflow_id(datetime.now(UTC))
        typer.echo(f"{workflow_id}: {console.ui_link(settings, workflow_id)}")
        report = await scan(
            client, settings.task_queues, fraud_scan_input(settings.task_queues), workflow_id
        )
        typer.echo(summary(report))
        return 0

    raise typer.Exit(console.run(go()))


@fraud_app.command("status")
def status_command(case_id: CaseIdArgument) -> None:
    """A case's stage, score and signals, the cards it froze, its decision."""
    from workers.client import connect

    settings = console.settings()

    async def run() -> FraudCaseStatus:
        return await status(await connect(settings), case_id)

    typer.echo(console.run(run()).model_dump_json(indent=2))


@fraud_app.command("decide")
def decide_command(
    case_id: CaseIdArgument,
    clear: Annotated[
        bool,
        typer.Option(
            "--clear/--confirm",
            help="No fraud (the cards the case froze are unfrozen), or fraud (they stay frozen)",
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why")],
    operator: Annotated[str, typer.Option(help="Who decides")],
    close_cards: Annotated[
        bool, typer.Option("--close-cards", help="With --confirm: close the customer's cards")
    ] = False,
) -> None:
    """Decide a fraud case waiting for an operator: clear or confirm."""
    from pydantic import ValidationError

    try:
        decided = FraudDecision.model_validate(
            {
                "action": "clear" if clear else "confirm",
                "close_cards": close_cards,
                "reason": reason,
                "operator": operator,
            }
        )
    except ValidationError as error:
        console.refuse_input(error)
    console.send_update(lambda client: decide(client, case_id, decided))
