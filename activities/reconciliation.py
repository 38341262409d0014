"""Reconciliation's I/O: the settlement report's paged download (providers
queue, heartbeating, resumable), matching the staged records against the
ledger (ledger queue), the operators' notice and the report files. The
ledger queries it matches and fixes with are in
activities/reconciliation_queries.py, the report files' writing in
activities/reconciliation_files.py; the activities stay on two classes, one
per task queue, as the workers register them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta

import asyncpg
from pydantic import BaseModel
from temporalio import activity

from activities.metrics import record_reconciliation, record_reconciliation_records
from activities.providers.activities import ProviderClients
from activities.queues import ledger_activity, provider_activity
from activities.reconciliation_files import write_report_files
from activities.reconciliation_queries import (
    FIXED_BEFORE_SQL,
    ISSUER_RECORDS_SQL,
    LATE_POSTINGS_SQL,
    LEDGER_POSTINGS_SQL,
    SETTLED_SINCE_SQL,
    fix_record,
)
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
        rows = await self.pool.fetch(ISSUER_RECORDS_SQL, request.run_key)
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
            LEDGER_POSTINGS_SQL, list(issuer), start, end, request.settlement_date
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
                FIXED_BEFORE_SQL, [difference.transaction_id for difference in differences]
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
        a retry overwrites the same files. The drift per currency and the
        records matched and differing become the reconciliation gauges, so an
        alert can watch the drift and its rate (a retry sets the same values)."""
        paths = await asyncio.to_thread(write_report_files, request.reports_dir, request.report)
        report = request.report
        record_reconciliation_records(report.provider, report.records_matched, len(report.items))
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
                SETTLED_SINCE_SQL,
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
                        fix=fix_record(row),
                        ledger_amount_now_minor=now,
                        correction_minor=-row["net"],
                        residual_minor=row["issuer_effect"] - now,
                    )
                )
        rows = await self.pool.fetch(
            LATE_POSTINGS_SQL,
            lookup.since_date,
            lookup.until_date,
            lookup.limit - len(found),
            [late.fix.fix_key for late in found],
        )
        for row in rows:
            now = row["ledger_amount_now_minor"]
            found.append(
                LatePosting(
                    fix=fix_record(row),
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
