"""Card issuing through the issuer simulator and its shipping webhooks; the card entity."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import CancelledError

from activities.events import events_after
from activities.ledger import Ledger
from activities.ledger.verify import verify
from activities.providers.issuer import IssuerClient
from schemas.accounts import system_account
from schemas.billing import BillingInput, BillingPolicy, period_bounds, previous_period
from schemas.cards import (
    CardInput,
    CardIssueResult,
    CardIssueStatus,
    CardPolicy,
    CardStateChange,
    RescheduleDelivery,
    ShippingUpdate,
    SpendingLimits,
)
from schemas.issuer import Address, CardState, Merchant, ShippingStatus
from schemas.money import Currency
from starters.billing import bill
from tests import polling
from tests.conftest import Platform
from tests.customers import HOME, customer, issue_card
from tests.interruptions import (
    balances_locked,
    until_activity_cancel_requested,
    until_admitted,
    until_waiting,
)
from workflows.card_issue import (
    ACTIVATE_UPDATE,
    RESCHEDULE_UPDATE,
    SHIPPING_UPDATE_SIGNAL,
    card_issue_workflow_id,
    fee_account,
)
from workflows.cards import (
    CARD_WORKFLOW,
    CLOSE_UPDATE,
    FREEZE_UPDATE,
    LIMITS_UPDATE,
    REPORT_LOST_UPDATE,
    REPORT_STOLEN_UPDATE,
    UNFREEZE_UPDATE,
    card_workflow_id,
)
from workflows.onboarding import wallet_code


async def stage_of(
    handle: WorkflowHandle[Any, Any], stage: str, seconds: float = 20
) -> CardIssueStatus:

    async def status() -> CardIssueStatus:
        answer: CardIssueStatus | None = await handle.query("status", result_type=CardIssueStatus)
        assert answer is not None
        return answer

    return await polling.until(
        status, lambda answer: answer.stage == stage, f"reached {stage!r}", seconds
    )


async def shipping_reaches(
    handle: WorkflowHandle[Any, Any], shipping: ShippingStatus, seconds: float = 20
) -> CardIssueStatus:
    """The card issue's status once its shipment has reached `shipping`."""

    async def status() -> CardIssueStatus:
        answer: CardIssueStatus = await handle.query("status", result_type=CardIssueStatus)
        return answer

    return await polling.until(
        status,
        lambda answer: answer.shipping is not None and answer.shipping.status is shipping,
        f"shipping reached {shipping.value}",
        seconds,
    )


async def shipping_webhooks_delivered_twice(platform: Platform, card_id: str, count: int) -> None:
    """Until the issuer's `count` shipping webhooks about the card are each
    delivered, both copies of it (the outbox's duplicate mode): the gateway
    answers a copy 2xx only once the process has it, or knows it has."""

    async def webhooks() -> list[dict[str, Any]]:
        return [
            webhook
            for webhook in await asyncio.to_thread(platform.sim.admin, "GET", "/webhooks")
            if webhook["type"] == "card.shipping.updated" and webhook["about"] == card_id
        ]

    await polling.until(
        webhooks,
        lambda found: (
            len(found) == count
            and all(
                webhook["delivered_at"] is not None and webhook["deliveries"] == 2
                for webhook in found
            )
        ),
        "shipping webhooks all delivered twice",
    )


async def signals_taken(handle: WorkflowHandle[Any, Any], seconds: float = 20) -> None:
    """Until a workflow task has completed after the last signal in the
    workflow's history: a signal handler that only records (no await) has then
    run for every signal received."""

    async def last_signal_taken() -> bool:
        taken = True
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                taken = False
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                taken = True
        return taken

    await polling.eventually(last_signal_taken, "the workflow took its last signal", seconds)


async def wallet_balance(platform: Platform, customer_id: str) -> int:
    return (await Ledger(platform.stack.pool).balance(wallet_code(customer_id, "USD"))).posted


async def refusal(call: Any) -> str:
    try:
        await call
    except WorkflowUpdateFailedError as error:
        return str(error.cause)
    raise AssertionError("the update was accepted")


async def test_a_customer_not_approved_is_refused_and_charged_nothing(platform: Platform) -> None:
    customer_id = await customer(platform, approved=False)
    handle = await issue_card(platform, customer_id, "virtual")
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "onboarding is pending" in str(failure.value.cause)
    assert await wallet_balance(platform, customer_id) == 10_000


async def test_a_virtual_card_is_open_at_once_and_its_entity_runs(platform: Platform) -> None:
    customer_id = await customer(platform)
    result = await (await issue_card(platform, customer_id, "virtual")).result()
    assert result.state == "open" and result.fee_minor == 100 and result.card_id
    assert await wallet_balance(platform, customer_id) == 9_900
    fees = await Ledger(platform.stack.pool).balance(fee_account("USD"))
    # The one card's 1.00 fee, posted once, to an account of this test's own database.
    assert (fees.credits_posted, fees.debits_posted, fees.credits_pending) == (100, 0, 0)
    card = platform.stack.client.get_workflow_handle(card_workflow_id(result.card_id))
    status = await card.query("status", result_type=CardInput)
    assert status.state is CardState.OPEN and status.customer_id == customer_id


async def test_a_physical_card_ships_reschedules_delivers_and_activates(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    handle = await issue_card(platform, customer_id, "physical")
    status = await stage_of(handle, "shipping")
    card_id = status.card_id or ""
    later = (datetime.now(UTC) + timedelta(days=10)).date()
    assert "rescheduled" in await handle.execute_update(
        RESCHEDULE_UPDATE, RescheduleDelivery(delivery_date=later), result_type=str
    )
    assert "once delivered" in await refusal(handle.execute_update(ACTIVATE_UPDATE))
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        for step in (ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED):
            await issuer.simulate_shipping(
                card_id, status=step, carrier="DHL", idempotency_key=f"ship-{card_id}-{step.value}"
            )
        shipping = (await shipping_reaches(handle, ShippingStatus.SHIPPED)).shipping
        assert shipping is not None and shipping.carrier == "DHL" and shipping.tracking_number
        assert "already shipped" in await refusal(
            handle.execute_update(
                RESCHEDULE_UPDATE, RescheduleDelivery(delivery_date=later + timedelta(days=1))
            )
        )
        await issuer.simulate_shipping(
            card_id, status=ShippingStatus.DELIVERED, idempotency_key=f"ship-{card_id}-delivered"
        )
    try:
        await stage_of(handle, "delivered: waiting for activation")
    except AssertionError:
        try:
            await handle.result()
        except WorkflowFailureError as error:
            raise AssertionError(f"issuing failed: {error.cause}") from None
        raise
    assert await handle.execute_update(ACTIVATE_UPDATE, result_type=str) == "card activated"
    result = await handle.result()
    assert result.state == "open" and result.fee_minor == 500
    assert await wallet_balance(platform, customer_id) == 9_500

    # The customer's events: the card issued, each shipping step, the fee.
    async def shipped_events() -> list[str]:
        events = await events_after(platform.stack.pool, 0, 100, customer_id=customer_id)
        return [e.data["status"] for e in events if e.type == "card.shipping_updated"]

    async def all_shipped() -> bool:
        return "delivered" in await shipped_events()

    await polling.eventually(all_shipped, "each shipping step is an event")
    # The reschedule (still pending), then each step of the shipment.
    assert await shipped_events() == ["pending", "submitted", "shipped", "delivered"]
    events = await events_after(platform.stack.pool, 0, 100, customer_id=customer_id)
    assert [e.card_id for e in events if e.type == "card.issued"] == [card_id]
    assert [(e.type, e.data["amount_minor"]) for e in events if e.type.startswith("fee.")] == [
        ("fee.charged", 500)
    ]


async def test_an_activation_that_reaches_the_issuing_before_it_started_is_refused(
    platform: Platform,
) -> None:
    """The issuing's worker is away when it is started: the issuer's shipping
    webhook and the customer's activation reach it first, and the restarted
    worker takes them in the same task as the start, before the process has
    a card (a replacement's issuing, started by the lost card's entity, meets
    this when its webhooks outrun it). The activation is refused, saying
    why, and the card issues and activates once asked again: never a
    workflow task that fails on every retry."""
    customer_id = await customer(platform)
    async with platform.stack.workflows_worker_away():
        handle = await issue_card(platform, customer_id, "physical")
        await handle.signal(
            SHIPPING_UPDATE_SIGNAL,
            ShippingUpdate(card_id="card_unknown", status=ShippingStatus.DELIVERED),
        )
        early = asyncio.create_task(handle.execute_update(ACTIVATE_UPDATE, id="early"))
        await until_admitted(platform.stack.client, handle, "early")
    assert "not issued yet" in await asyncio.wait_for(refusal(early), 20)
    card_id = (await stage_of(handle, "delivered: waiting for activation")).card_id or ""
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        for step in (ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED, ShippingStatus.DELIVERED):
            await issuer.simulate_shipping(
                card_id, status=step, idempotency_key=f"ship-{card_id}-{step.value}"
            )
    assert await handle.execute_update(ACTIVATE_UPDATE, result_type=str) == "card activated"
    result = await handle.result()
    assert result.state == "open" and result.fee_minor == 500
    assert await wallet_balance(platform, customer_id) == 9_500


async def test_a_card_that_cannot_be_created_refunds_the_fee(platform: Platform) -> None:
    customer_id = await customer(platform)
    # The issuer refuses the cardholder's address (a line longer than the 100
    # characters it takes, within cardflow's 200): nothing can be created.
    bad = Address(line1="x" * 150, city="London", postal_code="N1", country="GB")
    handle = await issue_card(platform, customer_id, "virtual", address=bad)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert await wallet_balance(platform, customer_id) == 10_000


async def test_a_cancellation_while_the_fee_is_charged_refunds_it_once_it_posts(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    fees = fee_account("USD")
    await Ledger(platform.stack.pool).open_account(system_account(fees))
    fees_before = (await Ledger(platform.stack.pool).balance(fees)).posted
    async with balances_locked(
        platform.stack.database_url, wallet_code(customer_id, "USD")
    ) as lock:
        handle = await issue_card(platform, customer_id, "virtual")
        # The fee's posting waits for the wallet; the issuing is cancelled there.
        await until_waiting(platform.stack.pool, lock)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    # The wallet free again, the interrupted fee is charged after all.
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    assert await wallet_balance(platform, customer_id) == 10_000
    assert (await Ledger(platform.stack.pool).balance(fees)).posted == fees_before
    status = await handle.query("status", result_type=CardIssueStatus)
    assert status.stage == "cancelled"
    assert await verify(platform.stack.pool) == []


async def test_a_second_card_to_a_new_address_reuses_the_cardholder_and_ships_there(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    virtual = await (await issue_card(platform, customer_id, "virtual")).result()
    # The customer moved: a physical card is asked for, to go to the new home.
    moved = Address(
        line1="12 Difference Engine Row", city="Manchester", postal_code="M1 1AA", country="GB"
    )
    handle = await issue_card(platform, customer_id, "physical", address=moved)
    try:
        card_id = (await stage_of(handle, "shipping")).card_id or ""
    except AssertionError:
        try:
            await handle.result()
        except WorkflowFailureError as error:
            raise AssertionError(f"issuing failed: {error.cause}") from None
        raise
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        physical = await issuer.get_card(card_id)
        first = await issuer.get_card(virtual.card_id or "")
        # One person at the issuer, whose address is now the new one.
        assert physical.cardholder_id == first.cardholder_id
        cardholder = await issuer.get_cardholder(physical.cardholder_id)
        assert cardholder.address == moved
        assert physical.shipping is not None and physical.shipping.address == moved
        for step in (ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED, ShippingStatus.DELIVERED):
            await issuer.simulate_shipping(
                card_id, status=step, idempotency_key=f"ship-{card_id}-{step.value}"
            )
    await stage_of(handle, "delivered: waiting for activation")
    assert await handle.execute_update(ACTIVATE_UPDATE, result_type=str) == "card activated"
    result = await handle.result()
    assert result.state == "open"
    assert await wallet_balance(platform, customer_id) == 10_000 - 100 - 500


async def test_two_first_cards_at_once_register_one_cardholder(platform: Platform) -> None:
    customer_id = await customer(platform)
    away = Address(line1="3 Babbage Yard", city="Leeds", postal_code="LS1 1AA", country="GB")
    handles = [
        await issue_card(platform, customer_id, "virtual", address=at) for at in (HOME, away)
    ]
    results = await asyncio.gather(*(handle.result() for handle in handles))
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        cards = [await issuer.get_card(result.card_id or "") for result in results]
    assert cards[0].cardholder_id == cards[1].cardholder_id


async def test_a_failed_delivery_closes_the_card_and_refunds_the_fee(platform: Platform) -> None:
    customer_id = await customer(platform)
    handle = await issue_card(platform, customer_id, "physical")
    card_id = (await stage_of(handle, "shipping")).card_id or ""
    assert await wallet_balance(platform, customer_id) == 9_500
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        for step in (ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED, ShippingStatus.FAILURE):
            await issuer.simulate_shipping(
                card_id, status=step, idempotency_key=f"ship-{card_id}-{step.value}"
            )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        assert (await issuer.get_card(card_id)).state is CardState.CLOSED
    assert await wallet_balance(platform, customer_id) == 10_000


async def test_the_card_entity_freezes_unfreezes_closes_and_survives_continue_as_new(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    result = await (await issue_card(platform, customer_id, "virtual")).result()
    card_id = result.card_id or ""
    client = platform.stack.client
    # A fresh entity with a tiny history limit, to cross continue-as-new often.
    entity_id = f"{card_workflow_id(card_id)}-small"
    handle = await client.start_workflow(
        CARD_WORKFLOW,
        CardInput(
            card_id=card_id,
            customer_id=customer_id,
            state=CardState.OPEN,
            providers_task_queue=platform.stack.queues.providers,
            history_events_max=50,
            policy=CardPolicy(closed_linger_seconds=1),
        ),
        id=entity_id,
        task_queue=platform.stack.queues.workflows,
    )
    assert "the card is open" in await refusal(
        handle.execute_update(UNFREEZE_UPDATE, CardStateChange())
    )
    # Updates go to the workflow id, whichever run currently holds it.
    handle = client.get_workflow_handle(entity_id)
    for _ in range(6):
        try:
            frozen = await handle.execute_update(FREEZE_UPDATE, CardStateChange(), result_type=str)
        except WorkflowUpdateFailedError as error:
            raise AssertionError(f"freeze refused: {error.cause}") from None
        try:
            opened = await handle.execute_update(
                UNFREEZE_UPDATE, CardStateChange(), result_type=str
            )
        except WorkflowUpdateFailedError as error:
            raise AssertionError(f"unfreeze refused: {error.cause}") from None
        assert (frozen, opened) == ("paused", "open")
    status = await handle.query("status", result_type=CardInput)
    assert status.changes == 12 and status.state is CardState.OPEN
    latest = await client.get_workflow_handle(entity_id).describe()
    assert latest.run_id != handle.result_run_id, "the entity never continued as new"
    assert (
        await handle.execute_update(
            CLOSE_UPDATE, CardStateChange(reason="customer left"), result_type=str
        )
        == "closed"
    )
    assert await client.get_workflow_handle(entity_id).result() == "closed"
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        assert (await issuer.get_card(card_id)).state is CardState.CLOSED


async def test_limits_are_validated_and_a_lost_card_is_replaced(platform: Platform) -> None:
    customer_id = await customer(platform)
    result = await (await issue_card(platform, customer_id, "virtual")).result()
    card_id = result.card_id or ""
    handle = platform.stack.client.get_workflow_handle(card_workflow_id(card_id))
    limits = SpendingLimits(
        per_transaction_minor=5_000, per_day_minor=20_000, blocked_mccs=["7995", "7995", "5933"]
    )
    stored = await handle.execute_update(LIMITS_UPDATE, limits, result_type=SpendingLimits)
    assert stored.blocked_mccs == ["5933", "7995"]
    with pytest.raises(ValueError, match="4 digits"):
        SpendingLimits(blocked_mccs=["79"])
    replacement = await handle.execute_update(
        REPORT_LOST_UPDATE, CardStateChange(reason="lost in the park"), result_type=str
    )
    assert replacement != card_id
    # The old card stays for the issuer's late money, closed and replaced.
    old = await handle.query("status", result_type=CardInput)
    assert (old.state, old.replaced_by) == (CardState.CLOSED, replacement)
    new_entity = platform.stack.client.get_workflow_handle(card_workflow_id(replacement))
    carried = await new_entity.query("status", result_type=CardInput)
    assert carried.limits == stored and carried.state is CardState.OPEN
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        assert (await issuer.get_card(card_id)).state is CardState.CLOSED
        assert (await issuer.get_card(replacement)).replaces == card_id


async def test_shipping_webhooks_twice_and_reversed_still_end_delivered(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    handle = await issue_card(platform, customer_id, "physical")
    card_id = (await stage_of(handle, "shipping")).card_id or ""
    platform.sim.admin("POST", "/webhooks", {"hold": True, "duplicate": True})
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        for step in (ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED, ShippingStatus.DELIVERED):
            await issuer.simulate_shipping(
                card_id, status=step, idempotency_key=f"ship-{card_id}-{step.value}"
            )
    # Delivered arrives first; the older submitted and shipped must not undo it.
    platform.sim.admin("POST", "/webhooks/release", {"order": "reverse"})
    status = await stage_of(handle, "delivered: waiting for activation")
    assert status.shipping is not None and status.shipping.status is ShippingStatus.DELIVERED
    # Every copy of the older steps handed over and taken: still delivered.
    await shipping_webhooks_delivered_twice(platform, card_id, count=3)
    await signals_taken(handle)
    status = await handle.query("status", result_type=CardIssueStatus)
    assert status.shipping is not None and status.shipping.status is ShippingStatus.DELIVERED
    assert status.stage == "delivered: waiting for activation"


async def test_the_api_issues_a_card_once_per_key_and_acts_on_it(platform: Platform) -> None:
    customer_id = await customer(platform)
    body = {
        "customer_id": customer_id,
        "kind": "virtual",
        "address": HOME.model_dump(mode="json", exclude_none=True),
    }
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, timeout=30, headers=platform.api_headers
    ) as api:
        first = await api.post("/v1/cards", json=body, headers={"Idempotency-Key": "card-1"})
        again = await api.post("/v1/cards", json=body, headers={"Idempotency-Key": "card-1"})
        assert (first.status_code, again.status_code) == (202, 200)
        issued = platform.stack.client.get_workflow_handle(
            first.json()["workflow_id"], result_type=CardIssueResult
        )
        card_id = (await issued.result()).card_id
        frozen = await api.post(f"/v1/cards/{card_id}/actions", json={"action": "freeze"})
        assert frozen.json() == {"result": "paused"}
        twice = await api.post(f"/v1/cards/{card_id}/actions", json={"action": "freeze"})
        assert (twice.status_code, twice.json()["code"]) == (409, "wrong_state")
        bad = await api.post(f"/v1/cards/{card_id}/actions", json={"action": "shred"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "action"]
        missing = await api.post("/v1/cards/card_nope/actions", json={"action": "close"})
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    # The default policy charges no fee for a virtual card.
    assert await wallet_balance(platform, customer_id) == 10_000


async def test_the_api_reschedules_activates_and_sets_limits(platform: Platform) -> None:
    customer_id = await customer(platform)
    handle = await issue_card(platform, customer_id, "physical")
    card_id = (await stage_of(handle, "shipping")).card_id or ""
    request_id = handle.id.removeprefix("card-issue/")
    later = (datetime.now(UTC) + timedelta(days=9)).date().isoformat()
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, timeout=30, headers=platform.api_headers
    ) as api:
        moved = await api.post(
            f"/v1/card-issues/{request_id}/reschedule", json={"delivery_date": later}
        )
        assert moved.status_code == 200 and "rescheduled" in moved.json()["result"]
        early = await api.post(f"/v1/card-issues/{request_id}/activate")
        assert (early.status_code, early.json()["code"]) == (409, "wrong_state")
        async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
            for step in (
                ShippingStatus.SUBMITTED,
                ShippingStatus.SHIPPED,
                ShippingStatus.DELIVERED,
            ):
                await issuer.simulate_shipping(
                    card_id, status=step, idempotency_key=f"ship-{card_id}-{step.value}"
                )
        await stage_of(handle, "delivered: waiting for activation")
        activated = await api.post(f"/v1/card-issues/{request_id}/activate")
        assert activated.json() == {"result": "card activated"}
        await handle.result()
        limits = await api.put(
            f"/v1/cards/{card_id}/limits", json={"per_day_minor": 30_000, "blocked_mccs": ["7995"]}
        )
        assert limits.status_code == 200 and limits.json()["per_day_minor"] == 30_000
        bad = await api.put(f"/v1/cards/{card_id}/limits", json={"blocked_mccs": ["79"]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:2] == [
            "body",
            "blocked_mccs",
        ]


SHOP = Merchant(name="Corner Shop", mcc="5411", country="GB")
MONTHLY_FEE = BillingPolicy(monthly_fee_minor={Currency.USD: 150})


async def ship(platform: Platform, card_id: str, *steps: ShippingStatus) -> None:
    """The issuer moves the card's shipment; each step is a card.shipping.updated webhook."""
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        for step in steps:
            await issuer.simulate_shipping(
                card_id, status=step, idempotency_key=f"ship-{card_id}-{step.value}"
            )


async def purchase(platform: Platform, card_id: str, amount: int) -> tuple[str, str]:
    """A merchant's authorization, put to the card in real time: (status, reason)."""
    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        auth = await issuer.simulate_authorization(
            card_id=card_id,
            amount_minor=amount,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key=f"auth-{uuid.uuid4().hex}",
        )
    return auth.status.value, auth.decision_reason


async def recorded(platform: Platform, card_id: str) -> dict[str, Any] | None:
    """The card's row in `cards` (what webhook routing and billing read), if any."""
    row = await platform.stack.pool.fetchrow("SELECT * FROM cards WHERE card_id = $1", card_id)
    return dict(row) if row is not None else None


async def billed_cards(platform: Platform, customer_id: str, tmp_path: Any) -> dict[str, str]:
    """Bill the customer's cards, as issued last month (a month is billed
    once it has ended): each billed card's fee status."""
    period = previous_period(datetime.now(UTC))
    await platform.stack.pool.execute(
        "UPDATE cards SET created_at = $2 WHERE customer_id = $1",
        customer_id,
        period_bounds(period)[0],
    )
    result = await bill(
        platform.stack.client,
        platform.stack.queues,
        BillingInput(
            customer_id=customer_id,
            period=period,
            statements_dir=str(tmp_path / "statements"),
            policy=MONTHLY_FEE,
        ),
    )
    return {fee.card_id: fee.status for fee in result.fees}


async def test_a_lost_physical_cards_replacement_ships_activates_pays_and_is_billed(
    platform: Platform, tmp_path: Any
) -> None:
    customer_id = await customer(platform)
    handle = await issue_card(platform, customer_id, "physical")
    card_id = (await stage_of(handle, "shipping")).card_id or ""
    await ship(platform, card_id, ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED)
    await ship(platform, card_id, ShippingStatus.DELIVERED)
    await stage_of(handle, "delivered: waiting for activation")
    await handle.execute_update(ACTIVATE_UPDATE, result_type=str)
    assert (await handle.result()).state == "open"

    async with httpx.AsyncClient(
        base_url=platform.gateway_url, timeout=30, headers=platform.api_headers
    ) as api:
        lost = await api.post(
            f"/v1/cards/{card_id}/actions", json={"action": "report_lost", "reason": "on a train"}
        )
        assert lost.status_code == 200, lost.text
        replacement = lost.json()["result"]
        assert replacement != card_id
        # Recorded like any card cardflow issued, so its webhooks and billing find it.
        row = await recorded(platform, replacement)
        assert row is not None, "the replacement is not in the cards table"
        assert (row["customer_id"], row["kind"], row["replaces"]) == (
            customer_id,
            "physical",
            card_id,
        )
        # The issuer ships the replacement; activating it before delivery is refused.
        early = await api.post(f"/v1/card-issues/{replacement}/activate")
        assert (early.status_code, early.json()["code"]) == (409, "wrong_state"), early.text
        await ship(platform, replacement, ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED)
        # Its shipping webhooks reach the process that follows the replacement.
        shipping = platform.stack.client.get_workflow_handle(card_issue_workflow_id(replacement))
        status = await shipping_reaches(shipping, ShippingStatus.SHIPPED)
        assert status.shipping is not None and status.shipping.tracking_number, status
        await ship(platform, replacement, ShippingStatus.DELIVERED)
        await stage_of(shipping, "delivered: waiting for activation")
        activated = await api.post(f"/v1/card-issues/{replacement}/activate")
        assert activated.json() == {"result": "card activated"}, activated.text
        await shipping.result()

    async with IssuerClient(platform.sim.provider_url("issuer")) as issuer:
        assert (await issuer.get_card(replacement)).state is CardState.OPEN
    entity = platform.stack.client.get_workflow_handle(card_workflow_id(replacement))
    assert (await entity.query("status", result_type=CardInput)).state is CardState.OPEN
    assert await purchase(platform, replacement, 2_000) == ("pending", "approved")
    # The lost card is closed at the issuer, which refuses it without asking.
    assert await purchase(platform, card_id, 1_000) == ("declined", f"card {card_id} is closed")
    balance = await Ledger(platform.stack.pool).balance(wallet_code(customer_id, "USD"))
    assert (balance.posted, balance.debits_pending) == (9_500, 2_000)
    billed = await billed_cards(platform, customer_id, tmp_path)
    assert billed == {card_id: "charged", replacement: "charged"}


async def test_a_stolen_virtual_cards_replacement_is_recorded_open_and_pays_at_once(
    platform: Platform, tmp_path: Any
) -> None:
    customer_id = await customer(platform)
    card_id = (await (await issue_card(platform, customer_id, "virtual")).result()).card_id or ""
    handle = platform.stack.client.get_workflow_handle(card_workflow_id(card_id))
    replacement = await handle.execute_update(
        REPORT_STOLEN_UPDATE, CardStateChange(reason="phone stolen"), result_type=str
    )
    row = await recorded(platform, replacement)
    assert row is not None, "the replacement is not in the cards table"
    assert (row["customer_id"], row["kind"], row["replaces"]) == (customer_id, "virtual", card_id)
    entity = platform.stack.client.get_workflow_handle(card_workflow_id(replacement))
    assert (await entity.query("status", result_type=CardInput)).state is CardState.OPEN
    assert await purchase(platform, replacement, 2_000) == ("pending", "approved")
    balance = await Ledger(platform.stack.pool).balance(wallet_code(customer_id, "USD"))
    assert (balance.posted, balance.debits_pending) == (9_900, 2_000)
    billed = await billed_cards(platform, customer_id, tmp_path)
    assert billed == {card_id: "charged", replacement: "charged"}
