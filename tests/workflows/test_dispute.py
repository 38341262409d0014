"""Disputes end to end: a real cleared purchase (issuer simulator -> gateway ->
card), the dispute opened on it, the issuer's decisions arriving as signed
webhooks through the gateway, and the ledger checked after each branch."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError

from activities.events import events_after
from activities.ledger import Ledger
from activities.ledger.verify import verify
from schemas import accounts
from schemas.disputes import (
    DisputeInput,
    DisputePolicy,
    DisputeResult,
    DisputeStatusView,
    EvidenceItem,
    OperatorAction,
    WithdrawRequest,
    customer_debt,
)
from schemas.issuer import Dispute, DisputeOutcome, DisputeReason, DisputeStatus, EvidenceType
from schemas.money import Currency
from schemas.search import CARD_ID, PROCESS_STATUS
from starters import dispute as disputes
from tests import polling
from tests.conftest import Platform
from tests.customers import (
    authorize,
    issuer,
    open_card,
    wallet,
    wallet_becomes,
)

STATEMENT = EvidenceItem(
    type=EvidenceType.CARDHOLDER_STATEMENT, description="I never made this purchase."
)
LETTER = EvidenceItem(
    type=EvidenceType.CORRESPONDENCE, description="I asked the merchant twice; no answer."
)
# Every deadline long enough not to interfere unless a test shortens it.
QUIET = DisputePolicy(
    evidence_window_seconds=120,
    provisional_credit_after_seconds=3_600,
    representment_response_seconds=3_600,
    issuer_poll_seconds=3_600,
    decision_wait_seconds_max=3_600,
)
AT_ONCE = QUIET.model_copy(update={"provisional_credit_after_seconds": 0})


async def purchase(platform: Platform, card_id: str, amount: int) -> str:
    """A purchase authorized and cleared in full; its transaction id, once recorded."""
    auth = await authorize(platform, card_id, amount)
    async with issuer(platform) as client:
        cleared = await client.simulate_clearing(
            auth.id, final=True, idempotency_key=f"clear-{auth.id}"
        )
    await disputes.wait_until_recorded(platform.stack.client, cleared.id)
    return cleared.id


async def clock_passes(instant: datetime) -> None:
    """Returns once this machine's clock is past `instant`."""
    while (left := (instant - datetime.now(UTC)).total_seconds()) >= 0:
        await asyncio.sleep(left + 0.01)


async def open_dispute(
    platform: Platform,
    customer_id: str,
    transaction_id: str,
    *,
    policy: DisputePolicy = QUIET,
    reason: DisputeReason = DisputeReason.FRAUDULENT,
    evidence: list[EvidenceItem] | None = None,
) -> WorkflowHandle[Any, DisputeResult]:
    return await disputes.open_dispute(
        platform.stack.client,
        platform.stack.queues,
        DisputeInput(
            transaction_id=transaction_id,
            customer_id=customer_id,
            reason=reason,
            evidence=[STATEMENT] if evidence is None else evidence,
            policy=policy,
        ),
    )


async def stage(platform: Platform, transaction_id: str, *wanted: str) -> DisputeStatusView:
    return await disputes.wait_for_stage(
        platform.stack.client, transaction_id, lambda view: view.stage in wanted, seconds=20
    )


async def submitted(platform: Platform, transaction_id: str) -> str:
    """Submit the evidence; the issuer's dispute id once the issuer has it."""
    await disputes.submit(platform.stack.client, transaction_id)
    view = await disputes.wait_for_stage(
        platform.stack.client, transaction_id, lambda v: v.issuer_dispute_id is not None
    )
    assert view.issuer_dispute_id is not None
    return view.issuer_dispute_id


async def decide(platform: Platform, dispute_id: str, outcome: DisputeOutcome) -> Dispute:
    async with issuer(platform) as client:
        return await client.simulate_dispute_decision(
            dispute_id, outcome=outcome, idempotency_key=f"decide-{uuid.uuid4().hex}"
        )


async def issuer_dispute(platform: Platform, dispute_id: str) -> Dispute:
    async with issuer(platform) as client:
        return await client.get_dispute(dispute_id)


async def provisional_balance(platform: Platform) -> int:
    balance = await Ledger(platform.stack.pool).balance(accounts.disputes_provisional("USD"))
    return balance.posted


async def test_a_won_dispute_keeps_the_provisional_credit_and_the_issuer_pays_it(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 3_000)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    view = await stage(platform, transaction_id, "waiting for evidence")
    assert (view.card_id, view.amount_minor, view.missing_evidence) == (card_id, 3_000, [])
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    assert await provisional_balance(platform) == -3_000

    async def shows_submitted() -> bool:
        attributes = (await handle.describe()).typed_search_attributes
        return attributes.get(PROCESS_STATUS) == "submitted" and attributes.get(CARD_ID) == card_id

    await polling.eventually(shows_submitted, "the search attributes show the stage")

    await decide(platform, dispute_id, DisputeOutcome.WON)
    result = await handle.result()
    assert (result.outcome, result.provisional_credit_minor, result.final_credit_minor) == (
        "won",
        3_000,
        3_000,
    )
    assert (await wallet(platform, customer_id)).posted == 10_000
    # The issuer's chargeback settled the provisional credit.
    assert await provisional_balance(platform) == 0
    assert await verify(platform.stack.pool) == []

    # The customer's events: the provisional credit, and each of the issuer's steps.
    async def dispute_changes() -> list[str]:
        events = await events_after(platform.stack.pool, 0, 100, customer_id=customer_id)
        return [e.data["change"] for e in events if e.type == "dispute.updated"]

    async def won() -> bool:
        return "won" in await dispute_changes()

    await polling.eventually(won, "the issuer's decision is an event")
    assert (await dispute_changes())[0] == "created"
    events = await events_after(platform.stack.pool, 0, 100, customer_id=customer_id)
    credited = [e for e in events if e.type == "dispute.credited"]
    assert [(e.data["amount_minor"], e.process_id) for e in credited] == [(3_000, handle.id)]


async def test_a_won_dispute_without_provisional_credit_credits_the_wallet_at_the_decision(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 2_500)
    handle = await open_dispute(platform, customer_id, transaction_id)
    dispute_id = await submitted(platform, transaction_id)
    assert (await wallet(platform, customer_id)).posted == 7_500
    await decide(platform, dispute_id, DisputeOutcome.WON)
    result = await handle.result()
    assert (result.outcome, result.provisional_credit_minor, result.final_credit_minor) == (
        "won",
        0,
        2_500,
    )
    assert (await wallet(platform, customer_id)).posted == 10_000
    assert await provisional_balance(platform) == 0
    assert await verify(platform.stack.pool) == []


async def test_a_lost_dispute_on_an_empty_wallet_records_the_debt_never_a_negative_wallet(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 3_000})
    transaction_id = await purchase(platform, card_id, 3_000)
    assert (await wallet(platform, customer_id)).posted == 0
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=3_000, pending=0)
    # The customer spends most of the provisional credit.
    await purchase(platform, card_id, 2_000)
    await wallet_becomes(platform, customer_id, posted=1_000, pending=0)

    await decide(platform, dispute_id, DisputeOutcome.LOST)
    result = await handle.result()
    assert (result.outcome, result.reversed_minor, result.debt_minor) == ("lost", 1_000, 2_000)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.available) == (0, 0)
    debt = await Ledger(platform.stack.pool).balance(customer_debt(customer_id, "USD"))
    assert (debt.debits_posted, debt.credits_posted) == (2_000, 0)
    assert await provisional_balance(platform) == 0
    assert await verify(platform.stack.pool) == []


async def test_an_answered_representment_sends_the_new_evidence_and_goes_to_pre_arbitration(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_500)
    handle = await open_dispute(platform, customer_id, transaction_id)
    dispute_id = await submitted(platform, transaction_id)
    await decide(platform, dispute_id, DisputeOutcome.REPRESENTMENT)
    view = await stage(platform, transaction_id, "representment")
    assert view.deadline_at is not None

    await disputes.add_evidence(platform.stack.client, transaction_id, LETTER)
    await disputes.submit(platform.stack.client, transaction_id)
    await stage(platform, transaction_id, "pre-arbitration")
    at_issuer = await issuer_dispute(platform, dispute_id)
    assert at_issuer.status == DisputeStatus.PRE_ARBITRATION
    assert [item.type for item in at_issuer.evidence] == [
        EvidenceType.CARDHOLDER_STATEMENT,
        EvidenceType.CORRESPONDENCE,
    ]

    await decide(platform, dispute_id, DisputeOutcome.WON)
    assert (await handle.result()).outcome == "won"
    assert (await wallet(platform, customer_id)).posted == 10_000
    assert await verify(platform.stack.pool) == []


async def test_a_decision_made_while_the_answer_is_on_its_way_is_followed_not_failed(
    platform: Platform,
) -> None:
    """The network decides a representment while the customer's answer is
    on its way: the issuer refuses the new evidence (the dispute is decided),
    and the process reads the decision and ends with it, instead of failing
    and compensating a dispute that is over."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 2_500)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    await decide(platform, dispute_id, DisputeOutcome.REPRESENTMENT)
    await stage(platform, transaction_id, "representment")

    # The decision's webhook is still on its way when the customer answers.
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    await decide(platform, dispute_id, DisputeOutcome.LOST)
    await disputes.submit(platform.stack.client, transaction_id, [LETTER])

    result = await handle.result()
    assert (result.outcome, result.reversed_minor, result.debt_minor) == ("lost", 2_500, 0)
    # Lost at the issuer, never withdrawn; the provisional credit taken back once.
    assert (await issuer_dispute(platform, dispute_id)).status == DisputeStatus.LOST
    assert (await wallet(platform, customer_id)).posted == 7_500
    assert await provisional_balance(platform) == 0
    assert await verify(platform.stack.pool) == []


async def test_an_unanswered_representment_goes_to_pre_arbitration_at_the_deadline(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_500)
    policy = QUIET.model_copy(update={"representment_response_seconds": 2})
    handle = await open_dispute(platform, customer_id, transaction_id, policy=policy)
    dispute_id = await submitted(platform, transaction_id)
    await decide(platform, dispute_id, DisputeOutcome.REPRESENTMENT)
    await stage(platform, transaction_id, "representment")
    await stage(platform, transaction_id, "pre-arbitration")
    assert (await issuer_dispute(platform, dispute_id)).status == DisputeStatus.PRE_ARBITRATION

    # Lost with nothing credited: no money moves.
    await decide(platform, dispute_id, DisputeOutcome.LOST)
    result = await handle.result()
    assert (result.outcome, result.reversed_minor, result.debt_minor) == ("lost", 0, 0)
    assert (await wallet(platform, customer_id)).posted == 8_500
    assert await verify(platform.stack.pool) == []


async def test_a_withdrawn_dispute_reverses_the_provisional_credit_and_withdraws_at_the_issuer(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 4_000)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)

    await disputes.withdraw(platform.stack.client, transaction_id, WithdrawRequest(by="operator"))
    result = await handle.result()
    assert (result.outcome, result.reversed_minor, result.debt_minor) == ("withdrawn", 4_000, 0)
    assert "operator" in result.reason
    assert (await wallet(platform, customer_id)).posted == 6_000
    assert (await issuer_dispute(platform, dispute_id)).status == DisputeStatus.WITHDRAWN
    assert await provisional_balance(platform) == 0
    assert await verify(platform.stack.pool) == []


async def test_a_dispute_after_the_filing_window_or_of_an_unknown_transaction_is_refused(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_000)
    late = QUIET.model_copy(update={"filing_window_seconds": 1})
    # The window closes a second after the settlement the card recorded, by
    # this machine's clock, the one the dispute's workflow time comes from.
    settled_at: datetime = await platform.stack.pool.fetchval(
        "SELECT occurred_at FROM card_transactions WHERE transaction_id = $1", transaction_id
    )
    await clock_passes(settled_at + timedelta(seconds=late.filing_window_seconds))
    handle = await open_dispute(platform, customer_id, transaction_id, policy=late)
    result = await handle.result()
    assert result.outcome == "refused"
    assert "filing window closed" in result.reason

    unknown = await open_dispute(platform, customer_id, f"tx-{uuid.uuid4().hex[:8]}")
    refused = await unknown.result()
    assert (refused.outcome, refused.issuer_dispute_id) == ("refused", None)
    assert "not a settled transaction of yours" in refused.reason


async def test_a_submission_missing_evidence_is_refused_naming_what_is_missing(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_000)
    handle = await open_dispute(
        platform, customer_id, transaction_id, reason=DisputeReason.NOT_RECEIVED
    )
    view = await stage(platform, transaction_id, "waiting for evidence")
    assert view.missing_evidence == ["correspondence"]
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await disputes.submit(platform.stack.client, transaction_id)
    assert "correspondence" in str(refused.value.cause)

    await disputes.add_evidence(platform.stack.client, transaction_id, LETTER)
    dispute_id = await submitted(platform, transaction_id)
    await disputes.withdraw(platform.stack.client, transaction_id)
    assert (await handle.result()).outcome == "withdrawn"
    assert (await issuer_dispute(platform, dispute_id)).status == DisputeStatus.WITHDRAWN


async def test_duplicate_and_out_of_order_decision_webhooks_settle_the_dispute_once(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 2_000)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)

    # Representment then won, each delivered twice, the won before the representment.
    platform.sim.admin("POST", "/webhooks", {"hold": True, "duplicate": True})
    await decide(platform, dispute_id, DisputeOutcome.REPRESENTMENT)
    await decide(platform, dispute_id, DisputeOutcome.WON)
    platform.sim.admin("POST", "/webhooks/release", {"order": "reverse"})
    result = await handle.result()
    assert (result.outcome, result.final_credit_minor, result.reversed_minor) == (
        "won",
        2_000,
        0,
    )

    async def settled() -> bool:
        return (await wallet(platform, customer_id)).posted == 10_000

    await polling.eventually(settled, "the wallet keeps the credit once")
    assert await provisional_balance(platform) == 0
    assert await verify(platform.stack.pool) == []


async def test_the_api_opens_a_dispute_refuses_incomplete_evidence_with_409_and_withdraws(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_000)
    body = {
        "transaction_id": transaction_id,
        "customer_id": customer_id,
        "reason": "not_as_described",
        "evidence": [{"type": "cardholder_statement", "description": "It was broken."}],
    }
    async with httpx.AsyncClient(
        base_url=f"{platform.gateway_url}/v1", timeout=30, headers=platform.api_headers
    ) as api:
        opened = await api.post("/disputes", json=body, headers={"Idempotency-Key": "d-1"})
        assert opened.status_code == 202, opened.text
        assert opened.json()["workflow_id"] == f"dispute/{transaction_id}"
        again = await api.post("/disputes", json=body, headers={"Idempotency-Key": "d-1"})
        assert (again.status_code, again.json()["replayed"]) == (200, True)
        await stage(platform, transaction_id, "waiting for evidence")

        refused = await api.post(f"/disputes/{transaction_id}/submit", json={})
        assert (refused.status_code, refused.json()["code"]) == (409, "evidence_missing")
        shown = await api.get(f"/disputes/{transaction_id}")
        assert shown.json()["missing_evidence"] == ["correspondence"]
        withdrawn = await api.post(f"/disputes/{transaction_id}/withdraw", json={})
        assert withdrawn.status_code == 200, withdrawn.text
    result = await disputes.handle(platform.stack.client, transaction_id).result()
    assert (result.outcome, result.issuer_dispute_id) == ("withdrawn", None)


async def test_an_operator_credits_early_and_answers_a_representment_for_the_customer(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_200)
    handle = await open_dispute(platform, customer_id, transaction_id)
    dispute_id = await submitted(platform, transaction_id)
    client = platform.stack.client
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await disputes.operator_action(
            client, transaction_id, OperatorAction(action="escalate", operator="ops-1")
        )
    assert "representment" in str(refused.value.cause)
    await disputes.operator_action(
        client, transaction_id, OperatorAction(action="credit_now", operator="ops-1")
    )
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)

    await decide(platform, dispute_id, DisputeOutcome.REPRESENTMENT)
    await stage(platform, transaction_id, "representment")
    await disputes.operator_action(
        client, transaction_id, OperatorAction(action="escalate", operator="ops-1")
    )
    await stage(platform, transaction_id, "pre-arbitration")
    await decide(platform, dispute_id, DisputeOutcome.WON)
    result = await handle.result()
    assert (result.outcome, result.provisional_credit_minor, result.final_credit_minor) == (
        "won",
        1_200,
        1_200,
    )
    assert await provisional_balance(platform) == 0
    assert await verify(platform.stack.pool) == []


async def test_evidence_never_submitted_lets_the_dispute_lapse(platform: Platform) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_000)
    policy = QUIET.model_copy(update={"evidence_window_seconds": 1})
    handle = await open_dispute(platform, customer_id, transaction_id, policy=policy)
    result = await handle.result()
    assert (result.outcome, result.issuer_dispute_id) == ("expired", None)
    assert "not submitted in time" in result.reason


async def test_a_lost_decision_webhook_is_found_by_asking_the_issuer(platform: Platform) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_000)
    policy = QUIET.model_copy(update={"issuer_poll_seconds": 1})
    handle = await open_dispute(platform, customer_id, transaction_id, policy=policy)
    dispute_id = await submitted(platform, transaction_id)
    # The decision's webhook never arrives.
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    await decide(platform, dispute_id, DisputeOutcome.WON)
    result = await handle.result()
    assert (result.outcome, result.final_credit_minor) == ("won", 1_000)
    assert (await wallet(platform, customer_id)).posted == 10_000
    assert await verify(platform.stack.pool) == []


async def test_a_cancelled_dispute_reverses_its_credit_and_withdraws_at_the_issuer(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_000)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    status = await handle.query("status", result_type=DisputeStatusView)
    assert status.stage == "cancelled"
    description = await handle.describe()
    assert description.typed_search_attributes.get(PROCESS_STATUS) == "cancelled"
    assert (await wallet(platform, customer_id)).posted == 9_000
    assert (await issuer_dispute(platform, dispute_id)).status == DisputeStatus.WITHDRAWN
    assert await provisional_balance(platform) == 0
    assert await verify(platform.stack.pool) == []
