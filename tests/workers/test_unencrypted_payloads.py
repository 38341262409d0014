"""Workers take only payloads encrypted with cardflow's key.

Whoever reaches the Temporal frontend can send a card an update, a signal or
a start; without the key, what they send is plaintext (`temporal workflow
update execute -w card/... --name freeze`) or a ciphertext that does not
authenticate. Each is refused and changes nothing: an update is rejected to
its caller, a signal is dropped while the card goes on, a start fails the new
workflow at once. Operators' Web UI actions still work: the UI has the codec
server's /encode encrypt what it sends, and that is taken.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import RawValue
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from activities.providers.issuer import IssuerClient
from schemas.cards import CardInput, CardNetworkEvent, CardStateChange
from schemas.issuer import CardState
from starters.devstack.stack import temporal_cli_path
from tests.codec import body, codec_server, payloads_of
from tests.conftest import Platform
from tests.customers import open_card
from workers.converter import (
    UNREADABLE_PAYLOAD_ERROR,
    EncryptionCodec,
    build_data_converter,
    data_converter_from_settings,
    generate_key,
)
from workers.secrets import new_codec_token
from workers.settings import load_settings
from workflows.cards import CARD_WORKFLOW, FREEZE_UPDATE, NETWORK_EVENT_SIGNAL, card_workflow_id

TOKEN = new_codec_token()
CONDITION_SECONDS_MAX = 30.0
CLI_SECONDS_MAX = 60


def without_codec(platform: Platform) -> Client:
    """A client of the same server and namespace that does not encrypt: the attacker's."""
    client = platform.stack.client
    return Client(
        client.service_client, namespace=client.namespace, data_converter=pydantic_data_converter
    )


async def card_status(handle: WorkflowHandle[Any, Any]) -> CardInput:
    status: CardInput = await handle.query("status", result_type=CardInput)
    return status


async def issuer_state(platform: Platform, card_id: str) -> CardState:
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        return (await issuer.get_card(card_id)).state


async def failed_workflow_tasks(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    return sum(
        event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for event in history.events
    )


async def until_seen(handle: WorkflowHandle[Any, Any], event_id: str) -> CardInput:
    """The card's status once it reports having applied `event_id`."""
    async with asyncio.timeout(CONDITION_SECONDS_MAX):
        while True:
            status = await card_status(handle)
            if event_id in status.seen_events:
                return status
            await asyncio.sleep(0.05)


def plain_json(value: object) -> Payload:
    """A payload as the Web UI and the `temporal` CLI write a JSON input."""
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


# ----- updates -------------------------------------------------------------------


async def test_a_plaintext_update_is_rejected_and_the_same_through_encode_is_taken(
    platform: Platform, codec: EncryptionCodec
) -> None:
    _, card_id, handle = await open_card(platform)
    attacker = without_codec(platform).get_workflow_handle(card_workflow_id(card_id))
    change = {"reason": "operator freeze"}

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await attacker.execute_update(FREEZE_UPDATE, change)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == UNREADABLE_PAYLOAD_ERROR
    assert cause.non_retryable
    status = await card_status(handle)
    assert status.state is CardState.OPEN and status.changes == 0
    assert await issuer_state(platform, card_id) is CardState.OPEN

    # As the Web UI sends it: the JSON through the codec server's /encode, with
    # its token, then the ciphertext to the workflow as it is.
    async with codec_server(codec, TOKEN) as http:
        encoded = await http.post("/encode", content=body([plain_json(change)]))
        assert encoded.status_code == 200, encoded.text
        [ciphertext] = payloads_of(encoded)
        answer = await attacker.execute_update(
            FREEZE_UPDATE, RawValue(ciphertext), result_type=RawValue
        )
        decoded = await http.post("/decode", content=body([answer.payload]))
    assert json.loads(payloads_of(decoded)[0].data) == CardState.PAUSED.value
    status = await card_status(handle)
    assert status.state is CardState.PAUSED and status.changes == 1
    assert await issuer_state(platform, card_id) is CardState.PAUSED
    assert await failed_workflow_tasks(handle) == 0


async def test_the_temporal_cli_freezes_a_card_only_through_the_codec_server(
    platform: Platform, codec: EncryptionCodec
) -> None:
    """The penetration test's command, as an operator's shell runs it."""
    _, card_id, handle = await open_card(platform)
    client = platform.stack.client
    command = [
        str(temporal_cli_path()),
        "workflow",
        "update",
        "execute",
        "--address",
        client.service_client.config.target_host,
        "--namespace",
        client.namespace,
        "--workflow-id",
        card_workflow_id(card_id),
        "--name",
        FREEZE_UPDATE,
        "--input",
        json.dumps({"reason": "shell"}),
    ]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *extra],
            capture_output=True,
            text=True,
            timeout=CLI_SECONDS_MAX,
            check=False,
        )

    plaintext = await asyncio.to_thread(run)
    assert plaintext.returncode != 0, plaintext.stdout
    assert UNREADABLE_PAYLOAD_ERROR in plaintext.stdout + plaintext.stderr
    assert (await card_status(handle)).state is CardState.OPEN

    async with codec_server(codec, TOKEN) as http:
        through_codec = await asyncio.to_thread(
            run, "--codec-endpoint", str(http.base_url), "--codec-auth", f"Bearer {TOKEN}"
        )
    assert through_codec.returncode == 0, through_codec.stdout + through_codec.stderr
    assert CardState.PAUSED.value in through_codec.stdout
    assert (await card_status(handle)).state is CardState.PAUSED
    assert await issuer_state(platform, card_id) is CardState.PAUSED


# ----- signals -------------------------------------------------------------------


@pytest.mark.parametrize("forgery", ["plaintext", "forged ciphertext"])
async def test_a_refused_signal_is_dropped_and_the_card_goes_on(
    platform: Platform, forgery: str
) -> None:
    _, card_id, handle = await open_card(platform)
    attacker = without_codec(platform).get_workflow_handle(card_workflow_id(card_id))
    forged = CardNetworkEvent(event_id=f"evt-forged-{uuid.uuid4().hex[:8]}", type="card.updated")
    if forgery == "plaintext":
        await attacker.signal(NETWORK_EVENT_SIGNAL, forged)
    else:
        # Encrypted in shape, under the card's real key id, with a key of its own.
        [payload] = await build_data_converter(
            [(platform.stack.codec.active_key_id, base64.b64decode(generate_key()))]
        ).encode([forged])
        await attacker.signal(NETWORK_EVENT_SIGNAL, RawValue(payload))
    # Signals are taken in the order they arrive: once the card applied the
    # real event sent after the forged one, it has had the forged one too.
    real = CardNetworkEvent(event_id=f"evt-real-{uuid.uuid4().hex[:8]}", type="card.updated")
    await handle.signal(NETWORK_EVENT_SIGNAL, real)
    status = await until_seen(handle, real.event_id)
    assert forged.event_id not in status.seen_events
    # Not wedged: no workflow task failed, and the card still takes an update.
    assert await failed_workflow_tasks(handle) == 0
    assert await handle.execute_update(FREEZE_UPDATE, CardStateChange(), result_type=str) == (
        CardState.PAUSED.value
    )


# ----- starts --------------------------------------------------------------------


async def test_a_plaintext_start_fails_the_new_workflow_at_once_and_does_nothing(
    platform: Platform,
) -> None:
    card_id = f"card-forged-{uuid.uuid4().hex[:10]}"
    forged = CardInput(
        card_id=card_id,
        customer_id="c-forged",
        state=CardState.OPEN,
        providers_task_queue=platform.stack.queues.providers,
        ledger_task_queue=platform.stack.queues.ledger,
    )
    handle = await without_codec(platform).start_workflow(
        CARD_WORKFLOW,
        forged,
        id=card_workflow_id(card_id),
        task_queue=platform.stack.queues.workflows,
    )
    with pytest.raises(WorkflowFailureError) as failed:
        async with asyncio.timeout(CONDITION_SECONDS_MAX):
            await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == UNREADABLE_PAYLOAD_ERROR
    described = await handle.describe()
    assert described.status is WorkflowExecutionStatus.FAILED
    history = await handle.fetch_history()
    kinds = {event.event_type for event in history.events}
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in kinds
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds


# ----- the opt-out -----------------------------------------------------------------


async def test_unencrypted_payloads_are_refused_unless_the_setting_lets_them_in(
    tmp_path: Any,
) -> None:
    key = f"k1:{generate_key()}"
    plain = plain_json({"reason": "old history"})
    for value, accepted in ((None, False), ("false", False), ("true", True)):
        overrides = {"CARDFLOW_HOME": str(tmp_path), "CARDFLOW_ENCRYPTION_KEYS": key}
        if value is not None:
            overrides["CARDFLOW_ACCEPT_UNENCRYPTED_PAYLOADS"] = value
        converter = data_converter_from_settings(load_settings(**overrides))
        if accepted:
            [decoded] = await converter.decode([plain], [CardStateChange])
            assert decoded == CardStateChange(reason="old history")
        else:
            with pytest.raises(ApplicationError) as refused:
                await converter.decode([plain], [CardStateChange])
            assert refused.value.type == UNREADABLE_PAYLOAD_ERROR
            assert "not encrypted (encoding 'json/plain')" in refused.value.message
