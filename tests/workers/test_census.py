"""The census of processes (`workers.census`) against a Temporal server of its
own, so that every running process it counts is one these tests started.

The probes below are workflows that set ProcessStatus as the platform's
processes do (an upsert, or the start's search attributes), one of them
under the card's workflow type: the census reads only Temporal's visibility
and histories, which hold the same records whichever code wrote them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest_asyncio
from temporalio import workflow
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleSpec,
    WorkflowHandle,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from schemas.search import ALL_SEARCH_ATTRIBUTES, PROCESS_STATUS
from starters.devstack.processes import free_port
from starters.devstack.stack import temporal_cli_path
from tests.metrics import prometheus_runtime, scrape
from tests.polling import until
from workers.census import (
    NO_STATUS,
    OPERATOR_WAIT_STATUSES,
    OPERATOR_WAITING_TYPES,
    Census,
    CensusGauges,
    ScheduleFacts,
    WaitStarts,
    take_census,
)
from workflows.cards import CARD_WORKFLOW, STATUS_EXCEPTION
from workflows.topup_steps import STAGE_REVIEW

PROBE = "CensusProbe"
SET_STATUS = "set_status"
FINISH = "finish"
TASK_QUEUE = "census"
VISIBLE_SECONDS = 20.0


@workflow.defn(name=PROBE, sandboxed=False)
class Probe:
    """Upserts each status it is sent; ends when told to."""

    def __init__(self) -> None:
        self._statuses: list[str] = []
        self._finished = False

    @workflow.run
    async def run(self, first: str) -> None:
        if first:
            # Before any status a signal delivered with the start brought.
            self._statuses.insert(0, first)
        while True:
            await workflow.wait_condition(lambda: bool(self._statuses) or self._finished)
            if self._finished:
                return
            workflow.upsert_search_attributes([PROCESS_STATUS.value_set(self._statuses.pop(0))])

    @workflow.signal(name=SET_STATUS)
    def set_status(self, status: str) -> None:
        self._statuses.append(status)

    @workflow.signal(name=FINISH)
    def finish(self) -> None:
        self._finished = True


@workflow.defn(name=CARD_WORKFLOW, sandboxed=False)
class CardProbe(Probe):
    """A probe under the card's workflow type."""

    @workflow.run
    async def run(self, first: str) -> None:
        await super().run(first)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def own_temporal() -> AsyncIterator[Client]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli_path()),
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        dev_server_extra_args=["--ui-disable-news-fetch"],
        port=free_port(),
    )
    try:
        async with Worker(env.client, task_queue=TASK_QUEUE, workflows=[Probe, CardProbe]):
            yield env.client
    finally:
        await env.shutdown()


async def start_probe(
    client: Client, first: str = "", *, kind: str = PROBE, at_start: str | None = None
) -> WorkflowHandle[Probe, None]:
    """A probe upserting `first`, or started with ProcessStatus `at_start`."""
    attributes = (
        TypedSearchAttributes([SearchAttributePair(PROCESS_STATUS, at_start)]) if at_start else None
    )
    return await client.start_workflow(
        kind,
        first,
        id=f"census/{uuid.uuid4().hex}",
        task_queue=TASK_QUEUE,
        search_attributes=attributes,
    )


async def status_upserted(handle: WorkflowHandle[Probe, None], status: str) -> datetime:
    """When the probe's history recorded the upsert of `status`, once it has."""

    async def upserts() -> list[datetime]:
        times = []
        async for event in handle.fetch_history_events():
            if event.HasField("upsert_workflow_search_attributes_event_attributes"):
                fields = event.upsert_workflow_search_attributes_event_attributes
                value = fields.search_attributes.indexed_fields.get(PROCESS_STATUS.name)
                if value is not None and status.encode() in value.data:
                    times.append(event.event_time.ToDatetime(UTC))
        return times

    found = await until(upserts, bool, f"{status} upserted", VISIBLE_SECONDS)
    return found[-1]


async def census_when(
    client: Client, ready: Callable[[Census], bool], wait_starts: WaitStarts | None = None
) -> Census:
    return await until(
        lambda: take_census(client, wait_starts or WaitStarts(client), datetime.now(UTC)),
        ready,
        "the census shows the probes",
        VISIBLE_SECONDS,
    )


async def finish_all(*handles: WorkflowHandle[Probe, None]) -> None:
    for handle in handles:
        await handle.signal(FINISH)
        await handle.result()


async def test_running_processes_are_counted_by_type_and_status(own_temporal: Client) -> None:
    client = own_temporal
    processing = [await start_probe(client, "processing") for _ in range(2)]
    no_status = await start_probe(client)
    cards = [await start_probe(client, "open", kind=CARD_WORKFLOW) for _ in range(2)]
    exception = await start_probe(client, STATUS_EXCEPTION, kind=CARD_WORKFLOW)
    expected = {
        (PROBE, "processing"): 2,
        (PROBE, NO_STATUS): 1,
        (CARD_WORKFLOW, "open"): 2,
        (CARD_WORKFLOW, STATUS_EXCEPTION): 1,
        (CARD_WORKFLOW, NO_STATUS): 0,
    }

    def counted(census: Census) -> bool:
        found = {key: census.processes.get(key, 0) for key in expected}
        return found == expected

    census = await census_when(client, counted)
    # Every card status is counted, the ones no card is in as 0.
    assert census.processes[(CARD_WORKFLOW, "closed")] == 0

    await finish_all(*processing, no_status, *cards, exception)
    after = await census_when(
        client, lambda c: sum(c.processes.values()) == 0 and not c.operator_waits
    )
    assert after.processes[(CARD_WORKFLOW, "open")] == 0


async def test_an_operator_wait_is_timed_from_the_status_that_began_it(
    own_temporal: Client,
) -> None:
    client = own_temporal
    assert STAGE_REVIEW in OPERATOR_WAIT_STATUSES
    # One process enters review after some work; one is started in review.
    later = await start_probe(client, "processing")
    await status_upserted(later, "processing")
    await later.signal(SET_STATUS, STAGE_REVIEW)
    from_start = await start_probe(client, at_start=STAGE_REVIEW)
    began = await status_upserted(later, STAGE_REVIEW)
    started = (await from_start.describe()).start_time
    wait_starts = WaitStarts(client)

    census = await census_when(
        client, lambda c: len(c.operator_waits.get(PROBE, [])) == 2, wait_starts
    )
    assert sorted(census.operator_waits[PROBE]) == sorted([began, started])

    # The process leaves review: it waits no more, and its start is dropped.
    await later.signal(SET_STATUS, "credited")
    census = await census_when(
        client, lambda c: len(c.operator_waits.get(PROBE, [])) == 1, wait_starts
    )
    assert census.operator_waits[PROBE] == [started]
    await finish_all(later, from_start)


async def test_each_schedule_shows_its_last_run_interval_pause_and_misses(
    own_temporal: Client,
) -> None:
    client = own_temporal
    schedule_id = f"census-{uuid.uuid4().hex[:8]}"
    handle = await client.create_schedule(
        schedule_id,
        Schedule(
            action=ScheduleActionStartWorkflow(
                PROBE, "", id=f"census-scheduled/{schedule_id}", task_queue=TASK_QUEUE
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))]),
        ),
    )
    created = (await handle.describe()).info.created_at

    def facts(census: Census) -> ScheduleFacts:
        found = [s for s in census.schedules if s.schedule_id == schedule_id]
        assert len(found) == 1, f"{schedule_id} not in the census once: {census.schedules}"
        return found[0]

    def listed(census: Census) -> bool:
        return any(s.schedule_id == schedule_id for s in census.schedules)

    never_ran = facts(await census_when(client, listed))
    # Never run: its last run counts from its creation, so a new schedule is
    # not late at once.
    assert never_ran.last_run == created
    assert never_ran.interval_seconds == 3600
    assert never_ran.paused is False and never_ran.missed_runs == 0

    await handle.trigger()
    description = await until(
        handle.describe, lambda d: bool(d.info.recent_actions), "the schedule ran", VISIBLE_SECONDS
    )
    ran = description.info.recent_actions[-1]
    ran_at = ran.started_at
    await handle.pause(note="census test")
    census = await census_when(client, lambda c: listed(c) and facts(c).paused)
    assert facts(census).last_run == ran_at
    await handle.delete()
    assert isinstance(ran.action, ScheduleActionExecutionStartWorkflow)
    await client.get_workflow_handle(ran.action.workflow_id).signal(FINISH)


Scraped = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def cardflow_series(port: int) -> Scraped:
    """(name, labels but the process's) -> value of the cardflow series."""
    own = ("service", "service_name")
    return {
        (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k not in own))): (
            sample.value
        )
        for sample in await scrape(port)
        if sample.name.startswith("cardflow_")
    }


async def test_a_series_the_census_no_longer_finds_reads_zero() -> None:
    runtime, port = prometheus_runtime()
    gauges = CensusGauges(runtime.metric_meter)
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    # Before any process waits, each kind that can wait reads 0 waits.
    gauges.publish(Census(taken_at=now - timedelta(seconds=30)))
    nobody = await until(
        lambda: cardflow_series(port), lambda s: bool(s), "the first census published", 5
    )
    assert {
        labels[0][1]: value
        for (name, labels), value in nobody.items()
        if name == "cardflow_operator_waits"
    } == dict.fromkeys(OPERATOR_WAITING_TYPES, 0)
    first = Census(taken_at=now)
    first.processes[("Topup", STAGE_REVIEW)] = 3
    first.operator_waits["Topup"] = [now - timedelta(minutes=5), now - timedelta(minutes=1)]
    gauges.publish(first)
    review = ("cardflow_processes", (("status", STAGE_REVIEW), ("workflow_type", "Topup")))
    waits = ("cardflow_operator_waits", (("workflow_type", "Topup"),))
    oldest = ("cardflow_operator_wait_oldest_seconds", (("workflow_type", "Topup"),))
    scraped = await until(lambda: cardflow_series(port), lambda s: review in s, "published", 5)
    assert scraped[review] == 3 and scraped[waits] == 2 and scraped[oldest] == 300
    assert scraped[("cardflow_census_timestamp_seconds", ())] == now.timestamp()

    later = Census(taken_at=now + timedelta(seconds=30))
    gauges.publish(later)
    scraped = await until(lambda: cardflow_series(port), lambda s: s[review] == 0, "zeroed", 5)
    assert scraped[waits] == 0 and scraped[oldest] == 0
