"""Billing's reads and writes, for the ledger task queue: which customers and
cards a period bills, and the statement (JSON and HTML) of a customer's period.

The statement is read from the ledger: balances as of the period's bounds and
the wallet's transfers in between, each classified by the process that posted
it (its idempotency key's prefix) or else the account on the other side
(see `classify`). Opening balance plus
the posted entries equals the closing balance, which the writer asserts.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.events import RecordedEvent, record_event
from activities.ledger import Ledger
from activities.queues import ledger_activity
from schemas.billing import (
    STATEMENT_ENTRIES_PER_WALLET_MAX,
    ActiveCard,
    ActiveCardsRequest,
    Category,
    CustomersPage,
    CustomersPageRequest,
    FeeCharge,
    Statement,
    StatementEntry,
    StatementRequest,
    StatementSummary,
    WalletStatement,
    WalletTotals,
)
from schemas.cards import CardInput
from schemas.events import EventType
from schemas.ledger import HISTORY_PAGE_SIZE_MAX, HistoryEntry
from schemas.money import Currency, Money

ACTIVE_CARDS = "billing.active_cards"
CUSTOMERS_PAGE = "billing.customers_page"
WRITE_STATEMENT = "billing.write_statement"

# Imported by name (not from workflows.cards) so activities never import workflow code.
CARD_STATUS_QUERY = "status"
CARD_QUERY_TIMEOUT = timedelta(seconds=10)
# A ledger timestamp has microsecond resolution: "as of just before t".
_INSTANT = timedelta(microseconds=1)
_POSTED_KINDS = frozenset({"posted", "post_pending"})
_WALLETS_PER_CUSTOMER_MAX = 16

# The process that posted a transfer names it first (its idempotency key starts
# with the process's workflow id): a top-up paid out of the FX pool is a
# top-up, a dispute's credit is a dispute. Other transfers are named by the
# account on the other side (card clearings, issuance fees, conversions...).
_BY_KEY: tuple[tuple[str, Category], ...] = (
    ("topup/", "topup"),
    ("dispute/", "dispute"),
    ("billing/", "fee"),
    ("reconciliation/", "adjustment"),
    ("cashback/", "cashback"),
    ("fx/", "fx"),
)
_BY_COUNTERPARTY: tuple[tuple[str, Category], ...] = (
    ("revenue:fees:", "fee"),
    ("fx:pool:", "fx"),
    ("fx:rounding:", "fx"),
    ("revenue:fx:", "fx"),
    ("expense:cashback:", "cashback"),
    ("disputes:provisional:", "dispute"),
    ("suspense:reconciliation:", "adjustment"),
    ("issuer:settlement:", "card"),
    ("bank:inbound:", "topup"),
    ("crypto:custody:", "topup"),
)


_DEBT_ACCOUNT = re.compile(r"^customer:[^:]+:debt:")


def card_workflow_id(card_id: str) -> str:
    # Same as workflows.cards.card_workflow_id; kept here so activities do
    # not import workflow modules.
    return f"card/{card_id}"


def classify(entry: HistoryEntry) -> Category:
    """The statement category of one wallet transfer ("transfer" if no rule names it)."""
    category: Category = "transfer"
    if _DEBT_ACCOUNT.match(entry.counterparty) and not entry.key.startswith("dispute/"):
        # Money between the wallet and the customer's debt that the dispute
        # did not post: a top-up repaying the debt (or giving it back).
        return "debt_repayment"
    for prefix, named in _BY_KEY:
        if entry.key.startswith(prefix):
            category = named
            break
    else:
        for family, named in _BY_COUNTERPARTY:
            if entry.counterparty.startswith(family):
                category = named
                break
    if category == "card" and entry.kind not in _POSTED_KINDS:
        return "card_hold"
    return category


class BillingActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.ledger = Ledger(pool)

    @ledger_activity(CUSTOMERS_PAGE)
    async def customers_page(self, request: CustomersPageRequest) -> CustomersPage:
        """Customers holding a card issued before the period's end, in id order."""
        rows = await self.pool.fetch(
            """
            SELECT DISTINCT customer_id FROM cards
            WHERE created_at < $1 AND customer_id > $2
            ORDER BY customer_id LIMIT $3
            """,
            request.period_end,
            request.after,
            request.limit + 1,
        )
        ids = [row["customer_id"] for row in rows[: request.limit]]
        return CustomersPage(
            customer_ids=ids, next_after=ids[-1] if len(rows) > request.limit else None
        )

    @ledger_activity(ACTIVE_CARDS)
    async def active_cards(self, request: ActiveCardsRequest) -> list[ActiveCard]:
        """The customer's cards active in the period, with their currency (see
        schemas.billing for the rule); asks each card's process."""
        rows = await self.pool.fetch(
            """
            SELECT card_id FROM cards WHERE customer_id = $1 AND created_at < $2
            ORDER BY card_id LIMIT $3
            """,
            request.customer_id,
            request.period_end,
            request.limit + 1,
        )
        if len(rows) > request.limit:
            # Never bill part of a customer's cards silently: an operator
            # raises the policy's cards_max (up to the limit) or bills by hand.
            raise ApplicationError(
                f"{request.customer_id} has more than {request.limit} cards issued before"
                f" {request.period_end.isoformat()}",
                type="TooManyCards",
                non_retryable=True,
            )
        client = activity.client()
        active: list[ActiveCard] = []
        for row in rows:
            handle = client.get_workflow_handle(card_workflow_id(row["card_id"]))
            try:
                description = await handle.describe()
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:
                    continue  # never started: the issuance did not finish
                raise
            ended = description.status != WorkflowExecutionStatus.RUNNING
            if ended and description.close_time and description.close_time < request.period_start:
                continue
            card = await handle.query(
                CARD_STATUS_QUERY, result_type=CardInput, rpc_timeout=CARD_QUERY_TIMEOUT
            )
            active.append(ActiveCard(card_id=card.card_id, currency=card.currency))
        return active

    @ledger_activity(WRITE_STATEMENT)
    async def write_statement(self, request: StatementRequest) -> StatementSummary:
        """Write {statements_dir}/{customer}/{period}.json and .html; returns
        their paths and each wallet's totals. Writing again overwrites."""
        cutoff = min(request.period_end, datetime.now(UTC))
        codes = await self.pool.fetch(
            """
            SELECT code FROM ledger_accounts
            WHERE starts_with(code, $1) ORDER BY code LIMIT $2
            """,
            f"customer:{request.customer_id}:wallet:",
            _WALLETS_PER_CUSTOMER_MAX,
        )
        wallets = [await self._wallet(row["code"], request.period_start, cutoff) for row in codes]
        statement = Statement(
            customer_id=request.customer_id,
            period=request.period,
            period_start=request.period_start,
            period_end=request.period_end,
            cutoff=cutoff,
            wallets=wallets,
            fees=request.fees,
        )
        json_path, html_path = await asyncio.to_thread(_write_files, request, statement)
        # Written, so ready: its event once (a statement written again is the same one).
        await record_event(
            self.pool,
            RecordedEvent(
                source=f"statement/{request.customer_id}/{request.period}",
                type=EventType.STATEMENT_READY,
                customer_id=request.customer_id,
                process_id=f"billing/{request.customer_id}/{request.period}",
                occurred_at=cutoff,
                data={
                    "period": request.period,
                    "url": f"/v1/statements/{request.customer_id}/{request.period}",
                    "wallets": {
                        w.currency.value: {
                            "opening_minor": w.opening_minor,
                            "closing_minor": w.closing_minor,
                        }
                        for w in wallets
                    },
                    "fees_charged_minor": _charged_by_currency(request.fees),
                },
            ),
        )
        return StatementSummary(
            json_path=json_path,
            html_path=html_path,
            wallets=[
                WalletTotals(
                    code=w.code,
                    currency=w.currency,
                    opening_minor=w.opening_minor,
                    closing_minor=w.closing_minor,
                    entries=len(w.entries),
                    by_category_minor=w.by_category_minor,
                )
                for w in wallets
            ],
        )

    async def _wallet(self, code: str, start: datetime, cutoff: datetime) -> WalletStatement:
        opening = await self.ledger.balance(code, as_of=start - _INSTANT)
        closing = await self.ledger.balance(code, as_of=cutoff - _INSTANT)
        entries: list[StatementEntry] = []
        after: int | None = None
        while True:
            page = await self.ledger.history(code, after=after, limit=HISTORY_PAGE_SIZE_MAX)
            for item in page.entries:
                if start <= item.created_at < cutoff:
                    entries.append(_entry(item))
            if len(entries) > STATEMENT_ENTRIES_PER_WALLET_MAX:
                raise ApplicationError(
                    f"{code} has more than {STATEMENT_ENTRIES_PER_WALLET_MAX} entries in the"
                    " period",
                    type="StatementTooLarge",
                    non_retryable=True,
                )
            if page.next_cursor is None:
                break
            after = page.next_cursor
        credits = sum(e.amount_minor for e in entries if e.posted and e.direction == "credit")
        debits = sum(e.amount_minor for e in entries if e.posted and e.direction == "debit")
        by_category: dict[str, int] = {}
        for e in entries:
            if e.posted:
                signed = e.amount_minor if e.direction == "credit" else -e.amount_minor
                by_category[e.category] = by_category.get(e.category, 0) + signed
        # The statement balances: what the ledger says at the end is what it
        # said at the start plus what happened in between.
        if opening.posted + credits - debits != closing.posted:
            raise ApplicationError(
                f"{code}: opening {opening.posted} + credits {credits} - debits {debits}"
                f" != closing {closing.posted}",
                type="StatementUnbalanced",
            )
        return WalletStatement(
            code=code,
            currency=opening.currency,
            opening_minor=opening.posted,
            closing_minor=closing.posted,
            credits_minor=credits,
            debits_minor=debits,
            by_category_minor=by_category,
            entries=entries,
        )

    def all(self) -> list[object]:
        return [self.customers_page, self.active_cards, self.write_statement]


def _entry(item: HistoryEntry) -> StatementEntry:
    return StatementEntry(
        transfer_id=item.transfer_id,
        at=item.created_at,
        key=item.key,
        kind=item.kind,
        category=classify(item),
        direction=item.direction,
        counterparty=item.counterparty,
        amount_minor=item.amount_minor,
        posted=item.kind in _POSTED_KINDS,
    )


def _write_files(request: StatementRequest, statement: Statement) -> tuple[str, str]:
    """{statements_dir}/{customer}/{period}.json and .html; their absolute paths."""
    root = Path(request.statements_dir).resolve()
    directory = (root / request.customer_id).resolve()
    if directory.parent != root:
        # A customer id of dots would name a directory outside the statements'.
        raise ApplicationError(
            f"customer id {request.customer_id!r} cannot name a statement directory",
            type="InvalidStatementPath",
            non_retryable=True,
        )
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{request.period}.json"
    html_path = directory / f"{request.period}.html"
    _write(json_path, statement.model_dump_json(indent=2))
    _write(html_path, render_html(statement))
    return str(json_path.resolve()), str(html_path.resolve())


def _write(path: Path, text: str) -> None:
    """Replace the file whole, so a reader never sees half a statement."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _money(amount_minor: int, currency: Currency) -> str:
    return str(Money(amount_minor=amount_minor, currency=currency))


def _row(label: str, amount: str) -> str:
    return f'<tr><th>{html.escape(label)}</th><td class="n">{html.escape(amount)}</td></tr>'


def render_html(statement: Statement) -> str:
    """A self-contained, readable page of the statement."""
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Statement {e(statement.customer_id)} {e(statement.period)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "td.n{text-align:right}</style></head><body>",
        f"<h1>Statement for {e(statement.customer_id)}, {e(statement.period)}</h1>",
        f"<p>From {e(statement.period_start.isoformat())} to {e(statement.cutoff.isoformat())}</p>",
    ]
    for wallet in statement.wallets:
        ccy = wallet.currency
        parts += [
            f"<h2>Wallet {e(wallet.code)}</h2>",
            "<table>",
            _row("Opening balance", _money(wallet.opening_minor, ccy)),
            _row("Credits", _money(wallet.credits_minor, ccy)),
            _row("Debits", _money(wallet.debits_minor, ccy)),
            _row("Closing balance", _money(wallet.closing_minor, ccy)),
            "</table>",
            "<table><tr><th>Category</th><th>Net</th></tr>",
        ]
        for category, amount in sorted(wallet.by_category_minor.items()):
            parts.append(f'<tr><td>{e(category)}</td><td class="n">{_money(amount, ccy)}</td></tr>')
        parts.append("</table>")
        parts.append(
            "<table><tr><th>Time</th><th>Category</th><th>Counterparty</th>"
            "<th>Amount</th><th>Reference</th></tr>"
        )
        for entry in wallet.entries:
            signed = entry.amount_minor if entry.direction == "credit" else -entry.amount_minor
            note = "" if entry.posted else f" ({entry.kind}, not posted)"
            parts.append(
                f"<tr><td>{e(entry.at.isoformat())}</td><td>{e(entry.category)}{e(note)}</td>"
                f'<td>{e(entry.counterparty)}</td><td class="n">{_money(signed, ccy)}</td>'
                f"<td>{e(entry.key)}</td></tr>"
            )
        if not wallet.entries:
            parts.append('<tr><td colspan="5">No transactions in this period.</td></tr>')
        parts.append("</table>")
    parts += [
        "<h2>Monthly card fees</h2>",
        "<table><tr><th>Card</th><th>Fee</th><th>Status</th><th>Note</th></tr>",
    ]
    for fee in statement.fees:
        parts.append(
            f"<tr><td>{e(fee.card_id)}</td>"
            f'<td class="n">{_money(fee.amount_minor, fee.currency)}</td>'
            f"<td>{e(fee.status)}</td><td>{e(fee.reason)}</td></tr>"
        )
    if not statement.fees:
        parts.append('<tr><td colspan="4">No active cards in this period.</td></tr>')
    parts += ["</table>", "</body></html>", ""]
    return "\n".join(parts)


def _charged_by_currency(fees: list[FeeCharge]) -> dict[str, int]:
    charged: dict[str, int] = {}
    for fee in fees:
        if fee.status == "charged":
            charged[fee.currency.value] = charged.get(fee.currency.value, 0) + fee.amount_minor
    return charged
