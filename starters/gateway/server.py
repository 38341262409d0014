"""cardflow's HTTP servers: uvicorn with deadlines on what a client sends.

Uvicorn alone lets a connection trickle its headers for as long as it likes;
here a request's headers must arrive whole within
`CARDFLOW_HTTP_HEADER_TIMEOUT_SECONDS` of its first byte (or, for the
first request, of the connection), else the connection is closed. The
protocol also stamps each request's arrival (its first byte) in the ASGI
scope, where the real-time route's budget starts (starters/gateway/intake.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from workers.settings import Settings

KEEP_ALIVE_SECONDS = 5

# Where the protocol puts a request's arrival (time.monotonic()) in its scope.
ARRIVED_AT = "cardflow_arrived_at"


def arrived_at(scope: Any) -> float:
    """When the request arrived (time.monotonic()): its first byte, as the
    protocol stamped it, else now."""
    stamped = (scope.get("state") or {}).get(ARRIVED_AT)
    return float(stamped) if stamped is not None else time.monotonic()


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a deadline on every request's headers."""

    header_timeout_seconds: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._first_byte_at: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting_for_headers = self.conn.their_state is h11.IDLE
        if waiting_for_headers and self._first_byte_at is None:
            self._first_byte_at = time.monotonic()
            self._arm_header_deadline()
        scope_before = self.scope
        super().data_received(data)
        if self.scope is not scope_before and self.scope is not None:
            # A request's headers are in: its arrival is its first byte.
            self.scope["state"][ARRIVED_AT] = self._first_byte_at or time.monotonic()
            self._first_byte_at = None
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(
            self.header_timeout_seconds, self._headers_too_slow
        )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closed a connection whose request headers did not arrive in time")
            self.transport.close()


def protocol_for(settings: Settings) -> type[GuardedH11Protocol]:
    """The protocol class with `settings`' header deadline."""
    return type(
        "GatewayH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_seconds": settings.http_header_timeout_seconds},
    )


def listener_config(
    app: Any, settings: Settings, *, host: str, port: int, **options: Any
) -> uvicorn.Config:
    """Uvicorn's configuration for any of cardflow's HTTP listeners (the
    gateway, the codec server, the simulators): headers under a deadline,
    idle connections closed, cardflow's own logging. `options` override."""
    values: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": protocol_for(settings),
        # An idle kept-alive connection closes after this many seconds.
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        # A client's address is the connection's own: X-Forwarded-For and
        # X-Forwarded-Proto are never taken from anyone.
        "proxy_headers": False,
        "log_level": settings.log_level.lower(),
        # Uvicorn's lines go through cardflow's own (JSON) handler.
        "log_config": None,
        # The listeners log what they refuse and what fails; a line per request
        # on the real-time path costs more than it tells.
        "access_log": False,
    }
    values.update(options)
    return uvicorn.Config(app, **values)


def gateway_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The gateway's listener (`options` override, e.g. host and port in tests)."""
    where = {"host": settings.bind_host, "port": settings.gateway_port}
    return listener_config(app, settings, **{**where, **options})
