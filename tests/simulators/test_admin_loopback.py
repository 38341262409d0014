"""The simulators' admin and fault-injection API answers loopback peers only, even when
the simulators listen on every interface; the provider APIs stay open to all."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from simulators.app import ADMIN_REFUSED_MESSAGE
from simulators.server import build
from tests.conftest import free_port
from workers.settings import load_settings

FAULT = {"kind": "error", "path_prefix": "/fx/v1/quotes", "status": 503}
ADMIN_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/_admin/health", None),
    ("POST", "/_admin/faults", FAULT),
    ("GET", "/_admin/faults", None),
    ("DELETE", "/_admin/faults", None),
    ("POST", "/_admin/reset", None),
    ("POST", "/_admin/webhooks", {"hold": True}),
    ("POST", "/_admin/webhooks/release", {"order": "reverse"}),
    ("POST", "/_admin/webhooks/emit", {"simulator": "bank", "type": "x.y", "data": {}}),
    ("GET", "/_admin/webhooks", None),
    ("PUT", "/_admin/options/fx", {"spread_bps": 1}),
]
REFUSED = {"detail": ADMIN_REFUSED_MESSAGE}
# How long uvicorn may take to start listening in a thread of this process.
SERVER_START_SECONDS_MAX = 10.0
SERVER_START_POLL_SECONDS = 0.01


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return build(load_settings(CARDFLOW_HOME=str(tmp_path)))


def client_from(app: Any, host: str) -> TestClient:
    return TestClient(app, client=(host, 50_000))


@pytest.mark.parametrize("host", ["10.1.2.3", "192.168.0.7", "2001:db8::1", "::ffff:10.0.0.1"])
def test_every_admin_route_refuses_a_peer_that_is_not_loopback(app: Any, host: str) -> None:
    remote = client_from(app, host)
    for method, path, body in ADMIN_CALLS:
        response = remote.request(method, path, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json() == REFUSED
    # Nothing the refused calls asked for happened.
    local = client_from(app, "127.0.0.1")
    assert local.get("/_admin/faults").json() == []
    assert local.post("/_admin/webhooks", json={}).json() == {"hold": False, "duplicate": False}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_peers_inject_faults(app: Any, host: str) -> None:
    local = client_from(app, host)
    added = local.post("/_admin/faults", json=FAULT)
    assert added.status_code == 201, added.text
    assert local.get("/_admin/faults").json() == [added.json()]
    assert local.post("/_admin/reset").status_code == 204
    assert local.get("/_admin/faults").json() == []


def test_a_forwarded_for_header_does_not_make_a_remote_peer_local(app: Any) -> None:
    remote = client_from(app, "10.1.2.3")
    response = remote.get("/_admin/health", headers={"X-Forwarded-For": "127.0.0.1"})
    assert response.status_code == 403 and response.json() == REFUSED


def test_the_provider_apis_answer_any_peer(app: Any) -> None:
    remote = client_from(app, "10.1.2.3")
    # The simulator's own answer to the remote peer, not the admin API's refusal.
    unknown = remote.get("/fx/v1/quotes/q_unknown")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "no quote q_unknown"}
    created = remote.post(
        "/fx/v1/quotes",
        json={"sell_currency": "USD", "buy_currency": "EUR", "sell_amount_minor": 100},
    )
    assert created.status_code == 201, created.text
    assert remote.get(f"/fx/v1/quotes/{created.json()['id']}").json() == created.json()


def non_loopback_address() -> str | None:
    """An address of this machine outside loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))  # no packet is sent for UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture
def served_on_every_interface(app: Any) -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="0.0.0.0", port=port, log_level="warning"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_SECONDS_MAX
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        threading.Event().wait(SERVER_START_POLL_SECONDS)
    try:
        assert server.started, (
            f"uvicorn did not start on port {port} within {SERVER_START_SECONDS_MAX} s"
        )
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        loop.close()


def test_bound_to_every_interface_the_admin_api_still_refuses_a_real_remote_connection(
    served_on_every_interface: int,
) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address outside loopback")
    port = served_on_every_interface
    # Through this machine's own non-loopback address: the peer is not loopback.
    refused = httpx.get(f"http://{address}:{port}/_admin/health", timeout=5)
    assert refused.status_code == 403 and refused.json() == REFUSED
    remote_fault = httpx.post(f"http://{address}:{port}/_admin/faults", json=FAULT, timeout=5)
    assert remote_fault.status_code == 403 and remote_fault.json() == REFUSED
    local = httpx.get(f"http://127.0.0.1:{port}/_admin/faults", timeout=5)
    assert local.status_code == 200 and local.json() == []


# ----- the served process: the connection's own address decides --------------------------


@pytest.fixture
def served_process(tmp_path: Path) -> Iterator[Any]:
    """`cardflow simulators serve` as a user runs it, on loopback."""
    from tests.providers import running, simulator_process

    with running(simulator_process(tmp_path, free_port(), "http://127.0.0.1:9")) as process:
        yield process


def test_a_loopback_connection_is_admitted_whatever_its_forwarded_for_header_says(
    served_process: Any,
) -> None:
    # A local client that names a remote address is still a local client: the
    # header is not evidence of anything, in either direction.
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    health = httpx.get(f"{served_process.url}/_admin/health", headers=forwarded, timeout=5)
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "webhooks_pending": 0}
    added = httpx.post(
        f"{served_process.url}/_admin/faults", json=FAULT, headers=forwarded, timeout=5
    )
    assert added.status_code == 201, added.text
    assert served_process.admin("GET", "/faults") == [added.json()]


@pytest.fixture
def served_process_trusting_every_proxy(tmp_path: Path) -> Iterator[tuple[Any, int]]:
    """`cardflow simulators serve` on every interface, with the ASGI server told to
    trust forwarded-for headers from anyone (FORWARDED_ALLOW_IPS=*, a common
    setting in container deployments)."""
    from tests.providers import running, simulator_process

    port = free_port()
    process = simulator_process(tmp_path, port, "http://127.0.0.1:9")
    process.env.update(CARDFLOW_BIND_HOST="0.0.0.0", FORWARDED_ALLOW_IPS="*")
    with running(process):
        yield process, port


def test_a_remote_connection_claiming_loopback_in_forwarded_for_is_refused(
    served_process_trusting_every_proxy: tuple[Any, int],
) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address outside loopback")
    _, port = served_process_trusting_every_proxy
    claimed = {"X-Forwarded-For": "127.0.0.1"}
    for method, path, body in ADMIN_CALLS:
        response = httpx.request(
            method, f"http://{address}:{port}{path}", json=body, headers=claimed, timeout=5
        )
        assert response.status_code == 403, (method, path, response.text)
        assert response.json() == REFUSED
    local = httpx.get(f"http://127.0.0.1:{port}/_admin/faults", timeout=5)
    assert local.status_code == 200 and local.json() == []
