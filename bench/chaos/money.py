"""The chaos run's model of the money: what every wallet must hold, to the unit.

Built at the end from what the system and the outside world answered during
the run, never from the ledger it checks:

- the issuer's own record of every authorization and transaction the run
  made (read back from the issuer simulator): what it still holds pending,
  what it settled (clearings and force posts out, refunds in);
- each finished process's result: a top-up's credit net of its fee and of
  the debt it repaid, a card's issuance fee, a conversion's debit and credit
  at its confirmed quote, a cashback's reward net of clawback, a dispute's
  provisional credit net of what was taken back.

The wallet's posted balance must equal the sum, per currency, and its
pending debits must equal what the issuer holds for the customer's cards,
authorization by authorization.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_fixed

from activities.ledger import Ledger
from activities.ledger.errors import LedgerError
from activities.providers.issuer import IssuerClient
from activities.reconciliation_queries import posted_for
from bench.chaos.evidence import Evidence
from bench.chaos.invariants import Violation
from schemas import accounts
from schemas.cards import CardIssueResult
from schemas.cashback import CashbackResult
from schemas.disputes import DisputeResult
from schemas.fx import FxConversionResult
from schemas.issuer import Authorization, AuthorizationStatus, Transaction, TransactionType
from schemas.topup import TopupResult
from schemas.withdrawals import WithdrawalResult
from workflows.cashback import Cashback, cashback_workflow_id
from workflows.dispute import DisputeWorkflow

# Reads of processes at once, and of the issuer's listings (one process
# serving every simulator: more at once only queue there and time out).
READS_AT_ONCE = 16
ISSUER_READS_AT_ONCE = 4
# A listing page that timed out or found the issuer away is read again.
ISSUER_READ_ATTEMPTS = 4
ISSUER_READ_PAUSE_SECONDS = 2.0
WORKFLOW_RESULT_SECONDS = 10.0
# How the issuer names an answer it could not use for the question it asked.
MALFORMED_ANSWER = "malformed gateway answer"
_AUTHORIZATION_IN_KEY = re.compile(r"/auth/([^/]+)/")
T = TypeVar("T")


@dataclass
class Expected:
    """One customer's expected money, with where each figure came from."""

    posted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    pending_by_authorization: dict[str, int] = field(default_factory=dict)
    # Each issuer transaction the card must post on issuer:settlement, with
    # its effect there (positive: owed to the issuer) and its card.
    settled: dict[str, tuple[int, str]] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, currency: str, amount_minor: int, source: str) -> None:
        self.posted[currency] += amount_minor
        self.sources[f"{source} {currency}"] += amount_minor


async def _gather_bounded(calls: list[Any], at_once: int = READS_AT_ONCE) -> list[Any]:
    gate = asyncio.Semaphore(at_once)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls), return_exceptions=True))


async def _finished_result(client: Client, workflow_id: str, result_type: type[Any]) -> Any:
    """The result of a process that has ended, or None while it runs."""
    handle = client.get_workflow_handle(workflow_id, result_type=result_type)
    description = await handle.describe()
    if description.status is WorkflowExecutionStatus.RUNNING:
        return None
    if description.status is not WorkflowExecutionStatus.COMPLETED:
        return description.status
    return await asyncio.wait_for(handle.result(), WORKFLOW_RESULT_SECONDS)


async def _status(client: Client, workflow_id: str, query: Callable[[Any], T]) -> T:
    """The running process's answer to its `query` (the workflow's status method)."""
    return await client.get_workflow_handle(workflow_id).query(query)


async def expected_money(
    client: Client, issuer: IssuerClient, evidence: Evidence
) -> tuple[dict[int, Expected], list[Violation]]:
    """Each customer's expected money, and what could not be read to build it."""
    expected: dict[int, Expected] = defaultdict(Expected)
    unread: list[Violation] = []

    # The issuer: what it holds and what it settled, card by card (so an
    # authorization whose answer the run never received is counted too).
    cards = list(evidence.cards)
    listed = await _gather_bounded(
        [_issuer_records(issuer, card_id) for card_id in cards], ISSUER_READS_AT_ONCE
    )
    for card_id, records in zip(cards, listed, strict=True):
        customer = evidence.cards[card_id].customer
        if isinstance(records, BaseException):
            unread.append(_unread(card_id, records, None))
            continue
        authorizations, transactions = records
        for authorization in authorizations:
            for index, decision in enumerate(authorization.decisions):
                # An answer that does not fit its question (more approved than
                # asked): the card answered another question than this one.
                if MALFORMED_ANSWER in decision.reason:
                    ref = evidence.authorizations.get(authorization.id)
                    unread.append(
                        Violation(
                            "answer_not_to_the_question",
                            f"{card_id} {authorization.id} decision {index}",
                            f"{decision.reason} ({decision.kind}; operation "
                            f"{ref.operation if ref else None})",
                        )
                    )
            if authorization.status is AuthorizationStatus.PENDING:
                if authorization.pending_amount_minor:
                    expected[customer].pending_by_authorization[authorization.id] = (
                        authorization.pending_amount_minor
                    )
        for transaction in transactions:
            if transaction.type is TransactionType.CHARGEBACK:
                continue  # a chargeback is the dispute process's money
            sign = 1 if transaction.type is TransactionType.REFUND else -1
            expected[customer].add(
                transaction.currency.value,
                sign * transaction.amount_minor,
                transaction.type.value,
            )
            expected[customer].settled[transaction.id] = (
                -sign * transaction.amount_minor,
                card_id,
            )

    # The processes' results.
    topups = list(evidence.topups)
    results = await _gather_bounded([_finished_result(client, w, TopupResult) for w in topups])
    for workflow_id, result in zip(topups, results, strict=True):
        customer = evidence.topups[workflow_id]
        if isinstance(result, TopupResult):
            if result.outcome == "credited" and result.wallet_currency is not None:
                net = result.credited_minor - result.fee_minor - result.debt_collected_minor
                expected[customer].add(result.wallet_currency.value, net, "top-up")
        else:
            unread.append(_unfinished(workflow_id, result, evidence))

    issues = list(evidence.card_issues)
    results = await _gather_bounded([_finished_result(client, w, CardIssueResult) for w in issues])
    for workflow_id, result in zip(issues, results, strict=True):
        customer = evidence.card_issues[workflow_id]
        if isinstance(result, CardIssueResult):
            if result.fee_minor:
                expected[customer].add("USD", -result.fee_minor, "card fee")
        else:
            unread.append(_unfinished(workflow_id, result, evidence))

    conversions = list(evidence.conversions)
    results = await _gather_bounded(
        [_finished_result(client, w, FxConversionResult) for w in conversions]
    )
    for workflow_id, result in zip(conversions, results, strict=True):
        customer = evidence.conversions[workflow_id]
        if isinstance(result, FxConversionResult):
            if result.bought_amount_minor:
                expected[customer].add(
                    result.sell_currency.value, -result.debited_amount_minor, "fx sold"
                )
                expected[customer].add(
                    result.buy_currency.value, result.bought_amount_minor, "fx bought"
                )
        else:
            unread.append(_unfinished(workflow_id, result, evidence))

    # Cashback: a process per settled purchase that earned a reward.
    purchases = [
        transaction.id
        for records in listed
        if not isinstance(records, BaseException)
        for transaction in records[1]
        if transaction.type in (TransactionType.CLEARING, TransactionType.FORCE_POST)
    ]
    customer_of = {
        transaction.id: evidence.cards[transaction.card_id].customer
        for records in listed
        if not isinstance(records, BaseException)
        for transaction in records[1]
    }
    results = await _gather_bounded([_cashback(client, t) for t in purchases])
    for transaction_id, result in zip(purchases, results, strict=True):
        customer = customer_of[transaction_id]
        if isinstance(result, BaseException):
            purchase = evidence.transactions.get(transaction_id)
            unread.append(
                _unread(
                    cashback_workflow_id(transaction_id),
                    result,
                    purchase.operation if purchase else None,
                )
            )
        elif result is not None:
            currency, net = result
            if net:
                expected[customer].add(currency, net, "cashback")

    withdrawals = list(evidence.withdrawals)
    results = await _gather_bounded(
        [_finished_result(client, w, WithdrawalResult) for w in withdrawals]
    )
    for workflow_id, result in zip(withdrawals, results, strict=True):
        customer = evidence.withdrawals[workflow_id]
        if isinstance(result, WithdrawalResult):
            # Paid: the amount and the fee left; returned: the fee stayed earned.
            if result.outcome == "paid":
                paid = result.amount_minor + result.fee_minor
                expected[customer].add(result.currency.value, -paid, "withdrawal")
            elif result.outcome == "returned":
                expected[customer].add(result.currency.value, -result.fee_minor, "withdrawal")
        else:
            unread.append(_unfinished(workflow_id, result, evidence))

    disputes = list(evidence.disputes)
    results = await _gather_bounded([_dispute(client, w) for w in disputes])
    for workflow_id, result in zip(disputes, results, strict=True):
        customer = evidence.disputes[workflow_id]
        if isinstance(result, BaseException):
            unread.append(_unread(workflow_id, result, evidence.started_by.get(workflow_id)))
        elif result is not None:
            currency, net = result
            if net:
                expected[customer].add(currency, net, "dispute")
    return expected, unread


def _issuer_away(error: BaseException) -> bool:
    return isinstance(error, ApplicationError) and error.type in (
        "ProviderTimeout",
        "ProviderUnreachable",
    )


async def _issuer_read(read: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """One listing page, read again while the issuer times out or is away."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(ISSUER_READ_ATTEMPTS),
        retry=retry_if_exception(_issuer_away),
        wait=wait_fixed(ISSUER_READ_PAUSE_SECONDS),
        reraise=True,
    )
    return await retrying(read, *args, **kwargs)


async def _issuer_records(
    issuer: IssuerClient, card_id: str
) -> tuple[list[Authorization], list[Transaction]]:
    authorizations: list[Authorization] = []
    after: str | None = None
    while True:
        page = await _issuer_read(issuer.list_authorizations, card_id, starting_after=after)
        authorizations += page.data
        if not page.has_more or not page.data:
            break
        after = page.data[-1].id
    transactions: list[Transaction] = []
    after = None
    while True:
        listed = await _issuer_read(issuer.list_transactions, card_id, starting_after=after)
        transactions += listed.data
        if not listed.has_more or not listed.data:
            break
        after = listed.data[-1].id
    return authorizations, transactions


async def _cashback(client: Client, transaction_id: str) -> tuple[str, int] | None:
    workflow_id = cashback_workflow_id(transaction_id)
    try:
        result = await _finished_result(client, workflow_id, CashbackResult)
    except RPCError as error:
        if "not found" in str(error).lower():
            return None  # no cashback process for this purchase
        raise
    if result is None:
        status = await _status(client, workflow_id, Cashback.status)
        if status.currency is None:
            return None
        return status.currency.value, status.reward_minor - status.clawed_back_minor
    if isinstance(result, CashbackResult):
        return result.currency.value, result.reward_minor - result.clawed_back_minor
    raise RuntimeError(f"{workflow_id} ended {result}")


async def _dispute(client: Client, workflow_id: str) -> tuple[str, int] | None:
    result = await _finished_result(client, workflow_id, DisputeResult)
    if result is None:
        view = await _status(client, workflow_id, DisputeWorkflow.status)
        if view.currency is None:
            return None
        return view.currency.value, _dispute_net(
            view.provisional_credit_minor, view.reversed_minor, view.final_credit_minor
        )
    if isinstance(result, DisputeResult):
        if result.currency is None:
            return None
        return result.currency.value, _dispute_net(
            result.provisional_credit_minor, result.reversed_minor, result.final_credit_minor
        )
    raise RuntimeError(f"{workflow_id} ended {result}")


def _dispute_net(provisional_minor: int, reversed_minor: int, final_minor: int) -> int:
    """What a dispute left in the wallet: a won dispute's final credit (the
    provisional credit it kept, or a credit of its own when it was won before
    any provisional credit), else the provisional credit less what was taken
    back (what the wallet could not cover is debt, not wallet money)."""
    return final_minor if final_minor else provisional_minor - reversed_minor


def _unread(subject: str, error: BaseException, operation: int | None) -> Violation:
    return Violation(
        "model_unreadable",
        subject,
        f"could not be read for the money model (operation {operation}): {error!r}"[:400],
    )


def _unfinished(workflow_id: str, result: Any, evidence: Evidence) -> Violation:
    operation = evidence.started_by.get(workflow_id)
    if isinstance(result, BaseException):
        return _unread(workflow_id, result, operation)
    state = "still running" if result is None else f"ended {result.name}"
    return Violation(
        "process_unfinished",
        workflow_id,
        f"{state} after the run quiesced (operation {operation}); its money is not known",
    )


async def held_by_authorization(pool: asyncpg.Pool, wallet: str) -> dict[str, int]:
    """The wallet's open holds, summed per card authorization named in their keys."""
    rows = await pool.fetch(
        """
        SELECT t.idempotency_key, t.amount_minor
        FROM ledger_transfers t JOIN ledger_accounts a ON a.id = t.debit_account_id
        WHERE a.code = $1 AND t.kind = 'pending'
          AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = t.id)
        """,
        wallet,
    )
    held: dict[str, int] = defaultdict(int)
    for row in rows:
        found = _AUTHORIZATION_IN_KEY.search(row["idempotency_key"])
        held[found.group(1) if found else row["idempotency_key"]] += row["amount_minor"]
    return dict(held)


async def money_violations(
    client: Client, pool: asyncpg.Pool, issuer: IssuerClient, evidence: Evidence
) -> tuple[list[Violation], dict[str, Any]]:
    """Every wallet against the model; the figures of the model for the report."""
    expected, violations = await expected_money(client, issuer, evidence)
    ledger = Ledger(pool)
    totals: dict[str, int] = defaultdict(int)
    for customer in evidence.customers:
        model = expected[customer.index]
        for source, amount in model.sources.items():
            totals[source] += amount
        currencies = set(model.posted) | {"USD"}
        for currency in sorted(currencies):
            code = accounts.wallet(customer.customer_id, currency)
            try:
                balance = await ledger.balance(code)
            except LedgerError:
                if model.posted.get(currency, 0):
                    violations.append(
                        Violation(
                            "wallet_missing",
                            code,
                            f"the model expects {model.posted[currency]} but there is no wallet",
                        )
                    )
                continue
            want = model.posted.get(currency, 0)
            if balance.posted != want:
                parts = ", ".join(
                    f"{name} {amount}"
                    for name, amount in sorted(model.sources.items())
                    if name.endswith(currency)
                )
                violations.append(
                    Violation(
                        "wallet_differs",
                        code,
                        f"posted {balance.posted}, the model says {want} "
                        f"(off by {balance.posted - want}; {parts})",
                    )
                )
            if balance.available < 0:
                violations.append(
                    Violation("wallet_negative", code, f"available {balance.available}")
                )
            if currency != "USD":
                continue
            held = await held_by_authorization(pool, code)
            for authorization_id in sorted(set(held) | set(model.pending_by_authorization)):
                issuer_holds = model.pending_by_authorization.get(authorization_id, 0)
                ledger_holds = held.get(authorization_id, 0)
                if issuer_holds != ledger_holds:
                    ref = evidence.authorizations.get(authorization_id)
                    where = (
                        f"card {ref.card_id}, operation {ref.operation}"
                        if ref
                        else "an authorization whose answer the run never received"
                    )
                    violations.append(
                        Violation(
                            "hold_differs",
                            f"{code} {authorization_id}",
                            f"the issuer holds {issuer_holds}, the ledger {ledger_holds} ({where})",
                        )
                    )
    violations += await settlement_violations(pool, expected, evidence)
    return violations, {"model_totals": dict(totals)}


async def settlement_violations(
    pool: asyncpg.Pool, expected: dict[int, Expected], evidence: Evidence
) -> list[Violation]:
    """Every issuer transaction posted by its card exactly once, for exactly
    its amount (read as reconciliation reads the ledger): a clearing applied
    twice, or a refund never posted, is named by its id."""
    settled = {
        transaction_id: found
        for model in expected.values()
        for transaction_id, found in model.settled.items()
    }
    posted = await posted_for(pool, sorted(settled))
    violations: list[Violation] = []
    for transaction_id, (effect, card_id) in sorted(settled.items()):
        ledger_effect, postings = posted.get(transaction_id, (0, 0))
        if ledger_effect == effect:
            continue
        ref = evidence.transactions.get(transaction_id)
        where = f"card {card_id}, operation {ref.operation if ref else None}"
        times, rest = divmod(ledger_effect, effect) if effect else (0, 1)
        kind = "transaction_posted_twice" if rest == 0 and times >= 2 else "transaction_differs"
        violations.append(
            Violation(
                kind,
                transaction_id,
                f"the issuer settled {effect}, the cards posted {ledger_effect} "
                f"in {postings} posting(s) ({where})",
            )
        )
    return violations
