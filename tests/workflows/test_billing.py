"""Fees and statements on real workers: the monthly fee once per active card and
period, however often the period is billed; backfill of a past month; the
statement balances and classifies every entry; the monthly schedule exists once."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError
from typer.testing import CliRunner

from activities.billing import BillingActivities, classify
from activities.events import events_after
from activities.ledger import Ledger
from activities.ledger.verify import verify
from schemas.accounts import revenue_fees, system_account, wallet
from schemas.billing import (
    CATEGORIES,
    BillingInput,
    BillingPolicy,
    BillingResult,
    BillingRunInput,
    BillingRunPolicy,
    BillingRunResult,
    BillingStatus,
    Statement,
    StatementRequest,
    period_bounds,
    period_of,
    previous_period,
)
from schemas.ledger import HistoryEntry
from schemas.money import Currency
from schemas.search import PROCESS_STATUS
from starters.billing import (
    BILLING_SCHEDULE_ID,
    bill,
    billing_schedule,
    billing_status,
    demo_statement,
    run_billing,
    start_billing,
    with_queues,
)
from starters.cli import app
from tests.conftest import RunningStack, api_key_headers
from tests.customers import card_of_its_own, customer
from tests.interruptions import (
    balances_locked,
    table_locked,
    until_activity_cancel_requested,
    until_waiting,
)
from workers.settings import load_settings
from workflows.billing import (
    BILLING_RUN_WORKFLOW,
    BILLING_WORKFLOW,
    BillingRun,
    billing_workflow_id,
)

FEE_USD = 150
FEE_EUR = 120
POLICY = BillingPolicy(monthly_fee_minor={Currency.USD: FEE_USD, Currency.EUR: FEE_EUR})


async def card(
    stack: RunningStack,
    customer_id: str,
    currency: Currency,
    *,
    issued_at: datetime | None = None,
    process: bool = True,
) -> str:
    """A card issued at `issued_at` with its card process running (unless not)."""
    card_id = f"card-{uuid.uuid4().hex[:12]}"
    await stack.pool.execute(
        "INSERT INTO cards (card_id, request_id, customer_id, kind, created_at)"
        " VALUES ($1, $2, $3, 'virtual', $4)",
        card_id,
        f"req-{card_id}",
        customer_id,
        issued_at or datetime.now(UTC),
    )
    if process:
        await card_of_its_own(stack, customer_id, card_id=card_id, currency=currency)
    return card_id


async def posted(stack: RunningStack, code: str) -> int:
    return (await Ledger(stack.pool).balance(code)).posted


def last_month() -> tuple[str, datetime]:
    """The month before this one (the latest a billing accepts) and its first instant."""
    period = previous_period(datetime.now(UTC))
    return period, period_bounds(period)[0]


def request(customer_id: str, period: str, tmp_path: Path) -> BillingInput:
    return BillingInput(
        customer_id=customer_id,
        period=period,
        statements_dir=str(tmp_path / "statements"),
        policy=POLICY,
    )


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tables += tag == "table"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_period_bounds_are_calendar_months_in_utc() -> None:
    assert period_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert previous_period(datetime(2026, 1, 1, 2, tzinfo=UTC)) == "2025-12"
    assert previous_period(datetime(2026, 11, 30, 23, tzinfo=UTC)) == "2026-10"
    with pytest.raises(ValidationError) as refused:
        BillingInput(customer_id="c-1", period="2026-13")
    assert refused.value.errors()[0]["loc"] == ("period",)


@pytest.mark.parametrize(
    ("key", "counterparty", "kind", "category"),
    [
        ("card/c1/clear/t1", "issuer:settlement:USD", "post_pending", "card"),
        ("card/c1/auth/a1", "issuer:settlement:USD", "pending", "card_hold"),
        ("card-issue/r1/fee", "revenue:fees:USD", "posted", "fee"),
        ("billing/c-1/2026-09/fee/card-1", "revenue:fees:USD", "posted", "fee"),
        ("topup/usdt/0xabc/credit", "fx:pool:USD", "posted", "topup"),
        ("scenario-funding/c-1", "bank:inbound:USD", "posted", "topup"),
        ("fx/r1/sell", "fx:pool:USD", "posted", "fx"),
        ("cashback/t1/reward/camp", "expense:cashback:USD", "posted", "cashback"),
        ("dispute/t1/provisional", "disputes:provisional:USD", "posted", "dispute"),
        ("dispute/t1/debt", "customer:c-1:debt:USD", "posted", "dispute"),
        ("topup/bank/tr-1/debt/collect/1", "customer:c-1:debt:USD", "posted", "debt_repayment"),
        (
            "reconciliation/issuer/2026-09-01/fix",
            "suspense:reconciliation:USD",
            "posted",
            "adjustment",
        ),
        ("ops/1", "customer:c-2:wallet:USD", "posted", "transfer"),
    ],
)
def test_every_kind_of_wallet_entry_has_its_statement_category(
    key: str, counterparty: str, kind: str, category: str
) -> None:
    entry = HistoryEntry(
        transfer_id=1,
        key=key,
        kind=kind,
        direction="debit",
        counterparty=counterparty,
        amount_minor=100,
        currency=Currency.USD,
        created_at=datetime.now(UTC),
    )
    assert classify(entry) == category


def test_the_cli_refuses_a_bad_period_naming_the_field() -> None:
    answer = CliRunner().invoke(app, ["billing", "run", "--period", "2026-9"])
    assert answer.exit_code == 2
    assert "period" in answer.output


async def test_fee_per_active_card_charged_once_however_often_the_period_is_billed(
    stack: RunningStack, tmp_path: Path
) -> None:
    period, start = last_month()
    customer_id = await customer(stack, {Currency.USD: 10_000, Currency.EUR: 0})
    usd_cards = [await card(stack, customer_id, Currency.USD, issued_at=start) for _ in range(2)]
    # The EUR wallet is empty: that card's fee is waived and flagged, not charged.
    eur_card = await card(stack, customer_id, Currency.EUR, issued_at=start)
    # Issued but its process never started (the issuance did not finish): not active.
    await card(stack, customer_id, Currency.USD, issued_at=start, process=False)
    fees_before = await _fees(stack, Currency.USD)

    first = await bill(stack.client, stack.queues, request(customer_id, period, tmp_path))

    charged = {f.card_id: f for f in first.fees if f.status == "charged"}
    assert sorted(charged) == sorted(usd_cards)
    assert all(f.amount_minor == FEE_USD and f.currency is Currency.USD for f in charged.values())
    (waived,) = [f for f in first.fees if f.status == "waived"]
    assert waived.card_id == eur_card and "insufficient_funds" in waived.reason
    assert first.fees_charged_minor == {Currency.USD: 2 * FEE_USD}
    assert first.fees_waived_minor == {Currency.EUR: FEE_EUR}
    assert await posted(stack, wallet(customer_id, Currency.USD)) == 10_000 - 2 * FEE_USD
    assert await posted(stack, wallet(customer_id, Currency.EUR)) == 0
    assert await _fees(stack, Currency.USD) == fees_before + 2 * FEE_USD
    status = await billing_status(stack.client, customer_id, period)
    assert status.stage == "billed_with_waivers"

    # Started again: the first run's result, nothing charged.
    again = await bill(stack.client, stack.queues, request(customer_id, period, tmp_path))
    assert again == first
    # Re-run by the monthly driver: the customer's period is billed already.
    rerun = await run_billing(
        stack.client,
        stack.queues,
        BillingRunInput(period=period, statements_dir=str(tmp_path / "statements")),
    )
    assert (rerun.started, rerun.already_billed, rerun.failed) == (0, 1, [])
    # Even a forced second process for the period (an operator overriding the
    # id policy) charges nothing: its ledger keys return the first outcomes.
    forced: WorkflowHandle[object, BillingResult] = await stack.client.start_workflow(
        BILLING_WORKFLOW,
        with_queues(request(customer_id, period, tmp_path), stack.queues),
        id=billing_workflow_id(customer_id, period),
        task_queue=stack.queues.workflows,
        result_type=BillingResult,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    forced_result = await forced.result()
    assert [f.transfer_id for f in forced_result.fees] == [f.transfer_id for f in first.fees]
    assert await posted(stack, wallet(customer_id, Currency.USD)) == 10_000 - 2 * FEE_USD
    assert await _fees(stack, Currency.USD) == fees_before + 2 * FEE_USD
    assert await verify(stack.pool) == []
    # Its events, once however often it ran: each fee charged, the statement ready.
    events = await events_after(stack.pool, 0, 100, customer_id=customer_id)
    fees = [e for e in events if e.type == "fee.charged"]
    assert sorted(e.data["amount_minor"] for e in fees) == [FEE_USD, FEE_USD]
    assert {e.process_id for e in fees} == {billing_workflow_id(customer_id, period)}
    [ready] = [e for e in events if e.type == "statement.ready"]
    assert ready.data["url"] == f"/v1/statements/{customer_id}/{period}"
    assert ready.data["fees_charged_minor"] == {"USD": 2 * FEE_USD}
    assert first.statement is not None
    assert ready.data["wallets"] == {
        w.currency.value: {"opening_minor": w.opening_minor, "closing_minor": w.closing_minor}
        for w in first.statement.wallets
    }


async def test_statement_balances_every_wallet_and_classifies_every_entry(
    stack: RunningStack, tmp_path: Path
) -> None:
    """Last month is billed once it is over: its fee is charged now, so this
    month's statement (written as next month's billing will write it) holds
    the top-up and that fee; last month's holds neither, and balances too."""
    billed, start = last_month()
    customer_id = await customer(stack, {Currency.USD: 5_000, Currency.EUR: 0})
    card_id = await card(stack, customer_id, Currency.USD, issued_at=start)
    result = await bill(stack.client, stack.queues, request(customer_id, billed, tmp_path))
    assert [w.closing_minor for w in result.statement.wallets] == [0, 0]
    assert [(f.card_id, f.status) for f in result.fees] == [(card_id, "charged")]

    period = period_of(datetime.now(UTC))
    period_start, period_end = period_bounds(period)
    summary = await BillingActivities(stack.pool).write_statement(
        StatementRequest(
            customer_id=customer_id,
            period=period,
            period_start=period_start,
            period_end=period_end,
            statements_dir=str(tmp_path / "statements"),
        )
    )
    statement = Statement.model_validate_json(_read(summary.json_path))
    assert {w.code for w in statement.wallets} == {
        wallet(customer_id, Currency.USD),
        wallet(customer_id, Currency.EUR),
    }
    for w in statement.wallets:
        moved = sum(
            e.amount_minor if e.direction == "credit" else -e.amount_minor
            for e in w.entries
            if e.posted
        )
        assert w.opening_minor + moved == w.closing_minor
        assert w.closing_minor == await posted(stack, w.code)
        # Every entry has a named category; none is left as a bare transfer.
        assert all(e.category in CATEGORIES and e.category != "transfer" for e in w.entries)
    (usd,) = [w for w in statement.wallets if w.currency is Currency.USD]
    assert usd.by_category_minor == {"topup": 5_000, "fee": -FEE_USD}
    assert (usd.opening_minor, usd.closing_minor) == (0, 5_000 - FEE_USD)
    assert [w.closing_minor for w in summary.wallets if w.currency is Currency.USD] == [
        5_000 - FEE_USD
    ]

    page = _Page()
    page.feed(_read(summary.html_path))
    text = " ".join(page.text)
    assert f"Statement for {customer_id}, {period}" in text
    assert "50.00 USD" in text and "48.50 USD" in text and "-1.50 USD" in text
    assert page.tables >= 4

    # `cardflow statement show` prints the summary and both paths.
    shown = CliRunner().invoke(
        app, ["statement", "show", customer_id, period], env={"CARDFLOW_HOME": str(tmp_path)}
    )
    assert shown.exit_code == 0, shown.output
    assert summary.json_path in shown.output and summary.html_path in shown.output
    assert "closing 48.50 USD" in shown.output
    missing = CliRunner().invoke(
        app, ["statement", "show", customer_id, "2020-01"], env={"CARDFLOW_HOME": str(tmp_path)}
    )
    assert missing.exit_code == 1
    outside = CliRunner().invoke(
        app, ["statement", "show", "..", period], env={"CARDFLOW_HOME": str(tmp_path)}
    )
    assert outside.exit_code == 2 and "customer_id" in outside.output
    assert await verify(stack.pool) == []


async def test_backfill_of_a_past_period_bills_the_cards_active_then(
    stack: RunningStack, tmp_path: Path, encryption_keys: list[tuple[str, bytes]]
) -> None:
    period = "2026-09"
    start, end = period_bounds(period)
    in_august = datetime(2026, 8, 15, tzinfo=UTC)
    first = await customer(stack, {Currency.USD: 1_000, Currency.EUR: 0}, prefix="b1")
    second = await customer(stack, {Currency.USD: 1_000, Currency.EUR: 0}, prefix="b2")
    active_first = await card(stack, first, Currency.USD, issued_at=in_august)
    active_second = await card(stack, second, Currency.USD, issued_at=start)
    # Issued after the period: not billed for it.
    await card(stack, first, Currency.USD, issued_at=end)
    # A customer whose only card came later is not billed at all.
    later = await customer(stack, {Currency.USD: 1_000, Currency.EUR: 0}, prefix="b3")
    await card(stack, later, Currency.USD, issued_at=end)

    # One customer per page and one page per run: the driver continues as new.
    result = await run_billing(
        stack.client,
        stack.queues,
        BillingRunInput(
            period=period,
            statements_dir=str(tmp_path / "statements"),
            billing_policy=POLICY,
            policy=BillingRunPolicy(page_size=1, pages_per_run_max=1),
        ),
    )

    assert (result.period, result.started, result.already_billed, result.failed) == (
        period,
        2,
        0,
        [],
    )
    for customer_id, card_id in ((first, active_first), (second, active_second)):
        status: BillingStatus = await billing_status(stack.client, customer_id, period)
        assert status.stage == "billed"
        assert [(f.card_id, f.status) for f in status.fees] == [(card_id, "charged")]
        assert await posted(stack, wallet(customer_id, Currency.USD)) == 1_000 - FEE_USD
        assert status.statement is not None
        assert Path(status.statement.html_path).name == f"{period}.html"
    assert await posted(stack, wallet(later, Currency.USD)) == 1_000
    # The fee was posted now, after September: the September statement shows
    # the period as it was (nothing moved then) and lists the fee charged for it.
    september = Statement.model_validate_json(
        _read(tmp_path / "statements" / first / f"{period}.json")
    )
    assert all(not w.entries and w.opening_minor == w.closing_minor for w in september.wallets)
    assert [f.card_id for f in september.fees] == [active_first]

    # `cardflow billing run --period 2026-09` again: every customer billed already.
    answer = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["billing", "run", "--period", period],
        env=_cli_env(stack, tmp_path, encryption_keys),
    )
    assert answer.exit_code == 0, answer.output
    again = BillingRunResult.model_validate_json(answer.output)
    assert (again.started, again.already_billed, again.failed) == (0, 2, [])
    one = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["billing", "run", "--period", period, "--customer", first],
        env=_cli_env(stack, tmp_path, encryption_keys),
    )
    assert one.exit_code == 0, one.output
    assert [f.card_id for f in BillingResult.model_validate_json(one.output).fees] == [active_first]
    assert await posted(stack, wallet(first, Currency.USD)) == 1_000 - FEE_USD
    assert await verify(stack.pool) == []


async def test_the_api_bills_a_period_once_and_serves_its_statement(
    stack: RunningStack, tmp_path: Path
) -> None:
    gateway = _gateway(stack, tmp_path)
    period, start = last_month()
    customer_id = await customer(stack, {Currency.USD: 1_000, Currency.EUR: 0})
    card_id = await card(stack, customer_id, Currency.USD, issued_at=start)
    transport = httpx.ASGITransport(app=gateway)
    headers = await api_key_headers(stack.pool, gateway.state.settings)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway", headers=headers
    ) as http:
        started = await http.post(f"/v1/billing/{customer_id}/{period}")
        assert started.status_code == 202, started.text
        assert started.json()["workflow_id"] == billing_workflow_id(customer_id, period)
        await stack.client.get_workflow_handle(started.json()["workflow_id"]).result()
        repeated = await http.post(f"/v1/billing/{customer_id}/{period}")
        assert repeated.status_code == 200 and repeated.json()["replayed"] is True
        status = await http.get(f"/v1/billing/{customer_id}/{period}")
        assert status.json()["stage"] == "billed"
        statement = Statement.model_validate(
            (await http.get(f"/v1/statements/{customer_id}/{period}")).json()
        )
        # The month as it was (the wallet was funded after it); its fee listed.
        assert [w.closing_minor for w in statement.wallets if w.currency is Currency.USD] == [0]
        assert [(f.card_id, f.amount_minor) for f in statement.fees] == [(card_id, 100)]
        refused = await http.post(f"/v1/billing/{customer_id}/2026-13")
        assert (refused.status_code, refused.json()["code"]) == (422, "invalid_request")
        assert refused.json()["detail"][0]["loc"] == ["path", "period"]
        missing = await http.get(f"/v1/statements/{customer_id}/2020-01")
        assert missing.status_code == 404
    # The default policy's fee (1.00 USD), once.
    assert await posted(stack, wallet(customer_id, Currency.USD)) == 1_000 - 100


async def test_a_scheduled_run_bills_the_month_before(stack: RunningStack, tmp_path: Path) -> None:
    last_month = previous_period(datetime.now(UTC))
    start, _ = period_bounds(last_month)
    customer_id = await customer(stack, {Currency.USD: 1_000, Currency.EUR: 0})
    card_id = await card(stack, customer_id, Currency.USD, issued_at=start)

    # What the schedule starts: no period, the run picks the month before its own.
    scheduled = await stack.client.execute_workflow(
        BILLING_RUN_WORKFLOW,
        with_queues(
            BillingRunInput(statements_dir=str(tmp_path / "statements"), billing_policy=POLICY),
            stack.queues,
        ),
        id=f"billing-run/scheduled-test-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queues.workflows,
        result_type=BillingRunResult,
    )

    assert (scheduled.period, scheduled.started) == (last_month, 1)
    status = await billing_status(stack.client, customer_id, last_month)
    assert [(f.card_id, f.status) for f in status.fees] == [(card_id, "charged")]


async def test_a_month_not_over_is_refused_at_every_door_without_charging(
    stack: RunningStack, tmp_path: Path
) -> None:
    """This month and the next are refused: billed early, a month would
    charge before its cards are all issued, write a statement cut short, and
    leave the month billed for the run that comes once it is over."""
    this_month = period_of(datetime.now(UTC))
    _, end = period_bounds(this_month)
    next_month = period_of(end)
    customer_id = await customer(stack, {Currency.USD: 1_000, Currency.EUR: 0})
    await card(stack, customer_id, Currency.USD)

    gateway = _gateway(stack, tmp_path)
    headers = await api_key_headers(stack.pool, gateway.state.settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway), base_url="http://gateway", headers=headers
    ) as http:
        for period in (this_month, next_month):
            for url in (f"/v1/billing/{customer_id}/{period}", f"/v1/billing-runs/{period}"):
                refused = await http.post(url)
                assert refused.status_code == 422, refused.text
                assert refused.json()["code"] == "period_not_ended"
                assert refused.json()["detail"][0]["loc"] == ["path", "period"]
    answer = CliRunner().invoke(app, ["billing", "run", "--period", this_month])
    assert answer.exit_code == 2, answer.output
    assert "period: " in answer.output and "has not ended" in answer.output
    with pytest.raises(ValueError, match="has not ended"):
        await bill(stack.client, stack.queues, request(customer_id, this_month, tmp_path))
    for period in (this_month, next_month):
        never = stack.client.get_workflow_handle(billing_workflow_id(customer_id, period))
        with pytest.raises(RPCError):
            await never.describe()

    # Started past the starters, the process and the driver fail at once,
    # non-retryably, charging nothing.
    for period, why in ((this_month, "has not ended"), (next_month, "has not begun")):
        with pytest.raises(WorkflowFailureError) as failed:
            await stack.client.execute_workflow(
                BILLING_WORKFLOW,
                with_queues(request(customer_id, period, tmp_path), stack.queues),
                id=f"{billing_workflow_id(customer_id, period)}/t-{uuid.uuid4().hex[:8]}",
                task_queue=stack.queues.workflows,
            )
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError)
        assert (cause.type, cause.non_retryable) == ("PeriodNotEnded", True)
        assert why in cause.message
    with pytest.raises(WorkflowFailureError) as driver_failed:
        await stack.client.execute_workflow(
            BILLING_RUN_WORKFLOW,
            with_queues(
                BillingRunInput(period=this_month, statements_dir=str(tmp_path / "statements")),
                stack.queues,
            ),
            id=f"billing-run/test-{uuid.uuid4().hex[:8]}",
            task_queue=stack.queues.workflows,
        )
    driver_cause = driver_failed.value.cause
    assert isinstance(driver_cause, ApplicationError) and driver_cause.type == "PeriodNotEnded"
    assert await posted(stack, wallet(customer_id, Currency.USD)) == 1_000


async def test_more_cards_than_the_limit_fail_the_billing_without_charging_part(
    stack: RunningStack, tmp_path: Path
) -> None:
    period, start = last_month()
    customer_id = await customer(stack, {Currency.USD: 1_000, Currency.EUR: 0})
    for _ in range(2):
        await card(stack, customer_id, Currency.USD, issued_at=start)
    limited = request(customer_id, period, tmp_path).model_copy(
        update={"policy": POLICY.model_copy(update={"cards_max": 1})}
    )

    with pytest.raises(WorkflowFailureError) as refused:
        await bill(stack.client, stack.queues, limited)

    assert "more than 1 cards" in str(refused.value.cause.__cause__ or refused.value.cause)
    assert await posted(stack, wallet(customer_id, Currency.USD)) == 1_000


async def test_a_cancellation_during_a_fee_records_it_charged_and_ends_cancelled(
    stack: RunningStack, tmp_path: Path
) -> None:
    period, start = last_month()
    customer_id = await customer(stack, {Currency.USD: 1_000, Currency.EUR: 0})
    card_id = await card(stack, customer_id, Currency.USD, issued_at=start)
    fees_before = await _fees(stack, Currency.USD)
    usd_wallet = wallet(customer_id, Currency.USD)
    async with balances_locked(stack.database_url, usd_wallet) as lock:
        handle = await start_billing(
            stack.client, stack.queues, request(customer_id, period, tmp_path)
        )
        # The card's fee waits for the wallet; the process is cancelled there.
        await until_waiting(stack.pool, lock)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    # The wallet free again, the interrupted fee is charged after all.
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    assert await posted(stack, usd_wallet) == 1_000 - FEE_USD
    assert await _fees(stack, Currency.USD) == fees_before + FEE_USD
    status = await billing_status(stack.client, customer_id, period)
    assert status.stage == "cancelled"
    assert [(f.card_id, f.status, f.amount_minor) for f in status.fees] == [
        (card_id, "charged", FEE_USD)
    ]
    description = await handle.describe()
    assert description.typed_search_attributes.get(PROCESS_STATUS) == "cancelled"

    # A cancelled period may be billed again: the same fee, charged once.
    again = await bill(stack.client, stack.queues, request(customer_id, period, tmp_path))
    assert [(f.card_id, f.status, f.transfer_id) for f in again.fees] == [
        (card_id, "charged", status.fees[0].transfer_id)
    ]
    assert await posted(stack, usd_wallet) == 1_000 - FEE_USD
    assert await verify(stack.pool) == []


async def test_a_run_cancelled_while_it_reads_a_page_of_customers_ends_cancelled(
    stack: RunningStack, tmp_path: Path
) -> None:
    period = previous_period(datetime.now(UTC))
    async with table_locked(stack.database_url, "cards") as lock:
        handle = await stack.client.start_workflow(
            BILLING_RUN_WORKFLOW,
            with_queues(
                BillingRunInput(period=period, statements_dir=str(tmp_path / "statements")),
                stack.queues,
            ),
            id=f"billing-run/cancelled-test-{uuid.uuid4().hex[:8]}",
            task_queue=stack.queues.workflows,
            result_type=BillingRunResult,
        )
        # The page of customers waits for the cards table; the run is cancelled there.
        await until_waiting(stack.pool, lock)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    status = await handle.query(BillingRun.status)
    assert (status.stage, status.started, status.failed) == ("cancelled", 0, [])
    description = await handle.describe()
    assert description.typed_search_attributes.get(PROCESS_STATUS) == "cancelled"


async def test_the_demo_bills_the_month_before_and_says_where_the_statement_is(
    stack: RunningStack, tmp_path: Path
) -> None:
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path), CARDFLOW_TASK_QUEUE_PREFIX=stack.queues.prefix
    )
    period, start = last_month()
    customer_id = await customer(stack, {Currency.USD: 1_000, Currency.EUR: 0})
    await card(stack, customer_id, Currency.USD, issued_at=start)
    said: list[tuple[str, str | None]] = []

    await demo_statement(
        stack.client, settings, lambda text, wid: said.append((text, wid)), customer_id
    )

    ((text, workflow_id),) = said
    assert f"for {period} (1 active cards" in text
    html_path = tmp_path / "statements" / customer_id / f"{period}.html"
    assert str(html_path.resolve()) in text
    assert workflow_id == billing_workflow_id(customer_id, period)
    assert "Statement for" in _read(html_path)


async def test_the_monthly_schedule_is_created_once_however_often_ensure_runs(
    stack: RunningStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import starters.schedules as schedules

    # The registry holds billing's schedule once.
    assert [s.schedule_id for s in schedules.SCHEDULES].count(BILLING_SCHEDULE_ID) == 1
    # Under an id of this test's own: the Temporal server is shared by the suite.
    schedule_id = f"{BILLING_SCHEDULE_ID}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(
        schedules,
        "SCHEDULES",
        [schedules.ScheduleSpec(schedule_id, billing_schedule, "monthly billing (test)")],
    )
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path), CARDFLOW_TASK_QUEUE_PREFIX=stack.queues.prefix
    )
    outcomes = [await schedules.ensure_schedules(stack.client, settings) for _ in range(3)]
    assert outcomes == [
        {schedule_id: "created"},
        {schedule_id: "exists"},
        {schedule_id: "exists"},
    ]
    handle = stack.client.get_schedule_handle(schedule_id)
    try:
        description = await handle.describe()
        action = description.schedule.action
        assert getattr(action, "workflow", None) == BILLING_RUN_WORKFLOW
        assert getattr(action, "task_queue", None) == stack.queues.workflows
        (calendar,) = description.schedule.spec.calendars
        assert [r.start for r in calendar.day_of_month] == [1]
        listed = [s.id async for s in await stack.client.list_schedules()]
        assert listed.count(schedule_id) <= 1
    finally:
        await handle.delete()


def _read(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8")


def _gateway(stack: RunningStack, home: Path) -> Any:
    """The HTTP API on this test's workers and database, in process."""
    from starters.gateway.app import create_app

    settings = load_settings(
        CARDFLOW_HOME=str(home), CARDFLOW_TASK_QUEUE_PREFIX=stack.queues.prefix
    )
    gateway = create_app(settings, client=stack.client, pool=stack.pool)
    gateway.state.client, gateway.state.pool = stack.client, stack.pool
    return gateway


def _cli_env(
    stack: RunningStack, home: Path, encryption_keys: list[tuple[str, bytes]]
) -> dict[str, str]:
    """What `cardflow` needs to reach this test's server and queues."""
    keys = ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in encryption_keys)
    return {
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "CARDFLOW_ENCRYPTION_KEYS": keys,
        "CARDFLOW_TASK_QUEUE_PREFIX": stack.queues.prefix,
        "CARDFLOW_HOME": str(home),
    }


async def _fees(stack: RunningStack, currency: Currency) -> int:
    ledger = Ledger(stack.pool)
    await ledger.open_account(system_account(revenue_fees(currency)))
    return await posted(stack, revenue_fees(currency))
