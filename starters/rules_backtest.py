"""A backtest of candidate authorization rules against the cards' own
histories (`cardflow rules backtest RULES_FILE --days N`).

Each card's workflow history in Temporal holds every authorization it was
asked (the `authorize` update's input) and the answer it gave (the update's
outcome: the decision, the rule that declined it, the customer's segment),
and its start holds the card's state (when it opened, its approvals so far).
The backtest reads the histories of every card that ran in the last N days,
run after run in order, and replays each card's authorizations through the
candidate rules as if they had been in force: velocity windows count the
approvals the candidate rules would have left, not the ones that happened.

An authorization a candidate active rule declines becomes a decline; one an
active rule of the time declined (`declined_by_rule`) and no candidate rule
declines becomes an approval of what was asked (the wallet's funds then are
not in the history: the figure is an upper bound); every other answer
stands. Per rule, it reports what its conditions matched, the approvals it
turns into declines and the declines that become approvals because a rule
of the time is gone, with amounts (minor units, per currency), and a sample
of the authorizations affected.

It needs only Temporal (any cluster, through the deployment's settings and
codec), never the database.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecution

from schemas.auth_rules import Approval, Facts, Rule, RuleSet, evaluate, keep_approvals
from schemas.cards import AuthorizationAnswer, AuthorizationRequest, CardInput, DeclineReason
from workflows.cards import AUTHORIZE_UPDATE, CARD_WORKFLOW

SAMPLE_MAX = 5
HISTORIES_AT_ONCE = 8


@dataclass
class Asked:
    """One authorization the card answered."""

    card_id: str
    request: AuthorizationRequest
    answer: AuthorizationAnswer
    at: datetime


@dataclass
class RuleFigures:
    rule_id: str
    mode: str
    matched: int = 0
    matched_minor: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    approvals_to_declines: int = 0
    approvals_to_declines_minor: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    declines_to_approvals: int = 0
    declines_to_approvals_minor: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sample: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "mode": self.mode,
            "matched": self.matched,
            "matched_minor": dict(self.matched_minor),
            "approvals_to_declines": self.approvals_to_declines,
            "approvals_to_declines_minor": dict(self.approvals_to_declines_minor),
            "declines_to_approvals": self.declines_to_approvals,
            "declines_to_approvals_minor": dict(self.declines_to_approvals_minor),
            "sample": self.sample,
        }


@dataclass
class Report:
    days: int
    cards: int = 0
    authorizations: int = 0
    seconds: float = 0.0
    rules: dict[str, RuleFigures] = field(default_factory=dict)

    def figures(self, rule_id: str, mode: str) -> RuleFigures:
        if rule_id not in self.rules:
            self.rules[rule_id] = RuleFigures(rule_id, mode)
        return self.rules[rule_id]

    def as_json(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "cards": self.cards,
            "authorizations": self.authorizations,
            "seconds": round(self.seconds, 3),
            "authorizations_per_second": (
                round(self.authorizations / self.seconds, 1) if self.seconds else None
            ),
            "rules": [figures.as_json() for figures in self.rules.values()],
        }


def card_query(since: datetime) -> str:
    """The card runs that may hold authorizations since `since`."""
    return (
        f"WorkflowType = '{CARD_WORKFLOW}' AND "
        f"(ExecutionStatus = 'Running' OR CloseTime > '{since.isoformat()}')"
    )


async def card_runs(client: Client, since: datetime) -> dict[str, list[WorkflowExecution]]:
    """Each card's runs, oldest first."""
    runs: dict[str, list[WorkflowExecution]] = defaultdict(list)
    async for execution in client.list_workflows(card_query(since)):
        runs[execution.id].append(execution)
    for chain in runs.values():
        chain.sort(key=lambda execution: execution.start_time)
    return dict(runs)


async def card_history(
    client: Client, runs: list[WorkflowExecution]
) -> tuple[CardInput | None, datetime | None, list[Asked]]:
    """The card's state at its first run's start, that start, and every
    authorization its runs answered, in order."""
    first: CardInput | None = None
    started: datetime | None = None
    asked: list[Asked] = []
    for execution in runs:
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        requests: dict[str, AuthorizationRequest] = {}
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                if first is None:
                    attributes = event.workflow_execution_started_event_attributes
                    [first] = await client.data_converter.decode(
                        attributes.input.payloads, [CardInput]
                    )
                    started = event.event_time.ToDatetime(tzinfo=UTC)
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
                accepted = event.workflow_execution_update_accepted_event_attributes
                if accepted.accepted_request.input.name != AUTHORIZE_UPDATE:
                    continue
                [request] = await client.data_converter.decode(
                    accepted.accepted_request.input.args.payloads, [AuthorizationRequest]
                )
                requests[accepted.accepted_request.meta.update_id] = request
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
                completed = event.workflow_execution_update_completed_event_attributes
                request = requests.pop(completed.meta.update_id, None)
                if request is None or not completed.outcome.HasField("success"):
                    continue
                [answer] = await client.data_converter.decode(
                    completed.outcome.success.payloads, [AuthorizationAnswer]
                )
                at = request.requested_at or event.event_time.ToDatetime(tzinfo=UTC)
                asked.append(Asked(execution.id.removeprefix("card/"), request, answer, at))
    return first, started, asked


def replay_card(
    report: Report,
    rules: list[Rule],
    state: CardInput | None,
    started: datetime | None,
    asked: list[Asked],
    since: datetime,
) -> None:
    """The card's authorizations since `since` through the candidate rules,
    its velocity counting the approvals they would have left."""
    approvals: list[Approval] = list(state.rule_approvals) if state else []
    opened = (state.opened_at if state else None) or started
    for one in asked:
        request, answer = one.request, one.answer
        facts = Facts(
            amount_minor=request.amount_minor,
            mcc=request.merchant.mcc,
            country=request.merchant.country,
            at=one.at,
            card_started_at=opened,
            segment=answer.segment,
            approvals=approvals,
        )
        verdict = evaluate(rules, facts)
        matched = [r for r in rules if r.id == verdict.declined_by or r.id in verdict.shadow_hits]
        was_approved = answer.approved_amount_minor > 0
        by_rule_then = answer.reason == DeclineReason.DECLINED_BY_RULE.value
        approved_minor = answer.approved_amount_minor
        if verdict.declined_by is not None:
            approved_minor = 0
        elif by_rule_then:
            approved_minor = request.amount_minor
        counted = one.at >= since
        if counted:
            report.authorizations += 1
            currency = request.currency.value
            for rule in matched:
                figures = report.figures(rule.id, rule.mode)
                figures.matched += 1
                figures.matched_minor[currency] += request.amount_minor
            if verdict.declined_by is not None and was_approved:
                rule = next(r for r in rules if r.id == verdict.declined_by)
                figures = report.figures(rule.id, rule.mode)
                figures.approvals_to_declines += 1
                figures.approvals_to_declines_minor[currency] += answer.approved_amount_minor
                _sample(figures, one, "approved", "declined")
            if verdict.declined_by is None and by_rule_then:
                gone = answer.rule_id or "(unnamed)"
                figures = report.figures(gone, "removed")
                figures.declines_to_approvals += 1
                figures.declines_to_approvals_minor[currency] += request.amount_minor
                _sample(figures, one, "declined", "approved")
        if approved_minor > 0:
            approvals = keep_approvals(
                [*approvals, Approval(at=one.at, amount_minor=approved_minor)], one.at
            )


def _sample(figures: RuleFigures, one: Asked, before: str, after: str) -> None:
    if len(figures.sample) < SAMPLE_MAX:
        figures.sample.append(
            {
                "card_id": one.card_id,
                "authorization_id": one.request.authorization_id,
                "at": one.at.isoformat(),
                "amount_minor": one.request.amount_minor,
                "currency": one.request.currency.value,
                "merchant": one.request.merchant.name,
                "mcc": one.request.merchant.mcc,
                "before": before,
                "after": after,
            }
        )


async def backtest(
    client: Client,
    rules: RuleSet,
    days: int,
    *,
    now: datetime | None = None,
    cards: set[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """The candidate rules against the last `days` of the cards' histories
    (only these `cards`, when given); `progress(done, total)` is told as
    each card's history is read."""
    clock = asyncio.get_running_loop().time
    began = clock()
    since = (now or datetime.now(UTC)) - timedelta(days=days)
    report = Report(days=days)
    for rule in rules.rules:
        report.figures(rule.id, rule.mode)
    runs = await card_runs(client, since)
    if cards is not None:
        runs = {id_: chain for id_, chain in runs.items() if id_.removeprefix("card/") in cards}
    report.cards = len(runs)
    done = 0
    gate = asyncio.Semaphore(HISTORIES_AT_ONCE)

    async def one(chain: list[WorkflowExecution]) -> None:
        nonlocal done
        async with gate:
            state, started, asked = await card_history(client, chain)
        replay_card(report, rules.rules, state, started, asked, since)
        done += 1
        if progress is not None:
            progress(done, len(runs))

    if progress is not None:
        progress(0, len(runs))
    await asyncio.gather(*(one(chain) for chain in runs.values()))
    report.seconds = clock() - began
    return report
