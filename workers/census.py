"""The census of processes, for dashboards and alerts.

Every CENSUS_SECONDS the workflows worker reads Temporal's visibility and
publishes, through its runtime's meter (the same `/metrics` as the SDK's):

| metric | labels | what |
|---|---|---|
| `cardflow_processes` | workflow_type, status | running processes by ProcessStatus |
| `cardflow_operator_waits` | workflow_type | processes waiting for an operator |
| `cardflow_operator_wait_oldest_seconds` | workflow_type | the longest wait so far |
| `cardflow_schedule_last_run_timestamp_seconds` | schedule | its last run began (or its creation) |
| `cardflow_schedule_interval_seconds` | schedule | the time between its next two runs |
| `cardflow_schedule_paused` | schedule | 1 while paused |
| `cardflow_schedule_missed_runs` | schedule | runs it missed (catch-up window passed) |
| `cardflow_census_timestamp_seconds` | | when the census last completed |

Cards are counted, not listed: they are one long-lived process per card, so
each card status is one count query. Every other running process is listed
(they are the processes in flight, up to CENSUS_LIST_MAX). A process without
a ProcessStatus yet counts as `none`. A series the census no longer finds
reads 0, not its last value. Each workflows worker takes the census, so the
series repeat per replica: dashboards and rules take their max.

How long an operator wait has lasted is read from the process's history,
newest event first: the wait began at the last upsert of its ProcessStatus
(or at its start, if it started waiting). A wait's start is kept while the
process keeps waiting in the same status, so each is read once.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.service import RPCError

from activities.metrics import sampling_every
from schemas.issuer import CardState
from schemas.search import PROCESS_STATUS
from workflows.cards import CARD_WORKFLOW, STATUS_EXCEPTION, STATUS_REPLACED
from workflows.onboarding import ONBOARDING_WORKFLOW
from workflows.process import STATUS_STUCK
from workflows.reconciliation import RECONCILIATION_WORKFLOW, STAGE_AWAITING_DECISIONS
from workflows.topup import TOPUP_WORKFLOW
from workflows.topup_steps import STAGE_REVIEW

CENSUS_SECONDS = 30.0
CENSUS_LIST_MAX = 10_000
# Events read back from a waiting process's end to find where its wait began.
WAIT_EVENTS_READ_MAX = 1_000

PROCESSES = "cardflow_processes"
OPERATOR_WAITS = "cardflow_operator_waits"
OPERATOR_WAIT_OLDEST_SECONDS = "cardflow_operator_wait_oldest_seconds"
SCHEDULE_LAST_RUN = "cardflow_schedule_last_run_timestamp_seconds"
SCHEDULE_INTERVAL = "cardflow_schedule_interval_seconds"
SCHEDULE_PAUSED = "cardflow_schedule_paused"
SCHEDULE_MISSED_RUNS = "cardflow_schedule_missed_runs"
CENSUS_TIMESTAMP = "cardflow_census_timestamp_seconds"
EXPOSED_NAMES = (
    PROCESSES,
    OPERATOR_WAITS,
    OPERATOR_WAIT_OLDEST_SECONDS,
    SCHEDULE_LAST_RUN,
    SCHEDULE_INTERVAL,
    SCHEDULE_PAUSED,
    SCHEDULE_MISSED_RUNS,
    CENSUS_TIMESTAMP,
)

NO_STATUS = "none"
# The ProcessStatus values of a process that waits for an operator's decision:
# a payment or a KYC check in review (top-up, onboarding), a reconciliation's
# differences, a card's money exception.
OPERATOR_WAIT_STATUSES = (STAGE_REVIEW, STAGE_AWAITING_DECISIONS, STATUS_EXCEPTION)
# The processes that can wait so: their operator-wait series read 0 from the
# first census, so a dashboard shows them and an alert has them to watch.
OPERATOR_WAITING_TYPES = (
    TOPUP_WORKFLOW,
    ONBOARDING_WORKFLOW,
    RECONCILIATION_WORKFLOW,
    CARD_WORKFLOW,
)
CARD_STATUSES = (
    *(state.value for state in CardState),
    STATUS_EXCEPTION,
    STATUS_REPLACED,
    STATUS_STUCK,
)

log = logging.getLogger("cardflow.census")


@dataclass(frozen=True)
class ScheduleFacts:
    schedule_id: str
    last_run: datetime
    interval_seconds: float
    paused: bool
    missed_runs: int


@dataclass
class Census:
    taken_at: datetime
    processes: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Workflow type -> when each of its waiting processes began to wait.
    operator_waits: dict[str, list[datetime]] = field(default_factory=dict)
    schedules: list[ScheduleFacts] = field(default_factory=list)


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _status_of(search_attributes: object) -> str:
    status = search_attributes.get(PROCESS_STATUS)  # type: ignore[attr-defined]
    return status if status else NO_STATUS


class WaitStarts:
    """When each waiting process began its wait, read from its history once
    per (run, status) and kept while it waits."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._known: dict[tuple[str, str, str], datetime] = {}

    async def since(self, workflow_id: str, run_id: str, status: str) -> datetime:
        key = (workflow_id, run_id, status)
        if key not in self._known:
            self._known[key] = await self._read(workflow_id, run_id)
        return self._known[key]

    def keep_only(self, waiting: Iterable[tuple[str, str, str]]) -> None:
        keep = set(waiting)
        self._known = {key: value for key, value in self._known.items() if key in keep}

    async def _read(self, workflow_id: str, run_id: str) -> datetime:
        """The time of the last upsert of ProcessStatus; the start when none."""
        service = self._client.workflow_service
        token = b""
        read = 0
        started: datetime | None = None
        while read < WAIT_EVENTS_READ_MAX:
            page = await service.get_workflow_execution_history_reverse(
                GetWorkflowExecutionHistoryReverseRequest(
                    namespace=self._client.namespace,
                    execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                    maximum_page_size=100,
                    next_page_token=token,
                )
            )
            for event in page.history.events:
                read += 1
                if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
                    fields = event.upsert_workflow_search_attributes_event_attributes
                    if PROCESS_STATUS.name in fields.search_attributes.indexed_fields:
                        return event.event_time.ToDatetime(UTC)
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                    started = event.event_time.ToDatetime(UTC)
            token = page.next_page_token
            if not token:
                break
        if started is not None:
            return started
        # A history longer than we read: the wait began no later than the
        # oldest event read, which the describe's start bounds from below.
        description = await self._client.get_workflow_handle(workflow_id, run_id=run_id).describe()
        return description.start_time


async def take_census(client: Client, wait_starts: WaitStarts, now: datetime) -> Census:
    census = Census(taken_at=now)
    running = "ExecutionStatus = 'Running'"
    async for execution in client.list_workflows(
        f"{running} AND WorkflowType != {_quoted(CARD_WORKFLOW)}", limit=CENSUS_LIST_MAX
    ):
        status = _status_of(execution.typed_search_attributes)
        census.processes[(execution.workflow_type, status)] += 1
    cards = f"{running} AND WorkflowType = {_quoted(CARD_WORKFLOW)}"
    counted = 0
    for status in CARD_STATUSES:
        found = await client.count_workflows(
            f"{cards} AND {PROCESS_STATUS.name} = {_quoted(status)}"
        )
        census.processes[(CARD_WORKFLOW, status)] = found.count
        counted += found.count
    all_cards = await client.count_workflows(cards)
    census.processes[(CARD_WORKFLOW, NO_STATUS)] = max(all_cards.count - counted, 0)

    statuses = ", ".join(_quoted(status) for status in OPERATOR_WAIT_STATUSES)
    waiting: list[tuple[str, str, str]] = []
    async for execution in client.list_workflows(
        f"{running} AND {PROCESS_STATUS.name} IN ({statuses})", limit=CENSUS_LIST_MAX
    ):
        status = _status_of(execution.typed_search_attributes)
        key = (execution.id, execution.run_id, status)
        waiting.append(key)
        since = await wait_starts.since(*key)
        census.operator_waits.setdefault(execution.workflow_type, []).append(since)
    wait_starts.keep_only(waiting)

    async for listed in await client.list_schedules():
        census.schedules.append(await _schedule_facts(client, listed.id))
    return census


async def _schedule_facts(client: Client, schedule_id: str) -> ScheduleFacts:
    description = await client.get_schedule_handle(schedule_id).describe()
    info = description.info
    started = [action.started_at for action in info.recent_actions]
    upcoming = sorted(info.next_action_times)
    interval = (upcoming[1] - upcoming[0]).total_seconds() if len(upcoming) >= 2 else 0.0
    return ScheduleFacts(
        schedule_id=schedule_id,
        last_run=max(started) if started else info.created_at,
        interval_seconds=interval,
        paused=description.schedule.state.paused,
        missed_runs=info.num_actions_missed_catchup_window,
    )


class CensusGauges:
    """The census's gauges; a label set published before and not found now reads 0."""

    def __init__(self, meter: MetricMeter) -> None:
        self.processes = meter.create_gauge(PROCESSES, "Running processes by ProcessStatus")
        self.waits = meter.create_gauge(
            OPERATOR_WAITS, "Running processes waiting for an operator's decision"
        )
        self.oldest = meter.create_gauge_float(
            OPERATOR_WAIT_OLDEST_SECONDS, "How long the longest operator wait has lasted", "s"
        )
        self.last_run = meter.create_gauge_float(
            SCHEDULE_LAST_RUN, "When the schedule's last run started (its creation if none)", "s"
        )
        self.interval = meter.create_gauge_float(
            SCHEDULE_INTERVAL, "Seconds between the schedule's next two runs", "s"
        )
        self.paused = meter.create_gauge(SCHEDULE_PAUSED, "1 while the schedule is paused")
        self.missed = meter.create_gauge(
            SCHEDULE_MISSED_RUNS, "Runs the schedule missed past its catch-up window"
        )
        self.taken_at = meter.create_gauge_float(
            CENSUS_TIMESTAMP, "When the census of processes last completed", "s"
        )
        self._processes_seen: set[tuple[str, str]] = set()
        self._waits_seen: set[str] = set(OPERATOR_WAITING_TYPES)

    def publish(self, census: Census) -> None:
        now = census.taken_at
        current = dict(census.processes)
        for key in self._processes_seen | set(current):
            workflow_type, status = key
            self.processes.set(
                current.get(key, 0), {"workflow_type": workflow_type, "status": status}
            )
        self._processes_seen |= set(current)
        for workflow_type in self._waits_seen | set(census.operator_waits):
            starts = census.operator_waits.get(workflow_type, [])
            labels = {"workflow_type": workflow_type}
            self.waits.set(len(starts), labels)
            oldest = max(((now - since).total_seconds() for since in starts), default=0.0)
            self.oldest.set(max(oldest, 0.0), labels)
        self._waits_seen |= set(census.operator_waits)
        for schedule in census.schedules:
            labels = {"schedule": schedule.schedule_id}
            self.last_run.set(schedule.last_run.timestamp(), labels)
            self.interval.set(schedule.interval_seconds, labels)
            self.paused.set(int(schedule.paused), labels)
            self.missed.set(schedule.missed_runs, labels)
        self.taken_at.set(now.timestamp(), {})


@contextlib.asynccontextmanager
async def taking_census(
    client: Client, meter: MetricMeter, *, every_seconds: float = CENSUS_SECONDS
) -> AsyncIterator[None]:
    """Keep the census's gauges current while the block runs."""
    gauges = CensusGauges(meter)
    wait_starts = WaitStarts(client)

    async def sample() -> None:
        try:
            census = await take_census(client, wait_starts, datetime.now(UTC))
        except (RPCError, OSError) as error:
            log.warning("could not take the census of processes: %s", error)
            return
        gauges.publish(census)

    async with sampling_every(every_seconds, sample, "process-census"):
        yield
