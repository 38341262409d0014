"""Days and months that have ended.

A UTC day's settlement is reconciled, and a month billed, once: a second
start finds the first process. So the day or the month must be over first;
what a run made earlier would have seen is not final (records still to come,
cards still to be issued), and it would leave nothing for the scheduled run
that comes once the period has ended. Every door refuses a period that has
not ended: the HTTP API (422 naming the field), the CLI, the starters, and
the workflows themselves (with the workflow's deterministic clock), which
fail at once, non-retryably, before they touch anything.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from schemas.billing import period_bounds

# The ApplicationError type a workflow fails with when asked too early.
PERIOD_NOT_ENDED_ERROR = "PeriodNotEnded"


class PeriodNotEnded(ValueError):
    """Refused: `field` names a day or a month that has not ended at the
    time of asking."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def detail(self, location: str, value: object) -> list[dict[str, object]]:
        """The refusal as a 422 body names it (FastAPI's shape): `location`
        is where the field came from (path, query, body)."""
        return [
            {"type": "value_error", "loc": [location, self.field], "msg": str(self), "input": value}
        ]


def day_not_ended(day: date, now: datetime) -> str | None:
    """Why the UTC day cannot be reconciled at `now`; None once it has ended."""
    today = now.astimezone(UTC).date()
    if day < today:
        return None
    when = "has not ended" if day == today else "has not begun"
    return (
        f"{day.isoformat()} {when} (UTC, now {now.astimezone(UTC).isoformat(timespec='seconds')});"
        " a day is reconciled once it is over"
    )


def month_not_ended(period: str, now: datetime) -> str | None:
    """Why the month `YYYY-MM` cannot be billed at `now`; None once it has ended."""
    start, end = period_bounds(period)
    if end <= now:
        return None
    when = "has not ended" if start <= now else "has not begun"
    return f"{period} {when} (UTC, it ends at {end.isoformat()}); a month is billed once it is over"


def refuse_unended_day(field: str, day: date, now: datetime) -> None:
    """Raise PeriodNotEnded naming `field` unless the UTC day has ended."""
    reason = day_not_ended(day, now)
    if reason is not None:
        raise PeriodNotEnded(field, reason)


def refuse_unended_month(field: str, period: str, now: datetime) -> None:
    """Raise PeriodNotEnded naming `field` unless the month has ended."""
    reason = month_not_ended(period, now)
    if reason is not None:
        raise PeriodNotEnded(field, reason)
