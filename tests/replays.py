"""Whether a process's histories replay, as a worker replays them.

A worker that takes a workflow without it in memory (restarted, its task
failed or timed out, or a query sent it the whole history) replays the
history as it stands at that moment: up to the workflow task it is handed.
`unreplayable` replays every run of a workflow that way, cut at each of its
workflow tasks as well as whole, and names each cut that fails. A failure
also leaves the run's history in a file and shows its events in order, so
the failure is read from the test's own output.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from workers.build import guarded_replayer
from workflows.catalog import ALL_WORKFLOWS

# How the SDK names a history that no longer replays (TMPRL1100).
NONDETERMINISM = "Nondeterminism error"
# Where a history that does not replay is written (a directory per session).
HISTORIES_KEPT = Path(tempfile.gettempdir()) / "cardflow-unreplayable"


async def runs_of(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """Every run of `workflow_id`, the latest first."""
    histories: list[WorkflowHistory] = []
    run_id: str | None = (await client.get_workflow_handle(workflow_id).describe()).run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id or None
    return histories


def _cuts(history: WorkflowHistory) -> list[int]:
    """The lengths a worker replays: up to each workflow task it is handed, and
    whole. None for a run no worker has taken yet (only its start)."""
    started = EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    cuts = [number for number, event in enumerate(history.events, 1) if event.event_type == started]
    return sorted({*cuts, len(history.events)}) if cuts else []


async def unreplayable(client: Client, workflow_id: str) -> list[str]:
    """Each cut of each run of `workflow_id` that fails to replay, described
    with the run's events; empty when every one replays. Whole histories
    replay inside the sandbox (the workers' guard); the cuts, many more,
    outside it (the card's own runner)."""
    failures: list[str] = []
    whole = guarded_replayer(list(ALL_WORKFLOWS), client.data_converter)
    cut = Replayer(
        workflows=list(ALL_WORKFLOWS),
        data_converter=client.data_converter,
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    for history in await runs_of(client, workflow_id):
        for length in _cuts(history):
            replayer = whole if length == len(history.events) else cut
            part = WorkflowHistory(history.workflow_id, list(history.events[:length]))
            result = await replayer.replay_workflow(part, raise_on_replay_failure=False)
            if result.replay_failure is not None:
                failures.append(describe_failure(history, length, result.replay_failure))
                break
    return failures


async def nondeterminism_report(client: Client, workflow_id: str, error: BaseException) -> str:
    """What a test says when a workflow's query met a nondeterminism error:
    the error, and which of the workflow's histories do not replay (with
    their events)."""
    found = await unreplayable(client, workflow_id)
    if not found:
        kept = _keep_all(await runs_of(client, workflow_id))
        found = [f"every run replays as it stands now; its histories are kept in {kept}"]
    return f"{workflow_id}: {error}\n" + "\n".join(found)


def describe_failure(history: WorkflowHistory, length: int, failure: Exception) -> str:
    kept = _keep(history)
    events = "\n".join(_line(event) for event in history.events)
    return (
        f"run {_run_id(history)} replayed up to event {length} of {len(history.events)}"
        f" fails: {failure}\nhistory kept in {kept}\n{events}"
    )


def _run_id(history: WorkflowHistory) -> str:
    started = history.events[0].workflow_execution_started_event_attributes
    return str(started.original_execution_run_id or "run")


def _keep(history: WorkflowHistory) -> Path:
    HISTORIES_KEPT.mkdir(parents=True, exist_ok=True)
    path = HISTORIES_KEPT / f"{history.workflow_id.replace('/', '_')}-{_run_id(history)}.json"
    path.write_text(history.to_json())
    return path


def _keep_all(histories: list[WorkflowHistory]) -> list[Path]:
    return [_keep(history) for history in histories]


def _line(event: HistoryEvent) -> str:
    """One event: its id, type and what names it (update, signal, activity,
    marker or patch, search attributes)."""
    kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
    return f"{event.event_id:>4} {kind} {_naming(event)}".rstrip()


def _naming(event: HistoryEvent) -> str:
    attributes = event.WhichOneof("attributes")
    if attributes is None:
        return ""
    found: Any = getattr(event, attributes)
    if attributes == "marker_recorded_event_attributes":
        patch = found.details.get("patch-data")
        if patch is not None and patch.payloads:
            return str(json.loads(patch.payloads[0].data).get("id", found.marker_name))
        return str(found.marker_name)
    if attributes == "upsert_workflow_search_attributes_event_attributes":
        return ",".join(sorted(found.search_attributes.indexed_fields))
    if attributes == "activity_task_scheduled_event_attributes":
        return str(found.activity_type.name)
    if attributes == "workflow_execution_signaled_event_attributes":
        return str(found.signal_name)
    if attributes == "workflow_execution_update_accepted_event_attributes":
        return f"{found.accepted_request.input.name} {found.protocol_instance_id}"
    if attributes == "workflow_execution_update_completed_event_attributes":
        return str(found.meta.update_id)
    return ""


__all__ = ["NONDETERMINISM", "nondeterminism_report", "runs_of", "unreplayable", "describe_failure"]
