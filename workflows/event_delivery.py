"""Event delivery `events/{endpoint_id}`: one upstream endpoint's events,
delivered at least once and in order (schemas/events.py,
activities/events.py).

The process walks the events by position: it reads the next ones of the
endpoint's types, delivers each in turn and moves its position past it only
once the endpoint answered 2xx. A delivery that fails is retried with
backoff (the policy's, up to three days by default); while it fails nothing
behind it is sent, so a customer's events never arrive out of order. An
endpoint that fails for the whole of that time is disabled, and the process
ends showing why (ProcessStatus `disabled`) for an operator. With nothing to
send it looks again every `idle_poll_seconds`, or at once when signalled.
A `redeliver` signal sends one event again (the consumer asked for it). The
process continues as new, carrying its position, before its history grows
long; it ends when the endpoint is deleted.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.event_delivery import (
        DELIVERY_TIMEOUT_SECONDS,
        DeliveryRequest,
        DisableRequest,
        EndpointBatchRequest,
        EventDeliveryActivities,
    )
    from schemas.events import (
        REDELIVERIES_WAITING_MAX,
        EventDeliveryInput,
        EventDeliveryStatus,
    )
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.steps import step

EVENT_DELIVERY_WORKFLOW = "EventDelivery"
REDELIVER_SIGNAL = "redeliver"
WAKE_SIGNAL = "wake"
STAGE_DELIVERING = "delivering"
STAGE_DISABLED = "disabled"
STAGE_DELETED = "deleted"
# One attempt may take the endpoint's own timeout and a little more.
DELIVERY_ATTEMPT_TIMEOUT = timedelta(seconds=DELIVERY_TIMEOUT_SECONDS + 5)
DELIVERY_BACKOFF = 2.0


def event_delivery_workflow_id(endpoint_id: str) -> str:
    return f"events/{endpoint_id}"


def event_delivery_start_metadata(request: EventDeliveryInput) -> StartMetadata:
    return start_metadata(
        f"Event delivery to webhook endpoint {request.endpoint_id}",
        {"endpoint": request.endpoint_id, "from position": request.after_seq},
        "new events (looked for every "
        f"{request.policy.idle_poll_seconds:g} s, or signal `wake`); `redeliver` signals",
    )


@workflow.defn(name=EVENT_DELIVERY_WORKFLOW)
class EventDelivery:
    @workflow.init
    def __init__(self, request: EventDeliveryInput) -> None:
        self._request = request
        self._redeliveries = list(request.redeliveries)
        self._woken = False
        self._last_failure: str | None = None
        self.progress = ProcessStage(STAGE_DELIVERING, self._details)

    @workflow.run
    async def run(self, request: EventDeliveryInput) -> str:
        self.progress.enter(STAGE_DELIVERING)
        policy = request.policy
        while True:
            batch = await step(
                request,
                EventDeliveryActivities.next_for_endpoint,
                EndpointBatchRequest(
                    endpoint_id=request.endpoint_id, after_seq=self._request.after_seq
                ),
            )
            if batch.endpoint_status != "enabled":
                stage = STAGE_DELETED if batch.endpoint_status == "deleted" else STAGE_DISABLED
                self.progress.enter(stage)
                return stage
            for ref in batch.events:
                if not await self._deliver(ref.event_id, 0):
                    return STAGE_DISABLED
                self._request.after_seq = ref.seq
                self._request.delivered += 1
                await self._continue_as_new_if_long()
            while self._redeliveries:
                if not await self._deliver(self._redeliveries[0], self._request.delivered):
                    return STAGE_DISABLED
                self._redeliveries.pop(0)
                await self._continue_as_new_if_long()
            self.progress.show()
            await self._continue_as_new_if_long()
            if not batch.events:
                self._woken = False
                try:
                    await workflow.wait_condition(
                        lambda: self._woken or bool(self._redeliveries),
                        timeout=timedelta(seconds=policy.idle_poll_seconds),
                    )
                except TimeoutError:
                    pass

    async def _continue_as_new_if_long(self) -> None:
        """Past the policy's history length, go on in a new run from here:
        the position and the redeliveries waiting are carried."""
        if workflow.info().get_current_history_length() <= self._request.policy.history_events_max:
            return
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            self._request.model_copy(update={"redeliveries": self._redeliveries})
        )

    async def _deliver(self, event_id: str, redelivery: int) -> bool:
        """Deliver one event, retrying by the policy; False when the endpoint
        failed for the whole of it and is now disabled."""
        policy = self._request.policy
        try:
            await workflow.execute_activity_method(
                EventDeliveryActivities.deliver,
                DeliveryRequest(
                    endpoint_id=self._request.endpoint_id,
                    event_id=event_id,
                    redelivery=redelivery,
                ),
                task_queue=self._request.providers_task_queue,
                start_to_close_timeout=DELIVERY_ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=timedelta(seconds=policy.give_up_after_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=policy.retry_initial_seconds),
                    backoff_coefficient=DELIVERY_BACKOFF,
                    maximum_interval=timedelta(seconds=policy.retry_max_interval_seconds),
                ),
            )
        except ActivityError as error:
            cause = _last_failure(error)
            self._last_failure = f"{event_id}: {cause}"
            reason = (
                f"every delivery of {event_id} failed for "
                f"{policy.give_up_after_seconds:g} s; the last: {cause}"
            )
            await step(
                self._request,
                EventDeliveryActivities.disable_endpoint,
                DisableRequest(endpoint_id=self._request.endpoint_id, reason=reason[:500]),
            )
            self.progress.enter(STAGE_DISABLED)
            return False
        return True

    def _details(self) -> str:
        request = self._request
        lines = [
            f"**{self.progress.stage}** · endpoint {request.endpoint_id}",
            f"delivered {request.delivered}, up to position {request.after_seq}",
        ]
        if self._redeliveries:
            lines.append(f"redeliveries waiting: {len(self._redeliveries)}")
        if self._last_failure:
            lines.append(f"last failure: {self._last_failure}")
        return "\n".join(lines)

    @workflow.signal(name=REDELIVER_SIGNAL)
    def redeliver(self, event_id: str) -> None:
        if len(self._redeliveries) >= REDELIVERIES_WAITING_MAX:
            # A signal cannot be refused: this one is dropped (asked again later, it is taken).
            workflow.logger.warning("redelivery of %s dropped: too many waiting", event_id)
            return
        if event_id not in self._redeliveries:
            self._redeliveries.append(event_id)

    @workflow.signal(name=WAKE_SIGNAL)
    def wake(self) -> None:
        self._woken = True

    @workflow.query
    def status(self) -> EventDeliveryStatus:
        return EventDeliveryStatus(
            endpoint_id=self._request.endpoint_id,
            stage=self.progress.stage,
            after_seq=self._request.after_seq,
            delivered=self._request.delivered,
            redeliveries_waiting=len(self._redeliveries),
            last_failure=self._last_failure,
        )


def _last_failure(error: ActivityError) -> str:
    """What the endpoint last did wrong (its answer, or no answer), found
    below the retry policy's giving up (a timeout caused by the last failure)."""
    cause: BaseException | None = error.cause
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return str(cause)
        cause = getattr(cause, "cause", None)
    return str(error.cause or error)
