"""A change of the program's or one customer's card controls,
`controls-change/{request_id}` (schemas/card_controls.py).

It saves the controls as its scope's next version (once, by the request's
id), then sends that version to every card of the scope, page by page in
card id order, as the card's `scoped_controls` signal. A card keeps the
newest version it was sent, so a repeated or late signal changes nothing,
and a card issued meanwhile reads the version in force after it is
recorded: the change reaches it either way. A card whose process has ended
(closed, past its linger) is counted and skipped. Long scopes continue as
new between pages, resuming after the last card sent to.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.card_controls import CardControlActivities
    from schemas.card_controls import (
        ControlledCardsPage,
        ControlsChangeInput,
        ControlsChangeResult,
        ControlsChangeStatus,
        ScopedControls,
    )
    from schemas.search import CUSTOMER_ID
    from workflows.cards import SCOPED_CONTROLS_SIGNAL, card_workflow_id
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.steps import step

CONTROLS_CHANGE_WORKFLOW = "ControlsChange"
# Signals in flight at once while a page is sent.
SIGNALS_AT_ONCE = 50
# Continue as new past this many history events (a page sends hundreds).
HISTORY_EVENTS_MAX = 4_000


def controls_change_workflow_id(request_id: str) -> str:
    return f"controls-change/{request_id}"


def controls_change_start_metadata(request: ControlsChangeInput) -> StartMetadata:
    change = request.change
    whose = "the program" if change.customer_id is None else f"customer {change.customer_id}"
    return start_metadata(
        f"Card controls of {whose}",
        {"by": change.changed_by, "reason": change.reason},
        "saves the controls as a new version, then sends it to each card",
    )


@workflow.defn(name=CONTROLS_CHANGE_WORKFLOW)
class ControlsChange:
    def __init__(self) -> None:
        self._sent = 0
        self._gone = 0
        self._version: int | None = None
        self.progress = ProcessStage("saving", self._details)

    @workflow.run
    async def run(self, request: ControlsChangeInput) -> ControlsChangeResult:
        change = request.change
        self._sent, self._gone = request.cards_sent, request.cards_gone
        if change.customer_id is not None:
            self.progress.enter("saving", CUSTOMER_ID.value_set(change.customer_id))
        else:
            self.progress.enter("saving")
        saved = await step(request, CardControlActivities.save, change)
        self._version = saved.version
        self.progress.enter("sending")
        after = request.after_card_id
        while True:
            cards = await step(
                request,
                CardControlActivities.cards,
                ControlledCardsPage(customer_id=change.customer_id, after_card_id=after),
            )
            for start in range(0, len(cards), SIGNALS_AT_ONCE):
                await self._send(cards[start : start + SIGNALS_AT_ONCE], saved)
            if len(cards) < ControlledCardsPage().limit:
                break
            after = cards[-1]
            if workflow.info().get_current_history_length() > HISTORY_EVENTS_MAX:
                workflow.continue_as_new(
                    request.model_copy(
                        update={
                            "after_card_id": after,
                            "cards_sent": self._sent,
                            "cards_gone": self._gone,
                        }
                    )
                )
        self.progress.enter("done")
        return ControlsChangeResult(
            scope=change.scope,
            customer_id=change.customer_id,
            version=saved.version,
            cards_sent=self._sent,
            cards_gone=self._gone,
        )

    async def _send(self, cards: list[str], scoped: ScopedControls) -> None:
        outcomes = await asyncio.gather(
            *(
                workflow.get_external_workflow_handle(card_workflow_id(card)).signal(
                    SCOPED_CONTROLS_SIGNAL, scoped
                )
                for card in cards
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, FailureError):
                self._gone += 1  # no running process: it decides nothing any more
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                self._sent += 1
        self.progress.show()

    def _details(self) -> str:
        version = "" if self._version is None else f" version {self._version}:"
        return f"Card controls{version} sent to {self._sent} cards ({self._gone} ended)"

    @workflow.query
    def status(self) -> ControlsChangeStatus:
        return ControlsChangeStatus(
            stage=self.progress.stage,
            version=self._version,
            cards_sent=self._sent,
            cards_gone=self._gone,
        )


__all__ = ["ControlsChange"]
