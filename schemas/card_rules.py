"""The card's money rules as pure functions: what its decisions and clearings
follow, with no I/O and no clock of their own (`now` is always passed in).

- Refusal: a card that is paused or not open, a request in another currency
  or at a blocked MCC, one purchase too many open, or an amount that would
  take the authorization past the per-transaction limit, the day or the month
  (UTC) past their limits, or the velocity window past its count or amount,
  is declined with the first reason that applies, in that order.
- Controls (schemas/card_controls.py), after the blocked MCCs and before
  the open-authorizations maximum: the nightly freeze, the merchant lock, a
  single-use card already used (its first purchase; increments of it pass),
  the MCC allow and block lists, the country allow and block lists; and
  after the card's own limits and velocity, each window limit (amount, then
  count for a new purchase), overall before per MCC group.
- Spend counters: an approval counts towards the day, the month and the
  velocity window at the moment it is approved, and towards every window of
  the controls (overall and for each group of its MCC); an approval taken
  back (a hold refused, a decision followed down to the issuer's, a
  reversal) is subtracted from the same counters. A new period (UTC) starts
  its counter at zero.
- Partial approval: when the full amount cannot be held and the merchant
  takes partial approvals, what the wallet has available, if it is more than
  zero and less than what was asked.
- Clearing over the authorization: a clearing within what was authorized
  posts in full; beyond it the excess posts while all the authorization's
  excess stays within `clearing_over_tolerance_bps` of what was authorized
  (rounded down); a clearing with no authorization (a force post) posts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Literal

from schemas.auth_rules import Facts, Rule, Verdict, evaluate
from schemas.authentication import AuthenticationRequest
from schemas.card_controls import (
    WINDOWS,
    Controls,
    Window,
    WindowSpend,
    counter_key,
    effective,
    period,
)
from schemas.cards import (
    AuthorizationRequest,
    CardInput,
    DecisionRecord,
    DeclineReason,
    Spend,
)
from schemas.issuer import CardState
from schemas.merchant_codes import groups_of, names
from schemas.units import BASIS_POINTS_PER_UNIT


def refusal(
    card: CardInput,
    request: AuthorizationRequest,
    authorized_minor: int,
    open_authorizations: int,
    now: datetime,
    declines_at_open_max: Callable[[], bool],
) -> DeclineReason | None:
    """Why the card declines `request` on its own, or None to try the hold.

    `authorized_minor` is what the authorization was already approved for
    (the per-transaction limit covers its increments); `open_authorizations`
    how many of the card's authorizations hold money now.
    `declines_at_open_max` says whether a card holding exactly its maximum of
    open authorizations declines (asked only in that case: a card started
    before that rule approved one more). Rolls the spend counters to `now`.
    """
    limits, policy = card.limits, card.policy
    if card.state is CardState.PAUSED:
        return DeclineReason.CARD_PAUSED
    if card.state is not CardState.OPEN:
        return DeclineReason.CARD_CLOSED
    if request.currency != card.currency:
        return DeclineReason.CURRENCY_MISMATCH
    if request.merchant.mcc in limits.blocked_mccs:
        return DeclineReason.BLOCKED_MCC
    controls = card_controls(card, now)
    controlled = controls_refusal(card, controls, request, now)
    if controlled is not None:
        return controlled
    if request.kind == "initial" and (
        open_authorizations > policy.open_authorizations_max
        or (open_authorizations == policy.open_authorizations_max and declines_at_open_max())
    ):
        return DeclineReason.TOO_MANY_OPEN_AUTHORIZATIONS
    amount = request.amount_minor
    if (
        limits.per_transaction_minor is not None
        and authorized_minor + amount > limits.per_transaction_minor
    ):
        return DeclineReason.OVER_TRANSACTION_LIMIT
    roll(card, now)
    if limits.per_day_minor is not None and card.spent_day_minor + amount > limits.per_day_minor:
        return DeclineReason.OVER_DAILY_LIMIT
    if (
        limits.per_month_minor is not None
        and card.spent_month_minor + amount > limits.per_month_minor
    ):
        return DeclineReason.OVER_MONTHLY_LIMIT
    if len(card.recent) >= policy.velocity_count_max:
        return DeclineReason.VELOCITY_COUNT
    if policy.velocity_amount_max_minor is not None and (
        sum(s.amount_minor for s in card.recent) + amount > policy.velocity_amount_max_minor
    ):
        return DeclineReason.VELOCITY_AMOUNT
    return window_refusal(card, controls, request, now)


_OVER_WINDOW: dict[Window, DeclineReason] = {
    "day": DeclineReason.OVER_DAILY_LIMIT,
    "week": DeclineReason.OVER_WEEKLY_LIMIT,
    "month": DeclineReason.OVER_MONTHLY_LIMIT,
    "year": DeclineReason.OVER_YEARLY_LIMIT,
    "lifetime": DeclineReason.OVER_LIFETIME_LIMIT,
}


def card_controls(card: CardInput, now: datetime) -> Controls:
    """The card's effective controls at `now` (the narrowest scope wins)."""
    program = card.scoped_controls.get("program")
    customer = card.scoped_controls.get("customer")
    return effective(
        program.controls if program else None,
        customer.controls if customer else None,
        card.controls,
        card.temporary_controls,
        now,
    )


def controls_refusal(
    card: CardInput, controls: Controls, request: AuthorizationRequest, now: datetime
) -> DeclineReason | None:
    """Why the card's controls refuse the request (before any amount)."""
    merchant = request.merchant
    if controls.nightly_freeze is not None and controls.nightly_freeze.frozen_at(now):
        return DeclineReason.FROZEN_BY_SCHEDULE
    lock = controls.merchant_lock
    if lock is not None:
        locked = lock.name if lock.mode == "named" else card.locked_merchant
        if locked is not None and locked.casefold() != merchant.name.casefold():
            return DeclineReason.MERCHANT_LOCKED
    if controls.single_use and request.kind == "initial" and card.purchases_approved > 0:
        return DeclineReason.SINGLE_USE_CARD_USED
    if controls.mcc_block is not None and names(controls.mcc_block, merchant.mcc):
        return DeclineReason.MCC_NOT_ALLOWED
    if controls.mcc_allow is not None and not names(controls.mcc_allow, merchant.mcc):
        return DeclineReason.MCC_NOT_ALLOWED
    if controls.country_block is not None and merchant.country in controls.country_block:
        return DeclineReason.COUNTRY_NOT_ALLOWED
    if controls.country_allow is not None and merchant.country not in controls.country_allow:
        return DeclineReason.COUNTRY_NOT_ALLOWED
    return None


def window_refusal(
    card: CardInput, controls: Controls, request: AuthorizationRequest, now: datetime
) -> DeclineReason | None:
    """Why a window limit refuses the request: overall limits first, then
    those of the request's MCC groups; amount before count."""
    groups = set(groups_of(request.merchant.mcc))
    purchases = 1 if request.kind == "initial" else 0
    for limit in sorted(controls.limits or (), key=lambda limit: limit.mcc_group is not None):
        if limit.mcc_group is not None and limit.mcc_group not in groups:
            continue
        spent = _spent(card, limit.window, limit.mcc_group, now)
        over_amount = (
            limit.amount_max_minor is not None
            and spent.amount_minor + request.amount_minor > limit.amount_max_minor
        )
        over_count = limit.count_max is not None and spent.count + purchases > limit.count_max
        if over_amount or over_count:
            if limit.mcc_group is not None:
                return DeclineReason.OVER_MCC_GROUP_LIMIT
            return _OVER_WINDOW[limit.window] if over_amount else DeclineReason.OVER_COUNT_LIMIT
    return None


def _spent(card: CardInput, window: Window, group: str | None, now: datetime) -> WindowSpend:
    found = card.control_spend.get(counter_key(window, group))
    if found is None or found.period != period(window, now):
        return WindowSpend(period=period(window, now))
    return found


def count_controls(
    card: CardInput, mcc: str | None, now: datetime, amount_minor: int, purchases: int
) -> None:
    """Add (negative: take back) approvals to every window's counter, overall
    and for each group of `mcc` (when known)."""
    groups: tuple[str | None, ...] = (None, *(groups_of(mcc) if mcc else ()))
    for window in WINDOWS:
        for group in groups:
            spent = _spent(card, window, group, now)
            spent.amount_minor = max(spent.amount_minor + amount_minor, 0)
            spent.count = max(spent.count + purchases, 0)
            card.control_spend[counter_key(window, group)] = spent


def roll(card: CardInput, now: datetime) -> None:
    """Forget spend outside the velocity window and past days and months."""
    window_start = now - timedelta(seconds=card.policy.velocity_window_seconds)
    card.recent = [s for s in card.recent if s.at > window_start]
    day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
    if card.spent_day != day:
        card.spent_day, card.spent_day_minor = day, 0
    if card.spent_month != month:
        card.spent_month, card.spent_month_minor = month, 0


def count(
    card: CardInput,
    now: datetime,
    amount_minor: int,
    *,
    mcc: str | None = None,
    purchases: int = 0,
) -> None:
    """Add (or, negative, take back) an approval to the limits' counters:
    `purchases` new purchases (1, or -1 taking one back), at `mcc`."""
    count_controls(card, mcc, now, amount_minor, purchases)
    roll(card, now)
    card.spent_day_minor += amount_minor
    card.spent_month_minor += amount_minor
    if amount_minor > 0:
        card.recent.append(Spend(at=now, amount_minor=amount_minor))
    elif amount_minor < 0 and card.recent:
        last = card.recent[-1]
        last.amount_minor += amount_minor
        if last.amount_minor <= 0:
            card.recent.pop()


def partial_approval(requested_minor: int, available_minor: int) -> int:
    """What a partial approval holds when the full amount could not be: the
    available balance when it is above zero and below the request, else 0."""
    if 0 < available_minor < requested_minor:
        return available_minor
    return 0


def authorized_total(decisions: Iterable[DecisionRecord]) -> int:
    """What an authorization was approved for over all its decisions."""
    return sum(d.approved_minor for d in decisions)


def excess_within_tolerance(
    authorized_minor: int,
    cleared_minor: int,
    over_minor: int,
    excess_minor: int,
    tolerance_bps: int,
) -> bool:
    """Whether a clearing's `excess_minor` beyond the holds posts on its own.

    `cleared_minor` is everything cleared against the authorization so far,
    this clearing included; `over_minor` the excess already posted beyond
    what was authorized. Cleared no more than authorized (the holds were
    short: an expired or released part) always posts."""
    if cleared_minor <= authorized_minor:
        return True
    allowance = authorized_minor * tolerance_bps // BASIS_POINTS_PER_UNIT
    return over_minor + excess_minor <= allowance


def card_rules(card: CardInput, now: datetime) -> tuple[list[Rule], str | None]:
    """The authorization rules in force on the card, and their source: the
    narrowest scope that sets them ("card", "customer v2", "program v5")."""
    for temporary in reversed(card.temporary_controls):
        if temporary.until > now and temporary.controls.rules is not None:
            return temporary.controls.rules, f"card temporary {temporary.id}"
    if card.controls.rules is not None:
        return card.controls.rules, "card"
    for scope in ("customer", "program"):
        scoped = card.scoped_controls.get(scope)
        if scoped is not None and scoped.controls.rules is not None:
            return scoped.controls.rules, f"{scope} v{scoped.version}"
    return [], None


def rules_verdict(
    rules: list[Rule], card: CardInput, request: AuthorizationRequest, at: datetime
) -> Verdict:
    """The rules' verdict on the request, from the card's state at `at`."""
    return evaluate(rules, card_facts(card, request, at))


def card_facts(
    card: CardInput, request: AuthorizationRequest | AuthenticationRequest, at: datetime
) -> Facts:
    """What the rules look at: the request's amount and merchant, and the
    card's state at `at` (its age, its customer's segment, its approvals)."""
    return Facts(
        amount_minor=request.amount_minor,
        mcc=request.merchant.mcc,
        country=request.merchant.country,
        at=at,
        card_started_at=card.opened_at,
        segment=card.customer_tier,
        approvals=card.rule_approvals,
    )


def authentication_by_rules(
    card: CardInput, request: AuthenticationRequest, at: datetime
) -> tuple[Literal["decline", "challenge"], str] | None:
    """What the card's active rules say of a 3-D Secure authentication: a
    decline rule declines it, else a challenge rule challenges it (the
    reason names the rule); None when no rule matches."""
    rules, _ = card_rules(card, at)
    if not rules:
        return None
    facts = card_facts(card, request, at)
    for action in ("decline", "challenge"):
        decided_by = evaluate(rules, facts, action).declined_by
        if decided_by is not None:
            return action, f"rule:{decided_by}"
    return None
