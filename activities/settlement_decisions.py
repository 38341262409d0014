"""Operators' decisions on the settlement ingest's items over the auto-fix
threshold (workflows/settlement.py), and the ingest's drift as gauges.

Exactly once. A decision is recorded by one conditional update of the
item's row (only an item awaiting a decision takes one), and an adjustment
then posts the fix from the row as recorded, under the record's own fix key
(activities/settlement_ingest.py `fix_key`): a retry after a kill between
the two finds the decision recorded and posts the same transfer, which the
ledger replays. A second decision on a decided item changes nothing and
answers the first.

All of it runs on the ledger queue: each call is a statement or two and one
ledger batch.
"""

from __future__ import annotations

import time

import asyncpg

from activities.ledger.store import Ledger
from activities.metrics import record_settlement_drift
from activities.queues import ledger_activity
from activities.settlement_ingest import fix_key
from schemas import accounts
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.reconciliation import DecisionAction
from schemas.settlement_ingest import (
    DecisionRecord,
    DriftReport,
    OperatorItem,
    OperatorItems,
    OperatorItemsRequest,
    RecordClass,
)

OPERATOR_ITEMS = "settlement.operator_items"
DECIDE_ITEM = "settlement.decide_item"
RECORD_DRIFT = "settlement.record_drift"

_COLUMNS = (
    "record_id, class, transaction_id, currency, delta_minor, state, decided_by, reason,"
    " transfer_key"
)

_AWAITING_SQL = f"""
SELECT {_COLUMNS}, count(*) OVER () AS awaiting_total
FROM settlement_operator_items
WHERE provider = $1 AND settlement_date = $2 AND state = 'awaiting_decision'
ORDER BY record_id
LIMIT $3
"""

# Only an item awaiting a decision takes one; a decided item keeps its first.
_DECIDE_SQL = f"""
UPDATE settlement_operator_items
SET state = $3, decided_by = $4, reason = $5, transfer_key = $6, decided_at = now()
WHERE record_id = $1 AND provider = $2 AND state = 'awaiting_decision'
RETURNING {_COLUMNS}
"""

_ITEM_SQL = (
    f"SELECT {_COLUMNS} FROM settlement_operator_items WHERE record_id = $1 AND provider = $2"
)


def _item(row: asyncpg.Record) -> OperatorItem:
    return OperatorItem(
        record_id=row["record_id"],
        record_class=RecordClass(row["class"]),
        transaction_id=row["transaction_id"],
        currency=Currency(row["currency"]),
        delta_minor=row["delta_minor"],
        state=row["state"],
        decided_by=row["decided_by"],
        reason=row["reason"],
        transfer_key=row["transfer_key"],
    )


def adjustment(key: str, currency: Currency, delta_minor: int) -> TransferRequest:
    """The fix of an item: issuer:settlement brought in line with the issuer
    through suspense, as the ingest's automatic fixes do (delta > 0: the
    issuer settled more than cardflow holds, so suspense credits it)."""
    # Operator items are differences, never zero (activities/settlement_ingest.py).
    assert delta_minor != 0, "an item over the threshold has a difference"
    settlement = accounts.issuer_settlement(currency)
    suspense = accounts.suspense_reconciliation(currency)
    debit, credit = (suspense, settlement) if delta_minor > 0 else (settlement, suspense)
    return TransferRequest(
        key=key, debit=debit, credit=credit, amount_minor=abs(delta_minor), currency=currency
    )


class SettlementDecisionActivities:
    """The ledger side of operators' decisions on the ingest's items."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.ledger = Ledger(pool)

    @ledger_activity(OPERATOR_ITEMS)
    async def operator_items(self, request: OperatorItemsRequest) -> OperatorItems:
        """The day's items awaiting a decision, the oldest record ids first,
        at most items_max of them, and how many await one in all."""
        rows = await self.pool.fetch(
            _AWAITING_SQL, request.provider, request.settlement_date, request.items_max
        )
        return OperatorItems(
            items=[_item(row) for row in rows],
            awaiting_total=rows[0]["awaiting_total"] if rows else 0,
        )

    @ledger_activity(DECIDE_ITEM)
    async def decide_item(self, request: DecisionRecord) -> OperatorItem:
        """Record the decision on an item awaiting one, and post an
        adjustment's fix; an item decided already answers as it was decided
        (its fix posted again, which the ledger replays)."""
        decision = request.decision
        adjust = decision.action is DecisionAction.ADJUST
        key = fix_key(request.provider, decision.item_id) if adjust else None
        row = await self.pool.fetchrow(
            _DECIDE_SQL,
            decision.item_id,
            request.provider,
            "adjusted" if adjust else "dismissed",
            decision.operator,
            decision.reason,
            key,
        )
        if row is None:
            row = await self.pool.fetchrow(_ITEM_SQL, decision.item_id, request.provider)
        # The workflow asks only about items it listed from this table.
        assert row is not None, f"no operator item {decision.item_id}"
        item = _item(row)
        if item.state == "adjusted":
            assert item.transfer_key is not None  # the table's own constraint
            for code in (
                accounts.issuer_settlement(item.currency),
                accounts.suspense_reconciliation(item.currency),
            ):
                await self.ledger.open_account(accounts.system_account(code))
            [outcome] = await self.ledger.submit(
                [adjustment(item.transfer_key, item.currency, item.delta_minor)]
            )
            # Both accounts are unconstrained system accounts: nothing refuses a fix.
            assert outcome.accepted, outcome.detail
        return item

    @ledger_activity(RECORD_DRIFT)
    async def record_drift(self, report: DriftReport) -> None:
        """Set the dashboards' gauges of the ingest that just ended."""
        record_settlement_drift(
            report.provider,
            {kind.value: report.counts.count(kind) for kind in RecordClass},
            {rate.record_class.value: rate.rate_bps for rate in report.drift_by_class},
            report.drift_rate_bps,
            report.drift_alert_bps,
            int(time.time()),
        )

    def all(self) -> list[object]:
        return [self.operator_items, self.decide_item, self.record_drift]
