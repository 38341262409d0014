"""What every simulator does: faults, idempotency, signed at-least-once webhooks, persistence."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulators.framework.store import Store
from simulators.framework.webhooks import DUE_EVENTS_QUERY, POLL_INTERVAL_SECONDS
from tests.conftest import free_port
from tests.providers import running, simulator_process
from tests.simulators.waiting import all_delivered, everything_received, received

TRANSFER = {
    "reference": "INV-1",
    "amount_minor": 12_500,
    "currency": "EUR",
    "sender_name": "ACME GmbH",
}
# The outbox looks for due events at least this often; held events must stay
# put through several of its looks. See the hold test for why this is a wait.
HELD_THROUGH_POLLS = 10


def post(
    sim: Any, body: dict[str, Any], key: str | None = None, timeout: float = 5
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(
        f"{sim.provider_url('bank')}/v1/simulate/inbound_transfers",
        json=body,
        headers=headers,
        timeout=timeout,
    )


async def test_a_call_emits_a_signed_webhook_the_receiver_verifies(
    sim: Any, webhook_sink: Any
) -> None:
    created = post(sim, TRANSFER).json()
    [delivery] = await everything_received(sim, webhook_sink)
    assert delivery.provider == "bank"
    assert delivery.event["type"] == "inbound_transfer.received"
    assert delivery.event["data"]["id"] == created["id"]
    assert delivery.event_id == delivery.event["id"]
    assert webhook_sink.rejected == 0


async def test_a_failed_delivery_is_retried_until_it_succeeds(sim: Any, webhook_sink: Any) -> None:
    webhook_sink.script.extend([500, 503])
    created = post(sim, TRANSFER).json()
    # The sink records only the attempt it accepts; the simulators record all three.
    [record] = await all_delivered(sim)
    assert (record["attempts"], record["deliveries"], record["last_status"]) == (3, 1, "200")
    assert record["delivered_at"] and record["about"] == created["id"]
    [delivery] = webhook_sink.received
    assert delivery.event_id == record["event_id"] and webhook_sink.script == []


async def test_webhooks_can_be_held_and_released_in_reverse(sim: Any, webhook_sink: Any) -> None:
    sim.admin("POST", "/webhooks", {"hold": True})
    ids = [post(sim, {**TRANSFER, "reference": f"R{i}"}).json()["id"] for i in range(3)]
    # A bounded wait, not a signal: while holding, the outbox neither delivers
    # nor records anything, so no answer of the simulators can show that it
    # looked at these events and let them be. The emits woke it, and it looks
    # again every POLL_INTERVAL_SECONDS; the wait spans several of its looks.
    await asyncio.sleep(HELD_THROUGH_POLLS * POLL_INTERVAL_SECONDS)
    assert webhook_sink.received == []
    held = sim.admin("GET", "/webhooks?undelivered=true")
    assert [(row["about"], row["attempts"]) for row in held] == [(i, 0) for i in ids]
    assert sim.admin("POST", "/webhooks/release", {"order": "reverse"}) == {"released": 3}
    # Recorded as delivered once the receiver's 200 is back, newest first.
    record = await all_delivered(sim)
    assert [row["about"] for row in record] == ids
    assert [r.event["data"]["id"] for r in webhook_sink.received] == list(reversed(ids))


async def test_webhooks_can_be_delivered_twice(sim: Any, webhook_sink: Any) -> None:
    sim.admin("POST", "/webhooks", {"duplicate": True})
    post(sim, TRANSFER)
    [record] = await all_delivered(sim)
    assert (record["attempts"], record["deliveries"]) == (1, 2)
    first, second = webhook_sink.received
    assert first.event_id == second.event_id == record["event_id"]


async def test_an_event_delivered_long_ago_can_be_resent_by_what_it_is_about(
    sim: Any, webhook_sink: Any
) -> None:
    """A dashboard's resend: the very event (its id) about one object, sent
    again however many deliveries came after it; or one `back` deliveries."""
    ids = [post(sim, {**TRANSFER, "reference": f"R{i}"}).json()["id"] for i in range(4)]
    # Only an event recorded as delivered can be resent.
    delivered = await everything_received(sim, webhook_sink)
    first_event = {d.event["data"]["id"]: d.event_id for d in delivered}
    resent = sim.admin("POST", "/webhooks/resend", {"about": ids[0], "simulator": "bank"})
    assert resent == {"resent": first_event[ids[0]]}
    again = await received(webhook_sink, 5)
    assert again[-1].event_id == first_event[ids[0]]
    assert again[-1].event["data"]["id"] == ids[0]
    await all_delivered(sim)
    # The resent event came once more, and nothing else did.
    assert [r.event_id for r in webhook_sink.received] == [
        *(d.event_id for d in delivered),
        first_event[ids[0]],
    ]
    assert sim.admin("POST", "/webhooks/resend", {"back": 1}) == {"resent": first_event[ids[2]]}
    assert sim.admin("POST", "/webhooks/resend", {"about": "nothing-like-it"}) == {"resent": None}


def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_body(sim: Any) -> None:
    first = post(sim, TRANSFER, key="pay-1")
    again = post(sim, TRANSFER, key="pay-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = post(sim, {**TRANSFER, "amount_minor": 1}, key="pay-1")
    assert other.status_code == 409
    assert other.json()["error"] == {
        "type": "idempotency_error",
        "message": "Idempotency-Key pay-1 was used with another request",
    }


@pytest.mark.parametrize(
    ("fault", "expectation"),
    [
        ({"kind": "error", "status": 502}, 502),
        ({"kind": "reject"}, 422),
        ({"kind": "rate_limit", "seconds": 7}, 429),
        ({"kind": "latency", "seconds": 0.3}, 201),
        ({"kind": "timeout", "seconds": 3}, httpx.ReadTimeout),
        # The peer sees the dropped connection as a cut-short body or as a
        # reset, depending on which reaches it first.
        ({"kind": "drop"}, (httpx.RemoteProtocolError, httpx.ReadError)),
    ],
)
def test_each_fault_mode_is_injected_per_endpoint(
    sim: Any, fault: dict[str, Any], expectation: Any
) -> None:
    sim.fault(path_prefix="/bank/v1/simulate", times=1, **fault)
    # Another endpoint is untouched.
    assert httpx.get(f"{sim.provider_url('bank')}/v1/inbound_transfers/none").status_code == 404
    if isinstance(expectation, int):
        started = time.monotonic()
        response = post(sim, TRANSFER, timeout=1.5)
        assert response.status_code == expectation, response.text
        if expectation == 429:
            assert response.headers["retry-after"] == "7"
        if fault["kind"] == "latency":
            assert time.monotonic() - started >= fault["seconds"]
    else:
        with pytest.raises(expectation):
            post(sim, TRANSFER, timeout=1.5)
    # `times=1`: the next call is served normally.
    assert post(sim, TRANSFER).status_code == 201


def test_an_answer_lost_fault_serves_the_request_and_never_answers(sim: Any) -> None:
    sim.fault(path_prefix="/bank/v1/simulate", kind="answer_lost", seconds=3, times=1)
    with pytest.raises(httpx.ReadTimeout):
        post(sim, TRANSFER, key="lost-1", timeout=1.5)
    # It was made all the same: the keyed retry gets the stored answer.
    again = post(sim, TRANSFER, key="lost-1")
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"


def test_a_reject_fault_echoes_the_request_body_like_a_validation_error(sim: Any) -> None:
    sim.fault(path_prefix="/bank/v1/simulate", kind="reject", times=1)
    response = post(sim, TRANSFER)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body"] and error["input"] == TRANSFER


def test_every_answer_carries_its_own_request_id(sim: Any) -> None:
    sim.fault(path_prefix="/bank/v1/simulate", kind="error", status=503, times=1)
    answers = [
        post(sim, TRANSFER),  # the injected fault
        post(sim, TRANSFER, key="ids-1"),
        post(sim, TRANSFER, key="ids-1"),  # the idempotent replay
        httpx.get(f"{sim.provider_url('bank')}/v1/inbound_transfers/none"),
    ]
    assert [a.status_code for a in answers] == [503, 201, 201, 404]
    ids = [a.headers["x-request-id"] for a in answers]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == len(ids)


def test_bad_input_gets_a_422_naming_the_field(sim: Any) -> None:
    response = post(sim, {**TRANSFER, "amount_minor": -5})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "amount_minor"]


async def test_state_and_undelivered_webhooks_survive_a_restart(tmp_path: Path) -> None:
    process = simulator_process(tmp_path, free_port(), f"http://127.0.0.1:{free_port()}")
    with running(process):
        process.admin("POST", "/webhooks", {"hold": True})
        created = post(process, TRANSFER).json()
    with running(process):
        found = httpx.get(f"{process.provider_url('bank')}/v1/inbound_transfers/{created['id']}")
        assert found.json() == created
        [record] = process.admin("GET", "/webhooks")
        assert record["event_id"].startswith("evt_") and record["delivered_at"] is None
        assert (record["type"], record["about"]) == ("inbound_transfer.received", created["id"])


@pytest.mark.fast
def test_the_delivery_round_reads_only_the_events_due(tmp_path: Path) -> None:
    """Each round of the webhook delivery loop asks for the events due: it
    must not read every event ever sent (the issuer simulator spent a tenth
    of its time on that at 40 authorizations a second)."""
    store = Store(tmp_path / "store.db")
    plan = " ".join(
        str(row[-1]) for row in store.execute(f"EXPLAIN QUERY PLAN {DUE_EVENTS_QUERY}", 0.0)
    )
    assert "USING INDEX outbox_due" in plan, plan
    assert "SCAN outbox" not in plan and "TEMP B-TREE" not in plan, plan
