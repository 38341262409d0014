"""The `/v1` API lets in only keys with the route's scope, throttles each key per route,
never logs a key, and `cardflow apikey` manages keys in the database."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute
from temporalio.testing import WorkflowEnvironment

from activities.api_key_verifier import KeyVerifier
from activities.api_keys import (
    SCOPE_ADMIN,
    SCOPE_CARDS_REVEAL,
    SCOPE_CUSTOMERS_READ,
    SCOPE_OPERATIONS,
    SCOPE_PROCESSES_READ,
    SCOPE_PROCESSES_START,
    SCOPE_TELEGRAM_LINK,
    SCOPE_WEBHOOKS_MANAGE,
    SCOPES,
    ApiKeyStore,
    IssuedKey,
    NewApiKey,
    Scope,
    api_key_pepper,
    dev_pepper_path,
)
from activities.database import create_pool
from schemas.issuer import AuthorizationStatus, DecidedBy
from starters.gateway.app import create_app
from starters.gateway.auth import (
    UNAUTHENTICATED_DETAIL,
    ApiGuard,
    TokenBuckets,
    route_scope,
)
from tests.conftest import Platform, free_port, project_root
from tests.starters.conftest import DemoStack
from workers.converter import EncryptionCodec
from workers.settings import Settings, load_settings

# A route that needs `processes:read` and answers 404 for an unknown process
# without any worker: an answer other than 401/403/429 means "let in".
READ_ROUTE = "/v1/processes/ping/nobody"
OTHER_READ_ROUTE = "/v1/fx/nobody"


class Clock:
    def __init__(self) -> None:
        self.seconds = 1_000.0

    def __call__(self) -> float:
        return self.seconds


@dataclass
class Api:
    app: FastAPI
    http: httpx.AsyncClient
    store: ApiKeyStore
    settings: Settings

    async def key(self, *scopes: Scope, days: int | None = None, name: str = "bot") -> IssuedKey:
        new = NewApiKey(name=name, scopes=list(scopes), expires_in_days=days)
        return await self.store.create(new)

    def guard(self, *, rate_per_second: float = 1_000, burst: int = 1_000, **buckets: Any) -> None:
        """Verify with no cache (revocations show at once) and these buckets."""
        self.app.state.api_guard = ApiGuard(
            verifier=KeyVerifier(self.store, cache_seconds=0),
            buckets=TokenBuckets(rate_per_second, burst, **buckets),
        )


def bearer(issued: IssuedKey | str) -> dict[str, str]:
    key = issued if isinstance(issued, str) else issued.key
    return {"Authorization": f"Bearer {key}"}


def gateway_settings(tmp_path: Path, database_url: str, **extra: str) -> Settings:
    return load_settings(CARDFLOW_HOME=str(tmp_path), DATABASE_URL=database_url, **extra)


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, size_max=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def api(
    workflow_env: WorkflowEnvironment, pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> AsyncIterator[Api]:
    settings = gateway_settings(tmp_path, database_url)
    app = create_app(settings, client=workflow_env.client, pool=pool)
    # No lifespan under ASGITransport: give the app what startup would.
    app.state.client, app.state.pool = workflow_env.client, pool
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield Api(app, http, ApiKeyStore(pool, api_key_pepper(settings)), settings)


# ----- every route is guarded ---------------------------------------------------

EXPECTED_SCOPES = {
    ("POST", "/v1/onboardings"): SCOPE_PROCESSES_START,
    ("GET", "/v1/processes/{workflow_id}"): SCOPE_PROCESSES_READ,
    ("GET", "/v1/customers/{customer_id}"): SCOPE_CUSTOMERS_READ,
    ("GET", "/v1/customers/{customer_id}/overview"): SCOPE_CUSTOMERS_READ,
    ("GET", "/v1/customers/{customer_id}/rewards"): SCOPE_CUSTOMERS_READ,
    ("GET", "/v1/customers/{customer_id}/transactions"): SCOPE_CUSTOMERS_READ,
    ("GET", "/v1/events"): SCOPE_WEBHOOKS_MANAGE,
    ("POST", "/v1/events/{event_id}/redeliver"): SCOPE_WEBHOOKS_MANAGE,
    ("POST", "/v1/webhook-endpoints"): SCOPE_WEBHOOKS_MANAGE,
    ("GET", "/v1/webhook-endpoints"): SCOPE_WEBHOOKS_MANAGE,
    ("GET", "/v1/webhook-endpoints/{endpoint_id}"): SCOPE_WEBHOOKS_MANAGE,
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): SCOPE_WEBHOOKS_MANAGE,
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): SCOPE_WEBHOOKS_MANAGE,
    ("POST", "/v1/telegram/links"): SCOPE_TELEGRAM_LINK,
    ("GET", "/v1/telegram/links/{telegram_user_id}"): SCOPE_TELEGRAM_LINK,
    ("POST", "/v1/telegram/signups"): SCOPE_TELEGRAM_LINK,
    ("POST", "/v1/cards/{card_id}/reveal"): SCOPE_CARDS_REVEAL,
    ("POST", "/v1/cards/{card_id}/authentications/{authentication_id}/answer"): (
        SCOPE_PROCESSES_START
    ),
    ("GET", "/v1/cards/{card_id}/authentications/{authentication_id}"): SCOPE_PROCESSES_READ,
    ("GET", "/v1/customers/{customer_id}/authentications"): SCOPE_CUSTOMERS_READ,
    ("POST", "/v1/onboardings/{customer_id}/review"): SCOPE_OPERATIONS,
    ("POST", "/v1/topups/{source}/{external_ref}/review"): SCOPE_OPERATIONS,
    ("POST", "/v1/disputes/{transaction_id}/operator"): SCOPE_OPERATIONS,
    ("POST", "/v1/withdrawals/{request_id}/review"): SCOPE_OPERATIONS,
    ("GET", "/v1/fraud-cases/{case_id}"): SCOPE_OPERATIONS,
    ("POST", "/v1/fraud-cases/{case_id}/decide"): SCOPE_OPERATIONS,
    ("POST", "/v1/closures"): SCOPE_PROCESSES_START,
    ("GET", "/v1/closures/{customer_id}"): SCOPE_PROCESSES_READ,
    ("POST", "/v1/closures/{customer_id}/decide"): SCOPE_OPERATIONS,
    ("PUT", "/v1/customers/{customer_id}/kyc-tier"): SCOPE_OPERATIONS,
    ("PUT", "/v1/cards/{card_id}/controls"): SCOPE_PROCESSES_START,
    ("POST", "/v1/cards/{card_id}/temporary-controls"): SCOPE_PROCESSES_START,
    ("DELETE", "/v1/cards/{card_id}/temporary-controls/{control_id}"): SCOPE_PROCESSES_START,
    ("POST", "/v1/customers/{customer_id}/card-controls"): SCOPE_PROCESSES_START,
    ("GET", "/v1/customers/{customer_id}/card-controls"): SCOPE_PROCESSES_READ,
    ("POST", "/v1/card-controls"): SCOPE_OPERATIONS,
    ("POST", "/v1/rules"): SCOPE_OPERATIONS,
    ("GET", "/v1/rules"): SCOPE_OPERATIONS,
    ("POST", "/v1/reconciliations/issuer/{settlement_date}/decisions"): SCOPE_OPERATIONS,
    ("POST", "/v1/settlements/issuer/{settlement_date}/decisions"): SCOPE_OPERATIONS,
    ("GET", "/v1/settlements/issuer/{settlement_date}"): SCOPE_PROCESSES_READ,
    ("POST", "/v1/billing-runs/{period}"): SCOPE_ADMIN,
    ("POST", "/v1/reconciliations/issuer/{settlement_date}"): SCOPE_ADMIN,
}


def api_routes(routes: Sequence[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, included routers' too (FastAPI keeps those nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None) or getattr(route, "routes", None)
        if included is not None and not isinstance(route, APIRoute):
            yield from api_routes(getattr(included, "routes", included))


def test_every_v1_route_requires_exactly_one_scope(tmp_path: Path) -> None:
    app = create_app(load_settings(CARDFLOW_HOME=str(tmp_path)))
    scopes: dict[tuple[str, str], str] = {}
    for route in api_routes(app.routes):
        required = route_scope(route)
        if route.path.startswith("/v1/"):
            assert len(required) == 1, f"{route.methods} {route.path} requires {required}"
            for method in route.methods or ():
                scopes[(method, route.path_format)] = required[0]
        else:
            # Health, webhooks and real-time: signatures or nothing, never API keys.
            assert required == [], route.path
    assert len(scopes) >= 31
    for route_key, scope in EXPECTED_SCOPES.items():
        assert scopes[route_key] == scope, route_key
    assert set(scopes.values()) == set(SCOPES)
    # The contract names the key and the refusals on every route.
    openapi = app.openapi()
    assert openapi["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    for path, operations in openapi["paths"].items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                assert {"401", "403", "429"} <= set(operation["responses"]), path


# ----- 401 and 403 ------------------------------------------------------------------


async def test_missing_malformed_unknown_and_wrong_keys_get_the_same_401(api: Api) -> None:
    issued = await api.key(SCOPE_PROCESSES_READ)
    key_id = issued.info.key_id
    secret = issued.key.split("_", 2)[2]
    wrong_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    attempts: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {issued.key}"},
        bearer("cfk_not-a-key"),
        bearer(f"cfk_zzzzzzzzzzzz_{secret}"),
        bearer(f"cfk_{key_id}_{wrong_secret}"),
    ]
    answers = [await api.http.get(READ_ROUTE, headers=headers) for headers in attempts]
    for headers, answer in zip(attempts, answers, strict=True):
        assert answer.status_code == 401, headers
        assert answer.json() == {"code": "unauthenticated", "detail": UNAUTHENTICATED_DETAIL}
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert secret not in answer.text and wrong_secret not in answer.text
    # A start route refuses before it looks at the body or the Idempotency-Key.
    start = await api.http.post("/v1/pings", json={})
    assert start.status_code == 401
    assert (await api.http.get(READ_ROUTE, headers=bearer(issued))).status_code == 404
    assert (await api.http.get("/health")).status_code == 200


async def test_a_key_without_the_routes_scope_gets_403_naming_it(api: Api) -> None:
    reader = await api.key(SCOPE_PROCESSES_READ)
    admin = await api.key(SCOPE_ADMIN)
    starter = await api.key(SCOPE_PROCESSES_START)
    review = "/v1/onboardings/c-1/review"
    body = {"decision": "approve", "operator": "ada", "reason": "ok"}
    for issued in (reader, admin, starter):
        refused = await api.http.post(review, json=body, headers=bearer(issued))
        assert (refused.status_code, refused.json()["code"]) == (403, "scope_missing")
        assert "'operations'" in refused.json()["detail"]
    # `admin` implies no other scope.
    assert (await api.http.get(READ_ROUTE, headers=bearer(admin))).status_code == 403
    starting = await api.http.post("/v1/pings", json={"requested_by": "x"}, headers=bearer(reader))
    assert (starting.status_code, starting.json()["code"]) == (403, "scope_missing")
    assert "'processes:start'" in starting.json()["detail"]
    billing = await api.http.post("/v1/billing-runs/2026-01", headers=bearer(starter))
    assert (billing.status_code, billing.json()["code"]) == (403, "scope_missing")
    assert "'admin'" in billing.json()["detail"]


# ----- expiry, revocation, rotation ---------------------------------------------


async def test_expired_and_revoked_keys_are_refused(api: Api, pool: asyncpg.Pool) -> None:
    api.guard()
    expiring = await api.key(SCOPE_PROCESSES_READ, days=1)
    revoked = await api.key(SCOPE_PROCESSES_READ)
    for issued in (expiring, revoked):
        assert (await api.http.get(READ_ROUTE, headers=bearer(issued))).status_code == 404
    # The day passes (moved in the table: the gateway reads the key's expiry from there).
    await pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE key_id = $1",
        expiring.info.key_id,
    )
    await api.store.revoke(revoked.info.key_id)
    for issued in (expiring, revoked):
        answer = await api.http.get(READ_ROUTE, headers=bearer(issued))
        assert answer.status_code == 401
        assert answer.json() == {"code": "unauthenticated", "detail": UNAUTHENTICATED_DETAIL}


async def test_a_rotated_key_and_its_predecessor_both_work_until_the_overlap_ends(
    api: Api,
) -> None:
    api.guard()
    old = await api.key(SCOPE_PROCESSES_READ)
    new, _ = await api.store.rotate(old.info.key_id, timedelta(hours=1))
    for issued in (old, new):
        assert (await api.http.get(READ_ROUTE, headers=bearer(issued))).status_code == 404
    # An overlap of nothing: the old key stops at once, the newest works.
    newest, _ = await api.store.rotate(new.info.key_id, timedelta(0))
    assert (await api.http.get(READ_ROUTE, headers=bearer(new))).status_code == 401
    assert (await api.http.get(READ_ROUTE, headers=bearer(newest))).status_code == 404


# ----- throttling ----------------------------------------------------------------


async def test_a_key_over_its_budget_on_a_route_gets_429_with_retry_after(api: Api) -> None:
    clock = Clock()
    api.guard(rate_per_second=0.5, burst=3, monotonic=clock)
    flooder = await api.key(SCOPE_PROCESSES_READ)
    other = await api.key(SCOPE_PROCESSES_READ)
    for _ in range(3):
        assert (await api.http.get(READ_ROUTE, headers=bearer(flooder))).status_code == 404
    throttled = await api.http.get(READ_ROUTE, headers=bearer(flooder))
    assert (throttled.status_code, throttled.json()["code"]) == (429, "rate_limited")
    assert throttled.headers["retry-after"] == "2"  # one token at 0.5/s
    assert "retry after 2 s" in throttled.json()["detail"]
    # Another route of the same key, and the same route of another key, go on.
    assert (await api.http.get(OTHER_READ_ROUTE, headers=bearer(flooder))).status_code == 404
    assert (await api.http.get(READ_ROUTE, headers=bearer(other))).status_code == 404
    # Templates, not paths: another process id is the same route.
    elsewhere = await api.http.get("/v1/processes/ping/another", headers=bearer(flooder))
    assert elsewhere.status_code == 429
    clock.seconds += 1.0
    assert (await api.http.get(READ_ROUTE, headers=bearer(flooder))).status_code == 429
    clock.seconds += 1.0
    assert (await api.http.get(READ_ROUTE, headers=bearer(flooder))).status_code == 404


def test_token_buckets_refill_and_forget_idle_keys() -> None:
    clock = Clock()
    buckets = TokenBuckets(10, 2, monotonic=clock, buckets_max=100)
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.1)
    clock.seconds += 0.1
    assert buckets.take("a") == 0.0
    # A bucket idle until full again is dropped: nothing grows with idle keys.
    for index in range(50):
        buckets.take(f"idle-{index}")
    assert len(buckets) == 51
    clock.seconds += 0.2
    buckets.take("b")
    assert len(buckets) == 1
    # Past the bound, the least recently used go first.
    for index in range(150):
        buckets.take(f"busy-{index}")
    assert len(buckets) <= 100
    with pytest.raises(ValueError):
        TokenBuckets(0, 1)


# ----- no key in the gateway's logs -------------------------------------------------


async def test_no_key_appears_in_the_gateways_logs(
    workflow_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = gateway_settings(
        tmp_path, database_url, CARDFLOW_API_RATE_PER_SECOND="1", CARDFLOW_API_BURST="2"
    )
    store = ApiKeyStore(pool, api_key_pepper(settings))
    good = await store.create(NewApiKey(name="logged", scopes=[SCOPE_PROCESSES_READ]))
    revoked = await store.create(NewApiKey(name="revoked", scopes=[SCOPE_PROCESSES_READ]))
    await store.revoke(revoked.info.key_id)
    wrong = good.key[:-4] + ("AAAA" if not good.key.endswith("AAAA") else "BBBB")
    app = create_app(settings, client=workflow_env.client, pool=pool)
    port = free_port()
    # As the gateway runs (access log off), but with every logger at DEBUG.
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="debug", access_log=False, log_config=None
        )
    )
    caplog.set_level(logging.DEBUG)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            answers = [
                (await http.get(READ_ROUTE, headers=bearer(key))).status_code
                for key in (good.key, good.key, good.key, revoked.key, wrong, "cfk_x")
            ]
            answers.append(
                (await http.post("/v1/pings", json={}, headers=bearer(good))).status_code
            )
            answers.append((await http.get(f"{READ_ROUTE}?api_key={good.key}")).status_code)
    finally:
        server.should_exit = True
        await task
    assert answers == [404, 404, 429, 401, 401, 401, 403, 401]
    gateway_records = [
        record
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore", "hpack"))  # the test's client
    ]
    assert any(good.info.key_id in record.getMessage() for record in gateway_records)
    logged = "\n".join(
        f"{record.name} {record.getMessage()} {record.args!r} {record.exc_text or ''}"
        for record in gateway_records
    )
    for key in (good.key, revoked.key, wrong):
        secret = key.split("_", 2)[2]
        assert secret not in logged and secret[:16] not in logged


async def test_a_process_started_with_a_key_keeps_no_trace_of_it_in_its_history(
    api: Api, codec: EncryptionCodec
) -> None:
    api.guard()
    starter = await api.key(SCOPE_PROCESSES_START)
    idempotency_key = f"hist-{uuid.uuid4().hex[:8]}"
    started = await api.http.post(
        "/v1/pings",
        json={"requested_by": "history scan"},
        headers={**bearer(starter), "Idempotency-Key": idempotency_key},
    )
    assert started.status_code == 202, started.text
    handle = api.app.state.client.get_workflow_handle(started.json()["workflow_id"])
    history = await handle.fetch_history()
    await handle.terminate("scanned")  # no workers run here
    payloads = [
        payload
        for event in history.events
        for payload in event.workflow_execution_started_event_attributes.input.payloads
    ]
    decoded = await codec.decode(payloads)
    text = history.to_json() + " ".join(p.data.decode(errors="replace") for p in decoded)
    assert "history scan" in text  # the scan reads the decrypted input
    secret = starter.key.split("_", 2)[2]
    assert starter.key not in text and secret not in text and secret[:16] not in text


# ----- the CLI ----------------------------------------------------------------------


def cardflow(home: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "CARDFLOW_HOME": str(home)}
    env.pop("CARDFLOW_API_KEY_PEPPER", None)
    env.pop("CARDFLOW_API_KEY_PEPPER_FILE", None)
    return subprocess.run(
        [sys.executable, "-m", "starters.cli", "apikey", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=project_root(),
        timeout=60,
    )


async def test_the_cli_creates_lists_rotates_and_revokes_keys(
    api: Api, pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    api.guard()
    home = Path(api.settings.home_path)  # the gateway's home: the same dev pepper

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cardflow(home, database_url, *args)

    created = await asyncio.to_thread(
        run,
        "create",
        "--name",
        "upstream-bot",
        "--scope",
        SCOPE_PROCESSES_START,
        "--scope",
        SCOPE_PROCESSES_READ,
        "--expires-in-days",
        "30",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    assert "cannot be shown again" in created.stderr
    document = json.loads(created.stdout)
    key, key_id = document["key"], document["key_id"]
    assert document["scopes"] == [SCOPE_PROCESSES_READ, SCOPE_PROCESSES_START]
    assert document["expires_at"] is not None and document["state"] == "active"
    assert (await api.http.get(READ_ROUTE, headers=bearer(key))).status_code == 404

    plain = await asyncio.to_thread(run, "create", "--name", "ops desk", "--scope", "operations")
    assert plain.returncode == 0, plain.stderr
    [printed] = [line.strip() for line in plain.stdout.splitlines() if "cfk_" in line]
    assert printed.startswith("cfk_")

    listed = await asyncio.to_thread(run, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["key_id"]: row for row in json.loads(listed.stdout)}
    assert rows[key_id]["name"] == "upstream-bot" and rows[key_id]["last_used_at"] is not None
    table = await asyncio.to_thread(run, "list")
    assert "upstream-bot" in table.stdout and key_id in table.stdout
    for output in (listed.stdout, table.stdout):
        assert key.split("_", 2)[2] not in output and printed.split("_", 2)[2] not in output
        assert "secret_hash" not in output

    rotated = await asyncio.to_thread(run, "rotate", key_id, "--overlap-hours", "1", "--json")
    assert rotated.returncode == 0, rotated.stderr
    rotation = json.loads(rotated.stdout)
    assert rotation["rotated_from"] == key_id and rotation["replaces"]["expires_at"] is not None
    for presented in (key, rotation["key"]):
        assert (await api.http.get(READ_ROUTE, headers=bearer(presented))).status_code == 404

    revoked = await asyncio.to_thread(run, "revoke", key_id)
    assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stdout
    assert (await api.http.get(READ_ROUTE, headers=bearer(key))).status_code == 401
    assert (await api.http.get(READ_ROUTE, headers=bearer(rotation["key"]))).status_code == 404

    # The table holds no key or secret, whatever the CLI printed.
    dump = " ".join(row["t"] for row in await pool.fetch("SELECT t::text AS t FROM api_keys t"))
    for issued in (key, printed, rotation["key"]):
        assert issued.split("_", 2)[2] not in dump


async def test_the_cli_refuses_bad_input_naming_the_option(
    database_url: str, tmp_path: Path
) -> None:
    cases = {
        "--scope": ["create", "--name", "bot", "--scope", "everything"],
        "--name": ["create", "--name", "", "--scope", "admin"],
        "--expires-in-days": [
            "create",
            "--name",
            "bot",
            "--scope",
            "admin",
            "--expires-in-days",
            "-3",
        ],
        "--overlap-hours": ["rotate", "abcdefghijkl", "--overlap-hours", "-1"],
        "KEY_ID": ["revoke", "not-an-id"],
    }
    for option, args in cases.items():
        refused = await asyncio.to_thread(cardflow, tmp_path, database_url, *args)
        assert refused.returncode == 2, (option, refused.stdout, refused.stderr)
        assert option in refused.stderr, (option, refused.stderr)
    unknown = await asyncio.to_thread(cardflow, tmp_path, database_url, "revoke", "zzzzzzzzzzzz")
    assert unknown.returncode == 1 and "no API key" in unknown.stderr


# ----- the issuer's budget while the API is flooded ----------------------------------


async def test_authorizations_are_decided_within_budget_while_another_key_floods_the_api(
    platform: Platform,
) -> None:
    from tests.customers import authorize, open_card

    _, card_id, _ = await open_card(platform)
    store = ApiKeyStore(platform.stack.pool, api_key_pepper(platform.settings))
    flooder = await store.create(NewApiKey(name="flooder", scopes=[SCOPE_PROCESSES_READ]))
    answered: list[int] = []
    stop = asyncio.Event()

    async def flood(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            responses = await asyncio.gather(
                *(
                    http.get(f"/v1/processes/ping/{uuid.uuid4().hex}", headers=bearer(flooder))
                    for _ in range(20)
                ),
                return_exceptions=True,
            )
            answered.extend(r.status_code for r in responses if isinstance(r, httpx.Response))

    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30, limits=limits) as http:
        flooding = asyncio.create_task(flood(http))
        try:
            while len(answered) < 100:
                await asyncio.sleep(0.05)
            decisions = [await authorize(platform, card_id, 100) for _ in range(5)]
            # The flood did not lock the other keys out of the API either.
            mine = await http.get(READ_ROUTE, headers=platform.api_headers)
        finally:
            stop.set()
            await flooding
    assert 429 in answered, "the flooding key was throttled"
    assert mine.status_code == 404
    for decision in decisions:
        # Decided by the card within the issuer's wait, not by the stand-in.
        assert decision.decided_by is DecidedBy.CARDFLOW, decision.decision_reason
        assert decision.status is AuthorizationStatus.PENDING, decision.decision_reason


# ----- the dev stack ------------------------------------------------------------------


def test_the_dev_stacks_gateway_takes_keys_made_by_the_cli_and_logs_none(
    demo_stack: DemoStack,
) -> None:
    stack = demo_stack.stack
    settings = stack.settings()
    created = stack.cardflow(
        "apikey", "create", "--name", "dev-bot", "--scope", SCOPE_PROCESSES_READ, "--json"
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    pepper = dev_pepper_path(settings.home_path)
    assert stat.S_IMODE(pepper.stat().st_mode) == 0o600
    route = f"http://127.0.0.1:{settings.gateway_port}{READ_ROUTE}"
    assert httpx.get(route, timeout=10).status_code == 401
    assert httpx.get(route, headers=bearer(key), timeout=10).status_code == 404
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert httpx.get(route, headers=bearer(wrong), timeout=10).status_code == 401
    listed = stack.cardflow("apikey", "list")
    assert listed.returncode == 0 and "dev-bot" in listed.stdout
    secret = key.split("_", 2)[2]
    for path in (stack.home / "logs").rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert secret not in text and secret[:16] not in text, path
