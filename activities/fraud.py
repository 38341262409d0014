"""Fraud's activities (workflows/fraud.py).

Ledger queue: the customers with activity in a window (a page in id order),
their facts read and scored (schemas/fraud.py scores them; the facts never
leave the activity, only the scores with their evidence), the cases open
for them, a case recorded and moved (fraud_cases), a customer's cards and
one card frozen, unfrozen or closed through the card process's own update.
Providers queue: the addresses a customer sent USDT from (the custodian's
deposits to their address), the operators' e-mail.

Where each fact comes from:

- card transactions: card_transactions; the cashback a purchase earned is
  its `cashback.earned` events (customer_events, process `cashback/{id}`);
- top-ups: their `topup.credited` events (customer_events, by process);
- disputes: the Dispute processes of the customer started in the window
  (Temporal's visibility: `dispute/{transaction_id}`);
- new cards: cards, issued in the window, replacements aside;
- USDT sources: the custodian's deposits to the customer's address.

Every write is idempotent: a case is inserted once (ON CONFLICT DO NOTHING,
and one open case per customer), a change of a decided case changes
nothing, and a card is changed once per update id. Each counter is counted
where its write first happened, so a retry counts nothing again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.metrics import (
    record_fraud_auto_freezes,
    record_fraud_case_opened,
    record_fraud_decision,
)
from activities.providers.activities import ProviderClients
from activities.providers.tron import PAGE_SIZE_MAX as TRON_PAGE_SIZE_MAX
from activities.queues import ledger_activity, provider_activity
from schemas.cards import CardStateChange
from schemas.fraud import (
    FACT_ROWS_MAX,
    OPEN_CASE_STATES,
    USDT_DEPOSITS_MAX,
    ActiveCustomers,
    ActiveCustomersRequest,
    CardTransactionFact,
    CaseChange,
    CaseRecord,
    CaseRecorded,
    CustomerFacts,
    DisputeFact,
    FraudCardChange,
    FraudCardOutcome,
    FraudNotice,
    ScoredPage,
    ScorePageRequest,
    TopupFact,
    UsdtSourceFact,
    UsdtSources,
    UsdtSourcesRequest,
    score_customer,
)
from schemas.notify import Channel
from schemas.refusals import Refusal
from schemas.search import CUSTOMER_ID
from workflows.cards import CLOSE_UPDATE, FREEZE_UPDATE, UNFREEZE_UPDATE, card_workflow_id

ACTIVE_CUSTOMERS = "fraud.active_customers"
SCORE_PAGE = "fraud.score_page"
OPEN_CASES = "fraud.open_cases"
RECORD_CASE = "fraud.record_case"
CHANGE_CASE = "fraud.change_case"
CUSTOMER_CARDS = "fraud.customer_cards"
CHANGE_CARD = "fraud.change_card"
USDT_SOURCES = "fraud.usdt_sources"
NOTIFY_OPERATORS = "fraud.notify_operators"

# The Dispute processes of a page's customers listed at most.
DISPUTES_LISTED_MAX = 5_000
# Cards a case freezes at most (a customer with more is a case in itself).
CARDS_MAX = 200
DISPUTE_WORKFLOW_TYPE = "Dispute"
DISPUTE_ID_PREFIX = "dispute/"
USDT_TOPUP_PROCESS_PREFIX = "topup/usdt/"

_ACTIVE_SQL = """
SELECT e.customer_id,
       bool_or(e.type = 'topup.credited' AND e.process_id LIKE $5 || '%') AS usdt
FROM customer_events e
WHERE e.occurred_at >= $1 AND e.occurred_at < $2
  AND ($3::text IS NULL OR e.customer_id > $3)
GROUP BY e.customer_id
ORDER BY e.customer_id
LIMIT $4
"""

# Each customer's scoring start: the window's, or their last decided case's
# decision if later (what an operator decided on is not scored again).
_SINCE_SQL = """
SELECT c.customer_id, greatest($2::timestamptz, max(f.decided_at)) AS since
FROM unnest($1::text[]) AS c (customer_id)
LEFT JOIN fraud_cases f ON f.customer_id = c.customer_id AND f.decided_at IS NOT NULL
GROUP BY c.customer_id
"""

_TRANSACTIONS_SQL = """
SELECT s.customer_id, t.transaction_id, t.card_id, t.kind, t.amount_minor, t.currency,
       t.merchant_name, t.occurred_at, t.refunded_transaction_id,
       coalesce((SELECT sum(e.posted_minor) FROM customer_events e
                 WHERE e.customer_id = t.customer_id AND e.type = 'cashback.earned'
                   AND e.process_id = 'cashback/' || t.transaction_id), 0)::bigint AS rewarded
FROM unnest($1::text[], $2::timestamptz[]) AS s (customer_id, since)
CROSS JOIN LATERAL (
    SELECT * FROM card_transactions t
    WHERE t.customer_id = s.customer_id AND t.occurred_at >= s.since AND t.occurred_at < $3
    ORDER BY t.occurred_at DESC
    LIMIT $4
) t
"""

_TOPUPS_SQL = """
SELECT s.customer_id, e.process_id, e.posted_minor, e.currency, e.occurred_at
FROM unnest($1::text[], $2::timestamptz[]) AS s (customer_id, since)
CROSS JOIN LATERAL (
    SELECT * FROM customer_events e
    WHERE e.customer_id = s.customer_id AND e.type = 'topup.credited'
      AND e.occurred_at >= s.since AND e.occurred_at < $3
    ORDER BY e.occurred_at DESC
    LIMIT $4
) e
"""

_NEW_CARDS_SQL = """
SELECT s.customer_id, c.card_id
FROM unnest($1::text[], $2::timestamptz[]) AS s (customer_id, since)
JOIN cards c ON c.customer_id = s.customer_id
WHERE c.created_at >= s.since AND c.created_at < $3 AND c.replaces IS NULL
"""

_OPEN_CASES_SQL = """
SELECT customer_id, case_id FROM fraud_cases
WHERE customer_id = ANY($1::text[]) AND status = ANY($2::text[])
"""

_RECORD_CASE_SQL = """
INSERT INTO fraud_cases (case_id, customer_id, workflow_id, score, signals, auto_freeze)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
ON CONFLICT DO NOTHING
RETURNING case_id
"""


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _aware(at: datetime) -> datetime:
    # A provider that writes its times without a zone writes them in UTC.
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _quoted(value: str) -> str:
    # Customer ids are [A-Za-z0-9_.-]; quotes are doubled all the same.
    return "'" + value.replace("'", "''") + "'"


class FraudLedgerActivities:
    """Ledger-queue activities; `client` is how disputes are listed and cards
    changed through their processes (without one, only listed)."""

    def __init__(self, pool: asyncpg.Pool, client: Client | None) -> None:
        self._pool = pool
        self._client = client

    def _temporal(self) -> Client:
        if self._client is None:
            raise RuntimeError("this worker has no Temporal client to reach processes with")
        return self._client

    @ledger_activity(ACTIVE_CUSTOMERS)
    async def active_customers(self, request: ActiveCustomersRequest) -> ActiveCustomers:
        """The next page of customers with events in the window, by id."""
        rows = await self._pool.fetch(
            _ACTIVE_SQL,
            request.since,
            request.until,
            request.after_customer_id,
            request.limit,
            USDT_TOPUP_PROCESS_PREFIX,
        )
        return ActiveCustomers(
            customer_ids=[row["customer_id"] for row in rows],
            usdt_customer_ids=[row["customer_id"] for row in rows if row["usdt"]],
        )

    @ledger_activity(SCORE_PAGE)
    async def score_page(self, request: ScorePageRequest) -> ScoredPage:
        """Each customer's facts read and scored; the scores over 0."""
        ids = list(dict.fromkeys(request.customer_ids))
        if not ids:
            return ScoredPage(scores=[])
        policy = request.policy
        context = timedelta(days=policy.context_days)
        until = request.window_end
        async with (
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            since = {
                row["customer_id"]: row["since"]
                for row in await connection.fetch(_SINCE_SQL, ids, request.window_start)
            }
            facts = {
                customer_id: CustomerFacts(
                    customer_id=customer_id,
                    since=since[customer_id],
                    until=until,
                    context_since=since[customer_id] - context,
                    usdt_sources=request.usdt_sources.get(customer_id, []),
                )
                for customer_id in ids
            }
            starts = [facts[customer_id].since for customer_id in ids]
            context_starts = [facts[customer_id].context_since for customer_id in ids]
            for row in await connection.fetch(
                _TRANSACTIONS_SQL, ids, context_starts, until, FACT_ROWS_MAX
            ):
                facts[row["customer_id"]].transactions.append(
                    CardTransactionFact(
                        transaction_id=row["transaction_id"],
                        card_id=row["card_id"],
                        kind=row["kind"],
                        amount_minor=int(row["amount_minor"]),
                        currency=row["currency"],
                        merchant_name=row["merchant_name"],
                        occurred_at=row["occurred_at"],
                        refunded_transaction_id=row["refunded_transaction_id"],
                        rewarded_minor=int(row["rewarded"]),
                    )
                )
            for row in await connection.fetch(
                _TOPUPS_SQL, ids, context_starts, until, FACT_ROWS_MAX
            ):
                facts[row["customer_id"]].topups.append(
                    TopupFact(
                        topup_id=row["process_id"] or "",
                        amount_minor=int(row["posted_minor"] or 0),
                        currency=row["currency"] or "",
                        credited_at=row["occurred_at"],
                    )
                )
            for row in await connection.fetch(_NEW_CARDS_SQL, ids, starts, until):
                facts[row["customer_id"]].new_cards.append(row["card_id"])
        for customer_id, dispute in await self._disputes(ids, min(starts), until):
            facts[customer_id].disputes.append(dispute)
        scores = [score_customer(facts[customer_id], policy) for customer_id in ids]
        return ScoredPage(scores=[score for score in scores if score.score > 0])

    async def _disputes(
        self, customer_ids: Sequence[str], since: datetime, until: datetime
    ) -> list[tuple[str, DisputeFact]]:
        """The Dispute processes of these customers started in [since, until)."""
        customers = ", ".join(_quoted(customer_id) for customer_id in customer_ids)
        query = (
            f'WorkflowType = "{DISPUTE_WORKFLOW_TYPE}" AND CustomerId IN ({customers})'
            f' AND StartTime >= "{_rfc3339(since)}" AND StartTime < "{_rfc3339(until)}"'
        )
        found: list[tuple[str, DisputeFact]] = []
        async for execution in self._temporal().list_workflows(query, limit=DISPUTES_LISTED_MAX):
            customer_id = execution.typed_search_attributes.get(CUSTOMER_ID)
            if customer_id is None or not execution.id.startswith(DISPUTE_ID_PREFIX):
                continue
            found.append(
                (
                    customer_id,
                    DisputeFact(
                        transaction_id=execution.id.removeprefix(DISPUTE_ID_PREFIX),
                        opened_at=execution.start_time,
                    ),
                )
            )
        return found

    @ledger_activity(OPEN_CASES)
    async def open_cases(self, customer_ids: list[str]) -> dict[str, str]:
        """The open case of each of these customers that has one."""
        rows = await self._pool.fetch(_OPEN_CASES_SQL, customer_ids, list(OPEN_CASE_STATES))
        return {row["customer_id"]: row["case_id"] for row in rows}

    @ledger_activity(RECORD_CASE)
    async def record_case(self, record: CaseRecord) -> CaseRecorded:
        """Record the case once; whether it is the customer's open case (a
        case opening while another is open is not recorded)."""
        signals = json.dumps([signal.model_dump(mode="json") for signal in record.signals])
        async with self._pool.acquire() as connection, connection.transaction():
            inserted = await connection.fetchval(
                _RECORD_CASE_SQL,
                record.case_id,
                record.customer_id,
                record.workflow_id,
                record.score,
                signals,
                record.auto_freeze,
            )
            open_case = await connection.fetchval(
                "SELECT case_id FROM fraud_cases WHERE customer_id = $1 AND status = ANY($2)",
                record.customer_id,
                list(OPEN_CASE_STATES),
            )
            mine = await connection.fetchval(
                "SELECT status FROM fraud_cases WHERE case_id = $1", record.case_id
            )
        if inserted is not None:
            record_fraud_case_opened(record.auto_freeze)
        return CaseRecorded(
            case_id=record.case_id,
            # Its own row, whatever its state: a case recorded before goes on.
            open_here=mine is not None,
            open_case_id=open_case,
        )

    @ledger_activity(CHANGE_CASE)
    async def change_case(self, change: CaseChange) -> None:
        """Move the case: its state, frozen cards, escalations, decision. A
        decided case stays as it was decided."""
        async with self._pool.acquire() as connection, connection.transaction():
            old = await connection.fetchrow(
                "SELECT status, frozen_cards FROM fraud_cases WHERE case_id = $1 FOR UPDATE",
                change.case_id,
            )
            if old is None:
                raise ApplicationError(
                    f"no fraud case {change.case_id}", type="CaseMissing", non_retryable=True
                )
            if old["status"] not in OPEN_CASE_STATES:
                return
            frozen = list(dict.fromkeys([*old["frozen_cards"], *change.frozen_cards]))
            decision = change.decision
            await connection.execute(
                "UPDATE fraud_cases SET status = $2, frozen_cards = $3, escalations ="
                " greatest(escalations, $4), decision = $5, decided_by = $6,"
                " decision_reason = $7,"
                " decided_at = CASE WHEN $5::text IS NULL THEN NULL ELSE now() END,"
                " updated_at = now() WHERE case_id = $1",
                change.case_id,
                change.status,
                frozen,
                change.escalations,
                decision.action if decision else None,
                decision.operator if decision else None,
                decision.reason if decision else None,
            )
        record_fraud_auto_freezes(len(set(frozen) - set(old["frozen_cards"])))
        if decision is not None:
            record_fraud_decision(decision.action)

    @ledger_activity(CUSTOMER_CARDS)
    async def customer_cards(self, customer_id: str) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT card_id FROM cards WHERE customer_id = $1 ORDER BY created_at, card_id"
            " LIMIT $2",
            customer_id,
            CARDS_MAX,
        )
        return [row["card_id"] for row in rows]

    @ledger_activity(CHANGE_CARD)
    async def change_card(self, change: FraudCardChange) -> FraudCardOutcome:
        """Ask the card to freeze, unfreeze or close, once per update id. A
        card not in the state to (frozen or closed already, not frozen any
        more), one with open authorizations (to close), or one whose process
        ended is left as it is: changed False, and why."""
        handle = self._temporal().get_workflow_handle(card_workflow_id(change.card_id))
        update = {"freeze": FREEZE_UPDATE, "unfreeze": UNFREEZE_UPDATE, "close": CLOSE_UPDATE}[
            change.action
        ]
        try:
            answer = await handle.execute_update(
                update, CardStateChange(reason=change.reason), id=change.update_id
            )
        except WorkflowUpdateFailedError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.type in (
                Refusal.WRONG_STATE.value,
                Refusal.OPEN_AUTHORIZATIONS.value,
            ):
                return FraudCardOutcome(changed=False, detail=cause.message)
            raise ApplicationError(
                f"card {change.card_id} refused to {change.action}: {cause}",
                type="CardRefused",
                non_retryable=True,
            ) from None
        except RPCError as error:
            if "already completed" in error.message or "not found" in error.message:
                return FraudCardOutcome(changed=False, detail=error.message)
            raise
        return FraudCardOutcome(changed=True, detail=str(answer))

    def all(self) -> list[object]:
        return [
            self.active_customers,
            self.score_page,
            self.open_cases,
            self.record_case,
            self.change_case,
            self.customer_cards,
            self.change_card,
        ]


class FraudProviderActivities:
    """Providers-queue activities."""

    def __init__(self, clients: ProviderClients) -> None:
        self._clients = clients

    @provider_activity(USDT_SOURCES)
    async def usdt_sources(self, request: UsdtSourcesRequest) -> UsdtSources:
        """Per customer, each address they sent USDT from (a deposit to their
        address the chain did not drop) with its first deposit, read from the
        custodian, oldest first, at most USDT_DEPOSITS_MAX deposits."""
        tron = self._clients.tron
        sources: dict[str, list[UsdtSourceFact]] = {}
        for customer_id in dict.fromkeys(request.customer_ids):
            address = (await tron.customer_address(customer_id)).address
            first: dict[str, UsdtSourceFact] = {}
            after: str | None = None
            read = 0
            while read < USDT_DEPOSITS_MAX:
                page = await tron.list_deposits(
                    address, limit=TRON_PAGE_SIZE_MAX, starting_after=after
                )
                for deposit in page.data:
                    if deposit.status == "dropped":
                        continue
                    seen = first.get(deposit.from_address)
                    if seen is not None:
                        seen.deposits += 1
                        continue
                    first[deposit.from_address] = UsdtSourceFact(
                        from_address=deposit.from_address,
                        first_tx_hash=deposit.tx_hash,
                        first_seen_at=_aware(datetime.fromisoformat(deposit.detected_at)),
                    )
                read += len(page.data)
                if not page.has_more or not page.data:
                    break
                after = page.data[-1].tx_hash
            sources[customer_id] = list(first.values())
        return UsdtSources(sources=sources)

    @provider_activity(NOTIFY_OPERATORS)
    async def notify_operators(self, notice: FraudNotice) -> str:
        """E-mail the operations mailbox once per notice key; the message id."""
        message = await self._clients.notify.send_message(
            channel=Channel.EMAIL,
            to=notice.to,
            subject=notice.subject,
            body=notice.body,
            idempotency_key=notice.key,
            dedupe_key=notice.key,
        )
        return message.id

    def all(self) -> list[object]:
        return [self.usdt_sources, self.notify_operators]
