"""Settlement ingest end to end on the real stack: the issuer simulator's
file of a few thousand records in a few members, cardflow's own card
postings seeded from what the simulator says cardflow saw, every record
classified exactly, fixes and the day's totals posted once however often
the file is ingested, a chunk killed half way resumed without posting
twice, and operators alerted when drift passes the threshold."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from datetime import date, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.ledger.verify import verify
from activities.providers.activities import ProviderClients
from activities.providers.notify import NotifyClient
from activities.settlement_ingest import SettlementIngestActivities
from schemas.money import Currency
from schemas.settlement import SettlementFileFormat
from schemas.settlement_ingest import (
    SETTLEMENT_INGEST_WORKFLOW,
    ChunkProgress,
    ChunkRequest,
    RecordClass,
    SettlementFileRequest,
    SettlementIngestInput,
    SettlementIngestPolicy,
    SettlementIngestResult,
)
from tests.conftest import RunningStack, StackFactory
from workflows.settlement import settlement_workflow_id

DAY = date(2025, 3, 20)
VOLUME = 3_000
MEMBER_RECORDS = 1_000
THRESHOLD_MINOR = 2_000
POLICY = SettlementIngestPolicy(
    auto_fix_threshold_minor={currency: THRESHOLD_MINOR for currency in Currency},
    batch_records=250,
    chunks_in_flight=2,
    chunk_heartbeat_seconds=5,
    drift_alert_bps=100,
    # Nobody decides here: the items over the threshold are flagged at once.
    decision_wait_seconds=1,
)
CARD_POSTINGS = ("clearing", "force_post", "refund")
SIGN = {"debit": 1, "credit": -1, "none": 0}


@dataclasses.dataclass
class Expected:
    classes: Counter[str]
    auto_fixed: int
    operator_items: int
    # Per currency: the fixes' net credit to issuer:settlement.
    fixed_minor: dict[str, int]
    interchange_minor: dict[str, int]
    fees_minor: dict[str, int]


def the_file(sim: Any) -> None:
    sim.admin(
        "PUT",
        "/options/issuer",
        {
            "settlement_file_volume": VOLUME,
            "settlement_file_seed": 11,
            "settlement_file_member_records": MEMBER_RECORDS,
            "settlement_file_never_seen_bps": 100,
            "settlement_file_other_amount_bps": 50,
            "settlement_file_duplicated_bps": 100,
        },
    )


async def seed_platform(sim: Any, pool: asyncpg.Pool, day: date = DAY) -> Expected:
    """cardflow's card postings as the simulator says cardflow saw them, and
    what the ingest must find, computed from the same view."""
    url = (
        f"{sim.provider_url('issuer')}/v1/simulate/settlement-files/{day.isoformat()}/platform-view"
    )
    rows: list[tuple[Any, ...]] = []
    expected = Expected(Counter(), 0, 0, Counter(), Counter(), Counter())
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(url)
        response.raise_for_status()
    for line in response.text.splitlines():
        seen = httpx.Response(200, content=line).json()
        record, view = seen["record"], seen["view"]
        kind, currency = record["record_type"], record["currency"]
        effect = SIGN[record["direction"]] * record["amount_minor"]
        if kind not in CARD_POSTINGS:
            expected.classes[kind] += 1
            if kind == "interchange":
                expected.interchange_minor[currency] += -effect
            elif kind == "fee":
                expected.fees_minor[currency] += effect
            continue
        if view == "duplicate":
            # Settled again: charged twice, all of it left to operators.
            expected.classes["duplicate"] += 1
            expected.operator_items += 1
            continue
        if view == "never_seen":
            expected.classes["missing_in_ledger"] += 1
            delta = effect
        else:
            platform_minor = seen["platform_amount_minor"]
            rows.append(
                (
                    record["transaction_id"],
                    record["card_id"],
                    "c-settlement",
                    kind,
                    platform_minor,
                    currency,
                    datetime.fromisoformat(record["occurred_at"]),
                )
            )
            delta = effect - SIGN[record["direction"]] * platform_minor
            expected.classes["matched" if delta == 0 else "amount_mismatch"] += 1
        if delta == 0:
            continue
        if abs(delta) < THRESHOLD_MINOR:
            expected.auto_fixed += 1
            expected.fixed_minor[currency] += delta
        else:
            expected.operator_items += 1
    await pool.executemany(
        "INSERT INTO card_transactions (transaction_id, card_id, customer_id, kind,"
        " amount_minor, currency, occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        rows,
    )
    assert expected.classes["missing_in_ledger"] and expected.classes["amount_mismatch"]
    assert expected.classes["duplicate"]
    assert expected.auto_fixed and expected.operator_items
    return expected


def request(stack: RunningStack, policy: SettlementIngestPolicy = POLICY) -> SettlementIngestInput:
    return SettlementIngestInput(
        settlement_date=DAY,
        policy=policy,
        ledger_task_queue=stack.queues.ledger,
        providers_task_queue=stack.queues.providers,
        workflows_task_queue=stack.queues.workflows,
    )


async def ingest(
    stack: RunningStack, policy: SettlementIngestPolicy = POLICY
) -> SettlementIngestResult:
    # Every test shares one Temporal server: each run its own id under the day's.
    workflow_id = f"{settlement_workflow_id('issuer', DAY)}/t-{uuid.uuid4().hex[:8]}"
    result: SettlementIngestResult = await stack.client.execute_workflow(
        SETTLEMENT_INGEST_WORKFLOW,
        request(stack, policy),
        id=workflow_id,
        task_queue=stack.queues.workflows,
        result_type=SettlementIngestResult,
    )
    return result


async def ledger_figures(pool: asyncpg.Pool) -> dict[str, Any]:
    """Every transfer's key and amount, and each account's balance."""
    transfers = await pool.fetch(
        "SELECT idempotency_key, amount_minor FROM ledger_transfers ORDER BY idempotency_key"
    )
    return {"transfers": [tuple(row) for row in transfers]}


async def settlement_net(pool: asyncpg.Pool, key_like: str) -> dict[str, int]:
    """Per currency, what transfers keyed like `key_like` credit issuer:settlement, net."""
    rows = await pool.fetch(
        """
        SELECT t.currency, sum(CASE WHEN c.code LIKE 'issuer:settlement:%'
                                    THEN t.amount_minor ELSE -t.amount_minor END)::bigint AS net
        FROM ledger_transfers t
        JOIN ledger_accounts c ON c.id = t.credit_account_id
        WHERE t.idempotency_key LIKE $1
        GROUP BY t.currency
        """,
        key_like,
    )
    return {row["currency"]: row["net"] for row in rows}


async def test_a_file_is_classified_exactly_fixed_once_and_ingested_twice_changes_nothing(
    sim: Any, make_stack: StackFactory
) -> None:
    the_file(sim)
    async with make_stack(providers_url=sim.url) as stack:
        expected = await seed_platform(sim, stack.pool)
        # A worker dies after taking two chunks' results: the task runs again
        # from history and nothing is posted twice.
        stack.faults.fail_after_activity("settlement.ingest_chunk", times=2)
        first = await ingest(stack)
        assert len(stack.faults.injected) == 2

        found = {kind.value: count.records for kind, count in first.counts.classes.items()}
        assert found == dict(expected.classes)
        assert first.counts.records == first.file.record_count
        assert first.chunks == first.file.member_count == 4
        assert first.counts.auto_fixed == expected.auto_fixed
        assert first.counts.operator_items == expected.operator_items
        fixed = await settlement_net(stack.pool, "settlement/issuer/record/%/fix")
        assert fixed == {currency: net for currency, net in expected.fixed_minor.items() if net}
        fixes = await stack.pool.fetchval(
            "SELECT count(*) FROM ledger_transfers WHERE idempotency_key LIKE 'settlement/%/fix'"
        )
        assert fixes == expected.auto_fixed
        items = await stack.pool.fetchval("SELECT count(*) FROM settlement_operator_items")
        assert items == expected.operator_items
        # Nobody decided within the wait: every item flagged, none posted, all still open.
        assert len(first.undecided) == expected.operator_items
        assert (first.adjusted, first.dismissed, first.items_not_held) == (0, 0, 0)
        awaiting = await stack.pool.fetchval(
            "SELECT count(*) FROM settlement_operator_items WHERE state = 'awaiting_decision'"
        )
        assert awaiting == expected.operator_items

        # The day's interchange and fees, once per currency.
        postings = {posting.currency.value: posting for posting in first.day_postings}
        assert {c: p.interchange_minor for c, p in postings.items()} == dict(
            expected.interchange_minor
        )
        assert {c: p.fees_minor for c, p in postings.items()} == dict(expected.fees_minor)
        assert not any(posting.replayed or posting.conflict for posting in first.day_postings)
        revenue = await stack.pool.fetch(
            "SELECT c.code, sum(t.amount_minor)::bigint AS credited FROM ledger_transfers t"
            " JOIN ledger_accounts c ON c.id = t.credit_account_id"
            " WHERE c.code LIKE 'revenue:interchange:%' GROUP BY c.code"
        )
        assert {row["code"][-3:]: row["credited"] for row in revenue} == {
            c: v for c, v in expected.interchange_minor.items() if v > 0
        }

        # Drift: 1.5 % of the card postings, past the 1 % threshold: one e-mail.
        drift = sum(
            expected.classes[kind] for kind in ("missing_in_ledger", "amount_mismatch", "duplicate")
        )
        assert first.drift_records == drift
        card_postings = drift + expected.classes["matched"]
        assert first.drift_rate_bps == drift * 10_000 // card_postings
        assert first.alerted
        by_class = {rate.record_class: rate.records for rate in first.drift_by_class}
        assert by_class[RecordClass.MISSING_IN_LEDGER] == expected.classes["missing_in_ledger"]
        assert by_class[RecordClass.DUPLICATE] == expected.classes["duplicate"]
        # A transaction settled twice: one record matched, the other left to
        # operators whole (cardflow posted it once), never fixed on its own.
        settled_twice = await stack.pool.fetch(
            "SELECT r.transaction_id, r.class, r.issuer_amount_minor, r.delta_minor,"
            " r.resolution, o.delta_minor AS item_delta FROM settlement_records r"
            " LEFT JOIN settlement_operator_items o USING (record_id)"
            " WHERE r.record_type IN ('clearing', 'force_post', 'refund')"
            " AND r.transaction_id IN (SELECT transaction_id FROM settlement_records"
            " WHERE class = 'duplicate')"
        )
        twice = [row for row in settled_twice if row["class"] == "duplicate"]
        assert len(twice) == expected.classes["duplicate"]
        assert all(
            row["delta_minor"] == row["item_delta"] == row["issuer_amount_minor"] != 0
            and row["resolution"] == "operator"
            for row in twice
        )
        assert Counter(row["transaction_id"] for row in settled_twice) == Counter(
            {row["transaction_id"]: 2 for row in twice}
        )
        async with NotifyClient(sim.provider_url("notify")) as notify:
            page = await notify.list_messages(to="operations@cardflow.example")
        # One alert of the drift, and one e-mail naming the items over the threshold.
        mails = {message.subject or "": message.body or "" for message in page.data}
        [alert] = [body for subject, body in mails.items() if "drift" in subject]
        assert "missing_in_ledger" in alert
        [asked] = [subject for subject in mails if "need a decision" in subject]
        assert f"{expected.operator_items} settlement records" in asked
        assert "cardflow settlement decide" in mails[asked]
        assert len(page.data) == 2

        # The same file again, with a higher alert threshold and continuing
        # as new every three chunks: the same figures (carried across runs),
        # nothing posted, the day's totals replayed, no alert.
        before = await ledger_figures(stack.pool)
        again = await ingest(
            stack, POLICY.model_copy(update={"drift_alert_bps": 10_000, "chunks_per_run": 3})
        )
        assert await ledger_figures(stack.pool) == before
        assert again.counts == first.counts
        assert again.file == first.file
        assert all(posting.replayed for posting in again.day_postings)
        assert not again.alerted
        assert await verify(stack.pool) == []


async def test_a_chunk_killed_half_way_resumes_after_its_heartbeat_and_posts_each_fix_once(
    sim: Any, make_stack: StackFactory
) -> None:
    the_file(sim)
    async with make_stack(["ledger"], providers_url=sim.url) as stack:
        expected = await seed_platform(sim, stack.pool)
        clients = ProviderClients(sim.url)
        try:
            activities = SettlementIngestActivities(clients, stack.pool)
            file = await ActivityEnvironment().run(
                activities.record_file,
                SettlementFileRequest(
                    provider="issuer", settlement_date=DAY, file_format=SettlementFileFormat.JSONL
                ),
            )
            chunk = ChunkRequest(
                provider="issuer",
                file_id=file.file_id,
                member_index=1,
                batch_records=100,
                auto_fix_threshold_minor=POLICY.auto_fix_threshold_minor,
            )
            # The worker dies after its fourth heartbeat (400 records done).
            beats: list[Any] = []
            dying = ActivityEnvironment()

            def heartbeat(*details: Any) -> None:
                beats.append(details[0])
                if len(beats) == 4:
                    raise RuntimeError("the worker was killed")

            dying.on_heartbeat = heartbeat
            with pytest.raises(RuntimeError, match="killed"):
                await dying.run(activities.ingest_chunk, chunk)
            checkpoints = await stack.pool.fetchval("SELECT count(*) FROM settlement_chunks")
            assert checkpoints == 0
            half = ChunkProgress.model_validate(beats[-1])
            assert half.records_done == 400

            # The retry resumes after the last heartbeat and checkpoints.
            resumed = ActivityEnvironment()
            resumed.info = dataclasses.replace(resumed.info, heartbeat_details=[beats[-1]])
            result = await resumed.run(activities.ingest_chunk, chunk)
            assert result.resumed_from_record == 400
            assert result.counts.records == MEMBER_RECORDS

            # A retry with no heartbeat re-reads the member: checkpointed, nothing redone.
            again = await ActivityEnvironment().run(activities.ingest_chunk, chunk)
            assert again.already_done and again.counts == result.counts

            # Each of the member's fixes is in the ledger once.
            member_fixes = await stack.pool.fetchval(
                "SELECT count(*) FROM settlement_records WHERE member_index = 1"
                " AND resolution = 'auto_fix'"
            )
            posted = await stack.pool.fetchval(
                "SELECT count(*) FROM ledger_transfers t JOIN settlement_records r"
                " ON r.fix_key = t.idempotency_key WHERE r.member_index = 1"
            )
            assert posted == member_fixes == result.counts.auto_fixed
            assert sum(expected.classes.values()) > MEMBER_RECORDS
            assert await verify(stack.pool) == []
        finally:
            await clients.aclose()
