"""The card entity `card/{card_id}`: one card, for its whole life.

The issuing that creates a card and starts its entity is
workflows/card_issue.py; the entity's money (authorizations, holds, issuer
events, exceptions) is CardMoney, workflows/card_money.py.

The card entity holds one card's state (open / paused / closed), takes
`freeze`, `unfreeze` and `close` as updates, and continues as new before its
history grows large, carrying its state; it waits for running handlers first
so no message is lost across the boundary.

A card reported lost or stolen is reissued by its entity, which records the
replacement in `cards` (linked to the card it replaces) like any card cardflow
issued. A virtual replacement is open at once: its entity starts right away.
A physical one is shipped and must be activated once delivered, so the entity
starts an issuing process for it, `card-issue/{replacement card id}`, which
takes its shipping webhooks, `reschedule_delivery` and `activate` exactly as
for a new card and starts the replacement's entity once it is activated.
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.providers.activities import ProviderActivities
    from activities.providers.cards import CardActivities, CardStateRequest
    from schemas.authentication import (
        AUTHENTICATION_OUTCOME_SIGNAL,
        AuthenticationAnswer,
        AuthenticationRequest,
        AuthenticationResult,
    )
    from schemas.card_controls import (
        TEMPORARY_CONTROLS_MAX,
        Controls,
        ScopedControls,
        TemporaryControl,
    )
    from schemas.card_rules import card_controls
    from schemas.cards import (
        AuthorizationAnswer,
        AuthorizationRequest,
        CardInput,
        CardNetworkEvent,
        CardReissueRequest,
        CardStateChange,
        ExceptionDecision,
        SpendingLimits,
    )
    from schemas.customers import Notification
    from schemas.issuer import CardState, ReissueReason
    from schemas.providers import ISSUER
    from schemas.refusals import Refusal, refused
    from schemas.search import CARD_ID, CURRENCY, CUSTOMER_ID, PROVIDER
    from workflows import card_authentication
    from workflows.card_money import CardMoney
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.steps import step, step_key

CARD_WORKFLOW = "Card"
FREEZE_UPDATE = "freeze"
UNFREEZE_UPDATE = "unfreeze"
CLOSE_UPDATE = "close"
LIMITS_UPDATE = "set_limits"
REPORT_LOST_UPDATE = "report_lost"
REPORT_STOLEN_UPDATE = "report_stolen"
AUTHORIZE_UPDATE = "authorize"
AUTHENTICATE_UPDATE = "authenticate"
NETWORK_EVENT_SIGNAL = "network_event"
RESOLVE_EXCEPTION_UPDATE = "resolve_exception"
CONTROLS_UPDATE = "set_controls"
ADD_TEMPORARY_CONTROL_UPDATE = "add_temporary_control"
REMOVE_TEMPORARY_CONTROL_UPDATE = "remove_temporary_control"
# The program's or the customer's controls at a version (newest kept).
SCOPED_CONTROLS_SIGNAL = "scoped_controls"
SINGLE_USE_CLOSED_REASON = "single-use card used"
# Cards live for years, so this change of the card's commands is behind a
# patch: a card that started before it replays without it (patched() is False
# there). With it, the card also carries Currency and Provider, and its
# ProcessStatus is STATUS_EXCEPTION while money waits for an operator's
# resolve_exception. Once no card runs the old code: deprecate_patch, then remove.
CARD_SEARCH_ATTRIBUTES_PATCH = "card-search-attributes-v2"
# Also a change of the card's commands, so behind a patch: with it, a reissue
# records the replacement in `cards`, and a physical replacement is followed by
# its own issuing process until activated (a card reissued before it had its
# entity started in the issuer's pending state, never recorded nor activated).
CARD_REPLACEMENT_PATCH = "card-replacement-recorded"
# A change of the card's commands, so behind a patch: with it, a decision (an
# authorization, an operator's resolution) starts only after the run loop has
# finished its unit of work in progress and run what it can. A worker that
# takes the card without it in memory can be handed an activity's completion
# from the last task together with the next decision, the decision first;
# without this, the decision took the card's money lock ahead of an earlier
# event there and behind it on replay, and the card's history no longer replayed.
CARD_DECISIONS_AFTER_EVENTS_PATCH = "card-decisions-after-earlier-events"
# patch: a decision waits until the run loop is idle (no unit of work in
# progress, no issuer event queued), not only for the unit in progress. A
# workflow task that recorded nothing is handed to a restarted worker in one
# activation with the next task's signals and updates, but to a worker
# replaying the history on its own: waiting for the unit in progress alone,
# the decision then came after the loop's next event's activities on the one
# and before them on the other, and the card's history no longer replayed.
CARD_DECISIONS_WHEN_IDLE_PATCH = "card-decisions-when-idle"
# patch: the card judges its history long enough to continue as new by its
# length when it last took in a message (an update, an issuer event, its
# timer), never by the length when it resumes after a local activity. The SDK
# may hand a local activity's result to the card in a later workflow task than
# the one that recorded it (a query arriving meanwhile makes that task), while
# a replay hands it over in the task that recorded it: a decision that
# finished there saw two different lengths, continued as new live and not on
# replay, and the card's history no longer replayed.
CARD_LENGTH_AT_MESSAGES_PATCH = "card-history-length-at-messages"
# The card's ProcessStatus: its state (open, paused, closed), or one of these.
STATUS_EXCEPTION = "exception"
STATUS_REPLACED = "replaced"


def card_workflow_id(card_id: str) -> str:
    return f"card/{card_id}"


def replacement_request_id(card_id: str) -> str:
    """A replacement's issuing request is named after the card itself: the
    customer learns the new card's id when reporting the old one, and reaches
    its issuing (shipping, activation) with that id."""
    return card_id


def card_start_metadata(card: CardInput) -> StartMetadata:
    return start_metadata(
        f"Card {card.card_id} of customer {card.customer_id}",
        {"card": card.card_id, "customer": card.customer_id, "currency": card.currency.value},
        "the issuer's authorizations (update `authorize`) and events (signal"
        " `network_event`); operators' `freeze`, `unfreeze`, `close`, `set_limits` and"
        " `resolve_exception` updates",
    )


async def start_card_entity(card: CardInput) -> None:
    """Start the card's own long-lived workflow; it outlives whoever starts it."""
    metadata = card_start_metadata(card)
    await workflow.start_child_workflow(
        CardEntity.run,
        card,
        id=card_workflow_id(card.card_id),
        task_queue=card.workflows_task_queue,
        parent_close_policy=ParentClosePolicy.ABANDON,
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


# Outside the SDK's sandbox on the workers: a card's decision is the
# platform's hot path, and the sandbox re-enters for every activation and for
# every payload's serialization context, about a quarter of the workflows
# worker's CPU per authorization. The card keeps every rule of a workflow (no
# clock, I/O, randomness or environment), and every replay in the tests runs
# it inside the sandbox (workers.build.guarded_replayer), where a call
# breaking those rules fails.
@workflow.defn(name=CARD_WORKFLOW, sandboxed=False)
class CardEntity:
    """One card, for its whole life."""

    @workflow.init
    def __init__(self, card: CardInput) -> None:
        # Set before any handler runs: an update may arrive in the same
        # workflow task that starts a (continued) run.
        self._state: CardInput | None = card
        self._money = CardMoney(card)
        # Issuer events wait here and are applied in order by the run loop.
        self._inbox: list[CardNetworkEvent] = []
        # The card's ProcessStatus as its stage (its state, STATUS_EXCEPTION
        # or STATUS_REPLACED), with its details; "starting" (no status) until
        # the run upserts the first.
        self.progress = ProcessStage("starting", self._details)
        # The run loop's units of work (an expiry pass, one issuer event),
        # started and done: what a decision waits for
        # (CARD_DECISIONS_AFTER_EVENTS_PATCH).
        self._work_started = 0
        self._work_done = 0
        # Decisions wait for the loop to be idle (CARD_DECISIONS_WHEN_IDLE_PATCH).
        self._decisions_wait_for_idle = False
        # The history's length when the card last took in a message, and
        # whether that (not the length now) is what makes the run continue as
        # new (CARD_LENGTH_AT_MESSAGES_PATCH).
        self._length_taken = 0
        self._length_at_messages = False

    @workflow.run
    async def run(self, card: CardInput) -> str:
        assert self._state is not None
        self._length_at_messages = workflow.patched(CARD_LENGTH_AT_MESSAGES_PATCH)
        self.progress.enter(
            card.state.value,
            CARD_ID.value_set(card.card_id),
            CUSTOMER_ID.value_set(card.customer_id),
        )
        if (
            self._money.durable
            and self._state.state is CardState.CLOSED
            and self._state.closed_at is None
        ):
            # A run started for late money on a card already closed.
            self._state.closed_at = workflow.now()
        if workflow.patched(CARD_SEARCH_ATTRIBUTES_PATCH):
            self.progress.search(
                CURRENCY.value_set(card.currency.value), PROVIDER.value_set(ISSUER)
            )
        if self._state.opened_at is None:
            # The card's age for authorization rules counts from here.
            self._state.opened_at = workflow.now()
        self._show()
        while True:
            await self._serve(card.history_events_max)
            # No message is lost: updates in flight finish before the run
            # ends, and events they let in are applied first. (A decision
            # waiting for the loop to be idle waits on events that arrived
            # meanwhile: the loop applies them first.)
            await workflow.wait_condition(
                lambda: (
                    workflow.all_handlers_finished()
                    or (self._decisions_wait_for_idle and bool(self._inbox))
                )
            )
            if not self._inbox:
                break
        if not self._finished():
            workflow.continue_as_new(self._state)
        if self._state.replaced_by:
            return f"replaced by {self._state.replaced_by}"
        return "closed"

    async def _serve(self, history_events_max: int) -> None:
        """Apply issuer events and expire holds until the card is finished or
        its history is long enough to continue as new."""

        def history_full() -> bool:
            if self._length_at_messages:
                return self._length_taken > history_events_max
            return workflow.info().get_current_history_length() > history_events_max

        while True:
            expiry = self._money.next_expiry()
            wake = expiry
            linger_ends = self._linger_ends()
            if linger_ends is not None and (wake is None or linger_ends < wake):
                wake = linger_ends
            # A temporary control undoes itself on this timer.
            controls_end = self._next_control_end()
            if controls_end is not None and (wake is None or controls_end < wake):
                wake = controls_end
            timeout = None
            if wake is not None:
                timeout = max((wake - workflow.now()).total_seconds(), 0.001)
            try:
                await workflow.wait_condition(
                    lambda expiry=expiry, linger_ends=linger_ends, ends=controls_end: (  # type: ignore[misc]
                        bool(self._inbox)
                        or self._finished()
                        or history_full()
                        # A new hold (an authorization) may expire sooner.
                        or self._money.next_expiry() != expiry
                        # Closed just now: the late-money window starts.
                        or self._linger_ends() != linger_ends
                        # A temporary control added or removed.
                        or self._next_control_end() != ends
                        or self._single_use_spent()
                    ),
                    timeout=timeout,
                )
            except TimeoutError:
                self._take_in()
            await self._work(self._money.expire_due())
            while self._inbox:
                await self._work(self._money.apply(self._inbox.pop(0)))
            self._expire_controls()
            if self._single_use_spent():
                await self._work(self._close_single_use())
            self._show()
            if (self._finished() or history_full()) and not self._inbox:
                return

    def _next_control_end(self) -> datetime | None:
        """When the soonest temporary control undoes itself."""
        assert self._state is not None
        return min((t.until for t in self._state.temporary_controls), default=None)

    async def _close_single_use(self) -> None:
        await self._change(CardState.CLOSED, CardStateChange(reason=SINGLE_USE_CLOSED_REASON))

    def _expire_controls(self) -> None:
        assert self._state is not None
        now = workflow.now()
        self._state.temporary_controls = [
            t for t in self._state.temporary_controls if t.until > now
        ]

    def _single_use_spent(self) -> bool:
        """A single-use card whose purchase cleared and that holds nothing:
        it closes itself."""
        state = self._state
        assert state is not None
        return (
            state.cleared_once
            and state.state is CardState.OPEN
            and not any(r.held for r in state.authorizations.values())
            and bool(card_controls(state, workflow.now()).single_use)
        )

    def _take_in(self) -> None:
        """Note the history's length as the card takes in a message: the
        workflow task that delivers an update, a signal or a timer is the
        same live and on replay (CARD_LENGTH_AT_MESSAGES_PATCH)."""
        self._length_taken = workflow.info().get_current_history_length()

    async def _work(self, unit: Coroutine[Any, Any, None]) -> None:
        self._work_started += 1
        try:
            await unit
        finally:
            self._work_done += 1

    async def _after_earlier_events(self) -> None:
        """Let the run loop apply every issuer event that reached the card
        before this decision (CARD_DECISIONS_WHEN_IDLE_PATCH): the decision then
        comes at the same point of the card's history however the worker was
        handed its tasks. (Before that patch: only the unit of work in
        progress, then the loop's own wait, registered earlier, checked first.)"""
        if not workflow.patched(CARD_DECISIONS_AFTER_EVENTS_PATCH):
            return
        if workflow.patched(CARD_DECISIONS_WHEN_IDLE_PATCH):
            # Every event that reached the card before the decision is applied
            # first, however the activations were cut (CARD_DECISIONS_WHEN_IDLE_PATCH).
            self._decisions_wait_for_idle = True
            await workflow.wait_condition(self._idle)
            return
        in_progress = self._work_started
        await workflow.wait_condition(lambda: self._work_done >= in_progress)

    def _idle(self) -> bool:
        """No unit of the run loop in progress and no issuer event queued."""
        return self._work_done >= self._work_started and not self._inbox

    def _closed(self) -> bool:
        return self._state is not None and self._state.state is CardState.CLOSED

    def _finished(self) -> bool:
        """Closed, with no authorization still holding funds; under the
        CARD_MONEY_PATCH also with no exception waiting for an operator and
        past the window in which the issuer may still send money."""
        if not (self._closed() and not self._money.next_expiry()):
            return False
        if not self._money.durable:
            return True
        linger_ends = self._linger_ends()
        return (
            not self._money.open_exceptions()
            and linger_ends is not None
            and workflow.now() >= linger_ends
        )

    def _linger_ends(self) -> datetime | None:
        """When a closed card's process may end (CARD_MONEY_PATCH)."""
        state = self._state
        assert state is not None
        if not self._closed() or state.closed_at is None or not self._money.durable:
            return None
        return state.closed_at + timedelta(seconds=state.policy.closed_linger_seconds)

    def _show(self) -> None:
        """Show the card's details; under CARD_SEARCH_ATTRIBUTES_PATCH also its
        ProcessStatus, when it changed."""
        if workflow.patched(CARD_SEARCH_ATTRIBUTES_PATCH):
            self._publish_status()
        else:
            self.progress.show()

    def _publish_status(self) -> None:
        """Enter the card's ProcessStatus (upserted) when it changed:
        STATUS_EXCEPTION while an exception waits for an operator,
        STATUS_REPLACED once replaced, else the card's state. The details are
        shown either way."""
        state = self._state
        assert state is not None
        if self._money.open_exceptions():
            status = STATUS_EXCEPTION
        elif state.replaced_by:
            status = STATUS_REPLACED
        else:
            status = state.state.value
        if status != self.progress.stage:
            self.progress.enter(status)
        else:
            self.progress.show()

    def _details(self) -> str:
        state = self._state
        assert state is not None
        held = sum(r.held_minor for r in state.authorizations.values())
        details = f"Card {state.card_id}: {state.state.value}"
        if state.replaced_by:
            details += f", replaced by {state.replaced_by}"
        if state.authorizations:
            details += f" | {len(state.authorizations)} open authorizations holding {held}"
        exceptions = self._money.open_exceptions()
        if exceptions:
            details += f" | {len(exceptions)} exceptions for an operator"
        return details

    async def _change(self, target: CardState, change: CardStateChange) -> str:
        assert self._state is not None
        self._take_in()
        self._state.changes += 1
        key = step_key(f"state/{self._state.changes}-{target.value}")
        await step(
            self._state,
            CardActivities.set_card_state,
            CardStateRequest(
                key=key, card_id=self._state.card_id, state=target, reason=change.reason
            ),
        )
        self._state.state = target
        if target is CardState.CLOSED and self._money.durable:
            self._state.closed_at = workflow.now()
        if workflow.patched(CARD_SEARCH_ATTRIBUTES_PATCH):
            self._publish_status()
        else:
            self.progress.enter(target.value)
        return target.value

    def _require(self, *allowed: CardState) -> None:
        assert self._state is not None
        if self._state.state not in allowed:
            raise refused(Refusal.WRONG_STATE, f"the card is {self._state.state.value}")

    @workflow.update(name=FREEZE_UPDATE)
    async def freeze(self, change: CardStateChange) -> str:
        return await self._change(CardState.PAUSED, change)

    @freeze.validator
    def _validate_freeze(self, change: CardStateChange) -> None:
        self._require(CardState.OPEN)

    @workflow.update(name=UNFREEZE_UPDATE)
    async def unfreeze(self, change: CardStateChange) -> str:
        return await self._change(CardState.OPEN, change)

    @unfreeze.validator
    def _validate_unfreeze(self, change: CardStateChange) -> None:
        self._require(CardState.PAUSED)

    @workflow.update(name=CLOSE_UPDATE)
    async def close(self, change: CardStateChange) -> str:
        return await self._change(CardState.CLOSED, change)

    @close.validator
    def _validate_close(self, change: CardStateChange) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)
        assert self._state is not None
        holding = [r for r in self._state.authorizations.values() if r.held]
        if holding:
            held = sum(r.held_minor for r in holding)
            raise refused(
                Refusal.OPEN_AUTHORIZATIONS,
                f"the card has {len(holding)} open authorizations holding {held}; "
                "close it once they clear, are reversed or expire",
            )

    @workflow.update(name=AUTHORIZE_UPDATE)
    async def authorize(self, request: AuthorizationRequest) -> AuthorizationAnswer:
        self._take_in()
        await self._after_earlier_events()
        assert self._state is not None
        answer = await card_authentication.authorized(self._state, request, self._money.authorize)
        self._show()
        return answer

    @authorize.validator
    def _validate_authorize(self, request: AuthorizationRequest) -> None:
        assert self._state is not None
        if request.card_id != self._state.card_id:
            raise refused(Refusal.INVALID_REQUEST, f"card_id {request.card_id} is not this card")
        if request.requested_at is None:
            # The hold's expiry derives from it (validators never run on replay).
            raise refused(
                Refusal.INVALID_REQUEST, "requested_at (the issuer's time of asking) is required"
            )

    @workflow.update(name=AUTHENTICATE_UPDATE)
    async def authenticate(self, request: AuthenticationRequest) -> AuthenticationAnswer:
        """The issuer's 3-D Secure question (workflows/card_authentication.py)."""
        assert self._state is not None
        self._take_in()
        return await card_authentication.authenticate(self._state, request)

    @authenticate.validator
    def _validate_authenticate(self, request: AuthenticationRequest) -> None:
        assert self._state is not None
        if request.card_id != self._state.card_id:
            raise refused(Refusal.INVALID_REQUEST, f"card_id {request.card_id} is not this card")

    @workflow.signal(name=AUTHENTICATION_OUTCOME_SIGNAL)
    def authentication_outcome(self, result: AuthenticationResult) -> None:
        """A challenge's outcome, remembered for the authorization that follows."""
        assert self._state is not None
        self._take_in()
        card_authentication.take_outcome(self._state, result)

    @workflow.signal(name=NETWORK_EVENT_SIGNAL)
    def network_event(self, event: CardNetworkEvent) -> None:
        self._take_in()
        self._inbox.append(event)

    @workflow.update(name=RESOLVE_EXCEPTION_UPDATE)
    async def resolve_exception(self, decision: ExceptionDecision) -> str:
        self._take_in()
        await self._after_earlier_events()
        resolution = await self._money.resolve_exception(decision)
        self._show()
        return resolution

    @resolve_exception.validator
    def _validate_resolve_exception(self, decision: ExceptionDecision) -> None:
        found = next(
            (e for e in self._money.open_exceptions() if e.id == decision.exception_id), None
        )
        if found is None:
            raise refused(
                Refusal.NOT_FOUND,
                f"exception_id {decision.exception_id} is not an open exception",
            )
        if (decision.action == "dismiss") != (found.kind == "ledger_conflict"):
            raise refused(
                Refusal.INVALID_REQUEST,
                "action dismiss is for a ledger_conflict exception, and a ledger_conflict"
                " exception is dismissed once put right (charge and write_off move money)",
            )

    @workflow.update(name=LIMITS_UPDATE)
    def set_limits(self, limits: SpendingLimits) -> SpendingLimits:
        assert self._state is not None
        self._take_in()
        self._state.limits = limits
        return limits

    @set_limits.validator
    def _validate_limits(self, limits: SpendingLimits) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)

    @workflow.update(name=CONTROLS_UPDATE)
    def set_controls(self, controls: Controls) -> Controls:
        """The card's own controls (narrowest scope but its temporary ones)."""
        assert self._state is not None
        self._take_in()
        self._state.controls = controls
        return controls

    @set_controls.validator
    def _validate_controls(self, controls: Controls) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)

    @workflow.update(name=ADD_TEMPORARY_CONTROL_UPDATE)
    def add_temporary_control(self, temporary: TemporaryControl) -> list[TemporaryControl]:
        """Controls that undo themselves at `until` (one id replaces its own)."""
        assert self._state is not None
        self._take_in()
        kept = [t for t in self._state.temporary_controls if t.id != temporary.id]
        self._state.temporary_controls = [*kept, temporary]
        return self._state.temporary_controls

    @add_temporary_control.validator
    def _validate_temporary(self, temporary: TemporaryControl) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)
        assert self._state is not None
        if temporary.until <= workflow.now():
            raise refused(Refusal.INVALID_REQUEST, "until must be in the future")
        others = [t for t in self._state.temporary_controls if t.id != temporary.id]
        if len(others) >= TEMPORARY_CONTROLS_MAX:
            raise refused(
                Refusal.INVALID_REQUEST,
                f"the card keeps at most {TEMPORARY_CONTROLS_MAX} temporary controls",
            )

    @workflow.update(name=REMOVE_TEMPORARY_CONTROL_UPDATE)
    def remove_temporary_control(self, control_id: str) -> list[TemporaryControl]:
        assert self._state is not None
        self._take_in()
        self._state.temporary_controls = [
            t for t in self._state.temporary_controls if t.id != control_id
        ]
        return self._state.temporary_controls

    @workflow.signal(name=SCOPED_CONTROLS_SIGNAL)
    def scoped_controls(self, scoped: ScopedControls) -> None:
        """The program's or the customer's controls; an older version than
        the card has (a late or repeated signal) changes nothing."""
        assert self._state is not None
        self._take_in()
        held = self._state.scoped_controls.get(scoped.scope)
        if held is None or scoped.version > held.version:
            self._state.scoped_controls[scoped.scope] = scoped

    @workflow.update(name=REPORT_LOST_UPDATE)
    async def report_lost(self, change: CardStateChange) -> str:
        return await self._replace("lost", change)

    @report_lost.validator
    def _validate_lost(self, change: CardStateChange) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)

    @workflow.update(name=REPORT_STOLEN_UPDATE)
    async def report_stolen(self, change: CardStateChange) -> str:
        return await self._replace("stolen", change)

    @report_stolen.validator
    def _validate_stolen(self, change: CardStateChange) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)

    async def _replace(self, reason: str, change: CardStateChange) -> str:
        """Block this card (the issuer closes it on reissue) and start its replacement."""
        self._take_in()
        state = self._state
        assert state is not None
        replacement = await step(
            state,
            CardActivities.reissue_card,
            CardReissueRequest(
                key=step_key(f"reissue-{reason}"),
                card_id=state.card_id,
                reason=ReissueReason(reason),
            ),
        )
        state.state = CardState.CLOSED
        state.replaced_by = replacement.id
        if self._money.durable:
            state.closed_at = workflow.now()
        successor = CardInput(
            card_id=replacement.id,
            customer_id=state.customer_id,
            state=replacement.state,
            currency=state.currency,
            limits=state.limits,
            policy=state.policy,
            controls=state.controls,
            scoped_controls=state.scoped_controls,
            ledger_task_queue=state.ledger_task_queue,
            providers_task_queue=state.providers_task_queue,
            workflows_task_queue=state.workflows_task_queue,
            history_events_max=state.history_events_max,
        )
        if workflow.patched(CARD_REPLACEMENT_PATCH):
            # The issuing starts card entities, so it imports this module: its
            # part of a replacement is imported here, once the entity needs it.
            with workflow.unsafe.imports_passed_through():
                from workflows.card_issue import issue_replacement

            await issue_replacement(state, replacement, successor)
        else:
            await start_card_entity(successor)
        await step(
            state,
            ProviderActivities.notify_customer,
            Notification(
                key=step_key(f"notify/{reason}"),
                customer_id=state.customer_id,
                subject=f"Your card was reported {reason}",
                body=f"We blocked the card ending {state.card_id[-4:]} and issued a new one.",
            ),
        )
        if workflow.patched(CARD_SEARCH_ATTRIBUTES_PATCH):
            self._publish_status()
        else:
            self.progress.enter(STATUS_REPLACED)
        return str(replacement.id)

    @workflow.query
    def status(self) -> CardInput:
        assert self._state is not None
        return self._state


__all__ = ["CardEntity"]
