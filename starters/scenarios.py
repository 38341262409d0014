"""Named end-to-end scenarios against a running stack: `cardflow histories
record` records their workflow histories for replay tests, and the demo's
walk-through (starters/demo.py) takes its steps from them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

from temporalio.client import Client, WorkflowHandle

from activities.database import create_pool
from activities.ledger import Ledger
from activities.providers.kyc import KycClient
from schemas.accounts import system_account
from schemas.cards import CardIssueInput, CardPolicy, CardStateChange
from schemas.customers import CustomerProfile
from schemas.fx import FxConversionInput, FxPolicy
from schemas.issuer import Address
from schemas.kyc import KycDecision, KycDocumentType, KycRejectType
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.onboarding import (
    DocumentSpec,
    KycReview,
    OnboardingInput,
    OnboardingPolicy,
    OnboardingStatus,
    Resubmission,
)
from schemas.providers import KYC
from starters.cards import issue_card
from starters.health import ping
from starters.onboarding import resubmit, review, start_onboarding
from starters.updates import execute_update
from workers.settings import Settings
from workflows.card_issue import CardIssue
from workflows.cards import CardEntity, card_workflow_id
from workflows.health import ping_workflow_id
from workflows.onboarding import Onboarding, wallet_code

STAGE_WAIT_SECONDS_MAX = 60
# A scenario's closed card ends its process this soon (no late money comes).
SCENARIO_CLOSED_LINGER_SECONDS = 1
SCENARIO_ADDRESS = Address(
    line1="1 Analytical Way", city="London", postal_code="N1 9GU", country="GB"
)
PASSPORT = DocumentSpec(type=KycDocumentType.PASSPORT, country="DEU", file_name="passport.jpg")

# A scenario returns the ids of the workflows it ran (recorded in that order).
Scenario = Callable[[Client, Settings], Awaitable[str | list[str]]]


def new_customer(tag: str) -> CustomerProfile:
    customer_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    return CustomerProfile(
        customer_id=customer_id,
        first_name="Ada",
        last_name="Lovelace",
        date_of_birth=date(1990, 12, 10),
        country="DEU",
        email=f"{customer_id}@example.com",
    )


async def reach(handle: WorkflowHandle[Any, Any], stage: str) -> OnboardingStatus:
    """Wait until the onboarding reports `stage`."""
    status: OnboardingStatus | None = None
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        status = await handle.query(Onboarding.status)
        if status.stage == stage:
            return status
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{handle.id} never reached {stage!r} (last: {status})")


async def decide_kyc(
    settings: Settings,
    applicant_id: str,
    result: KycDecision,
    reject_type: KycRejectType | None = None,
    labels: tuple[str, ...] = (),
) -> None:
    async with KycClient(f"{settings.providers_base_url}/{KYC}") as kyc:
        await kyc.simulate_decision(
            applicant_id,
            result=result,
            reject_type=reject_type,
            labels=labels,
            idempotency_key=f"decide-{uuid.uuid4()}",
        )


async def _onboard(
    client: Client, settings: Settings, tag: str, policy: OnboardingPolicy | None = None
) -> WorkflowHandle[Any, Any]:
    request = OnboardingInput(
        profile=new_customer(tag), documents=[PASSPORT], policy=policy or OnboardingPolicy()
    )
    return await start_onboarding(client, settings.task_queues, request)


async def ping_scenario(client: Client, settings: Settings) -> str:
    workflow_id = ping_workflow_id(f"scenario-{uuid.uuid4().hex[:8]}")
    await ping(client, settings.task_queues, requested_by="scenario", workflow_id=workflow_id)
    return workflow_id


async def onboarding_approved(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "approved")
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(settings, status.applicant_id or "", KycDecision.GREEN)
    await handle.result()
    return handle.id


async def onboarding_resubmitted(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "resubmitted")
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(
        settings,
        status.applicant_id or "",
        KycDecision.RED,
        KycRejectType.RETRY,
        ("DOCUMENT_BLURRY",),
    )
    await reach(handle, "waiting for resubmitted documents")
    await resubmit(client, status.customer_id, Resubmission(documents=[PASSPORT]))
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(settings, status.applicant_id or "", KycDecision.GREEN)
    await handle.result()
    return handle.id


async def onboarding_rejected(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "rejected")
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(
        settings, status.applicant_id or "", KycDecision.RED, KycRejectType.FINAL, ("FORGERY",)
    )
    await handle.result()
    return handle.id


async def onboarding_reviewed(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "reviewed")
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(settings, status.applicant_id or "", KycDecision.ON_HOLD)
    await reach(handle, "in operator review")
    await review(
        client,
        status.customer_id,
        KycReview(decision="approve", reason="documents match", operator="op-demo"),
    )
    await handle.result()
    return handle.id


async def onboarding_expired(client: Client, settings: Settings) -> str:
    handle = await _onboard(
        client, settings, "expired", OnboardingPolicy(kyc_result_wait_seconds=1)
    )
    await handle.result()
    return handle.id


async def _fund_wallet(
    settings: Settings, customer_id: str, amount_minor: int, *, key: str = ""
) -> None:
    """A bank transfer arrives in the customer's USD wallet (straight to the
    ledger); `key` tells a customer's later transfers from the first."""
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        ledger = Ledger(pool)
        await ledger.open_account(system_account("bank:inbound:USD"))
        await ledger.transfer(
            TransferRequest(
                key=f"scenario-funding/{customer_id}" + (f"/{key}" if key else ""),
                debit="bank:inbound:USD",
                credit=wallet_code(customer_id, "USD"),
                amount_minor=amount_minor,
                currency=Currency.USD,
            )
        )
    finally:
        await pool.close()


async def funded_virtual_card(
    client: Client, settings: Settings, funds_minor: int = 10_000
) -> tuple[str, str, str]:
    """An approved customer with `funds_minor` USD and an open virtual card:
    (customer id, card-issue workflow id, card id)."""
    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await _fund_wallet(settings, customer_id, funds_minor)
    issued = await issue_card(
        client,
        settings.task_queues,
        CardIssueInput(
            request_id=f"scenario-{uuid.uuid4().hex[:8]}",
            customer_id=customer_id,
            kind="virtual",
            address=SCENARIO_ADDRESS,
            # The scenarios close their cards and wait for the card's process
            # to end: no window for late money after closing.
            card_policy=CardPolicy(closed_linger_seconds=SCENARIO_CLOSED_LINGER_SECONDS),
        ),
    )
    return customer_id, issued.id, (await issued.result()).card_id or ""


async def card_virtual(client: Client, settings: Settings) -> list[str]:
    """An approved customer gets a virtual card, freezes, unfreezes and closes it."""
    _, issue_id, card_id = await funded_virtual_card(client, settings)
    card = client.get_workflow_handle(card_workflow_id(card_id))
    for update in (CardEntity.freeze, CardEntity.unfreeze, CardEntity.close):
        await execute_update(card, update, CardStateChange(reason="scenario"))
    await card.result()
    return [issue_id, card.id]


async def _fx_quote(
    client: Client, settings: Settings, tag: str, policy: FxPolicy | None = None
) -> tuple[str, str]:
    """An approved customer with 100.00 USD asks to sell 50.00 USD for EUR;
    returns (customer id, request id) once quoted."""
    from starters.fx import quote

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await _fund_wallet(settings, customer_id, 10_000)
    request = FxConversionInput(
        request_id=f"scenario-{tag}-{uuid.uuid4().hex[:8]}",
        customer_id=customer_id,
        sell_currency=Currency.USD,
        buy_currency=Currency.EUR,
        sell_amount_minor=5_000,
        policy=policy or FxPolicy(),
    )
    await quote(client, settings.task_queues, request)
    return customer_id, request.request_id


async def fx_confirmed(client: Client, settings: Settings) -> str:
    """The customer confirms the quote: one atomic batch, then a notice."""
    from starters.fx import confirm
    from workflows.fx import fx_workflow_id

    _, request_id = await _fx_quote(client, settings, "fx-confirmed")
    await confirm(client, request_id)
    handle = client.get_workflow_handle(fx_workflow_id(request_id))
    await handle.result()
    return handle.id


async def fx_expired(client: Client, settings: Settings) -> str:
    """Nobody confirms: the quote expires (policy: 1 s) and nothing is posted."""
    from workflows.fx import fx_workflow_id

    policy = FxPolicy(confirm_wait_seconds_max=1, late_confirm_window_seconds=1)
    _, request_id = await _fx_quote(client, settings, "fx-expired", policy)
    handle = client.get_workflow_handle(fx_workflow_id(request_id))
    await handle.result()
    return handle.id


async def cashback_clawback(client: Client, settings: Settings) -> str:
    """A funded customer's 50.00 USD grocery purchase earns 2% cashback (1.00 USD);
    a refund of half claws back half, a refund of the rest the rest, and the
    process ends."""
    from datetime import UTC, datetime

    from activities.cashback import CashbackStore
    from schemas.cashback import CashbackInput, CashbackRefund, CashbackStatus
    from starters.cashback import (
        SAMPLE_CAMPAIGNS_FILE,
        read_campaign_file,
        refund,
        start_cashback,
    )
    from starters.cashback import status as cashback_status

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await _fund_wallet(settings, customer_id, 10_000)
    request = CashbackInput(
        transaction_id=f"scenario-{uuid.uuid4().hex[:8]}",
        customer_id=customer_id,
        card_id=f"card-scenario-{uuid.uuid4().hex[:6]}",
        amount_minor=5_000,
        currency=Currency.USD,
        mcc="5411",
        merchant_name="Corner Grocer",
        occurred_at=datetime.now(UTC),
    )
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        store = CashbackStore(pool)
        await store.load_campaigns(read_campaign_file(SAMPLE_CAMPAIGNS_FILE).campaigns)
        # What the card process does on clearing, before it starts the cashback.
        await store.add_card_transaction(
            transaction_id=request.transaction_id,
            card_id=request.card_id,
            customer_id=customer_id,
            amount_minor=request.amount_minor,
            currency=request.currency,
            occurred_at=request.occurred_at,
            mcc=request.mcc,
            merchant_name=request.merchant_name,
        )
    finally:
        await pool.close()
    handle = await start_cashback(client, settings.task_queues, request)

    async def until(done: Callable[[CashbackStatus], bool]) -> None:
        for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
            if done(await cashback_status(client, request.transaction_id)):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{handle.id} did not get there")

    await until(lambda s: s.stage == "open for refunds" and s.notified)
    await refund(
        client, request.transaction_id, CashbackRefund(refund_id="refund-1", amount_minor=2_500)
    )
    await until(lambda s: len(s.refunds) == 1)
    await refund(
        client, request.transaction_id, CashbackRefund(refund_id="refund-2", amount_minor=2_500)
    )
    await handle.result()
    return handle.id


async def topup_reaching(client: Client, workflow_id: str, done: Callable[[Any], bool]) -> None:
    """Wait until the top-up (started by a webhook) reports a status `done` accepts."""
    from temporalio.service import RPCError

    from workflows.topup import Topup

    handle = client.get_workflow_handle(workflow_id)
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        try:
            if done(await handle.query(Topup.status)):
                return
        except RPCError:
            pass  # its webhook has not started it yet
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{workflow_id} never reached the expected status")


async def topup_bank(client: Client, settings: Settings) -> str:
    """A bank transfer of 100.00 USD referencing an approved customer: its
    webhook starts the top-up, which credits the wallet less the fee."""
    from starters.topup import simulate_bank_transfer
    from workflows.topup import topup_workflow_id

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    transfer = await simulate_bank_transfer(settings, customer_id, 10_000, Currency.USD)
    workflow_id = topup_workflow_id("bank", transfer.id)
    await topup_reaching(client, workflow_id, lambda status: status.outcome is not None)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id


async def topup_collects_debt(client: Client, settings: Settings) -> str:
    """An approved customer owes 30.00 USD (a lost dispute's shortfall, recorded
    straight on the ledger); a 100.00 USD bank transfer repays it from the credit."""
    from schemas.disputes import customer_debt, customer_debt_spec

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        ledger = Ledger(pool)
        await ledger.open_account(system_account("disputes:provisional:USD"))
        await ledger.open_account(customer_debt_spec(customer_id, Currency.USD))
        await ledger.transfer(
            TransferRequest(
                key=f"scenario-debt/{customer_id}",
                debit=customer_debt(customer_id, Currency.USD),
                credit="disputes:provisional:USD",
                amount_minor=3_000,
                currency=Currency.USD,
            )
        )
    finally:
        await pool.close()
    from starters.topup import simulate_bank_transfer
    from workflows.topup import topup_workflow_id

    transfer = await simulate_bank_transfer(settings, customer_id, 10_000, Currency.USD)
    workflow_id = topup_workflow_id("bank", transfer.id)
    await topup_reaching(client, workflow_id, lambda status: status.outcome is not None)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id


async def topup_unmatched(client: Client, settings: Settings) -> str:
    """A bank transfer whose reference names no customer waits in review; an
    operator assigns it to an approved customer, and it is credited."""
    from schemas.topup import TopupReview
    from starters.topup import review, simulate_bank_transfer
    from workflows.topup import topup_workflow_id
    from workflows.topup_steps import STAGE_REVIEW

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    transfer = await simulate_bank_transfer(settings, "INVOICE 2291", 5_000, Currency.USD)
    workflow_id = topup_workflow_id("bank", transfer.id)
    await topup_reaching(client, workflow_id, lambda status: status.stage == STAGE_REVIEW)
    decision = TopupReview(
        decision="approve",
        reason="payer confirmed by phone",
        operator="op-demo",
        customer_id=customer_id,
    )
    await review(client, "bank", transfer.id, decision)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id


def _has_confirmations(count: int, status: Any) -> bool:
    return bool(status.confirmations == count)


async def topup_usdt(client: Client, settings: Settings) -> str:
    """25 USDT land at an approved customer's address; the top-up follows the
    confirmations (1, 6, then finality at 19) and credits the USD wallet
    through the FX pools at a firm quote."""
    from functools import partial

    from starters.topup import mine_blocks, simulate_deposit
    from workflows.topup import topup_workflow_id
    from workflows.topup_steps import STAGE_CONFIRMATIONS

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    deposit = await simulate_deposit(settings, customer_id, 25_000_000)
    workflow_id = topup_workflow_id("usdt", deposit.tx_hash)
    await topup_reaching(client, workflow_id, lambda status: status.stage == STAGE_CONFIRMATIONS)
    for blocks, seen in ((1, 1), (5, 6)):
        await mine_blocks(settings, blocks)
        await topup_reaching(client, workflow_id, partial(_has_confirmations, seen))
    await mine_blocks(settings, 13)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"never: {what}")


async def purchase_with_cashback(
    client: Client, settings: Settings, customer_id: str, card_id: str
) -> tuple[str, str]:
    """On an open USD card: a 50.00 grocery purchase authorized in real time,
    cleared at 42.00 (the rest released), cashback paid on it, then 20.00
    refunded and the cashback clawed back in proportion. Returns the
    authorization and the clearing's transaction ids."""
    from activities.cashback import CashbackStore
    from schemas.issuer import Merchant
    from starters.cashback import SAMPLE_CAMPAIGNS_FILE, read_campaign_file
    from starters.cashback import status as cashback_status
    from starters.simulate import authorize, clear, refund

    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        await CashbackStore(pool).load_campaigns(
            read_campaign_file(SAMPLE_CAMPAIGNS_FILE).campaigns
        )
    finally:
        await pool.close()
    grocer = Merchant(name="Corner Grocer", mcc="5411", country="GB")
    authorization = await authorize(settings, card_id, 5_000, merchant=grocer)
    if authorization.status.value != "pending":
        raise RuntimeError(f"purchase declined: {authorization.decision_reason}")
    cleared = await clear(settings, authorization.id, 4_200, final=True)

    async def paid() -> bool:
        try:
            found = await cashback_status(client, cleared.id)
        except Exception:  # noqa: BLE001 - not started yet
            return False
        return found.stage in ("open for refunds", "completed")

    await _until(paid, "the purchase's cashback is paid")
    refunded = await refund(
        settings, card_id, 2_000, merchant=grocer, refunded_transaction_id=cleared.id
    )

    async def clawed_back() -> bool:
        found = await cashback_status(client, cleared.id)
        return any(r.refund_id == refunded.id for r in found.refunds)

    await _until(clawed_back, "the cashback is clawed back")
    card = client.get_workflow_handle(card_workflow_id(card_id))

    async def settled() -> bool:
        state = await card.query(CardEntity.status)
        return not state.authorizations and refunded.id in state.seen_events

    await _until(settled, "the card settles the purchase and the refund")
    return authorization.id, cleared.id


async def card_purchase(client: Client, settings: Settings) -> list[str]:
    """A virtual card's purchase, clearing, cashback and refund; then it closes."""
    from workflows.cashback import cashback_workflow_id

    customer_id, _, card_id = await funded_virtual_card(client, settings)
    _, transaction_id = await purchase_with_cashback(client, settings, customer_id, card_id)
    card = client.get_workflow_handle(card_workflow_id(card_id))
    await execute_update(card, CardEntity.close, CardStateChange(reason="scenario"))
    await card.result()
    return [card.id, cashback_workflow_id(transaction_id)]


async def card_exception(client: Client, settings: Settings) -> list[str]:
    """The issuer force-posts more than the wallet holds: the card raises an
    exception (ProcessStatus `exception`); the customer pays in and an operator
    charges the wallet, so the ledger matches the issuer's settlement; then the
    card closes."""
    from schemas.cards import ExceptionDecision
    from starters.cards import resolve_exception
    from starters.simulate import force_post

    customer_id, _, card_id = await funded_virtual_card(client, settings)
    await force_post(settings, card_id, 50_000)
    card = client.get_workflow_handle(card_workflow_id(card_id))

    async def raised() -> bool:
        state = await card.query(CardEntity.status)
        return any(e.resolution is None for e in state.exceptions)

    await _until(raised, "the card raises an exception")
    state = await card.query(CardEntity.status)
    [raised_exception] = [e for e in state.exceptions if e.resolution is None]
    await _fund_wallet(settings, customer_id, 50_000, key="exception")
    await resolve_exception(
        client,
        card_id,
        ExceptionDecision(exception_id=raised_exception.id, action="charge", reason="scenario"),
    )
    await execute_update(card, CardEntity.close, CardStateChange(reason="scenario"))
    await card.result()
    return [card.id]


async def _ship_and_activate(
    client: Client, settings: Settings, card_id: str, request_id: str
) -> None:
    """The issuer ships the physical card to delivery; the customer activates it."""
    from activities.providers.issuer import IssuerClient
    from schemas.issuer import ShippingStatus
    from starters.cards import activate
    from workflows.card_issue import card_issue_workflow_id

    issuing = client.get_workflow_handle(card_issue_workflow_id(request_id))
    async with IssuerClient(f"{settings.providers_base_url}/issuer") as issuer:
        for step in (ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED, ShippingStatus.DELIVERED):
            await issuer.simulate_shipping(
                card_id, status=step, idempotency_key=f"scenario-{card_id}-{step.value}"
            )

    async def delivered() -> bool:
        status = await issuing.query(CardIssue.status)
        return status.stage == "delivered: waiting for activation"

    await _until(delivered, f"card {card_id} is delivered")
    await activate(client, request_id)
    await issuing.result()


async def physical_card_reported_lost(client: Client, settings: Settings) -> tuple[str, str]:
    """An approved customer's physical card, delivered and activated, then
    reported lost: (the lost card's id, its replacement's id)."""
    from starters.cards import change_card

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await _fund_wallet(settings, customer_id, 10_000)
    issued = await issue_card(
        client,
        settings.task_queues,
        CardIssueInput(
            request_id=f"scenario-{uuid.uuid4().hex[:8]}",
            customer_id=customer_id,
            kind="physical",
            address=SCENARIO_ADDRESS,
            card_policy=CardPolicy(closed_linger_seconds=SCENARIO_CLOSED_LINGER_SECONDS),
        ),
    )

    async def shipping() -> bool:
        status = await issued.query(CardIssue.status)
        return status.stage == "shipping"

    await _until(shipping, "the physical card is ordered")
    card_id = (await issued.query(CardIssue.status)).card_id or ""
    await _ship_and_activate(client, settings, card_id, issued.id.removeprefix("card-issue/"))
    replacement = await change_card(client, card_id, "report_lost", "scenario")
    await client.get_workflow_handle(card_workflow_id(card_id)).result()
    return card_id, replacement


async def card_replaced(client: Client, settings: Settings) -> list[str]:
    """A physical card is reported lost; its replacement ships, is activated
    once delivered (its issuing is named after the new card) and later closed."""
    from workflows.card_issue import card_issue_workflow_id
    from workflows.cards import replacement_request_id

    card_id, replacement = await physical_card_reported_lost(client, settings)
    request_id = replacement_request_id(replacement)
    await _ship_and_activate(client, settings, replacement, request_id)
    card = client.get_workflow_handle(card_workflow_id(replacement))
    await execute_update(card, CardEntity.close, CardStateChange(reason="scenario"))
    await card.result()
    return [card_workflow_id(card_id), card_issue_workflow_id(request_id)]


async def billing_period(client: Client, settings: Settings) -> list[str]:
    """A funded customer with a virtual card; the monthly run for the month
    before (the latest that has ended) bills every customer who held a card
    then, and the customer's own billing of that month writes the statement
    (the card came after it: no fee)."""
    from datetime import UTC, datetime

    from schemas.billing import BillingInput, BillingRunInput, previous_period
    from starters.billing import bill, run_billing, statements_dir
    from workflows.billing import billing_run_workflow_id, billing_workflow_id

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await _fund_wallet(settings, customer_id, 10_000)
    issued = await issue_card(
        client,
        settings.task_queues,
        CardIssueInput(
            request_id=f"scenario-{uuid.uuid4().hex[:8]}",
            customer_id=customer_id,
            kind="virtual",
            address=SCENARIO_ADDRESS,
        ),
    )
    await issued.result()
    period = previous_period(datetime.now(UTC))
    directory = str(statements_dir(settings))
    await run_billing(
        client,
        settings.task_queues,
        BillingRunInput(period=period, statements_dir=directory),
    )
    await bill(
        client,
        settings.task_queues,
        BillingInput(customer_id=customer_id, period=period, statements_dir=directory),
    )
    return [billing_run_workflow_id(period), billing_workflow_id(customer_id, period)]


async def _dispute(client: Client, settings: Settings, outcome: str, contested: bool) -> str:
    """A funded customer's virtual card; a purchase disputed, credited provisionally, decided."""
    from schemas.issuer import DisputeOutcome
    from starters.dispute import dispute_purchase

    customer_id, _, card_id = await funded_virtual_card(client, settings)
    return await dispute_purchase(
        client,
        settings,
        customer_id,
        card_id,
        amount_minor=2_000,
        outcome=DisputeOutcome(outcome),
        contested=contested,
    )


async def dispute_won(client: Client, settings: Settings) -> str:
    """A purchase disputed, credited provisionally, then won: the issuer pays."""
    return await _dispute(client, settings, "won", contested=False)


async def dispute_lost(client: Client, settings: Settings) -> str:
    """A purchase disputed and credited provisionally; the merchant contests, the
    customer answers (pre-arbitration), the dispute is lost and the credit reversed."""
    return await _dispute(client, settings, "lost", contested=True)


async def reconciliation_clean(client: Client, settings: Settings) -> list[str]:
    """A funded customer's card clears a purchase on a day that has ended
    (the issuer's clock set a day behind for it); the daily action, started
    by hand for that day, reconciles it: every record matched, no drift."""
    from schemas.reconciliation import (
        ReconciliationResult,
        ScheduledReconciliationInput,
        ScheduledReconciliationResult,
    )
    from starters.reconcile import DAILY_SCHEDULE_ID, reports_dir, summary
    from starters.simulate import authorize, clear, set_issuer_clock_behind
    from workflows.scheduled_reconciliation import (
        SCHEDULED_RECONCILIATION_WORKFLOW,
        scheduled_reconciliation_start_metadata,
    )

    _, _, card_id = await funded_virtual_card(client, settings)
    day = await set_issuer_clock_behind(settings, days=1)
    try:
        authorization = await authorize(settings, card_id, 3_000)
        cleared = await clear(settings, authorization.id, 3_000, final=True)
    finally:
        await set_issuer_clock_behind(settings, days=0)
    card = client.get_workflow_handle(card_workflow_id(card_id))

    async def settled() -> bool:
        state = await card.query(CardEntity.status)
        return cleared.id in state.seen_events and not state.authorizations

    await _until(settled, f"the card settles {cleared.id}")
    queues = settings.task_queues
    driver_id = f"{DAILY_SCHEDULE_ID}-manual-{uuid.uuid4().hex[:8]}"
    driver = ScheduledReconciliationInput(
        settlement_date=day,
        reports_dir=reports_dir(settings),
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )
    metadata = scheduled_reconciliation_start_metadata(driver)
    started: ScheduledReconciliationResult = await client.execute_workflow(
        SCHEDULED_RECONCILIATION_WORKFLOW,
        driver,
        id=driver_id,
        task_queue=queues.workflows,
        static_summary=metadata.summary,
        static_details=metadata.details,
        result_type=ScheduledReconciliationResult,
    )
    result = await client.get_workflow_handle(
        started.workflow_id, result_type=ReconciliationResult
    ).result()
    if result.report.items or result.report.records_matched < 1:
        raise RuntimeError(f"the day did not reconcile clean:\n{summary(result)}")
    return [driver_id, started.workflow_id]


SCENARIOS: dict[str, Scenario] = {
    "ping": ping_scenario,
    "onboarding-approved": onboarding_approved,
    "onboarding-resubmitted": onboarding_resubmitted,
    "onboarding-rejected": onboarding_rejected,
    "onboarding-reviewed": onboarding_reviewed,
    "onboarding-expired": onboarding_expired,
    "card-virtual": card_virtual,
    "card-purchase": card_purchase,
    "card-replaced": card_replaced,
    "fx-confirmed": fx_confirmed,
    "fx-expired": fx_expired,
    "cashback-clawback": cashback_clawback,
    "topup-bank": topup_bank,
    "topup-usdt": topup_usdt,
    "topup-unmatched": topup_unmatched,
    "topup-collects-debt": topup_collects_debt,
    "billing-period": billing_period,
    "dispute-won": dispute_won,
    "dispute-lost": dispute_lost,
    "reconciliation-clean": reconciliation_clean,
    # After the reconciliation: a card exception is not (yet) one of the
    # card's postings, so its force post stays off the day reconciled.
    "card-exception": card_exception,
}
