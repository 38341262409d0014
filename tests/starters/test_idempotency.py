"""An Idempotency-Key names one request of one API key: two keys never share a
process, and a process is answered only to the request that started it (or
to a true replay of that request)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from starters.gateway.v1.idempotency import request_hash
from starters.gateway.v1.processes import StartPing
from tests.conftest import Platform, RunningStack, api_key_headers
from tests.customers import customer
from tests.starters.inprocess import gateway
from tests.workflows.test_fx_conversion import rates
from workflows.health import ping_workflow_id
from workflows.onboarding import onboarding_workflow_id

ADDRESS = {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
PASSPORT = {"type": "passport", "country": "DEU", "file_name": "passport.jpg"}


def colliding_keys(kind: str) -> tuple[str, str]:
    """Two Idempotency-Keys that are different requests."""
    tag = uuid.uuid4().hex[:12]
    if kind == "punctuation":
        return f"{tag}:b", f"{tag}-b"
    # Two long keys that only differ past the 64th character.
    prefix = f"{tag}-".ljust(64, "x")
    return f"{prefix}-alpha1", f"{prefix}-bravo2"


def api(platform: Platform, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=platform.gateway_url, timeout=60, headers=headers or platform.api_headers
    )


@pytest.mark.parametrize("kind", ["punctuation", "long"])
async def test_two_keys_issue_two_cards_never_one(platform: Platform, kind: str) -> None:
    first_key, second_key = colliding_keys(kind)
    alice, bob = f"c-{uuid.uuid4().hex[:10]}", f"c-{uuid.uuid4().hex[:10]}"
    async with api(platform) as http:
        first = await http.post(
            "/v1/cards",
            json={"customer_id": alice, "kind": "virtual", "address": ADDRESS},
            headers={"Idempotency-Key": first_key},
        )
        second = await http.post(
            "/v1/cards",
            json={"customer_id": bob, "kind": "virtual", "address": ADDRESS},
            headers={"Idempotency-Key": second_key},
        )
    assert (first.status_code, second.status_code) == (202, 202), second.text
    assert second.json()["workflow_id"] != first.json()["workflow_id"]
    assert not second.json()["replayed"]
    described = await platform.stack.client.get_workflow_handle(
        second.json()["workflow_id"]
    ).describe()
    assert described.run_id == second.json()["run_id"]


@pytest.mark.parametrize("kind", ["punctuation", "long"])
async def test_two_keys_get_two_fx_quotes_and_each_converts_its_own_money(
    platform: Platform, kind: str
) -> None:
    from schemas.money import Currency

    rates(platform)
    first_key, second_key = colliding_keys(kind)
    alice = await customer(platform, {Currency.USD: 20_000})
    bob = await customer(platform, {Currency.USD: 20_000})

    def body(customer_id: str, sell_minor: int) -> dict[str, Any]:
        return {
            "customer_id": customer_id,
            "sell_currency": "USD",
            "buy_currency": "EUR",
            "sell_amount_minor": sell_minor,
        }

    async with api(platform) as http:
        first = await http.post(
            "/v1/fx/quotes", json=body(alice, 10_004), headers={"Idempotency-Key": first_key}
        )
        second = await http.post(
            "/v1/fx/quotes", json=body(bob, 5_000), headers={"Idempotency-Key": second_key}
        )
        assert (first.status_code, second.status_code) == (202, 202), second.text
        assert second.json()["workflow_id"] != first.json()["workflow_id"]
        offer = second.json()["offer"]
        assert offer["quote"]["sell_amount_minor"] == 5_000
        confirmed = await http.post(f"/v1/fx/{offer['request_id']}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["customer_id"] == bob


async def test_two_api_keys_sending_one_idempotency_key_start_two_processes(
    platform: Platform,
) -> None:
    other_headers = await api_key_headers(platform.stack.pool, platform.settings, name="other")
    key = {"Idempotency-Key": f"req-{uuid.uuid4().hex[:8]}"}
    body = {"requested_by": "mobile backend"}
    async with api(platform) as first_api, api(platform, other_headers) as second_api:
        first = await first_api.post("/v1/pings", json=body, headers=key)
        second = await second_api.post("/v1/pings", json=body, headers=key)
        # Each key's own repeat is its own replay.
        again = await second_api.post("/v1/pings", json=body, headers=key)
    assert (first.status_code, second.status_code) == (202, 202), second.text
    assert second.json()["workflow_id"] != first.json()["workflow_id"]
    assert again.status_code == 200 and again.json()["replayed"]
    assert again.json()["workflow_id"] == second.json()["workflow_id"]


def onboarding(customer_id: str, first_name: str) -> dict[str, Any]:
    return {
        "profile": {
            "customer_id": customer_id,
            "first_name": first_name,
            "last_name": "Hopper",
            "date_of_birth": "1985-12-09",
            "country": "USA",
            "email": f"{customer_id}@example.com",
        },
        "documents": [PASSPORT],
    }


async def test_an_onboarding_is_answered_only_to_the_request_that_started_it(
    platform: Platform,
) -> None:
    customer_id = f"c-{uuid.uuid4().hex[:10]}"
    first_key = {"Idempotency-Key": f"ob-{uuid.uuid4().hex[:8]}"}
    async with api(platform) as http:
        first = await http.post(
            "/v1/onboardings", json=onboarding(customer_id, "Grace"), headers=first_key
        )
        replay = await http.post(
            "/v1/onboardings", json=onboarding(customer_id, "Grace"), headers=first_key
        )
        reused = await http.post(
            "/v1/onboardings", json=onboarding(customer_id, "Anita"), headers=first_key
        )
        other = await http.post(
            "/v1/onboardings",
            json=onboarding(customer_id, "Anita"),
            headers={"Idempotency-Key": f"ob-{uuid.uuid4().hex[:8]}"},
        )
    assert first.status_code == 202 and not first.json()["replayed"]
    assert first.json()["workflow_id"] == onboarding_workflow_id(customer_id)
    # Another key, another profile: not this process, and not a new one either.
    assert other.status_code == 409, other.text
    assert other.json()["code"] == "process_exists"
    assert onboarding_workflow_id(customer_id) in other.json()["detail"]
    assert replay.status_code == 200 and replay.json()["replayed"]
    assert replay.json()["run_id"] == first.json()["run_id"]
    assert reused.status_code == 409, reused.text
    assert reused.json()["code"] == "idempotency_key_reused"


async def test_a_second_dispute_of_a_transaction_is_refused_not_answered_with_the_first(
    platform: Platform,
) -> None:
    body = {
        "transaction_id": f"txn_{uuid.uuid4().hex[:10]}",
        "customer_id": f"c-{uuid.uuid4().hex[:10]}",
        "reason": "fraudulent",
        "amount_minor": 1_000,
    }
    async with api(platform) as http:
        first = await http.post(
            "/v1/disputes", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        second = await http.post(
            "/v1/disputes", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
    assert first.status_code == 202, first.text
    assert second.status_code == 409, second.text
    assert second.json()["code"] == "process_exists"


async def test_a_request_remembered_before_keys_were_scoped_to_api_keys_keeps_its_process(
    stack: RunningStack, tmp_path: Path
) -> None:
    # Sent before an upgrade, answered after it: its process was started
    # under the unscoped key, and a repeat must not start a second one.
    key = f"old-{uuid.uuid4().hex[:8]}"
    body = {"requested_by": "mobile backend"}
    before = ping_workflow_id(f"api-{key}")
    await stack.pool.execute(
        "INSERT INTO gateway_api_requests (api_key_id, route, idempotency_key, request_hash,"
        " workflow_id, run_id) VALUES ('', 'pings', $1, $2, $3, 'run-before')",
        key,
        request_hash("pings", StartPing(**body)),
        before,
    )
    async with gateway(stack, tmp_path) as http:
        again = await http.post("/v1/pings", json=body, headers={"Idempotency-Key": key})
        other = await http.post(
            "/v1/pings", json={"requested_by": "someone else"}, headers={"Idempotency-Key": key}
        )
    assert again.status_code == 200, again.text
    assert (again.json()["workflow_id"], again.json()["run_id"]) == (before, "run-before")
    # Another body under that key is another request: not refused for the old one.
    assert other.status_code == 202, other.text
    assert other.json()["workflow_id"] != before
