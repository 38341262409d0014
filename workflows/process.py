"""What every process has besides its business steps: where it is (its stage,
shown three ways), how it ends with an outcome, and the undo steps of what it
has done so far. Deterministic; for use inside workflows.

- `ProcessStage` keeps a process's stage for its status query, its current
  details in the Web UI and its ProcessStatus search attribute, with one of
  two upsert policies: at once (every stage is searchable as it is entered),
  or batched (the stage and other attributes are upserted together when the
  process next waits on the outside or ends, so stages passed through in
  between cost no history event). A step past its deadline marks the process
  `stuck` (at once, whatever the policy) until it succeeds.
- `Finished` is how a business step ends the process with an outcome other
  than its happy one (expired, rejected, refused): not an error, caught once
  by the run method, which turns it into the process's result.
- `Saga` registers the undo step of each step that succeeded, as it
  succeeds, and runs them newest first, to the end even while the workflow
  is being cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate

with workflow.unsafe.imports_passed_through():
    from schemas.search import PROCESS_STATUS
    from workflows.cancellation import shielded

OutcomeT = TypeVar("OutcomeT")

# The ProcessStatus of a process one of whose steps is past its deadline.
STATUS_STUCK = "stuck"


class Finished(Exception, Generic[OutcomeT]):
    """The process reached `outcome` for `reason` (not an error)."""

    def __init__(self, outcome: OutcomeT, reason: str) -> None:
        super().__init__(reason)
        self.outcome: OutcomeT = outcome
        self.reason = reason


class ProcessStage:
    """A process's stage, its Web UI details and its search attributes.

    `details` renders the current details from the workflow's state (it is
    called after the stage changes, so it may read `stage`); `status` maps a
    stage to its ProcessStatus value (by default the stage itself).
    """

    def __init__(
        self,
        stage: str,
        details: Callable[[], str],
        *,
        status: Callable[[str], str] = str,
        batched: bool = False,
    ) -> None:
        self._stage = stage
        self._details = details
        self._status = status
        self._batched = batched
        self._pending: dict[str, SearchAttributeUpdate[Any]] = {}
        # Steps past their deadline, each described for the details.
        self._stuck: list[str] = []
        # What the start set counts as upserted: a flush leaves out a value the
        # process already has.
        self._flushed: dict[str, Any] = {
            pair.key.name: pair.value for pair in workflow.info().typed_search_attributes
        }

    @property
    def stage(self) -> str:
        return self._stage

    def enter(self, stage: str, *also: SearchAttributeUpdate[Any]) -> None:
        """Enter `stage`: shown in the details at once; its ProcessStatus (and
        `also`) upserted at once, or at the next `flush` when batched."""
        self._stage = stage
        self.show()
        if self._stuck:
            # Stuck it stays: the stage's status is upserted once unstuck.
            self.search(*also)
            return
        self.search(PROCESS_STATUS.value_set(self._status(stage)), *also)

    def show(self) -> None:
        """Render the current details again (the state behind them changed)."""
        details = self._details()
        if self._stuck:
            stuck = "\n".join(f"- {step}" for step in self._stuck)
            details = f"**Stuck** (an operator should look):\n{stuck}\n\n{details}"
        workflow.set_current_details(details)

    def stuck(self, step: str) -> None:
        """`step` is past its deadline: ProcessStatus `stuck` at once."""
        self._stuck.append(step)
        self.show()
        self._upsert_status(STATUS_STUCK)

    def unstuck(self, step: str) -> None:
        """`step` succeeded after all: once no step is stuck, the stage's
        ProcessStatus again, at once."""
        self._stuck.remove(step)
        self.show()
        if not self._stuck:
            self._upsert_status(self._status(self._stage))

    def _upsert_status(self, status: str) -> None:
        self._pending.pop(PROCESS_STATUS.name, None)
        if self._flushed.get(PROCESS_STATUS.name) != status:
            workflow.upsert_search_attributes([PROCESS_STATUS.value_set(status)])
            self._flushed[PROCESS_STATUS.name] = status

    def search(self, *updates: SearchAttributeUpdate[Any]) -> None:
        """Upsert `updates` at once, or at the next `flush` when batched."""
        if not self._batched:
            if updates:
                workflow.upsert_search_attributes(list(updates))
                self._flushed.update({update.key.name: update.value for update in updates})
            return
        for update in updates:
            self._pending[update.key.name] = update

    def flush(self) -> None:
        """Upsert, in one command, the batched attributes whose value changed."""
        changed = [
            update
            for name, update in self._pending.items()
            if self._flushed.get(name) != update.value
        ]
        self._pending.clear()
        if changed:
            workflow.upsert_search_attributes(changed)
            self._flushed.update({update.key.name: update.value for update in changed})


class Saga:
    """The undo steps of what a process has done, run newest first."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], Awaitable[None]]] = []

    def done(self, undo: Callable[[], Awaitable[None]]) -> None:
        """Register the undo step of a step that has just succeeded."""
        self._undo.append(undo)

    def clear(self) -> None:
        """Nothing is to be undone any more (the outcome is final)."""
        self._undo.clear()

    async def compensate(self, *, keep_going: bool = False) -> None:
        """Run every undo step, newest first, to the end even if the workflow
        is cancelled meanwhile (a cancellation arriving during them waits for
        them). An undo step that fails stops the rest and raises, unless
        `keep_going`, where it is logged and the next one runs."""
        await shielded(self._run(keep_going))

    async def _run(self, keep_going: bool) -> None:
        while self._undo:
            undo = self._undo.pop()
            try:
                await undo()
            except (Exception, asyncio.CancelledError) as error:
                if not keep_going:
                    raise
                workflow.logger.error("an undo step failed: %s", error)
