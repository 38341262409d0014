"""The issuer's real-time authorization requests through the gateway: each
request is decided once and on its own, and an answer the card could not give
within the gateway's budget says so, in the answer, the metrics and the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from activities.ledger.verify import verify
from activities.metrics import AUTHORIZATION_DECISIONS, GatewayMetrics
from schemas import accounts
from simulators.issuer_realtime import AUTHORIZATION_DEADLINE_MS_DEFAULT
from starters.gateway.realtime import (
    REALTIME_AUTHORIZATION_PATH,
    AuthorizationRequestEvent,
    InFlight,
    card_question,
)
from tests import polling
from tests.conftest import Platform, free_port
from tests.customers import (
    SHOP,
    authorize,
    card_state,
    issuer,
    open_card,
    wallet_becomes,
)
from workers.telemetry import start_telemetry

# Long enough for the request to reach the gateway, far shorter than a card
# whose wallet is locked takes to decide.
ISSUER_DEADLINE_SHORT_MS = 300
GATEWAY_BUDGET_SHORT_MS = 200


@contextlib.asynccontextmanager
async def wallet_locked(platform: Platform, customer_id: str) -> AsyncIterator[None]:
    """Another ledger transaction holds the wallet's balance rows: the card's
    next hold, and so its decision, waits until the block ends."""
    connection = await asyncpg.connect(platform.stack.database_url)
    try:
        async with connection.transaction():
            await connection.execute(
                "SELECT 1 FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id "
                "WHERE a.code = $1 FOR UPDATE OF b",
                accounts.wallet(customer_id, "USD"),
            )
            yield
    finally:
        await connection.close()


def set_issuer_deadline_ms(platform: Platform, deadline_ms: int) -> None:
    platform.sim.admin("PUT", "/options/issuer", {"authorization_deadline_ms": deadline_ms})


async def ask(platform: Platform, event: dict[str, Any]) -> httpx.Response:
    """Send a real-time request as the issuer does, signed now."""
    body = json.dumps(event)
    stamp = datetime.now(UTC)
    secret = platform.sim.secrets["issuer"]
    headers = {
        "content-type": "application/json",
        "webhook-id": event["id"],
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(event["id"], stamp, body),
    }
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=10) as http:
        return await http.post(REALTIME_AUTHORIZATION_PATH, content=body, headers=headers)


def increment_request(
    card_id: str, authorization_id: str, amount_minor: int, pending_minor: int
) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "type": "authorization.request",
        "created_at": datetime.now(UTC).isoformat(),
        "data": {
            "authorization_id": authorization_id,
            "kind": "incremental",
            "card_id": card_id,
            "amount_minor": amount_minor,
            "currency": "USD",
            "merchant_amount_minor": amount_minor,
            "merchant_currency": "USD",
            "merchant": SHOP.model_dump(mode="json"),
            "pending_amount_minor": pending_minor,
        },
    }


async def test_an_increment_at_the_pending_amount_of_one_answered_late_is_decided_on_its_own(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    auth = await authorize(platform, card_id, 2_041)
    # The first increment: the card's answer comes after the issuer's
    # deadline, so the issuer declines it on its own.
    set_issuer_deadline_ms(platform, ISSUER_DEADLINE_SHORT_MS)
    async with wallet_locked(platform, customer_id), issuer(platform) as client:
        late = await client.simulate_increment(
            auth.id, amount_minor=2_010, idempotency_key=f"inc1-{auth.id}"
        )
    assert (late.decisions[-1].outcome.value, late.decisions[-1].decided_by.value) == (
        "decline",
        "stand_in",
    )
    assert late.pending_amount_minor == 2_041

    async def followed_the_issuer() -> bool:
        record = (await card_state(handle)).authorizations.get(auth.id)
        return record is not None and len(record.decisions) == 2 and record.decisions[1].reconciled

    # The card approved it late, then followed the issuer's decline.
    await polling.eventually(followed_the_issuer, "the card follows the issuer's stand-in decline")
    await wallet_becomes(platform, customer_id, posted=10_000, pending=2_041)

    # Another increment at the same pending amount is another question.
    set_issuer_deadline_ms(platform, AUTHORIZATION_DEADLINE_MS_DEFAULT)
    async with issuer(platform) as client:
        grown = await client.simulate_increment(
            auth.id, amount_minor=399, idempotency_key=f"inc2-{auth.id}"
        )
    answer = grown.decisions[-1]
    assert (answer.outcome.value, answer.approved_amount_minor, answer.decided_by.value) == (
        "approve",
        399,
        "cardflow",
    ), answer.reason
    assert grown.pending_amount_minor == 2_440
    await wallet_becomes(platform, customer_id, posted=10_000, pending=2_440)
    assert await verify(platform.stack.pool) == []


async def test_a_request_sent_again_gets_its_first_answer_and_another_request_its_own(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    auth = await authorize(platform, card_id, 2_041)
    request = increment_request(card_id, auth.id, 399, 2_041)
    approved = {"decision": "approve", "approved_amount_minor": 399, "reason": "approved"}

    first = await ask(platform, request)
    assert (first.status_code, first.json()) == (200, approved)
    # The issuer sends the same request again (same id, signed anew).
    again = await ask(platform, request)
    assert (again.status_code, again.json()) == (200, approved)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=2_440)
    record = (await card_state(handle)).authorizations[auth.id]
    assert [d.requested_minor for d in record.decisions] == [2_041, 399]

    # A request of its own (another id) asking the same is decided and held anew.
    other = await ask(platform, {**request, "id": f"evt_{uuid.uuid4().hex[:24]}"})
    assert (other.status_code, other.json()) == (200, approved)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=2_839)
    record = (await card_state(handle)).authorizations[auth.id]
    assert [d.requested_minor for d in record.decisions] == [2_041, 399, 399]


def test_the_card_is_asked_with_the_issuers_time_of_asking() -> None:
    asked_at = datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC)
    request = increment_request("card_1", "auth_1", 399, 2_041)
    request["created_at"] = asked_at.isoformat()
    # Whatever the data says, the envelope's time is the issuer's time of asking.
    request["data"]["requested_at"] = (asked_at - timedelta(days=3)).isoformat()
    question = card_question(AuthorizationRequestEvent.model_validate_json(json.dumps(request)))
    assert question.requested_at == asked_at
    assert question.request_id == request["id"]
    assert (question.authorization_id, question.amount_minor) == ("auth_1", 399)


async def test_a_malformed_time_of_asking_is_refused_naming_the_field(platform: Platform) -> None:
    _, card_id, _ = await open_card(platform)
    request = increment_request(card_id, "auth_1", 399, 2_041)
    request["created_at"] = "yesterday"
    refused = await ask(platform, request)
    assert refused.status_code == 400
    assert [error["loc"] for error in refused.json()["detail"]] == [["created_at"]]


def gateway_metrics_on_a_port_of_its_own(platform: Platform) -> str:
    """The test gateway's metrics, served on a port of their own: their URL.
    (The telemetry is kept with the app: its runtime serves the metrics only
    while it lives.)"""
    metrics_port = free_port()
    telemetry = start_telemetry(
        platform.settings.model_copy(update={"metrics_port": metrics_port}), "gateway"
    )
    platform.app.state.telemetry = telemetry
    platform.app.state.metrics = GatewayMetrics(telemetry.meter)
    return f"http://127.0.0.1:{metrics_port}/metrics"


def decisions_counted(metrics_url: str, **labels: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{AUTHORIZATION_DECISIONS}_total"
        and all(sample.labels.get(key) == value for key, value in labels.items())
    )


async def test_a_card_past_the_budget_gets_a_stand_in_that_says_so_counted_and_logged_once(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    metrics_url = gateway_metrics_on_a_port_of_its_own(platform)
    platform.app.state.settings = platform.settings.model_copy(
        update={
            "authorization_budget_ms": GATEWAY_BUDGET_SHORT_MS,
            "authorization_stand_in": "decline",
        }
    )
    caplog.set_level(logging.WARNING, logger="cardflow.gateway")
    async with wallet_locked(platform, customer_id):
        auth = await authorize(platform, card_id, 2_000)

    # The gateway answered in time, with its stand-in, and said why.
    assert (auth.status.value, auth.decided_by.value) == ("declined", "cardflow")
    assert auth.decision_reason == "stand-in decline: no decision within the budget"
    assert decisions_counted(metrics_url, decision="decline", source="timeout") == 1
    assert decisions_counted(metrics_url, source="stand_in") == 0
    lines = [r for r in caplog.records if r.name.startswith("cardflow.gateway")]
    assert [(r.levelno, r.exc_info, r.exc_text) for r in lines] == [
        (logging.WARNING, None, None)
    ], [r.getMessage() for r in lines]
    assert auth.id in lines[0].getMessage() and "budget" in lines[0].getMessage()

    # The card decided anyway; the issuer's decline releases its hold.
    async def forgotten() -> bool:
        return auth.id not in (await card_state(handle)).authorizations

    await polling.eventually(forgotten, "the late approval is voided")
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    assert await verify(platform.stack.pool) == []


async def test_a_request_past_the_decisions_in_flight_is_answered_at_once_and_reconciled_after(
    platform: Platform,
) -> None:
    """A burst must not queue the card's decisions behind each other until
    every answer comes past the issuer's deadline: past the gateway's bound
    of decisions in flight, a request gets the stand-in at once, counted as
    `shed`; the issuer's webhook of that answer then brings the card in line
    (here, an approving stand-in: the card holds what the issuer approved)."""
    waiting_customer, waiting_card, _ = await open_card(platform)
    customer_id, card_id, handle = await open_card(platform)
    metrics_url = gateway_metrics_on_a_port_of_its_own(platform)
    platform.app.state.settings = platform.settings.model_copy(
        update={"authorization_stand_in": "approve", "authorization_in_flight_max": 1}
    )
    platform.app.state.decisions_in_flight = InFlight(1)
    async with wallet_locked(platform, waiting_customer):
        first = asyncio.create_task(authorize(platform, waiting_card, 1_000))

        async def one_in_flight() -> int:
            return int(platform.app.state.decisions_in_flight.count)

        await polling.until(one_in_flight, lambda count: count == 1, "a decision in flight")
        shed = await authorize(platform, card_id, 2_500)
        # Answered while the first still waits on its card.
        assert not first.done()
    assert (shed.status.value, shed.decided_by.value) == ("pending", "cardflow")
    assert shed.decision_reason == "stand-in approve: the gateway awaits 1 decisions already"
    assert (await first).decision_reason == "approved"
    assert decisions_counted(metrics_url, decision="approve", source="shed") == 1
    assert decisions_counted(metrics_url, decision="approve", source="card") == 1
    # The card was never asked; the issuer's webhook of the stand-in makes it hold it.
    await wallet_becomes(platform, customer_id, posted=10_000, pending=2_500)
    assert shed.id in (await card_state(handle)).authorizations
    assert platform.app.state.decisions_in_flight.count == 0
    assert await verify(platform.stack.pool) == []


async def test_a_decision_answered_past_the_budget_keeps_its_place_until_the_card_has_decided(
    platform: Platform,
) -> None:
    """The stand-in past the budget ends the issuer's wait, not the card's
    work: the card still decides that question. Until it has, its place among
    the decisions in flight stays taken, so a burst is shed at once instead
    of piling more questions onto cards (and a worker) that cannot keep up."""
    waiting_customer, waiting_card, _ = await open_card(platform)
    customer_id, card_id, _ = await open_card(platform)
    metrics_url = gateway_metrics_on_a_port_of_its_own(platform)
    platform.app.state.settings = platform.settings.model_copy(
        update={
            "authorization_budget_ms": GATEWAY_BUDGET_SHORT_MS,
            "authorization_stand_in": "decline",
            "authorization_in_flight_max": 1,
        }
    )
    in_flight = platform.app.state.decisions_in_flight = InFlight(1)
    async with wallet_locked(platform, waiting_customer):
        late = await authorize(platform, waiting_card, 1_000)
        assert late.decision_reason == "stand-in decline: no decision within the budget"
        # Its card, its wallet locked, is still deciding: the place is taken.
        assert in_flight.count == 1
        shed = await authorize(platform, card_id, 2_500)
    assert shed.decision_reason == "stand-in decline: the gateway awaits 1 decisions already"
    assert decisions_counted(metrics_url, source="timeout") == 1
    assert decisions_counted(metrics_url, source="shed") == 1

    async def places_taken() -> int:
        return in_flight.count

    # The card decided once its wallet was free; then the place is free again.
    await polling.until(places_taken, lambda count: count == 0, "the late decision's place freed")
    following = await authorize(platform, card_id, 500)
    assert following.decision_reason == "approved"
    # The issuer declined both stand-ins: nothing of them stays held.
    await wallet_becomes(platform, waiting_customer, posted=10_000, pending=0)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=500)
    assert await verify(platform.stack.pool) == []


async def test_a_place_held_for_a_decision_that_never_comes_is_freed_after_its_bound() -> None:
    in_flight = InFlight(1, held_seconds_max=0.05)
    assert in_flight.enter()
    in_flight.leave_once_decided(asyncio.get_running_loop().create_future())
    assert not in_flight.enter()  # still held: a burst meanwhile is shed

    async def places_taken() -> int:
        return in_flight.count

    await polling.until(places_taken, lambda count: count == 0, "the place freed after its bound")
    assert in_flight.enter()
    await in_flight.aclose()
