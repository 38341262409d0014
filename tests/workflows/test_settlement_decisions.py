"""Operators' decisions on the settlement ingest's items over the auto-fix
threshold, through the API: an adjusted item's fix posted once however
often it is decided, a dismissed one posting nothing, one left undecided
flagged when the wait ends; the refusals and the 422s that name the field;
a decision retried at the activity posting once; the daily schedule; the
drift gauges the dashboards and the alert read."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from temporalio import workflow
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    WorkflowFailureError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.ledger.verify import verify
from activities.metrics import SETTLEMENT_NAMES
from activities.settlement_decisions import RECORD_DRIFT, SettlementDecisionActivities
from activities.settlement_ingest import fix_key
from schemas.reconciliation import DecisionAction
from schemas.settlement_ingest import (
    ChunkCounts,
    ClassCount,
    DecisionRecord,
    DriftRate,
    DriftReport,
    OperatorItemsRequest,
    RecordClass,
    ScheduledSettlementInput,
    SettlementDecision,
    SettlementIngestInput,
    SettlementIngestResult,
)
from starters import schedules
from starters import settlement as starter
from tests import polling
from tests.conftest import Platform, StackFactory
from tests.metrics import prometheus_runtime, scrape
from tests.workflows.test_settlement_ingest import POLICY, seed_platform, the_file
from workers.monitoring import MADE_AT_FIRST_EVENT
from workflows.reconciliation import STAGE_AWAITING_DECISIONS
from workflows.scheduled_settlement import SCHEDULED_SETTLEMENT_WORKFLOW
from workflows.settlement import settlement_workflow_id

# Three items held: two decided through the API, the third left to the wait.
ITEMS_HELD = 3
DECISION_WAIT_SECONDS = 20


def a_day() -> date:
    """A day of this test's own: the Temporal server is shared by the suite,
    and the API reaches the day's ingest by its id, settlement/issuer/{day}."""
    return date(2001, 1, 1) + timedelta(days=secrets.randbelow(3_000))


async def net_on_settlement(platform: Platform, key: str) -> int:
    """What the transfer keyed `key` credits issuer:settlement, net (0: none)."""
    value = await platform.stack.pool.fetchval(
        """
        SELECT coalesce(sum(CASE WHEN c.code LIKE 'issuer:settlement:%' THEN t.amount_minor
                                 ELSE -t.amount_minor END), 0)::bigint
        FROM ledger_transfers t JOIN ledger_accounts c ON c.id = t.credit_account_id
        WHERE t.idempotency_key = $1
        """,
        key,
    )
    return int(value)


async def test_an_adjusted_item_posts_once_a_dismissed_one_nothing_and_the_rest_is_flagged(
    platform: Platform,
) -> None:
    the_file(platform.sim)
    day = a_day()
    expected = await seed_platform(platform.sim, platform.stack.pool, day)
    queues = platform.stack.queues
    request = SettlementIngestInput(
        settlement_date=day,
        policy=POLICY.model_copy(
            update={
                "decision_wait_seconds": DECISION_WAIT_SECONDS,
                "decision_items_max": ITEMS_HELD,
            }
        ),
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )
    handle = await starter.start(platform.stack.client, queues, request)
    assert handle.id == settlement_workflow_id("issuer", day)
    url = f"{platform.gateway_url}/v1/settlements/issuer/{day.isoformat()}"
    async with httpx.AsyncClient(timeout=30, headers=platform.api_headers) as http:

        async def awaiting() -> bool:
            answer = await http.get(url)
            return answer.status_code == 200 and answer.json()["stage"] == STAGE_AWAITING_DECISIONS

        await polling.eventually(awaiting, "the ingest waits for decisions")
        status = (await http.get(url)).json()
        assert len(status["items"]) == ITEMS_HELD
        adjusted, dismissed, left = (item["record_id"] for item in status["items"])
        delta = {item["record_id"]: item["delta_minor"] for item in status["items"]}

        def decision(item: str, action: str) -> dict[str, str]:
            return {"item_id": item, "action": action, "operator": "ana", "reason": "checked"}

        key = {"Idempotency-Key": f"adjust-{uuid.uuid4().hex[:8]}"}
        first = await http.post(f"{url}/decisions", json=decision(adjusted, "adjust"), headers=key)
        assert first.status_code == 200, first.text
        assert first.json()["state"] == "adjusted"
        assert first.json()["transfer_key"] == fix_key("issuer", adjusted)
        # The same request again (a client's retry): the first answer, nothing more.
        again = await http.post(f"{url}/decisions", json=decision(adjusted, "adjust"), headers=key)
        assert (again.status_code, again.json()) == (200, first.json())
        # Decided again under another key, either way: refused, the item as it was.
        for action in ("adjust", "dismiss"):
            twice = await http.post(f"{url}/decisions", json=decision(adjusted, action))
            assert twice.status_code == 409, twice.text
            assert "not awaiting a decision" in twice.json()["detail"]
        gone = await http.post(f"{url}/decisions", json=decision("rec_not_in_the_file", "adjust"))
        assert gone.status_code == 404, gone.text
        assert "item_id" in gone.json()["detail"]

        dropped = await http.post(f"{url}/decisions", json=decision(dismissed, "dismiss"))
        assert dropped.status_code == 200, dropped.text
        assert dropped.json()["state"] == "dismissed"
        assert dropped.json()["transfer_key"] is None

        # Malformed decisions never reach the process; each names its field.
        for body, fields in (
            ({"item_id": left}, [["body", "action"], ["body", "operator"], ["body", "reason"]]),
            ({**decision(left, "approve")}, [["body", "action"]]),
            ({**decision(left, "adjust"), "reason": "x" * 501}, [["body", "reason"]]),
            ({**decision(left, "adjust"), "operator": "ana\x1b[2J"}, [["body", "operator"]]),
            ({**decision(left, "adjust"), "item_id": ""}, [["body", "item_id"]]),
            ({**decision(left, "adjust"), "extra": 1}, [["body", "extra"]]),
        ):
            malformed = await http.post(f"{url}/decisions", json=body)
            assert malformed.status_code == 422, malformed.text
            assert [error["loc"] for error in malformed.json()["detail"]] == fields, body

        result = await handle.result()
        # The wait ended with the third item undecided: flagged, nothing posted for it.
        assert (result.adjusted, result.dismissed, result.undecided) == (1, 1, [left])
        assert result.items_not_held == expected.operator_items - ITEMS_HELD
        closed = await http.post(f"{url}/decisions", json=decision(left, "adjust"))
        assert closed.status_code == 404, closed.text

    assert await net_on_settlement(platform, fix_key("issuer", adjusted)) == delta[adjusted]
    assert await net_on_settlement(platform, fix_key("issuer", dismissed)) == 0
    assert await net_on_settlement(platform, fix_key("issuer", left)) == 0
    posted = await platform.stack.pool.fetchval(
        "SELECT count(*) FROM ledger_transfers WHERE idempotency_key = ANY($1::text[])",
        [fix_key("issuer", item) for item in (adjusted, dismissed, left)],
    )
    assert posted == 1
    rows = await platform.stack.pool.fetch(
        "SELECT record_id, state, decided_by, reason FROM settlement_operator_items"
        " WHERE record_id = ANY($1::text[]) ORDER BY record_id",
        [adjusted, dismissed, left],
    )
    assert {row["record_id"]: tuple(row)[1:] for row in rows} == {
        adjusted: ("adjusted", "ana", "checked"),
        dismissed: ("dismissed", "ana", "checked"),
        left: ("awaiting_decision", None, None),
    }
    assert await verify(platform.stack.pool) == []


async def test_a_decision_retried_or_contradicted_after_it_was_recorded_posts_its_fix_once(
    make_stack: StackFactory,
) -> None:
    """The activity run again (a worker killed after it recorded the
    decision, or a later run of the day asked again) posts the recorded
    fix once, and a contrary decision changes nothing."""
    async with make_stack(["ledger"]) as stack:
        # The ingest's tables as a chunk leaves them: one item over the threshold.
        file_id = await stack.pool.fetchval(
            "INSERT INTO settlement_files (provider, settlement_date, sha256, record_count,"
            " member_count, byte_size, file_ref, members)"
            " VALUES ('issuer', $1, $2, 1, 1, 1, '{}', '[]') RETURNING file_id",
            date(2025, 3, 20),
            "0" * 64,
        )
        await stack.pool.execute(
            "INSERT INTO settlement_records (record_id, file_id, member_index, settlement_date,"
            " record_type, class, transaction_id, currency, issuer_amount_minor,"
            " ledger_amount_minor, delta_minor, resolution)"
            " VALUES ('rec_big', $1, 0, $2, 'clearing', 'missing_in_ledger', 'txn_big', 'USD',"
            " 9000, 0, 9000, 'operator')",
            file_id,
            date(2025, 3, 20),
        )
        await stack.pool.execute(
            "INSERT INTO settlement_operator_items (record_id, provider, settlement_date, class,"
            " transaction_id, currency, delta_minor)"
            " VALUES ('rec_big', 'issuer', $1, 'missing_in_ledger', 'txn_big', 'USD', 9000)",
            date(2025, 3, 20),
        )
        activities = SettlementDecisionActivities(stack.pool)

        def record(action: DecisionAction, operator: str) -> DecisionRecord:
            return DecisionRecord(
                provider="issuer",
                settlement_date=date(2025, 3, 20),
                decision=SettlementDecision(
                    item_id="rec_big", action=action, operator=operator, reason="r"
                ),
            )

        first = await ActivityEnvironment().run(
            activities.decide_item, record(DecisionAction.ADJUST, "ana")
        )
        retried = await ActivityEnvironment().run(
            activities.decide_item, record(DecisionAction.ADJUST, "ana")
        )
        contrary = await ActivityEnvironment().run(
            activities.decide_item, record(DecisionAction.DISMISS, "bo")
        )
        assert first == retried == contrary
        assert (first.state, first.decided_by) == ("adjusted", "ana")
        rows = await stack.pool.fetch(
            "SELECT amount_minor FROM ledger_transfers WHERE idempotency_key = $1",
            fix_key("issuer", "rec_big"),
        )
        assert [row["amount_minor"] for row in rows] == [9000]
        listed = await ActivityEnvironment().run(
            activities.operator_items,
            # Nothing awaits a decision any more.
            OperatorItemsRequest(
                provider="issuer", settlement_date=date(2025, 3, 20), items_max=10
            ),
        )
        assert (listed.items, listed.awaiting_total) == ([], 0)
        assert await verify(stack.pool) == []


# ----- the schedule --------------------------------------------------------------------


async def test_the_daily_schedule_is_registered_once_and_ingests_yesterday(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = [s for s in schedules.SCHEDULES if s.schedule_id == starter.SETTLEMENT_SCHEDULE_ID]
    assert [s.build for s in specs] == [starter.settlement_schedule]
    assert starter.SETTLEMENT_SCHEDULE_ID == "settlement-issuer-daily"
    # Under an id of this test's own: the Temporal server is shared by the suite.
    schedule_id = f"{starter.SETTLEMENT_SCHEDULE_ID}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(
        schedules,
        "SCHEDULES",
        [schedules.ScheduleSpec(schedule_id, starter.settlement_schedule, "test")],
    )
    client = platform.stack.client
    outcomes = [await schedules.ensure_schedules(client, platform.settings) for _ in range(2)]
    assert outcomes == [{schedule_id: "created"}, {schedule_id: "exists"}]
    schedule = client.get_schedule_handle(schedule_id)
    try:
        described = await schedule.describe()
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.task_queue) == (
            SCHEDULED_SETTLEMENT_WORKFLOW,
            platform.stack.queues.workflows,
        )
        assert described.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
        [calendar] = described.schedule.spec.calendars
        assert [r.start for r in calendar.hour] == [starter.SETTLEMENT_RUN_HOUR_UTC]
        await schedule.trigger()
        yesterday = datetime.now(UTC).date() - timedelta(days=1)
        child = client.get_workflow_handle(
            settlement_workflow_id("issuer", yesterday), result_type=SettlementIngestResult
        )

        async def ingested() -> bool:
            try:
                return (await child.describe()).close_time is not None
            except RPCError as error:
                if error.status is not RPCStatusCode.NOT_FOUND:
                    raise
                return False  # not started yet

        await polling.eventually(ingested, "the schedule ingests yesterday's file")
        result = await child.result()
        assert result.counts.records == result.file.record_count
    finally:
        await schedule.delete()

    # A backfill asked for today is refused before it starts the day's ingest.
    queues = platform.stack.queues
    today = datetime.now(UTC).date()
    with pytest.raises(WorkflowFailureError) as failed:
        await client.execute_workflow(
            SCHEDULED_SETTLEMENT_WORKFLOW,
            ScheduledSettlementInput(
                settlement_date=today,
                ledger_task_queue=queues.ledger,
                providers_task_queue=queues.providers,
                workflows_task_queue=queues.workflows,
            ),
            id=f"{schedule_id}-today",
            task_queue=queues.workflows,
        )
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("PeriodNotEnded", True)
    with pytest.raises(RPCError) as never_started:
        await client.get_workflow_handle(settlement_workflow_id("issuer", today)).describe()
    assert never_started.value.status is RPCStatusCode.NOT_FOUND


# ----- the gauges ----------------------------------------------------------------------


@workflow.defn(name="RecordsSettlementDrift", sandboxed=False)
class RecordsSettlementDrift:
    @workflow.run
    async def run(self, report: DriftReport) -> None:
        await workflow.execute_activity(
            RECORD_DRIFT, report, start_to_close_timeout=timedelta(seconds=10)
        )


async def test_an_ingest_sets_the_drift_gauges_the_dashboards_and_the_alert_read(
    platform: Platform,
) -> None:
    assert set(SETTLEMENT_NAMES) <= MADE_AT_FIRST_EVENT
    runtime, port = prometheus_runtime()
    config = platform.stack.client.config()
    client = await Client.connect(
        platform.stack.client.service_client.config.target_host,
        namespace=platform.stack.client.namespace,
        runtime=runtime,
        data_converter=config["data_converter"],
    )
    queue = f"settlement-gauges-{uuid.uuid4().hex[:8]}"
    counts = ChunkCounts(
        records=1_000,
        classes={
            RecordClass.MATCHED: ClassCount(records=970),
            RecordClass.MISSING_IN_LEDGER: ClassCount(records=20, delta_minor=5_000),
            RecordClass.AMOUNT_MISMATCH: ClassCount(records=10, delta_minor=-300),
        },
    )
    report = DriftReport(
        provider="issuer",
        settlement_date=date(2025, 3, 20),
        counts=counts,
        drift_rate_bps=300,
        drift_by_class=[
            DriftRate(record_class=RecordClass.AMOUNT_MISMATCH, records=10, rate_bps=100),
            DriftRate(record_class=RecordClass.MISSING_IN_LEDGER, records=20, rate_bps=200),
            DriftRate(record_class=RecordClass.UNKNOWN, records=0, rate_bps=0),
        ],
        drift_alert_bps=100,
    )
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RecordsSettlementDrift],
        activities=[SettlementDecisionActivities(platform.stack.pool).record_drift],
    ):
        await client.execute_workflow(
            RecordsSettlementDrift.run, report, id=f"gauges/{queue}", task_queue=queue
        )
    samples = [s for s in await scrape(port) if s.name in SETTLEMENT_NAMES]
    by_series = {
        (s.name, s.labels.get("class", "")): s.value
        for s in samples
        if s.labels.get("provider") == "issuer"
    }
    assert {s.name for s in samples} == set(SETTLEMENT_NAMES)
    assert by_series[("cardflow_settlement_records", "matched")] == 970
    assert by_series[("cardflow_settlement_records", "unknown")] == 0
    assert by_series[("cardflow_settlement_drift_rate_bps", "missing_in_ledger")] == 200
    assert by_series[("cardflow_settlement_drift_rate_bps", "all")] == 300
    assert by_series[("cardflow_settlement_drift_alert_bps", "")] == 100
    assert by_series[("cardflow_settlement_last_ingest_timestamp_seconds", "")] > 0
