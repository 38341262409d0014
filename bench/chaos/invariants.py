"""The chaos run's money-independent invariants, checked once everything quiesced.

Each check reads the platform's durable state (the ledger, Temporal's
executions, the simulators' outbox and the gateway's memory of webhooks) and
returns every violation it finds: an empty list means the invariant holds.
A check never raises for a violation; it raises only when it cannot look
(the database or Temporal unreachable).

What the checks promise, precisely:

- `ledger_violations`: the ledger verifier's invariants, plus no customer
  wallet (account kind 'wallet') with available = credits posted - debits
  posted - debits pending below zero, whatever its constraint flags say.
- `hold_violations`:
  - `hold_outlived_expiry`: a hold (pending transfer) that nobody resolved
    (no transfer has its id as pending_id) although its ledger expiry passed
    more than the margin ago;
  - `authorization_held_twice`: two unresolved holds of one card
    authorization in the same hold slot. The card workflow keys its holds
    card/{card}/auth/{authorization}/{root}[/{derivation}...], where the
    root names why the hold exists: `d{n}` (the card's answer to decision
    n; `d{n}-partial` when the full amount was refused, so it takes the
    same slot), `d{n}/issuer` (what the issuer approved for decision n
    beyond the card's answer) or `advice/{n}` (the issuer's n-th advice).
    A partial post or release resolves a hold and re-holds the rest under a
    derived key (`{key}/rest/{cause}`, or a digest past the key length) in
    one atomic call, so at any instant each slot holds at most one live
    hold: an increment or a stand-in approval takes a slot of its own and
    is not "held twice". Keys of cards from before CARD_MONEY_PATCH whose
    root is a counter name no slot and are not grouped.
- `workflow_violations`: every cardflow workflow execution that ended
  FAILED, TIMED_OUT or TERMINATED (cancellation is an operator's or a
  caller's decision and is not reported), and every RUNNING one that is
  stuck: a pending activity on its ACTIVITY_ATTEMPTS_STUCK_MIN-th attempt
  or later, or paused; a workflow task on its WORKFLOW_TASK_ATTEMPTS_STUCK_MIN-th
  attempt or later (the workflow code fails); or work pending (an activity
  or a workflow task) while the history has not grown for stuck_after_seconds
  (retries write no events, so this is how long the workflow has made no
  progress). A workflow with nothing pending (waiting for a timer, a
  signal, an update, an operator) is never stuck.
- `feed_violations`: every customer wallet's posted balance is the sum of
  what its customer's events say they moved it by (`posted_minor`, in its
  currency): the feed and the event stream agree with the ledger to the
  unit, however the events were repeated, reordered or cut by kills.
- `tier_spend_violations`: what each customer's cards counted against
  their KYC tier (card_tier_spend, over every month, in each currency)
  equals the card holds placed from their wallet: every hold whose key's
  root is a placement (`d{n}`, `d{n}-partial`, `d{n}/issuer`, `advice/{n}`;
  not a rest re-held under a derived key), whatever became of it. A hold
  counted twice (a retried task) or not at all breaks it. (A run's cards
  all start under CARD_TIER_LIMITS_PATCH; older cards' holds are not counted.)
- `webhook_violations`: every event the simulators emitted was delivered
  (2xx, `delivered_at` set) and the gateway remembers it exactly once with a
  fitting outcome: 'delivered' only for an event type that has a route, and
  'ignored' never for a money event of the issuer (a clearing, force post,
  refund or reversal), which the gateway must bring to a card's process even
  after the card's process ended. Other routed events may be ignored
  legitimately (a new authorization the card decided itself, a late event for
  a finished top-up or onboarding).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import temporalio.api.common.v1
import temporalio.api.failure.v1
import temporalio.api.history.v1
import temporalio.api.workflowservice.v1
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus

from activities.ledger.verify import verify
from schemas.providers import ISSUER
from starters.gateway.routes import route_for
from workflows.catalog import STATUS_QUERIES

# The workflow types cardflow's workers register (every one of them: a
# withdrawal or a closure fails like any other); other executions in the
# namespace are not cardflow's to judge.
CARDFLOW_WORKFLOW_TYPES = frozenset(STATUS_QUERIES)
# An activity on this attempt has failed four times in a row: whatever the
# clock says, it is not converging on its own.
ACTIVITY_ATTEMPTS_STUCK_MIN = 5
# A workflow task failing this often is a bug in (or a non-determinism of)
# the workflow code; Temporal retries it forever.
WORKFLOW_TASK_ATTEMPTS_STUCK_MIN = 3
# Describe calls in flight at once: a chaos run leaves thousands of workflows.
DESCRIBE_CONCURRENCY_MAX = 16
# Executions listed per visibility page.
LIST_PAGE_SIZE = 1_000
# Executions one check looks at; past this it reports that it stopped short.
WORKFLOWS_CHECKED_MAX = 200_000
# Failure messages quoted in a detail are cut to this many characters.
MESSAGE_CHARS_MAX = 300
# Holds and webhook rows read by one query; past this a check reports that it
# stopped short rather than claiming the rest is sound.
ROWS_CHECKED_MAX = 1_000_000
WEBHOOK_LIST_TIMEOUT_SECONDS = 30.0

# The issuer's events that move money: the gateway restarts a card's process
# for them (starters/gateway/routes.py, _card_restart), so none may be ignored.
MONEY_EVENTS = frozenset(
    (ISSUER, event_type)
    for event_type in (
        "transaction.cleared",
        "transaction.force_posted",
        "transaction.refunded",
        "authorization.reversed",
    )
)

_HOLD_KEY = re.compile(r"^(?P<card>card/[^/]+)/auth/(?P<authorization>[^/]+)/(?P<root>.+)$")
_ISSUER_SLOT = re.compile(r"^d(?P<n>[0-9]+)/issuer(?:/|$)")
_DECISION_SLOT = re.compile(r"^d(?P<n>[0-9]+)(?:-partial)?(?:/|$)")
_ADVICE_SLOT = re.compile(r"^advice/(?P<n>[0-9]+)(?:/|$)")


@dataclass(frozen=True)
class Violation:
    check: str  # short name of the invariant, e.g. "workflow_failed"
    subject: str  # what to investigate: workflow id, ledger key or account code, event id
    detail: str  # one sentence with the figures

    def line(self) -> str:
        return f"{self.check} {self.subject}: {self.detail}"


# ----- ledger ---------------------------------------------------------------

_NEGATIVE_WALLETS = """
SELECT a.code, a.currency, sum(b.credits_posted) AS cp, sum(b.debits_posted) AS dp,
       sum(b.debits_pending) AS dpend
FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id
WHERE a.kind = 'wallet'
GROUP BY a.id
HAVING sum(b.credits_posted) - sum(b.debits_posted) - sum(b.debits_pending) < 0
ORDER BY a.code
"""


async def ledger_violations(pool: asyncpg.Pool) -> list[Violation]:
    """The ledger verifier's violations, and every wallet whose available balance
    (credits posted - debits posted - debits pending) is below zero."""
    found = [Violation(v.check, v.subject, v.detail) for v in await verify(pool)]
    for row in await pool.fetch(_NEGATIVE_WALLETS):
        available = row["cp"] - row["dp"] - row["dpend"]
        found.append(
            Violation(
                "wallet_negative",
                row["code"],
                f"available {available} {row['currency']} minor = credits {row['cp']}"
                f" - debits {row['dp']} - pending debits {row['dpend']}",
            )
        )
    return found


# ----- the feed ---------------------------------------------------------------

_FEED_DISAGREES = """
WITH wallets AS (
    SELECT a.code, a.owner_id, a.currency,
           (sum(b.credits_posted) - sum(b.debits_posted))::bigint AS posted
    FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id
    WHERE a.kind = 'wallet' AND a.owner_id IS NOT NULL
    GROUP BY a.id
), told AS (
    SELECT customer_id, currency, sum(posted_minor)::bigint AS posted
    FROM customer_events WHERE posted_minor IS NOT NULL
    GROUP BY customer_id, currency
)
SELECT w.code, w.currency, w.posted, coalesce(t.posted, 0) AS told
FROM wallets w
LEFT JOIN told t ON t.customer_id = w.owner_id AND t.currency = w.currency
WHERE w.posted <> coalesce(t.posted, 0)
ORDER BY w.code
LIMIT $1
"""


async def feed_violations(pool: asyncpg.Pool) -> list[Violation]:
    """Every wallet whose posted balance its customer's events do not add up to."""
    return [
        Violation(
            "feed_disagrees_with_ledger",
            row["code"],
            f"posted {row['posted']} {row['currency']} minor, the events say {row['told']}",
        )
        for row in await pool.fetch(_FEED_DISAGREES, ROWS_CHECKED_MAX)
    ]


# ----- KYC tiers ----------------------------------------------------------------

_TIER_SPEND_DISAGREES = r"""
WITH placed AS (
    SELECT w.owner_id AS customer_id, h.currency, sum(h.amount_minor)::bigint AS held
    FROM ledger_transfers h
    JOIN ledger_accounts w ON w.id = h.debit_account_id AND w.kind = 'wallet'
    JOIN ledger_accounts c ON c.id = h.credit_account_id
    WHERE h.kind = 'pending' AND c.code LIKE 'issuer:settlement:%'
      AND h.idempotency_key ~ '^card/[^/]+/auth/[^/]+/(d[0-9]+(-partial|/issuer)?|advice/[0-9]+)$'
    GROUP BY w.owner_id, h.currency
), counted AS (
    SELECT customer_id, currency, sum(spent_minor)::bigint AS spent
    FROM card_tier_spend GROUP BY customer_id, currency
)
SELECT coalesce(p.customer_id, c.customer_id) AS customer_id,
       coalesce(p.currency, c.currency) AS currency,
       coalesce(p.held, 0) AS held, coalesce(c.spent, 0) AS spent
FROM placed p FULL JOIN counted c ON c.customer_id = p.customer_id AND c.currency = p.currency
WHERE coalesce(p.held, 0) <> coalesce(c.spent, 0)
ORDER BY 1, 2
LIMIT $1
"""


async def tier_spend_violations(pool: asyncpg.Pool) -> list[Violation]:
    """Every customer whose cards' count against their tier is not the sum
    of the card holds placed from their wallet."""
    return [
        Violation(
            "tier_spend_disagrees_with_holds",
            row["customer_id"],
            f"{row['spent']} {row['currency']} minor counted against the KYC tier,"
            f" {row['held']} held by the customer's cards",
        )
        for row in await pool.fetch(_TIER_SPEND_DISAGREES, ROWS_CHECKED_MAX)
    ]


# ----- holds ----------------------------------------------------------------

_UNRESOLVED_HOLDS = """
SELECT h.idempotency_key, h.amount_minor, h.currency, h.expires_at, d.code AS debit,
       h.expires_at < clock_timestamp() - make_interval(secs => $1) AS outlived
FROM ledger_transfers h
JOIN ledger_accounts d ON d.id = h.debit_account_id
WHERE h.kind = 'pending'
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = h.id)
ORDER BY h.id
LIMIT $2
"""


def hold_slot(key: str) -> tuple[str, str, str] | None:
    """(card workflow id, authorization id, slot) of a card's hold key, or None
    for a key that names no slot (not a card's, or a pre-patch counter root)."""
    match = _HOLD_KEY.match(key)
    if match is None:
        return None
    root = match["root"]
    for pattern, slot in (
        (_ISSUER_SLOT, "d{n}/issuer"),
        (_DECISION_SLOT, "d{n}"),
        (_ADVICE_SLOT, "advice/{n}"),
    ):
        found = pattern.match(root)
        if found is not None:
            return match["card"], match["authorization"], slot.format(n=found["n"])
    return None


async def hold_violations(pool: asyncpg.Pool, *, margin_seconds: float) -> list[Violation]:
    """Holds left unresolved more than margin_seconds past their expiry, and card
    authorizations holding twice in one slot (see the module's docstring)."""
    rows = await pool.fetch(_UNRESOLVED_HOLDS, margin_seconds, ROWS_CHECKED_MAX + 1)
    found: list[Violation] = []
    if len(rows) > ROWS_CHECKED_MAX:
        found.append(
            Violation(
                "holds_unchecked",
                "ledger_transfers",
                f"more than {ROWS_CHECKED_MAX} unresolved holds; only the first were checked",
            )
        )
        rows = rows[:ROWS_CHECKED_MAX]
    slots: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        if row["outlived"]:
            found.append(
                Violation(
                    "hold_outlived_expiry",
                    row["idempotency_key"],
                    f"hold of {row['amount_minor']} {row['currency']} minor on {row['debit']}"
                    f" expired at {row['expires_at'].isoformat()} and is still pending"
                    f" ({margin_seconds:g} s margin)",
                )
            )
        slot = hold_slot(row["idempotency_key"])
        if slot is not None:
            _, authorization, name = slot
            slots[(authorization, name)].append(row)
    for (authorization, name), holds in slots.items():
        if len(holds) < 2:
            continue
        card = hold_slot(holds[0]["idempotency_key"])
        assert card is not None  # grouped only when it named a slot
        listed = ", ".join(
            f"{h['idempotency_key']} ({h['amount_minor']} {h['currency']} minor)" for h in holds
        )
        found.append(
            Violation(
                "authorization_held_twice",
                f"{card[0]}/auth/{authorization}",
                f"slot {name} has {len(holds)} unresolved holds, one expected: {listed}",
            )
        )
    return found


# ----- workflows --------------------------------------------------------------

_CLOSED_BADLY = {
    WorkflowExecutionStatus.FAILED: "workflow_failed",
    WorkflowExecutionStatus.TIMED_OUT: "workflow_timed_out",
    WorkflowExecutionStatus.TERMINATED: "workflow_terminated",
}


async def workflow_violations(
    client: Client,
    *,
    stuck_after_seconds: float,
    query: str | None = None,
    activity_attempts_stuck_min: int = ACTIVITY_ATTEMPTS_STUCK_MIN,
) -> list[Violation]:
    """Cardflow workflow executions that ended failed, timed out or terminated,
    and running ones that are stuck (see the module's docstring). `query`
    narrows the listing (a visibility filter); None lists the whole namespace.
    stuck_after_seconds should exceed the longest activity timeout (30 s for
    ledger and provider calls), so a healthy first attempt is never stuck."""
    found: list[Violation] = []
    running: list[WorkflowExecution] = []
    listed = 0
    async for execution in client.list_workflows(query, page_size=LIST_PAGE_SIZE):
        listed += 1
        if listed > WORKFLOWS_CHECKED_MAX:
            found.append(
                Violation(
                    "workflows_unchecked",
                    client.namespace,
                    f"more than {WORKFLOWS_CHECKED_MAX} executions; the rest were not checked",
                )
            )
            break
        if execution.workflow_type not in CARDFLOW_WORKFLOW_TYPES:
            continue
        if execution.status in _CLOSED_BADLY:
            found.append(await _closed_badly(client, execution))
        elif execution.status is WorkflowExecutionStatus.RUNNING:
            running.append(execution)
    limit = asyncio.Semaphore(DESCRIBE_CONCURRENCY_MAX)
    now = datetime.now(UTC)

    async def judge(execution: WorkflowExecution) -> Violation | None:
        async with limit:
            return await _stuck(
                client, execution, now, stuck_after_seconds, activity_attempts_stuck_min
            )

    for verdict in await asyncio.gather(*(judge(execution) for execution in running)):
        if verdict is not None:
            found.append(verdict)
    return found


async def busy_workflows(client: Client, query: str) -> list[str]:
    """The running executions of `query` with work in flight: an activity or
    a workflow task pending, or a child workflow asked for and not started
    yet. A card still applying the issuer's events delivered to it is one
    (between two steps its next workflow task is pending); a child that runs
    on its own (a purchase's cashback, open for refunds for weeks) is not."""
    running = [
        execution
        async for execution in client.list_workflows(query, page_size=LIST_PAGE_SIZE)
        if execution.status is WorkflowExecutionStatus.RUNNING
    ]
    limit = asyncio.Semaphore(DESCRIBE_CONCURRENCY_MAX)

    async def busy(execution: WorkflowExecution) -> bool:
        async with limit:
            handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
            raw = (await handle.describe()).raw_description
        return bool(
            raw.pending_activities
            or raw.HasField("pending_workflow_task")
            or any(not child.run_id for child in raw.pending_children)
        )

    verdicts = await asyncio.gather(*(busy(execution) for execution in running))
    return [execution.id for execution, verdict in zip(running, verdicts, strict=True) if verdict]


async def _closed_badly(client: Client, execution: WorkflowExecution) -> Violation:
    assert execution.status is not None
    check = _CLOSED_BADLY[execution.status]
    event = await _last_event(client, execution)
    why = "no close event readable"
    if event is not None:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            failure = event.workflow_execution_failed_event_attributes.failure
            why = f"failed: {await failure_message(client, failure)}"
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT:
            why = "timed out (its execution or run timeout passed)"
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
            attributes = event.workflow_execution_terminated_event_attributes
            who = f" by {attributes.identity}" if attributes.identity else ""
            why = f"terminated{who}: {attributes.reason or 'no reason given'}"
    return Violation(
        check,
        execution.id,
        f"{execution.workflow_type} run {execution.run_id} {why}"
        f" (closed {_iso(execution.close_time)})",
    )


async def _stuck(
    client: Client,
    execution: WorkflowExecution,
    now: datetime,
    stuck_after_seconds: float,
    activity_attempts_stuck_min: int,
) -> Violation | None:
    description = await client.get_workflow_handle(execution.id, run_id=execution.run_id).describe()
    if description.status is not WorkflowExecutionStatus.RUNNING:
        return None  # it ended since the listing
    raw = description.raw_description
    evidence: list[str] = []
    waiting: list[str] = []
    for activity in raw.pending_activities:
        what = f"activity {activity.activity_type.name} (id {activity.activity_id})"
        failure = ""
        if activity.HasField("last_failure"):
            failure = f", last failure: {await failure_message(client, activity.last_failure)}"
        waiting.append(f"{what} on attempt {activity.attempt}{failure}")
        if activity.paused:
            evidence.append(f"{what} is paused on attempt {activity.attempt}{failure}")
        elif activity.attempt >= activity_attempts_stuck_min:
            evidence.append(f"{what} is on attempt {activity.attempt}{failure}")
    task = raw.pending_workflow_task if raw.HasField("pending_workflow_task") else None
    if task is not None:
        waiting.append(f"a workflow task on attempt {task.attempt}")
        if task.attempt >= WORKFLOW_TASK_ATTEMPTS_STUCK_MIN:
            evidence.append(f"its workflow task is on attempt {task.attempt}")
    if not evidence and waiting:
        event = await _last_event(client, execution)
        if event is not None:
            idle = now - event.event_time.ToDatetime(tzinfo=UTC)
            if idle > timedelta(seconds=stuck_after_seconds):
                evidence.append(
                    f"no progress for {idle.total_seconds():.1f} s"
                    f" (over {stuck_after_seconds:g} s) while waiting on {'; '.join(waiting)}"
                )
    if not evidence:
        return None
    return Violation(
        "workflow_stuck",
        execution.id,
        f"{execution.workflow_type} run {execution.run_id}: {'; '.join(evidence)}",
    )


async def _last_event(
    client: Client, execution: WorkflowExecution
) -> temporalio.api.history.v1.HistoryEvent | None:
    """The newest event of the run's history: one small page, newest first."""
    response = await client.workflow_service.get_workflow_execution_history_reverse(
        temporalio.api.workflowservice.v1.GetWorkflowExecutionHistoryReverseRequest(
            namespace=client.namespace,
            execution=temporalio.api.common.v1.WorkflowExecution(
                workflow_id=execution.id, run_id=execution.run_id
            ),
            maximum_page_size=1,
        )
    )
    events = response.history.events
    return events[0] if events else None


async def failure_message(client: Client, failure: temporalio.api.failure.v1.Failure) -> str:
    """A failure's message and its causes' (an activity's failure says only
    "Activity task failed"; its cause says why), decoded when the data
    converter encrypted them."""
    copy = temporalio.api.failure.v1.Failure()
    copy.CopyFrom(failure)
    try:
        error: BaseException | None = await client.data_converter.decode_failure(copy)
        parts: list[str] = []
        while error is not None:
            kind, told = getattr(error, "type", None), str(error)
            parts.append(f"{kind}: {told}" if kind and not told.startswith(kind) else told)
            error = error.__cause__
        message = " <- ".join(parts)
    except Exception:  # noqa: BLE001 - a key we lack: the raw message still tells something
        message = failure.message
    message = " ".join(message.split())
    if len(message) > MESSAGE_CHARS_MAX:
        message = message[: MESSAGE_CHARS_MAX - 1] + "…"
    return message or "(no message)"


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "at an unknown time"


# ----- webhooks -------------------------------------------------------------


async def webhook_violations(pool: asyncpg.Pool, admin_url: str) -> list[Violation]:
    """Every webhook the simulators emitted (GET {admin_url}/webhooks) was
    delivered and is remembered by the gateway once with a fitting outcome."""
    async with httpx.AsyncClient(timeout=WEBHOOK_LIST_TIMEOUT_SECONDS) as http:
        response = await http.get(f"{admin_url}/webhooks")
        response.raise_for_status()
        sent: list[dict[str, Any]] = response.json()
    rows = await pool.fetch(
        "SELECT provider, event_id, event_type, outcome, workflow_id"
        " FROM gateway_webhook_events ORDER BY received_at LIMIT $1",
        ROWS_CHECKED_MAX + 1,
    )
    found: list[Violation] = []
    if len(rows) > ROWS_CHECKED_MAX:
        found.append(
            Violation(
                "webhooks_unchecked",
                "gateway_webhook_events",
                f"more than {ROWS_CHECKED_MAX} rows; events past them look unrecorded",
            )
        )
    recorded = {(row["provider"], row["event_id"]): row for row in rows}
    for event in sent:
        row = recorded.get((event["simulator"], event["event_id"]))
        found.extend(_webhook_verdicts(event, row))
    return found


def _webhook_verdicts(event: dict[str, Any], row: asyncpg.Record | None) -> Iterable[Violation]:
    simulator, event_id, event_type = event["simulator"], event["event_id"], event["type"]
    what = f"{simulator} {event_type}"
    if event["delivered_at"] is None:
        gave_up = "gave up" in str(event["last_status"] or "")
        yield Violation(
            "webhook_gave_up" if gave_up else "webhook_undelivered",
            event_id,
            f"{what} not delivered after {event['attempts']} attempts"
            f" (last status {event['last_status'] or 'none'})",
        )
        return
    if row is None:
        yield Violation(
            "webhook_unrecorded",
            event_id,
            f"{what} delivered {event['deliveries']} times (at {event['delivered_at']})"
            " but the gateway has no record of it",
        )
        return
    routed = route_for(simulator, event_type) is not None
    if row["event_type"] != event_type:
        yield Violation(
            "webhook_recorded_wrong",
            event_id,
            f"{what} recorded by the gateway as type {row['event_type']}",
        )
    if row["outcome"] == "delivered" and not routed:
        yield Violation(
            "webhook_delivered_without_route",
            event_id,
            f"{what} has no route but was recorded delivered to {row['workflow_id']}",
        )
    if row["outcome"] == "ignored" and (simulator, event_type) in MONEY_EVENTS:
        yield Violation(
            "webhook_money_ignored",
            event_id,
            f"{what} moves money but the gateway ignored it (no process posted it)",
        )
