"""The settlement file's ingest (workflows/settlement.py): the file recorded
from its manifest, one gzip member (a chunk) streamed, matched, fixed and
checkpointed, and the day's interchange and issuer fees posted.

Where they run. `record_file` and `ingest_chunk` run on the providers queue:
they read the issuer (rate limited fleet-wide like every provider call) and
each holds a database connection only for one statement at a time, so a
chunk waiting on the issuer never keeps a ledger worker's slot; every worker
of the providers queue polls it, so a file's chunks spread over all of them
(one machine or many: more worker processes, more chunks at once).
`post_day_totals` is one ledger batch: the ledger queue.

Exactly once. A record's result is inserted once, keyed by the issuer's
record id, and never changed: the first classification (and its delta) is
the one every later call reads back. A fix is posted from the stored row,
under a key derived from the record id, so a batch retried, a chunk resumed
after a kill, or the same file ingested again posts each fix once (the
ledger replays a known key). A member's checkpoint is written after its
last batch; a chunk asked again for a checkpointed member returns the
checkpoint's counts without reading anything.

Memory. A chunk holds one batch of records at a time (policy.batch_records),
decoded as the member's bytes stream in; nothing holds a member or the file.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import date

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ledger.errors import IdempotencyConflict, LedgerError
from activities.ledger.store import Ledger
from activities.providers.activities import ProviderClients
from activities.queues import ledger_activity, provider_activity
from schemas import accounts
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.settlement import SettlementFileManifest, SettlementFileMember, SettlementFileRecord
from schemas.settlement_ingest import (
    ChunkCounts,
    ChunkProgress,
    ChunkRequest,
    ChunkResult,
    ClassCount,
    DayPosting,
    DayTotalsRequest,
    RecordClass,
    SettlementFileRequest,
    SettlementFileSummary,
)

RECORD_FILE = "settlement.record_file"
INGEST_CHUNK = "settlement.ingest_chunk"
POST_DAY_TOTALS = "settlement.post_day_totals"


def fix_key(provider: str, record_id: str) -> str:
    """The ledger key of a record's fix: the record's, whoever posts it."""
    return f"settlement/{provider}/record/{record_id}/fix"


def day_key(provider: str, settlement_date: date, currency: Currency, what: str) -> str:
    """The ledger key of the day's interchange or fees in one currency."""
    return f"settlement/{provider}/{settlement_date.isoformat()}/{currency.value}/{what}"


_RECORD_FILE_SQL = """
WITH inserted AS (
    INSERT INTO settlement_files (provider, settlement_date, sha256, record_count,
        member_count, byte_size, file_ref, members)
    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)
    ON CONFLICT (provider, settlement_date, sha256) DO NOTHING
    RETURNING file_id
)
SELECT file_id FROM inserted
UNION ALL
SELECT file_id FROM settlement_files
WHERE provider = $1 AND settlement_date = $2 AND sha256 = $3
LIMIT 1
"""

# One batch: staged from arrays, classified against card_transactions,
# inserted once per record id, the differences left to operators recorded
# with them; answers every record of the batch as first classified (this
# statement's or an earlier one's). A clearing, force post or refund claims
# its transaction: a later record of the same transaction (another record
# id) is a duplicate. Signs are for issuer:settlement: > 0 cardflow owes the
# issuer (a purchase, a fee), < 0 the issuer owes cardflow (a refund, a
# chargeback, interchange); a card's posting is signed the same way.
_STAGE_BATCH_SQL = """
WITH batch AS (
    SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::text[], $10::bigint[])
        AS b(record_id, record_type, transaction_id, card_id, currency, direction,
             amount_minor)
),
thresholds AS (
    SELECT * FROM unnest($11::text[], $12::bigint[]) AS t(currency, threshold_minor)
),
claimed AS (
    INSERT INTO settlement_claims (transaction_id, record_id)
    SELECT DISTINCT ON (transaction_id) transaction_id, record_id
    FROM batch
    WHERE record_type IN ('clearing', 'force_post', 'refund') AND transaction_id IS NOT NULL
    ORDER BY transaction_id, record_id
    ON CONFLICT (transaction_id) DO NOTHING
    RETURNING record_id
),
matched AS (
    SELECT b.*,
        CASE b.direction WHEN 'debit' THEN b.amount_minor
                         WHEN 'credit' THEN -b.amount_minor ELSE 0 END AS issuer_effect,
        ct.transaction_id AS known_id,
        ct.currency AS known_currency,
        CASE WHEN ct.kind = 'refund' THEN -ct.amount_minor ELSE ct.amount_minor END
            AS known_effect,
        (ct.kind = 'refund') <> (b.record_type = 'refund') AS other_kind,
        -- A record of a batch retried lost its claim to itself: it is
        -- stored already, so its row (first classification) is what counts.
        b.record_type IN ('clearing', 'force_post', 'refund') AND b.transaction_id IS NOT NULL
            AND b.record_id NOT IN (SELECT record_id FROM claimed) AS duplicate
    FROM batch b
    LEFT JOIN card_transactions ct ON ct.transaction_id = b.transaction_id
),
classified AS (
    SELECT m.*,
        CASE
            WHEN m.record_type = 'reversal' THEN 'reversal'
            WHEN m.record_type = 'chargeback' THEN 'chargeback'
            WHEN m.record_type = 'fee' THEN 'fee'
            WHEN m.record_type = 'interchange' THEN 'interchange'
            WHEN m.transaction_id IS NULL THEN 'unknown'
            WHEN m.duplicate THEN 'duplicate'
            WHEN m.known_id IS NULL THEN 'missing_in_ledger'
            WHEN m.known_currency <> m.currency OR m.other_kind THEN 'unknown'
            WHEN m.known_effect = m.issuer_effect THEN 'matched'
            ELSE 'amount_mismatch'
        END AS class
    FROM matched m
),
resolved AS (
    SELECT c.*,
        CASE WHEN c.class IN ('matched', 'missing_in_ledger', 'amount_mismatch', 'unknown')
             THEN coalesce(c.known_effect, 0) ELSE 0 END AS ledger_effect,
        CASE
            WHEN c.class = 'duplicate' THEN 'operator'
            WHEN c.class IN ('missing_in_ledger', 'amount_mismatch')
                 AND c.issuer_effect = coalesce(c.known_effect, 0) THEN 'none'
            WHEN c.class IN ('missing_in_ledger', 'amount_mismatch')
                 AND abs(c.issuer_effect - coalesce(c.known_effect, 0))
                     < coalesce(t.threshold_minor, 0) THEN 'auto_fix'
            WHEN c.class IN ('missing_in_ledger', 'amount_mismatch', 'unknown') THEN 'operator'
            ELSE 'none'
        END AS resolution
    FROM classified c
    LEFT JOIN thresholds t ON t.currency = c.currency
),
inserted AS (
    INSERT INTO settlement_records (record_id, file_id, member_index, settlement_date,
        record_type, class, transaction_id, card_id, currency, issuer_amount_minor,
        ledger_amount_minor, delta_minor, resolution, fix_key)
    SELECT record_id, $1, $2, $3, record_type, class, transaction_id, card_id, currency,
        issuer_effect, ledger_effect,
        CASE WHEN class IN ('missing_in_ledger', 'amount_mismatch', 'unknown', 'duplicate')
             THEN issuer_effect - ledger_effect ELSE 0 END,
        resolution,
        CASE WHEN resolution = 'auto_fix'
             THEN 'settlement/' || $13 || '/record/' || record_id || '/fix' END
    FROM resolved
    ON CONFLICT (record_id) DO NOTHING
    RETURNING record_id, class, transaction_id, currency, delta_minor, resolution, fix_key
),
left_to_operators AS (
    INSERT INTO settlement_operator_items (record_id, provider, settlement_date, class,
        transaction_id, currency, delta_minor)
    SELECT record_id, $13, $3, class, transaction_id, currency, delta_minor
    FROM inserted WHERE resolution = 'operator'
    ON CONFLICT (record_id) DO NOTHING
)
SELECT record_id, class, currency, delta_minor, resolution, fix_key FROM inserted
UNION ALL
SELECT record_id, class, currency, delta_minor, resolution, fix_key
FROM settlement_records
WHERE record_id = ANY($4::text[]) AND record_id NOT IN (SELECT record_id FROM inserted)
"""

# The batch's records as first classified, read on their own: when an
# attempt racing this one inserted some of them after this statement
# began, the statement above could not see them.
_BATCH_RESULTS_SQL = """
SELECT record_id, class, currency, delta_minor, resolution, fix_key
FROM settlement_records WHERE record_id = ANY($1::text[])
"""

_CHECKPOINT_SQL = """
INSERT INTO settlement_chunks (file_id, member_index, status, record_count, counts)
VALUES ($1, $2, 'done', $3, $4::jsonb)
ON CONFLICT (file_id, member_index) DO NOTHING
"""

# The day's interchange and issuer fees per currency, from its records as
# first classified: interchange signed for the program (> 0 earned).
_DAY_TOTALS_SQL = """
SELECT currency,
    coalesce(sum(-issuer_amount_minor) FILTER (WHERE class = 'interchange'), 0)::bigint
        AS interchange_minor,
    coalesce(sum(issuer_amount_minor) FILTER (WHERE class = 'fee'), 0)::bigint AS fees_minor
FROM settlement_records
WHERE settlement_date = $1 AND class IN ('interchange', 'fee')
GROUP BY currency
ORDER BY currency
"""


class SettlementIngestActivities:
    """The ingest's activities; record_file and ingest_chunk on the providers
    queue, post_day_totals on the ledger queue (see the module's docstring)."""

    def __init__(self, clients: ProviderClients | None, pool: asyncpg.Pool) -> None:
        self.clients = clients
        self.pool = pool
        self.ledger = Ledger(pool)
        # System accounts this process has opened (opening is idempotent;
        # this only saves the round trips).
        self._opened: set[str] = set()

    @provider_activity(RECORD_FILE)
    async def record_file(self, request: SettlementFileRequest) -> SettlementFileSummary:
        """The day's manifest, recorded once per file content (a retry or a
        second ingest of the same file finds the same row)."""
        assert self.clients is not None, "record_file runs where provider clients are"
        manifest = await self.clients.settlement_files.manifest(
            request.settlement_date, request.file_format
        )
        reference = manifest.model_dump(mode="json", exclude={"members"})
        members = [member.model_dump(mode="json") for member in manifest.members]
        file_id = await self.pool.fetchval(
            _RECORD_FILE_SQL,
            request.provider,
            request.settlement_date,
            manifest.sha256,
            manifest.record_count,
            len(manifest.members),
            manifest.byte_size,
            json.dumps(reference),
            json.dumps(members),
        )
        return SettlementFileSummary(
            file_id=file_id,
            sha256=manifest.sha256,
            record_count=manifest.record_count,
            member_count=len(manifest.members),
            byte_size=manifest.byte_size,
        )

    @provider_activity(INGEST_CHUNK)
    async def ingest_chunk(self, request: ChunkRequest) -> ChunkResult:
        """One gzip member: its records streamed in batches, each staged,
        matched, classified and its small differences fixed; then the
        member checkpointed. Heartbeats the records done; a retry resumes
        after them, and a checkpointed member is never read again."""
        assert self.clients is not None, "ingest_chunk runs where provider clients are"
        checkpoint = await self.pool.fetchval(
            "SELECT counts FROM settlement_chunks WHERE file_id = $1 AND member_index = $2",
            request.file_id,
            request.member_index,
        )
        if checkpoint is not None:
            return ChunkResult(
                member_index=request.member_index,
                counts=ChunkCounts.model_validate_json(checkpoint),
                already_done=True,
            )
        row = await self.pool.fetchrow(
            "SELECT settlement_date, file_ref, members -> $2::int AS member"
            " FROM settlement_files WHERE file_id = $1",
            request.file_id,
            request.member_index,
        )
        assert row is not None and row["member"] is not None, "the file is recorded first"
        manifest = SettlementFileManifest.model_validate(
            {**json.loads(row["file_ref"]), "members": []}
        )
        member = SettlementFileMember.model_validate_json(row["member"])
        details = activity.info().heartbeat_details
        progress = ChunkProgress.model_validate(details[0]) if details else ChunkProgress()
        resumed_from = progress.records_done
        fixes_posted = 0
        clock = StageClock()
        records = self.clients.settlement_files.member_records(
            manifest, member, skip_records=progress.records_done
        )
        batches = _batches(records, request.batch_records)
        while True:
            started = time.perf_counter()
            batch = await anext(batches, None)
            clock.read_seconds += time.perf_counter() - started
            if batch is None:
                break
            counts, posted = await self._ingest_batch(request, row["settlement_date"], batch, clock)
            fixes_posted += posted
            progress.records_done += len(batch)
            progress.counts.add(counts)
            activity.heartbeat(progress.model_dump(mode="json"))
        await self.pool.execute(
            _CHECKPOINT_SQL,
            request.file_id,
            request.member_index,
            progress.records_done,
            progress.counts.model_dump_json(),
        )
        # A checkpoint written by an attempt that raced this one stands.
        stored = await self.pool.fetchval(
            "SELECT counts FROM settlement_chunks WHERE file_id = $1 AND member_index = $2",
            request.file_id,
            request.member_index,
        )
        return ChunkResult(
            member_index=request.member_index,
            counts=ChunkCounts.model_validate_json(stored),
            resumed_from_record=resumed_from,
            fixes_posted=fixes_posted,
            read_ms=round(clock.read_seconds * 1000),
            match_ms=round(clock.match_seconds * 1000),
            post_ms=round(clock.post_seconds * 1000),
        )

    async def _ingest_batch(
        self,
        request: ChunkRequest,
        settlement_date: date,
        batch: list[SettlementFileRecord],
        clock: StageClock,
    ) -> tuple[ChunkCounts, int]:
        """Stage, classify and fix one batch; its counts and the fixes posted now."""
        started = time.perf_counter()
        thresholds = sorted(request.auto_fix_threshold_minor.items())
        record_ids = [record.record_id for record in batch]
        rows = await self.pool.fetch(
            _STAGE_BATCH_SQL,
            request.file_id,
            request.member_index,
            settlement_date,
            record_ids,
            [record.record_type.value for record in batch],
            [record.transaction_id for record in batch],
            [record.card_id for record in batch],
            [record.currency.value for record in batch],
            [record.direction.value for record in batch],
            [record.amount_minor for record in batch],
            [currency.value for currency, _ in thresholds],
            [threshold for _, threshold in thresholds],
            request.provider,
        )
        if len(rows) < len(set(record_ids)):
            rows = await self.pool.fetch(_BATCH_RESULTS_SQL, record_ids)
        counts = ChunkCounts(records=len(batch))
        fixes: list[TransferRequest] = []
        for row in rows:
            record_class = RecordClass(row["class"])
            count = counts.classes.setdefault(record_class, ClassCount())
            count.records += 1
            count.delta_minor += row["delta_minor"]
            if row["resolution"] == "operator":
                counts.operator_items += 1
            elif row["resolution"] == "auto_fix":
                counts.auto_fixed += 1
                fixes.append(_fix(row["fix_key"], Currency(row["currency"]), row["delta_minor"]))
        # A record id twice in a batch is one record (one row, one fix).
        assert len(rows) <= len(batch)
        counts.records = len(rows)
        clock.match_seconds += time.perf_counter() - started
        if not fixes:
            return counts, 0
        started = time.perf_counter()
        await self._open_accounts(
            code
            for fix in fixes
            for code in (
                accounts.issuer_settlement(fix.currency),
                accounts.suspense_reconciliation(fix.currency),
            )
        )
        outcomes = await self.ledger.submit(fixes, atomic=True)
        # Both accounts are unconstrained system accounts: nothing refuses a fix.
        assert all(outcome.accepted for outcome in outcomes), outcomes
        clock.post_seconds += time.perf_counter() - started
        return counts, sum(1 for outcome in outcomes if not outcome.replayed)

    async def _open_accounts(self, codes: Iterable[str]) -> None:
        for code in sorted(set(codes) - self._opened):
            await self.ledger.open_account(accounts.system_account(code))
            self._opened.add(code)

    @ledger_activity(POST_DAY_TOTALS)
    async def post_day_totals(self, request: DayTotalsRequest) -> list[DayPosting]:
        """The day's interchange (issuer:settlement -> revenue:interchange)
        and issuer fees (expense:issuer-fees -> issuer:settlement), one
        atomic batch per currency under keys naming the provider, the day
        and the currency: posted once per day, however often asked."""
        rows = await self.pool.fetch(_DAY_TOTALS_SQL, request.settlement_date)
        postings: list[DayPosting] = []
        for row in rows:
            currency = Currency(row["currency"])
            interchange, fees = row["interchange_minor"], row["fees_minor"]
            settlement = accounts.issuer_settlement(currency)
            transfers: list[TransferRequest] = []
            if interchange:
                revenue = accounts.revenue_interchange(currency)
                debit, credit = (settlement, revenue) if interchange > 0 else (revenue, settlement)
                transfers.append(
                    TransferRequest(
                        key=day_key(
                            request.provider, request.settlement_date, currency, "interchange"
                        ),
                        debit=debit,
                        credit=credit,
                        amount_minor=abs(interchange),
                        currency=currency,
                    )
                )
            if fees:
                transfers.append(
                    TransferRequest(
                        key=day_key(request.provider, request.settlement_date, currency, "fees"),
                        debit=accounts.expense_issuer_fees(currency),
                        credit=settlement,
                        amount_minor=fees,
                        currency=currency,
                    )
                )
            if not transfers:
                continue
            await self._open_accounts(
                code for transfer in transfers for code in (transfer.debit, transfer.credit)
            )
            try:
                outcomes = await self.ledger.submit(transfers, atomic=True)
            except IdempotencyConflict:
                postings.append(
                    DayPosting(
                        currency=currency,
                        interchange_minor=interchange,
                        fees_minor=fees,
                        replayed=False,
                        conflict=True,
                    )
                )
                continue
            except LedgerError as error:
                raise _non_retryable(error) from error
            assert all(outcome.accepted for outcome in outcomes), outcomes
            postings.append(
                DayPosting(
                    currency=currency,
                    interchange_minor=interchange,
                    fees_minor=fees,
                    replayed=all(outcome.replayed for outcome in outcomes),
                )
            )
        return postings

    def providers(self) -> list[object]:
        return [self.record_file, self.ingest_chunk]

    def ledger_side(self) -> list[object]:
        return [self.post_day_totals]


@dataclass
class StageClock:
    """Where one chunk's time went: reading (download and decode), matching
    (stage, classify, read back) and posting the fixes, in seconds."""

    read_seconds: float = 0.0
    match_seconds: float = 0.0
    post_seconds: float = 0.0


def _fix(key: str, currency: Currency, delta_minor: int) -> TransferRequest:
    """Bring issuer:settlement in line with the issuer through suspense, as
    reconciliation's fixes do: delta > 0 (the issuer settled more than
    cardflow holds) credits issuer:settlement from suspense."""
    settlement = accounts.issuer_settlement(currency)
    suspense = accounts.suspense_reconciliation(currency)
    debit, credit = (suspense, settlement) if delta_minor > 0 else (settlement, suspense)
    return TransferRequest(
        key=key, debit=debit, credit=credit, amount_minor=abs(delta_minor), currency=currency
    )


def _non_retryable(error: LedgerError) -> ApplicationError:
    return ApplicationError(str(error), type=type(error).__name__, non_retryable=True)


async def _batches(
    records: AsyncIterator[SettlementFileRecord], size: int
) -> AsyncIterator[list[SettlementFileRecord]]:
    """`records` in lists of `size` (the last shorter): one list held at a time."""
    batch: list[SettlementFileRecord] = []
    async for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
