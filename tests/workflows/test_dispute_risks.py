"""Disputes where money is at risk: a dispute the network never decides, a
provisional credit the ledger refuses, a reversal that loses the race for the
wallet, an issuer that refuses to open the dispute, partial and excessive
amounts, refunds, and an escalation the issuer refuses.

Each runs end to end as the other dispute tests do (a real cleared purchase,
the issuer's decisions as signed webhooks through the gateway) and checks
the money to the unit: the wallet, `disputes:provisional`, the customer's
debt, and every ledger posting the dispute made under its own keys."""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from activities.disputes import ISSUER_ESCALATE, ISSUER_GET
from activities.ledger import Ledger
from activities.ledger.errors import AccountNotFound
from activities.ledger.verify import verify
from schemas import accounts
from schemas.disputes import (
    DisputeInput,
    DisputePolicy,
    DisputeResult,
    OperatorAction,
    customer_debt,
)
from schemas.issuer import DisputeEvidence, DisputeOutcome, DisputeReason, DisputeStatus
from schemas.money import Currency
from starters import dispute as disputes
from tests import polling
from tests.conftest import Platform
from tests.customers import (
    SHOP,
    issuer,
    open_card,
    wallet,
    wallet_becomes,
)
from tests.interruptions import balances_locked, until_waiting
from tests.workflows.test_dispute import (
    AT_ONCE,
    QUIET,
    STATEMENT,
    decide,
    issuer_dispute,
    open_dispute,
    purchase,
    stage,
    submitted,
)
from workflows.dispute import dispute_workflow_id

USD = "USD"


# ----- what the dispute wrote -------------------------------------------------------


async def postings(platform: Platform, transaction_id: str) -> dict[str, tuple[str, str, int]]:
    """The dispute's ledger transfers by step: (debit, credit, amount_minor)."""
    prefix = f"{dispute_workflow_id(transaction_id)}/"
    rows = await platform.stack.pool.fetch(
        "SELECT t.idempotency_key, d.code AS debit, c.code AS credit, t.amount_minor"
        " FROM ledger_transfers t"
        " JOIN ledger_accounts d ON d.id = t.debit_account_id"
        " JOIN ledger_accounts c ON c.id = t.credit_account_id"
        " WHERE starts_with(t.idempotency_key, $1) ORDER BY t.id",
        prefix,
    )
    return {
        row["idempotency_key"].removeprefix(prefix): (
            row["debit"],
            row["credit"],
            row["amount_minor"],
        )
        for row in rows
    }


async def rejections(platform: Platform, transaction_id: str) -> dict[str, str]:
    """The dispute's postings the ledger refused, by step: the rejection's code."""
    prefix = f"{dispute_workflow_id(transaction_id)}/"
    rows = await platform.stack.pool.fetch(
        "SELECT idempotency_key, code FROM ledger_rejections"
        " WHERE starts_with(idempotency_key, $1)",
        prefix,
    )
    return {row["idempotency_key"].removeprefix(prefix): row["code"] for row in rows}


async def posted(platform: Platform, code: str) -> int | None:
    """An account's posted balance (credits - debits); None if it was never opened."""
    try:
        return (await Ledger(platform.stack.pool).balance(code)).posted
    except AccountNotFound:
        return None


def disputes_opened_at_the_issuer(platform: Platform) -> list[str]:
    """The ids of every dispute the issuer opened (announced as dispute.created)."""
    deliveries = platform.sim.admin("GET", "/webhooks")
    return [event["about"] for event in deliveries if event["type"] == "dispute.created"]


def provisional_account() -> str:
    return accounts.disputes_provisional(USD)


def wallet_account(customer_id: str) -> str:
    return accounts.wallet(customer_id, USD)


async def refund(platform: Platform, card_id: str, of: str, amount: int) -> str:
    """The merchant refunds `amount` of purchase `of`: the refund's id, once recorded."""
    async with issuer(platform) as client:
        refunded = await client.simulate_refund(
            card_id=card_id,
            amount_minor=amount,
            currency=Currency.USD,
            merchant=SHOP,
            refunded_transaction_id=of,
            idempotency_key=f"refund-{uuid.uuid4().hex}",
        )

    async def recorded() -> bool:
        kind = await platform.stack.pool.fetchval(
            "SELECT kind FROM card_transactions WHERE transaction_id = $1", refunded.id
        )
        return bool(kind == "refund")

    await polling.eventually(recorded, f"the card recorded the refund {refunded.id}")
    return refunded.id


async def dispute_of(
    platform: Platform,
    customer_id: str,
    transaction_id: str,
    *,
    amount_minor: int | None,
    policy: DisputePolicy = AT_ONCE,
) -> WorkflowHandle[Any, DisputeResult]:
    """A fraud dispute of `amount_minor` of the transaction (None: all of it)."""
    return await disputes.open_dispute(
        platform.stack.client,
        platform.stack.queues,
        DisputeInput(
            transaction_id=transaction_id,
            customer_id=customer_id,
            reason=DisputeReason.FRAUDULENT,
            amount_minor=amount_minor,
            evidence=[STATEMENT],
            policy=policy,
        ),
    )


# ----- the network never decides ----------------------------------------------------


async def test_a_dispute_the_network_never_decides_ends_undecided_with_the_credit_left_in_place(
    platform: Platform,
) -> None:
    """Undecided after `decision_wait_seconds_max`, the process hands the
    dispute to an operator: the provisional credit stays on the wallet (owed
    by `disputes:provisional`), and the dispute stays open at the issuer. A
    loss the network decides later finds no process: the gateway records its
    webhook as ignored, and the credit stays where it is for the operator."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 3_000)
    policy = AT_ONCE.model_copy(update={"decision_wait_seconds_max": 3})
    handle = await open_dispute(platform, customer_id, transaction_id, policy=policy)
    dispute_id = await submitted(platform, transaction_id)

    result = await handle.result()
    assert (result.outcome, result.issuer_dispute_id) == ("undecided", dispute_id)
    assert result.reason == "the network did not decide in time; an operator takes over"
    assert (
        result.provisional_credit_minor,
        result.reversed_minor,
        result.debt_minor,
        result.final_credit_minor,
    ) == (3_000, 0, 0, 0)
    assert (await disputes.status(platform.stack.client, transaction_id)).stage == "undecided"
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (10_000, 0)
    assert await posted(platform, provisional_account()) == -3_000
    assert await postings(platform, transaction_id) == {
        "provisional-credit": (provisional_account(), wallet_account(customer_id), 3_000)
    }
    assert await posted(platform, customer_debt(customer_id, USD)) is None
    # Never withdrawn: the network may still decide, and an operator follows it.
    assert (await issuer_dispute(platform, dispute_id)).status == DisputeStatus.OPEN
    assert await verify(platform.stack.pool) == []

    await decide(platform, dispute_id, DisputeOutcome.LOST)

    async def ignored() -> bool:
        outcome = await platform.stack.pool.fetchval(
            "SELECT outcome FROM gateway_webhook_events"
            " WHERE event_type = 'dispute.lost' AND workflow_id IS NULL"
        )
        return bool(outcome == "ignored")

    await polling.eventually(ignored, "the late decision's webhook taken and ignored")
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (10_000, 0)
    assert await posted(platform, provisional_account()) == -3_000
    assert len(await postings(platform, transaction_id)) == 1


# ----- a provisional credit the ledger refuses --------------------------------------


async def test_a_provisional_credit_the_ledger_refuses_is_not_retried_and_a_loss_takes_nothing_back(
    platform: Platform,
) -> None:
    """The ledger refuses the provisional credit (the wallet is closed): the
    refusal is recorded once, nothing moves, an operator's `credit_now` is
    refused naming it, and a lost decision takes nothing back and records no
    debt."""
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 2_000})
    transaction_id = await purchase(platform, card_id, 2_000)
    await wallet_becomes(platform, customer_id, posted=0, pending=0)
    assert await Ledger(platform.stack.pool).close_account(wallet_account(customer_id))
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)

    async def refused_and_taken_in() -> bool:
        if "provisional-credit" not in await rejections(platform, transaction_id):
            return False
        # Recorded by the activity, then taken in by the process, which goes back to waiting.
        view = await disputes.status(platform.stack.client, transaction_id)
        return view.stage == "submitted"

    await polling.eventually(refused_and_taken_in, "the provisional credit refused and taken in")
    assert await rejections(platform, transaction_id) == {"provisional-credit": "account_closed"}
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await disputes.operator_action(
            platform.stack.client,
            transaction_id,
            OperatorAction(action="credit_now", operator="ops-1"),
        )
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.message == "the provisional credit was already given (or refused)"

    await decide(platform, dispute_id, DisputeOutcome.LOST)
    result = await handle.result()
    assert (
        result.outcome,
        result.provisional_credit_minor,
        result.reversed_minor,
        result.debt_minor,
        result.final_credit_minor,
    ) == ("lost", 0, 0, 0, 0)
    assert await postings(platform, transaction_id) == {}
    assert await rejections(platform, transaction_id) == {"provisional-credit": "account_closed"}
    assert await posted(platform, wallet_account(customer_id)) == 0
    assert await posted(platform, provisional_account()) == 0
    assert await posted(platform, customer_debt(customer_id, USD)) is None
    assert await verify(platform.stack.pool) == []


# ----- the reversal loses the race for the wallet -----------------------------------


async def lost_while_a_force_post_takes_the_wallet(
    platform: Platform, customer_id: str, card_id: str, dispute_id: str, amount: int
) -> None:
    """The network decides against the customer while a merchant's force post
    of `amount` is being posted: the reversal reads the wallet before the force
    post commits and debits it after, so its first debit is refused."""
    async with balances_locked(platform.stack.database_url, wallet_account(customer_id)) as lock:
        async with issuer(platform) as client:
            await client.simulate_force_post(
                card_id=card_id,
                amount_minor=amount,
                currency=Currency.USD,
                merchant=SHOP,
                idempotency_key=f"fp-{uuid.uuid4().hex}",
            )
        # The card's posting of the force post waits for the wallet first ...
        await until_waiting(platform.stack.pool, lock, 1)
        await decide(platform, dispute_id, DisputeOutcome.LOST)
        # ... and the reversal's debit, read against the wallet before it, behind it.
        await until_queued(platform.stack.pool, 2)


async def until_queued(pool: asyncpg.Pool, count: int) -> None:
    """Until `count` sessions of the test's database wait for a lock: the first
    behind the lock's holder, each later one behind the one before it."""

    async def queued() -> int:
        found: int = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0"
        )
        return found

    await polling.until(
        queued, lambda found: found >= count, f"{count} session(s) queued for a lock"
    )


async def test_a_reversal_refused_because_a_payment_took_the_wallet_first_reads_it_again(
    platform: Platform,
) -> None:
    """The reversal's first debit is refused (a force post took 1,000 of the
    wallet between its read and its debit): it reads the wallet again, takes
    the 2,000 left and records the other 1,000 as the customer's debt."""
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 3_000})
    transaction_id = await purchase(platform, card_id, 3_000)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=3_000, pending=0)

    await lost_while_a_force_post_takes_the_wallet(
        platform, customer_id, card_id, dispute_id, 1_000
    )
    result = await handle.result()
    assert (result.outcome, result.provisional_credit_minor) == ("lost", 3_000)
    assert (result.reversed_minor, result.debt_minor) == (2_000, 1_000)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (0, 0)
    debt = await Ledger(platform.stack.pool).balance(customer_debt(customer_id, USD))
    assert (debt.debits_posted, debt.credits_posted) == (1_000, 0)
    assert await posted(platform, provisional_account()) == 0
    wallet_code, debt_code = wallet_account(customer_id), customer_debt(customer_id, USD)
    assert await rejections(platform, transaction_id) == {"reversal/wallet/0": "insufficient_funds"}
    assert await postings(platform, transaction_id) == {
        "provisional-credit": (provisional_account(), wallet_code, 3_000),
        "reversal/wallet/1": (wallet_code, provisional_account(), 2_000),
        "reversal/debt/1": (debt_code, provisional_account(), 1_000),
    }
    assert await verify(platform.stack.pool) == []


async def test_a_reversal_whose_every_wallet_attempt_is_refused_records_the_whole_credit_as_debt(
    platform: Platform,
) -> None:
    """With one attempt at the wallet (`reversal_attempts_max=1`), a refused
    debit leaves the wallet as it is and records the whole provisional credit
    as the customer's debt: taken back in full, never a negative wallet."""
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 3_000})
    transaction_id = await purchase(platform, card_id, 3_000)
    policy = AT_ONCE.model_copy(update={"reversal_attempts_max": 1})
    handle = await open_dispute(platform, customer_id, transaction_id, policy=policy)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=3_000, pending=0)

    await lost_while_a_force_post_takes_the_wallet(
        platform, customer_id, card_id, dispute_id, 1_000
    )
    result = await handle.result()
    assert (result.outcome, result.reversed_minor, result.debt_minor) == ("lost", 0, 3_000)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (2_000, 0)
    debt = await Ledger(platform.stack.pool).balance(customer_debt(customer_id, USD))
    assert (debt.debits_posted, debt.credits_posted) == (3_000, 0)
    assert await posted(platform, provisional_account()) == 0
    wallet_code, debt_code = wallet_account(customer_id), customer_debt(customer_id, USD)
    assert await rejections(platform, transaction_id) == {"reversal/wallet/0": "insufficient_funds"}
    assert await postings(platform, transaction_id) == {
        "provisional-credit": (provisional_account(), wallet_code, 3_000),
        "reversal/debt/1": (debt_code, provisional_account(), 3_000),
    }
    assert await verify(platform.stack.pool) == []


# ----- the issuer refuses to open the dispute ---------------------------------------


async def test_a_dispute_the_issuer_already_has_from_elsewhere_is_refused_and_left_alone(
    platform: Platform,
) -> None:
    """The transaction was already disputed at the issuer (from its dashboard):
    the issuer refuses ours (409), the process ends refused before any credit,
    and the other dispute is not withdrawn."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 2_000)
    async with issuer(platform) as client:
        elsewhere = await client.open_dispute(
            transaction_id=transaction_id,
            reason=DisputeReason.FRAUDULENT,
            evidence=[DisputeEvidence(type=STATEMENT.type, description=STATEMENT.description)],
            idempotency_key=f"dashboard-{uuid.uuid4().hex}",
        )
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    await stage(platform, transaction_id, "waiting for evidence")
    await disputes.submit(platform.stack.client, transaction_id)

    result = await handle.result()
    assert (result.outcome, result.issuer_dispute_id) == ("refused", None)
    assert re.fullmatch(
        r"the issuer refused the dispute: ProviderConflict: issuer POST /v1/disputes: 409"
        r" \(request req_\w+\)",
        result.reason,
    ), result.reason
    assert (result.provisional_credit_minor, result.final_credit_minor) == (0, 0)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (8_000, 0)
    assert await postings(platform, transaction_id) == {}
    assert await rejections(platform, transaction_id) == {}
    assert await posted(platform, provisional_account()) is None
    assert (await issuer_dispute(platform, elsewhere.id)).status == DisputeStatus.OPEN
    assert disputes_opened_at_the_issuer(platform) == [elsewhere.id]
    assert await verify(platform.stack.pool) == []


async def test_a_dispute_the_issuer_rejects_as_invalid_is_refused_with_nothing_credited(
    platform: Platform,
) -> None:
    """The issuer answers the opening with a validation error (422): not
    retried, the dispute ends refused, nothing credited or written."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 2_000)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    await stage(platform, transaction_id, "waiting for evidence")
    platform.sim.fault(kind="reject", method="POST", path_prefix="/issuer/v1/disputes", times=1)
    await disputes.submit(platform.stack.client, transaction_id)

    result = await handle.result()
    assert (result.outcome, result.issuer_dispute_id) == ("refused", None)
    assert re.fullmatch(
        r"the issuer refused the dispute: ProviderRejectedRequest: issuer POST /v1/disputes:"
        r" 422 value_error at body \(request req_\w+\)",
        result.reason,
    ), result.reason
    assert result.provisional_credit_minor == 0
    assert platform.sim.admin("GET", "/faults") == []
    assert disputes_opened_at_the_issuer(platform) == []
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (8_000, 0)
    assert await postings(platform, transaction_id) == {}
    assert await posted(platform, provisional_account()) is None
    assert await verify(platform.stack.pool) == []


# ----- partial and excessive amounts ------------------------------------------------


async def test_a_partial_dispute_won_credits_and_settles_only_the_disputed_part(
    platform: Platform,
) -> None:
    """1,200 of a 3,000 purchase disputed: 1,200 is opened at the issuer and
    credited provisionally; won, the issuer's chargeback of 1,200 settles it."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 3_000)
    handle = await dispute_of(platform, customer_id, transaction_id, amount_minor=1_200)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=8_200, pending=0)
    assert (await issuer_dispute(platform, dispute_id)).amount_minor == 1_200

    decided = await decide(platform, dispute_id, DisputeOutcome.WON)
    result = await handle.result()
    assert (result.outcome, result.amount_minor) == ("won", 1_200)
    assert decided.chargeback_transaction_id is not None
    async with issuer(platform) as client:
        chargeback = await client.get_transaction(decided.chargeback_transaction_id)
    assert chargeback.amount_minor == 1_200
    assert (result.provisional_credit_minor, result.final_credit_minor) == (1_200, 1_200)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (8_200, 0)
    assert await posted(platform, provisional_account()) == 0
    settlement = accounts.issuer_settlement(USD)
    assert await postings(platform, transaction_id) == {
        "provisional-credit": (provisional_account(), wallet_account(customer_id), 1_200),
        "won/settle-provisional": (settlement, provisional_account(), 1_200),
    }
    assert await verify(platform.stack.pool) == []


async def test_a_partial_dispute_lost_takes_back_only_the_disputed_part(platform: Platform) -> None:
    """1,200 of a 3,000 purchase disputed and lost: exactly the 1,200 credited
    is taken back from the wallet; the purchase itself stays paid."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 3_000)
    handle = await dispute_of(platform, customer_id, transaction_id, amount_minor=1_200)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=8_200, pending=0)

    await decide(platform, dispute_id, DisputeOutcome.LOST)
    result = await handle.result()
    assert (result.outcome, result.provisional_credit_minor) == ("lost", 1_200)
    assert (result.reversed_minor, result.debt_minor, result.final_credit_minor) == (1_200, 0, 0)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (7_000, 0)
    assert await posted(platform, provisional_account()) == 0
    wallet_code = wallet_account(customer_id)
    assert await postings(platform, transaction_id) == {
        "provisional-credit": (provisional_account(), wallet_code, 1_200),
        "reversal/wallet/0": (wallet_code, provisional_account(), 1_200),
    }
    assert await verify(platform.stack.pool) == []


async def test_a_dispute_for_more_than_the_transaction_is_refused_naming_amount_minor(
    platform: Platform,
) -> None:
    """Through the API: an amount of 0 is refused at once (422 naming
    `amount_minor`) and starts nothing; one unit more than the purchase starts
    the process, which refuses it before anything is sent or written."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 3_000)
    body = {
        "transaction_id": transaction_id,
        "customer_id": customer_id,
        "reason": "fraudulent",
        "evidence": [{"type": "cardholder_statement", "description": "Not me."}],
    }
    async with httpx.AsyncClient(
        base_url=f"{platform.gateway_url}/v1", timeout=30, headers=platform.api_headers
    ) as api:
        zero = await api.post(
            "/disputes", json={**body, "amount_minor": 0}, headers={"Idempotency-Key": "d-0"}
        )
        assert zero.status_code == 422, zero.text
        assert [error["loc"][-1] for error in zero.json()["detail"]] == ["amount_minor"]
        unknown = await api.get(f"/disputes/{transaction_id}")
        assert unknown.status_code == 404, unknown.text

        over = await api.post(
            "/disputes", json={**body, "amount_minor": 3_001}, headers={"Idempotency-Key": "d-1"}
        )
        assert over.status_code == 202, over.text
    result = await disputes.handle(platform.stack.client, transaction_id).result()
    assert (result.outcome, result.issuer_dispute_id) == ("refused", None)
    assert result.reason == "amount_minor exceeds the transaction's 3000"
    assert (result.provisional_credit_minor, result.final_credit_minor) == (0, 0)
    assert disputes_opened_at_the_issuer(platform) == []
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (7_000, 0)
    assert await postings(platform, transaction_id) == {}
    assert await posted(platform, provisional_account()) is None
    assert await verify(platform.stack.pool) == []


# ----- refunds --------------------------------------------------------------------


async def test_a_refund_cannot_be_disputed_and_nothing_is_written(platform: Platform) -> None:
    """A refund is money in, not a charge: its dispute is refused before any
    evidence is asked for, nothing is sent to the issuer or written."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 3_000)
    refund_id = await refund(platform, card_id, transaction_id, 3_000)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)

    handle = await open_dispute(platform, customer_id, refund_id, policy=AT_ONCE)
    result = await handle.result()
    assert (result.outcome, result.issuer_dispute_id) == ("refused", None)
    assert result.reason == "a refund cannot be disputed; only clearings and force posts"
    assert result.provisional_credit_minor == 0
    assert disputes_opened_at_the_issuer(platform) == []
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (10_000, 0)
    assert await postings(platform, refund_id) == {}
    assert await posted(platform, provisional_account()) is None
    assert await verify(platform.stack.pool) == []


async def test_a_refunded_purchase_disputed_and_lost_keeps_the_refund_and_gives_the_credit_back(
    platform: Platform,
) -> None:
    """A purchase refunded in part (1,000 of 3,000) and then disputed in full:
    the whole 3,000 is credited provisionally on top of the refund; lost, the
    3,000 is taken back and the refund stays."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 3_000)
    await refund(platform, card_id, transaction_id, 1_000)
    await wallet_becomes(platform, customer_id, posted=8_000, pending=0)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=11_000, pending=0)

    await decide(platform, dispute_id, DisputeOutcome.LOST)
    result = await handle.result()
    assert (result.outcome, result.provisional_credit_minor) == ("lost", 3_000)
    assert (result.reversed_minor, result.debt_minor) == (3_000, 0)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (8_000, 0)
    assert await posted(platform, provisional_account()) == 0
    assert await verify(platform.stack.pool) == []


# ----- escalation refused ---------------------------------------------------------


async def test_an_escalation_refused_because_the_network_decided_follows_the_decision(
    platform: Platform,
) -> None:
    """The operator escalates a representment the network has just decided
    against the customer (its webhook still on the way): the issuer refuses the
    escalation (409), and the process reads the loss and takes the credit back
    once; the dispute is never withdrawn."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 2_500)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    await decide(platform, dispute_id, DisputeOutcome.REPRESENTMENT)
    await stage(platform, transaction_id, "representment")

    platform.sim.admin("POST", "/webhooks", {"hold": True})
    await decide(platform, dispute_id, DisputeOutcome.LOST)
    await disputes.operator_action(
        platform.stack.client, transaction_id, OperatorAction(action="escalate", operator="ops-1")
    )

    result = await handle.result()
    assert (result.outcome, result.reversed_minor, result.debt_minor) == ("lost", 2_500, 0)
    # The loss was learnt from the refused escalation (its webhook never came).
    assert await failed_activities(handle) == [ISSUER_ESCALATE]
    at_issuer = await issuer_dispute(platform, dispute_id)
    assert at_issuer.status == DisputeStatus.LOST
    assert [entry.status for entry in at_issuer.history] == ["open", "representment", "lost"]
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (7_500, 0)
    assert await posted(platform, provisional_account()) == 0
    wallet_code = wallet_account(customer_id)
    assert await postings(platform, transaction_id) == {
        "provisional-credit": (provisional_account(), wallet_code, 2_500),
        "reversal/wallet/0": (wallet_code, provisional_account(), 2_500),
    }
    assert await verify(platform.stack.pool) == []


async def failed_activities(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The activities of the process that failed (a provider's refusal), in order."""
    names: dict[int, str] = {}
    failed: list[str] = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            names[event.event_id] = attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed.append(names[event.activity_task_failed_event_attributes.scheduled_event_id])
    return failed


def refuse_the_next_escalation(platform: Platform, dispute_id: str) -> None:
    """The issuer answers the next pre-arbitration request of the dispute with a
    validation error (422): a refusal that is not a decision."""
    platform.sim.fault(
        kind="reject",
        method="POST",
        path_prefix=f"/issuer/v1/disputes/{dispute_id}/pre_arbitration",
        times=1,
    )


async def escalation_refused(platform: Platform, transaction_id: str) -> None:
    """Until the issuer has refused the escalation and the process has taken the
    refusal in (it reads the issuer again and is back at the representment)."""

    async def taken_in() -> bool:
        if platform.sim.admin("GET", "/faults"):
            return False
        view = await disputes.status(platform.stack.client, transaction_id)
        return view.stage == "representment"

    await polling.eventually(taken_in, "the escalation refused and taken in")


async def test_an_escalation_the_issuer_refused_can_be_asked_again_and_reaches_pre_arbitration(
    platform: Platform,
) -> None:
    """The issuer refuses the operator's escalation with a validation error
    (the dispute is still in representment there). The operator's next
    `escalate`, which the process accepts, takes the customer's answer to
    pre-arbitration; won there, the provisional credit is the customer's."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_500)
    handle = await open_dispute(platform, customer_id, transaction_id, policy=AT_ONCE)
    dispute_id = await submitted(platform, transaction_id)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)
    await decide(platform, dispute_id, DisputeOutcome.REPRESENTMENT)
    await stage(platform, transaction_id, "representment")

    escalate = OperatorAction(action="escalate", operator="ops-1")
    refuse_the_next_escalation(platform, dispute_id)
    await disputes.operator_action(platform.stack.client, transaction_id, escalate)
    await escalation_refused(platform, transaction_id)
    assert (await issuer_dispute(platform, dispute_id)).status == DisputeStatus.REPRESENTMENT

    accepted = await disputes.operator_action(platform.stack.client, transaction_id, escalate)
    assert accepted.issuer_status == DisputeStatus.REPRESENTMENT
    await stage(platform, transaction_id, "pre-arbitration")
    assert (await issuer_dispute(platform, dispute_id)).status == DisputeStatus.PRE_ARBITRATION

    await decide(platform, dispute_id, DisputeOutcome.WON)
    result = await handle.result()
    assert (result.outcome, result.provisional_credit_minor, result.final_credit_minor) == (
        "won",
        1_500,
        1_500,
    )
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (10_000, 0)
    assert await posted(platform, provisional_account()) == 0
    assert await verify(platform.stack.pool) == []


async def timers_until_the_next_poll(handle: WorkflowHandle[Any, Any]) -> list[float] | None:
    """The timers (seconds) the dispute started between reading the issuer
    after its refused escalation and its next poll of the issuer; None until
    that poll was made."""
    names: dict[int, str] = {}
    refused = False
    reads = 0
    timers: list[float] = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            names[event.event_id] = name
            if refused and name == ISSUER_GET:
                reads += 1
                if reads == 2:
                    return timers
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            scheduled = event.activity_task_failed_event_attributes.scheduled_event_id
            refused = refused or names.get(scheduled) == ISSUER_ESCALATE
        elif event.event_type == EventType.EVENT_TYPE_TIMER_STARTED and reads == 1:
            timeout = event.timer_started_event_attributes.start_to_fire_timeout
            timers.append(timeout.ToTimedelta().total_seconds())
    return None


async def test_a_representment_past_its_deadline_whose_escalation_was_refused_waits_quietly(
    platform: Platform,
) -> None:
    """The representment's deadline passes and the issuer refuses the escalation
    with a validation error: the dispute then waits for the network with one
    timer up to its next poll of the issuer, not a timer every second (which,
    over a dispute's months, would fill its history)."""
    customer_id, card_id, _ = await open_card(platform)
    transaction_id = await purchase(platform, card_id, 1_000)
    policy = QUIET.model_copy(
        update={"representment_response_seconds": 1, "issuer_poll_seconds": 6}
    )
    handle = await open_dispute(platform, customer_id, transaction_id, policy=policy)
    dispute_id = await submitted(platform, transaction_id)
    refuse_the_next_escalation(platform, dispute_id)
    await decide(platform, dispute_id, DisputeOutcome.REPRESENTMENT)

    found: list[float] = []

    async def polled() -> bool:
        timers = await timers_until_the_next_poll(handle)
        found[:] = timers or []
        return timers is not None

    await polling.eventually(polled, "the dispute polled the issuer after the refused escalation")
    assert len(found) == 1, f"timers before the next poll: {found}"

    # Nothing was credited (the policy credits after an hour): lost, nothing moves.
    await decide(platform, dispute_id, DisputeOutcome.LOST)
    result = await handle.result()
    assert (result.outcome, result.reversed_minor, result.debt_minor) == ("lost", 0, 0)
    balance = await wallet(platform, customer_id)
    assert (balance.posted, balance.debits_pending) == (9_000, 0)
    assert await verify(platform.stack.pool) == []
