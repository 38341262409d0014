"""The chaos run's invariant checks: silent on a sound platform, and each one
naming the defect planted for it (a wallet below zero, a hold left past its
expiry, an authorization held twice, a workflow that failed or is stuck, a
webhook lost or refused)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from temporalio.api.failure.v1 import Failure
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger import Ledger
from bench.chaos.evidence import Evidence
from bench.chaos.invariants import (
    Violation,
    busy_workflows,
    failure_message,
    feed_violations,
    hold_violations,
    ledger_violations,
    tier_spend_violations,
    webhook_violations,
    workflow_violations,
)
from bench.chaos.money import Expected, settlement_violations
from schemas import accounts
from schemas.health import PingInput, PingResult
from schemas.issuer import Authorization, Transaction
from schemas.ledger import AccountSpec, HoldRequest, TransferRequest
from schemas.money import Currency
from tests import polling
from tests.conftest import Platform
from tests.customers import (
    FREE,
    authorize,
    customer,
    issue_card,
    issuer,
    open_card,
    wallet_becomes,
)
from workflows.cards import CARD_WORKFLOW, card_workflow_id
from workflows.health import PING_WORKFLOW, ping_workflow_id

# Long enough that nothing in a healthy test's flow counts as stuck.
HEALTHY_STUCK_AFTER_SECONDS = 30.0
# Short, so a workflow planted stuck is seen in about a second.
PLANTED_STUCK_AFTER_SECONDS = 1.0
HOLD_LIFETIME_SECONDS = 1.0


async def purchase(platform: Platform, amount: int = 5_000) -> tuple[str, str, Authorization]:
    """A funded customer's card with one approved authorization held on the wallet."""
    customer_id, card_id, _ = await open_card(platform)
    auth = await authorize(platform, card_id, amount)
    assert auth.decision_reason == "approved"
    await wallet_becomes(platform, customer_id, posted=10_000, pending=amount)
    return customer_id, card_id, auth


async def clear(platform: Platform, auth: Authorization, amount: int) -> Transaction:
    async with issuer(platform) as client:
        return await client.simulate_clearing(
            auth.id, amount_minor=amount, final=True, idempotency_key=f"clear-{auth.id}"
        )


def admin_url(platform: Platform) -> str:
    return f"{platform.sim.url}/_admin"


async def webhooks_settled(platform: Platform) -> None:
    """Wait until the simulators have nothing left to deliver."""

    async def settled() -> bool:
        return bool(platform.sim.admin("GET", "/health")["webhooks_pending"] == 0)

    await polling.eventually(settled, "every webhook is delivered")


def workflows_of(platform: Platform) -> str:
    """A visibility filter for this test's own workflows (the server is shared)."""
    return f'TaskQueue = "{platform.stack.queues.workflows}"'


async def start_ping(platform: Platform, *, run_timeout: timedelta | None = None) -> str:
    """A Ping waiting (a timer, nothing pending) for a webhook event that never comes."""
    queues = platform.stack.queues
    workflow_id = ping_workflow_id(f"chaos-{uuid.uuid4().hex[:10]}")
    await platform.stack.client.start_workflow(
        PING_WORKFLOW,
        PingInput(
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
            webhook_events_expected=1,
            webhook_wait_seconds=600,
        ),
        id=workflow_id,
        task_queue=queues.workflows,
        result_type=PingResult,
        run_timeout=run_timeout,
    )

    async def waiting() -> bool:
        stage: str = await platform.stack.client.get_workflow_handle(workflow_id).query("status")
        return stage == "waiting for webhook events"

    if run_timeout is None:
        await polling.eventually(waiting, "the ping waits for its webhook event")
    return workflow_id


# ----- ledger ---------------------------------------------------------------


async def test_a_purchase_cleared_leaves_no_ledger_violation(platform: Platform) -> None:
    customer_id, _, auth = await purchase(platform)
    await clear(platform, auth, 4_200)
    await wallet_becomes(platform, customer_id, posted=5_800, pending=0)
    assert await ledger_violations(platform.stack.pool) == []


async def test_a_wallet_below_zero_is_reported_with_its_figures(platform: Platform) -> None:
    # A wallet opened without its constraint flag: the ledger lets it go
    # negative and the verifier's constraint check has nothing to check.
    ledger = Ledger(platform.stack.pool)
    code = accounts.wallet(f"c-{uuid.uuid4().hex[:10]}", "USD")
    await ledger.open_account(AccountSpec(code=code, currency=Currency.USD, kind="wallet"))
    await ledger.open_account(accounts.system_account(accounts.issuer_settlement("USD")))
    outcome = await ledger.transfer(
        TransferRequest(
            key=f"overdraw-{code}",
            debit=code,
            credit=accounts.issuer_settlement("USD"),
            amount_minor=700,
            currency=Currency.USD,
        )
    )
    assert outcome.accepted
    assert await ledger_violations(platform.stack.pool) == [
        Violation(
            "wallet_negative",
            code,
            "available -700 USD minor = credits 0 - debits 700 - pending debits 0",
        )
    ]


# ----- the feed ---------------------------------------------------------------


async def test_a_purchase_cleared_leaves_the_feed_agreeing_with_the_ledger(
    platform: Platform,
) -> None:
    customer_id, _, auth = await purchase(platform)
    await clear(platform, auth, 4_200)
    await wallet_becomes(platform, customer_id, posted=5_800, pending=0)

    async def recorded() -> bool:
        return bool(
            await platform.stack.pool.fetchval(
                "SELECT count(*) FROM customer_events WHERE type = 'transaction.cleared'"
                " AND customer_id = $1",
                customer_id,
            )
        )

    await polling.eventually(recorded, "the clearing is an event")
    assert await feed_violations(platform.stack.pool) == []


async def test_a_transaction_told_but_never_posted_is_reported(platform: Platform) -> None:
    customer_id, card_id, _ = await purchase(platform)
    await platform.stack.pool.execute(
        "INSERT INTO card_transactions (transaction_id, card_id, customer_id, kind,"
        " amount_minor, currency, occurred_at) VALUES ($1, $2, $3, 'clearing', 300, 'USD', now())",
        f"txn-told-{uuid.uuid4().hex[:8]}",
        card_id,
        customer_id,
    )
    assert await feed_violations(platform.stack.pool) == [
        Violation(
            "feed_disagrees_with_ledger",
            accounts.wallet(customer_id, "USD"),
            "posted 10000 USD minor, the events say 9700",
        )
    ]


# ----- KYC tiers ----------------------------------------------------------------


async def test_the_tiers_count_agrees_with_the_holds_placed_and_a_miscount_is_named(
    platform: Platform,
) -> None:
    customer_id, _, auth = await purchase(platform)
    async with issuer(platform) as client:
        await client.simulate_increment(
            auth.id, amount_minor=1_000, idempotency_key=uuid.uuid4().hex
        )
        # Cleared in part, not final: the rest is held again under a derived key.
        await client.simulate_clearing(
            auth.id, amount_minor=2_000, final=False, idempotency_key=uuid.uuid4().hex
        )
    await wallet_becomes(platform, customer_id, posted=8_000, pending=4_000)
    assert await tier_spend_violations(platform.stack.pool) == []
    await platform.stack.pool.execute(
        "UPDATE card_tier_spend SET spent_minor = spent_minor + 1 WHERE customer_id = $1",
        customer_id,
    )
    assert await tier_spend_violations(platform.stack.pool) == [
        Violation(
            "tier_spend_disagrees_with_holds",
            customer_id,
            "6001 USD minor counted against the KYC tier, 6000 held by the customer's cards",
        )
    ]


# ----- each issuer transaction posted once ----------------------------------


async def test_a_clearing_posted_twice_and_a_refund_never_posted_are_named(
    platform: Platform,
) -> None:
    customer_id, card_id, auth = await purchase(platform)
    cleared = await clear(platform, auth, 4_200)
    await wallet_becomes(platform, customer_id, posted=5_800, pending=0)
    model = Expected()
    model.settled[cleared.id] = (4_200, card_id)
    assert await settlement_violations(platform.stack.pool, {0: model}, Evidence()) == []
    # The clearing applied again under a key of its own (a card that forgot
    # it had), and a refund the issuer settled that no card posted.
    again = await Ledger(platform.stack.pool).transfer(
        TransferRequest(
            key=f"card/{card_id}/post/{cleared.id}",
            debit=accounts.wallet(customer_id, "USD"),
            credit=accounts.issuer_settlement("USD"),
            amount_minor=4_200,
            currency=Currency.USD,
        )
    )
    assert again.accepted
    model.settled["txn_never_posted"] = (-900, card_id)
    assert await settlement_violations(platform.stack.pool, {0: model}, Evidence()) == [
        Violation(
            "transaction_posted_twice",
            cleared.id,
            f"the issuer settled 4200, the cards posted 8400 in 2 posting(s) "
            f"(card {card_id}, operation None)",
        ),
        Violation(
            "transaction_differs",
            "txn_never_posted",
            f"the issuer settled -900, the cards posted 0 in 0 posting(s) "
            f"(card {card_id}, operation None)",
        ),
    ]


# ----- holds ----------------------------------------------------------------


async def test_holds_of_purchases_increments_and_clearings_leave_no_hold_violation(
    platform: Platform,
) -> None:
    customer_id, _, auth = await purchase(platform, 3_000)
    async with issuer(platform) as client:
        grown = await client.simulate_increment(
            auth.id, amount_minor=1_000, idempotency_key=f"grow-{auth.id}"
        )
    assert grown.pending_amount_minor == 4_000
    # The increment holds in a slot of its own: two live holds, none twice.
    await wallet_becomes(platform, customer_id, posted=10_000, pending=4_000)
    assert await hold_violations(platform.stack.pool, margin_seconds=0) == []
    await clear(platform, auth, 3_500)
    await wallet_becomes(platform, customer_id, posted=6_500, pending=0)
    assert await hold_violations(platform.stack.pool, margin_seconds=0) == []


async def test_a_hold_left_past_its_expiry_is_reported_by_its_key(platform: Platform) -> None:
    customer_id = await customer(platform)
    wallet = accounts.wallet(customer_id, "USD")
    ledger = Ledger(platform.stack.pool)
    await ledger.open_account(accounts.system_account(accounts.issuer_settlement("USD")))
    key = f"card/k-{customer_id}/auth/a-{customer_id}/d0"
    expires_at = datetime.now(UTC) + timedelta(seconds=HOLD_LIFETIME_SECONDS)
    held = await ledger.transfer(
        HoldRequest(
            key=key,
            debit=wallet,
            credit=accounts.issuer_settlement("USD"),
            amount_minor=1_500,
            currency=Currency.USD,
            expires_at=expires_at,
        )
    )
    assert held.accepted
    # Nobody resolves it: once the clock passes its expiry it is reported.
    found = await polling.until(
        lambda: hold_violations(platform.stack.pool, margin_seconds=0),
        bool,
        "the hold outlives its expiry",
    )
    assert found == [
        Violation(
            "hold_outlived_expiry",
            key,
            f"hold of 1500 USD minor on {wallet} expired at {expires_at.isoformat()}"
            " and is still pending (0 s margin)",
        )
    ]
    # Within the margin it is not (yet) a violation.
    assert await hold_violations(platform.stack.pool, margin_seconds=3_600) == []


async def test_a_second_hold_for_one_authorization_decision_is_reported(
    platform: Platform,
) -> None:
    customer_id, card_id, auth = await purchase(platform)
    # A partial hold for the decision the card already held in full, as a
    # crashed task that lost its first outcome would place it.
    prefix = f"{card_workflow_id(card_id)}/auth/{auth.id}"
    await Ledger(platform.stack.pool).transfer(
        HoldRequest(
            key=f"{prefix}/d0-partial",
            debit=accounts.wallet(customer_id, "USD"),
            credit=accounts.issuer_settlement("USD"),
            amount_minor=1_000,
            currency=Currency.USD,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
    )
    assert await hold_violations(platform.stack.pool, margin_seconds=0) == [
        Violation(
            "authorization_held_twice",
            prefix,
            f"slot d0 has 2 unresolved holds, one expected: {prefix}/d0 (5000 USD minor),"
            f" {prefix}/d0-partial (1000 USD minor)",
        )
    ]


# ----- workflows ------------------------------------------------------------


async def test_finished_and_waiting_workflows_are_no_violation(platform: Platform) -> None:
    customer_id, _, auth = await purchase(platform)
    await clear(platform, auth, 5_000)
    await wallet_becomes(platform, customer_id, posted=5_000, pending=0)
    await start_ping(platform)
    assert (
        await workflow_violations(
            platform.stack.client,
            stuck_after_seconds=HEALTHY_STUCK_AFTER_SECONDS,
            query=workflows_of(platform),
        )
        == []
    )


async def test_a_terminated_and_a_timed_out_workflow_are_reported(platform: Platform) -> None:
    client = platform.stack.client
    terminated = await start_ping(platform)
    await client.get_workflow_handle(terminated).terminate(reason="planted by the test")
    timed_out = await start_ping(platform, run_timeout=timedelta(seconds=1))
    handle: WorkflowHandle[object, object] = client.get_workflow_handle(timed_out)
    await polling.until(
        lambda: handle.describe(),
        lambda d: d.status is WorkflowExecutionStatus.TIMED_OUT,
        "the ping's run times out",
    )
    found = await workflow_violations(
        client, stuck_after_seconds=HEALTHY_STUCK_AFTER_SECONDS, query=workflows_of(platform)
    )
    assert sorted((v.check, v.subject) for v in found) == sorted(
        [("workflow_terminated", terminated), ("workflow_timed_out", timed_out)]
    )
    by_check = {v.check: v for v in found}
    assert "terminated" in by_check["workflow_terminated"].detail
    assert "planted by the test" in by_check["workflow_terminated"].detail
    assert "timed out" in by_check["workflow_timed_out"].detail


async def start_card_issue(platform: Platform) -> str:
    """A virtual card's issuing for a new customer, started; its workflow id."""
    customer_id = await customer(platform)
    return (await issue_card(platform, customer_id, fees=FREE)).id


async def test_a_failure_is_told_with_its_causes(platform: Platform) -> None:
    """A process failed by an activity says only "Activity task failed"; the
    report carries the activity's own error too, decoded by the data converter."""
    client = platform.stack.client
    try:
        try:
            raise ApplicationError(
                "issuer POST /v1/cards: 400", type="ProviderRejectedRequest", non_retryable=True
            )
        except ApplicationError as cause:
            raise ActivityError(
                "Activity task failed",
                scheduled_event_id=5,
                started_event_id=6,
                identity="worker",
                activity_type="providers.create_card",
                activity_id="1",
                retry_state=RetryState.NON_RETRYABLE_FAILURE,
            ) from cause
    except ActivityError as error:
        failure = Failure()
        await client.data_converter.encode_failure(error, failure)
    told = await failure_message(client, failure)
    assert told == ("Activity task failed <- ProviderRejectedRequest: issuer POST /v1/cards: 400")


async def test_an_activity_failing_forever_is_reported_stuck(platform: Platform) -> None:
    # The issuer answers every call with an error: issuing a card retries forever.
    platform.sim.fault(kind="error", path_prefix="/issuer/", status=503)
    waiting = await start_ping(platform)
    stuck = await start_card_issue(platform)
    found = await polling.until(
        lambda: workflow_violations(
            platform.stack.client,
            stuck_after_seconds=PLANTED_STUCK_AFTER_SECONDS,
            query=workflows_of(platform),
        ),
        bool,
        "the card issue is seen stuck",
    )
    # The ping waits on a timer with nothing pending: never stuck.
    assert [(v.check, v.subject) for v in found] == [("workflow_stuck", stuck)]
    assert waiting not in found[0].detail
    assert "no progress for" in found[0].detail
    assert "503" in found[0].detail  # the activity's last failure, decoded


async def test_a_card_is_idle_beside_its_purchases_open_cashback_and_busy_while_working(
    platform: Platform,
) -> None:
    """The run's quiescence waits for cards with work in flight: a cashback
    process the card started stays open for refunds for weeks (a child that
    never ends in the run) and is no work of the card's."""
    from activities.cashback import CashbackStore
    from starters.cashback import SAMPLE_CAMPAIGNS_FILE, read_campaign_file
    from starters.cashback import status as cashback_status

    await CashbackStore(platform.stack.pool).load_campaigns(
        read_campaign_file(SAMPLE_CAMPAIGNS_FILE).campaigns
    )
    _, card_id, auth = await purchase(platform)
    cleared = await clear(platform, auth, 5_000)

    async def cashback_stage() -> str:
        try:
            return (await cashback_status(platform.stack.client, cleared.id)).stage
        except RPCError as error:
            if error.status is not RPCStatusCode.NOT_FOUND:
                raise
            return "not started"

    await polling.until(cashback_stage, lambda stage: stage == "open for refunds", "cashback open")
    card = f'WorkflowId = "{card_workflow_id(card_id)}"'
    await polling.until(
        lambda: busy_workflows(platform.stack.client, card), lambda b: b == [], "idle"
    )
    # An activity retrying forever is work in flight.
    platform.sim.fault(kind="error", path_prefix="/issuer/", status=503)
    issuing = await start_card_issue(platform)
    issue = f'WorkflowId = "{issuing}"'
    assert await polling.until(
        lambda: busy_workflows(platform.stack.client, issue), bool, "the issuing is busy"
    ) == [issuing]


# ----- webhooks -------------------------------------------------------------


async def test_the_webhooks_of_a_purchase_are_each_applied_once(platform: Platform) -> None:
    customer_id, _, auth = await purchase(platform)
    await clear(platform, auth, 5_000)
    await wallet_becomes(platform, customer_id, posted=5_000, pending=0)
    await webhooks_settled(platform)
    sent = platform.sim.admin("GET", "/webhooks")
    assert {event["type"] for event in sent} >= {"authorization.created", "transaction.cleared"}
    assert await webhook_violations(platform.stack.pool, admin_url(platform)) == []


async def test_a_webhook_lost_refused_or_ignored_is_reported(platform: Platform) -> None:
    customer_id, _, auth = await purchase(platform)
    cleared = await clear(platform, auth, 5_000)
    await wallet_becomes(platform, customer_id, posted=5_000, pending=0)
    await webhooks_settled(platform)
    # Lost: the gateway forgets the clearing it applied.
    [cleared_event] = [
        e for e in platform.sim.admin("GET", "/webhooks") if e["type"] == "transaction.cleared"
    ]
    await platform.stack.pool.execute(
        "DELETE FROM gateway_webhook_events WHERE event_id = $1", cleared_event["event_id"]
    )
    # Ignored: a refund for a card cardflow does not know finds no process.
    stray = cleared.model_copy(update={"id": f"tx-{uuid.uuid4().hex[:10]}", "card_id": "nosuch"})
    refund = platform.sim.admin(
        "POST",
        "/webhooks/emit",
        {
            "simulator": "issuer",
            "type": "transaction.refunded",
            "data": stray.model_dump(mode="json"),
        },
    )
    # Refused: an event whose data does not fit its route is answered 400, for ever.
    refused = platform.sim.admin(
        "POST",
        "/webhooks/emit",
        {"simulator": "issuer", "type": "cardflow.ping", "data": {"ping_id": "not a ping id!"}},
    )

    def attempted(events: list[dict[str, object]]) -> bool:
        by_id = {e["event_id"]: e for e in events}
        return by_id[refund["id"]]["delivered_at"] is not None and bool(
            by_id[refused["id"]]["attempts"]
        )

    async def webhooks() -> list[dict[str, object]]:
        listed: list[dict[str, object]] = platform.sim.admin("GET", "/webhooks")
        return listed

    await polling.until(webhooks, attempted, "the planted webhooks are tried")
    found = await webhook_violations(platform.stack.pool, admin_url(platform))
    assert sorted((v.check, v.subject) for v in found) == sorted(
        [
            ("webhook_unrecorded", cleared_event["event_id"]),
            ("webhook_money_ignored", refund["id"]),
            ("webhook_undelivered", refused["id"]),
        ]
    )
    by_check = {v.check: v for v in found}
    assert by_check["webhook_unrecorded"].detail.startswith(
        "issuer transaction.cleared delivered 1 times"
    )
    assert by_check["webhook_money_ignored"].detail == (
        "issuer transaction.refunded moves money but the gateway ignored it (no process posted it)"
    )
    assert "(last status 400)" in by_check["webhook_undelivered"].detail


async def test_a_workflow_task_that_keeps_failing_is_reported_stuck(platform: Platform) -> None:
    # A card started with an input its code cannot read: every workflow task fails.
    stuck = card_workflow_id(f"k-{uuid.uuid4().hex[:10]}")
    await platform.stack.client.start_workflow(
        CARD_WORKFLOW,
        {"not": "a card"},
        id=stuck,
        task_queue=platform.stack.queues.workflows,
    )
    found = await polling.until(
        lambda: workflow_violations(
            platform.stack.client,
            stuck_after_seconds=PLANTED_STUCK_AFTER_SECONDS,
            query=workflows_of(platform),
        ),
        bool,
        "the card is seen stuck",
    )
    assert [(v.check, v.subject) for v in found] == [("workflow_stuck", stuck)]
    assert "workflow task on attempt" in found[0].detail
