"""Program funding against the issuer, bank, Tron and notification
simulators: a falling program balance funded once (the bank's wire, the
issuer's funding, one posting), a funding still pending counted so the next
run funds nothing more, a wire whose answer is lost and a worker killed
before the issuer is told, a run stopped there and the next one telling the
issuer; coverage under the threshold, a refused wire, custody's missing
money, bank statement lines the ledger lacks; the schedule, the command and
the gauges the alert rules read."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
)
from temporalio.worker import Worker
from typer.testing import CliRunner

from activities.ledger import Ledger
from activities.ledger.verify import verify
from activities.metrics import PROGRAM_FUNDING_NAMES
from activities.program_funding import (
    ANNOUNCE_FUNDING,
    RECORD_RUN,
    LedgerEntry,
    ProgramFundingLedgerActivities,
    check_statement,
    statement_keys,
    topup_credit_key,
    withdrawal_hold_key,
    withdrawal_post_key,
    withdrawal_return_key,
)
from activities.providers.bank import BankClient
from activities.providers.notify import NotifyClient
from schemas import accounts
from schemas.bank import Payout, StatementLine
from schemas.issuer import ProgramFunding as IssuerProgramFunding
from schemas.money import Currency
from schemas.program_funding import (
    COVERAGE_BPS_MAX,
    STATUS_COVERAGE_LOW,
    STATUS_COVERED,
    STATUS_DRIFT,
    STATUS_FUNDED,
    BankCheck,
    BankDrift,
    BankDriftKind,
    CurrencyFunding,
    CustodyCheck,
    FundingRecord,
    ProgramFundingInput,
    ProgramFundingPolicy,
    ProgramFundingReport,
    coverage_bps,
    funding_minor,
    spend_per_day_minor,
    target_minor,
    wire_posting_key,
)
from schemas.reconciliation import OPERATORS_EMAIL_DEFAULT
from schemas.search import PROCESS_STATUS
from starters import program_funding as starter
from starters import schedules
from starters.cli import app
from tests import polling
from tests.conftest import Platform
from tests.customers import customer, issuer, open_card, wallet_becomes
from tests.metrics import prometheus_runtime, scrape
from tests.workflows.test_bounded_steps import current_details
from tests.workflows.test_reconciliation import clear
from workers.monitoring import MADE_AT_FIRST_EVENT
from workers.settings import load_settings
from workflows.program_funding import PROGRAM_FUNDING_WORKFLOW
from workflows.topup import topup_workflow_id
from workflows.withdrawal import withdrawal_workflow_id

# Fast and small: the spend of one day, a wire of one day, whole 50.00 steps;
# the statement's lines are judged at once; custody holds nothing of its own.
POLICY = ProgramFundingPolicy(
    currencies=[Currency.USD],
    spend_window_days=1,
    wire_lead_days=1,
    safety_factor_bps=15_000,
    funding_step_minor={Currency.USD: 5_000},
    coverage_alert_bps=10_000,
    bank_currencies=[Currency.USD],
    statement_grace_seconds=0,
    custody_opening_minor=0,
)
ADA_IBAN = "DE89370400440532013000"
# How long at least before a failed announcement's next attempt a test acts.
ANNOUNCEMENT_QUIET_MIN = timedelta(milliseconds=500)


def arrange(platform: Platform, usd_minor: int, *, lead_seconds: int = 0) -> None:
    """The program's USD balance at the issuer opens at `usd_minor`; a wire
    reaches it `lead_seconds` after it is announced; custody holds nothing
    but what the ledger knows of."""
    platform.sim.admin(
        "PUT",
        "/options/issuer",
        {"program_balances": {"USD": usd_minor}, "funding_lead_seconds": lead_seconds},
    )
    platform.sim.admin("PUT", "/options/tron", {"custody_opening_balance": 0})


def run_id() -> str:
    return f"program-funding-test-{uuid.uuid4().hex[:10]}"


async def start(
    platform: Platform, policy: ProgramFundingPolicy = POLICY, workflow_id: str | None = None
) -> Any:
    queues = platform.stack.queues
    return await starter.start(
        platform.stack.client,
        queues,
        starter.program_funding_input(queues, policy),
        workflow_id or run_id(),
    )


async def run(
    platform: Platform, policy: ProgramFundingPolicy = POLICY, workflow_id: str | None = None
) -> ProgramFundingReport:
    report: ProgramFundingReport = await (await start(platform, policy, workflow_id)).result()
    return report


def bank(platform: Platform) -> BankClient:
    return BankClient(platform.sim.provider_url("bank"))


async def payouts(platform: Platform, reference: str) -> list[Payout]:
    async with bank(platform) as client:
        return await client.payouts_by_reference(reference)


async def fundings(platform: Platform, reference: str) -> list[IssuerProgramFunding]:
    async with issuer(platform) as client:
        return await client.program_fundings_by_reference(reference)


async def program_balance(platform: Platform) -> int:
    async with issuer(platform) as client:
        balances = await client.program_balances()
    return next(b.available_minor for b in balances if b.currency is Currency.USD)


async def posted(platform: Platform, code: str) -> int:
    """An account's posted balance, credits less debits."""
    return (await Ledger(platform.stack.pool).balance(code)).posted


async def postings(platform: Platform, reference: str) -> int:
    """How many ledger transfers the funding's wire was posted as."""
    found: int = await platform.stack.pool.fetchval(
        "SELECT count(*) FROM ledger_transfers WHERE idempotency_key = $1",
        wire_posting_key(reference),
    )
    return found


async def operators_mail(platform: Platform) -> list[str]:
    async with NotifyClient(platform.sim.provider_url("notify")) as notify:
        page = await notify.list_messages(to=OPERATORS_EMAIL_DEFAULT)
    return [f"{message.subject}\n{message.body}" for message in page.data]


async def announcement_waits_to_retry(handle: Any) -> None:
    """Until the issuer's announcement has failed and waits for its next
    attempt, half a second away at least: meanwhile none of it runs."""

    async def waiting() -> bool:
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if (
                pending.activity_type.name == ANNOUNCE_FUNDING
                and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
                and pending.HasField("last_failure")
            ):
                next_attempt = pending.next_attempt_schedule_time.ToDatetime(tzinfo=UTC)
                return bool(next_attempt - datetime.now(UTC) > ANNOUNCEMENT_QUIET_MIN)
        return False

    await polling.eventually(waiting, "the announcement waits to be retried", 30)


def only(report: ProgramFundingReport) -> CurrencyFunding:
    [usd] = report.currencies
    return usd


def figures(usd: CurrencyFunding) -> tuple[int, ...]:
    return (
        usd.issuer_balance_minor,
        usd.pending_minor,
        usd.customers_minor,
        usd.spend_window_minor,
        usd.spend_per_day_minor,
        usd.target_minor,
        usd.shortfall_minor,
        usd.funded_minor,
        usd.coverage_bps,
    )


# ----- coverage and funding --------------------------------------------------------


async def test_a_falling_program_balance_is_funded_once_wired_announced_and_posted(
    platform: Platform,
) -> None:
    arrange(platform, 25_000)
    customer_id, card_id, _ = await open_card(platform, {Currency.USD: 20_000})

    first = await run(platform)
    # Target: the customers' 200.00, no spend yet; the issuer holds 250.00.
    assert figures(only(first)) == (25_000, 0, 20_000, 0, 0, 20_000, -5_000, 0, 12_500)
    assert first.stage == STATUS_COVERED
    assert await payouts(platform, f"{first.workflow_id}/USD") == []

    await clear(platform, card_id, 8_000)
    await wallet_becomes(platform, customer_id, 12_000, 0)
    second = await run(platform)
    usd = only(second)
    # 80.00 spent in the day, a day's lead x 1.5: target 120.00 + 120.00;
    # the issuer holds 170.00: 70.00 short, wired as two 50.00 steps.
    assert figures(usd) == (17_000, 0, 12_000, 8_000, 8_000, 24_000, 7_000, 10_000, 22_500)
    assert second.stage == STATUS_FUNDED and not usd.coverage_low and usd.refused is None
    reference = f"{second.workflow_id}/USD"
    assert (usd.funding_id, usd.funding_status) == (reference, "credited")
    [payout] = await payouts(platform, reference)
    assert (payout.id, payout.amount_minor, payout.destination_iban, payout.status) == (
        usd.payout_id,
        10_000,
        POLICY.issuer_account.iban,
        "accepted",
    )
    [funding] = await fundings(platform, reference)
    assert (funding.id, funding.amount_minor, funding.status.value) == (
        usd.issuer_funding_id,
        10_000,
        "credited",
    )
    assert await program_balance(platform) == 27_000
    assert await postings(platform, reference) == 1
    # Posted once: the issuer's prefunding debited, the bank's outbound credited.
    assert await posted(platform, accounts.issuer_prefunding(Currency.USD)) == -10_000
    assert await posted(platform, accounts.bank_outbound(Currency.USD)) == 10_000
    # The wire is the statement's one line, and the ledger has it.
    [statement] = second.bank
    assert (statement.lines, statement.matched, statement.drift_counts) == (1, 1, {})
    assert second.custody is not None and second.custody.missing_minor == 0
    assert await operators_mail(platform) == []
    assert await verify(platform.stack.pool) == []


async def test_a_funding_still_pending_at_the_issuer_counts_so_the_next_run_funds_nothing(
    platform: Platform,
) -> None:
    arrange(platform, 5_000, lead_seconds=3_600)
    await customer(platform, {Currency.USD: 20_000})

    first = await run(platform)
    usd = only(first)
    assert figures(usd) == (5_000, 0, 20_000, 0, 0, 20_000, 15_000, 15_000, 2_500)
    assert usd.funding_status == "pending" and usd.coverage_low
    assert first.stage == STATUS_COVERAGE_LOW

    second = await run(platform)
    again = only(second)
    # The wire on its way counts: nothing is short, nothing more is wired;
    # the issuer still holds 50.00 of the customers' 200.00.
    assert figures(again) == (5_000, 15_000, 20_000, 0, 0, 20_000, 0, 0, 2_500)
    assert (again.funding_id, again.payout_id) == (None, None)
    assert second.stage == STATUS_COVERAGE_LOW
    assert await payouts(platform, f"{second.workflow_id}/USD") == []
    [payout] = await payouts(platform, usd.funding_id or "")
    assert payout.amount_minor == 15_000
    assert await posted(platform, accounts.bank_outbound(Currency.USD)) == 15_000

    # The wire arrives: covered, with nothing pending.
    async with issuer(platform) as client:
        await client.simulate_program_funding_credited(
            usd.issuer_funding_id or "", idempotency_key=f"credit-{usd.issuer_funding_id}"
        )
    third = await run(platform)
    assert figures(only(third)) == (20_000, 0, 20_000, 0, 0, 20_000, 0, 0, 10_000)
    assert third.stage == STATUS_COVERED
    assert await verify(platform.stack.pool) == []


async def test_coverage_under_the_threshold_ends_coverage_low_searchable_saying_how_far(
    platform: Platform,
) -> None:
    arrange(platform, 5_000)
    # The bank holds too little to wire the 150.00 short.
    platform.sim.admin("PUT", "/options/bank", {"opening_balances": {"USD": 1_000}})
    await customer(platform, {Currency.USD: 20_000})
    handle = await start(platform)
    report: ProgramFundingReport = await handle.result()
    usd = only(report)
    assert figures(usd) == (5_000, 0, 20_000, 0, 0, 20_000, 15_000, 0, 2_500)
    assert usd.refused is not None and "insufficient_funds" in usd.refused
    assert (usd.funding_id, usd.payout_id) == (f"{report.workflow_id}/USD", None)
    # Low coverage outranks the refused wire; both are said.
    assert report.stage == STATUS_COVERAGE_LOW
    described = await handle.describe()
    assert described.typed_search_attributes.get(PROCESS_STATUS) == STATUS_COVERAGE_LOW
    details = await current_details(handle)
    assert details.startswith(f"**{STATUS_COVERAGE_LOW}**")
    assert "coverage 2500 bps, **7500 bps under the 10000 bps alert**" in details
    assert "NOT funded: the bank refused the wire" in details
    # Operators find it with the README's saved query, and were e-mailed once.
    query = f'WorkflowType = "{PROGRAM_FUNDING_WORKFLOW}" AND ProcessStatus = "coverage low"'

    async def found() -> set[str]:
        return {e.id async for e in platform.stack.client.list_workflows(query)}

    await polling.until(found, lambda ids: handle.id in ids, "the run found by its status")
    [mail] = await operators_mail(platform)
    assert mail.startswith(f"{handle.id}: {STATUS_COVERAGE_LOW}\n")
    assert "7500 bps under the 10000 bps alert" in mail
    assert report.operators_notified
    assert await payouts(platform, f"{report.workflow_id}/USD") == []
    assert await verify(platform.stack.pool) == []


async def test_a_lost_wire_answer_and_a_worker_killed_before_the_issuer_still_make_one_of_each(
    platform: Platform,
) -> None:
    arrange(platform, 5_000)
    await customer(platform, {Currency.USD: 20_000})
    # The bank makes the wire, but its answer never comes; the issuer is
    # unavailable until the test says.
    platform.sim.fault(
        path_prefix="/bank/v1/payouts", method="POST", kind="answer_lost", seconds=6, times=1
    )
    platform.sim.fault(
        path_prefix="/issuer/v1/program/fundings", method="POST", kind="error", status=503
    )
    handle = await start(platform)
    reference = f"{handle.id}/USD"
    # The wire was made, found by its reference and posted; the issuer refused.
    await announcement_waits_to_retry(handle)
    async with platform.stack.workflows_worker_away():
        platform.sim.admin("DELETE", "/faults")
        # The issuer is told with no workflows worker to hear of it.
        await polling.until(lambda: fundings(platform, reference), bool, "the issuer told", 30)
    report: ProgramFundingReport = await handle.result()
    usd = only(report)
    assert (usd.funded_minor, usd.funding_status, usd.coverage_low) == (15_000, "credited", False)
    [payout] = await payouts(platform, reference)
    [funding] = await fundings(platform, reference)
    assert (payout.id, payout.amount_minor) == (usd.payout_id, 15_000)
    assert (funding.id, funding.amount_minor) == (usd.issuer_funding_id, 15_000)
    assert await program_balance(platform) == 20_000
    assert await postings(platform, reference) == 1
    assert await posted(platform, accounts.bank_outbound(Currency.USD)) == 15_000
    assert report.stage == STATUS_FUNDED
    assert await verify(platform.stack.pool) == []


async def test_a_run_stopped_between_the_wire_and_the_issuer_is_completed_by_the_next_run(
    platform: Platform,
) -> None:
    arrange(platform, 5_000)
    await customer(platform, {Currency.USD: 20_000})
    platform.sim.fault(
        path_prefix="/issuer/v1/program/fundings", method="POST", kind="error", status=503
    )
    stopped = await start(platform)
    reference = f"{stopped.id}/USD"
    await announcement_waits_to_retry(stopped)
    await stopped.terminate(reason="stopped between the wire and the issuer")
    platform.sim.admin("DELETE", "/faults")
    assert await fundings(platform, reference) == []

    report = await run(platform)
    usd = only(report)
    # The wire already sent counts as pending: nothing more is wired.
    assert figures(usd) == (5_000, 15_000, 20_000, 0, 0, 20_000, 0, 0, 10_000)
    [recovered] = report.recovered
    assert (recovered.reference, recovered.state, recovered.amount_minor) == (
        reference,
        "credited",
        15_000,
    )
    [payout] = await payouts(platform, reference)
    [funding] = await fundings(platform, reference)
    assert (payout.amount_minor, funding.amount_minor, funding.id) == (
        15_000,
        15_000,
        recovered.funding_id,
    )
    assert await payouts(platform, f"{report.workflow_id}/USD") == []
    assert await program_balance(platform) == 20_000
    assert await postings(platform, reference) == 1
    assert await posted(platform, accounts.bank_outbound(Currency.USD)) == 15_000
    assert report.stage == STATUS_COVERED
    assert await verify(platform.stack.pool) == []


# ----- reconciliation ----------------------------------------------------------------


async def test_custody_missing_money_is_drift_of_its_exact_amount(platform: Platform) -> None:
    arrange(platform, 10**9)
    policy = POLICY.model_copy(update={"custody_opening_minor": 5_000_000})
    platform.sim.admin("PUT", "/options/tron", {"custody_opening_balance": 5_000_000})
    clean = await run(platform, policy)
    assert clean.custody == CustodyCheck(
        custodian_minor=5_000_000, opening_minor=5_000_000, ledger_minor=0, missing_minor=0
    )
    assert clean.stage == STATUS_COVERED

    platform.sim.admin("PUT", "/options/tron", {"custody_drift_minor": 1_234_567})
    drifted = await run(platform, policy)
    assert drifted.custody == CustodyCheck(
        custodian_minor=3_765_433, opening_minor=5_000_000, ledger_minor=0, missing_minor=1_234_567
    )
    assert drifted.stage == STATUS_DRIFT
    [mail] = await operators_mail(platform)
    assert "**1.234567 USDT missing**" in mail


async def test_bank_statement_lines_the_ledger_lacks_are_drift_by_kind(platform: Platform) -> None:
    arrange(platform, 10**9)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    async with bank(platform) as client:
        # Credited by its top-up: matched.
        credited = await client.simulate_inbound_transfer(
            reference=customer_id,
            amount_minor=5_000,
            currency=Currency.USD,
            sender_name="Ada Lovelace",
            idempotency_key=f"in-{uuid.uuid4()}",
        )
        # Nobody's: it waits for an operator, never credited.
        unmatched = await client.simulate_inbound_transfer(
            reference=f"nobody-{uuid.uuid4().hex[:8]}",
            amount_minor=7_000,
            currency=Currency.USD,
            sender_name="Someone",
            idempotency_key=f"in-{uuid.uuid4()}",
        )
        # Paid out by hand, outside any withdrawal.
        by_hand = await client.create_payout(
            amount_minor=3_000,
            currency=Currency.USD,
            iban=ADA_IBAN,
            name="Ada Lovelace",
            reference=f"by-hand-{uuid.uuid4().hex[:8]}",
            idempotency_key=f"out-{uuid.uuid4()}",
        )

    async def credit_posted() -> bool:
        found = await platform.stack.pool.fetchval(
            "SELECT count(*) FROM ledger_transfers WHERE idempotency_key = $1",
            topup_credit_key(credited.id),
        )
        return bool(found == 1)

    await polling.eventually(credit_posted, "the top-up credited")
    report = await run(platform)
    [check] = report.bank
    assert (check.lines, check.matched, check.in_flight) == (3, 1, 0)
    assert check.drift_counts == {
        BankDriftKind.INBOUND_NOT_CREDITED: 1,
        BankDriftKind.PAYOUT_NOT_POSTED: 1,
    }
    assert [
        (d.kind, d.source_id, d.reference, d.bank_minor, d.ledger_minor) for d in check.drift
    ] == [
        (BankDriftKind.INBOUND_NOT_CREDITED, unmatched.id, unmatched.reference, 7_000, 0),
        (BankDriftKind.PAYOUT_NOT_POSTED, by_hand.id, by_hand.reference, -3_000, 0),
    ]
    assert report.stage == STATUS_DRIFT
    [mail] = await operators_mail(platform)
    assert "inbound_not_credited 1, payout_not_posted 1" in mail

    # With the default grace, a day-old line is still in flight: no drift.
    patient = await run(platform, POLICY.model_copy(update={"statement_grace_seconds": 3_600}))
    [check] = patient.bank
    assert (check.matched, check.in_flight, check.drift_counts) == (1, 2, {})
    assert patient.stage == STATUS_COVERED
    topup = platform.stack.client.get_workflow_handle(topup_workflow_id("bank", unmatched.id))
    await topup.terminate(reason="the test is over")


def line(kind: str, amount: int, reference: str, source: str, at: str) -> StatementLine:
    return StatementLine(
        id=f"stl_{uuid.uuid4().hex[:6]}",
        kind=kind,  # type: ignore[arg-type]
        amount_minor=amount,
        currency=Currency.USD,
        reference=reference,
        source_id=source,
        at=at,
    )


OLD = "2026-01-01T00:00:00+00:00"
YOUNG = "2026-01-02T12:00:00+00:00"
CUTOFF = datetime(2026, 1, 2, tzinfo=UTC)


def test_withdrawal_payouts_match_when_posted_and_wait_while_held() -> None:
    """Every way a withdrawal's payout stands against the ledger, read from
    the keys the withdrawal posts under."""
    lines = [
        line("payout", -2_000, "w-paid", "po_1", OLD),
        line("payout", -3_000, "w-held", "po_2", OLD),
        line("payout", -4_000, "w-failed", "po_3", OLD),
        line("payout_failed", 4_000, "w-failed", "po_3", OLD),
        line("payout", -5_000, "w-returned", "po_4", OLD),
        line("payout_returned", 5_000, "w-returned", "po_4", OLD),
        line("payout", -6_000, "w-unreturned", "po_5", OLD),
        line("payout_returned", 6_000, "w-unreturned", "po_5", OLD),
        line("payout", -7_000, "w-short", "po_6", OLD),
        line("payout", -8_000, "w-young", "po_7", YOUNG),
    ]
    ledger = {
        withdrawal_post_key("w-paid"): LedgerEntry("post_pending", 2_000),
        withdrawal_hold_key("w-held"): LedgerEntry("pending", 3_000, open=True),
        withdrawal_hold_key("w-failed"): LedgerEntry("pending", 4_000),
        withdrawal_post_key("w-returned"): LedgerEntry("post_pending", 5_000),
        withdrawal_return_key("w-returned", "po_4"): LedgerEntry("posted", 5_000),
        withdrawal_post_key("w-unreturned"): LedgerEntry("post_pending", 6_000),
        withdrawal_post_key("w-short"): LedgerEntry("post_pending", 6_500),
    }
    assert set(ledger) <= set(statement_keys(lines))
    check = check_statement(Currency.USD, lines, ledger, CUTOFF)
    assert (check.lines, check.matched, check.in_flight) == (10, 6, 2)
    assert check.drift_counts == {
        BankDriftKind.RETURN_NOT_CREDITED: 1,
        BankDriftKind.PAYOUT_AMOUNT_DIFFERS: 1,
    }
    assert [(d.kind, d.reference, d.bank_minor, d.ledger_minor) for d in check.drift] == [
        (BankDriftKind.RETURN_NOT_CREDITED, "w-unreturned", 6_000, 0),
        (BankDriftKind.PAYOUT_AMOUNT_DIFFERS, "w-short", -7_000, -6_500),
    ]


def test_a_top_up_credit_taken_back_leaves_its_transfer_uncredited() -> None:
    credit = topup_credit_key("ibt_1")
    lines = [line("inbound_transfer", 9_000, "c-1", "ibt_1", OLD)]
    reversed_ = {
        credit: LedgerEntry("posted", 9_000),
        f"{credit}/reversal": LedgerEntry("posted", 9_000),
    }
    assert check_statement(Currency.USD, lines, reversed_, CUTOFF).drift_counts == {
        BankDriftKind.INBOUND_NOT_CREDITED: 1
    }
    other = {credit: LedgerEntry("posted", 8_000)}
    [drift] = check_statement(Currency.USD, lines, other, CUTOFF).drift
    assert (drift.kind, drift.bank_minor, drift.ledger_minor) == (
        BankDriftKind.INBOUND_AMOUNT_DIFFERS,
        9_000,
        8_000,
    )


def test_the_keys_matched_are_the_ones_top_ups_and_withdrawals_post_under() -> None:
    assert topup_credit_key("ibt_9") == f"{topup_workflow_id('bank', 'ibt_9')}/credit/principal"
    assert withdrawal_post_key("w-9") == f"{withdrawal_workflow_id('w-9')}/post/amount"
    assert withdrawal_hold_key("w-9") == f"{withdrawal_workflow_id('w-9')}/hold/amount"
    assert withdrawal_return_key("w-9", "po_9") == f"{withdrawal_workflow_id('w-9')}/return/po_9"


def test_the_target_the_step_and_the_coverage_round_the_safe_way() -> None:
    policy = POLICY.model_copy(update={"wire_lead_days": 2, "safety_factor_bps": 12_345})
    # 1,000 over 3 days is 333.33...: 334 a day; x 2 days x 1.2345 = 824.646: 825.
    assert spend_per_day_minor(1_000, 3) == 334
    assert target_minor(10_000, 334, policy) == 10_825
    assert target_minor(-5, 0, policy) == 0
    assert funding_minor(1, 5_000, 10**9) == 5_000
    assert funding_minor(10_001, 5_000, 10**9) == 15_000
    assert funding_minor(10_001, 5_000, 12_000) == 12_000
    assert funding_minor(0, 5_000, 10**9) == funding_minor(-1, 5_000, 10**9) == 0
    assert coverage_bps(9_999, 10_000) == 9_999
    assert coverage_bps(-1, 10_000) == -1
    assert coverage_bps(5, 0) == COVERAGE_BPS_MAX
    assert coverage_bps(10**12, 1) == COVERAGE_BPS_MAX


# ----- the schedule, the command, the gauges -------------------------------------------


async def test_the_schedule_is_ensured_once_and_runs_the_process(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrange(platform, 10**9)
    specs = [s for s in schedules.SCHEDULES if s.schedule_id == starter.PROGRAM_FUNDING_SCHEDULE_ID]
    assert [s.build for s in specs] == [starter.program_funding_schedule]
    # Under an id of this test's own: the Temporal server is shared by the suite.
    schedule_id = f"{starter.PROGRAM_FUNDING_SCHEDULE_ID}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(
        schedules,
        "SCHEDULES",
        [schedules.ScheduleSpec(schedule_id, starter.program_funding_schedule, "test")],
    )
    client = platform.stack.client
    outcomes = [await schedules.ensure_schedules(client, platform.settings) for _ in range(2)]
    assert outcomes == [{schedule_id: "created"}, {schedule_id: "exists"}]
    handle = client.get_schedule_handle(schedule_id)
    try:
        described = await handle.describe()
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.task_queue) == (
            PROGRAM_FUNDING_WORKFLOW,
            platform.stack.queues.workflows,
        )
        assert described.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
        [interval] = described.schedule.spec.intervals
        assert interval.every == starter.PROGRAM_FUNDING_INTERVAL == timedelta(hours=1)
        await handle.trigger()

        async def started() -> list[str]:
            info = (await handle.describe()).info
            return [
                action.action.workflow_id
                for action in info.recent_actions
                if isinstance(action.action, ScheduleActionExecutionStartWorkflow)
            ]

        [workflow_id] = await polling.until(started, bool, "the schedule started a run")
        report = await client.get_workflow_handle(
            workflow_id, result_type=ProgramFundingReport
        ).result()
        assert workflow_id.startswith(f"{starter.PROGRAM_FUNDING_SCHEDULE_ID}-")
        # The production policy: USD and EUR, nobody's money to cover yet.
        assert [c.currency for c in report.currencies] == [Currency.USD, Currency.EUR]
        assert [c.coverage_bps for c in report.currencies] == [COVERAGE_BPS_MAX] * 2
        assert report.stage == STATUS_COVERED
    finally:
        await handle.delete()


async def test_the_funding_command_runs_a_process_and_reads_a_run(
    platform: Platform, tmp_path: Path, encryption_keys: list[tuple[str, bytes]]
) -> None:
    arrange(platform, 5_000)
    await customer(platform, {Currency.USD: 20_000})
    stack = platform.stack
    keys = ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in encryption_keys)
    env = {
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "CARDFLOW_ENCRYPTION_KEYS": keys,
        "CARDFLOW_TASK_QUEUE_PREFIX": stack.queues.prefix,
        "CARDFLOW_HOME": str(tmp_path),
        # The deployment's providers: the platform's simulators, not the CLI's own.
        "CARDFLOW_PROVIDERS_URL": platform.sim.url,
    }
    ran = await asyncio.to_thread(CliRunner().invoke, app, ["funding", "run"], env=env)
    assert ran.exit_code == 0, ran.output
    first, second, *rest = ran.output.splitlines()
    workflow_id = first.split(": ")[0]
    assert workflow_id.startswith("program-funding-manual-")
    assert second == f"{workflow_id}: {STATUS_FUNDED}"
    # 150.00 short, wired as the production policy's one 10,000.00 step.
    assert any(
        text.startswith("USD: issuer 50.00 USD (+0.00 USD pending), customers 200.00 USD")
        and f"funded 10000.00 USD as {workflow_id}/USD (credited)" in text
        for text in rest
    ), rest
    read = await asyncio.to_thread(
        CliRunner().invoke, app, ["funding", "status", "--id", workflow_id], env=env
    )
    assert read.exit_code == 0, read.output
    assert read.output.splitlines()[0] == f"{workflow_id}: {STATUS_FUNDED}"


@workflow.defn(name="RecordsProgramFunding", sandboxed=False)
class RecordsProgramFunding:
    @workflow.run
    async def run(self, record: FundingRecord) -> None:
        await workflow.execute_activity(
            RECORD_RUN, record, start_to_close_timeout=timedelta(seconds=10)
        )


async def test_a_run_sets_the_gauges_the_alert_rules_read(platform: Platform) -> None:
    """The rules read these names: a run's record sets every one (a healthy
    stack shows them only once a run has, hence made at the first event)."""
    assert set(PROGRAM_FUNDING_NAMES) <= MADE_AT_FIRST_EVENT
    runtime, port = prometheus_runtime()
    config = platform.stack.client.config()
    client = await Client.connect(
        platform.stack.client.service_client.config.target_host,
        namespace=platform.stack.client.namespace,
        runtime=runtime,
        data_converter=config["data_converter"],
    )
    queue = f"program-funding-gauges-{uuid.uuid4().hex[:8]}"
    report = ProgramFundingReport(
        workflow_id="program-funding-gauges",
        stage=STATUS_DRIFT,
        as_of=datetime(2026, 3, 1, tzinfo=UTC),
        currencies=[
            CurrencyFunding(
                currency=Currency.USD,
                issuer_balance_minor=5_000,
                pending_minor=0,
                customers_minor=20_000,
                spend_window_minor=0,
                spend_per_day_minor=0,
                target_minor=20_000,
                shortfall_minor=15_000,
                coverage_bps=2_500,
                coverage_low=True,
            )
        ],
        bank=[
            BankCheck(
                currency=Currency.USD,
                lines=1,
                drift_counts={BankDriftKind.PAYOUT_NOT_POSTED: 1},
                drift=[
                    BankDrift(
                        kind=BankDriftKind.PAYOUT_NOT_POSTED,
                        line_id="stl_1",
                        line_kind="payout",
                        source_id="po_1",
                        reference="by-hand",
                        bank_minor=-3_000,
                        ledger_minor=0,
                        at=OLD,
                    )
                ],
            )
        ],
        custody=CustodyCheck(custodian_minor=1, opening_minor=0, ledger_minor=11, missing_minor=10),
    )
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RecordsProgramFunding],
        activities=[ProgramFundingLedgerActivities(platform.stack.pool).record],
    ):
        await client.execute_workflow(
            RecordsProgramFunding.run,
            FundingRecord(report=report, coverage_alert_bps=10_000),
            id=f"gauges/{queue}",
            task_queue=queue,
        )
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for sample in await scrape(port)
        if sample.name in PROGRAM_FUNDING_NAMES
    }

    def read(name: str, **labels: str) -> float:
        found = [
            value
            for (found_name, found_labels), value in samples.items()
            if found_name == name and set(labels.items()) <= set(found_labels)
        ]
        assert len(found) == 1, (name, labels, samples)
        return found[0]

    assert read("cardflow_program_coverage_bps", currency="USD") == 2_500
    assert read("cardflow_program_coverage_threshold_bps", currency="USD") == 10_000
    assert read("cardflow_bank_drift_lines", currency="USD", kind="payout_not_posted") == 1
    assert read("cardflow_bank_drift_lines", currency="USD", kind="inbound_not_credited") == 0
    assert read("cardflow_custody_missing_minor", currency="USDT") == 10
    assert (
        read("cardflow_program_funding_last_run_timestamp_seconds")
        == datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    )


def test_the_deployments_policy_takes_the_issuer_account_and_custody_float_from_settings(
    tmp_path: Path,
) -> None:
    own_simulators = load_settings(CARDFLOW_HOME=str(tmp_path))
    # A stack running its own simulators: their custodian's opening float.
    assert starter.funding_policy(own_simulators).custody_opening_minor == 10**12
    elsewhere = load_settings(
        CARDFLOW_HOME=str(tmp_path), CARDFLOW_PROVIDERS_URL="https://providers.example"
    )
    assert starter.funding_policy(elsewhere).custody_opening_minor == 0
    set_by_operator = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_PROVIDERS_URL="https://providers.example",
        CARDFLOW_FUNDING_CUSTODY_OPENING_MINOR="5000000",
        CARDFLOW_FUNDING_ISSUER_IBAN="DE89370400440532013000",
        CARDFLOW_FUNDING_ISSUER_NAME="Issuer Prefunding Ltd",
    )
    policy = starter.funding_policy(set_by_operator)
    assert policy.custody_opening_minor == 5_000_000
    assert (policy.issuer_account.iban, policy.issuer_account.name) == (
        "DE89370400440532013000",
        "Issuer Prefunding Ltd",
    )
    # The schedule starts its runs with that policy.
    schedule = starter.program_funding_schedule(set_by_operator)
    action = schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    [request] = action.args
    assert isinstance(request, ProgramFundingInput) and request.policy == policy
