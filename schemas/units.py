"""Units every module counts in: durations in whole seconds, rates in basis
points. One definition each, so a policy default reads as what it means
(`7 * DAY_SECONDS`, `fee_bps // BASIS_POINTS_PER_UNIT`)."""

from __future__ import annotations

MINUTE_SECONDS = 60
HOUR_SECONDS = 60 * MINUTE_SECONDS
DAY_SECONDS = 24 * HOUR_SECONDS

# A rate of one basis point is one ten-thousandth of the amount.
BASIS_POINTS_PER_UNIT = 10_000
