"""The Temporal Schedules cardflow keeps (daily reconciliation, monthly
billing). `cardflow dev up` and `cardflow schedules ensure` create each one
that does not exist yet and leave an existing one as it is, so running them
any number of times leaves exactly one schedule per id.

A process adds its schedule to SCHEDULES: an id and a function building the
Schedule (action, calendar spec, policies) from the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from temporalio.client import Client, Schedule, ScheduleAlreadyRunningError

from workers.settings import Settings


@dataclass(frozen=True)
class ScheduleSpec:
    schedule_id: str
    build: Callable[[Settings], Schedule]
    description: str


# Every schedule cardflow keeps; processes register theirs here.
SCHEDULES: list[ScheduleSpec] = []


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


# Processes register their schedules on import (after SCHEDULES exists).
import starters.billing  # noqa: E402, F401
import starters.reconcile  # noqa: E402, F401
