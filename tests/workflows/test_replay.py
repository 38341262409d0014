"""Every recorded history replays against the current workflow code with the
production data converter; a non-deterministic change fails here.

Re-record with `cardflow histories record` after an intended change of a
workflow's code path (or guard the change with workflow.patched)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.worker import Replayer, Worker

from starters.histories import RECORDING_KEYS_FILENAME, record
from tests.conftest import RunningStack
from tests.workflows.sandbox_probe import AsksTheOperatingSystem
from workers.build import guarded_replayer, sandboxed_runner
from workers.converter import build_data_converter
from workers.settings import parse_encryption_keys
from workflows.billing import CANCELLED_FEE_PATCH
from workflows.card_issue import CARD_ISSUE_INTERRUPTED_FEE_PATCH
from workflows.cards import CARD_WORKFLOW
from workflows.cashback import CANCELLATION_SETTLES_PATCH
from workflows.catalog import ALL_WORKFLOWS
from workflows.fx_steps import NOTICE_CANCELLATION_PATCH
from workflows.onboarding import INTERRUPTED_WALLET_PATCH
from workflows.topup import TOPUP_INTERRUPTED_STEP_PATCH

HISTORIES = Path(__file__).resolve().parent.parent / "histories"


def replayer(keys_file: Path) -> Replayer:
    return guarded_replayer(
        list(ALL_WORKFLOWS),
        build_data_converter(parse_encryption_keys(keys_file.read_text().strip())),
    )


def load(path: Path) -> WorkflowHistory:
    document = json.loads(path.read_text())
    return WorkflowHistory.from_json(document["workflow_id"], document["history"])


def recorded() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("path", recorded(), ids=lambda p: p.stem)
async def test_a_recorded_history_replays_deterministically(path: Path) -> None:
    result = await replayer(HISTORIES / RECORDING_KEYS_FILENAME).replay_workflow(load(path))
    assert result.replay_failure is None


def test_every_workflow_type_has_a_recorded_history() -> None:
    recorded_types = set()
    for path in recorded():
        first = json.loads(path.read_text())["history"]["events"][0]
        recorded_types.add(first["workflowExecutionStartedEventAttributes"]["workflowType"]["name"])
    defined = {getattr(cls, "__temporal_workflow_definition").name for cls in ALL_WORKFLOWS}
    assert defined <= recorded_types


async def test_a_changed_workflow_fails_the_replay(tmp_path: Path) -> None:
    """The check has teeth: a history whose recorded commands differ fails."""
    document = json.loads((HISTORIES / "onboarding-approved.json").read_text())
    events = document["history"]["events"]
    for event in events:
        scheduled = event.get("activityTaskScheduledEventAttributes")
        if scheduled and scheduled["activityType"]["name"] == "ledger.open_account":
            scheduled["activityType"]["name"] = "ledger.something_else"
            break
    else:
        raise AssertionError("no ledger.open_account in the recorded history")
    history = WorkflowHistory.from_json(document["workflow_id"], document["history"])
    result = await replayer(HISTORIES / RECORDING_KEYS_FILENAME).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is not None


def test_the_record_command_writes_histories_that_replay(tmp_path: Path) -> None:
    (tmp_path / RECORDING_KEYS_FILENAME).write_text(
        (HISTORIES / RECORDING_KEYS_FILENAME).read_text()
    )
    [written] = record(tmp_path, ["ping"])
    assert json.loads(written.read_text())["workflow_id"].startswith("ping/")
    result = asyncio.run(
        replayer(tmp_path / RECORDING_KEYS_FILENAME).replay_workflow(load(written))
    )
    assert result.replay_failure is None


@pytest.mark.parametrize(
    "name", ["counter-keys-card-purchase", "counter-keys-card-exception"], ids=str
)
async def test_a_card_from_before_durable_keys_replays_only_thanks_to_the_patch(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Cards recorded before CARD_MONEY_PATCH (counter-named keys, no claims)
    replay on the old path; with the guard forced open they would not."""
    from temporalio import workflow

    from workflows.card_ledger import CARD_MONEY_PATCH

    history = load(HISTORIES / f"{name}.json")
    keys_file = HISTORIES / RECORDING_KEYS_FILENAME
    guarded = await replayer(keys_file).replay_workflow(history, raise_on_replay_failure=False)
    assert guarded.replay_failure is None
    patched = workflow.patched

    def forced(patch_id: str) -> bool:
        return patch_id == CARD_MONEY_PATCH or patched(patch_id)

    monkeypatch.setattr(workflow, "patched", forced)
    unguarded = await replayer(keys_file).replay_workflow(history, raise_on_replay_failure=False)
    assert unguarded.replay_failure is not None
    assert "Nondeterminism" in str(unguarded.replay_failure)


# Processes cancelled while an activity was in flight, recorded before each
# learnt the interrupted step's outcome (and settled or undid it) on a cancel.
CANCELLED_MID_STEP = {
    "unpatched-cashback-cancelled-mid-clawback": CANCELLATION_SETTLES_PATCH,
    "unpatched-cashback-cancelled-mid-payment": CANCELLATION_SETTLES_PATCH,
    "unpatched-billing-cancelled-mid-fee": CANCELLED_FEE_PATCH,
    "unpatched-card-issue-cancelled-mid-fee": CARD_ISSUE_INTERRUPTED_FEE_PATCH,
    "unpatched-onboarding-cancelled-mid-wallet": INTERRUPTED_WALLET_PATCH,
    "unpatched-topup-cancelled-mid-credit": TOPUP_INTERRUPTED_STEP_PATCH,
    "unpatched-fx-cancelled-mid-notice": NOTICE_CANCELLATION_PATCH,
}


@pytest.mark.parametrize("name", sorted(CANCELLED_MID_STEP), ids=str)
async def test_a_process_cancelled_mid_step_before_the_patch_replays_only_thanks_to_it(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Runs recorded before a cancellation learnt the interrupted step's outcome
    replay on the old path; with the guard forced open they would not."""
    from temporalio import workflow

    history = load(HISTORIES / f"{name}.json")
    keys_file = HISTORIES / RECORDING_KEYS_FILENAME
    guarded = await replayer(keys_file).replay_workflow(history, raise_on_replay_failure=False)
    assert guarded.replay_failure is None
    patched = workflow.patched

    def forced(patch_id: str) -> bool:
        return patch_id == CANCELLED_MID_STEP[name] or patched(patch_id)

    monkeypatch.setattr(workflow, "patched", forced)
    unguarded = await replayer(keys_file).replay_workflow(history, raise_on_replay_failure=False)
    assert unguarded.replay_failure is not None
    assert "Nondeterminism" in str(unguarded.replay_failure)


@pytest.mark.parametrize(
    "name", ["unpatched-billing-period", "unpatched-billing-period-2"], ids=str
)
async def test_a_billing_of_a_month_not_over_replays_only_thanks_to_the_patch(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Billings recorded before BILLING_PERIOD_ENDED_PATCH billed the month
    they ran in; they replay on the old path, and with the guard forced open
    (the month refused) they would not."""
    from temporalio import workflow

    from workflows.billing import BILLING_PERIOD_ENDED_PATCH

    history = load(HISTORIES / f"{name}.json")
    keys_file = HISTORIES / RECORDING_KEYS_FILENAME
    guarded = await replayer(keys_file).replay_workflow(history, raise_on_replay_failure=False)
    assert guarded.replay_failure is None
    patched = workflow.patched

    def forced(patch_id: str) -> bool:
        return patch_id == BILLING_PERIOD_ENDED_PATCH or patched(patch_id)

    monkeypatch.setattr(workflow, "patched", forced)
    unguarded = await replayer(keys_file).replay_workflow(history, raise_on_replay_failure=False)
    assert unguarded.replay_failure is not None


async def test_a_workflow_the_workers_run_outside_the_sandbox_is_replayed_inside_it(
    stack: RunningStack,
) -> None:
    """The card runs outside the sandbox (its decisions are the hot path); the
    replays here still run it inside, so a non-deterministic call fails them."""
    queue = f"sandbox-probe-{uuid.uuid4().hex}"
    async with Worker(
        stack.client,
        task_queue=queue,
        workflows=[AsksTheOperatingSystem],
        workflow_runner=sandboxed_runner(),
    ):
        handle = await stack.client.start_workflow(
            AsksTheOperatingSystem.run, id=queue, task_queue=queue
        )
        assert await handle.result() is True  # outside the sandbox, as its definition asks
    history = await handle.fetch_history()
    # The probe takes no input: replayed with plain payloads, its failure reads plainly.
    plain = DataConverter.default
    as_the_workers_run_it = Replayer(workflows=[AsksTheOperatingSystem], data_converter=plain)
    assert (await as_the_workers_run_it.replay_workflow(history)).replay_failure is None
    guarded = guarded_replayer([AsksTheOperatingSystem], plain)
    result = await guarded.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "os.getcwd" in str(result.replay_failure), result.replay_failure


def test_the_card_runs_outside_the_sandbox_and_every_other_workflow_inside_it() -> None:
    definitions = [workflow._Definition.must_from_class(cls) for cls in ALL_WORKFLOWS]
    assert {d.name for d in definitions if not d.sandboxed} == {CARD_WORKFLOW}
