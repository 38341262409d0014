"""The Temporal Schedules cardflow keeps (daily reconciliation, the daily
settlement file's ingest, monthly billing, hourly program funding, the
fraud scan every six hours). `cardflow
dev up` and `cardflow schedules ensure` create each one that does not exist
yet and leave an existing one as it is, so running them any number of times
leaves exactly one schedule per id.

A process that runs on a schedule has its id and a function building the
Schedule (action, calendar spec, policies) from the settings in its own
module; SCHEDULES below names each of them once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import typer
from temporalio.client import Client, Schedule, ScheduleAlreadyRunningError

from starters import console
from starters.billing import BILLING_SCHEDULE_ID, billing_schedule
from starters.fraud import FRAUD_SCAN_SCHEDULE_ID, fraud_scan_schedule
from starters.program_funding import PROGRAM_FUNDING_SCHEDULE_ID, program_funding_schedule
from starters.reconcile import DAILY_SCHEDULE_ID, build_daily_schedule
from starters.settlement import SETTLEMENT_SCHEDULE_ID, settlement_schedule
from workers.settings import Settings


@dataclass(frozen=True)
class ScheduleSpec:
    schedule_id: str
    build: Callable[[Settings], Schedule]
    description: str


# Every schedule cardflow keeps.
SCHEDULES: list[ScheduleSpec] = [
    ScheduleSpec(
        schedule_id=BILLING_SCHEDULE_ID,
        build=billing_schedule,
        description="Monthly card fees and statements for the month before",
    ),
    ScheduleSpec(
        schedule_id=DAILY_SCHEDULE_ID,
        build=build_daily_schedule,
        description="reconcile yesterday's issuer settlement report, daily at 02:00 UTC",
    ),
    ScheduleSpec(
        schedule_id=SETTLEMENT_SCHEDULE_ID,
        build=settlement_schedule,
        description="ingest yesterday's issuer settlement file, daily at 03:00 UTC",
    ),
    ScheduleSpec(
        schedule_id=PROGRAM_FUNDING_SCHEDULE_ID,
        build=program_funding_schedule,
        description="keep the card program funded at the issuer; reconcile the bank and custody",
    ),
    ScheduleSpec(
        schedule_id=FRAUD_SCAN_SCHEDULE_ID,
        build=fraud_scan_schedule,
        description="score customers' recent activity; open fraud cases over the threshold",
    ),
]


async def ensure_schedules(client: Client, settings: Settings) -> dict[str, str]:
    """Create each missing schedule; returns schedule id -> "created" or "exists"."""
    outcome: dict[str, str] = {}
    for spec in SCHEDULES:
        try:
            await client.create_schedule(spec.schedule_id, spec.build(settings))
            outcome[spec.schedule_id] = "created"
        except ScheduleAlreadyRunningError:
            outcome[spec.schedule_id] = "exists"
    return outcome


async def ensure_standing(client: Client, settings: Settings) -> dict[str, str]:
    """What always runs: every schedule, and the customers' notifications
    (starters/events.py); name -> "created" or "exists"."""
    from activities.database import create_pool
    from activities.events import CUSTOMERS_ENDPOINT_ID
    from starters.events import ensure_customer_notifications
    from workflows.event_delivery import event_delivery_workflow_id

    outcome = await ensure_schedules(client, settings)
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        outcome[
            event_delivery_workflow_id(CUSTOMERS_ENDPOINT_ID)
        ] = await ensure_customer_notifications(pool, client, settings.task_queues, settings)
    finally:
        await pool.close()
    return outcome


# ----- `cardflow schedules ...` -----------------------------------------------

schedules_app = typer.Typer(help="cardflow's Temporal Schedules.", no_args_is_help=True)


@schedules_app.command("ensure")
def schedules_ensure() -> None:
    """Create every missing schedule and start the customers' notifications
    if they are not running (an existing one is left as it is)."""
    from workers.client import connect

    async def run() -> dict[str, str]:
        settings = console.settings()
        return await ensure_standing(await connect(settings), settings)

    for schedule_id, outcome in console.run(run()).items():
        typer.echo(f"{schedule_id}: {outcome}")
