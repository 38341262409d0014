"""The gateway: signed webhooks reach a workflow once; the API starts processes idempotently."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from standardwebhooks import Webhook
from temporalio.client import Client
from temporalio.service import RetryConfig, RPCError, RPCStatusCode

from activities.database import create_pool
from schemas.health import PingResult
from schemas.providers import PROVIDERS
from starters.gateway.app import create_app
from tests.conftest import RunningStack, api_key_headers, free_port
from tests.polling import eventually, until
from tests.providers import running, simulator_process
from workers.converter import build_data_converter
from workers.secrets import new_webhook_secret
from workers.settings import load_settings
from workflows.health import ping_workflow_id

WAIT_SECONDS_MAX = 30.0
SERVER_START_SECONDS_MAX = 10.0


@dataclass
class Gateway:
    url: str
    secrets: dict[str, list[str]]
    stack: RunningStack
    http: httpx.AsyncClient

    def signed(
        self,
        provider: str,
        event: dict[str, Any],
        *,
        secret: str | None = None,
        at: datetime | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        body = json.dumps(event)
        stamp = at or datetime.now(UTC)
        message_id = message_id or event["id"]
        signature = Webhook(secret or self.secrets[provider][0]).sign(message_id, stamp, body)
        return {
            "content": body,
            "headers": {
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(int(stamp.timestamp())),
                "webhook-signature": signature,
            },
        }

    async def post_event(
        self, provider: str, event: dict[str, Any], **signing: Any
    ) -> httpx.Response:
        return await self.http.post(
            f"/webhooks/{provider}", **self.signed(provider, event, **signing)
        )

    async def ping_result(self, ping_id: str) -> PingResult:
        handle = self.stack.client.get_workflow_handle(
            ping_workflow_id(f"webhook-{ping_id}"), result_type=PingResult
        )
        # Webhooks may still be on their way: wait for the workflow to exist.
        await eventually(
            lambda: workflow_exists(self.stack.client, handle.id),
            f"{handle.id} started",
            WAIT_SECONDS_MAX,
        )
        return await asyncio.wait_for(handle.result(), WAIT_SECONDS_MAX)


async def workflow_exists(client: Client, workflow_id: str) -> bool:
    """Whether the workflow has started; an error other than its absence is raised."""
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status is not RPCStatusCode.NOT_FOUND:
            raise
        return False
    return True


def ping_event(
    ping_id: str, *, expected: int = 1, sequence: int = 0, event_type: str = "cardflow.ping"
) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:16]}",
        "type": event_type,
        "created_at": datetime.now(UTC).isoformat(),
        "data": {"ping_id": ping_id, "expected": expected, "sequence": sequence},
    }


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(stack: RunningStack, tmp_path: Path) -> AsyncIterator[Gateway]:
    old_bank = new_webhook_secret()
    secrets = {provider: [new_webhook_secret()] for provider in PROVIDERS}
    secrets["bank"].append(old_bank)  # rotation: the previous secret still verifies
    overlap_end = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    old_entry = {"secret": old_bank, "until": overlap_end}
    configured = {**secrets, "bank": [secrets["bank"][0], old_entry]}
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_TASK_QUEUE_PREFIX=stack.queues.prefix,
        CARDFLOW_WEBHOOK_SECRETS=json.dumps(configured),
        DATABASE_URL=stack.database_url,
    )
    pool = await create_pool(stack.database_url, size_max=4)
    app = create_app(settings, client=stack.client, pool=pool)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    loop = asyncio.get_running_loop()
    task = loop.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = loop.time() + SERVER_START_SECONDS_MAX
        while not server.started:
            assert not task.done(), "the gateway stopped before it started serving"
            assert loop.time() < deadline, f"the gateway never started serving on {url}"
            await asyncio.sleep(0.01)
        headers = await api_key_headers(pool, settings)
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
            yield Gateway(url, secrets, stack, http)
    finally:
        server.should_exit = True
        await task
        await pool.close()


async def no_workflow(gateway: Gateway, ping_id: str) -> bool:
    return not await workflow_exists(gateway.stack.client, ping_workflow_id(f"webhook-{ping_id}"))


async def events_remembered(gateway: Gateway, event_id: str) -> int:
    """How many deliveries of `event_id` the gateway remembers having accepted."""
    found = await gateway.stack.pool.fetchval(
        "SELECT count(*) FROM gateway_webhook_events WHERE event_id = $1", event_id
    )
    return int(found)


async def test_a_signed_event_starts_the_workflow_and_repeats_reach_it_once(
    gateway: Gateway,
) -> None:
    events = [ping_event("p1", expected=3, sequence=i) for i in range(3)]
    # Out of order, and the middle one redelivered (signed afresh, later).
    # Every signing time is set here: one taken from the clock as the post
    # goes out could fall in the redelivery's second on a slow machine, and
    # the same message id signed at the same second is a replay.
    first = datetime.now(UTC)
    later = first + timedelta(seconds=2)
    for event, at in (
        (events[2], first),
        (events[1], first),
        (events[1], later),
        (events[0], first),
    ):
        response = await gateway.post_event("bank", event, at=at)
        assert response.status_code == 200, response.text
    redelivered = await gateway.post_event("bank", events[1], at=later + timedelta(seconds=1))
    assert redelivered.json()["status"] == "duplicate"
    result = await gateway.ping_result("p1")
    assert [note.sequence for note in result.webhook_events] == [2, 1, 0]
    assert len({note.event_id for note in result.webhook_events}) == 3


@pytest.mark.parametrize(
    "tamper", ["unsigned", "body", "secret", "stale", "future", "other_provider", "id_mismatch"]
)
async def test_an_invalid_webhook_is_refused_and_starts_nothing(
    gateway: Gateway, tamper: str
) -> None:
    ping_id = f"bad-{tamper}-{uuid.uuid4().hex[:8]}"
    event = ping_event(ping_id)
    request = gateway.signed("kyc", event)
    if tamper == "unsigned":
        request["headers"] = {"content-type": "application/json"}
    elif tamper == "body":
        request["content"] = request["content"].replace('"expected": 1', '"expected": 2')
    elif tamper == "secret":
        request = gateway.signed("kyc", event, secret=new_webhook_secret())
    elif tamper == "stale":
        request = gateway.signed("kyc", event, at=datetime.now(UTC) - timedelta(minutes=10))
    elif tamper == "future":
        request = gateway.signed("kyc", event, at=datetime.now(UTC) + timedelta(minutes=10))
    elif tamper == "other_provider":
        request = gateway.signed("kyc", event, secret=gateway.secrets["tron"][0])
    elif tamper == "id_mismatch":
        request = gateway.signed("kyc", event, message_id="evt_someone_else")
    response = await gateway.http.post("/webhooks/kyc", **request)
    expected = (400, "malformed_event") if tamper == "id_mismatch" else (401, "invalid_signature")
    assert (response.status_code, response.json()["code"]) == expected, response.text
    # The gateway answers once it has delivered a webhook or refused it, so
    # nothing of this one is still in flight: it is not remembered, and it
    # started nothing.
    assert await events_remembered(gateway, event["id"]) == 0
    assert await no_workflow(gateway, ping_id)
    # The ping's next, valid event starts its process, which holds that event alone.
    valid = ping_event(ping_id)
    accepted = await gateway.post_event("kyc", valid)
    assert (accepted.status_code, accepted.json()["status"]) == (200, "delivered"), accepted.text
    result = await gateway.ping_result(ping_id)
    assert [note.event_id for note in result.webhook_events] == [valid["id"]]


async def test_a_replayed_message_is_refused_and_reaches_the_workflow_once(
    gateway: Gateway,
) -> None:
    event = ping_event("replay", expected=2, sequence=0)
    request = gateway.signed("issuer", event)
    assert (await gateway.http.post("/webhooks/issuer", **request)).status_code == 200
    replay = await gateway.http.post("/webhooks/issuer", **request)
    assert (replay.status_code, replay.json()["code"]) == (401, "replayed")
    await gateway.post_event("issuer", ping_event("replay", expected=2, sequence=1))
    result = await gateway.ping_result("replay")
    assert [note.sequence for note in result.webhook_events] == [0, 1]


async def test_an_event_with_nothing_to_deliver_is_remembered_once_and_its_repeats_told_apart(
    gateway: Gateway,
) -> None:
    # No process takes this type: accepted, remembered, delivered nowhere.
    event = ping_event("nothing", event_type="cardflow.nobody_listens")
    request = gateway.signed("bank", event)
    first = await gateway.http.post("/webhooks/bank", **request)
    assert (first.status_code, first.json()["status"]) == (200, "ignored"), first.text
    replay = await gateway.http.post("/webhooks/bank", **request)
    assert (replay.status_code, replay.json()["code"]) == (401, "replayed")
    later = datetime.now(UTC) + timedelta(seconds=2)
    redelivered = await gateway.post_event("bank", event, at=later)
    assert (redelivered.status_code, redelivered.json()["status"]) == (200, "duplicate")
    assert await events_remembered(gateway, event["id"]) == 1
    assert await no_workflow(gateway, "nothing")


async def test_the_previous_secret_still_verifies_during_rotation(gateway: Gateway) -> None:
    response = await gateway.post_event(
        "bank", ping_event("rotated"), secret=gateway.secrets["bank"][1]
    )
    assert response.status_code == 200
    assert len((await gateway.ping_result("rotated")).webhook_events) == 1


async def test_an_update_route_reaches_a_running_workflow(gateway: Gateway) -> None:
    started = await gateway.post_event("fx", ping_event("upd", expected=2, sequence=0))
    assert (started.status_code, started.json()["status"]) == (200, "delivered"), started.text
    update = ping_event("upd", sequence=1, event_type="cardflow.ping.update")
    response = await gateway.post_event("fx", update)
    assert response.json()["status"] == "delivered"
    result = await gateway.ping_result("upd")
    assert [n.event_type for n in result.webhook_events] == [
        "cardflow.ping",
        "cardflow.ping.update",
    ]
    orphan = await gateway.post_event("fx", ping_event("nobody", event_type="cardflow.ping.update"))
    assert orphan.json()["status"] == "ignored"


async def test_unrouted_and_malformed_events(gateway: Gateway) -> None:
    unrouted = {**ping_event("x"), "type": "card.updated"}
    assert (await gateway.post_event("issuer", unrouted)).json()["status"] == "ignored"
    malformed = {**ping_event("x"), "data": {"ping_id": "has spaces"}}
    response = await gateway.post_event("issuer", malformed)
    assert (response.status_code, response.json()["code"]) == (400, "malformed_event")
    assert [error["loc"] for error in response.json()["detail"]] == [["ping_id"]]
    nowhere = await gateway.http.post("/webhooks/nowhere", content="{}")
    assert (nowhere.status_code, nowhere.json()["code"]) == (404, "unknown_provider")


async def test_an_idempotency_key_repeat_returns_the_same_process(gateway: Gateway) -> None:
    key = f"req-{uuid.uuid4().hex[:8]}"
    first = await gateway.http.post(
        "/v1/pings", json={"requested_by": "mobile backend"}, headers={"Idempotency-Key": key}
    )
    again = await gateway.http.post(
        "/v1/pings", json={"requested_by": "mobile backend"}, headers={"Idempotency-Key": key}
    )
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["run_id"] == first.json()["run_id"] and again.json()["replayed"]
    other = await gateway.http.post(
        "/v1/pings", json={"requested_by": "someone else"}, headers={"Idempotency-Key": key}
    )
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_key_reused")
    # Once the process has finished, its status says so.
    started = gateway.stack.client.get_workflow_handle(first.json()["workflow_id"])
    await asyncio.wait_for(started.result(), WAIT_SECONDS_MAX)
    answer = await gateway.http.get(first.json()["status_url"])
    assert answer.status_code == 200, answer.text
    status = answer.json()
    assert status["workflow_type"] == "Ping" and status["status"] == "COMPLETED"
    missing = await gateway.http.get("/v1/processes/ping/none")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


async def test_bad_input_gets_a_422_naming_the_field(gateway: Gateway) -> None:
    missing_key = await gateway.http.post("/v1/pings", json={"requested_by": "x"})
    assert (missing_key.status_code, missing_key.json()["code"]) == (422, "invalid_request")
    assert missing_key.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    empty = await gateway.http.post(
        "/v1/pings", json={"requested_by": ""}, headers={"Idempotency-Key": "k-1"}
    )
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "requested_by"]
    openapi = (await gateway.http.get("/openapi.json")).json()
    assert "/v1/pings" in openapi["paths"]


async def test_simulator_webhooks_delivered_twice_and_reversed_reach_the_workflow_once(
    gateway: Gateway, tmp_path: Path
) -> None:
    process = simulator_process(tmp_path / "sim", free_port(), gateway.url)
    process.secrets = {provider: values[0] for provider, values in gateway.secrets.items()}
    process.env["CARDFLOW_WEBHOOK_SECRETS"] = json.dumps(process.secrets)
    (tmp_path / "sim").mkdir()
    with running(process):
        process.admin("POST", "/webhooks", {"hold": True, "duplicate": True})
        for sequence in range(4):
            process.admin(
                "POST",
                "/webhooks/emit",
                {
                    "simulator": "tron",
                    "type": "cardflow.ping",
                    "data": {"ping_id": "e2e", "expected": 4, "sequence": sequence},
                },
            )
        process.admin("POST", "/webhooks/release", {"order": "reverse"})
        result = await gateway.ping_result("e2e")
        # The workflow may finish on a first copy before the second is recorded.
        deliveries = await outbox_delivered(process, 4)
    assert [note.sequence for note in result.webhook_events] == [3, 2, 1, 0]
    assert [d["deliveries"] for d in deliveries] == [2, 2, 2, 2]


async def outbox_delivered(process: Any, count: int) -> list[dict[str, Any]]:
    """The simulator's outbox once it holds `count` events, each delivered;
    fails showing the outbox when WAIT_SECONDS_MAX pass first."""

    async def deliveries() -> list[dict[str, Any]]:
        return list(process.admin("GET", "/webhooks"))

    return await until(
        deliveries,
        lambda found: len(found) == count and all(d["delivered_at"] for d in found),
        f"{count} events, each delivered",
        WAIT_SECONDS_MAX,
    )


async def test_a_webhook_is_answered_503_and_not_remembered_while_temporal_is_down(
    stack: RunningStack, tmp_path: Path
) -> None:
    secrets = {provider: [new_webhook_secret()] for provider in PROVIDERS}
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_WEBHOOK_SECRETS=json.dumps(secrets),
        DATABASE_URL=stack.database_url,
    )
    # A client for a Temporal that nobody runs: every call fails at once.
    unreachable = await Client.connect(
        f"127.0.0.1:{free_port()}",
        lazy=True,
        retry_config=RetryConfig(max_retries=0),
        data_converter=build_data_converter([("k", bytes(32))]),
    )
    pool = await create_pool(stack.database_url, size_max=2)
    app = create_app(settings, client=unreachable, pool=pool)
    event = ping_event("down")
    body = json.dumps(event)
    stamp = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": event["id"],
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secrets["bank"][0]).sign(event["id"], stamp, body),
    }
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway"
            ) as http,
        ):
            response = await http.post("/webhooks/bank", content=body, headers=headers)
        assert response.status_code == 503, response.text
        assert response.json() == {
            "code": "temporarily_unavailable",
            "detail": "temporarily unable to deliver",
        }
        # Not remembered: the provider's retry is delivered, not taken for a duplicate.
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM gateway_webhook_events WHERE event_id = $1", event["id"]
            )
            == 0
        )
    finally:
        await pool.close()
