"""Card authorizations end to end: the issuer simulator asks the gateway in real
time, the card's workflow decides and holds, and the issuer's webhooks
(clearings, reversals, refunds...) move the ledger."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger import Ledger
from activities.ledger.verify import verify
from schemas import accounts
from schemas.cards import (
    CardInput,
    CardNetworkEvent,
    CardPolicy,
    CardStateChange,
    ExceptionDecision,
    SpendingLimits,
)
from schemas.issuer import Authorization, CardType
from schemas.ledger import TransferRequest
from schemas.money import Currency
from tests import polling
from tests.conftest import Platform
from tests.customers import (
    CASINO,
    HOME,
    SHOP,
    authorize,
    card_of_its_own,
    card_state,
    customer,
    issuer,
    open_card,
    wallet,
    wallet_becomes,
)
from tests.interruptions import balances_locked, until_waiting
from tests.replays import unreplayable
from tests.workflows.test_cards import refusal
from workflows.card_ledger import HOLD_LEDGER_GRACE
from workflows.cards import (
    CLOSE_UPDATE,
    FREEZE_UPDATE,
    LIMITS_UPDATE,
    NETWORK_EVENT_SIGNAL,
    RESOLVE_EXCEPTION_UPDATE,
    card_workflow_id,
)
from workflows.cashback import cashback_workflow_id


async def delivered_twice(platform: Platform, *about: str) -> None:
    """Until every webhook about the issuer's objects `about` (transaction ids)
    is delivered, both copies of it (the outbox's duplicate mode): the gateway
    answers a copy 2xx only once the card has it, or once it knows the card has."""

    async def delivered() -> bool:
        webhooks: list[dict[str, Any]] = await asyncio.to_thread(
            platform.sim.admin, "GET", "/webhooks"
        )
        ours = [webhook for webhook in webhooks if webhook["about"] in about]
        return {webhook["about"] for webhook in ours} == set(about) and all(
            webhook["delivered_at"] is not None and webhook["deliveries"] == 2 for webhook in ours
        )

    await polling.eventually(delivered, f"every webhook about {', '.join(about)} delivered twice")


async def applied_so_far(handle: WorkflowHandle[Any, Any]) -> CardInput:
    """The card's state once it has applied every issuer event it was sent
    before now: it applies events one by one in the order they arrive, so a
    marker event (one that moves no money) sent now is applied after them."""
    marker = CardNetworkEvent(event_id=f"evt-marker-{uuid.uuid4().hex[:8]}", type="card.updated")
    await handle.signal(NETWORK_EVENT_SIGNAL, marker)

    async def marker_applied() -> bool:
        return marker.event_id in (await card_state(handle)).seen_events

    await polling.eventually(marker_applied, "the card applies the events sent before the marker")
    return await card_state(handle)


async def test_a_purchase_is_held_then_cleared_lower_and_the_rest_released(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    auth = await authorize(platform, card_id, 5_000)
    assert (auth.status.value, auth.decided_by.value) == ("pending", "cardflow")
    assert auth.decision_reason == "approved"
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending, balance.available) == (10_000, 5_000, 5_000)

    async with issuer(platform) as client:
        cleared = await client.simulate_clearing(
            auth.id, amount_minor=4_200, final=True, idempotency_key=f"clear-{auth.id}"
        )
    await wallet_becomes(platform, customer_id, posted=5_800, pending=0)
    settlement = await Ledger(platform.stack.pool).balance(accounts.issuer_settlement("USD"))
    # The hold was credited pending; the clearing posted 4,200 and released the rest.
    assert (settlement.credits_posted, settlement.credits_pending) == (4_200, 0)
    assert (settlement.debits_posted, settlement.debits_pending) == (0, 0)
    state = await card_state(handle)
    assert auth.id not in state.authorizations
    # The clearing is recorded and its cashback process started.

    async def recorded() -> bool:
        amount = await platform.stack.pool.fetchval(
            "SELECT amount_minor FROM card_transactions WHERE transaction_id = $1", cleared.id
        )
        return bool(amount == 4_200)

    await polling.eventually(recorded, "the clearing is recorded")
    cashback = platform.stack.client.get_workflow_handle(cashback_workflow_id(cleared.id))

    async def cashback_started() -> bool:
        try:
            return (await cashback.describe()).id == cashback_workflow_id(cleared.id)
        except RPCError as error:
            if error.status is not RPCStatusCode.NOT_FOUND:
                raise
            return False

    await polling.eventually(cashback_started, "the purchase's cashback process starts")
    assert await verify(platform.stack.pool) == []


async def test_several_partial_clearings_post_the_hold_piece_by_piece(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(platform)
    auth = await authorize(platform, card_id, 6_000)
    async with issuer(platform) as client:
        await client.simulate_clearing(auth.id, amount_minor=1_000, idempotency_key="c1" + auth.id)
        await wallet_becomes(platform, customer_id, posted=9_000, pending=5_000)
        await client.simulate_clearing(auth.id, amount_minor=2_000, idempotency_key="c2" + auth.id)
        await wallet_becomes(platform, customer_id, posted=7_000, pending=3_000)
        # The rest, by a clearing that takes all that is pending.
        await client.simulate_clearing(auth.id, idempotency_key="c3" + auth.id)
    await wallet_becomes(platform, customer_id, posted=4_000, pending=0)
    assert auth.id not in (await card_state(handle)).authorizations
    assert await verify(platform.stack.pool) == []


async def test_a_clearing_over_the_hold_posts_a_tip_within_tolerance_and_flags_more(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(
        platform, policy=CardPolicy(clearing_over_tolerance_bps=2_000)
    )
    tipped = await authorize(platform, card_id, 1_000)
    async with issuer(platform) as client:
        # 15% over: a tip within the 20% tolerance, posted as an extra transfer.
        await client.simulate_clearing(tipped.id, amount_minor=1_150, idempotency_key="t1")
    await wallet_becomes(platform, customer_id, posted=8_850, pending=0)

    over = await authorize(platform, card_id, 1_000)
    async with issuer(platform) as client:
        await client.simulate_clearing(over.id, amount_minor=1_500, idempotency_key="t2")
    # The held 1,000 posts; the 500 beyond the tolerance waits for an operator.
    await wallet_becomes(platform, customer_id, posted=7_850, pending=0)

    async def flagged() -> bool:
        return any(e.resolution is None for e in (await card_state(handle)).exceptions)

    await polling.eventually(flagged, "an exception for an operator")
    exception = (await card_state(handle)).exceptions[0]
    assert (exception.kind, exception.amount_minor) == ("over_tolerance", 500)
    assert "not an open exception" in await refusal(
        handle.execute_update(
            RESOLVE_EXCEPTION_UPDATE,
            ExceptionDecision(exception_id="exc-99", action="charge", reason="x"),
        )
    )
    resolution = await handle.execute_update(
        RESOLVE_EXCEPTION_UPDATE,
        ExceptionDecision(exception_id=exception.id, action="charge", reason="merchant receipt"),
        result_type=str,
    )
    assert resolution == "charge: merchant receipt"
    await wallet_becomes(platform, customer_id, posted=7_350, pending=0)
    assert await verify(platform.stack.pool) == []


async def test_declines_say_why_and_hold_nothing(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(
        platform, {Currency.USD: 3_000}, policy=CardPolicy(velocity_count_max=3)
    )
    await handle.execute_update(
        LIMITS_UPDATE, SpendingLimits(per_transaction_minor=2_000, blocked_mccs=["7995"])
    )
    assert (await authorize(platform, card_id, 100, merchant=CASINO)).decision_reason == (
        "blocked_mcc"
    )
    assert (await authorize(platform, card_id, 2_500)).decision_reason == "over_transaction_limit"
    first = await authorize(platform, card_id, 1_500)
    assert first.status.value == "pending"
    short = await authorize(platform, card_id, 1_600)
    assert (short.status.value, short.decision_reason) == ("declined", "insufficient_funds")
    await authorize(platform, card_id, 100)
    await authorize(platform, card_id, 100)
    # A fourth approval inside the window is one too many.
    assert (await authorize(platform, card_id, 100)).decision_reason == "velocity_count"
    await handle.execute_update(FREEZE_UPDATE, CardStateChange(reason="test"))
    paused = await authorize(platform, card_id, 100)
    # The issuer itself refuses a paused card without asking.
    assert (paused.status.value, paused.decided_by.value) == ("declined", "issuer")
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (3_000, 1_700)


async def test_a_partial_approval_holds_what_is_available_when_the_merchant_can_take_it(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 700})
    refused = await authorize(platform, card_id, 1_000)
    assert refused.decision_reason == "insufficient_funds"
    partial = await authorize(platform, card_id, 1_000, partial=True)
    assert (partial.status.value, partial.amount_minor) == ("pending", 700)
    assert partial.decision_reason == "partially_approved"
    balance = await wallet(platform, customer_id)
    assert (balance.available, balance.debits_pending) == (0, 700)


async def test_an_increment_grows_the_hold_and_reversals_give_it_back(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(platform)
    auth = await authorize(platform, card_id, 3_000)
    async with issuer(platform) as client:
        grown = await client.simulate_increment(
            auth.id, amount_minor=1_000, idempotency_key="inc" + auth.id
        )
        assert grown.pending_amount_minor == 4_000
        await wallet_becomes(platform, customer_id, posted=10_000, pending=4_000)
        await client.simulate_reversal(auth.id, amount_minor=1_500, idempotency_key="r1" + auth.id)
        await wallet_becomes(platform, customer_id, posted=10_000, pending=2_500)
        await client.simulate_reversal(auth.id, idempotency_key="r2" + auth.id)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)

    async def forgotten() -> bool:
        return auth.id not in (await card_state(handle)).authorizations

    await polling.eventually(forgotten, "the reversed authorization is done")
    assert await verify(platform.stack.pool) == []


async def test_closing_a_card_with_open_holds_is_refused(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(
        platform, policy=CardPolicy(closed_linger_seconds=1)
    )
    auth = await authorize(platform, card_id, 500)
    message = await refusal(handle.execute_update(CLOSE_UPDATE, CardStateChange(reason="x")))
    assert "open authorizations holding 500" in message
    async with issuer(platform) as client:
        await client.simulate_reversal(auth.id, idempotency_key="rv" + auth.id)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)

    async def closable() -> bool:
        return not (await card_state(handle)).authorizations

    await polling.eventually(closable, "no open authorization")
    await handle.execute_update(CLOSE_UPDATE, CardStateChange(reason="x"))
    assert await handle.result() == "closed"


async def test_a_late_decision_after_a_stand_in_decline_is_reconciled(platform: Platform) -> None:
    """The card's hold waits on a busy wallet past the gateway's budget: the
    gateway answers its stand-in decline, then the card decides anyway and
    holds. The issuer's webhook of the decline (held until then) undoes it."""
    customer_id, card_id, handle = await open_card(platform)
    await authorize(platform, card_id, 500)  # the card's accounts are open
    platform.app.state.settings = platform.settings.model_copy(
        update={"authorization_budget_ms": 300, "authorization_stand_in": "decline"}
    )
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    wallet_code = accounts.wallet(customer_id, "USD")
    async with balances_locked(platform.stack.database_url, wallet_code) as lock:
        asked = asyncio.ensure_future(authorize(platform, card_id, 2_000))
        await until_waiting(platform.stack.pool, lock)
        auth = await asked
    assert (auth.status.value, auth.decided_by.value) == ("declined", "cardflow")
    assert auth.decision_reason.startswith("stand-in decline")
    # The card's late approval holds, until the issuer's word reaches it.
    await wallet_becomes(platform, customer_id, posted=10_000, pending=2_500)
    platform.sim.admin("POST", "/webhooks/release", {"order": "forward"})
    await wallet_becomes(platform, customer_id, posted=10_000, pending=500)

    async def reconciled() -> bool:
        return auth.id not in (await card_state(handle)).authorizations

    await polling.eventually(reconciled, "the late approval is voided")
    assert await verify(platform.stack.pool) == []


async def test_a_stand_in_approval_is_held_as_the_issuer_approved_it(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(platform)
    platform.app.state.settings = platform.settings.model_copy(
        update={"authorization_budget_ms": 1, "authorization_stand_in": "approve"}
    )
    await handle.execute_update(LIMITS_UPDATE, SpendingLimits(blocked_mccs=["7995"]))
    auth = await authorize(platform, card_id, 2_000, merchant=CASINO)
    assert auth.status.value == "pending"  # the issuer approved on the gateway's stand-in
    # The card declined (blocked MCC), but the issuer's approval stands: held.
    await wallet_becomes(platform, customer_id, posted=10_000, pending=2_000)
    async with issuer(platform) as client:
        await client.simulate_clearing(auth.id, idempotency_key="sc" + auth.id)
    await wallet_becomes(platform, customer_id, posted=8000, pending=0)
    assert await verify(platform.stack.pool) == []


async def test_a_hold_expires_by_the_cards_timer(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(
        platform, policy=CardPolicy(hold_expiry_seconds=2)
    )
    auth = await authorize(platform, card_id, 1_200)
    assert auth.status.value == "pending"
    # The hold as the ledger keeps it, however soon the timer fires: the
    # ledger's own expiry lies a grace period past the card's timer.
    hold = await platform.stack.pool.fetchrow(
        "SELECT id, kind, amount_minor, created_at, expires_at FROM ledger_transfers"
        " WHERE idempotency_key = $1",
        f"{handle.id}/auth/{auth.id}/d0",
    )
    assert hold is not None, "the card never held the purchase"
    assert (hold["kind"], hold["amount_minor"]) == ("pending", 1_200)
    timer_at = hold["expires_at"] - HOLD_LEDGER_GRACE
    # The policy's 2 s, counted from the issuer's asking, a moment before the hold.
    assert timedelta(0) < timer_at - hold["created_at"] <= timedelta(seconds=2)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    released = await platform.stack.pool.fetchrow(
        "SELECT kind, created_at FROM ledger_transfers WHERE pending_id = $1", hold["id"]
    )
    # Voided by the card when its timer fired, not before and not by the ledger.
    assert released is not None and released["kind"] == "void_pending"
    assert released["created_at"] >= timer_at
    assert auth.id not in (await card_state(handle)).authorizations
    # A late presentment after expiry still settles, from the wallet.
    async with issuer(platform) as client:
        await client.simulate_clearing(auth.id, amount_minor=1_200, idempotency_key="late")
    await wallet_becomes(platform, customer_id, posted=8_800, pending=0)
    assert await verify(platform.stack.pool) == []


async def test_force_posts_and_refunds_move_the_wallet_once(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(platform)
    platform.sim.admin("POST", "/webhooks", {"duplicate": True})
    async with issuer(platform) as client:
        forced = await client.simulate_force_post(
            card_id=card_id,
            amount_minor=900,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="fp" + card_id,
        )
        await wallet_becomes(platform, customer_id, posted=9_100, pending=0)
        refund = await client.simulate_refund(
            card_id=card_id,
            amount_minor=400,
            currency=Currency.USD,
            merchant=SHOP,
            refunded_transaction_id=forced.id,
            idempotency_key="rf" + card_id,
        )
    await wallet_becomes(platform, customer_id, posted=9_500, pending=0)
    # Every copy handed over and applied: the money moved once all the same.
    await delivered_twice(platform, forced.id, refund.id)
    state = await applied_so_far(handle)
    assert {forced.id, refund.id} <= set(state.seen_events)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (9_500, 0)
    assert await verify(platform.stack.pool) == []


async def test_clearings_delivered_late_and_reversed_still_post_exactly(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    auth = await authorize(platform, card_id, 3_000)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=3_000)
    platform.sim.admin("POST", "/webhooks", {"hold": True, "duplicate": True})
    async with issuer(platform) as client:
        first = await client.simulate_clearing(auth.id, amount_minor=1_000, idempotency_key="o1")
        last = await client.simulate_clearing(
            auth.id, amount_minor=500, final=True, idempotency_key="o2"
        )
    platform.sim.admin("POST", "/webhooks/release", {"order": "reverse"})
    await wallet_becomes(platform, customer_id, posted=8_500, pending=0)
    # Every copy handed over and applied: nothing moved a second time.
    await delivered_twice(platform, first.id, last.id)
    state = await applied_so_far(handle)
    assert {first.id, last.id} <= set(state.seen_events)
    assert auth.id not in state.authorizations
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (8_500, 0)
    assert await verify(platform.stack.pool) == []


async def test_a_foreign_purchase_holds_the_billing_amount(platform: Platform) -> None:
    customer_id, card_id, _ = await open_card(platform)
    auth = await authorize(platform, card_id, 2_000, currency=Currency.EUR)
    assert auth.merchant_currency is Currency.EUR and auth.currency is Currency.USD
    # 20.00 EUR at the network's 1.08 USD per EUR: 21.60 USD, held as asked.
    assert (auth.merchant_amount_minor, auth.amount_minor) == (2_000, 2_160)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (10_000, 2_160)


async def test_concurrent_authorizations_on_one_card_never_overspend(platform: Platform) -> None:
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 5_000})
    results = await asyncio.gather(*(authorize(platform, card_id, 1_000) for _ in range(8)))
    approved = [r for r in results if r.status.value == "pending"]
    assert len(approved) == 5
    assert {r.decision_reason for r in results if r not in approved} == {"insufficient_funds"}
    balance = await wallet(platform, customer_id)
    assert (balance.available, balance.debits_pending) == (0, 5_000)
    assert await verify(platform.stack.pool) == []


async def test_a_cleared_purchase_earns_cashback_and_its_refund_claws_it_back(
    platform: Platform,
) -> None:
    from activities.cashback import CashbackStore
    from starters.cashback import SAMPLE_CAMPAIGNS_FILE, read_campaign_file
    from starters.cashback import status as cashback_status

    await CashbackStore(platform.stack.pool).load_campaigns(
        read_campaign_file(SAMPLE_CAMPAIGNS_FILE).campaigns
    )
    customer_id, card_id, _ = await open_card(platform)
    auth = await authorize(platform, card_id, 5_000)
    async with issuer(platform) as client:
        cleared = await client.simulate_clearing(
            auth.id, amount_minor=5_000, idempotency_key="cb" + auth.id
        )

    async def paid() -> bool:
        try:
            found = await cashback_status(platform.stack.client, cleared.id)
        except RPCError as error:
            if error.status is not RPCStatusCode.NOT_FOUND:
                raise
            return False
        return found.reward_minor > 0 and found.stage == "open for refunds"

    await polling.eventually(paid, "the cashback is paid")
    reward = (await cashback_status(platform.stack.client, cleared.id)).reward_minor
    # The sample campaigns pay 2% on groceries over 10.00.
    assert reward == 100
    await wallet_becomes(platform, customer_id, posted=10_000 - 5_000 + reward, pending=0)
    async with issuer(platform) as client:
        await client.simulate_refund(
            card_id=card_id,
            amount_minor=2_500,
            currency=Currency.USD,
            merchant=SHOP,
            refunded_transaction_id=cleared.id,
            idempotency_key="cbr" + card_id,
        )
    # Half refunded: half the reward clawed back.
    await wallet_becomes(platform, customer_id, posted=10_000 - 5_000 + 2_500 + 50, pending=0)
    assert await verify(platform.stack.pool) == []


async def test_an_advice_moves_the_hold_to_the_networks_amount(platform: Platform) -> None:
    customer_id, card_id, _ = await open_card(platform)
    auth = await authorize(platform, card_id, 1_000)
    async with issuer(platform) as client:
        await client.simulate_advice(
            auth.id, pending_amount_minor=600, idempotency_key="adv1" + auth.id
        )
        await wallet_becomes(platform, customer_id, posted=10_000, pending=600)
        await client.simulate_advice(
            auth.id, pending_amount_minor=800, idempotency_key="adv2" + auth.id
        )
        await wallet_becomes(platform, customer_id, posted=10_000, pending=800)
        await client.simulate_clearing(auth.id, idempotency_key="advc" + auth.id)
    await wallet_becomes(platform, customer_id, posted=9_200, pending=0)
    assert await verify(platform.stack.pool) == []


async def test_the_gateway_refuses_unsigned_and_malformed_real_time_requests(
    platform: Platform,
) -> None:
    import httpx
    from standardwebhooks import Webhook

    url = f"{platform.gateway_url}/realtime/issuer/authorization"
    async with httpx.AsyncClient() as http:
        unsigned = await http.post(url, content=b"{}", headers={"webhook-id": "x"})
        assert (unsigned.status_code, unsigned.json()["code"]) == (401, "invalid_signature")
        secret = platform.sim.secrets["issuer"]
        body = (
            '{"id": "evt_1", "type": "authorization.request", '
            '"created_at": "2026-03-01T12:00:00+00:00", '
            '"data": {"authorization_id": "a", "kind": "initial", "card_id": "c", '
            '"amount_minor": -5, "currency": "USD", "merchant_amount_minor": 1, '
            '"merchant_currency": "USD", "merchant": {"name": "m", "mcc": "5411", '
            '"country": "GB"}}}'
        )
        from datetime import UTC, datetime

        stamp = datetime.now(UTC)
        headers = {
            "webhook-id": "evt_1",
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": Webhook(secret).sign("evt_1", stamp, body),
        }
        malformed = await http.post(url, content=body, headers=headers)
        assert (malformed.status_code, malformed.json()["code"]) == (400, "malformed_event")
        assert malformed.json()["detail"][0]["loc"] == ["data", "amount_minor"]
        unknown = body.replace('"amount_minor": -5', '"amount_minor": 5')
        headers["webhook-signature"] = Webhook(secret).sign("evt_1", stamp, unknown)
        answer = await http.post(url, content=unknown, headers=headers)
        assert answer.status_code == 200
        assert answer.json()["decision"] == "decline"
        assert "not active" in answer.json()["reason"]


async def watched(handle: WorkflowHandle[Any, Any], done: asyncio.Event) -> None:
    """Query the card over and over, as an operator's screen does, until
    `done`: each query is asked once the last one is answered."""
    while not done.is_set():
        await card_state(handle)


async def test_open_holds_survive_continue_as_new_and_still_clear(platform: Platform) -> None:
    customer_id = await customer(platform)
    async with issuer(platform) as client:
        holder = await client.create_cardholder(
            first_name="Ada",
            last_name="Lovelace",
            email=f"{customer_id}@example.com",
            address=HOME,
            idempotency_key=f"holder-{customer_id}",
        )
        card = await client.create_card(
            cardholder_id=holder.id,
            card_type=CardType.VIRTUAL,
            currency=Currency.USD,
            idempotency_key=f"card-{customer_id}",
        )
    handle = await card_of_its_own(
        platform, customer_id, card_id=card.id, state=card.state, history_events_max=60
    )
    # An operator watches the card while it decides: a query that reaches the
    # worker as a decision's local activity ends can make the SDK hand the
    # activity's result to the card in a later workflow task than the one
    # recording it (CARD_LENGTH_AT_MESSAGES_PATCH).
    watching = asyncio.Event()
    watcher = asyncio.create_task(watched(handle, watching))
    try:
        first = await authorize(platform, card.id, 1_000)
        for _ in range(14):
            await authorize(platform, card.id, 100)
    finally:
        watching.set()
        await watcher
    await wallet_becomes(platform, customer_id, posted=10_000, pending=2_400)
    runs = [e async for e in platform.stack.client.list_workflows(f"WorkflowId = '{handle.id}'")]
    assert len(runs) > 1, "the card continued as new"
    async with issuer(platform) as client:
        await client.simulate_clearing(first.id, amount_minor=1_000, idempotency_key="can")
    await wallet_becomes(platform, customer_id, posted=9_000, pending=1_400)
    assert first.id not in (await card_state(handle)).authorizations
    assert await verify(platform.stack.pool) == []
    # Every run replays as a worker taking the card at any of its tasks replays it.
    failures = await unreplayable(platform.stack.client, handle.id)
    assert not failures, "\n".join(failures)


async def test_the_api_shows_a_card_and_writes_an_exception_off(platform: Platform) -> None:
    import httpx

    customer_id, card_id, handle = await open_card(
        platform, policy=CardPolicy(clearing_over_tolerance_bps=0)
    )
    auth = await authorize(platform, card_id, 1_000)
    async with httpx.AsyncClient(
        base_url=f"{platform.gateway_url}/v1", headers=platform.api_headers
    ) as api:
        shown = (await api.get(f"/cards/{card_id}")).json()
        held = [(a["authorization_id"], a["held_minor"]) for a in shown["authorizations"]]
        assert (held, shown["held_minor"]) == ([(auth.id, 1_000)], 1_000)
        async with issuer(platform) as client:
            await client.simulate_clearing(auth.id, amount_minor=1_100, idempotency_key="wo")
        await wallet_becomes(platform, customer_id, posted=9_000, pending=0)

        async def flagged() -> bool:
            return bool((await card_state(handle)).exceptions)

        await polling.eventually(flagged, "an exception")
        bad = await api.post(f"/cards/{card_id}/exceptions", json={"exception_id": "exc-1"})
        assert bad.status_code == 422
        done = await api.post(
            f"/cards/{card_id}/exceptions",
            json={"exception_id": "exc-1", "action": "write_off", "reason": "merchant error"},
        )
        assert done.status_code == 200, done.text
        assert done.json()["result"] == "write_off: merchant error"
    suspense = await Ledger(platform.stack.pool).balance(accounts.suspense_reconciliation("USD"))
    assert suspense.debits_posted == 100
    assert (await wallet(platform, customer_id)).posted == 9_000
    assert await verify(platform.stack.pool) == []


async def test_the_process_route_shows_a_cards_own_status(platform: Platform) -> None:
    import httpx

    _, card_id, _ = await open_card(platform)
    auth = await authorize(platform, card_id, 700)
    async with httpx.AsyncClient(
        base_url=f"{platform.gateway_url}/v1", headers=platform.api_headers
    ) as api:
        shown = (await api.get(f"/processes/{card_workflow_id(card_id)}")).json()
    assert (shown["workflow_type"], shown["status"], shown["stage"]) == ("Card", "RUNNING", "open")
    authorized = [
        (a["authorization_id"], a["authorized_minor"]) for a in shown["details"]["authorizations"]
    ]
    assert authorized == [(auth.id, 700)]


async def test_the_simulate_commands_drive_a_purchase_and_refuse_bad_input(
    platform: Platform, tmp_path: Path
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    env = {
        **os.environ,
        "CARDFLOW_PROVIDERS_URL": platform.sim.url,
        "CARDFLOW_HOME": str(tmp_path),
    }

    async def cardflow(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "starters.cli", "simulate", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    bad = await cardflow("authorize", card_id, "100", "--mcc", "12")
    assert bad.returncode == 2 and "--mcc" in bad.stderr
    bought = await cardflow("authorize", card_id, "700")
    assert bought.returncode == 0, bought.stderr
    authorization = Authorization.model_validate_json(bought.stdout)
    assert authorization.status.value == "pending"
    await wallet_becomes(platform, customer_id, posted=10_000, pending=700)
    cleared = await cardflow("clear", authorization.id, "--amount", "500", "--final")
    assert cleared.returncode == 0, cleared.stderr
    await wallet_becomes(platform, customer_id, posted=9_500, pending=0)
    again = await cardflow("clear", authorization.id)
    # The issuer refuses a clearing of a settled authorization; the command says so.
    assert again.returncode == 1 and "refused" in again.stderr


async def test_a_charge_the_wallet_cannot_pay_stays_open_and_succeeds_once_it_can(
    platform: Platform,
) -> None:
    """The operator charges an exception to a wallet that cannot pay it: the
    charge is refused, the exception stays open and nothing moves. Once the
    customer has topped up, the operator's next charge goes through, once."""
    customer_id, card_id, handle = await open_card(
        platform, {Currency.USD: 1_200}, policy=CardPolicy(clearing_over_tolerance_bps=0)
    )
    over = await authorize(platform, card_id, 1_000)
    async with issuer(platform) as client:
        await client.simulate_clearing(over.id, amount_minor=1_500, idempotency_key="c1")
    await wallet_becomes(platform, customer_id, posted=200, pending=0)

    async def flagged() -> bool:
        return any(e.resolution is None for e in (await card_state(handle)).exceptions)

    await polling.eventually(flagged, "an exception for an operator")
    exception = (await card_state(handle)).exceptions[0]
    assert (exception.kind, exception.amount_minor) == ("over_tolerance", 500)
    charge = ExceptionDecision(exception_id=exception.id, action="charge", reason="receipt")
    refused = await handle.execute_update(RESOLVE_EXCEPTION_UPDATE, charge, result_type=str)
    assert refused.startswith("not charged:") and "exception stays open" in refused
    assert (await card_state(handle)).exceptions[0].resolution is None
    await wallet_becomes(platform, customer_id, posted=200, pending=0)
    # The customer tops up; the same decision now settles it.
    ledger = Ledger(platform.stack.pool)
    topped = await ledger.transfer(
        TransferRequest(
            key=f"topup-{customer_id}",
            debit=accounts.bank_inbound("USD"),
            credit=accounts.wallet(customer_id, "USD"),
            amount_minor=1_000,
            currency=Currency.USD,
        )
    )
    assert topped.accepted
    charged = await handle.execute_update(RESOLVE_EXCEPTION_UPDATE, charge, result_type=str)
    assert charged == "charge: receipt"
    await wallet_becomes(platform, customer_id, posted=700, pending=0)
    # Charged once: the decision again is refused, the wallet untouched.
    assert "not an open exception" in await refusal(
        handle.execute_update(RESOLVE_EXCEPTION_UPDATE, charge)
    )
    await wallet_becomes(platform, customer_id, posted=700, pending=0)
    assert await verify(platform.stack.pool) == []
