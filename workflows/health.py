"""Ping: proves that every task queue has a worker that answers.

The workflow task itself proves the workflow worker; one activity on the
ledger queue (which also round-trips to PostgreSQL) and one on the providers
queue prove the activity workers. A queue whose worker is down is reported,
not waited on forever: the activity's schedule-to-start timeout bounds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.health import LedgerHealthActivities, providers_ping
    from schemas.health import PingInput, PingResult, QueueHealth, WebhookEventNote
    from schemas.search import PROCESS_STATUS
    from workflows.metadata import StartMetadata, start_metadata

PING_WORKFLOW = "Ping"
PING_ID_PREFIX = "ping/"
# One attempt: a health check that retries hides the fault it exists to show.
PING_RETRY_POLICY = RetryPolicy(maximum_attempts=1)


WEBHOOK_EVENT_SIGNAL = "webhook_event"
RECORD_WEBHOOK_EVENT_UPDATE = "record_webhook_event"


def ping_workflow_id(token: str) -> str:
    return f"{PING_ID_PREFIX}{token}"


def ping_start_metadata(request: PingInput) -> StartMetadata:
    return start_metadata(
        "Health check of every task queue",
        {
            "requested by": request.requested_by,
            "ledger queue": request.ledger_task_queue,
            "providers queue": request.providers_task_queue,
            "webhook test events": request.webhook_events_expected or None,
        },
        "one activity on each queue; webhook test events when asked for",
    )


@workflow.defn(name=PING_WORKFLOW)
class Ping:
    def __init__(self) -> None:
        self._stage = "started"
        self._events: list[WebhookEventNote] = []
        self._event_ids: set[str] = set()

    @workflow.run
    async def run(self, request: PingInput) -> PingResult:
        probe_timeout = timedelta(seconds=request.probe_timeout_seconds)
        self._stage = "probing activity queues"
        # Also proves the namespace has cardflow's search attributes: an
        # upsert of an unregistered one fails the workflow task.
        workflow.upsert_search_attributes([PROCESS_STATUS.value_set("probing")])
        workflow.set_current_details(
            f"Probing {request.ledger_task_queue} and {request.providers_task_queue}"
        )
        # Both probes at once: a dead queue costs one timeout, not two.
        # Schedule-to-close covers a worker that is down (never starts the
        # task) and one that is hung (never finishes it).
        ledger, providers = await asyncio.gather(
            self._probe(
                request.ledger_task_queue,
                workflow.execute_activity_method(
                    LedgerHealthActivities.ping,
                    task_queue=request.ledger_task_queue,
                    schedule_to_close_timeout=probe_timeout,
                    retry_policy=PING_RETRY_POLICY,
                ),
            ),
            self._probe(
                request.providers_task_queue,
                workflow.execute_activity(
                    providers_ping,
                    task_queue=request.providers_task_queue,
                    schedule_to_close_timeout=probe_timeout,
                    retry_policy=PING_RETRY_POLICY,
                ),
            ),
        )
        if request.webhook_events_expected:
            self._stage = "waiting for webhook events"
            workflow.set_current_details(
                f"Waiting for {request.webhook_events_expected} webhook events"
            )
            try:
                await workflow.wait_condition(
                    lambda: len(self._events) >= request.webhook_events_expected,
                    timeout=timedelta(seconds=request.webhook_wait_seconds),
                )
            except TimeoutError:
                pass
        self._stage = "done"
        result = PingResult(
            workflow_task_queue=workflow.info().task_queue,
            requested_by=request.requested_by,
            ledger=ledger,
            providers=providers,
            webhook_events=list(self._events),
        )
        workflow.upsert_search_attributes(
            [PROCESS_STATUS.value_set("healthy" if result.healthy else "unhealthy")]
        )
        workflow.set_current_details(
            "All queues answered" if result.healthy else "Some queues did not answer"
        )
        return result

    @workflow.query
    def status(self) -> str:
        return self._stage

    @workflow.signal(name=WEBHOOK_EVENT_SIGNAL)
    def webhook_event(self, note: WebhookEventNote) -> None:
        self._record(note)

    @workflow.update(name=RECORD_WEBHOOK_EVENT_UPDATE)
    def record_webhook_event(self, note: WebhookEventNote) -> int:
        self._record(note)
        return len(self._events)

    def _record(self, note: WebhookEventNote) -> None:
        # Providers deliver at least once; the event id makes it exactly once.
        if note.event_id not in self._event_ids:
            self._event_ids.add(note.event_id)
            self._events.append(note)

    async def _probe(self, task_queue: str, ping: Awaitable[str]) -> QueueHealth:
        """How the queue answered `ping`, an activity scheduled on it."""
        try:
            identity = await ping
        except ActivityError as error:
            cause = error.cause
            detail = str(cause) if cause is not None else str(error)
            return QueueHealth(task_queue=task_queue, answered=False, detail=detail)
        return QueueHealth(task_queue=task_queue, answered=True, worker_identity=identity)
