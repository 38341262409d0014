"""The issuer client against the real simulator: every call parses into
cardflow's own models (schemas/issuer.py), and errors are classified for
Temporal's retry policy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError

from activities.providers.issuer import IssuerClient
from schemas.issuer import (
    Address,
    AuthorizationStatus,
    Card,
    CardState,
    CardType,
    DecidedBy,
    Direction,
    DisputeEvidence,
    DisputeOutcome,
    DisputeReason,
    DisputeStatus,
    EvidenceType,
    Merchant,
    ProgramBalanceTransactionType,
    ProgramFundingStatus,
    ReissueReason,
    SettlementRecordType,
    ShippingRequest,
    ShippingService,
    ShippingStatus,
    TransactionType,
)
from schemas.money import Currency

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
CAFE = Merchant(name="Corner Cafe", mcc="5812", country="US")
HOTEL = Merchant(name="Hotel Lutetia", mcc="7011", country="FR")


def approve(name: str, event: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    return 200, {"decision": "approve", "approved_amount_minor": None, "reason": "ok"}, 0


@pytest_asyncio.fixture
async def issuer(sim: Any) -> AsyncIterator[IssuerClient]:
    timeout = httpx.Timeout(connect=1.0, read=5.0, write=1.0, pool=1.0)
    async with IssuerClient(sim.provider_url("issuer"), timeout=timeout) as client:
        yield client


async def new_card(
    issuer: IssuerClient,
    card_type: CardType = CardType.VIRTUAL,
    key: str = "card-1",
    shipping: ShippingRequest | None = None,
) -> Card:
    cardholder = await issuer.create_cardholder(
        first_name="Ada",
        last_name="Lovelace",
        email="ada@example.com",
        address=ADDRESS,
        phone_number="+15551234567",
        idempotency_key=f"{key}-holder",
    )
    return await issuer.create_card(
        cardholder_id=cardholder.id,
        card_type=card_type,
        currency=Currency.USD,
        shipping=shipping,
        idempotency_key=key,
    )


async def test_a_cardholder_moves_once_per_key_and_issued_cards_keep_their_address(
    issuer: IssuerClient,
) -> None:
    card = await new_card(issuer, CardType.PHYSICAL)
    moved = Address(line1="2 Elm St", city="Shelbyville", postal_code="54321", country="US")
    updated = await issuer.update_cardholder(
        card.cardholder_id, address=moved, idempotency_key="move-1"
    )
    assert updated.address == moved and updated.phone_number == "+15551234567"
    assert (await issuer.get_cardholder(card.cardholder_id)).address == moved
    shipping = (await issuer.get_card(card.id)).shipping
    assert shipping is not None and shipping.address == ADDRESS
    # The same key again is answered once; with another address it is refused.
    again = await issuer.update_cardholder(
        card.cardholder_id, address=moved, idempotency_key="move-1"
    )
    assert again == updated
    with pytest.raises(ApplicationError) as reused:
        await issuer.update_cardholder(
            card.cardholder_id, address=ADDRESS, idempotency_key="move-1"
        )
    assert reused.value.type == "ProviderConflict"


async def test_the_card_lifecycle_parses_into_cardflows_models(issuer: IssuerClient) -> None:
    express = ShippingRequest(name="A. Lovelace", service=ShippingService.EXPRESS)
    card = await new_card(issuer, CardType.PHYSICAL, shipping=express)
    assert card.state is CardState.PENDING_FULFILLMENT and card.shipping is not None
    assert card.shipping.name == "A. Lovelace" and card.shipping.address == ADDRESS
    cardholder = await issuer.get_cardholder(card.cardholder_id)
    assert cardholder.address == ADDRESS and cardholder.phone_number == "+15551234567"

    later = datetime.now(UTC).date() + timedelta(days=10)
    rescheduled = await issuer.reschedule_delivery(
        card.id, delivery_date=later, idempotency_key="r-1"
    )
    assert (
        rescheduled.shipping is not None and rescheduled.shipping.requested_delivery_date == later
    )
    for step, status in enumerate((ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED)):
        moved = await issuer.simulate_shipping(card.id, idempotency_key=f"ship-{step}")
        assert moved.shipping is not None and moved.shipping.status is status
    delivered = await issuer.simulate_shipping(
        card.id, status=ShippingStatus.DELIVERED, idempotency_key="ship-2"
    )
    assert delivered.shipping is not None and delivered.shipping.eta == later
    assert (await issuer.activate_card(card.id, idempotency_key="act-1")).state is CardState.OPEN

    paused = await issuer.update_card_state(
        card.id, state=CardState.PAUSED, reason="travel", idempotency_key="pause-1"
    )
    assert paused.state is CardState.PAUSED and paused.state_reason == "travel"
    resumed = await issuer.update_card_state(card.id, state=CardState.OPEN, idempotency_key="res-1")
    assert resumed.state is CardState.OPEN

    new = await issuer.reissue_card(card.id, reason=ReissueReason.LOST, idempotency_key="re-1")
    assert new.replaces == card.id and new.state is CardState.PENDING_FULFILLMENT
    old = await issuer.get_card(card.id)
    assert old.state is CardState.CLOSED and old.replaced_by == new.id
    page = await issuer.list_cards(card.cardholder_id, limit=1)
    assert [listed.id for listed in page.data] == [card.id] and page.has_more
    rest = await issuer.list_cards(card.cardholder_id, starting_after=card.id)
    assert [listed.id for listed in rest.data] == [new.id] and not rest.has_more


async def test_authorizations_and_settlement_parse_into_cardflows_models(
    issuer: IssuerClient, webhook_sink: Any
) -> None:
    webhook_sink.realtime = approve
    deposit = await issuer.deposit_program_funding(
        amount_minor=50_000, currency=Currency.USD, reference="wire-7", idempotency_key="dep-1"
    )
    assert deposit.amount_minor == 50_000
    card = await new_card(issuer)

    hotel = await issuer.simulate_authorization(
        card_id=card.id,
        amount_minor=10_000,
        currency=Currency.EUR,
        merchant=HOTEL,
        idempotency_key="auth-1",
    )
    assert hotel.status is AuthorizationStatus.PENDING and hotel.decided_by is DecidedBy.CARDFLOW
    assert hotel.conversion_rate == Decimal("1.08") and hotel.pending_amount_minor == 10_800
    grown = await issuer.simulate_increment(hotel.id, amount_minor=1_200, idempotency_key="inc-1")
    assert grown.pending_amount_minor == 12_000
    cleared = await issuer.simulate_clearing(hotel.id, idempotency_key="clr-1")
    assert cleared.type is TransactionType.CLEARING and cleared.direction is Direction.DEBIT
    assert cleared.amount_minor == 12_000 and await issuer.get_transaction(cleared.id) == cleared

    fuel = await issuer.simulate_authorization(
        card_id=card.id,
        amount_minor=9_000,
        currency=Currency.USD,
        merchant=CAFE,
        partial_approval_capable=True,
        idempotency_key="auth-2",
    )
    advised = await issuer.simulate_advice(
        fuel.id, pending_amount_minor=6_000, reason="pump done", idempotency_key="adv-1"
    )
    assert advised.pending_amount_minor == 6_000 and advised.history[-1].amount_minor == -3_000
    reversal = await issuer.simulate_reversal(fuel.id, amount_minor=1_000, idempotency_key="rev-1")
    assert reversal.authorization_pending_amount_minor == 5_000
    expired = await issuer.simulate_expiry(fuel.id, idempotency_key="exp-1")
    assert expired.status is AuthorizationStatus.EXPIRED and expired.released_amount_minor == 5_000
    assert await issuer.get_authorization(fuel.id) == expired

    refund = await issuer.simulate_refund(
        card_id=card.id,
        amount_minor=300,
        currency=Currency.USD,
        merchant=CAFE,
        idempotency_key="rf",
    )
    forced = await issuer.simulate_force_post(
        card_id=card.id,
        amount_minor=700,
        currency=Currency.USD,
        merchant=CAFE,
        idempotency_key="fp",
    )
    assert refund.direction is Direction.CREDIT and forced.authorization_id is None

    usd = (await issuer.get_funding_summary()).balance(Currency.USD)
    fee_minor = 120  # 1% of the 12_000 settled in USD for a purchase in EUR
    assert usd.balance_minor == 50_000 - 12_000 - 700 + 300 - fee_minor
    report = await issuer.get_settlement_report(datetime.now(UTC).date())
    assert [(record.record_type, record.id) for record in report.records] == [
        (SettlementRecordType.CLEARING, cleared.id),
        (SettlementRecordType.FEE, "fee_000001"),
        (SettlementRecordType.REVERSAL, reversal.id),
        (SettlementRecordType.REFUND, refund.id),
        (SettlementRecordType.FORCE_POST, forced.id),
    ]
    [total] = report.totals
    assert total.net_minor == 300 - 12_000 - 700 - fee_minor


async def test_disputes_parse_into_cardflows_models(
    issuer: IssuerClient, webhook_sink: Any
) -> None:
    webhook_sink.realtime = approve
    card = await new_card(issuer)
    transactions = []
    for index in range(2):
        auth = await issuer.simulate_authorization(
            card_id=card.id,
            amount_minor=2_000,
            currency=Currency.USD,
            merchant=CAFE,
            idempotency_key=f"auth-{index}",
        )
        transactions.append(
            await issuer.simulate_clearing(auth.id, idempotency_key=f"clear-{index}")
        )
    statement = DisputeEvidence(type=EvidenceType.CARDHOLDER_STATEMENT, description="Not me")
    dispute = await issuer.open_dispute(
        transaction_id=transactions[0].id,
        reason=DisputeReason.FRAUDULENT,
        evidence=[statement],
        idempotency_key="dp-1",
    )
    assert dispute.status is DisputeStatus.OPEN and dispute.amount_minor == 2_000
    receipt = DisputeEvidence(type=EvidenceType.RECEIPT, description="Receipt")
    with_receipt = await issuer.add_dispute_evidence(
        dispute.id, evidence=[receipt], idempotency_key="ev-1"
    )
    assert [item.type for item in with_receipt.evidence] == [
        EvidenceType.CARDHOLDER_STATEMENT,
        EvidenceType.RECEIPT,
    ]
    won = await issuer.simulate_dispute_decision(
        dispute.id, outcome=DisputeOutcome.WON, note="issuer wins", idempotency_key="dec-1"
    )
    assert won.status is DisputeStatus.WON and won.chargeback_transaction_id is not None
    assert await issuer.get_dispute(dispute.id) == won
    chargeback = await issuer.get_transaction(won.chargeback_transaction_id)
    assert chargeback.type is TransactionType.CHARGEBACK and chargeback.amount_minor == 2_000

    partial = await issuer.open_dispute(
        transaction_id=transactions[1].id,
        reason=DisputeReason.DUPLICATE,
        evidence=[],
        amount_minor=500,
        idempotency_key="dp-2",
    )
    withdrawn = await issuer.withdraw_dispute(partial.id, idempotency_key="wd-1")
    assert withdrawn.status is DisputeStatus.WITHDRAWN and withdrawn.amount_minor == 500


async def test_an_injected_503_is_retryable_and_the_keyed_retry_creates_one_card(
    sim: Any, issuer: IssuerClient
) -> None:
    sim.fault(path_prefix="/issuer/v1/cards", kind="error", status=503, times=1)
    with pytest.raises(ApplicationError) as error:
        await new_card(issuer, key="card-once")
    assert error.value.type == "ProviderUnavailable" and not error.value.non_retryable
    # What Temporal does next: the same call with the same key.
    card = await new_card(issuer, key="card-once")
    again = await new_card(issuer, key="card-once")
    assert again == card
    page = await issuer.list_cards(card.cardholder_id)
    assert [listed.id for listed in page.data] == [card.id]
    created = [row for row in sim.admin("GET", "/webhooks") if row["type"] == "card.created"]
    assert len(created) == 1


async def test_a_dropped_authorization_is_retried_in_the_call_and_made_once(
    sim: Any, issuer: IssuerClient, webhook_sink: Any
) -> None:
    webhook_sink.realtime = approve
    card = await new_card(issuer)
    sim.fault(path_prefix="/issuer/v1/simulate/authorize", kind="drop", times=1)
    auth = await issuer.simulate_authorization(
        card_id=card.id,
        amount_minor=1_000,
        currency=Currency.USD,
        merchant=CAFE,
        idempotency_key="auth-dropped",
    )
    assert auth.status is AuthorizationStatus.PENDING
    assert len(webhook_sink.realtime_received) == 1


async def test_lifecycle_refusals_are_final_conflicts(issuer: IssuerClient) -> None:
    card = await new_card(issuer, CardType.PHYSICAL)
    with pytest.raises(ApplicationError) as early:
        await issuer.activate_card(card.id, idempotency_key="act-early")
    assert early.value.type == "ProviderConflict" and early.value.non_retryable
    # The provider's explanation is not kept (it may echo the request); its status is.
    assert early.value.details[0]["status"] == 409
    for step in range(2):
        await issuer.simulate_shipping(card.id, idempotency_key=f"ship-{step}")
    with pytest.raises(ApplicationError) as late:
        await issuer.reschedule_delivery(
            card.id,
            delivery_date=datetime.now(UTC).date() + timedelta(days=3),
            idempotency_key="late",
        )
    assert late.value.type == "ProviderConflict" and late.value.details[0]["status"] == 409
    assert (await issuer.get_card(card.id)).state is CardState.PENDING_ACTIVATION


async def test_missing_and_malformed_requests_are_final(issuer: IssuerClient) -> None:
    with pytest.raises(ApplicationError) as missing:
        await issuer.get_card("card_999999")
    assert missing.value.type == "ProviderNotFound" and missing.value.non_retryable
    card = await new_card(issuer)
    with pytest.raises(ApplicationError) as too_large:
        await issuer.simulate_refund(
            card_id=card.id,
            amount_minor=10**13,
            currency=Currency.USD,
            merchant=CAFE,
            idempotency_key="huge",
        )
    assert too_large.value.type == "ProviderRejectedRequest" and too_large.value.non_retryable
    assert "amount_minor" in str(too_large.value)


# ----- the program's prefunded balance ---------------------------------------------------


async def test_the_program_balance_and_its_movements_parse_into_cardflows_models(
    sim: Any, issuer: IssuerClient, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/issuer", {"program_balances": {"USD": 10_000}})
    webhook_sink.realtime = approve
    card = await new_card(issuer)
    auth = await issuer.simulate_authorization(
        card_id=card.id,
        amount_minor=4_000,
        currency=Currency.USD,
        merchant=CAFE,
        idempotency_key="auth-1",
    )
    cleared = await issuer.simulate_clearing(auth.id, idempotency_key="clr-1")
    refund = await issuer.simulate_refund(
        card_id=card.id,
        amount_minor=500,
        currency=Currency.USD,
        merchant=CAFE,
        idempotency_key="rf-1",
    )

    balances = await issuer.program_balances()
    assert [(balance.currency, balance.available_minor) for balance in balances] == [
        (Currency.USD, 6_500),
        *((currency, 10**13) for currency in list(Currency)[1:]),
    ]
    movements = await issuer.program_balance_transactions(Currency.USD)
    assert [(m.type, m.amount_minor, m.source_id) for m in movements] == [
        (ProgramBalanceTransactionType.OPENING, 10_000, None),
        (ProgramBalanceTransactionType.CLEARING, -4_000, cleared.id),
        (ProgramBalanceTransactionType.REFUND, 500, refund.id),
    ]
    assert {m.currency for m in movements} == {Currency.USD}
    page = await issuer.program_balance_transactions_page(Currency.USD, limit=1)
    assert page.data == movements[:1] and page.has_more


async def test_a_program_funding_is_pending_then_credited_once_per_key(
    sim: Any, issuer: IssuerClient, webhook_sink: Any
) -> None:
    sim.admin(
        "PUT",
        "/options/issuer",
        {"program_balances": {"USD": 0}, "funding_lead_seconds": 3_600},
    )
    webhook_sink.realtime = approve
    funding = await issuer.fund_program(
        amount_minor=2_000, currency=Currency.USD, reference="wire-1", idempotency_key="fund-1"
    )
    assert (funding.id, funding.status, funding.amount_minor, funding.credited_at) == (
        "pfd_000001",
        ProgramFundingStatus.PENDING,
        2_000,
        None,
    )
    again = await issuer.fund_program(
        amount_minor=2_000, currency=Currency.USD, reference="wire-1", idempotency_key="fund-1"
    )
    assert again == funding == await issuer.get_program_funding(funding.id)
    assert await issuer.program_fundings_by_reference("wire-1") == [funding]
    assert await issuer.program_fundings_by_reference("wire-2") == []

    # Underfunded, the issuer declines on its own, without asking cardflow.
    card = await new_card(issuer)
    declined = await issuer.simulate_authorization(
        card_id=card.id,
        amount_minor=2_000,
        currency=Currency.USD,
        merchant=CAFE,
        idempotency_key="auth-1",
    )
    assert declined.status is AuthorizationStatus.DECLINED
    assert (declined.decided_by, declined.decision_reason) == (
        DecidedBy.ISSUER,
        "program_underfunded",
    )
    assert webhook_sink.realtime_received == []

    credited = await issuer.simulate_program_funding_credited(funding.id, idempotency_key="cr-1")
    assert credited.status is ProgramFundingStatus.CREDITED and credited.credited_at is not None
    assert await issuer.get_program_funding(funding.id) == credited
    with pytest.raises(ApplicationError) as twice:
        await issuer.simulate_program_funding_credited(funding.id, idempotency_key="cr-2")
    assert twice.value.type == "ProviderConflict" and twice.value.non_retryable
    [usd] = [b for b in await issuer.program_balances() if b.currency is Currency.USD]
    assert usd.available_minor == 2_000
    approved = await issuer.simulate_authorization(
        card_id=card.id,
        amount_minor=2_000,
        currency=Currency.USD,
        merchant=CAFE,
        idempotency_key="auth-2",
    )
    assert (approved.status, approved.decided_by) == (
        AuthorizationStatus.PENDING,
        DecidedBy.CARDFLOW,
    )


async def test_a_bad_program_funding_is_final_and_names_the_field(issuer: IssuerClient) -> None:
    with pytest.raises(ApplicationError) as refused:
        await issuer.fund_program(
            amount_minor=0, currency=Currency.USD, reference="wire-1", idempotency_key="bad"
        )
    assert refused.value.type == "ProviderRejectedRequest" and refused.value.non_retryable
    assert "amount_minor" in str(refused.value)
    with pytest.raises(ApplicationError) as missing:
        await issuer.get_program_funding("pfd_999999")
    assert missing.value.type == "ProviderNotFound"
