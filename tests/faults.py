"""Faults injected into a test's workflows worker, the way they happen in life.

A worker killed after an activity committed but before its workflow task
completed leaves the activity's effect in the database and nothing of it in
the history: the task runs again, on another worker, from the last completed
task. `WorkflowTaskFaults` does exactly that on demand: it fails the workflow
task that ran an update handler or applied a signal, after the handler's
work (its local activities included) is done. The server then retries the
task, which replays from history and runs the handler a second time.
`fail_after_local_activity` fails the task right after a local activity
(e.g. a card's hold) committed: its result never reaches the history.
`fail_after_activity` fails the task that took an activity's result (e.g. a
card frozen through its update): the task runs again from the history,
which holds the result, and the workflow's next steps run a second time.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from temporalio.worker import (
    ExecuteWorkflowInput,
    HandleUpdateInput,
    Interceptor,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)
from temporalio.workflow import ActivityHandle


class InjectedWorkerCrash(RuntimeError):
    """Not a workflow failure: the SDK fails the workflow task, as a crash would."""


class WorkflowTaskFaults:
    """Which workflow tasks to fail, armed by a test; inert until armed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[tuple[str, str], int] = {}
        self.injected: list[str] = []

    def fail_after_update(self, name: str, times: int = 1) -> None:
        """Fail the task of the next `times` runs of update `name`, after the handler."""
        with self._lock:
            self._armed[("update", name)] = times

    def fail_after_local_activity(self, name: str, times: int = 1) -> None:
        """Fail the task of the next `times` local activities `name`, once each committed."""
        with self._lock:
            self._armed[("local_activity", name)] = times

    def fail_after_activity(self, name: str, times: int = 1) -> None:
        """Fail the task of the next `times` activities `name`, once each completed."""
        with self._lock:
            self._armed[("activity", name)] = times

    def take(self, kind: str, name: str) -> bool:
        with self._lock:
            left = self._armed.get((kind, name), 0)
            if left <= 0:
                return False
            self._armed[(kind, name)] = left - 1
            self.injected.append(f"{kind} {name}")
            return True

    def interceptor(self) -> Interceptor:
        return _FaultsInterceptor(self)


class _FaultsInterceptor(Interceptor):
    def __init__(self, faults: WorkflowTaskFaults) -> None:
        self.faults = faults

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        faults = self.faults

        class FailingInbound(WorkflowInboundInterceptor):
            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                return await super().execute_workflow(input)

            async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
                result = await super().handle_update_handler(input)
                if faults.take("update", input.update):
                    raise InjectedWorkerCrash(f"worker killed after update {input.update}")
                return result

            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(FailingOutbound(outbound))

        class FailingOutbound(WorkflowOutboundInterceptor):
            def start_activity(self, input: StartActivityInput) -> ActivityHandle[Any]:
                handle = super().start_activity(input)
                if not faults.take("activity", input.activity):
                    return handle

                async def completed_then_crash() -> Any:
                    await handle
                    raise InjectedWorkerCrash(f"worker killed after activity {input.activity}")

                return asyncio.ensure_future(completed_then_crash())  # type: ignore[return-value]

            def start_local_activity(self, input: StartLocalActivityInput) -> ActivityHandle[Any]:
                handle = super().start_local_activity(input)
                if not faults.take("local_activity", input.activity):
                    return handle

                async def committed_then_crash() -> Any:
                    await handle
                    raise InjectedWorkerCrash(
                        f"worker killed after local activity {input.activity}"
                    )

                return asyncio.ensure_future(committed_then_crash())  # type: ignore[return-value]

        return FailingInbound
