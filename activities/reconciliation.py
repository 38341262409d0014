"""Reconciliation's I/O: the settlement report's paged download (providers
queue, heartbeating, resumable), matching the staged records against the
ledger (ledger queue), the operators' notice and the report files."""

from __future__ import annotations

import asyncio
import csv
import io
import os
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import asyncpg
from pydantic import BaseModel
from temporalio import activity

from activities.metrics import record_reconciliation
from activities.providers.activities import ProviderClients
from activities.queues import ledger_activity, provider_activity
from schemas.money import Currency
from schemas.notify import Channel
from schemas.reconciliation import (
    FIX_REVERSED_SUFFIX,
    FIX_SETTLED_LATE_SUFFIX,
    CurrencyVolume,
    Difference,
    DifferenceKind,
    DownloadProgress,
    DownloadRequest,
    DownloadSummary,
    FixRecord,
    LatePosting,
    LatePostingLookup,
    MatchRequest,
    MatchResult,
    ReconciliationReport,
    ReportPaths,
    ReversalKind,
    ReversalMark,
)

DOWNLOAD_SETTLEMENT_REPORT = "reconciliation.download_settlement_report"
NOTIFY_OPERATORS = "reconciliation.notify_operators"
MATCH_SETTLEMENT = "reconciliation.match"
WRITE_REPORT = "reconciliation.write_report"
RECORD_FIX = "reconciliation.record_fix"
FIND_LATE_POSTINGS = "reconciliation.find_late_postings"
MARK_REVERSED = "reconciliation.mark_reversed"

# Settlement records the card's ledger postings stand for; reversals release
# holds (no money), fees and chargebacks belong to other processes.
CARD_POSTING_RECORD_TYPES = ("clearing", "force_post", "refund")

REPORT_CSV_COLUMNS: tuple[str, ...] = (
    "item_id",
    "kind",
    "state",
    "transaction_id",
    "card_id",
    "currency",
    "record_type",
    "issuer_amount_minor",
    "ledger_amount_minor",
    "delta_minor",
    "ledger_postings",
    "decided_by",
    "reason",
    "transfer_key",
)


class OperatorNotice(BaseModel):
    key: str
    to: str
    subject: str
    body: str


class ReportWrite(BaseModel):
    reports_dir: str
    report: ReconciliationReport


class ReconciliationProviderActivities:
    def __init__(self, clients: ProviderClients, pool: asyncpg.Pool) -> None:
        self.clients = clients
        self.pool = pool

    @provider_activity(DOWNLOAD_SETTLEMENT_REPORT)
    async def download(self, request: DownloadRequest) -> DownloadSummary:
        """Stage every record of the day's report under request.run_key, page
        by page, heartbeating the cursor; a retry after a crash resumes from
        the last heartbeat's cursor instead of the first page."""
        info = activity.info()
        progress = DownloadProgress()
        if info.heartbeat_details:
            progress = DownloadProgress.model_validate(info.heartbeat_details[0])
        else:
            await self.pool.execute(
                "DELETE FROM reconciliation_records WHERE run_key = $1", request.run_key
            )
        resumed_from = progress.cursor
        pages_this_attempt = 0
        while True:
            page = await self.clients.issuer.get_settlement_report_page(
                request.settlement_date, cursor=progress.cursor, limit=request.page_size
            )
            start = int(progress.cursor or 0)
            await self.pool.executemany(
                """
                INSERT INTO reconciliation_records (run_key, position, record_id, record_type,
                    transaction_id, card_id, authorization_id, amount_minor, currency,
                    direction, created_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                ON CONFLICT (run_key, position) DO UPDATE SET
                    record_id = EXCLUDED.record_id, record_type = EXCLUDED.record_type,
                    transaction_id = EXCLUDED.transaction_id, card_id = EXCLUDED.card_id,
                    authorization_id = EXCLUDED.authorization_id,
                    amount_minor = EXCLUDED.amount_minor, currency = EXCLUDED.currency,
                    direction = EXCLUDED.direction, created_at = EXCLUDED.created_at
                """,
                [
                    (
                        request.run_key,
                        start + index,
                        record.id,
                        record.record_type.value,
                        record.transaction_id,
                        record.card_id,
                        record.authorization_id,
                        record.amount_minor,
                        record.currency.value,
                        record.direction,
                        datetime.fromisoformat(record.created_at),
                    )
                    for index, record in enumerate(page.records)
                ],
            )
            pages_this_attempt += 1
            progress = DownloadProgress(
                cursor=page.next_cursor,
                pages=progress.pages + 1,
                records=start + len(page.records),
            )
            activity.heartbeat(progress.model_dump(mode="json"))
            if page.next_cursor is None:
                break
        return DownloadSummary(
            records=progress.records,
            pages=progress.pages,
            attempt=info.attempt,
            resumed_from_cursor=resumed_from,
            pages_this_attempt=pages_this_attempt,
        )

    @provider_activity(NOTIFY_OPERATORS)
    async def notify_operators(self, notice: OperatorNotice) -> str:
        """E-mail the operations mailbox once per notice key; returns the message id."""
        message = await self.clients.notify.send_message(
            channel=Channel.EMAIL,
            to=notice.to,
            subject=notice.subject,
            body=notice.body,
            idempotency_key=notice.key,
            dedupe_key=notice.key,
        )
        return message.id

    def all(self) -> list[object]:
        return [self.download, self.notify_operators]


def _day_bounds(day: object) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)  # type: ignore[arg-type]
    return start, start + timedelta(days=1)


# The card posts a settled transaction to issuer:settlement under keys that
# name it (workflows/card_money.py): from its holds
# card/{card_id}/auth/{authorization_id}/post-{transaction_id}/{hold digest}
# (before the card-money-durable-keys patch
# card/{card_id}/auth/{authorization_id}/{n}-post-{transaction_id}), beyond them
# card/{card_id}/post/{transaction_id}, a refund card/{card_id}/refund/{transaction_id},
# and an operator's decision on money the card could not post itself
# card/{card_id}/exception/{exception_id}/{charge|write-off}/{transaction_id}
# (a charge after refused ones: {exception_id}~{attempt} in its place).
_CARD_POSTINGS_CTE = """
WITH settlement AS (
    SELECT id FROM ledger_accounts WHERE code LIKE 'issuer:settlement:%'
),
postings AS (
    SELECT t.currency, t.created_at,
        CASE WHEN t.credit_account_id IN (SELECT id FROM settlement)
             THEN t.amount_minor ELSE -t.amount_minor END AS effect,
        substring(t.idempotency_key FROM '^card/([^/]+)/') AS card_id,
        coalesce(
            substring(t.idempotency_key FROM '^card/[^/]+/auth/[^/]+/post-([^/]+)/[0-9a-f]+$'),
            substring(t.idempotency_key FROM '^card/[^/]+/auth/[^/]+/[0-9]+-post-(.+)$'),
            substring(t.idempotency_key FROM '^card/[^/]+/(?:post|refund)/(.+)$'),
            substring(t.idempotency_key FROM
                      '^card/[^/]+/exception/[^/]+/(?:charge|write-off)/(.+)$')
        ) AS transaction_id
    FROM ledger_transfers t
    WHERE t.kind IN ('posted', 'post_pending')
      AND t.idempotency_key LIKE 'card/%'
      AND (t.credit_account_id IN (SELECT id FROM settlement)
           OR t.debit_account_id IN (SELECT id FROM settlement))
)
"""

_LEDGER_POSTINGS_SQL = (
    _CARD_POSTINGS_CTE
    + """
SELECT transaction_id, min(card_id) AS card_id, currency,
       sum(effect)::bigint AS effect, count(*) AS postings
FROM postings
WHERE transaction_id IS NOT NULL
  AND (transaction_id = ANY($1::text[])
       OR transaction_id IN (SELECT transaction_id FROM card_transactions
                             WHERE occurred_at >= $2 AND occurred_at < $3)
       OR (created_at >= $2 AND created_at < $3
           AND transaction_id NOT IN (SELECT transaction_id FROM card_transactions)
           -- settled and fixed on an earlier day: a posting of it since is
           -- that fix's late posting, which the look-back corrects.
           AND transaction_id NOT IN (SELECT transaction_id FROM reconciliation_fixes
                                      WHERE settlement_date < $4)))
GROUP BY transaction_id, currency
"""
)

# Open fixes of the window whose transaction the card's postings on
# issuer:settlement have changed since the fix was posted (only card keys
# count, never reconciliation's own transfers); those in $4 are corrected
# otherwise (their transaction settled since).
_LATE_POSTINGS_SQL = (
    _CARD_POSTINGS_CTE
    + """,
open_fixes AS (
    SELECT * FROM reconciliation_fixes
    WHERE reversal_key IS NULL AND settlement_date >= $1 AND settlement_date <= $2
      AND NOT (fix_key = ANY($4::text[]))
),
now_posted AS (
    SELECT transaction_id, currency, sum(effect)::bigint AS effect
    FROM postings
    WHERE transaction_id IN (SELECT transaction_id FROM open_fixes)
    GROUP BY transaction_id, currency
)
SELECT f.fix_key, f.run_key, f.settlement_date, f.item_id, f.kind, f.transaction_id,
       f.card_id, f.currency, f.issuer_amount_minor, f.ledger_amount_minor, f.delta_minor,
       coalesce(p.effect, 0) AS ledger_amount_now_minor
FROM open_fixes f
LEFT JOIN now_posted p ON p.transaction_id = f.transaction_id AND p.currency = f.currency
WHERE coalesce(p.effect, 0) <> f.ledger_amount_minor
ORDER BY f.settlement_date, f.fix_key
LIMIT $3
"""
)

# Fixes of days before this run's whose transaction the issuer settles in
# this run's report (it settled late): each with what the fix and its
# corrections (keyed from it) still move on issuer:settlement, which the
# correction takes back, closed fixes included. None left once corrected.
_SETTLED_SINCE_SQL = (
    _CARD_POSTINGS_CTE
    + """,
settled AS (
    SELECT DISTINCT ON (record_id) record_id AS transaction_id, currency,
        CASE WHEN direction = 'debit' THEN amount_minor ELSE -amount_minor END AS issuer_effect
    FROM reconciliation_records
    WHERE run_key = $1 AND record_type = ANY($3::text[])
    ORDER BY record_id, position
),
earlier AS (
    SELECT f.* FROM reconciliation_fixes f
    JOIN settled s ON s.transaction_id = f.transaction_id AND s.currency = f.currency
    WHERE f.settlement_date < $2
),
nets AS (
    SELECT e.fix_key, sum(
        CASE WHEN t.credit_account_id IN (SELECT id FROM settlement)
             THEN t.amount_minor ELSE -t.amount_minor END)::bigint AS net
    FROM earlier e
    JOIN ledger_transfers t ON t.idempotency_key IN (e.fix_key, e.fix_key || $4, e.fix_key || $5)
    WHERE t.kind = 'posted'
    GROUP BY e.fix_key
),
now_posted AS (
    SELECT transaction_id, currency, sum(effect)::bigint AS effect
    FROM postings
    WHERE transaction_id IN (SELECT transaction_id FROM earlier)
    GROUP BY transaction_id, currency
)
SELECT e.fix_key, e.run_key, e.settlement_date, e.item_id, e.kind, e.transaction_id,
       e.card_id, e.currency, e.issuer_amount_minor, e.ledger_amount_minor, e.delta_minor,
       n.net, s.issuer_effect, coalesce(p.effect, 0) AS ledger_amount_now_minor
FROM earlier e
JOIN nets n ON n.fix_key = e.fix_key
JOIN settled s ON s.transaction_id = e.transaction_id AND s.currency = e.currency
LEFT JOIN now_posted p ON p.transaction_id = e.transaction_id AND p.currency = e.currency
WHERE n.net <> 0
ORDER BY e.settlement_date, e.fix_key
LIMIT $6
"""
)

# What reconciliation's own transfers (fixes, and corrections keyed from
# them) have moved on issuer:settlement per transaction, for the ids in $1.
_FIXED_BEFORE_SQL = """
WITH settlement AS (
    SELECT id FROM ledger_accounts WHERE code LIKE 'issuer:settlement:%'
),
fixes AS (
    SELECT t.currency,
        substring(t.idempotency_key FROM '/fix/([^/]+)(?:/.*)?$') AS transaction_id,
        CASE WHEN t.credit_account_id IN (SELECT id FROM settlement)
             THEN t.amount_minor ELSE -t.amount_minor END AS effect
    FROM ledger_transfers t
    WHERE t.kind = 'posted' AND t.idempotency_key LIKE 'reconciliation/%'
      AND (t.credit_account_id IN (SELECT id FROM settlement)
           OR t.debit_account_id IN (SELECT id FROM settlement))
)
SELECT transaction_id, currency, sum(effect)::bigint AS effect
FROM fixes
WHERE transaction_id = ANY($1::text[])
GROUP BY transaction_id, currency
"""

# What the cards posted on issuer:settlement for each issuer transaction in
# $1 (positive: money the program owes the issuer), and in how many postings.
_POSTED_FOR_SQL = (
    _CARD_POSTINGS_CTE
    + """
SELECT transaction_id, sum(effect)::bigint AS effect, count(*) AS postings
FROM postings
WHERE transaction_id = ANY($1::text[])
GROUP BY transaction_id
"""
)


async def posted_for(pool: asyncpg.Pool, transaction_ids: list[str]) -> dict[str, tuple[int, int]]:
    """What the cards posted on issuer:settlement for each issuer transaction
    (its net effect and its number of postings), read as reconciliation reads
    it; a transaction never posted is absent."""
    rows = await pool.fetch(_POSTED_FOR_SQL, transaction_ids)
    return {row["transaction_id"]: (row["effect"], row["postings"]) for row in rows}


_ISSUER_RECORDS_SQL = """
SELECT DISTINCT ON (record_id) record_id, record_type, card_id, amount_minor, currency,
       direction
FROM reconciliation_records
WHERE run_key = $1
ORDER BY record_id, position
"""


def _classify(issuer_effect: int, ledger_effect: int) -> DifferenceKind:
    if issuer_effect != 0 and ledger_effect != issuer_effect:
        times, rest = divmod(ledger_effect, issuer_effect)
        if rest == 0 and times >= 2:
            return DifferenceKind.DUPLICATE
    return DifferenceKind.AMOUNT_MISMATCH


class ReconciliationLedgerActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @ledger_activity(MATCH_SETTLEMENT)
    async def match(self, request: MatchRequest) -> MatchResult:
        """Match every staged card-posting record with the ledger's postings
        of the same transaction, and the day's ledger postings with the
        report; returns the differences, one per transaction."""
        start, end = _day_bounds(request.settlement_date)
        rows = await self.pool.fetch(_ISSUER_RECORDS_SQL, request.run_key)
        issuer: dict[str, tuple[str, str, Currency, int]] = {}
        volumes: dict[Currency, list[int]] = {}
        not_applicable = 0
        for row in rows:
            if row["record_type"] not in CARD_POSTING_RECORD_TYPES:
                not_applicable += 1
                continue
            currency = Currency(row["currency"])
            # A debit of the program (clearing, force post) is money cardflow
            # owes the issuer: the card credits issuer:settlement with it.
            sign = 1 if row["direction"] == "debit" else -1
            issuer[row["record_id"]] = (
                row["record_type"],
                row["card_id"],
                currency,
                sign * row["amount_minor"],
            )
            volume = volumes.setdefault(currency, [0, 0])
            volume[0] += 1
            volume[1] += row["amount_minor"]
        ledger_rows = await self.pool.fetch(
            _LEDGER_POSTINGS_SQL, list(issuer), start, end, request.settlement_date
        )
        ledger = {row["transaction_id"]: row for row in ledger_rows}
        differences: list[Difference] = []
        matched = 0
        for transaction_id, (record_type, card_id, currency, effect) in sorted(issuer.items()):
            posted = ledger.get(transaction_id)
            ledger_effect = posted["effect"] if posted else 0
            if posted is not None and ledger_effect == effect:
                matched += 1
                continue
            kind = (
                DifferenceKind.MISSING_IN_LEDGER
                if posted is None
                else _classify(effect, ledger_effect)
            )
            differences.append(
                Difference(
                    item_id=transaction_id,
                    kind=kind,
                    transaction_id=transaction_id,
                    card_id=card_id,
                    currency=currency,
                    record_type=record_type,
                    issuer_amount_minor=effect,
                    ledger_amount_minor=ledger_effect,
                    delta_minor=effect - ledger_effect,
                    ledger_postings=posted["postings"] if posted else 0,
                )
            )
        for transaction_id, posted in sorted(ledger.items()):
            if transaction_id in issuer or posted["effect"] == 0:
                continue
            differences.append(
                Difference(
                    item_id=transaction_id,
                    kind=DifferenceKind.MISSING_AT_ISSUER,
                    transaction_id=transaction_id,
                    card_id=posted["card_id"],
                    currency=Currency(posted["currency"]),
                    record_type=None,
                    issuer_amount_minor=0,
                    ledger_amount_minor=posted["effect"],
                    delta_minor=-posted["effect"],
                    ledger_postings=posted["postings"],
                )
            )
        if differences:
            fixed_rows = await self.pool.fetch(
                _FIXED_BEFORE_SQL, [difference.transaction_id for difference in differences]
            )
            fixed = {(row["transaction_id"], row["currency"]): row["effect"] for row in fixed_rows}
            for difference in differences:
                key = (difference.transaction_id, difference.currency.value)
                difference.fixed_before_minor = fixed.get(key, 0)
        return MatchResult(
            records_total=len(rows),
            records_matched=matched,
            records_not_applicable=not_applicable,
            volumes=[
                CurrencyVolume(currency=currency, records=count, volume_minor=volume)
                for currency, (count, volume) in sorted(volumes.items())
            ],
            differences=differences,
        )

    @ledger_activity(WRITE_REPORT)
    async def write_report(self, request: ReportWrite) -> ReportPaths:
        """Write the report as JSON and as CSV (one row per difference);
        a retry overwrites the same files. The drift per currency becomes the
        reconciliation gauges, so an alert can watch them."""
        paths = await asyncio.to_thread(_write_report, request)
        report = request.report
        for summary in report.currencies:
            record_reconciliation(
                report.provider,
                summary.currency.value,
                summary.drift_minor,
                summary.unexplained_minor,
            )
        return paths

    @ledger_activity(RECORD_FIX)
    async def record_fix(self, fix: FixRecord) -> None:
        """Keep a posted fix for later runs' look-back; a retry keeps the first."""
        difference = fix.difference
        await self.pool.execute(
            """
            INSERT INTO reconciliation_fixes (fix_key, run_key, settlement_date, item_id, kind,
                transaction_id, card_id, currency, issuer_amount_minor, ledger_amount_minor,
                delta_minor)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (fix_key) DO NOTHING
            """,
            fix.fix_key,
            fix.run_key,
            fix.settlement_date,
            difference.item_id,
            difference.kind.value,
            difference.transaction_id,
            difference.card_id,
            difference.currency.value,
            difference.issuer_amount_minor,
            difference.ledger_amount_minor,
            difference.delta_minor,
        )

    @ledger_activity(FIND_LATE_POSTINGS)
    async def find_late_postings(self, lookup: LatePostingLookup) -> list[LatePosting]:
        """Earlier fixes that no longer stand, each with its correction.

        Settled late (looked for when lookup.run_key names the run whose
        report is staged): a fix of a day before until_date whose transaction
        the issuer settles in this report. The day's matching takes the
        transaction over, so the correction takes back all that the fix and
        its corrections still move on issuer:settlement.

        Posted late: an open fix of a settlement day in the window whose
        transaction the card has posted to since; the correction keeps
        issuer:settlement at what the issuer settled (card postings now +
        fix + correction = issuer, so correction = card then - card now)."""
        found: list[LatePosting] = []
        if lookup.run_key is not None:
            settled = await self.pool.fetch(
                _SETTLED_SINCE_SQL,
                lookup.run_key,
                lookup.until_date,
                list(CARD_POSTING_RECORD_TYPES),
                FIX_REVERSED_SUFFIX,
                FIX_SETTLED_LATE_SUFFIX,
                lookup.limit,
            )
            for row in settled:
                now = row["ledger_amount_now_minor"]
                found.append(
                    LatePosting(
                        kind=ReversalKind.LATE_SETTLEMENT_REVERSED,
                        fix=_fix_record(row),
                        ledger_amount_now_minor=now,
                        correction_minor=-row["net"],
                        residual_minor=row["issuer_effect"] - now,
                    )
                )
        rows = await self.pool.fetch(
            _LATE_POSTINGS_SQL,
            lookup.since_date,
            lookup.until_date,
            lookup.limit - len(found),
            [late.fix.fix_key for late in found],
        )
        for row in rows:
            now = row["ledger_amount_now_minor"]
            found.append(
                LatePosting(
                    fix=_fix_record(row),
                    ledger_amount_now_minor=now,
                    correction_minor=row["ledger_amount_minor"] - now,
                    residual_minor=row["issuer_amount_minor"] - now,
                )
            )
        return found

    @ledger_activity(MARK_REVERSED)
    async def mark_reversed(self, mark: ReversalMark) -> bool:
        """Close a fix once its correction is posted; False when another run
        closed it first (and so reports it)."""
        closed = await self.pool.fetchval(
            """
            UPDATE reconciliation_fixes
            SET reversal_key = $2, reversal_minor = $3, ledger_amount_now_minor = $4,
                reversed_by = $5, reversed_at = now()
            WHERE fix_key = $1 AND reversal_key IS NULL
            RETURNING fix_key
            """,
            mark.fix_key,
            mark.reversal_key,
            mark.correction_minor,
            mark.ledger_amount_now_minor,
            mark.reversed_by,
        )
        return closed is not None

    def all(self) -> list[object]:
        return [
            self.match,
            self.write_report,
            self.record_fix,
            self.find_late_postings,
            self.mark_reversed,
        ]


def _fix_record(row: asyncpg.Record) -> FixRecord:
    """A reconciliation_fixes row as the fix it records."""
    return FixRecord(
        fix_key=row["fix_key"],
        run_key=row["run_key"],
        settlement_date=row["settlement_date"],
        difference=Difference(
            item_id=row["item_id"],
            kind=DifferenceKind(row["kind"]),
            transaction_id=row["transaction_id"],
            card_id=row["card_id"],
            currency=Currency(row["currency"]),
            record_type=None,
            issuer_amount_minor=row["issuer_amount_minor"],
            ledger_amount_minor=row["ledger_amount_minor"],
            delta_minor=row["delta_minor"],
            ledger_postings=0,
        ),
    )


def _write_report(request: ReportWrite) -> ReportPaths:
    report = request.report
    directory = Path(request.reports_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"reconciliation-{report.provider}-{report.settlement_date.isoformat()}"
    json_path = directory / f"{stem}.json"
    csv_path = directory / f"{stem}.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for item in report.items:
        row = item.difference.model_dump(mode="json")
        row.update(state=item.state, decided_by=item.decided_by or "", reason=item.reason or "")
        row["transfer_key"] = item.transfer_key or ""
        writer.writerow({column: row.get(column, "") for column in REPORT_CSV_COLUMNS})
    for late in report.reversals:
        # One row per earlier fix corrected: its delta is the correction's
        # effect on issuer:settlement, its ledger amount the card's now.
        fixed = late.fix.difference
        writer.writerow(
            {
                "item_id": fixed.item_id,
                "kind": late.kind.value,
                "state": "reversed",
                "transaction_id": fixed.transaction_id,
                "card_id": fixed.card_id or "",
                "currency": fixed.currency.value,
                "record_type": "",
                "issuer_amount_minor": fixed.issuer_amount_minor,
                "ledger_amount_minor": late.ledger_amount_now_minor,
                "delta_minor": late.correction_minor,
                "ledger_postings": "",
                "decided_by": "",
                "reason": (
                    f"settled by the issuer on {report.settlement_date.isoformat()}"
                    f" after fix {late.fix.fix_key}"
                    if late.kind is ReversalKind.LATE_SETTLEMENT_REVERSED
                    else f"late posting after fix {late.fix.fix_key}"
                ),
                "transfer_key": late.transfer_key or "",
            }
        )
    _write_atomically(json_path, report.model_dump_json(indent=2) + "\n")
    _write_atomically(csv_path, buffer.getvalue())
    return ReportPaths(json_path=str(json_path.resolve()), csv_path=str(csv_path.resolve()))


def _write_atomically(path: Path, text: str) -> None:
    # A reader never sees half a report: write aside, then rename over.
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
