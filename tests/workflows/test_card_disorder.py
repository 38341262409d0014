"""The card's money under crashes and late, repeated and reordered issuer events.

Each test drives the disorder the way it happens: a worker dies right after
a hold committed (an injected workflow-task failure), webhooks are held and
released in reverse, an event is sent again after the card has applied
hundreds of others, a refund arrives after the card was closed and its
process ended. The money must come out exact every time: what the issuer
holds is held once, what it settles is posted once, and the card runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)

from activities.card_tiers import HOLD_WITHIN_TIER
from activities.card_transactions import CLAIM_CARD_EVENT
from activities.ledger import Ledger
from activities.ledger.activities import RESOLVE_HOLD
from activities.ledger.verify import verify
from schemas import accounts
from schemas.cards import (
    AuthorizationAnswer,
    AuthorizationRequest,
    CardNetworkEvent,
    CardPolicy,
    CardStateChange,
    ExceptionDecision,
    SpendingLimits,
)
from schemas.cards import Merchant as CardMerchant
from schemas.issuer import Authorization as IssuerAuthorization
from schemas.issuer import AuthorizationStatus, DecidedBy
from schemas.ledger import HoldRequest, TransferRequest
from schemas.money import Currency
from tests import polling
from tests.conftest import Platform
from tests.customers import (
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
from tests.interruptions import (
    balances_locked,
    table_locked,
    until_activity_cancel_requested,
    until_admitted,
    until_waiting,
)
from workers.build import guarded_replayer
from workflows.card_ledger import HOLD_LEDGER_GRACE
from workflows.cards import (
    AUTHORIZE_UPDATE,
    CLOSE_UPDATE,
    LIMITS_UPDATE,
    NETWORK_EVENT_SIGNAL,
    RESOLVE_EXCEPTION_UPDATE,
    card_workflow_id,
)
from workflows.catalog import ALL_WORKFLOWS

# The card's own memory of issuer events by id; a repeat after this many is
# caught only by what is durable.
EVENTS_TO_FORGET = 520


async def held_by_card(handle: WorkflowHandle[Any, Any]) -> int:
    state = await card_state(handle)
    return sum(record.held_minor for record in state.authorizations.values())


async def running(handle: WorkflowHandle[Any, Any]) -> bool:
    return (await handle.describe()).status is WorkflowExecutionStatus.RUNNING


async def after_signal(
    platform: Platform, handle: WorkflowHandle[Any, Any], event_id: str
) -> list[str]:
    """The types of the events recorded after the network event `event_id`
    was signalled to the workflow."""
    converter = platform.stack.client.data_converter  # the history's payloads are encrypted
    after: list[str] | None = None
    async for event in handle.fetch_history_events():
        if after is not None:
            after.append(EventType.Name(event.event_type))
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            payloads = event.workflow_execution_signaled_event_attributes.input.payloads
            if any(
                isinstance(value, dict) and value.get("event_id") == event_id
                for value in await converter.decode(list(payloads))
            ):
                after = []
    assert after is not None, f"no signal carried {event_id}"
    return after


async def work_after_signal(
    platform: Platform, handle: WorkflowHandle[Any, Any], event_id: str
) -> list[str]:
    """The activities and markers the workflow recorded after the network
    event `event_id` was signalled to it."""
    work = {"EVENT_TYPE_ACTIVITY_TASK_SCHEDULED", "EVENT_TYPE_MARKER_RECORDED"}
    return [kind for kind in await after_signal(platform, handle, event_id) if kind in work]


async def taken_in(handle: WorkflowHandle[Any, Any], *subject_ids: str) -> None:
    """Until the card has finished applying the issuer's events on `subject_ids`."""

    async def remembered() -> bool:
        seen = (await card_state(handle)).seen_events
        return all(subject in seen for subject in subject_ids)

    await polling.eventually(remembered, f"the card took in {', '.join(subject_ids)}")


async def scheduled(handle: WorkflowHandle[Any, Any], activity: str) -> int:
    """How many times the workflow scheduled `activity`."""
    found = 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            found += event.activity_task_scheduled_event_attributes.activity_type.name == activity
    return found


async def signal_taken(platform: Platform, handle: WorkflowHandle[Any, Any], event_id: str) -> None:
    """Until a workflow task completed after the signal carrying `event_id`:
    its handler ran as far as it could."""

    async def completed_after() -> bool:
        return "EVENT_TYPE_WORKFLOW_TASK_COMPLETED" in await after_signal(
            platform, handle, event_id
        )

    await polling.eventually(completed_after, f"a workflow task took in {event_id}")


async def settles_as(
    platform: Platform, customer_id: str, handle: WorkflowHandle[Any, Any], pending: int
) -> None:
    """The wallet's pending debits, the card's holds and `pending` all agree."""

    async def agree() -> bool:
        balance = await wallet(platform, customer_id)
        return balance.debits_pending == pending == await held_by_card(handle)

    try:
        await polling.eventually(agree, f"ledger and card hold {pending}")
    except AssertionError:
        balance = await wallet(platform, customer_id)
        held = await held_by_card(handle)
        raise AssertionError(
            f"the issuer holds {pending}, the ledger {balance.debits_pending}, the card {held}"
        ) from None


def question_to(handle: WorkflowHandle[Any, Any], request_id: str) -> AuthorizationRequest:
    """A hotel's first ask of 1,000 to a card of its own, as the gateway sends it."""
    return AuthorizationRequest(
        authorization_id=f"auth_{uuid.uuid4().hex[:10]}",
        kind="initial",
        card_id=handle.id.removeprefix("card/"),
        amount_minor=1_000,
        currency=Currency.USD,
        merchant_amount_minor=1_000,
        merchant_currency=Currency.USD,
        merchant=CardMerchant(name="Hotel", mcc="7011", country="GB"),
        requested_at=datetime.now(UTC),
        request_id=request_id,
    )


# A decision whose workflow task is killed and retried takes two tasks; the
# issuer waits this long and the gateway answers within the second figure,
# so the card's own answer, not the machine's speed, is what these tests see.
PATIENT_ISSUER_DEADLINE_MS = 20_000
PATIENT_GATEWAY_BUDGET_MS = 15_000


def patient_issuer(platform: Platform) -> None:
    platform.sim.admin(
        "PUT", "/options/issuer", {"authorization_deadline_ms": PATIENT_ISSUER_DEADLINE_MS}
    )
    platform.app.state.settings = platform.settings.model_copy(
        update={"authorization_budget_ms": PATIENT_GATEWAY_BUDGET_MS}
    )


async def test_a_worker_killed_after_the_hold_committed_holds_once_what_the_issuer_approved(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    patient_issuer(platform)
    # A first purchase: the card's accounts are open, so the next decision
    # runs whole inside the workflow task that takes the question.
    first = await authorize(platform, card_id, 1_000)
    platform.stack.faults.fail_after_local_activity(HOLD_WITHIN_TIER, times=1)
    auth = await authorize(platform, card_id, 2_500)
    assert platform.stack.faults.injected == [f"local_activity {HOLD_WITHIN_TIER}"]
    async with issuer(platform) as client:
        seen = await client.get_authorization(auth.id)
    # What the issuer decided, the ledger holds exactly, once, and the card
    # knows every unit of it.
    await settles_as(platform, customer_id, handle, 1_000 + seen.pending_amount_minor)
    assert seen.pending_amount_minor == 2_500, seen.decision_reason
    async with issuer(platform) as client:
        await client.simulate_clearing(auth.id, amount_minor=2_500, final=True, idempotency_key="k")
        await client.simulate_reversal(first.id, idempotency_key="rv")
    await wallet_becomes(platform, customer_id, posted=7_500, pending=0)
    assert await running(handle)
    assert await verify(platform.stack.pool) == []


async def test_a_worker_killed_after_a_partial_hold_committed_holds_it_once(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform, {Currency.USD: 1_500})
    patient_issuer(platform)
    await authorize(platform, card_id, 500)
    # The full amount is refused, the partial hold commits, the worker dies.
    platform.stack.faults.fail_after_local_activity(HOLD_WITHIN_TIER, times=2)
    auth = await authorize(platform, card_id, 1_600, partial=True)
    async with issuer(platform) as client:
        seen = await client.get_authorization(auth.id)
    await settles_as(platform, customer_id, handle, 500 + seen.pending_amount_minor)
    assert seen.pending_amount_minor == 1_000, seen.decision_reason
    assert await verify(platform.stack.pool) == []


async def test_a_late_increment_webhook_never_reopens_a_cleared_authorization(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    auth = await authorize(platform, card_id, 1_000)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=1_000)
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    async with issuer(platform) as client:
        await client.simulate_increment(auth.id, amount_minor=500, idempotency_key="inc")
        await client.simulate_clearing(auth.id, amount_minor=1_500, final=True, idempotency_key="c")
    # The clearing arrives first, the increment's snapshot after it.
    platform.sim.admin("POST", "/webhooks/release", {"order": "reverse"})
    await wallet_becomes(platform, customer_id, posted=8_500, pending=0)
    increments = [
        delivery["event_id"]
        for delivery in platform.sim.admin("GET", "/webhooks")
        if delivery["type"] == "authorization.incremented"
    ]
    assert len(increments) == 1

    async def increment_taken_in() -> bool:
        return increments[0] in (await card_state(handle)).seen_events

    await polling.eventually(increment_taken_in, "the card takes the late increment")
    await wallet_becomes(platform, customer_id, posted=8_500, pending=0)
    assert auth.id not in (await card_state(handle)).authorizations
    # Finished stays finished, even when the same snapshot comes again much later.
    async with issuer(platform) as client:
        snapshot = await client.get_authorization(auth.id)
    stale = snapshot.model_copy(
        update={
            "status": AuthorizationStatus.PENDING,
            "pending_amount_minor": 1_500,
            "history": snapshot.history[:2],
        }
    )
    await handle.signal(
        NETWORK_EVENT_SIGNAL,
        CardNetworkEvent(event_id="late-1", type="authorization.incremented", authorization=stale),
    )

    async def taken_in() -> bool:
        return "late-1" in (await card_state(handle)).seen_events

    await polling.eventually(taken_in, "the card takes the late snapshot")
    await wallet_becomes(platform, customer_id, posted=8_500, pending=0)
    assert await running(handle)
    assert await verify(platform.stack.pool) == []


async def test_a_clearing_sent_again_after_the_card_forgot_it_moves_no_money(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    auth = await authorize(platform, card_id, 1_000)
    async with issuer(platform) as client:
        cleared = await client.simulate_clearing(
            auth.id, amount_minor=1_000, final=True, idempotency_key="c"
        )
        refund = await client.simulate_refund(
            card_id=card_id,
            amount_minor=300,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="r",
        )
        expired = await client.get_authorization(auth.id)
    await wallet_becomes(platform, customer_id, posted=9_300, pending=0)
    # Hundreds of other events later (the finished authorization's last
    # snapshot, sent again and again), the issuer sends the clearing and the
    # refund again.
    for n in range(EVENTS_TO_FORGET):
        await handle.signal(
            NETWORK_EVENT_SIGNAL,
            CardNetworkEvent(
                event_id=f"e-{n}", type="authorization.expired", authorization=expired
            ),
        )
    for event in (
        CardNetworkEvent(event_id="again-1", type="transaction.cleared", transaction=cleared),
        CardNetworkEvent(event_id="again-2", type="transaction.refunded", transaction=refund),
    ):
        await handle.signal(NETWORK_EVENT_SIGNAL, event)

    async def applied_everything() -> bool:
        state = await card_state(handle)
        return refund.id in state.seen_events[-2:]

    await polling.eventually(applied_everything, "the card takes every event")
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (9_300, 0)
    assert await running(handle)
    assert await verify(platform.stack.pool) == []


async def test_a_ledger_conflict_never_fails_the_card(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(platform)
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    async with issuer(platform) as client:
        refund = await client.simulate_refund(
            card_id=card_id,
            amount_minor=400,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="r",
        )
    # Something else already used the key the card derives for this refund,
    # with another payload: the card must not fail for it.
    ledger = Ledger(platform.stack.pool)
    await ledger.transfer(
        TransferRequest(
            key=f"{card_workflow_id(card_id)}/refund/{refund.id}",
            debit=accounts.issuer_settlement("USD"),
            credit=accounts.wallet(customer_id, "USD"),
            amount_minor=1,
            currency=Currency.USD,
        )
    )
    platform.sim.admin("POST", "/webhooks/release", {"order": "forward"})

    async def flagged() -> bool:
        return bool((await card_state(handle)).exceptions)

    await polling.eventually(flagged, "an exception for an operator")
    assert await running(handle)
    # The card still decides.
    auth = await authorize(platform, card_id, 500)
    assert auth.status.value == "pending"
    assert await verify(platform.stack.pool) == []


async def test_a_refund_after_the_card_was_closed_reaches_the_wallet(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(platform)
    await handle.execute_update(CLOSE_UPDATE, CardStateChange(reason="customer left"))
    async with issuer(platform) as client:
        await client.simulate_refund(
            card_id=card_id,
            amount_minor=700,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="late-refund",
        )
    await wallet_becomes(platform, customer_id, posted=10_700, pending=0)
    assert await verify(platform.stack.pool) == []


async def test_money_after_the_cards_process_ended_starts_it_again(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(
        platform, policy=CardPolicy(closed_linger_seconds=1)
    )
    await handle.execute_update(CLOSE_UPDATE, CardStateChange(reason="customer left"))
    assert await handle.result() == "closed"
    async with issuer(platform) as client:
        refund = await client.simulate_refund(
            card_id=card_id,
            amount_minor=700,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="late-refund",
        )
        forced = await client.simulate_force_post(
            card_id=card_id,
            amount_minor=200,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="late-force",
        )
    await wallet_becomes(platform, customer_id, posted=10_500, pending=0)
    again = platform.stack.client.get_workflow_handle(card_workflow_id(card_id))
    # The money is posted before the card has recorded it: the repeats follow
    # the card's own work on the late events, not some of it.
    await taken_in(again, refund.id, forced.id)
    # The same money sent again to the process that took it: applied once.
    for n, transaction in enumerate((refund, forced)):
        kind = "transaction.refunded" if transaction is refund else "transaction.force_posted"
        event = CardNetworkEvent(event_id=f"again-{n}", type=kind, transaction=transaction)
        # The restarted process stays (the default window), so this reaches it.
        await again.signal(NETWORK_EVENT_SIGNAL, event)
    # A query answers after every signal sent before it was handled; nothing
    # the repeats started (an activity, a local activity's marker) may follow.
    await card_state(again)
    assert await work_after_signal(platform, again, "again-0") == []
    assert (await wallet(platform, customer_id)).posted == 10_500
    assert await verify(platform.stack.pool) == []


async def test_an_event_sent_again_while_the_card_applies_it_asks_nothing(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    async with table_locked(platform.stack.database_url, "card_transactions") as lock:
        async with issuer(platform) as client:
            forced = await client.simulate_force_post(
                card_id=card_id,
                amount_minor=200,
                currency=Currency.USD,
                merchant=SHOP,
                idempotency_key=f"force-{uuid.uuid4().hex}",
            )
        # Posted; the card, still applying the event, waits to record it.
        await until_waiting(platform.stack.pool, lock)
        repeat = CardNetworkEvent(
            event_id="again", type="transaction.force_posted", transaction=forced
        )
        await handle.signal(NETWORK_EVENT_SIGNAL, repeat)
        await signal_taken(platform, handle, "again")
    await taken_in(handle, forced.id)
    await card_state(handle)  # every signal before this query handled
    # The repeat waited for the first application and then knew the event:
    # one claim of the issuer's id, not a second round trip to be refused.
    assert await scheduled(handle, CLAIM_CARD_EVENT) == 1
    assert (await wallet(platform, customer_id)).posted == 9_800
    assert await verify(platform.stack.pool) == []


async def test_a_card_never_ends_with_an_open_exception(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(
        platform, policy=CardPolicy(clearing_over_tolerance_bps=0, closed_linger_seconds=1)
    )
    auth = await authorize(platform, card_id, 1_000)
    async with issuer(platform) as client:
        await client.simulate_clearing(
            auth.id, amount_minor=1_200, final=True, idempotency_key=f"c-{uuid.uuid4().hex}"
        )

    async def flagged() -> bool:
        return bool((await card_state(handle)).exceptions)

    await polling.eventually(flagged, "an exception for an operator")
    await handle.execute_update(CLOSE_UPDATE, CardStateChange(reason="customer left"))
    await asyncio.sleep(2.0)  # past the linger: only the open exception keeps it
    assert await running(handle)
    resolved = await handle.execute_update(
        RESOLVE_EXCEPTION_UPDATE,
        ExceptionDecision(exception_id="exc-1", action="charge", reason="tip"),
        result_type=str,
    )
    assert resolved.startswith("charge")
    assert await handle.result() == "closed"
    assert (await wallet(platform, customer_id)).posted == 8_800
    assert await verify(platform.stack.pool) == []


async def test_a_request_sent_again_after_the_card_continued_as_new_gets_its_first_answer(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: 10_000})
    handle = await card_of_its_own(platform, customer_id, history_events_max=50)
    asked = question_to(handle, "evt-1")
    await handle.execute_update(AUTHORIZE_UPDATE, asked, id="a-1")
    increment = asked.model_copy(
        update={"kind": "incremental", "amount_minor": 300, "request_id": "evt-2"}
    )
    first = await handle.execute_update(
        AUTHORIZE_UPDATE, increment, id="a-2", result_type=AuthorizationAnswer
    )
    assert (first.decision, first.approved_amount_minor) == ("approve", 300)
    started = (await handle.describe()).run_id
    while (await platform.stack.client.get_workflow_handle(handle.id).describe()).run_id == started:
        await handle.execute_update(LIMITS_UPDATE, SpendingLimits())
    # The issuer sends the increment again; Temporal's update ids are per run.
    again = await handle.execute_update(
        AUTHORIZE_UPDATE, increment, id="a-2-again", result_type=AuthorizationAnswer
    )
    assert again == first
    await wallet_becomes(platform, customer_id, posted=10_000, pending=1_300)
    assert await verify(platform.stack.pool) == []


async def test_an_ask_the_ledger_refuses_outright_leaves_no_trace_and_the_next_is_decided(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: 10_000})
    handle = await card_of_its_own(
        platform, customer_id, limits=SpendingLimits(per_day_minor=2_500)
    )
    asked = question_to(handle, "evt-1")
    # The key this ask's hold takes is already used with another payload.
    await Ledger(platform.stack.pool).transfer(
        TransferRequest(
            key=f"{handle.id}/auth/{asked.authorization_id}/d0",
            debit=accounts.issuer_settlement("USD"),
            credit=accounts.wallet(customer_id, "USD"),
            amount_minor=1,
            currency=Currency.USD,
        )
    )
    try:
        await handle.execute_update(AUTHORIZE_UPDATE, asked, id="a-1")
    except WorkflowUpdateFailedError as error:
        assert "IdempotencyConflict" in str(error.cause) or error.cause is not None
    else:
        raise AssertionError("the ask was not refused")
    state = await card_state(handle)
    # Nothing counted against the day's limit, no empty record left behind.
    assert (state.spent_day_minor, state.authorizations) == (0, {})
    other = asked.model_copy(
        update={"authorization_id": f"auth_{uuid.uuid4().hex[:10]}", "request_id": "evt-2"}
    )
    answer = await asyncio.wait_for(
        handle.execute_update(AUTHORIZE_UPDATE, other, id="a-2", result_type=AuthorizationAnswer),
        timeout=10,
    )
    assert (answer.decision, answer.approved_amount_minor) == ("approve", 1_000)
    # And the refused one, asked again, is refused again at once: it does not
    # wait forever for the first ask's decision that never came.
    with pytest.raises(WorkflowUpdateFailedError):
        await asyncio.wait_for(handle.execute_update(AUTHORIZE_UPDATE, asked, id="a-3"), 10)
    assert (await card_state(handle)).spent_day_minor == 1_000
    assert await running(handle)


async def test_a_ledger_conflict_on_a_hold_for_the_issuer_never_fails_the_card(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    auth = await authorize(platform, card_id, 500)
    async with issuer(platform) as client:
        snapshot = await client.get_authorization(auth.id)
    # The issuer's stand-in approved an authorization the card never saw; the
    # key of the card's hold for it is already used with another payload.
    stand_in = snapshot.decisions[0].model_copy(
        update={"decided_by": DecidedBy.STAND_IN, "reason": "stand-in approve"}
    )
    unseen = snapshot.model_copy(
        update={"id": f"auth_x{uuid.uuid4().hex[:8]}", "decisions": [stand_in]}
    )
    await Ledger(platform.stack.pool).transfer(
        TransferRequest(
            key=f"{card_workflow_id(card_id)}/auth/{unseen.id}/d0/issuer",
            debit=accounts.issuer_settlement("USD"),
            credit=accounts.wallet(customer_id, "USD"),
            amount_minor=1,
            currency=Currency.USD,
        )
    )
    await handle.signal(
        NETWORK_EVENT_SIGNAL,
        CardNetworkEvent(event_id="unseen", type="authorization.created", authorization=unseen),
    )

    async def flagged() -> bool:
        return any(e.kind == "ledger_conflict" for e in (await card_state(handle)).exceptions)

    await polling.eventually(flagged, "a ledger_conflict exception for an operator")
    assert await running(handle)
    assert (await authorize(platform, card_id, 300)).status.value == "pending"


async def test_a_card_cancelled_while_it_posts_is_cancelled_not_a_ledger_conflict(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    await authorize(platform, card_id, 100)  # the card's accounts are open
    async with issuer(platform) as client:
        refund = await client.get_transaction(
            (
                await client.simulate_refund(
                    card_id=card_id,
                    amount_minor=400,
                    currency=Currency.USD,
                    merchant=SHOP,
                    idempotency_key="r",
                )
            ).id
        )
    await wallet_becomes(platform, customer_id, posted=10_400, pending=100)
    wallet_code = accounts.wallet(customer_id, "USD")
    async with balances_locked(platform.stack.database_url, wallet_code) as lock:
        again = refund.model_copy(update={"id": f"{refund.id}-b"})
        await handle.signal(
            NETWORK_EVENT_SIGNAL,
            CardNetworkEvent(event_id="b", type="transaction.refunded", transaction=again),
        )
        await until_waiting(platform.stack.pool, lock)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED


def issuer_dies_before_recording(platform: Platform) -> None:
    """The issuer's process will exit the moment it has the card's next answer."""
    platform.sim.admin("PUT", "/options/issuer", {"die_before_recording_decision": True})


def issuer_starts_again(platform: Platform) -> None:
    assert platform.sim.process is not None
    platform.sim.process.wait(timeout=30)
    platform.sim.process = None
    platform.sim.start()


async def test_an_issuer_that_died_before_recording_an_approval_declines_it_and_nothing_stays_held(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    issuer_dies_before_recording(platform)
    with pytest.raises(Exception):  # noqa: B017 - the connection dies with the issuer
        await authorize(platform, card_id, 2_500)
    # The card approved and held; the issuer never recorded it.
    assert (await wallet(platform, customer_id)).debits_pending == 2_500
    issuer_starts_again(platform)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    assert await held_by_card(handle) == 0
    async with issuer(platform) as client:
        page = await client.list_authorizations(card_id)
    assert [(a.status, a.pending_amount_minor) for a in page.data] == [
        (AuthorizationStatus.DECLINED, 0)
    ]
    assert await running(handle)
    assert await verify(platform.stack.pool) == []


async def test_an_issuer_that_died_before_recording_an_increment_declines_it(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    first = await authorize(platform, card_id, 1_000)
    issuer_dies_before_recording(platform)
    with pytest.raises(Exception):  # noqa: B017 - the connection dies with the issuer
        async with issuer(platform) as client:
            await client.simulate_increment(first.id, amount_minor=700, idempotency_key="inc")
    assert (await wallet(platform, customer_id)).debits_pending == 1_700
    issuer_starts_again(platform)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=1_000)
    async with issuer(platform) as client:
        seen = await client.get_authorization(first.id)
    assert seen.pending_amount_minor == 1_000
    assert [d.outcome.value for d in seen.decisions] == ["approve", "decline"]
    assert await held_by_card(handle) == 1_000
    assert await verify(platform.stack.pool) == []


async def test_an_increment_approved_after_the_issuer_declined_it_is_released_behind_a_reversal(
    platform: Platform,
) -> None:
    """The issuer reverses half an authorization (its webhook delayed), then
    asks for an increment; the card's answer comes after the issuer's
    deadline (its hold waits on the wallet), so the issuer declines it by
    stand-in while the card holds it. The reversal, older than the increment,
    arrives first, then the decline: the card must end holding what the issuer
    holds, whichever of its holds the reversal gave back."""
    customer_id, card_id, handle = await open_card(platform)
    first = await authorize(platform, card_id, 3_000)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=3_000)
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    async with issuer(platform) as client:
        await client.simulate_reversal(first.id, amount_minor=1_500, idempotency_key="rev")
    platform.sim.admin("PUT", "/options/issuer", {"authorization_deadline_ms": 300})
    wallet_code = accounts.wallet(customer_id, "USD")
    async with balances_locked(platform.stack.database_url, wallet_code) as lock:
        async with issuer(platform) as client:
            declined = await client.simulate_increment(
                first.id, amount_minor=800, idempotency_key="inc"
            )
        assert [d.decided_by for d in declined.decisions] == [
            DecidedBy.CARDFLOW,
            DecidedBy.STAND_IN,
        ]
        assert declined.pending_amount_minor == 1_500
        await until_waiting(platform.stack.pool, lock)
    # The card's late answer: it holds the increment the issuer declined.
    await wallet_becomes(platform, customer_id, posted=10_000, pending=3_800)
    platform.sim.admin("POST", "/webhooks/release", {"order": "forward"})
    await settles_as(platform, customer_id, handle, 1_500)
    assert await running(handle)
    assert await verify(platform.stack.pool) == []


async def replays(platform: Platform, handle: WorkflowHandle[Any, Any]) -> Exception | None:
    """What replaying the card's whole history on a fresh worker fails with:
    a worker that takes the card after a restart does exactly this."""
    replayer = guarded_replayer(list(ALL_WORKFLOWS), platform.stack.client.data_converter)
    result = await replayer.replay_workflow(
        await handle.fetch_history(), raise_on_replay_failure=False
    )
    return result.replay_failure


ACTIVITY_COMPLETED = "EVENT_TYPE_ACTIVITY_TASK_COMPLETED"
WORKFLOW_TASK = "EVENT_TYPE_WORKFLOW_TASK_"
WORKFLOW_TASK_SCHEDULED = "EVENT_TYPE_WORKFLOW_TASK_SCHEDULED"
# What follows an activity's completion taken in by a workflow task that
# recorded nothing: the task, scheduled for the completion; or, when a task
# was already scheduled (for a signal not yet taken in), that task, which the
# completion joined before it started.
TAKEN_IN_BY_A_TASK_THAT_RECORDED_NOTHING = (
    [
        "EVENT_TYPE_WORKFLOW_TASK_SCHEDULED",
        "EVENT_TYPE_WORKFLOW_TASK_STARTED",
        "EVENT_TYPE_WORKFLOW_TASK_COMPLETED",
    ],
    ["EVENT_TYPE_WORKFLOW_TASK_STARTED", "EVENT_TYPE_WORKFLOW_TASK_COMPLETED"],
)


async def release_completed_after_the_next_task_was_scheduled(
    handle: WorkflowHandle[Any, Any],
) -> bool:
    """Whether the card's last activity completion came while a workflow task
    was scheduled and not yet started."""
    events = [EventType.Name(event.event_type) async for event in handle.fetch_history_events()]
    completions = [i for i, kind in enumerate(events) if kind == ACTIVITY_COMPLETED]
    if not completions:
        return False
    before = [kind for kind in events[: completions[-1]] if kind.startswith(WORKFLOW_TASK)]
    return bool(before) and before[-1] == WORKFLOW_TASK_SCHEDULED


async def after_the_last_completion(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The card's history after its last activity completion, by event type."""
    events = [event async for event in handle.fetch_history_events()]
    completed = max(
        i
        for i, event in enumerate(events)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    )
    return [EventType.Name(event.event_type) for event in events[completed + 1 :]]


async def test_an_authorization_taken_by_a_restarted_worker_replays_in_the_order_it_ran(
    platform: Platform,
) -> None:
    """A hold's release waits on the ledger while the next issuer event queues
    behind it; the release completes in a workflow task that records nothing.
    A worker that then takes the card without it in memory (restarted, or its
    task failed) gets that completion together with the next authorization
    (the SDK hands both in one activation, the authorization first). The
    card's decision must come out in the same order whichever way the work
    was batched, or the next worker to replay the card finds its history
    non-deterministic and the card stops answering."""
    customer_id, card_id, handle = await open_card(platform)
    patient_issuer(platform)
    first = await authorize(platform, card_id, 1_000)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=1_000)
    # Only this test's own events reach the card, when it sends them.
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    async with issuer(platform) as client:
        await client.simulate_reversal(first.id, idempotency_key="rev")
        reversed_ = await client.get_authorization(first.id)
    wallet_code = accounts.wallet(customer_id, "USD")
    async with balances_locked(platform.stack.database_url, wallet_code) as lock:
        await handle.signal(
            NETWORK_EVENT_SIGNAL,
            CardNetworkEvent(
                event_id="e-1", type="authorization.reversed", authorization=reversed_
            ),
        )
        await until_waiting(platform.stack.pool, lock)
        await handle.signal(
            NETWORK_EVENT_SIGNAL,
            CardNetworkEvent(
                event_id="e-2", type="authorization.reversed", authorization=reversed_
            ),
        )

    async def both_applied() -> bool:
        return "e-2" in (await card_state(handle)).seen_events

    await polling.eventually(both_applied, "the card applies both events")
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    # The release's completion was taken in by a task that recorded nothing.
    assert await after_the_last_completion(handle) in TAKEN_IN_BY_A_TASK_THAT_RECORDED_NOTHING
    # The next authorization's task fails after its hold (a worker killed):
    # the retry replays the card from its start.
    platform.stack.faults.fail_after_update(AUTHORIZE_UPDATE)
    second = await authorize(platform, card_id, 2_000)
    assert [d.decided_by for d in second.decisions] == [DecidedBy.CARDFLOW]
    assert await replays(platform, handle) is None
    # And the card goes on answering through the next restart.
    platform.stack.faults.fail_after_update(AUTHORIZE_UPDATE)
    third = await authorize(platform, card_id, 500)
    assert [d.decided_by for d in third.decisions] == [DecidedBy.CARDFLOW]
    assert platform.stack.faults.injected == [f"update {AUTHORIZE_UPDATE}"] * 2
    await settles_as(platform, customer_id, handle, 2_500)
    assert await replays(platform, handle) is None
    assert await running(handle)
    assert await verify(platform.stack.pool) == []


async def holding_a_first_purchase(
    platform: Platform,
) -> tuple[str, WorkflowHandle[Any, Any], IssuerAuthorization]:
    """A funded card holding a first purchase of 1,000 (its accounts open):
    the customer, the card and the issuer's record of that purchase, a
    template for the issuer's snapshots of the next one."""
    customer_id, card_id, handle = await open_card(platform)
    first = await authorize(platform, card_id, 1_000)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=1_000)
    async with issuer(platform) as client:
        return customer_id, handle, await client.get_authorization(first.id)


STAND_IN_DECLINE = "stand-in decline: no decision within the budget"


def stood_in_for(
    template: IssuerAuthorization, question: AuthorizationRequest, approved_minor: int
) -> IssuerAuthorization:
    """The issuer's snapshot of `question` answered by its stand-in (approved
    for `approved_minor`, or declined at 0), made from another authorization
    of the same card."""
    approved = approved_minor > 0
    reason = "stand-in approval: no decision within the budget" if approved else STAND_IN_DECLINE
    return template.model_copy(
        update={
            "id": question.authorization_id,
            "status": AuthorizationStatus.PENDING if approved else AuthorizationStatus.DECLINED,
            "amount_minor": approved_minor,
            "pending_amount_minor": approved_minor,
            "decision_reason": reason,
            "history": [],
            "decisions": [
                template.decisions[0].model_copy(
                    update={
                        "outcome": "approve" if approved else "decline",
                        "requested_amount_minor": question.amount_minor,
                        "approved_amount_minor": approved_minor,
                        "decided_by": DecidedBy.STAND_IN,
                        "reason": reason,
                    }
                )
            ],
        }
    )


async def test_a_decision_asked_after_the_issuer_declined_it_holds_nothing(
    platform: Platform,
) -> None:
    """The card's worker is away when a purchase is asked: the gateway answers
    with its stand-in decline and the issuer's webhooks of the decline reach
    the card before the delayed `authorize` update does (the order they have
    in the card's history). The late decision must hold nothing: nothing
    would ever release it."""
    customer_id, handle, template = await holding_a_first_purchase(platform)
    question = question_to(handle, "evt-late")
    declined = stood_in_for(template, question, approved_minor=0)
    for event_id, kind in (("e-created", "authorization.created"), ("e-declined", "declined")):
        await handle.signal(
            NETWORK_EVENT_SIGNAL,
            CardNetworkEvent(event_id=event_id, type=kind, authorization=declined),
        )
    answer = await handle.execute_update(
        AUTHORIZE_UPDATE, question, result_type=AuthorizationAnswer
    )
    assert (answer.decision, answer.reason) == ("decline", "authorization_finished")
    await settles_as(platform, customer_id, handle, 1_000)
    assert await running(handle)
    assert await verify(platform.stack.pool) == []


async def test_an_increment_asked_after_the_issuer_declined_it_holds_nothing(
    platform: Platform,
) -> None:
    """The same for an increment: the gateway stood in (a decline the issuer
    records as cardflow's), the webhook of it came first, and the delayed
    question then gets that answer instead of a hold."""
    customer_id, card_id, handle = await open_card(platform)
    first = await authorize(platform, card_id, 1_000)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=1_000)
    async with issuer(platform) as client:
        snapshot = await client.get_authorization(first.id)
    stand_in = "stand-in decline: no decision within the budget"
    incremented = snapshot.model_copy(
        update={
            "decisions": [
                *snapshot.decisions,
                snapshot.decisions[0].model_copy(
                    update={
                        "kind": "incremental",
                        "requested_amount_minor": 500,
                        "approved_amount_minor": 0,
                        "outcome": "decline",
                        "reason": stand_in,
                    }
                ),
            ]
        }
    )
    await handle.signal(
        NETWORK_EVENT_SIGNAL,
        CardNetworkEvent(
            event_id="e-inc", type="authorization.incremented", authorization=incremented
        ),
    )
    question = question_to(handle, "evt-inc").model_copy(
        update={"authorization_id": first.id, "kind": "incremental", "amount_minor": 500}
    )
    answer = await handle.execute_update(
        AUTHORIZE_UPDATE, question, result_type=AuthorizationAnswer
    )
    assert (answer.decision, answer.approved_amount_minor) == ("decline", 0)
    assert stand_in in answer.reason
    await settles_as(platform, customer_id, handle, 1_000)
    # The same question again is the same answer, never a hold.
    again = await handle.execute_update(AUTHORIZE_UPDATE, question, result_type=AuthorizationAnswer)
    assert again == answer
    await settles_as(platform, customer_id, handle, 1_000)
    assert await verify(platform.stack.pool) == []


async def test_a_hold_whose_task_was_lost_follows_the_issuers_decline_that_came_meanwhile(
    platform: Platform,
) -> None:
    """The card holds for a purchase and its worker dies before that workflow
    task completes, while the issuer's stand-in declines the purchase and
    its webhooks reach the card. The retried task applies those events
    first (a decision waits for every event that reached the card before
    it), releasing the hold the lost task left, and the decision then finds
    the purchase finished: nothing stays held."""
    customer_id, handle, template = await holding_a_first_purchase(platform)
    question = question_to(handle, "evt-lost").model_copy(update={"amount_minor": 2_000})
    declined = stood_in_for(template, question, approved_minor=0)
    platform.stack.faults.fail_after_local_activity(HOLD_WITHIN_TIER)
    wallet_code = accounts.wallet(customer_id, "USD")
    async with balances_locked(platform.stack.database_url, wallet_code) as lock:
        asked = asyncio.create_task(
            handle.execute_update(AUTHORIZE_UPDATE, question, result_type=AuthorizationAnswer)
        )
        await until_waiting(platform.stack.pool, lock)
        for event_id, kind in (("e-created", "authorization.created"), ("e-declined", "declined")):
            await handle.signal(
                NETWORK_EVENT_SIGNAL,
                CardNetworkEvent(event_id=event_id, type=kind, authorization=declined),
            )
    # The card's answer reaches nobody: the issuer has decided.
    answer = await asked
    assert (answer.decision, answer.reason) == ("decline", "authorization_finished")
    assert platform.stack.faults.injected == [f"local_activity {HOLD_WITHIN_TIER}"]
    await settles_as(platform, customer_id, handle, 1_000)
    assert await running(handle)
    assert await replays(platform, handle) is None
    assert await verify(platform.stack.pool) == []


async def held_by_a_lost_task(
    platform: Platform, handle: WorkflowHandle[Any, Any], question: AuthorizationRequest
) -> None:
    """What a workflow task that decided `question` leaves when its worker
    dies after the hold committed and the question never comes back before
    the issuer's word on it (the gateway gave up on it, and the server lost
    it with the card's cached state): the card's hold in the ledger, under
    the decision's own key, and nothing of it in the card's history."""
    state = await card_state(handle)
    assert question.requested_at is not None
    ledger = Ledger(platform.stack.pool)
    held = await ledger.transfer(
        HoldRequest(
            key=f"{handle.id}/auth/{question.authorization_id}/d0",
            debit=accounts.wallet(state.customer_id, "USD"),
            credit=accounts.issuer_settlement(Currency.USD),
            amount_minor=question.amount_minor,
            currency=Currency.USD,
            expires_at=question.requested_at
            + timedelta(seconds=state.policy.hold_expiry_seconds)
            + HOLD_LEDGER_GRACE,
        )
    )
    assert held.accepted, held.detail


async def lost_hold_then_issuer_word(
    platform: Platform, approved_minor: int
) -> tuple[str, WorkflowHandle[Any, Any], AuthorizationAnswer]:
    """A purchase of 2,000 held by a lost task, then the issuer's stand-in
    answer (`approved_minor`, 0 for a decline) reaching the card by webhook,
    then the question itself, late. Returns the customer, the card and the
    late question's answer."""
    customer_id, handle, template = await holding_a_first_purchase(platform)
    question = question_to(handle, "evt-lost").model_copy(update={"amount_minor": 2_000})
    await held_by_a_lost_task(platform, handle, question)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=3_000)
    snapshot = stood_in_for(template, question, approved_minor)
    kinds = ["authorization.created"] + ([] if approved_minor else ["declined"])
    for number, kind in enumerate(kinds):
        await handle.signal(
            NETWORK_EVENT_SIGNAL,
            CardNetworkEvent(event_id=f"e-{number}", type=kind, authorization=snapshot),
        )

    async def applied() -> bool:
        return f"e-{len(kinds) - 1}" in (await card_state(handle)).seen_events

    await polling.eventually(applied, "the card applies the issuer's webhooks")
    answer = await handle.execute_update(
        AUTHORIZE_UPDATE, question, result_type=AuthorizationAnswer
    )
    return customer_id, handle, answer


async def test_a_hold_left_by_a_lost_task_is_released_when_the_issuer_declined_it(
    platform: Platform,
) -> None:
    """The lost task's hold must not outlive the issuer's decline: the card
    never answered with it and nothing else would ever release it."""
    customer_id, handle, answer = await lost_hold_then_issuer_word(platform, approved_minor=0)
    assert (answer.decision, answer.reason) == ("decline", "authorization_finished")
    await settles_as(platform, customer_id, handle, 1_000)
    # Looked for and voided inside the workflow task, by local activities: no
    # round trip through the ledger's queue per stand-in the issuer reports.
    assert await scheduled(handle, RESOLVE_HOLD) == 0
    assert await running(handle)
    assert await replays(platform, handle) is None
    assert await verify(platform.stack.pool) == []


async def test_a_hold_left_by_a_lost_task_gives_way_to_the_issuers_stand_in_approval(
    platform: Platform,
) -> None:
    """The issuer's stand-in approved less than the lost task held: the card
    holds what the issuer approved, once, and not its own lost hold too; the
    late question gets the issuer's answer."""
    customer_id, handle, answer = await lost_hold_then_issuer_word(platform, approved_minor=1_500)
    assert (answer.decision, answer.approved_amount_minor) == ("approve", 1_500)
    await settles_as(platform, customer_id, handle, 2_500)
    assert await running(handle)
    assert await replays(platform, handle) is None
    assert await verify(platform.stack.pool) == []


async def test_a_decision_taken_in_the_task_that_applies_the_issuers_decline_holds_nothing(
    platform: Platform,
) -> None:
    """The card is busy (a hold waits on the wallet) when the issuer's
    webhooks of its stand-in decline and the late question itself arrive:
    the next workflow task takes them together, and the question reaches the
    money lock first. Whichever comes first, what the card holds is what the
    issuer holds. (The decline taking the lock first, with the question let
    in while it waits on the ledger, is the test after this one.)"""
    customer_id, handle, template = await holding_a_first_purchase(platform)
    question = question_to(handle, "evt-together").model_copy(update={"amount_minor": 2_000})
    declined = stood_in_for(template, question, approved_minor=0)
    busy = question_to(handle, "evt-busy").model_copy(update={"amount_minor": 500})
    wallet_code = accounts.wallet(customer_id, "USD")
    async with balances_locked(platform.stack.database_url, wallet_code) as lock:
        asked_busy = asyncio.create_task(
            handle.execute_update(AUTHORIZE_UPDATE, busy, result_type=AuthorizationAnswer)
        )
        await until_waiting(platform.stack.pool, lock)
        for event_id, kind in (("e-created", "authorization.created"), ("e-declined", "declined")):
            await handle.signal(
                NETWORK_EVENT_SIGNAL,
                CardNetworkEvent(event_id=event_id, type=kind, authorization=declined),
            )
        late = asyncio.create_task(
            handle.execute_update(
                AUTHORIZE_UPDATE, question, id="late-question", result_type=AuthorizationAnswer
            )
        )
        await until_admitted(platform.stack.client, handle, "late-question")
    assert (await asked_busy).decision == "approve"
    # Whichever the card took first, what it holds is what the issuer holds.
    await late
    await settles_as(platform, customer_id, handle, 1_500)
    assert await replays(platform, handle) is None
    assert await verify(platform.stack.pool) == []


async def test_a_question_waiting_behind_the_issuers_events_never_holds_a_declined_purchase(
    platform: Platform,
) -> None:
    """The late question about a purchase the issuer declined in its stead
    arrives while the card is busy with an earlier event, and the decline is
    queued behind it. The question waits for that earlier event only; the
    card then starts the decline in the same task, takes its money lock and
    looks for a hold a lost task may have left. The question, let through
    meanwhile, must find the purchase finished: never open a record the
    decline then drops and hold what nothing will release."""
    customer_id, handle, template = await holding_a_first_purchase(platform)
    earlier = question_to(handle, "evt-earlier").model_copy(update={"amount_minor": 700})
    question = question_to(handle, "evt-late").model_copy(update={"amount_minor": 2_000})
    async with table_locked(platform.stack.database_url, "ledger_transfers") as lock:
        for event_id, asked in (("e-earlier", earlier), ("e-declined", question)):
            await handle.signal(
                NETWORK_EVENT_SIGNAL,
                CardNetworkEvent(
                    event_id=event_id,
                    type="declined",
                    authorization=stood_in_for(template, asked, approved_minor=0),
                ),
            )
            # The card is inside the earlier event, waiting on the ledger.
            await until_waiting(platform.stack.pool, lock)
        late = await handle.start_update(
            AUTHORIZE_UPDATE,
            question,
            id="late-question",
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=AuthorizationAnswer,
        )
    answer = await late.result()
    assert (answer.decision, answer.reason) == ("decline", "authorization_finished")
    await settles_as(platform, customer_id, handle, 1_000)
    assert await running(handle)
    assert await replays(platform, handle) is None
    assert await verify(platform.stack.pool) == []


@pytest.mark.parametrize(
    "release_joins_the_next_task",
    [False, True],
    ids=["release-in-its-own-task", "release-joins-the-next-events-task"],
)
async def test_a_question_and_the_issuers_decline_taken_in_by_a_restarted_worker_replay(
    platform: Platform, release_joins_the_next_task: bool
) -> None:
    """A reversal's release completes in a workflow task that records nothing;
    then the card's worker is killed. While it is away, a late question is
    admitted (its task is scheduled right after the release's), and the
    issuer's webhooks of its stand-in decline of that purchase arrive. The
    restarted worker, without the card in memory, is handed the release's
    completion, both events and the question in one activation (the SDK joins
    a task that recorded nothing to the task right after it); a worker
    replaying the card's history later gets the completion on its own. The
    card's work must come out in the same order both ways: a card whose
    history no longer replays stops answering for good (seen in the chaos
    run, seed 42). The release's completion is taken in by a task of its own,
    or (the card's worker away meanwhile) joins the task already scheduled for
    the next event."""
    customer_id, card_id, handle = await open_card(platform)
    patient_issuer(platform)
    first = await authorize(platform, card_id, 1_000)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=1_000)
    # Only this test's own events reach the card, when it sends them.
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    async with issuer(platform) as client:
        template = await client.get_authorization(first.id)
        await client.simulate_reversal(first.id, idempotency_key="rev")
        reversed_ = await client.get_authorization(first.id)
    wallet_code = accounts.wallet(customer_id, "USD")
    async with contextlib.AsyncExitStack() as worker_away:
        async with balances_locked(platform.stack.database_url, wallet_code) as lock:
            for event_id in ("e-1", "e-2"):
                if event_id == "e-2" and release_joins_the_next_task:
                    await worker_away.enter_async_context(platform.stack.workflows_worker_away())
                await handle.signal(
                    NETWORK_EVENT_SIGNAL,
                    CardNetworkEvent(
                        event_id=event_id, type="authorization.reversed", authorization=reversed_
                    ),
                )
                await until_waiting(platform.stack.pool, lock)
        if release_joins_the_next_task:
            # The release completes while the task for e-2 waits for a worker.
            await polling.eventually(
                lambda: release_completed_after_the_next_task_was_scheduled(handle),
                "the release completes after the next event's task was scheduled",
            )

    async def seen_and_after_the_release() -> tuple[bool, list[str]]:
        seen = "e-2" in (await card_state(handle)).seen_events
        return seen, await after_the_last_completion(handle)

    await polling.until(
        seen_and_after_the_release,
        lambda found: found[0] and found[1] in TAKEN_IN_BY_A_TASK_THAT_RECORDED_NOTHING,
        "the release's task ends, having recorded nothing",
    )
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    question = question_to(handle, "evt-cold").model_copy(update={"amount_minor": 2_000})
    declined = stood_in_for(template, question, approved_minor=0)
    async with platform.stack.workflows_worker_away():
        late = asyncio.create_task(
            handle.execute_update(
                AUTHORIZE_UPDATE, question, id="cold-question", result_type=AuthorizationAnswer
            )
        )
        await until_admitted(platform.stack.client, handle, "cold-question")
        for event_id, kind in (("e-created", "authorization.created"), ("e-declined", "declined")):
            await handle.signal(
                NETWORK_EVENT_SIGNAL,
                CardNetworkEvent(event_id=event_id, type=kind, authorization=declined),
            )
    answer = await late
    # The card applied the issuer's decline before it decided.
    assert (answer.decision, answer.reason) == ("decline", "authorization_finished")
    assert await replays(platform, handle) is None
    await settles_as(platform, customer_id, handle, 0)
    assert await running(handle)
    assert await verify(platform.stack.pool) == []
