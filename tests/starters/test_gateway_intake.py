"""What the gateway takes in before any route: the key before the body, a cap
on every body, deadlines on headers and bodies, and the issuer's budget from
a request's arrival. Driven over real sockets against the production server
(starters/gateway/server.py), as an attacker or a slow client would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from activities.metrics import GatewayMetrics
from schemas.issuer import DecidedBy
from schemas.money import Currency
from schemas.providers import ISSUER, PROVIDERS
from starters.gateway.app import create_app
from starters.gateway.auth import UNAUTHENTICATED_DETAIL
from starters.gateway.realtime import REALTIME_AUTHORIZATION_PATH
from starters.gateway.server import gateway_config
from tests.conftest import Platform, StackFactory, api_key_headers, free_port, project_root
from tests.customers import SHOP, authorize, open_card
from tests.providers import running, simulator_process
from tests.starters.test_gateway_realtime import decisions_counted
from workers.secrets import new_webhook_secret
from workers.settings import Settings, load_settings
from workers.telemetry import start_telemetry

HEADER_TIMEOUT_SECONDS = 1.0
BODY_TIMEOUT_SECONDS = 1.0
API_BODY_BYTES_MAX = 64 * 1024
# How long a refusal that needs no body may take to come back.
ANSWER_SECONDS_MAX = 5.0
STARTUP_SECONDS_MAX = 60.0
# A body the attacker announces (and would send) whole.
ATTACK_BODY_BYTES = 48 * 1024 * 1024


@dataclass
class Edge:
    host: str
    port: int
    settings: Settings
    api_headers: dict[str, str]
    metrics_url: str


@pytest_asyncio.fixture(loop_scope="session")
async def edge(make_stack: StackFactory, tmp_path: Path) -> AsyncIterator[Edge]:
    """A gateway served as production serves it, with short deadlines."""
    port, metrics_port = free_port(), free_port()
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_WEBHOOK_SECRETS=json.dumps({p: [new_webhook_secret()] for p in PROVIDERS}),
        CARDFLOW_HTTP_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_SECONDS),
        CARDFLOW_GATEWAY_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS),
        CARDFLOW_API_BODY_BYTES_MAX=str(API_BODY_BYTES_MAX),
        CARDFLOW_METRICS_PORT=str(metrics_port),
    )
    async with make_stack(kinds=("ledger",)) as stack:
        settings = settings.model_copy(update={"database_url": stack.database_url})
        telemetry = start_telemetry(settings, "gateway")
        app = create_app(settings, client=stack.client, pool=stack.pool, telemetry=telemetry)
        server = uvicorn.Server(
            gateway_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
        )
        task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            headers = await api_key_headers(stack.pool, settings)
            yield Edge("127.0.0.1", port, settings, headers, f"http://127.0.0.1:{metrics_port}")
        finally:
            server.should_exit = True
            await task
            telemetry.shutdown()


@contextlib.asynccontextmanager
async def connection(
    host: str, port: int
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "host: gateway",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        return dict(json.loads(self.body))


async def answer(reader: asyncio.StreamReader, seconds: float = ANSWER_SECONDS_MAX) -> Answer:
    """The response, within `seconds` (else the test fails: the server waited)."""
    async with asyncio.timeout(seconds):
        status_line = await reader.readuntil(b"\r\n")
        headers: dict[str, str] = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split()[1]), headers, body)


async def closed_by_server(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def rejections(metrics_url: str, provider: str, reason: str) -> float:
    import httpx

    text = httpx.get(f"{metrics_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.endswith("webhook_rejections_total")
        and sample.labels.get("provider") == provider
        and sample.labels.get("reason") == reason
    )


# ----- the key before the body ----------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer cfk_not_a_key", "Basic abc"])
async def test_a_v1_request_without_a_valid_key_is_refused_before_its_body_is_read(
    edge: Edge, authorization: str | None
) -> None:
    headers = {"content-type": "application/json", "content-length": str(ATTACK_BODY_BYTES)}
    if authorization is not None:
        headers["authorization"] = authorization
    async with connection(edge.host, edge.port) as (reader, writer):
        # The headers only: a server that reads the body first never answers.
        writer.write(head("POST", "/v1/pings", headers))
        await writer.drain()
        refused = await answer(reader)
        assert refused.status == 401, refused.body
        assert refused.json() == {"code": "unauthenticated", "detail": UNAUTHENTICATED_DETAIL}
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.headers["connection"] == "close"
        assert await closed_by_server(reader, ANSWER_SECONDS_MAX)


async def test_a_chunked_body_without_a_key_is_refused_before_it_is_read(edge: Edge) -> None:
    headers = {"content-type": "application/json", "transfer-encoding": "chunked"}
    async with connection(edge.host, edge.port) as (reader, writer):
        writer.write(head("POST", "/v1/pings", headers) + b'10\r\n{"requested_by":')
        await writer.drain()
        assert (await answer(reader)).status == 401


# ----- every body has a cap ---------------------------------------------------


async def test_a_body_announced_over_its_cap_is_refused_before_it_is_read(edge: Edge) -> None:
    announced = {"content-type": "application/json", "content-length": str(ATTACK_BODY_BYTES)}
    async with connection(edge.host, edge.port) as (reader, writer):
        writer.write(head("POST", "/v1/pings", {**announced, **edge.api_headers}))
        await writer.drain()
        refused = await answer(reader)
    assert (refused.status, refused.json()["code"]) == (413, "body_too_large")

    # A webhook of 400 MiB: refused from its headers, and counted.
    before = rejections(edge.metrics_url, "kyc", "too_large")
    announced["content-length"] = str(400 * 1024 * 1024)
    for path in ("/webhooks/kyc", REALTIME_AUTHORIZATION_PATH):
        async with connection(edge.host, edge.port) as (reader, writer):
            writer.write(head("POST", path, announced))
            await writer.drain()
            refused = await answer(reader)
        assert (refused.status, refused.json()["code"]) == (413, "body_too_large")
    assert rejections(edge.metrics_url, "kyc", "too_large") == before + 1
    assert rejections(edge.metrics_url, ISSUER, "too_large") >= 1


async def test_a_streamed_body_is_cut_off_at_its_cap(edge: Edge) -> None:
    chunk = b"x" * 16 * 1024
    for path, headers in (
        ("/v1/pings", edge.api_headers),
        ("/webhooks/kyc", {}),
    ):
        sent = 0
        async with connection(edge.host, edge.port) as (reader, writer):
            writer.write(head("POST", path, {**headers, "transfer-encoding": "chunked"}))
            # Up to 1 MiB, past every cap; the server may hang up first.
            with contextlib.suppress(ConnectionError):
                while sent < 1024 * 1024:
                    writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    await writer.drain()
                    sent += len(chunk)
            refused = await answer(reader)
        assert (refused.status, refused.json()["code"]) == (413, "body_too_large"), path


# ----- deadlines ----------------------------------------------------------------


async def test_a_connection_trickling_its_headers_is_closed(edge: Edge) -> None:
    async with connection(edge.host, edge.port) as (reader, writer):
        started = time.monotonic()
        writer.write(b"POST /v1/pings HTTP/1.1\r\nhost: gateway\r\n")
        await writer.drain()
        for n in range(8):  # a header line every 0.4 s, never the end of them
            await asyncio.sleep(HEADER_TIMEOUT_SECONDS / 2.5)
            with contextlib.suppress(ConnectionError):
                writer.write(f"x-trickle-{n}: 1\r\n".encode())
                await writer.drain()
        assert await closed_by_server(reader, ANSWER_SECONDS_MAX)
        assert time.monotonic() - started < HEADER_TIMEOUT_SECONDS * 3.2 + ANSWER_SECONDS_MAX

    # An idle connection that never sends a byte is closed too.
    async with connection(edge.host, edge.port) as (reader, _):
        assert await closed_by_server(reader, HEADER_TIMEOUT_SECONDS + ANSWER_SECONDS_MAX)


async def test_the_simulators_listener_closes_a_connection_trickling_its_headers(
    tmp_path: Path,
) -> None:
    port = free_port()
    sim = simulator_process(tmp_path, port, "http://127.0.0.1:9")
    sim.env["CARDFLOW_HTTP_HEADER_TIMEOUT_SECONDS"] = str(HEADER_TIMEOUT_SECONDS)
    with running(sim):
        async with connection("127.0.0.1", port) as (reader, writer):
            writer.write(b"GET /issuer/v1/cards HTTP/1.1\r\nhost: sim\r\n")
            await writer.drain()
            assert await closed_by_server(reader, HEADER_TIMEOUT_SECONDS + ANSWER_SECONDS_MAX)


async def test_the_codec_servers_listener_closes_a_connection_trickling_its_headers(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = dict(
        os.environ,
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_CODEC_PORT=str(port),
        CARDFLOW_HTTP_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_SECONDS),
    )
    server = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "starters.cli", "codec", "serve"), env=env, cwd=project_root()
    )
    try:
        async with asyncio.timeout(STARTUP_SECONDS_MAX):
            while True:
                try:
                    _, probe = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                probe.close()
                break
        async with connection("127.0.0.1", port) as (reader, writer):
            writer.write(b"POST /decode HTTP/1.1\r\nhost: codec\r\n")
            await writer.drain()
            assert await closed_by_server(reader, HEADER_TIMEOUT_SECONDS + ANSWER_SECONDS_MAX)
    finally:
        server.terminate()
        await server.wait()


async def test_a_body_that_does_not_arrive_in_time_is_answered_408(edge: Edge) -> None:
    headers = {**edge.api_headers, "content-type": "application/json", "content-length": "100"}
    async with connection(edge.host, edge.port) as (reader, writer):
        writer.write(head("POST", "/v1/pings", headers) + b'{"requested_by": ')
        await writer.drain()
        refused = await answer(reader, BODY_TIMEOUT_SECONDS + ANSWER_SECONDS_MAX)
    assert (refused.status, refused.json()["code"]) == (408, "body_too_slow")


# ----- the issuer's budget runs from arrival -------------------------------------


def realtime_request(platform: Platform, card_id: str, amount: int) -> tuple[bytes, bytes]:
    """An issuer's signed real-time request: its head and its body."""
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "type": "authorization.request",
        "created_at": datetime.now(UTC).isoformat(),
        "data": {
            "authorization_id": f"auth_{uuid.uuid4().hex[:16]}",
            "kind": "initial",
            "card_id": card_id,
            "amount_minor": amount,
            "currency": "USD",
            "merchant_amount_minor": amount,
            "merchant_currency": "USD",
            "merchant": SHOP.model_dump(mode="json"),
            "pending_amount_minor": 0,
        },
    }
    body = json.dumps(event).encode()
    stamp = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "webhook-id": str(event["id"]),
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(platform.sim.secrets[ISSUER]).sign(
            str(event["id"]), stamp, body.decode()
        ),
    }
    return head("POST", REALTIME_AUTHORIZATION_PATH, headers), body


async def test_the_budget_counts_from_the_first_byte_of_the_request(platform: Platform) -> None:
    _, card_id, _ = await open_card(platform)
    budget_ms = 1_000
    platform.app.state.settings = platform.settings.model_copy(
        update={"authorization_budget_ms": budget_ms, "authorization_stand_in": "decline"}
    )
    request_head, body = realtime_request(platform, card_id, 1_000)
    host, port = platform.gateway_url.removeprefix("http://").split(":")
    async with connection(host, int(port)) as (reader, writer):
        # The request's head takes longer than the budget to arrive whole.
        for line in request_head.splitlines(keepends=True):
            writer.write(line)
            await writer.drain()
            await asyncio.sleep(1.2 * budget_ms / 1000 / len(request_head.splitlines()))
        writer.write(body)
        await writer.drain()
        answered = await answer(reader)
    assert answered.status == 200
    decided = answered.json()
    assert (decided["decision"], decided["reason"]) == (
        "decline",
        "stand-in decline: no decision within the budget",
    ), decided


# ----- the flood ------------------------------------------------------------------

FLOOD_CLIENTS = 6
FLOOD_SECONDS = 20.0


async def test_a_flood_of_large_unauthenticated_bodies_leaves_every_decision_in_time(
    platform: Platform,
) -> None:
    _, card_id, _ = await open_card(platform, {Currency.USD: 1_000_000})
    metrics_port = free_port()
    telemetry = start_telemetry(
        platform.settings.model_copy(update={"metrics_port": metrics_port}), "gateway"
    )
    platform.app.state.metrics = GatewayMetrics(telemetry.meter)
    host, port = platform.gateway_url.removeprefix("http://").split(":")
    flooder = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.flood", host, port),
        *(str(FLOOD_CLIENTS), str(ATTACK_BODY_BYTES), str(FLOOD_SECONDS)),
        stdout=asyncio.subprocess.PIPE,
        cwd=project_root(),
    )
    try:
        decided = []
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            decided.append(await authorize(platform, card_id, 100))
            await asyncio.sleep(0.2)
        out, _ = await flooder.communicate()
    finally:
        if flooder.returncode is None:
            flooder.kill()
            await flooder.wait()
        telemetry.shutdown()
    assert int(out) >= FLOOD_CLIENTS, "the flood did not run"
    late = [
        (auth.id, auth.decided_by, auth.decision_reason)
        for auth in decided
        if auth.decided_by is not DecidedBy.CARDFLOW or "stand-in" in auth.decision_reason
    ]
    assert late == [], f"{len(late)} of {len(decided)} not the card's own answer in time"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    assert decisions_counted(metrics_url, source="card") == len(decided)
    assert decisions_counted(metrics_url, source="timeout") == 0
    assert decisions_counted(metrics_url, source="stand_in") == 0
