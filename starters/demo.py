"""The walk-through `cardflow demo` (and `make demo`) prints once the stack is
up: a customer onboarded, topped up by bank transfer, given a virtual and a
physical card; then USDT, a conversion, a purchase with cashback and a
refund, disputes, the day reconciled, a statement, a withdrawal to a bank
account and a second customer's account closed, and the ledger verified;
at the end, the customer's overview and feed as an app reads them, and the
events an upstream app was sent.
Each line names the process it shows, so the Web UI link can follow it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import date

from temporalio.client import Client

from activities.database import create_pool
from activities.ledger import Ledger
from activities.ledger.verify import verify
from activities.providers.issuer import IssuerClient
from schemas.cards import CardIssueInput
from schemas.fx import FxConversionInput
from schemas.issuer import ShippingStatus
from schemas.kyc import KycDecision
from schemas.money import Currency
from schemas.onboarding import OnboardingInput
from schemas.topup import TopupResult
from starters.billing import demo_statement
from starters.cards import activate, issue_card
from starters.demo_app import register_demo_app, show_as_an_app
from starters.demo_money_out import demo_money_out
from starters.dispute import demo_disputes
from starters.fx import confirm, quote
from starters.onboarding import start_onboarding
from starters.reconcile import demo_reconciliation
from starters.scenario_steps import (
    PASSPORT,
    SCENARIO_ADDRESS,
    STAGE_WAIT_SECONDS_MAX,
    decide_kyc,
    new_customer,
    reach,
)
from starters.scenarios_cards import purchase_with_cashback
from starters.scenarios_topup import topup_reaching
from starters.simulate import set_issuer_clock_behind
from starters.topup import mine_blocks, simulate_bank_transfer, simulate_deposit
from workers.settings import Settings
from workflows.card_issue import CardIssue
from workflows.cards import card_workflow_id
from workflows.fx import fx_workflow_id
from workflows.onboarding import wallet_code
from workflows.topup import topup_workflow_id
from workflows.topup_steps import STAGE_CONFIRMATIONS

# What the walk-through says: a line, and the workflow id it shows (if any).
Say = Callable[[str, str | None], None]


async def walk_through(client: Client, settings: Settings, say: Say) -> None:
    """The walk-through `make demo` prints: onboarding, a virtual and a physical card.

    The simulated issuer's clock runs a day behind while it walks: what its
    cards do settles on yesterday, a day that has ended, which is the only
    kind of day a reconciliation accepts; the walk-through reconciles it."""
    settlement_day = await set_issuer_clock_behind(settings, days=1)
    say(
        f"The simulated issuer's clock runs a day behind: today's card activity settles on"
        f" {settlement_day.isoformat()}, a day that has ended, so it can be reconciled",
        None,
    )
    try:
        await _walk(client, settings, say, settlement_day)
    finally:
        await set_issuer_clock_behind(settings, days=0)


async def _walk(
    client: Client,
    settings: Settings,
    say: Say,
    settlement_day: date,
) -> None:
    profile = new_customer("demo")
    handle = await start_onboarding(
        client, settings.task_queues, OnboardingInput(profile=profile, documents=[PASSPORT])
    )
    say(f"Onboarding {profile.customer_id}: wallets opened, KYC applicant created", handle.id)
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(settings, status.applicant_id or "", KycDecision.GREEN)
    say("KYC provider answered GREEN (signed webhook -> gateway -> workflow)", None)
    result = await handle.result()
    say(f"Onboarding {result.outcome}: wallets {', '.join(result.wallets)}", handle.id)

    transfer = await simulate_bank_transfer(settings, profile.customer_id, 50_000, Currency.USD)
    bank_topup = topup_workflow_id("bank", transfer.id)
    await topup_reaching(client, bank_topup, lambda status: status.outcome is not None)
    credited = await client.get_workflow_handle(bank_topup, result_type=TopupResult).result()
    say(
        f"Bank transfer of 500.00 USD (webhook -> top-up): {credited.outcome}, "
        f"fee {credited.fee_minor}",
        bank_topup,
    )

    virtual = await issue_card(
        client,
        settings.task_queues,
        CardIssueInput(
            request_id=f"demo-virtual-{uuid.uuid4().hex[:6]}",
            customer_id=profile.customer_id,
            kind="virtual",
            address=SCENARIO_ADDRESS,
        ),
    )
    issued = await virtual.result()
    say(f"Virtual card {issued.card_id} open at once (fee {issued.fee_minor})", virtual.id)
    say("Its card entity workflow runs for the card's life", card_workflow_id(issued.card_id or ""))

    physical = await issue_card(
        client,
        settings.task_queues,
        CardIssueInput(
            request_id=f"demo-physical-{uuid.uuid4().hex[:6]}",
            customer_id=profile.customer_id,
            kind="physical",
            address=SCENARIO_ADDRESS,
        ),
    )
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        shipping = await physical.query(CardIssue.status)
        if shipping.stage == "shipping":
            break
        await asyncio.sleep(0.05)
    card_id = shipping.card_id or ""
    say(f"Physical card {card_id} ordered; following its shipment", physical.id)
    async with IssuerClient(f"{settings.providers_base_url}/issuer") as issuer:
        for step in (ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED, ShippingStatus.DELIVERED):
            await issuer.simulate_shipping(
                card_id, status=step, carrier="DHL", idempotency_key=f"demo-{card_id}-{step.value}"
            )
            while True:
                seen = (await physical.query(CardIssue.status)).shipping
                if seen is not None and seen.status is step:
                    break
                await asyncio.sleep(0.05)
            say(
                f"Shipping {step.value}: carrier {seen.carrier or '-'}, tracking "
                f"{seen.tracking_number or '-'}, ETA {seen.eta or '-'}",
                None,
            )
    request_id = physical.id.removeprefix("card-issue/")
    say(await activate(client, request_id), None)
    done = await physical.result()
    say(f"Physical card {done.card_id} {done.state} (fee {done.fee_minor})", physical.id)
    await _money(client, settings, say, profile.customer_id, issued.card_id or "", settlement_day)


async def _money(
    client: Client,
    settings: Settings,
    say: Say,
    customer_id: str,
    card_id: str,
    settlement_day: date,
) -> None:
    """The money part of the demo: a USDT top-up, a conversion, a purchase with
    cashback and a refund, every wallet balance, and the ledger verified; then
    what an app built on cardflow shows and was sent."""
    app_endpoint = await register_demo_app(client, settings, say)
    deposit = await simulate_deposit(settings, customer_id, 25_000_000)
    usdt_topup = topup_workflow_id("usdt", deposit.tx_hash)
    await topup_reaching(client, usdt_topup, lambda status: status.stage == STAGE_CONFIRMATIONS)
    say(f"25 USDT deposited on Tron (tx {deposit.tx_hash[:12]}): waiting for finality", usdt_topup)
    for blocks in (1, 5, 13):
        await mine_blocks(settings, blocks)
    topped = await client.get_workflow_handle(usdt_topup, result_type=TopupResult).result()
    say(
        f"USDT final after {deposit.finality_confirmations} confirmations: "
        f"{topped.outcome}, {topped.credited_minor} USD cents at quote {topped.quote_id}, "
        f"fee {topped.fee_minor}",
        usdt_topup,
    )

    offer = await quote(
        client,
        settings.task_queues,
        FxConversionInput(
            request_id=f"demo-fx-{uuid.uuid4().hex[:6]}",
            customer_id=customer_id,
            sell_currency=Currency.USD,
            buy_currency=Currency.EUR,
            sell_amount_minor=10_000,
        ),
    )
    converted = await confirm(client, offer.request_id)
    say(
        f"FX: sold {converted.sold_amount_minor} USD cents for EUR at {converted.rate} "
        f"({converted.outcome})",
        fx_workflow_id(offer.request_id),
    )

    authorization_id, transaction_id = await purchase_with_cashback(
        client, settings, customer_id, card_id
    )
    say(
        f"Purchase {authorization_id}: 50.00 USD authorized in real time and held, cleared "
        f"at 42.00 ({transaction_id}); cashback paid, then 20.00 refunded and the cashback "
        "clawed back in proportion",
        card_workflow_id(card_id),
    )

    await demo_disputes(client, settings, say, customer_id, card_id)
    await demo_reconciliation(client, settings, lambda line: say(line, None), settlement_day)
    await demo_statement(client, settings, say, customer_id)
    await demo_money_out(client, settings, say, customer_id)

    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        ledger = Ledger(pool)
        for currency in ("USD", "EUR"):
            balance = await ledger.balance(wallet_code(customer_id, currency))
            say(
                f"Wallet {currency}: posted {balance.posted}, held {balance.debits_pending}, "
                f"available {balance.available}",
                None,
            )
        violations = await verify(pool)
    finally:
        await pool.close()
    if violations:
        raise RuntimeError(f"ledger verify found {len(violations)} violations: {violations}")
    say("cardflow ledger verify: no violations", None)
    await show_as_an_app(client, settings, say, app_endpoint, customer_id, card_id)
