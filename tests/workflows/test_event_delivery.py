"""Events out: an upstream app registers a webhook endpoint, and its delivery
process `events/{endpoint_id}` sends it every event of its types, at least
once and in order, signed with Standard Webhooks; through the endpoint
being down, the workflows worker being away, a secret rotated, a redelivery
asked for, and an endpoint down for good (disabled, for an operator to see)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from standardwebhooks import Webhook, WebhookVerificationError
from temporalio.service import RPCError, RPCStatusCode

from activities.api_keys import (
    SCOPE_CUSTOMERS_READ,
    SCOPE_WEBHOOKS_MANAGE,
)
from activities.customers import CustomerStore
from activities.events import CUSTOMERS_ENDPOINT_ID, create_endpoint, sequence
from activities.ledger import Ledger
from schemas import accounts
from schemas.cards import SpendingLimits
from schemas.events import DeliveryPolicy, EventDeliveryInput, EventDeliveryStatus
from schemas.ledger import AccountSpec, TransferRequest
from schemas.money import Currency
from schemas.notify import Channel
from schemas.search import PROCESS_STATUS
from starters.devstack.processes import free_port
from starters.events import ensure_customer_notifications, start_delivery
from tests import polling
from tests.conftest import Platform
from tests.customers import (
    CASINO,
    SHOP,
    authorize,
    customer,
    issuer,
    open_card,
    profile,
    telegram_said,
)
from tests.providers import WebhookReceiver, webhook_receiver
from workflows.cards import LIMITS_UPDATE
from workflows.event_delivery import STAGE_DISABLED, event_delivery_workflow_id

TOPUP = "topup.credited"
APP = "app"


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with webhook_receiver(free_port()) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def manager(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    # Retries in fractions of a second, so a test sees the endpoint come back.
    platform.app.state.settings = platform.settings.model_copy(
        update={
            "events_poll_seconds": 0.2,
            "events_retry_initial_seconds": 0.2,
            "events_retry_max_interval_seconds": 1.0,
        }
    )
    headers = await platform.key_headers(SCOPE_WEBHOOKS_MANAGE)
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, headers=headers, timeout=30
    ) as http:
        yield http


async def registered(
    manager: httpx.AsyncClient, receiver: WebhookReceiver, types: list[str]
) -> dict[str, Any]:
    answer = await manager.post(
        "/v1/webhook-endpoints",
        json={"url": f"{receiver.url}/webhooks/{APP}", "event_types": types},
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    assert created["secret"].startswith("whsec_")
    receiver.secrets[APP] = created["secret"]
    return created


async def topped_up(platform: Platform, customer_id: str, amount: int) -> None:
    """A top-up's credit as the ledger writes it (its key names the process)."""
    await Ledger(platform.stack.pool).transfer(
        TransferRequest(
            key=f"topup/bank/{uuid.uuid4().hex[:10]}/credit",
            debit=accounts.bank_inbound(Currency.USD),
            credit=accounts.wallet(customer_id, Currency.USD),
            amount_minor=amount,
            currency=Currency.USD,
        )
    )


async def bank_and_customers(platform: Platform, count: int) -> list[str]:
    await Ledger(platform.stack.pool).open_account(
        AccountSpec(code=accounts.bank_inbound(Currency.USD), currency=Currency.USD, kind="bank")
    )
    return [await customer(platform, {Currency.USD: 0}) for _ in range(count)]


async def stream(manager: httpx.AsyncClient, types: list[str]) -> list[dict[str, Any]]:
    answer = await manager.get("/v1/events", params={"after": 0, "type": types})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["data"]
    return found


async def test_an_endpoint_down_for_a_while_gets_every_event_once_in_order(
    platform: Platform, receiver: WebhookReceiver, manager: httpx.AsyncClient
) -> None:
    first, second = await bank_and_customers(platform, 2)
    await topped_up(platform, first, 1)  # before the endpoint: not its business
    await registered(manager, receiver, [TOPUP])
    # Down: the first deliveries are answered 503.
    receiver.script = [503] * 4
    for amount in (10, 20):
        await topped_up(platform, first, amount)
        await topped_up(platform, second, amount + 1)
    # And the workflows worker is away (killed) while more events are written.
    async with platform.stack.workflows_worker_away():
        await topped_up(platform, first, 30)
        await topped_up(platform, second, 31)
    received = await receiver.wait_for(6, seconds=60)
    written = [
        event for event in await stream(manager, [TOPUP]) if event["data"]["amount_minor"] > 1
    ]
    assert [r.event_id for r in received] == [event["id"] for event in written]
    assert len({r.event_id for r in received}) == 6 and receiver.rejected == 0
    # In order per customer (and overall), each delivery the event as the stream shows it.
    for got, event in zip(received, written, strict=True):
        assert got.event == event
    assert [
        r.event["data"]["amount_minor"] for r in received if r.event["customer_id"] == first
    ] == [
        10,
        20,
        30,
    ]


async def test_a_forged_or_replayed_delivery_is_detected_by_the_receiver(
    platform: Platform, receiver: WebhookReceiver, manager: httpx.AsyncClient
) -> None:
    [customer_id] = await bank_and_customers(platform, 1)
    created = await registered(manager, receiver, [TOPUP])
    await topped_up(platform, customer_id, 500)
    [delivery] = await receiver.wait_for(1, seconds=30)
    webhook = Webhook(created["secret"])
    assert webhook.verify(delivery.body, delivery.headers)["data"]["amount_minor"] == 500
    forged = delivery.body.replace(b'"amount_minor":500', b'"amount_minor":50000')
    assert forged != delivery.body
    with pytest.raises(WebhookVerificationError):
        webhook.verify(forged, delivery.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJD" * 8).verify(delivery.body, delivery.headers)
    # A replay: the very message again, later than the library's tolerance.
    stale = {**delivery.headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    with pytest.raises(WebhookVerificationError):
        webhook.verify(delivery.body, stale)


async def test_a_rotated_secret_signs_beside_the_new_one_for_the_overlap(
    platform: Platform, receiver: WebhookReceiver, manager: httpx.AsyncClient
) -> None:
    [customer_id] = await bank_and_customers(platform, 1)
    created = await registered(manager, receiver, [TOPUP])
    rotated = await manager.post(
        f"/v1/webhook-endpoints/{created['id']}/rotate-secret", json={"overlap_seconds": 3600}
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != created["secret"]
    await topped_up(platform, customer_id, 700)
    [during] = await receiver.wait_for(1, seconds=30)
    for secret in (created["secret"], new_secret):
        Webhook(secret).verify(during.body, during.headers)
    ended = await manager.post(
        f"/v1/webhook-endpoints/{created['id']}/rotate-secret", json={"overlap_seconds": 0}
    )
    latest = ended.json()["secret"]
    receiver.secrets[APP] = latest
    await topped_up(platform, customer_id, 800)
    after = (await receiver.wait_for(2, seconds=30))[1]
    Webhook(latest).verify(after.body, after.headers)
    for old in (created["secret"], new_secret):
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(after.body, after.headers)


async def test_an_event_is_delivered_again_on_request(
    platform: Platform, receiver: WebhookReceiver, manager: httpx.AsyncClient
) -> None:
    [customer_id] = await bank_and_customers(platform, 1)
    await registered(manager, receiver, [TOPUP])
    await topped_up(platform, customer_id, 900)
    [first] = await receiver.wait_for(1, seconds=30)
    again = await manager.post(f"/v1/events/{first.event_id}/redeliver")
    assert again.status_code == 202, again.text
    assert len(again.json()["endpoints"]) == 1
    second = (await receiver.wait_for(2, seconds=30))[1]
    assert (second.event_id, second.event) == (first.event_id, first.event)
    missing = await manager.post(f"/v1/events/evt_{'0' * 32}/redeliver")
    assert missing.status_code == 404, missing.text


async def test_an_endpoint_that_fails_past_the_policy_is_disabled_for_an_operator_to_see(
    platform: Platform, receiver: WebhookReceiver, manager: httpx.AsyncClient
) -> None:
    platform.app.state.settings = platform.app.state.settings.model_copy(
        update={"events_give_up_after_seconds": 2.0}
    )
    [customer_id] = await bank_and_customers(platform, 1)
    created = await registered(manager, receiver, [TOPUP])
    receiver.script = [503] * 1_000
    await topped_up(platform, customer_id, 1_000)
    handle = platform.stack.client.get_workflow_handle(event_delivery_workflow_id(created["id"]))
    assert await handle.result() == STAGE_DISABLED
    shown = await manager.get(f"/v1/webhook-endpoints/{created['id']}")
    assert shown.json()["status"] == "disabled"
    assert "503" in shown.json()["disabled_reason"]
    described = await handle.describe()
    assert described.typed_search_attributes.get(PROCESS_STATUS) == STAGE_DISABLED
    status = await handle.query("status", result_type=EventDeliveryStatus)
    assert status.delivered == 0 and status.last_failure is not None


async def test_a_deleted_endpoint_ends_its_process_and_endpoints_take_the_scope(
    platform: Platform, receiver: WebhookReceiver, manager: httpx.AsyncClient
) -> None:
    created = await registered(manager, receiver, [TOPUP, "authorization.declined"])
    listed = await manager.get("/v1/webhook-endpoints")
    assert [e["id"] for e in listed.json()["data"]] == [created["id"]]
    assert "secret" not in listed.json()["data"][0]
    deleted = await manager.delete(f"/v1/webhook-endpoints/{created['id']}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    handle = platform.stack.client.get_workflow_handle(event_delivery_workflow_id(created["id"]))
    assert await handle.result() == "deleted"
    assert (await manager.get(f"/v1/webhook-endpoints/{created['id']}")).status_code == 404
    bad = await manager.post(
        "/v1/webhook-endpoints", json={"url": "not a url", "event_types": ["lottery.won"]}
    )
    assert bad.status_code == 422 and "url" in bad.text and "event_types" in bad.text
    reader = await platform.key_headers(SCOPE_CUSTOMERS_READ)
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=reader) as http:
        for method, path in (
            ("GET", "/v1/webhook-endpoints"),
            ("GET", "/v1/events"),
            ("POST", f"/v1/events/evt_{'0' * 32}/redeliver"),
        ):
            refused = await http.request(method, path)
            assert refused.status_code == 403 and refused.json()["code"] == "scope_missing"
    bound = await platform.key_headers(SCOPE_WEBHOOKS_MANAGE, customers=["c_someone"])
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=bound) as http:
        assert (await http.get("/v1/events")).status_code == 403


async def test_the_stream_is_ordered_and_resumes_after_a_position(
    platform: Platform, manager: httpx.AsyncClient
) -> None:
    customers = await bank_and_customers(platform, 2)
    for amount in range(1, 6):
        await topped_up(platform, customers[amount % 2], amount)
    everything = await stream(manager, [TOPUP])
    assert [e["data"]["amount_minor"] for e in everything] == [1, 2, 3, 4, 5]
    positions = [e["seq"] for e in everything]
    assert positions == sorted(positions)
    behind = await manager.get(
        "/v1/events", params={"after": positions[1], "customer_id": customers[1]}
    )
    assert [e["data"]["amount_minor"] for e in behind.json()["data"]] == [3, 5]
    assert behind.json()["next_cursor"] == str(positions[4])


async def test_customers_are_told_of_a_decline_with_its_reason_and_of_each_clearing_once(
    platform: Platform,
) -> None:
    client = platform.stack.client
    handle = client.get_workflow_handle(event_delivery_workflow_id(CUSTOMERS_ENDPOINT_ID))
    # One such process per program: an earlier test's (another database) ends first.
    try:
        await handle.terminate("another test's")
    except RPCError as error:
        if error.status is not RPCStatusCode.NOT_FOUND:
            raise
    settings = platform.settings.model_copy(
        update={"events_poll_seconds": 0.2, "events_retry_initial_seconds": 0.2}
    )
    pool = platform.stack.pool
    assert (
        await ensure_customer_notifications(pool, client, platform.stack.queues, settings)
        == "created"
    )
    customer_id, card_id, card = await open_card(platform)
    chat = str(int(uuid.uuid4().int % 10**12))
    await CustomerStore(pool).save(
        profile(customer_id, telegram_chat_id=chat, preferred_channels=[Channel.TELEGRAM])
    )
    await card.execute_update(LIMITS_UPDATE, SpendingLimits(blocked_mccs=["7995"]))
    # Every issuer webhook arrives twice: the customer is still told once.
    platform.sim.admin("POST", "/webhooks", {"duplicate": True})
    await authorize(platform, card_id, 700, merchant=CASINO)
    bought = await authorize(platform, card_id, 2_500)
    async with issuer(platform) as network:
        await network.simulate_clearing(
            bought.id, amount_minor=2_500, final=True, idempotency_key=f"clear-{bought.id}"
        )
    try:

        async def told() -> list[str]:
            return await telegram_said(platform, chat)

        async def both_told() -> bool:
            return len(await told()) >= 2

        await polling.eventually(both_told, "the customer is told of both")
        # Nothing more comes: the process has gone past every event of both.
        await sequence(pool)
        last = await pool.fetchval(
            "SELECT max(seq) FROM customer_events WHERE customer_id = $1"
            " AND type IN ('authorization.declined', 'transaction.cleared')",
            customer_id,
        )

        async def past_them() -> bool:
            status = await handle.query("status", result_type=EventDeliveryStatus)
            return bool(status.after_seq >= last)

        await polling.eventually(past_them, "the process is past the customer's events")
        bodies = await told()
    finally:
        await handle.terminate("test over")
    assert len(bodies) == 2, bodies
    declined, cleared = bodies
    assert "Lucky Star: 7.00 USD was declined." in declined and "blocked" in declined
    assert cleared == f"Card payment\n\n{SHOP.name}: 25.00 USD paid with your card."


async def test_a_long_delivery_continues_as_new_and_loses_or_repeats_nothing(
    platform: Platform, receiver: WebhookReceiver
) -> None:
    [customer_id] = await bank_and_customers(platform, 1)
    pool = platform.stack.pool
    row, secret, after = await create_endpoint(pool, f"{receiver.url}/webhooks/{APP}", [TOPUP])
    receiver.secrets[APP] = secret
    queues = platform.stack.queues
    # A history this short continues as new every few deliveries.
    policy = DeliveryPolicy(
        idle_poll_seconds=0.2, retry_initial_seconds=0.2, history_events_max=100
    )
    request = EventDeliveryInput(
        endpoint_id=row["endpoint_id"],
        after_seq=after,
        policy=policy,
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
    )
    await start_delivery(platform.stack.client, queues, request)
    amounts = list(range(1, 31))
    for amount in amounts:
        await topped_up(platform, customer_id, amount)
    received = await receiver.wait_for(len(amounts), seconds=90)
    assert [r.event["data"]["amount_minor"] for r in received] == amounts
    handle = platform.stack.client.get_workflow_handle(
        event_delivery_workflow_id(row["endpoint_id"])
    )
    # The delivery continued as new on the way, carrying its position.

    async def continued() -> bool:
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        return bool(started.continued_execution_run_id)

    await polling.eventually(continued, "the delivery continues as new")
    status = await handle.query("status", result_type=EventDeliveryStatus)
    assert status.delivered == len(amounts)
