"""All provider simulators in one ASGI app, each mounted under its name.

    /issuer /kyc /fx /tron /bank /notify     the simulated provider APIs
    /upstream                                an app that takes cardflow's events
    /telegram                                the Telegram Bot API and its users
    /_admin/...                              faults, webhook modes, reset
                                             (optionally towards another gateway)
                                             (loopback clients only)

Run with `cardflow simulators serve`; `cardflow dev up` and the test fixtures
start it. State lives in SQLite (CARDFLOW_HOME/simulators/state.db).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from pydantic import AnyHttpUrl, BaseModel, Field
from starlette.applications import Starlette
from starlette.routing import Mount

from simulators.framework.context import SimulatorContext
from simulators.framework.faults import Fault, FaultMiddleware
from simulators.framework.idempotency import IdempotencyMiddleware
from simulators.framework.request_ids import RequestIdMiddleware

SimulatorFactory = Callable[[SimulatorContext], FastAPI]


class WebhookMode(BaseModel):
    hold: bool | None = None
    duplicate: bool | None = None


class Release(BaseModel):
    order: Literal["forward", "reverse"] = "forward"


class Resend(BaseModel):
    """Send again the delivered event this many deliveries before the newest,
    or the first one about an object (a transaction's or authorization's id)."""

    back: int = Field(default=0, ge=0, le=1_000_000)
    simulator: str | None = None
    about: str | None = Field(default=None, min_length=1, max_length=200)


class Reset(BaseModel):
    """What a reset simulator starts afresh with, besides empty state: the
    gateway it sends webhooks and real-time requests to, and where its
    readable ids start (a stack sharing a Temporal server takes its own
    range). Both keep their current value when left out."""

    gateway_url: AnyHttpUrl | None = None
    id_offset: int | None = Field(default=None, ge=0, le=10**15)


class TestEvent(BaseModel):
    """A provider dashboard's "send test webhook": any type, any data."""

    simulator: str
    type: str
    data: dict[str, Any] = {}


ADMIN_REFUSED_MESSAGE = (
    "the simulators' admin API answers loopback clients only "
    "(on compose: docker compose exec simulators ...)"
)


def is_loopback_peer(host: str | None) -> bool:
    """127.0.0.0/8 and ::1, also as an IPv4-mapped IPv6 address (a dual-stack bind)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        # No IP peer at all (a Unix socket, a proxy's name): not provably loopback.
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _loopback_only(request: Request) -> None:
    # The peer address of the connection itself, never a forwarded-for header
    # a remote client could write.
    if not is_loopback_peer(request.client.host if request.client else None):
        raise HTTPException(status_code=403, detail=ADMIN_REFUSED_MESSAGE)


def admin_app(context: SimulatorContext) -> FastAPI:
    admin = FastAPI(title="cardflow simulators admin", openapi_url=None)

    @admin.middleware("http")
    async def loopback(request: Request, call_next: Any) -> Any:
        try:
            _loopback_only(request)
        except HTTPException as error:
            from fastapi.responses import JSONResponse

            return JSONResponse({"detail": error.detail}, status_code=error.status_code)
        return await call_next(request)

    @admin.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "webhooks_pending": context.outbox.pending()}

    @admin.post("/faults", status_code=201)
    async def add_fault(fault: Fault) -> Fault:
        context.faults.add(fault)
        return fault

    @admin.get("/faults")
    async def list_faults() -> list[Fault]:
        return context.faults.list()

    @admin.delete("/faults", status_code=204)
    async def clear_faults() -> None:
        context.faults.clear()

    @admin.post("/reset", status_code=204)
    async def reset(fresh: Reset | None = None) -> None:
        context.store.reset()
        if fresh is not None and fresh.id_offset is not None:
            context.store.id_offset = fresh.id_offset
        if fresh is not None and fresh.gateway_url is not None:
            context.retarget(str(fresh.gateway_url).rstrip("/"))
        context.faults.clear()
        context.outbox.hold = False
        context.outbox.duplicate = False
        context.options.clear()

    @admin.post("/webhooks")
    async def webhook_mode(mode: WebhookMode) -> dict[str, bool]:
        if mode.hold is not None:
            context.outbox.hold = mode.hold
        if mode.duplicate is not None:
            context.outbox.duplicate = mode.duplicate
        return {"hold": context.outbox.hold, "duplicate": context.outbox.duplicate}

    @admin.post("/webhooks/release")
    async def release(body: Release) -> dict[str, int]:
        return {"released": context.outbox.release(body.order)}

    @admin.post("/webhooks/resend")
    async def resend(body: Resend) -> dict[str, str | None]:
        return {"resent": context.outbox.resend(body.back, body.simulator, body.about)}

    @admin.post("/webhooks/emit", status_code=201)
    async def emit(event: TestEvent) -> dict[str, Any]:
        if event.simulator not in context.outbox.targets:
            raise HTTPException(status_code=404, detail=f"no webhook target for {event.simulator}")
        return context.outbox.emit(event.simulator, event.type, event.data)

    @admin.get("/webhooks")
    async def deliveries(undelivered: bool = False) -> list[dict[str, Any]]:
        return context.outbox.deliveries(undelivered=undelivered)

    @admin.put("/options/{simulator}")
    async def set_options(simulator: str, options: dict[str, Any]) -> dict[str, Any]:
        context.options.setdefault(simulator, {}).update(options)
        return context.options[simulator]

    return admin


def build_app(context: SimulatorContext, simulators: dict[str, SimulatorFactory]) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(context.outbox.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    routes = [Mount("/_admin", app=admin_app(context))]
    routes += [Mount(f"/{name}", app=factory(context)) for name, factory in simulators.items()]
    root = Starlette(routes=routes, lifespan=lifespan)
    return RequestIdMiddleware(
        FaultMiddleware(IdempotencyMiddleware(root, context.store), context.faults)
    )
