"""Card program funding and the daily settlement report: the issuer's side of
the money, which cardflow reconciles its ledger against.

Funding, per currency: deposited - settled debits (clearings, force posts)
+ settled credits (refunds, chargebacks) - fees; pending authorizations are
shown beside it and taken off what is available.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel

from schemas.money import Currency
from simulators.issuer_models import (
    FundingBalance,
    FundingDeposit,
    FundingDepositIn,
    ProgramFunding,
    SettlementRecord,
    SettlementReport,
    SettlementTotal,
)
from simulators.issuer_state import (
    AUTHORIZATIONS,
    DEPOSITS,
    FEES,
    REVERSALS,
    TRANSACTIONS,
    IssuerState,
)

# A real settlement report runs to many thousands of records: it is read in
# pages. The cursor is the position of the page's first record in the day's
# report, which only grows at its end (records are kept oldest first).
SETTLEMENT_PAGE_SIZE_MAX = 500


class SettlementReportPage(BaseModel):
    settlement_date: date
    records: list[SettlementRecord]
    next_cursor: str | None


# The CSV report's columns, in order; the JSON records carry the same fields.
SETTLEMENT_CSV_COLUMNS: tuple[str, ...] = tuple(SettlementRecord.model_fields)


def _utc_date(stamp: str) -> date:
    return date.fromisoformat(stamp[:10])


def settlement_records(state: IssuerState, day: date) -> list[SettlementRecord]:
    """Every clearing, force post, refund, chargeback, reversal and fee of the
    UTC date, oldest first; a transaction settled late is in the report of the
    day it settled on."""
    records: list[SettlementRecord] = []
    for transaction in state.all(TRANSACTIONS):
        if (transaction.settlement_date or _utc_date(transaction.created_at)) == day:
            records.append(
                SettlementRecord(
                    record_type=transaction.type,
                    id=transaction.id,
                    created_at=transaction.created_at,
                    card_id=transaction.card_id,
                    authorization_id=transaction.authorization_id,
                    transaction_id=transaction.id,
                    amount_minor=transaction.amount_minor,
                    currency=transaction.currency,
                    direction=transaction.direction,
                )
            )
    for reversal in state.all(REVERSALS):
        if _utc_date(reversal.created_at) == day:
            # A reversal releases a hold: no money moves, but reconciliation
            # needs to see it to close the authorization.
            records.append(
                SettlementRecord(
                    record_type="reversal",
                    id=reversal.id,
                    created_at=reversal.created_at,
                    card_id=reversal.card_id,
                    authorization_id=reversal.authorization_id,
                    transaction_id=None,
                    amount_minor=reversal.amount_minor,
                    currency=reversal.currency,
                    direction="none",
                )
            )
    for fee in state.all(FEES):
        if _utc_date(fee.created_at) == day:
            records.append(
                SettlementRecord(
                    record_type="fee",
                    id=fee.id,
                    created_at=fee.created_at,
                    card_id=fee.card_id,
                    authorization_id=fee.authorization_id,
                    transaction_id=fee.transaction_id,
                    amount_minor=fee.amount_minor,
                    currency=fee.currency,
                    direction="debit",
                )
            )
    # Stable: a fee stamped with its transaction's time stays after it.
    records.sort(key=lambda record: datetime.fromisoformat(record.created_at))
    return records


def settlement_totals(records: list[SettlementRecord]) -> list[SettlementTotal]:
    debits: dict[Currency, int] = defaultdict(int)
    credits: dict[Currency, int] = defaultdict(int)
    counts: dict[Currency, int] = defaultdict(int)
    for record in records:
        counts[record.currency] += 1
        if record.direction == "debit":
            debits[record.currency] += record.amount_minor
        elif record.direction == "credit":
            credits[record.currency] += record.amount_minor
    return [
        SettlementTotal(
            currency=currency,
            debits_minor=debits[currency],
            credits_minor=credits[currency],
            net_minor=credits[currency] - debits[currency],
            records=counts[currency],
        )
        for currency in Currency
        if counts[currency]
    ]


def settlement_csv(records: list[SettlementRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SETTLEMENT_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(record.model_dump(mode="json"))
    return buffer.getvalue()


def program_funding(state: IssuerState) -> ProgramFunding:
    deposited: dict[Currency, int] = defaultdict(int)
    debits: dict[Currency, int] = defaultdict(int)
    credits: dict[Currency, int] = defaultdict(int)
    fees: dict[Currency, int] = defaultdict(int)
    pending: dict[Currency, int] = defaultdict(int)
    for deposit in state.all(DEPOSITS):
        deposited[deposit.currency] += deposit.amount_minor
    for transaction in state.all(TRANSACTIONS):
        side = debits if transaction.direction == "debit" else credits
        side[transaction.currency] += transaction.amount_minor
    for fee in state.all(FEES):
        fees[fee.currency] += fee.amount_minor
    for authorization in state.all(AUTHORIZATIONS):
        if authorization.status == "pending":
            pending[authorization.currency] += authorization.pending_amount_minor
    balances = []
    for currency in Currency:
        balance_minor = deposited[currency] - debits[currency] + credits[currency] - fees[currency]
        balances.append(
            FundingBalance(
                currency=currency,
                deposited_minor=deposited[currency],
                settled_debits_minor=debits[currency],
                settled_credits_minor=credits[currency],
                fees_minor=fees[currency],
                balance_minor=balance_minor,
                pending_authorizations_minor=pending[currency],
                available_minor=balance_minor - pending[currency],
            )
        )
    return ProgramFunding(balances=balances, as_of=state.now_iso())


def router(state: IssuerState) -> APIRouter:
    api = state.context.router()

    @api.get("/v1/program/funding")
    async def get_program_funding() -> ProgramFunding:
        """The program's funded balance in every currency, as the issuer sees
        it now: deposits less settled spend and fees, plus settled credits."""
        return program_funding(state)

    @api.post("/v1/program/funding/deposits", status_code=201)
    async def deposit_funding(body: FundingDepositIn) -> FundingDeposit:
        """Adds funding to the program in one currency. Announced as
        funding_deposit.created."""
        deposit = FundingDeposit(
            **body.model_dump(), id=state.new_id(DEPOSITS), created_at=state.now_iso()
        )
        state.save(DEPOSITS, deposit)
        state.emit("funding_deposit.created", deposit)
        return deposit

    @api.get(
        "/v1/reports/settlement/{settlement_date}",
        response_model=SettlementReport,
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def get_settlement_report(
        settlement_date: date,
        report_format: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
    ) -> SettlementReport | Response:
        """Every clearing, force post, refund, chargeback, reversal and fee of
        the UTC date, with ids, amounts, currency, card and authorization, and
        per-currency totals (JSON) or one CSV row per record."""
        records = settlement_records(state, settlement_date)
        if report_format == "csv":
            return Response(
                settlement_csv(records),
                media_type="text/csv",
                headers={
                    "content-disposition": (
                        f'attachment; filename="settlement-{settlement_date.isoformat()}.csv"'
                    )
                },
            )
        return SettlementReport(
            settlement_date=settlement_date, records=records, totals=settlement_totals(records)
        )

    @api.get("/v1/reports/settlement/{settlement_date}/pages")
    async def get_settlement_report_page(
        settlement_date: date,
        cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$")] = None,
        limit: Annotated[int, Query(ge=1, le=SETTLEMENT_PAGE_SIZE_MAX)] = 100,
    ) -> SettlementReportPage:
        """One page of the day's settlement records, oldest first; pass
        next_cursor back to read the next page (None: this was the last)."""
        records = settlement_records(state, settlement_date)
        start = int(cursor or 0)
        if start > len(records):
            raise HTTPException(status_code=400, detail="cursor is past the end of the report")
        end = start + limit
        return SettlementReportPage(
            settlement_date=settlement_date,
            records=records[start:end],
            next_cursor=str(end) if end < len(records) else None,
        )

    return api
