"""Fraud scores and cases on the real stack: each signal scored from what the
platform's own writers recorded (card transactions, cashback and top-up
postings, a dispute process, cards, the custodian's deposits); a scan that
opens one case per customer however often it runs; a case that freezes the
customer's cards by policy and is cleared (unfrozen) or confirmed (closed)
by an operator through the API; an escalation when nobody answers; the
decide route's refusals; a worker killed after the freeze."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from activities.cashback import CashbackStore
from activities.fraud import CHANGE_CARD, FraudLedgerActivities, FraudProviderActivities
from activities.ledger import Ledger
from activities.providers.activities import ProviderClients
from activities.providers.tron import TronClient
from schemas import accounts
from schemas.disputes import DisputeInput
from schemas.fraud import (
    CashbackFarmingPolicy,
    FraudCaseInput,
    FraudCaseStatus,
    FraudDecision,
    FraudPolicy,
    FraudScanReport,
    FraudScore,
    ManyCardsPolicy,
    ScorePageRequest,
    Signal,
    SignalName,
    UsdtSourcesRequest,
    fraud_case_id,
)
from schemas.issuer import CardState, DisputeReason
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.tron import BASE58_ALPHABET
from starters import fraud as starter
from starters.dispute import open_dispute
from tests import polling
from tests.conftest import Platform
from tests.customers import FREE, card_state, customer, issue_card, open_card
from workflows.cards import card_workflow_id
from workflows.fraud import (
    FRAUD_CASE_WORKFLOW,
    STAGE_ESCALATED,
    STAGE_WAITING,
    fraud_case_workflow_id,
)

NOW_SLACK = timedelta(minutes=5)
SHOP = "Corner Shop"
# Five small purchases at one merchant score 60: a case, and the cards frozen.
FARMING = FraudPolicy(
    cashback_farming=CashbackFarmingPolicy(min_count=5, weight=60),
    case_threshold=50,
    auto_freeze_threshold=60,
)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def tron_address() -> str:
    """A Tron-shaped address no other test sends from."""
    digits = uuid.uuid4().int
    chars = []
    for _ in range(33):
        digits, index = divmod(digits, len(BASE58_ALPHABET))
        chars.append(BASE58_ALPHABET[index])
    return "T" + "".join(chars)


async def purchase(
    platform: Platform,
    customer_id: str,
    card_id: str,
    amount_minor: int,
    *,
    merchant: str = SHOP,
    at: datetime | None = None,
    kind: str = "clearing",
    refunds: str | None = None,
) -> str:
    """A settled card transaction recorded as the card process records it."""
    transaction_id = unique("txn")
    await CashbackStore(platform.stack.pool).add_card_transaction(
        transaction_id=transaction_id,
        card_id=card_id,
        customer_id=customer_id,
        amount_minor=amount_minor,
        currency=Currency.USD,
        occurred_at=at or datetime.now(UTC),
        mcc="5411",
        merchant_name=merchant,
        kind=kind,
        refunded_transaction_id=refunds,
    )
    return transaction_id


async def post(platform: Platform, key: str, debit: str, credit: str, amount_minor: int) -> None:
    ledger = Ledger(platform.stack.pool)
    for code in (debit, credit):
        if not code.startswith("customer:"):
            await ledger.open_account(accounts.system_account(code))
    outcome = await ledger.transfer(
        TransferRequest(
            key=key, debit=debit, credit=credit, amount_minor=amount_minor, currency=Currency.USD
        )
    )
    assert outcome.accepted, outcome


async def reward(platform: Platform, customer_id: str, transaction_id: str, amount: int) -> None:
    """Cashback paid on the purchase, under the cashback process's key."""
    await post(
        platform,
        f"cashback/{transaction_id}/reward/everyday",
        accounts.expense_cashback(Currency.USD),
        accounts.wallet(customer_id, Currency.USD),
        amount,
    )


async def top_up(platform: Platform, customer_id: str, source: str, ref: str, amount: int) -> str:
    """A top-up's credit, under the top-up process's key; its process id."""
    # A USDT deposit reaches a USD wallet converted, through the FX pool.
    debit = (
        accounts.fx_pool(Currency.USD) if source == "usdt" else accounts.bank_inbound(Currency.USD)
    )
    await post(
        platform,
        f"topup/{source}/{ref}/credit/principal",
        debit,
        accounts.wallet(customer_id, Currency.USD),
        amount,
    )
    return f"topup/{source}/{ref}"


async def score(
    platform: Platform,
    customer_id: str,
    policy: FraudPolicy | None = None,
    *,
    since: datetime | None = None,
    usdt: bool = False,
) -> FraudScore:
    """The customer's score over the last hour (or from `since`), as a scan's page scores it."""
    now = datetime.now(UTC)
    sources = {}
    if usdt:
        clients = ProviderClients(platform.sim.url)
        try:
            found = await FraudProviderActivities(clients).usdt_sources(
                UsdtSourcesRequest(customer_ids=[customer_id])
            )
        finally:
            await clients.aclose()
        sources = found.sources
    page = await FraudLedgerActivities(platform.stack.pool, platform.stack.client).score_page(
        ScorePageRequest(
            customer_ids=[customer_id],
            window_start=since or now - timedelta(hours=1),
            window_end=now + NOW_SLACK,
            policy=policy or FraudPolicy(),
            usdt_sources=sources,
        )
    )
    scores = {found.customer_id: found for found in page.scores}
    return scores.get(
        customer_id, FraudScore(customer_id=customer_id, score=0, since=now, until=now)
    )


def signal(found: FraudScore, name: SignalName) -> Signal:
    [only] = [s for s in found.signals if s.name == name]
    return only


# ----- each signal, from the platform's own records ----------------------------------


async def test_refunds_soon_after_rewarded_purchases_score_with_their_ids(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    card = unique("card")
    earlier = datetime.now(UTC) - timedelta(days=3)
    rewarded = [
        await purchase(platform, customer_id, card, 5_000, at=earlier + timedelta(hours=n))
        for n in range(2)
    ]
    for transaction_id in rewarded:
        await reward(platform, customer_id, transaction_id, 250)
    refunds = [
        await purchase(platform, customer_id, card, 5_000, kind="refund", refunds=rewarded[0]),
        # Naming no purchase: the same card's latest at the same merchant, of at least its amount.
        await purchase(platform, customer_id, card, 4_000, kind="refund"),
    ]
    # A refund of a purchase that earned nothing does not count.
    unrewarded = await purchase(platform, customer_id, card, 3_000, merchant="Bookshop", at=earlier)
    await purchase(platform, customer_id, card, 3_000, kind="refund", refunds=unrewarded)

    found = signal(await score(platform, customer_id), SignalName.REFUND_AFTER_REWARD)
    assert (found.count, found.points) == (2, 30)
    assert found.amounts_minor == {"USD": 9_000}
    assert found.evidence == [
        f"{refunds[0]} refunds {rewarded[0]}",
        f"{refunds[1]} refunds {rewarded[1]}",
    ]
    assert "earned 500 in cashback" in found.detail
    # Refunded a day later than the policy's few days: nothing.
    late = FraudPolicy.model_validate({"refund_after_reward": {"within_days": 2}})
    assert not [
        s
        for s in (await score(platform, customer_id, late)).signals
        if s.name == SignalName.REFUND_AFTER_REWARD
    ]


async def test_many_small_purchases_at_one_merchant_within_an_hour_score_as_farming(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    card = unique("card")
    start = datetime.now(UTC) - timedelta(minutes=50)
    farmed = [
        await purchase(platform, customer_id, card, 300, at=start + timedelta(minutes=10 * n))
        for n in range(5)
    ]
    # Too big to count, and another merchant's.
    await purchase(platform, customer_id, card, 5_000, at=start)
    await purchase(platform, customer_id, card, 300, merchant="Bakery", at=start)

    found = signal(await score(platform, customer_id), SignalName.CASHBACK_FARMING)
    assert (found.count, found.points) == (5, 30)
    assert found.amounts_minor == {"USD": 1_500}
    assert found.evidence == farmed
    assert f"at {SHOP}" in found.detail
    # Within 15 minutes, at most two of them: under the threshold, nothing scores.
    tight = FraudPolicy.model_validate({"cashback_farming": {"within_seconds": 900}})
    assert (await score(platform, customer_id, tight)).score == 0


async def test_a_dispute_on_spend_right_after_a_top_up_scores(platform: Platform) -> None:
    customer_id = await customer(platform)
    card = unique("card")
    topup = await top_up(platform, customer_id, "bank", unique("ibt"), 20_000)
    spend = await purchase(platform, customer_id, card, 15_000)
    queues = platform.stack.queues
    await open_dispute(
        platform.stack.client,
        queues,
        DisputeInput(transaction_id=spend, customer_id=customer_id, reason=DisputeReason.OTHER),
    )

    async def scored() -> FraudScore:
        return await score(platform, customer_id)

    found = await polling.until(
        scored,
        lambda found: any(s.name == SignalName.TOPUP_SPEND_DISPUTE for s in found.signals),
        "the dispute scored",
    )
    disputed = signal(found, SignalName.TOPUP_SPEND_DISPUTE)
    assert (disputed.count, disputed.points) == (1, 40)
    assert disputed.evidence == [f"{spend} after {topup}"]
    assert disputed.amounts_minor == {"USD": 15_000}
    # A top-up more than a minute before the spend is too early for a policy of a minute...
    minute = FraudPolicy.model_validate({"topup_spend_dispute": {"spend_within_seconds": 1}})
    spend_at = await platform.stack.pool.fetchval(
        "SELECT occurred_at FROM card_transactions WHERE transaction_id = $1", spend
    )
    credited_at = await platform.stack.pool.fetchval(
        "SELECT occurred_at FROM customer_events WHERE process_id = $1", topup
    )
    if spend_at - credited_at > timedelta(seconds=1):
        assert not [
            s
            for s in (await score(platform, customer_id, minute)).signals
            if s.name == SignalName.TOPUP_SPEND_DISPUTE
        ]


async def test_cards_issued_in_the_window_score_but_replacements_do_not(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    cards = sorted(unique("card") for _ in range(4))
    for card_id in cards:
        await platform.stack.pool.execute(
            "INSERT INTO cards (card_id, request_id, customer_id, kind) VALUES ($1, $2, $3,"
            " 'virtual')",
            card_id,
            unique("r"),
            customer_id,
        )
    await platform.stack.pool.execute(
        "INSERT INTO cards (card_id, request_id, customer_id, kind, replaces)"
        " VALUES ($1, $2, $3, 'virtual', $4)",
        unique("card"),
        unique("r"),
        customer_id,
        cards[0],
    )
    found = signal(await score(platform, customer_id), SignalName.MANY_CARDS)
    assert (found.count, found.points, found.evidence) == (4, 20, cards)
    five = FraudPolicy(many_cards=ManyCardsPolicy(min_count=5))
    assert (await score(platform, customer_id, five)).score == 0


async def test_usdt_from_addresses_never_used_before_scores(platform: Platform) -> None:
    customer_id = await customer(platform)
    async with TronClient(platform.sim.provider_url("tron")) as tron:
        address = (await tron.customer_address(customer_id)).address
        known = tron_address()

        async def deposit(sender: str) -> str:
            made = await tron.simulate_deposit(
                address=address,
                amount_minor=5_000_000,
                from_address=sender,
                idempotency_key=unique("deposit"),
            )
            await top_up(platform, customer_id, "usdt", made.tx_hash, 500)
            return made.tx_hash

        await deposit(known)
        # The window starts after the known address was first used.
        since = datetime.now(UTC) + timedelta(milliseconds=1)
        await polling.eventually(
            lambda: _after(since), "the clock moved past the first deposit", seconds=5
        )
        new = [tron_address() for _ in range(3)]
        await deposit(known)
        for sender in new:
            await deposit(sender)

    found = signal(
        await score(platform, customer_id, since=since, usdt=True), SignalName.NEW_USDT_SOURCES
    )
    assert (found.count, found.points) == (3, 20)
    assert sorted(found.evidence) == sorted(new)
    assert known not in found.evidence


async def _after(at: datetime) -> bool:
    return datetime.now(UTC) > at


# ----- the scan and its cases --------------------------------------------------------


async def farming_customer(platform: Platform, cards: int = 1) -> tuple[str, list[Any]]:
    """A customer holding open cards, who made five small purchases at one shop."""
    opened = await open_card(platform)
    handles = [opened.handle]
    for _ in range(cards - 1):
        issued = await (await issue_card(platform, opened.customer_id, fees=FREE)).result()
        assert issued.card_id is not None
        handles.append(platform.stack.client.get_workflow_handle(card_workflow_id(issued.card_id)))
    for _ in range(5):
        await purchase(platform, opened.customer_id, opened.card_id, 300)
    return opened.customer_id, handles


async def scan(platform: Platform, policy: FraudPolicy = FARMING) -> FraudScanReport:
    queues = platform.stack.queues
    return await starter.scan(
        platform.stack.client,
        queues,
        starter.fraud_scan_input(queues, policy).model_copy(
            update={"as_of": datetime.now(UTC) + NOW_SLACK}
        ),
        f"fraud-scan-test-{uuid.uuid4().hex[:10]}",
    )


async def reach(platform: Platform, case_id: str, *stages: str) -> FraudCaseStatus:
    async def status() -> FraudCaseStatus:
        return await starter.status(platform.stack.client, case_id)

    return await polling.until(status, lambda found: found.stage in stages, f"reached {stages}")


async def states(handles: list[WorkflowHandle[Any, Any]]) -> list[CardState]:
    return [(await card_state(handle)).state for handle in handles]


async def decide(platform: Platform, case_id: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:
        return await client.post(
            f"/v1/fraud-cases/{case_id}/decide",
            json=body,
            headers={**platform.api_headers, "Idempotency-Key": unique("decide")},
        )


async def test_a_scan_opens_one_case_freezes_the_cards_and_clear_unfreezes_them(
    platform: Platform,
) -> None:
    customer_id, handles = await farming_customer(platform, cards=2)
    quiet = await customer(platform)

    first = await scan(platform)
    case_id = fraud_case_id(customer_id, first.as_of.date())  # type: ignore[union-attr]
    assert first.cases_opened == [case_id]
    assert {found.customer_id for found in first.top_scores} == {customer_id}
    assert quiet not in {found.customer_id for found in first.top_scores}
    opened = await reach(platform, case_id, STAGE_WAITING)
    assert opened.score == 60 and opened.auto_freeze
    assert [s.name for s in opened.signals if s.points] == [SignalName.CASHBACK_FARMING]
    card_ids = [handle.id.removeprefix("card/") for handle in handles]
    assert sorted(opened.frozen_cards) == sorted(card_ids)
    assert await states(handles) == [CardState.PAUSED, CardState.PAUSED]

    # Run again (a retry, the next schedule's run): the open case is left as it is.
    second = await scan(platform)
    assert second.cases_opened == [] and second.cases_already_open == [case_id]
    rows = await platform.stack.pool.fetch(
        "SELECT case_id, status, frozen_cards, auto_freeze FROM fraud_cases WHERE customer_id = $1",
        customer_id,
    )
    assert [(r["case_id"], r["status"], r["auto_freeze"]) for r in rows] == [
        (case_id, "open", True)
    ]
    assert sorted(rows[0]["frozen_cards"]) == sorted(card_ids)
    cases = [
        execution.id
        async for execution in platform.stack.client.list_workflows(
            f'WorkflowType = "{FRAUD_CASE_WORKFLOW}" AND CustomerId = "{customer_id}"'
        )
    ]
    assert cases == [fraud_case_workflow_id(case_id)]

    # Through the API, as an operator: not fraud.
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:
        read = await client.get(f"/v1/fraud-cases/{case_id}", headers=platform.api_headers)
    assert read.status_code == 200, read.text
    assert read.json()["frozen_cards"] == opened.frozen_cards
    answer = await decide(
        platform, case_id, {"action": "clear", "reason": "known merchant", "operator": "ops-1"}
    )
    assert answer.status_code == 200, answer.text
    result: FraudCaseStatus = await platform.stack.client.get_workflow_handle(
        fraud_case_workflow_id(case_id), result_type=FraudCaseStatus
    ).result()
    assert result.outcome == "cleared"
    assert sorted(result.unfrozen_cards) == sorted(card_ids)
    assert await states(handles) == [CardState.OPEN, CardState.OPEN]
    decided = await platform.stack.pool.fetchrow(
        "SELECT status, decision, decided_by FROM fraud_cases WHERE case_id = $1", case_id
    )
    assert decided is not None and tuple(decided) == ("cleared", "clear", "ops-1")
    # Decided: the same activity is not scored again, and nothing opens.
    third = await scan(platform)
    assert third.cases_opened == [] and third.over_threshold == 0


async def start_case(
    platform: Platform, customer_id: str, policy: FraudPolicy, points: int = 60
) -> tuple[str, WorkflowHandle[Any, FraudCaseStatus]]:
    """A case opened as a scan opens one, for a customer scoring `points`."""
    queues = platform.stack.queues
    now = datetime.now(UTC)
    case_id = fraud_case_id(customer_id, now.date())
    found = Signal(
        name=SignalName.CASHBACK_FARMING, points=points, count=5, evidence=[], detail="five"
    )
    handle = await platform.stack.client.start_workflow(
        FRAUD_CASE_WORKFLOW,
        FraudCaseInput(
            case_id=case_id,
            customer_id=customer_id,
            score=FraudScore(
                customer_id=customer_id, score=points, signals=[found], since=now, until=now
            ),
            policy=policy,
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
        ),
        id=fraud_case_workflow_id(case_id),
        task_queue=queues.workflows,
        result_type=FraudCaseStatus,
    )
    return case_id, handle


async def test_confirm_closes_the_cards_and_a_decided_case_refuses_another_decision(
    platform: Platform,
) -> None:
    opened = await open_card(platform)
    case_id, handle = await start_case(platform, opened.customer_id, FARMING)
    waiting = await reach(platform, case_id, STAGE_WAITING)
    assert waiting.frozen_cards == [opened.card_id]
    assert (await card_state(opened.handle)).state == CardState.PAUSED

    # Bad bodies are 422 naming the field, before anything reaches the case.
    for body, field in (
        ({"action": "block", "reason": "fraud", "operator": "ops"}, "action"),
        ({"action": "confirm", "reason": "x", "operator": "ops"}, "reason"),
        ({"action": "confirm", "reason": "fraud", "operator": "o" * 101}, "operator"),
        ({"action": "confirm", "reason": "fraud", "operator": "ops\x1b[2J"}, "operator"),
        (
            {"action": "clear", "close_cards": True, "reason": "fraud", "operator": "ops"},
            "close_cards",
        ),
    ):
        answer = await decide(platform, case_id, body)
        assert answer.status_code == 422, answer.text
        assert field in answer.text, answer.text
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:
        bad = await client.get("/v1/fraud-cases/not a case", headers=platform.api_headers)
    assert bad.status_code == 422, bad.text
    assert (await reach(platform, case_id, STAGE_WAITING)).decision is None

    answer = await decide(
        platform,
        case_id,
        {"action": "confirm", "close_cards": True, "reason": "card testing", "operator": "ops"},
    )
    assert answer.status_code == 200, answer.text
    result = await handle.result()
    assert (result.outcome, result.closed_cards) == ("confirmed", [opened.card_id])
    assert (await card_state(opened.handle)).state == CardState.CLOSED
    again = await decide(platform, case_id, {"action": "clear", "reason": "oops", "operator": "x"})
    assert again.status_code == 409, again.text
    assert "finished" in again.text
    assert (
        await platform.stack.pool.fetchval(
            "SELECT status FROM fraud_cases WHERE case_id = $1", case_id
        )
        == "confirmed"
    )


# Waits of escalation_seconds an unanswered case makes with escalations_max
# 2: one before each escalation, and the one that finds the maximum reached.
ESCALATION_WAITS = 3


async def test_an_unanswered_case_is_escalated_and_keeps_waiting(platform: Platform) -> None:
    customer_id = await customer(platform)
    quick = FARMING.model_copy(update={"escalation_seconds": 1, "escalations_max": 2})
    case_id, handle = await start_case(platform, customer_id, quick, points=55)

    async def status() -> FraudCaseStatus:
        return await starter.status(platform.stack.client, case_id)

    escalated = await polling.until(status, lambda found: found.escalations == 2, "escalated twice")
    assert escalated.stage == STAGE_ESCALATED and not escalated.auto_freeze

    async def recorded() -> tuple[str, int] | None:
        row = await platform.stack.pool.fetchrow(
            "SELECT status, escalations FROM fraud_cases WHERE case_id = $1", case_id
        )
        return None if row is None else (row["status"], row["escalations"])

    # The process counts the escalation before its activity records it, so
    # the row follows the status a moment later.
    assert await polling.until(
        recorded, lambda row: row == ("escalated", 2), "the second escalation recorded"
    ) == ("escalated", 2)

    # The wait after the second escalation ends too (its timer fires), and
    # the task that sees it completes: past escalations_max, it must start
    # nothing (no third escalation, no e-mail) and wait for the operator.
    async def after_third_wait() -> list[EventType.ValueType] | None:
        kinds = [event.event_type for event in (await handle.fetch_history()).events]
        fired = [i for i, kind in enumerate(kinds) if kind == EventType.EVENT_TYPE_TIMER_FIRED]
        if len(fired) < ESCALATION_WAITS:
            return None
        after = kinds[fired[ESCALATION_WAITS - 1] :]
        done = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in after
        return after if done else None

    after = await polling.until(after_third_wait, bool, "the third wait over, its task done")
    assert after is not None
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in after, after
    assert EventType.EVENT_TYPE_TIMER_STARTED not in after, after
    assert await recorded() == ("escalated", 2), "escalated past escalations_max"
    # Still waiting: an operator's word ends it.
    result = await starter.decide(
        platform.stack.client,
        case_id,
        FraudDecision(action="confirm", reason="confirmed late", operator="ops"),
    )
    assert result == "confirm recorded"
    assert (await handle.result()).outcome == "confirmed"


async def test_a_worker_killed_after_a_freeze_freezes_once_and_records_one_case(
    platform: Platform,
) -> None:
    opened = await open_card(platform)
    platform.stack.faults.fail_after_activity(CHANGE_CARD)
    case_id, handle = await start_case(platform, opened.customer_id, FARMING)
    waiting = await reach(platform, case_id, STAGE_WAITING)
    assert platform.stack.faults.injected == [f"activity {CHANGE_CARD}"]
    assert waiting.frozen_cards == [opened.card_id]
    assert (await card_state(opened.handle)).state == CardState.PAUSED
    rows = await platform.stack.pool.fetch(
        "SELECT frozen_cards FROM fraud_cases WHERE customer_id = $1", opened.customer_id
    )
    assert [list(row["frozen_cards"]) for row in rows] == [[opened.card_id]]
    # The card was frozen by one update: its history holds one `freeze`.
    history = await opened.handle.fetch_history()
    freezes = [
        event
        for event in history.events
        if event.HasField("workflow_execution_update_accepted_event_attributes")
        and event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        == "freeze"
    ]
    assert len(freezes) == 1
    await starter.decide(
        platform.stack.client,
        case_id,
        FraudDecision(action="clear", reason="false positive", operator="ops"),
    )
    assert (await handle.result()).unfrozen_cards == [opened.card_id]
    assert (await card_state(opened.handle)).state == CardState.OPEN
