"""The card's money rules as pure functions: what its decisions and clearings
follow, with no I/O and no clock of their own (`now` is always passed in).

- Refusal: a card that is paused or not open, a request in another currency
  or at a blocked MCC, one purchase too many open, or an amount that would
  take the authorization past the per-transaction limit, the day or the month
  (UTC) past their limits, or the velocity window past its count or amount,
  is declined with the first reason that applies, in that order.
- Spend counters: an approval counts towards the day, the month and the
  velocity window at the moment it is approved; an approval taken back (a
  hold refused, a decision followed down to the issuer's) is subtracted from
  the same counters. A new day or month (UTC) starts its counter at zero.
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

from schemas.cards import (
    AuthorizationRequest,
    CardInput,
    DecisionRecord,
    DeclineReason,
    Spend,
)
from schemas.issuer import CardState
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
    return None


def roll(card: CardInput, now: datetime) -> None:
    """Forget spend outside the velocity window and past days and months."""
    window_start = now - timedelta(seconds=card.policy.velocity_window_seconds)
    card.recent = [s for s in card.recent if s.at > window_start]
    day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
    if card.spent_day != day:
        card.spent_day, card.spent_day_minor = day, 0
    if card.spent_month != month:
        card.spent_month, card.spent_month_minor = month, 0


def count(card: CardInput, now: datetime, amount_minor: int) -> None:
    """Add (or, negative, take back) an approval to the limits' counters."""
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
