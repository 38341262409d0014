"""The cashback's scenario: a purchase's cashback paid, then clawed back by two refunds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from temporalio.client import Client

from activities.database import create_pool
from schemas.money import Currency
from starters.scenario_steps import STAGE_WAIT_SECONDS_MAX, fund_wallet
from starters.scenarios_onboarding import onboarding_approved
from workers.settings import Settings


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
    await fund_wallet(settings, customer_id, 10_000)
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
