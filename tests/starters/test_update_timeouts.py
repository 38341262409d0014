"""A process that does not answer an update in time (its workflows worker
stopped, or too busy): the API answers 503 with Retry-After, and a retry with
the same Idempotency-Key gets the update's own result once it is done; the
CLI says what happened instead of printing a traceback."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.worker import Worker
from typer.testing import CliRunner

from activities.api_keys import parse_key
from schemas.cards import CardInput
from starters.gateway.v1.idempotency import Idempotency
from tests.conftest import RunningStack, StackFactory
from tests.customers import card_of_its_own, new_id
from tests.starters.inprocess import gateway
from workers.build import build_worker
from workflows.cards import LIMITS_UPDATE

# The gateway waits this long for a process before it answers 503.
API_UPDATE_TIMEOUT_SECONDS = 1
RETRIES_MAX = 60


def workflows_worker(stack: RunningStack) -> Worker:
    return build_worker("workflows", stack.client, stack.queues, pool=stack.pool)


async def card_running(stack: RunningStack) -> WorkflowHandle[Any, Any]:
    """A card entity of the test's own (tests.customers), its first task done
    while the workflows worker is up."""
    handle = await card_of_its_own(stack, new_id())
    await handle.query("status")
    return handle


def accepted_update_ids(events: list[Any], name: str) -> list[str]:
    return [
        event.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
        for event in events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        and event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        == name
    ]


async def test_an_update_that_times_out_is_a_503_and_its_retry_gets_the_updates_result(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    async with (
        make_stack(kinds=("ledger",)) as stack,
        gateway(
            stack,
            tmp_path,
            CARDFLOW_API_UPDATE_TIMEOUT_SECONDS=str(API_UPDATE_TIMEOUT_SECONDS),
        ) as http,
    ):
        async with workflows_worker(stack):
            card = await card_running(stack)
        card_id = card.id.removeprefix("card/")
        key = f"limits-{uuid.uuid4().hex[:8]}"
        limits = {"per_day_minor": 50_000, "blocked_mccs": ["7995"]}
        path = f"/v1/cards/{card_id}/limits"

        # The card's worker is gone: the update waits, the API does not.
        first = await http.put(path, json=limits, headers={"Idempotency-Key": key})
        assert first.status_code == 503, first.text
        assert int(first.headers["Retry-After"]) >= 1
        assert first.json()["code"] == "process_timeout"

        async with workflows_worker(stack):
            for _ in range(RETRIES_MAX):
                retry = await http.put(path, json=limits, headers={"Idempotency-Key": key})
                if retry.status_code != 503:
                    break
                await asyncio.sleep(0.5)
            assert retry.status_code == 200, retry.text
            assert retry.json()["per_day_minor"] == 50_000
            # The same key with other limits is another request: refused.
            other = await http.put(
                path, json={"per_day_minor": 1}, headers={"Idempotency-Key": key}
            )
            assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
            state = await card.query("status", result_type=CardInput)
        assert state.limits.per_day_minor == 50_000

        # The update ran once, the first request's: the retry attached to it.
        key_id = parse_key(http.headers["Authorization"].removeprefix("Bearer "))
        assert key_id is not None
        update_id = Idempotency(key_id[0], key).update_id("card-limits")
        events = [event async for event in card.fetch_history_events()]
        assert accepted_update_ids(events, LIMITS_UPDATE) == [update_id]


async def test_the_cli_says_a_process_did_not_answer_instead_of_a_traceback(
    make_stack: StackFactory,
    tmp_path: Path,
    encryption_keys: list[tuple[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import starters.cards
    from starters.cli import app

    monkeypatch.setattr(
        starters.cards, "UPDATE_RPC_TIMEOUT", timedelta(seconds=API_UPDATE_TIMEOUT_SECONDS)
    )
    async with make_stack(kinds=("ledger",)) as stack:
        async with workflows_worker(stack):
            card = await card_running(stack)
        keys = ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in encryption_keys)
        env = {
            "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
            "CARDFLOW_ENCRYPTION_KEYS": keys,
            "CARDFLOW_TASK_QUEUE_PREFIX": stack.queues.prefix,
            "CARDFLOW_HOME": str(tmp_path),
        }
        answer = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["card", "limits", card.id.removeprefix("card/"), "--per-day", "100"],
            env=env,
        )
    assert answer.exit_code == 75, answer.output
    assert answer.exception is None or isinstance(answer.exception, SystemExit)
    assert "did not answer" in answer.output
