"""Closing an account: the cards frozen, then closed once their open
authorizations clear; the recorded debt settled from the balance; the rest
paid out through a withdrawal; the wallets closed at zero and the customer
marked closed. A payout that fails waits for an operator, who retries it to
another account or abandons the closure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from temporalio.client import WorkflowHandle

from activities.ledger import Ledger
from activities.ledger.verify import verify
from activities.providers.bank import BankClient
from schemas import accounts
from schemas.cards import CardInput
from schemas.closures import (
    ClosureDecision,
    ClosureInput,
    ClosurePolicy,
    ClosureResult,
    ClosureStatus,
)
from schemas.disputes import customer_debt, customer_debt_spec
from schemas.issuer import CardState
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.withdrawals import BankDestination
from tests import polling
from tests.conftest import Platform
from tests.customers import authorize, card_state, customer, issuer, open_card
from workflows.closure import (
    CLOSURE_WORKFLOW,
    DECIDE_UPDATE,
    STAGE_CLOSING_CARDS,
    STAGE_OPERATOR,
    closure_workflow_id,
)

ADA_IBAN = BankDestination(iban="DE89370400440532013000", name="Ada Lovelace")
ADA_OTHER_IBAN = BankDestination(iban="GB82WEST12345698765432", name="Ada Lovelace")
QUICK = ClosurePolicy(card_retry_seconds=1, return_watch_seconds=0, cards_wait_seconds=60)


async def start(
    platform: Platform, customer_id: str, destination: BankDestination = ADA_IBAN
) -> WorkflowHandle[Any, ClosureResult]:
    queues = platform.stack.queues
    return await platform.stack.client.start_workflow(
        CLOSURE_WORKFLOW,
        ClosureInput(
            customer_id=customer_id,
            destination=destination,
            requested_at=datetime.now(UTC),
            policy=QUICK,
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
            workflows_task_queue=queues.workflows,
        ),
        id=closure_workflow_id(customer_id),
        task_queue=queues.workflows,
        result_type=ClosureResult,
    )


async def reach(handle: WorkflowHandle[Any, Any], stage: str) -> ClosureStatus:
    async def status() -> ClosureStatus:
        found: ClosureStatus = await handle.query("status", result_type=ClosureStatus)
        return found

    return await polling.until(status, lambda found: found.stage == stage, f"reached {stage!r}")


async def owe(platform: Platform, customer_id: str, amount_minor: int) -> None:
    """A lost dispute's shortfall recorded as the customer's debt."""
    ledger = Ledger(platform.stack.pool)
    provisional = accounts.disputes_provisional(Currency.USD)
    await ledger.open_account(accounts.system_account(provisional))
    await ledger.open_account(customer_debt_spec(customer_id, Currency.USD))
    outcome = await ledger.transfer(
        TransferRequest(
            key=f"debt-{customer_id}",
            debit=customer_debt(customer_id, Currency.USD),
            credit=provisional,
            amount_minor=amount_minor,
            currency=Currency.USD,
        )
    )
    assert outcome.accepted, outcome


async def account_status(platform: Platform, customer_id: str) -> str:
    found: str = await platform.stack.pool.fetchval(
        "SELECT account_status FROM customers WHERE customer_id = $1", customer_id
    )
    return found


async def test_cards_closed_after_their_holds_debt_settled_balance_paid_out_wallet_closed(
    platform: Platform,
) -> None:
    customer_id, card_id, card = await open_card(platform)
    await owe(platform, customer_id, 700)
    held = await authorize(platform, card_id, 2_500)
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    handle = await start(platform, customer_id)
    # The card is frozen at once, and stays open while its authorization holds money.
    waiting = await reach(handle, STAGE_CLOSING_CARDS)
    assert waiting.cards_open == [card_id]
    frozen: CardInput = await card_state(card)
    assert frozen.state is CardState.PAUSED
    assert await account_status(platform, customer_id) == "closing"
    async with issuer(platform) as network:
        await network.simulate_clearing(
            held.id, amount_minor=2_500, final=True, idempotency_key=f"clear-{held.id}"
        )
    result = await handle.result()
    assert result.outcome == "closed", result
    assert result.cards_closed == [card_id]
    assert result.settled_debt == {Currency.USD: 700}
    assert result.paid_out == {Currency.USD: 10_000 - 2_500 - 700}
    assert (await card_state(card)).state is CardState.CLOSED
    ledger = Ledger(platform.stack.pool)
    wallet = await ledger.balance(accounts.wallet(customer_id, Currency.USD))
    assert (wallet.posted, wallet.debits_pending) == (0, 0)
    assert (await ledger.balance(customer_debt(customer_id, Currency.USD))).posted == 0
    status = await platform.stack.pool.fetchval(
        "SELECT status FROM ledger_accounts WHERE code = $1",
        accounts.wallet(customer_id, Currency.USD),
    )
    assert status == "closed"
    assert await account_status(platform, customer_id) == "closed"
    async with BankClient(platform.sim.provider_url("bank")) as bank:
        [payout] = await bank.payouts_by_reference(result.payouts[Currency.USD])
    assert (payout.amount_minor, payout.destination_iban, payout.status) == (
        6_800,
        ADA_IBAN.iban,
        "sent",
    )
    assert await verify(platform.stack.pool) == []


async def test_a_failed_payout_waits_for_an_operator_who_retries_to_another_account(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: 5_000})
    handle = await start(platform, customer_id)
    async with BankClient(platform.sim.provider_url("bank")) as bank:
        payouts = await polling.until(
            lambda: bank.payouts_by_reference(f"closure-{customer_id}-usd-1"),
            bool,
            "the first payout is asked for",
        )
        await bank.simulate_payout_failed(
            payouts[0].id, "account_closed", idempotency_key=f"fail-{payouts[0].id}"
        )
        waiting = await reach(handle, STAGE_OPERATOR)
        assert waiting.waiting_for_operator is not None
        assert "failed" in waiting.waiting_for_operator
        # Nothing left the wallet.
        wallet = await Ledger(platform.stack.pool).balance(
            accounts.wallet(customer_id, Currency.USD)
        )
        assert (wallet.posted, wallet.debits_pending) == (5_000, 0)
        platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
        await handle.execute_update(
            DECIDE_UPDATE,
            ClosureDecision(
                action="retry",
                destination=ADA_OTHER_IBAN,
                reason="the customer gave another account",
                operator="op-1",
            ),
        )
        result = await handle.result()
        [second] = await bank.payouts_by_reference(f"closure-{customer_id}-usd-2")
    assert result.outcome == "closed" and result.paid_out == {Currency.USD: 5_000}
    assert (second.destination_iban, second.amount_minor) == (ADA_OTHER_IBAN.iban, 5_000)
    assert await account_status(platform, customer_id) == "closed"
    assert await verify(platform.stack.pool) == []


async def test_an_abandoned_closure_leaves_the_account_open_and_the_money_in_it(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: 5_000})
    handle = await start(platform, customer_id)
    async with BankClient(platform.sim.provider_url("bank")) as bank:
        payouts = await polling.until(
            lambda: bank.payouts_by_reference(f"closure-{customer_id}-usd-1"),
            bool,
            "the payout is asked for",
        )
        await bank.simulate_payout_failed(
            payouts[0].id, "account_closed", idempotency_key=f"fail-{payouts[0].id}"
        )
    await reach(handle, STAGE_OPERATOR)
    await handle.execute_update(
        DECIDE_UPDATE,
        ClosureDecision(action="abandon", reason="the customer stays", operator="op-2"),
    )
    result = await handle.result()
    assert (result.outcome, result.reason) == ("abandoned", "operator op-2: the customer stays")
    wallet = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    assert (wallet.posted, wallet.debits_pending) == (5_000, 0)
    assert await account_status(platform, customer_id) == "open"
