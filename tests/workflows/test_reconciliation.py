"""Reconciliation end to end: card activity through the issuer simulator and
the gateway, differences injected as they arise in life (a webhook held
back, a posting the issuer never settled, a posting made twice), the paged
download surviving a worker killed mid-way, and the daily schedule."""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import secrets
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import (
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from activities.ledger import Ledger
from activities.ledger.verify import verify
from activities.providers.activities import ProviderClients
from activities.providers.notify import NotifyClient
from activities.reconciliation import ReconciliationLedgerActivities
from schemas import accounts
from schemas.cards import CardInput, ExceptionDecision
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.reconciliation import (
    Decision,
    DecisionAction,
    DownloadProgress,
    MatchRequest,
    ReconciliationInput,
    ReconciliationPolicy,
    ReconciliationResult,
    ReconciliationStatus,
    ScheduledReconciliationInput,
)
from schemas.task_queues import TaskQueues
from schemas.units import DAY_SECONDS
from starters.cli import app
from starters.reconcile import DAILY_SCHEDULE_ID, demo_reconciliation
from starters.schedules import ensure_schedules
from tests import polling
from tests.conftest import Platform
from tests.customers import (
    SHOP,
    authorize,
    issuer,
    open_card,
    wallet_becomes,
)
from tests.workflows.test_cards import refusal
from workers.build import build_worker
from workflows.cards import RESOLVE_EXCEPTION_UPDATE
from workflows.reconciliation import (
    DECIDE_UPDATE,
    RECONCILIATION_WORKFLOW,
    Reconciliation,
    reconciliation_workflow_id,
)
from workflows.scheduled_reconciliation import SCHEDULED_RECONCILIATION_WORKFLOW

THRESHOLD_MINOR = 500
POLICY = ReconciliationPolicy(
    auto_fix_threshold_minor={Currency.USD: THRESHOLD_MINOR},
    decision_wait_seconds=12,
    download_heartbeat_seconds=2,
    page_size=2,
)


def read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def today() -> date:
    return datetime.now(UTC).date()


def issuer_days_behind(platform: Platform, days: int = 1) -> date:
    """Set the issuer's clock `days` behind, before the test's card activity:
    what the issuer settles now lands on a day that has ended, which is the
    only kind of day a reconciliation accepts. Returns that day."""
    platform.sim.admin("PUT", "/options/issuer", {"clock_offset_seconds": -days * DAY_SECONDS})
    return today() - timedelta(days=days)


def reconciliation_request(
    platform: Platform,
    day: date,
    *,
    policy: ReconciliationPolicy = POLICY,
    providers_task_queue: str | None = None,
) -> ReconciliationInput:
    queues = platform.stack.queues
    return ReconciliationInput(
        settlement_date=day,
        reports_dir=str(platform.settings.home_path / "reports"),
        policy=policy,
        ledger_task_queue=queues.ledger,
        providers_task_queue=providers_task_queue or queues.providers,
        workflows_task_queue=queues.workflows,
    )


async def start_reconciliation(
    platform: Platform,
    *,
    day: date,
    policy: ReconciliationPolicy = POLICY,
    providers_task_queue: str | None = None,
    workflow_id: str | None = None,
) -> WorkflowHandle[Any, ReconciliationResult]:
    """Reconcile `day`. Every test shares one Temporal server and reconciles
    the same few days, so each run gets its own id under the day's."""
    request = reconciliation_request(
        platform, day, policy=policy, providers_task_queue=providers_task_queue
    )
    workflow_id = (
        workflow_id or f"{reconciliation_workflow_id('issuer', day)}/t-{uuid.uuid4().hex[:8]}"
    )
    return await platform.stack.client.start_workflow(
        RECONCILIATION_WORKFLOW,
        request,
        id=workflow_id,
        task_queue=platform.stack.queues.workflows,
        result_type=ReconciliationResult,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    )


async def clear(platform: Platform, card_id: str, amount: int) -> str:
    """A purchase authorized and cleared in full; returns the transaction id."""
    auth = await authorize(platform, card_id, amount)
    async with issuer(platform) as client:
        cleared = await client.simulate_clearing(
            auth.id, amount_minor=amount, final=True, idempotency_key=f"clear-{auth.id}"
        )
    return cleared.id


async def post_directly(platform: Platform, customer_id: str, key: str, amount: int) -> None:
    """A posting on issuer:settlement under the card's own key family, as a
    faulty release of the card would make it: the ledger holds money the
    issuer does not know about."""
    outcome = await Ledger(platform.stack.pool).transfer(
        TransferRequest(
            key=key,
            debit=accounts.wallet(customer_id, "USD"),
            credit=accounts.issuer_settlement("USD"),
            amount_minor=amount,
            currency=Currency.USD,
        )
    )
    assert outcome.accepted, outcome.detail


async def recorded(platform: Platform, count: int) -> None:
    async def check() -> bool:
        found = await platform.stack.pool.fetchval("SELECT count(*) FROM card_transactions")
        return bool(found == count)

    await polling.eventually(check, f"{count} card transactions recorded")


async def test_a_clean_day_reconciles_with_zero_drift_and_writes_the_report(
    platform: Platform,
) -> None:
    day = issuer_days_behind(platform)
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 20_000})
    await clear(platform, card_id, 4_000)
    async with issuer(platform) as client:
        forced = await client.simulate_force_post(
            card_id=card_id,
            amount_minor=900,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="fp" + card_id,
        )
        await client.simulate_refund(
            card_id=card_id,
            amount_minor=400,
            currency=Currency.USD,
            merchant=SHOP,
            refunded_transaction_id=forced.id,
            idempotency_key="rf" + card_id,
        )
    await wallet_becomes(platform, customer_id, posted=20_000 - 4_000 - 900 + 400, pending=0)
    await recorded(platform, 3)

    result = await (await start_reconciliation(platform, day=day)).result()

    report = result.report
    assert report.settlement_date == day
    assert report.records_matched == 3
    assert report.counts == {
        "missing_in_ledger": 0,
        "missing_at_issuer": 0,
        "amount_mismatch": 0,
        "duplicate": 0,
    }
    usd = report.currencies[0]
    assert (usd.currency, usd.records, usd.volume_minor) == (Currency.USD, 3, 5_300)
    assert (usd.drift_minor, usd.unexplained_minor) == (0, 0)
    assert Decimal(usd.drift_rate) == 0
    assert report.items == []
    # The clearing, the force post and the refund, in the card's currency (no
    # conversion fee), the authorization cleared in full (no reversal): three
    # records, at page size 2 in two pages.
    assert report.records_total == 3
    assert report.download.pages == 2
    assert report.download.records == report.records_total
    written = json.loads(read(result.paths.json_path))
    assert written["records_matched"] == 3
    assert written["currencies"][0]["unexplained_minor"] == 0
    assert read(result.paths.csv_path).startswith("item_id,kind,state,")
    assert Path(result.paths.json_path).parent == platform.settings.home_path / "reports"
    assert await verify(platform.stack.pool) == []


@pytest.mark.parametrize("action", ["charge", "write_off"])
async def test_an_exception_an_operator_settled_reconciles_as_the_issuers_transaction(
    platform: Platform, action: str
) -> None:
    """The issuer force-posts more than the wallet holds; the card cannot
    post it and raises an exception, which an operator settles (charging the
    wallet once it is funded, or writing it off to suspense). That settling
    transfer is the card's posting of the issuer's transaction: the day
    matches, and nothing is fixed a second time through suspense."""
    day = issuer_days_behind(platform)
    customer_id, card_id, handle = await open_card(platform, {Currency.USD: 1_000})
    async with issuer(platform) as client:
        forced = await client.simulate_force_post(
            card_id=card_id,
            amount_minor=3_000,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="fp-exc" + card_id,
        )

    async def raised() -> bool:
        state = await handle.query("status", result_type=CardInput)
        return any(e.resolution is None for e in state.exceptions)

    await polling.eventually(raised, "the card raises an exception")
    [exception] = (await handle.query("status", result_type=CardInput)).exceptions
    assert (exception.kind, exception.transaction_id) == ("uncovered", forced.id)
    if action == "charge":
        funded = await Ledger(platform.stack.pool).transfer(
            TransferRequest(
                key=f"test/fund/{customer_id}/exception",
                debit=accounts.bank_inbound("USD"),
                credit=accounts.wallet(customer_id, "USD"),
                amount_minor=3_000,
                currency=Currency.USD,
            )
        )
        assert funded.accepted, funded.detail
    await handle.execute_update(
        RESOLVE_EXCEPTION_UPDATE,
        ExceptionDecision.model_validate(
            {"exception_id": exception.id, "action": action, "reason": "test"}
        ),
        result_type=str,
    )
    await recorded(platform, 1)

    report = (await (await start_reconciliation(platform, day=day)).result()).report

    assert report.records_matched == 1
    assert report.items == [] and sum(report.counts.values()) == 0
    assert report.currencies[0].unexplained_minor == 0
    assert await verify(platform.stack.pool) == []


async def test_each_difference_is_fixed_below_the_threshold_and_decided_above_it(
    platform: Platform,
) -> None:
    day = issuer_days_behind(platform)
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 100_000})
    matched = await clear(platform, card_id, 5_000)
    mismatch_small = await clear(platform, card_id, 4_000)
    mismatch_large = await clear(platform, card_id, 6_000)
    duplicate_small = await clear(platform, card_id, 300)
    duplicate_large = await clear(platform, card_id, 2_000)
    await recorded(platform, 5)

    # The card's postings made again or changed: the ledger now differs from
    # what the issuer settled (amount mismatch: not a whole multiple; a
    # duplicate: posted twice).
    await post_directly(platform, customer_id, f"card/{card_id}/post/{mismatch_small}", 100)
    await post_directly(platform, customer_id, f"card/{card_id}/post/{mismatch_large}", 2_000)
    await post_directly(platform, customer_id, f"card/{card_id}/post/{duplicate_small}", 300)
    await post_directly(platform, customer_id, f"card/{card_id}/post/{duplicate_large}", 2_000)
    # Posted by the card on the day, but not in the day's report: the issuer
    # settles them a day late.
    platform.sim.admin("PUT", "/options/issuer", {"settlement_delay_days": 1})
    async with issuer(platform) as client:
        unsettled_small, unsettled_large = [
            (
                await client.simulate_force_post(
                    card_id=card_id,
                    amount_minor=amount,
                    currency=Currency.USD,
                    merchant=SHOP,
                    idempotency_key=f"fp-unsettled-{amount}-{card_id}",
                )
            ).id
            for amount in (150, 2_500)
        ]
    platform.sim.admin("PUT", "/options/issuer", {"settlement_delay_days": 0})
    await recorded(platform, 7)
    # Settled at the issuer, but the webhooks never reach cardflow.
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    async with issuer(platform) as client:
        missing_small = await client.simulate_force_post(
            card_id=card_id,
            amount_minor=200,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="fp-small" + card_id,
        )
        missing_large = await client.simulate_force_post(
            card_id=card_id,
            amount_minor=3_000,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="fp-large" + card_id,
        )

    handle = await start_reconciliation(platform, day=day)

    async def awaiting() -> bool:
        status: ReconciliationStatus = await handle.query(Reconciliation.status)
        return status.stage == "awaiting_decisions"

    await polling.eventually(awaiting, "the reconciliation waits for operators")
    # The operators were told, once, by e-mail.
    async with NotifyClient(platform.sim.provider_url("notify")) as notify:
        page = await notify.list_messages(to="operations@cardflow.example")
    assert len(page.data) == 1
    assert missing_large.id in page.data[0].body

    # The validator refuses unknown items, items fixed automatically, and
    # actions that do not exist.
    assert "no difference" in await refusal(
        handle.execute_update(
            DECIDE_UPDATE,
            Decision(item_id="txn_nope", action=DecisionAction.ADJUST, operator="ana"),
        )
    )
    assert "auto_fixed" in await refusal(
        handle.execute_update(
            DECIDE_UPDATE,
            Decision(item_id=missing_small.id, action=DecisionAction.ADJUST, operator="ana"),
        )
    )
    bad_action = await refusal(
        handle.execute_update(
            DECIDE_UPDATE, Decision(item_id=missing_large.id, action="burn", operator="ana")
        )
    )
    assert "action: 'burn' is not one of adjust, dismiss" in bad_action
    adjusted = await handle.execute_update(
        DECIDE_UPDATE,
        Decision(
            item_id=missing_large.id,
            action=DecisionAction.ADJUST,
            operator="ana",
            reason="webhook lost",
        ),
    )
    assert adjusted["state"] == "adjusted"
    dismissed = await handle.execute_update(
        DECIDE_UPDATE,
        Decision(
            item_id=unsettled_large,
            action=DecisionAction.DISMISS,
            operator="ana",
            reason="test posting",
        ),
    )
    assert dismissed["state"] == "dismissed"
    assert "dismissed" in await refusal(
        handle.execute_update(
            DECIDE_UPDATE,
            Decision(item_id=unsettled_large, action=DecisionAction.ADJUST, operator="bo"),
        )
    )
    # The mismatch and the duplicate over the threshold stay undecided.
    result = await handle.result()
    report = result.report
    items = {item.difference.item_id: item for item in report.items}
    expected = {
        missing_small.id: ("missing_in_ledger", "auto_fixed", 200),
        missing_large.id: ("missing_in_ledger", "adjusted", 3_000),
        unsettled_small: ("missing_at_issuer", "auto_fixed", -150),
        unsettled_large: ("missing_at_issuer", "dismissed", -2_500),
        mismatch_small: ("amount_mismatch", "auto_fixed", -100),
        mismatch_large: ("amount_mismatch", "undecided", -2_000),
        duplicate_small: ("duplicate", "auto_fixed", -300),
        duplicate_large: ("duplicate", "undecided", -2_000),
    }
    assert {
        item_id: (item.difference.kind.value, item.state, item.difference.delta_minor)
        for item_id, item in items.items()
    } == expected
    assert matched not in items
    assert report.counts == {
        "missing_in_ledger": 2,
        "missing_at_issuer": 2,
        "amount_mismatch": 2,
        "duplicate": 2,
    }
    assert report.states == {"adjusted": 1, "auto_fixed": 4, "dismissed": 1, "undecided": 2}
    usd = report.currencies[0]
    assert usd.drift_minor == 200 + 3_000 + 150 + 2_500 + 100 + 2_000 + 300 + 2_000
    assert usd.fixed_minor == 200 + 3_000 + 150 + 100 + 300
    assert usd.unexplained_minor == 4_000
    volume = 5_000 + 4_000 + 6_000 + 300 + 2_000 + 200 + 3_000
    assert usd.volume_minor == volume
    assert usd.unexplained_drift_rate == f"{4_000 / volume:.6f}"

    # Each fix posted once, through suspense, in the direction of the delta.
    suspense = await Ledger(platform.stack.pool).balance(accounts.suspense_reconciliation("USD"))
    assert (suspense.debits_posted, suspense.credits_posted) == (200 + 3_000, 150 + 100 + 300)
    rows = csv.DictReader(io.StringIO(read(result.paths.csv_path)))
    states = {row["item_id"]: row["state"] for row in rows}
    assert states == {item_id: state for item_id, (_, state, _) in expected.items()}
    assert await verify(platform.stack.pool) == []


async def test_a_posting_no_card_recorded_is_matched_on_the_day_it_was_posted(
    platform: Platform,
) -> None:
    """A posting under the card's keys for a transaction the card never
    recorded (a faulty release) belongs to the day the ledger posted it; the
    matching finds it as missing at the issuer on that day. Posted by this
    test, that day is today, which only the matching itself (not a whole
    reconciliation, which waits for the day to end) may look at."""
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 1_000})
    settlement = accounts.system_account(accounts.issuer_settlement("USD"))
    await Ledger(platform.stack.pool).open_account(settlement)
    await post_directly(platform, customer_id, f"card/{card_id}/post/txn_ghost", 150)

    matched = await ReconciliationLedgerActivities(platform.stack.pool).match(
        MatchRequest(run_key=f"test-{uuid.uuid4().hex[:8]}", settlement_date=today())
    )

    assert [(d.item_id, d.kind.value, d.card_id, d.delta_minor) for d in matched.differences] == [
        ("txn_ghost", "missing_at_issuer", card_id, -150)
    ]
    yesterday = await ReconciliationLedgerActivities(platform.stack.pool).match(
        MatchRequest(
            run_key=f"test-{uuid.uuid4().hex[:8]}", settlement_date=today() - timedelta(days=1)
        )
    )
    assert yesterday.differences == []


async def test_a_worker_killed_mid_download_resumes_from_its_last_page(
    platform: Platform,
) -> None:
    day = issuer_days_behind(platform)
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 20_000})
    for amount in (100, 200, 300, 400, 500, 600):
        await clear(platform, card_id, amount)
    await recorded(platform, 6)
    # One page a second, so the worker can be killed between pages.
    platform.sim.fault(kind="latency", path_prefix="/issuer/v1/reports/", seconds=1.0)
    # The download runs on a queue of this test's own, served by one worker
    # that is killed mid-way and another started after it.
    queues = TaskQueues(prefix=f"test-{uuid.uuid4().hex[:12]}")
    clients = ProviderClients(platform.sim.url)

    def providers_worker() -> Any:
        return build_worker(
            "providers",
            platform.stack.client,
            queues,
            pool=platform.stack.pool,
            provider_clients=clients,
        )

    policy = POLICY.model_copy(update={"page_size": 1})
    try:
        first = providers_worker()
        running = asyncio.get_running_loop().create_task(first.run())
        handle = await start_reconciliation(
            platform, day=day, policy=policy, providers_task_queue=queues.providers
        )

        async def two_pages_staged() -> bool:
            pending = (await handle.describe()).raw_description.pending_activities
            if not pending or not pending[0].heartbeat_details.payloads:
                return False
            # Heartbeat details are encrypted like every payload: decode them.
            (details,) = await platform.stack.client.data_converter.decode(
                pending[0].heartbeat_details.payloads, [DownloadProgress]
            )
            progress: DownloadProgress = details
            return progress.pages >= 2

        await polling.eventually(two_pages_staged, "two pages staged")
        await first.shutdown()
        await running
        second = providers_worker()
        async with second:
            result = await handle.result()
    finally:
        await clients.aclose()
    download = result.report.download
    # Six clearings, one record a page. The first worker read at least two
    # pages; the second (the download's second attempt) read only the rest.
    # The second worker's attempt at least (a retry past a heartbeat that a
    # loaded machine delays is a third; it resumes from its cursor the same).
    assert download.attempt >= 2
    assert download.resumed_from_cursor is not None
    resumed_from = int(download.resumed_from_cursor)
    assert resumed_from >= 2
    assert download.pages_this_attempt == download.pages - resumed_from
    assert download.records == result.report.records_total == download.pages == 6
    assert result.report.records_matched == 6
    assert result.report.items == []
    assert await verify(platform.stack.pool) == []


async def test_the_daily_schedule_is_created_once_and_reconciles_yesterday(
    platform: Platform,
) -> None:
    client = platform.stack.client
    schedule = client.get_schedule_handle(DAILY_SCHEDULE_ID)
    # Another test of this session may have created it with its own queues.
    try:
        await schedule.delete()
    except RPCError as error:
        if error.status is not RPCStatusCode.NOT_FOUND:
            raise
    first = await ensure_schedules(client, platform.settings)
    again = await ensure_schedules(client, platform.settings)
    assert first[DAILY_SCHEDULE_ID] == "created"
    assert again[DAILY_SCHEDULE_ID] == "exists"
    described = await schedule.describe()
    action = described.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == "ScheduledReconciliation"
    assert described.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
    try:
        await schedule.trigger()
        yesterday = today() - timedelta(days=1)
        child = client.get_workflow_handle(
            reconciliation_workflow_id("issuer", yesterday), result_type=ReconciliationResult
        )

        async def reconciled() -> bool:
            try:
                return (await child.describe()).close_time is not None
            except RPCError as error:
                if error.status is not RPCStatusCode.NOT_FOUND:
                    raise
                return False  # not started yet

        await polling.eventually(reconciled, "the schedule reconciles yesterday")
        result = await child.result()
        assert result.report.settlement_date == yesterday
        assert result.report.items == []
    finally:
        await schedule.delete()


async def test_the_demo_says_zero_unexplained_drift_and_the_api_starts_and_steers(
    platform: Platform,
) -> None:
    # Two days behind: the day the daily schedule's test reconciles
    # (yesterday, under the real id) is not the demo's.
    day = issuer_days_behind(platform, 2)
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 20_000})
    await clear(platform, card_id, 2_500)
    await recorded(platform, 1)
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)

    await demo_reconciliation(platform.stack.client, platform.settings, say, day)
    assert said[-1] == "unexplained drift: 0"
    assert any("1 matched" in line for line in said)
    assert any(line.strip().endswith(".csv") for line in said)

    # The API: a day long past (nothing settled then), started once.
    day = date(2001, 1, 1) + timedelta(days=secrets.randbelow(3_000))
    url = f"{platform.gateway_url}/v1/reconciliations/issuer/{day.isoformat()}"
    async with httpx.AsyncClient(timeout=10, headers=platform.api_headers) as http:
        started = await http.post(url)
        assert started.status_code == 202, started.text
        again = await http.post(url)
        assert again.status_code == 200
        assert again.json()["workflow_id"] == started.json()["workflow_id"]
        handle = platform.stack.client.get_workflow_handle(
            started.json()["workflow_id"], result_type=ReconciliationResult
        )
        result = await handle.result()
        assert (result.report.records_total, result.report.items) == (0, [])
        status = await http.get(url)
        assert status.status_code == 200, status.text
        assert status.json()["stage"] == "reconciled"
        # The run has closed: Temporal refuses the update as it refuses one
        # for no workflow at all (NOT_FOUND), which the API answers 404.
        refused = await http.post(
            f"{url}/decisions", json={"item_id": "txn_1", "action": "adjust", "operator": "ana"}
        )
        assert refused.status_code == 404, refused.text
        assert refused.json() == {
            "code": "not_found",
            "detail": f"no running process for {day.isoformat()}",
        }
        malformed = await http.post(f"{url}/decisions", json={"item_id": "txn_1"})
        assert malformed.status_code == 422, malformed.text
        assert [error["loc"] for error in malformed.json()["detail"]] == [
            ["body", "action"],
            ["body", "operator"],
        ]


async def test_a_day_that_has_not_ended_is_refused_and_left_to_the_schedule(
    platform: Platform,
) -> None:
    """Today and tomorrow are refused at every door: the API and the CLI
    with the field named, the workflow itself (started past them) failing at
    once. Nothing is reconciled early, so the day's id stays free for the
    run the schedule starts once the day is over."""
    client = platform.stack.client
    tomorrow = today() + timedelta(days=1)
    async with httpx.AsyncClient(timeout=10, headers=platform.api_headers) as http:
        for day in (today(), tomorrow):
            url = f"{platform.gateway_url}/v1/reconciliations/issuer/{day.isoformat()}"
            refused = await http.post(url)
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "period_not_ended"
            assert refused.json()["detail"][0]["loc"] == ["path", "settlement_date"]
            with pytest.raises(RPCError) as never_started:
                await client.get_workflow_handle(
                    reconciliation_workflow_id("issuer", day)
                ).describe()
            assert never_started.value.status is RPCStatusCode.NOT_FOUND, never_started.value
    answer = CliRunner().invoke(app, ["reconcile", "run", "--date", today().isoformat()])
    assert answer.exit_code == 2, answer.output
    assert "date: " in answer.output and "has not ended" in answer.output

    # Started past the starters: the workflow fails at once, non-retryably,
    # with nothing reconciled, and its id may run again.
    early = await start_reconciliation(platform, day=tomorrow)
    with pytest.raises(WorkflowFailureError) as failed:
        await early.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("PeriodNotEnded", True)
    assert "has not begun" in cause.message
    assert not (platform.settings.home_path / "reports").exists()
    again = await client.start_workflow(
        RECONCILIATION_WORKFLOW,
        reconciliation_request(platform, tomorrow),
        id=early.id,
        task_queue=platform.stack.queues.workflows,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    )
    with pytest.raises(WorkflowFailureError):
        await again.result()

    # A driver asked for today refuses before it starts the day's process.
    queues = platform.stack.queues
    with pytest.raises(WorkflowFailureError) as driver_failed:
        await client.execute_workflow(
            SCHEDULED_RECONCILIATION_WORKFLOW,
            ScheduledReconciliationInput(
                settlement_date=today(),
                reports_dir=str(platform.settings.home_path / "reports"),
                ledger_task_queue=queues.ledger,
                providers_task_queue=queues.providers,
                workflows_task_queue=queues.workflows,
            ),
            id=f"{DAILY_SCHEDULE_ID}-test-{uuid.uuid4().hex[:8]}",
            task_queue=queues.workflows,
        )
    driver_cause = driver_failed.value.cause
    assert isinstance(driver_cause, ApplicationError)
    assert (driver_cause.type, driver_cause.non_retryable) == ("PeriodNotEnded", True)
    with pytest.raises(RPCError) as never_started:
        await client.get_workflow_handle(reconciliation_workflow_id("issuer", today())).describe()
    assert never_started.value.status is RPCStatusCode.NOT_FOUND, never_started.value


async def reconcile_on(platform: Platform, day: date) -> ReconciliationResult:
    """Reconcile `day` under an id of this run's own, and wait for the report."""
    result: ReconciliationResult = await (await start_reconciliation(platform, day=day)).result()
    return result


async def net_credit(platform: Platform, code: str, key_part: str) -> int:
    """Credits minus debits of account `code` by the transfers whose key
    names `key_part` (a transaction id): what they did for one item."""
    value = await platform.stack.pool.fetchval(
        """
        SELECT coalesce(sum(CASE WHEN c.code = $1 THEN t.amount_minor ELSE 0 END)
                      - sum(CASE WHEN d.code = $1 THEN t.amount_minor ELSE 0 END), 0)::bigint
        FROM ledger_transfers t
        JOIN ledger_accounts d ON d.id = t.debit_account_id
        JOIN ledger_accounts c ON c.id = t.credit_account_id
        WHERE t.kind IN ('posted', 'post_pending') AND t.idempotency_key LIKE '%' || $2 || '%'
        """,
        code,
        key_part,
    )
    return int(value)


async def transfers_keyed(platform: Platform, key: str) -> int:
    found = await platform.stack.pool.fetchval(
        "SELECT count(*) FROM ledger_transfers WHERE idempotency_key = $1", key
    )
    return int(found)


async def test_a_fix_for_a_held_clearing_is_reversed_once_when_the_late_webhook_posts_it(
    platform: Platform,
) -> None:
    first_day = issuer_days_behind(platform, 2)
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 20_000})
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    async with issuer(platform) as client:
        late = await client.simulate_force_post(
            card_id=card_id,
            amount_minor=300,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="fp-late" + card_id,
        )
    settlement = accounts.issuer_settlement("USD")
    suspense = accounts.suspense_reconciliation("USD")

    # The day: the issuer settled it, the card never heard of it: fixed
    # through suspense under the threshold.
    day = await reconcile_on(platform, first_day)
    (item,) = day.report.items
    assert (item.difference.item_id, item.difference.kind.value, item.state) == (
        late.id,
        "missing_in_ledger",
        "auto_fixed",
    )
    assert item.difference.delta_minor == 300
    fix_key = item.transfer_key
    assert fix_key is not None
    assert await net_credit(platform, settlement, late.id) == 300
    assert await net_credit(platform, suspense, late.id) == -300

    # The held webhook arrives: the card posts the clearing as well, and the
    # settlement account now holds it twice.
    platform.sim.admin("POST", "/webhooks", {"hold": False})
    platform.sim.admin("POST", "/webhooks/release", {"order": "forward"})
    await wallet_becomes(platform, customer_id, posted=20_000 - 300, pending=0)
    await recorded(platform, 1)
    assert await net_credit(platform, settlement, late.id) == 600

    # The next day's run looks back and reverses the fix.
    next_day = first_day + timedelta(days=1)
    first = await reconcile_on(platform, next_day)

    assert first.report.items == []
    (reversal,) = first.report.reversals
    assert reversal.kind.value == "late_posting_reversed"
    assert (reversal.fix.fix_key, reversal.fix.difference.kind.value) == (
        fix_key,
        "missing_in_ledger",
    )
    assert (reversal.ledger_amount_now_minor, reversal.correction_minor) == (300, -300)
    assert reversal.residual_minor == 0
    assert reversal.transfer_key == f"{fix_key}/reversed"
    assert first.report.reversal_counts == {
        "late_posting_reversed": 1,
        "late_settlement_reversed": 0,
    }
    usd = first.report.currencies[0]
    assert (usd.currency, usd.reversals, usd.reversed_minor) == (Currency.USD, 1, 300)
    assert (usd.drift_minor, usd.unexplained_minor) == (0, 0)
    rows = list(csv.DictReader(io.StringIO(read(first.paths.csv_path))))
    assert [(row["item_id"], row["kind"], row["state"], row["delta_minor"]) for row in rows] == [
        (late.id, "late_posting_reversed", "reversed", "-300")
    ]
    assert json.loads(read(first.paths.json_path))["reversals"][0]["correction_minor"] == -300

    # A second run of that day finds nothing left to reverse.
    again = await reconcile_on(platform, next_day)
    assert again.report.reversals == []
    assert again.report.reversal_counts == {
        "late_posting_reversed": 0,
        "late_settlement_reversed": 0,
    }

    # Posted once; suspense back to zero for the item; issuer:settlement holds
    # what the issuer settled, once.
    assert await transfers_keyed(platform, f"{fix_key}/reversed") == 1
    assert await net_credit(platform, suspense, late.id) == 0
    assert await net_credit(platform, settlement, late.id) == 300
    balance = await Ledger(platform.stack.pool).balance(settlement)
    assert balance.credits_posted - balance.debits_posted == 300
    assert await verify(platform.stack.pool) == []


# How a card names its posting from a hold: today, and before the
# card-money-durable-keys patch (cards on the old path still post so).
HOLD_POSTING_KEYS = (
    "card/{card}/auth/auth_x/post-{transaction}/0123456789abcdef",
    "card/{card}/auth/auth_x/1-post-{transaction}",
)


@pytest.mark.parametrize("hold_posting_key", HOLD_POSTING_KEYS, ids=["durable", "counter"])
async def test_an_amount_mismatch_fix_is_reversed_when_the_rest_of_the_posting_arrives(
    platform: Platform, hold_posting_key: str
) -> None:
    """An amount mismatch can be doubled the same way: the card posted part
    of the clearing (from its hold), the fix stood in for the rest, and the
    card's posting beyond the hold arrives later."""
    first_day = issuer_days_behind(platform, 2)
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 20_000})
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    async with issuer(platform) as client:
        cleared = await client.simulate_force_post(
            card_id=card_id,
            amount_minor=4_000,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="fp-part" + card_id,
        )
    settlement = accounts.issuer_settlement("USD")
    # No card has posted in this database yet: the card would open it.
    await Ledger(platform.stack.pool).open_account(accounts.system_account(settlement))
    # The card's posting from a hold, short of what the issuer settled.
    await post_directly(
        platform,
        customer_id,
        hold_posting_key.format(card=card_id, transaction=cleared.id),
        3_700,
    )
    day = await reconcile_on(platform, first_day)
    (item,) = day.report.items
    assert (item.difference.kind.value, item.state, item.difference.delta_minor) == (
        "amount_mismatch",
        "auto_fixed",
        300,
    )
    # The rest, beyond the hold, posted by the card after the fix.
    await post_directly(platform, customer_id, f"card/{card_id}/post/{cleared.id}", 300)
    assert await net_credit(platform, settlement, cleared.id) == 4_300

    later = await reconcile_on(platform, first_day + timedelta(days=1))

    (reversal,) = later.report.reversals
    assert (reversal.fix.difference.kind.value, reversal.correction_minor) == (
        "amount_mismatch",
        -300,
    )
    assert reversal.residual_minor == 0
    assert await net_credit(platform, settlement, cleared.id) == 4_000
    suspense = accounts.suspense_reconciliation("USD")
    assert await net_credit(platform, suspense, cleared.id) == 0
    assert await verify(platform.stack.pool) == []


async def test_a_rerun_after_the_postings_changed_posts_only_what_remains(
    platform: Platform,
) -> None:
    """A day's run fixes an amount mismatch and then ends without finishing
    (an operator terminates it while it waits for a decision); the card
    posts more of the transaction before the day is run again. The re-run
    never meets its own first fix's key with another amount: it posts only
    what is left, and issuer:settlement holds what the issuer settled."""
    day = issuer_days_behind(platform, 2)
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 20_000})
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    async with issuer(platform) as client:
        partial, waiting = [
            (
                await client.simulate_force_post(
                    card_id=card_id,
                    amount_minor=amount,
                    currency=Currency.USD,
                    merchant=SHOP,
                    idempotency_key=f"fp-rerun-{amount}-{card_id}",
                )
            ).id
            for amount in (4_000, 3_000)
        ]
    settlement = accounts.issuer_settlement("USD")
    suspense = accounts.suspense_reconciliation("USD")
    await Ledger(platform.stack.pool).open_account(accounts.system_account(settlement))
    # The card posted part of the first from its hold: 300 short, fixed at
    # once; the second (never posted) waits for an operator.
    await post_directly(
        platform, customer_id, f"card/{card_id}/auth/auth_r/1-post-{partial}", 3_700
    )
    workflow_id = f"{reconciliation_workflow_id('issuer', day)}/t-{uuid.uuid4().hex[:8]}"
    first = await start_reconciliation(platform, day=day, workflow_id=workflow_id)
    await polling.eventually(
        functools.partial(awaiting_on, first), "the first run waits for operators"
    )
    assert await net_credit(platform, settlement, partial) == 4_000
    await first.terminate("an operator stops the day's run")

    # The card posts 200 more of it before the day is run again.
    await post_directly(platform, customer_id, f"card/{card_id}/post/{partial}", 200)
    again = await start_reconciliation(platform, day=day, workflow_id=workflow_id)
    await polling.eventually(
        functools.partial(awaiting_on, again), "the re-run waits for operators"
    )
    await again.execute_update(
        DECIDE_UPDATE,
        Decision(item_id=waiting, action=DecisionAction.DISMISS, operator="ana"),
    )
    result = await again.result()

    items = {item.difference.item_id: item for item in result.report.items}
    assert (items[partial].difference.kind.value, items[partial].difference.delta_minor) == (
        "amount_mismatch",
        100,
    )
    assert items[partial].state == "auto_fixed"
    # The issuer's amount, exactly: the card's 3,900 and 100 through suspense.
    assert await net_credit(platform, settlement, partial) == 4_000
    assert await net_credit(platform, suspense, partial) == -100
    assert await verify(platform.stack.pool) == []


async def awaiting_on(handle: WorkflowHandle[Any, ReconciliationResult]) -> bool:
    status: ReconciliationStatus = await handle.query(Reconciliation.status)
    return status.stage == "awaiting_decisions"


async def test_a_transaction_the_issuer_settles_a_day_late_leaves_settlement_exact(
    platform: Platform,
) -> None:
    """The card posts a purchase on a day whose report does not have it (the
    issuer settles it a day late): fixed as missing at the issuer. When the
    next day's report settles it, that fix is reversed: after both days
    issuer:settlement holds what the issuer settled, to the unit."""
    first_day = issuer_days_behind(platform, 2)
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 20_000})
    platform.sim.admin("PUT", "/options/issuer", {"settlement_delay_days": 1})
    async with issuer(platform) as client:
        late = await client.simulate_force_post(
            card_id=card_id,
            amount_minor=300,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key="fp-settled-late" + card_id,
        )
    platform.sim.admin("PUT", "/options/issuer", {"settlement_delay_days": 0})
    await wallet_becomes(platform, customer_id, posted=20_000 - 300, pending=0)
    await recorded(platform, 1)
    settlement = accounts.issuer_settlement("USD")
    suspense = accounts.suspense_reconciliation("USD")

    day = await reconcile_on(platform, first_day)
    (item,) = day.report.items
    assert (item.difference.item_id, item.difference.kind.value, item.state) == (
        late.id,
        "missing_at_issuer",
        "auto_fixed",
    )
    assert await net_credit(platform, settlement, late.id) == 0

    next_day = await reconcile_on(platform, first_day + timedelta(days=1))

    assert next_day.report.records_matched == 1 and next_day.report.items == []
    (reversal,) = next_day.report.reversals
    assert (reversal.kind.value, reversal.fix.fix_key, reversal.correction_minor) == (
        "late_settlement_reversed",
        item.transfer_key,
        300,
    )
    assert next_day.report.reversal_counts == {
        "late_posting_reversed": 0,
        "late_settlement_reversed": 1,
    }
    assert reversal.transfer_key == f"{item.transfer_key}/settled-late"
    rows = list(csv.DictReader(io.StringIO(read(next_day.paths.csv_path))))
    assert [(row["item_id"], row["kind"], row["delta_minor"]) for row in rows] == [
        (late.id, "late_settlement_reversed", "300")
    ]
    assert await net_credit(platform, settlement, late.id) == 300
    assert await net_credit(platform, suspense, late.id) == 0
    # Run again, the day finds nothing more to reverse.
    again = await reconcile_on(platform, first_day + timedelta(days=1))
    assert again.report.reversals == [] and again.report.items == []
    balance = await Ledger(platform.stack.pool).balance(settlement)
    assert balance.credits_posted - balance.debits_posted == 300
    assert await verify(platform.stack.pool) == []
