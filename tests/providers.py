"""Test fixtures' helpers for the provider simulators: a process, an admin
client, and a webhook receiver that verifies signatures like the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from schemas.providers import PROVIDERS
from tests import polling
from workers.secrets import new_webhook_secret

STARTUP_SECONDS_MAX = 30


@dataclass
class SimulatorProcess:
    url: str
    home: Path
    env: dict[str, str]
    secrets: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def provider_url(self, provider: str) -> str:
        return f"{self.url}/{provider}"

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.url}/_admin{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json() if response.content else None

    def fault(self, **fault: Any) -> None:
        self.admin("POST", "/faults", fault)

    def reset(self, *, gateway_url: str | None = None, id_offset: int | None = None) -> None:
        """Empty state, no faults; optionally towards another gateway and id
        range, which a restart of the process keeps too."""
        fresh: dict[str, Any] = {}
        if gateway_url is not None:
            fresh["gateway_url"] = self.env["CARDFLOW_GATEWAY_URL"] = gateway_url
        if id_offset is not None:
            fresh["id_offset"] = id_offset
            self.env["CARDFLOW_SIMULATOR_ID_OFFSET"] = str(id_offset)
        self.admin("POST", "/reset", fresh or None)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        log = open(self.home / "simulators.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "starters.cli", "simulators", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def health() -> int | None:
            """The health check's status code; None while nothing answers."""
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/_admin/health", timeout=1).status_code
            return None

        polling.until_sync(
            health,
            lambda status: status == 200,
            f"the simulators started (see {self.home / 'simulators.log'})",
            STARTUP_SECONDS_MAX,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)
            self.process = None


def simulator_process(home: Path, port: int, gateway_url: str) -> SimulatorProcess:
    secrets = {provider: new_webhook_secret() for provider in PROVIDERS}
    env = dict(
        os.environ,
        CARDFLOW_HOME=str(home),
        CARDFLOW_SIMULATORS_PORT=str(port),
        CARDFLOW_GATEWAY_URL=gateway_url,
        CARDFLOW_WEBHOOK_SECRETS=json.dumps(secrets),
    )
    return SimulatorProcess(f"http://127.0.0.1:{port}", home, env, secrets)


@contextlib.contextmanager
def running(process: SimulatorProcess) -> Iterator[SimulatorProcess]:
    process.start()
    try:
        yield process
    finally:
        process.stop()


@dataclass
class ReceivedWebhook:
    provider: str
    event_id: str
    event: dict[str, Any]
    # The message as it came: what a receiver checks a signature against.
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WebhookReceiver:
    """Stands where the gateway stands; verifies every signature it receives."""

    url: str
    secrets: dict[str, str] = field(default_factory=dict)
    received: list[ReceivedWebhook] = field(default_factory=list)
    rejected: int = 0
    # Status to answer with, to make the sender retry (e.g. [500, 500] then 200).
    script: list[int] = field(default_factory=list)
    # Real-time requests (POST /realtime/{provider}/{name}), e.g. the issuer's
    # authorization requests: verified like webhooks, answered by this handler
    # with (status, json body, seconds to wait before answering).
    realtime: Any = None
    realtime_received: list[ReceivedWebhook] = field(default_factory=list)

    async def wait_for(self, count: int, seconds: float = 15) -> list[ReceivedWebhook]:
        """What was received, once it is at least `count` webhooks; fails,
        naming what did arrive, when the rest do not come within `seconds`."""
        received = await self.arrived(count, seconds)
        assert len(received) >= count, (
            f"{len(received)} of {count} webhooks arrived within {seconds} s: "
            f"{[(r.provider, r.event.get('type')) for r in received]}"
        )
        return received

    async def arrived(self, count: int, seconds: float) -> list[ReceivedWebhook]:
        """What was received once it is `count` webhooks or `seconds` passed,
        whichever comes first (for a poll with its own deadline and check)."""

        async def enough() -> bool:
            return len(self.received) >= count

        await polling.settled(enough, seconds)
        return self.received


@contextlib.asynccontextmanager
async def webhook_receiver(port: int) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}")

    async def verified(request: Request) -> ReceivedWebhook | None:
        """The signed message, or None (counted) when its signature does not verify."""
        provider = request.path_params["provider"]
        body = await request.body()
        try:
            event = Webhook(receiver.secrets[provider]).verify(body, dict(request.headers))
        except (WebhookVerificationError, KeyError):
            receiver.rejected += 1
            return None
        return ReceivedWebhook(
            provider, request.headers["webhook-id"], event, body, dict(request.headers)
        )

    async def receive(request: Request) -> JSONResponse:
        message = await verified(request)
        if message is None:
            return JSONResponse({"error": "bad signature"}, status_code=401)
        if receiver.script:
            status = receiver.script.pop(0)
            if status >= 300:
                return JSONResponse({"error": "scripted"}, status_code=status)
        receiver.received.append(message)
        return JSONResponse({"ok": True})

    async def realtime(request: Request) -> JSONResponse:
        message = await verified(request)
        if message is None:
            return JSONResponse({"error": "bad signature"}, status_code=401)
        receiver.realtime_received.append(message)
        if receiver.realtime is None:
            return JSONResponse({"error": "no realtime handler"}, status_code=503)
        status, answer, delay = receiver.realtime(request.path_params["name"], message.event)
        if delay:
            await asyncio.sleep(delay)
        return JSONResponse(answer, status_code=status)

    app = Starlette(
        routes=[
            Route("/webhooks/{provider}", receive, methods=["POST"]),
            Route("/realtime/{provider}/{name}", realtime, methods=["POST"]),
        ]
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task
