"""The card's scenarios: a funded customer's virtual card frozen and closed,
a purchase with its cashback and refund, an exception an operator resolves,
and a physical card shipped, activated, reported lost and replaced."""

from __future__ import annotations

import uuid

from temporalio.client import Client

from activities.database import create_pool
from schemas.cards import CardIssueInput, CardPolicy, CardStateChange
from starters.cards import issue_card
from starters.scenario_steps import (
    SCENARIO_ADDRESS,
    SCENARIO_CLOSED_LINGER_SECONDS,
    fund_wallet,
    wait_until,
)
from starters.scenarios_onboarding import onboarding_approved
from starters.updates import execute_update
from workers.settings import Settings
from workflows.card_issue import CardIssue
from workflows.cards import CardEntity, card_workflow_id


async def funded_virtual_card(
    client: Client, settings: Settings, funds_minor: int = 10_000
) -> tuple[str, str, str]:
    """An approved customer with `funds_minor` USD and an open virtual card:
    (customer id, card-issue workflow id, card id)."""
    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await fund_wallet(settings, customer_id, funds_minor)
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

    await wait_until(paid, "the purchase's cashback is paid")
    refunded = await refund(
        settings, card_id, 2_000, merchant=grocer, refunded_transaction_id=cleared.id
    )

    async def clawed_back() -> bool:
        found = await cashback_status(client, cleared.id)
        return any(r.refund_id == refunded.id for r in found.refunds)

    await wait_until(clawed_back, "the cashback is clawed back")
    card = client.get_workflow_handle(card_workflow_id(card_id))

    async def settled() -> bool:
        state = await card.query(CardEntity.status)
        return not state.authorizations and refunded.id in state.seen_events

    await wait_until(settled, "the card settles the purchase and the refund")
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

    await wait_until(raised, "the card raises an exception")
    state = await card.query(CardEntity.status)
    [raised_exception] = [e for e in state.exceptions if e.resolution is None]
    await fund_wallet(settings, customer_id, 50_000, key="exception")
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

    await wait_until(delivered, f"card {card_id} is delivered")
    await activate(client, request_id)
    await issuing.result()


async def physical_card_reported_lost(client: Client, settings: Settings) -> tuple[str, str]:
    """An approved customer's physical card, delivered and activated, then
    reported lost: (the lost card's id, its replacement's id)."""
    from starters.cards import change_card

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await fund_wallet(settings, customer_id, 10_000)
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

    await wait_until(shipping, "the physical card is ordered")
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
