"""The records of the issuer's daily settlement file, generated: what the
issuer really recorded that day, plus synthetic card transactions up to a
volume (millions if asked), then the day's interchange and processing fee
totals per currency.

Pure and streaming: the same inputs give the same records in the same
order, one at a time, whatever the volume; nothing holds the day in memory.

Each record comes with what cardflow is meant to know of it, for a bench or
a test to seed cardflow's ledger with: the issuer's own transactions were
announced to cardflow as they happened; of the synthetic ones, an exact
share was never seen, another was seen with another amount, and the rest
were seen exactly. The shares decide only these marks, never the records:
the file of a day is the same whatever cardflow is meant to have seen.

An issuer's own mistake can be asked for too: `duplicated_bps` of the
synthetic clearings, force posts and refunds are settled a second time,
right after, under another record id (the program charged twice).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import NamedTuple, TypeVar

from schemas.money import MINOR_UNIT_EXPONENT, Currency
from schemas.settlement import (
    SettlementDirection,
    SettlementFeeType,
    SettlementFileRecord,
    SettlementFileRecordType,
)
from schemas.units import BASIS_POINTS_PER_UNIT, DAY_SECONDS

# The interchange the program earns on a purchase (a prepaid program is
# exempt from the US debit cap), given back on a refund; and the issuer's
# processing fee on each purchase, at least one minor unit. Both rounded
# down: the issuer never pays out a fraction it did not receive.
INTERCHANGE_BPS = 150
PROCESSING_FEE_BPS = 10
PROCESSING_FEE_MINOR_MIN = 1

Choice = TypeVar("Choice")

# The largest day a generator makes: ten million card records.
SYNTHETIC_VOLUME_MAX = 10_000_000
# Synthetic records per synthetic card: the day's cards are this many times
# fewer than its records.
RECORDS_PER_CARD = 25
DAY_MICROSECONDS = DAY_SECONDS * 1_000_000
# Below this fraction of its amount (at least one unit), a differing
# amount is the kind of difference a partial clearing or a fee makes.
OTHER_AMOUNT_DIVISOR = 10

# The synthetic mix, in basis points of the day's records.
_TYPE_MIX_BPS: tuple[tuple[SettlementFileRecordType, int], ...] = (
    (SettlementFileRecordType.CLEARING, 8_000),
    (SettlementFileRecordType.FORCE_POST, 100),
    (SettlementFileRecordType.REFUND, 600),
    (SettlementFileRecordType.REVERSAL, 800),
    (SettlementFileRecordType.CHARGEBACK, 50),
    (SettlementFileRecordType.FEE, 450),
)
_CURRENCY_MIX_BPS: tuple[tuple[Currency, int], ...] = (
    (Currency.USD, 7_000),
    (Currency.EUR, 1_500),
    (Currency.GBP, 1_000),
    (Currency.JPY, 500),
)
# Purchase sizes in cents of a two-decimal currency: ((low, high), share in bps).
_AMOUNT_BUCKETS: tuple[tuple[tuple[int, int], int], ...] = (
    ((100, 5_000), 6_000),
    ((5_000, 50_000), 3_000),
    ((50_000, 500_000), 900),
    ((500_000, 5_000_000), 100),
)
_FEE_CENTS_LOW, _FEE_CENTS_HIGH = 10, 500
assert sum(share for _, share in _TYPE_MIX_BPS) == BASIS_POINTS_PER_UNIT
assert sum(share for _, share in _CURRENCY_MIX_BPS) == BASIS_POINTS_PER_UNIT
assert sum(share for _, share in _AMOUNT_BUCKETS) == BASIS_POINTS_PER_UNIT

_DIRECTIONS = {
    SettlementFileRecordType.CLEARING: SettlementDirection.DEBIT,
    SettlementFileRecordType.FORCE_POST: SettlementDirection.DEBIT,
    SettlementFileRecordType.REFUND: SettlementDirection.CREDIT,
    SettlementFileRecordType.REVERSAL: SettlementDirection.NONE,
    SettlementFileRecordType.CHARGEBACK: SettlementDirection.CREDIT,
    SettlementFileRecordType.FEE: SettlementDirection.DEBIT,
}


# What an issuer may settle twice: the records that settle a transaction.
_SETTLED_AGAIN = frozenset(
    {
        SettlementFileRecordType.CLEARING,
        SettlementFileRecordType.FORCE_POST,
        SettlementFileRecordType.REFUND,
    }
)


class PlatformView(StrEnum):
    """What cardflow is meant to know of a record of the file."""

    # The issuer's own transaction: announced to cardflow as it happened.
    RECORDED = "recorded"
    SEEN_EXACT = "seen_exact"
    SEEN_OTHER_AMOUNT = "seen_other_amount"
    NEVER_SEEN = "never_seen"
    # The day's interchange or processing fees: cardflow learns them here.
    DAY_TOTAL = "day_total"
    # The issuer settling a transaction of the file a second time.
    DUPLICATE = "duplicate"


class GeneratedRecord(NamedTuple):
    record: SettlementFileRecord
    view: PlatformView
    # The amount cardflow holds for it: the record's own when seen exactly
    # or recorded, another when seen with another amount, None when never
    # seen or a day's total.
    platform_amount_minor: int | None


@dataclass(frozen=True)
class SyntheticShares:
    """Of the synthetic records, the share cardflow never saw and the share
    it saw with another amount, in basis points; the rest it saw exactly."""

    never_seen_bps: int = 100
    other_amount_bps: int = 50

    def __post_init__(self) -> None:
        assert 0 <= self.never_seen_bps <= BASIS_POINTS_PER_UNIT
        assert 0 <= self.other_amount_bps <= BASIS_POINTS_PER_UNIT - self.never_seen_bps

    def counts(self, synthetic: int) -> dict[PlatformView, int]:
        """How many of `synthetic` records get each mark, exactly (rounded down)."""
        never = synthetic * self.never_seen_bps // BASIS_POINTS_PER_UNIT
        other = synthetic * self.other_amount_bps // BASIS_POINTS_PER_UNIT
        return {
            PlatformView.NEVER_SEEN: never,
            PlatformView.SEEN_OTHER_AMOUNT: other,
            PlatformView.SEEN_EXACT: synthetic - never - other,
        }


def interchange_minor(record_type: SettlementFileRecordType, amount_minor: int) -> int | None:
    """The interchange the program earns on a record (given back on a refund)."""
    earned = amount_minor * INTERCHANGE_BPS // BASIS_POINTS_PER_UNIT
    if record_type in (SettlementFileRecordType.CLEARING, SettlementFileRecordType.FORCE_POST):
        return earned
    if record_type == SettlementFileRecordType.REFUND:
        return -earned
    return None


def processing_fee_minor(record_type: SettlementFileRecordType, amount_minor: int) -> int | None:
    """The issuer's processing fee on a purchase; nothing on anything else."""
    if record_type not in (SettlementFileRecordType.CLEARING, SettlementFileRecordType.FORCE_POST):
        return None
    return max(PROCESSING_FEE_MINOR_MIN, amount_minor * PROCESSING_FEE_BPS // BASIS_POINTS_PER_UNIT)


def synthetic_tag(seed: int) -> str:
    """Part of every synthetic id: two seeds never name their records alike."""
    return hashlib.blake2b(str(seed).encode(), digest_size=3).hexdigest()


def settlement_records(
    day: date,
    volume: int,
    seed: int,
    *,
    recorded: Sequence[SettlementFileRecord] = (),
    shares: SyntheticShares = SyntheticShares(),
    duplicated_bps: int = 0,
) -> Iterator[GeneratedRecord]:
    """The day's settlement records in time order: `recorded` (the issuer's
    own, oldest first) merged with synthetic card records up to `volume`
    card records in all, then per currency the day's interchange record and
    processing fee record. The same arguments always give the same records."""
    assert 0 <= volume <= SYNTHETIC_VOLUME_MAX
    synthetic = max(0, volume - len(recorded))
    own = (GeneratedRecord(one, PlatformView.RECORDED, one.amount_minor) for one in recorded)
    card_records = heapq.merge(
        own,
        _synthetic(day, synthetic, seed, shares, duplicated_bps),
        key=lambda generated: generated.record.occurred_at,
    )
    interchange: dict[Currency, int] = {}
    fees: dict[Currency, int] = {}
    for generated in card_records:
        record = generated.record
        if record.interchange_minor is not None:
            interchange[record.currency] = (
                interchange.get(record.currency, 0) + record.interchange_minor
            )
        if record.fee_minor is not None:
            fees[record.currency] = fees.get(record.currency, 0) + record.fee_minor
        yield generated
    yield from _day_totals(day, interchange, fees)


def _day_totals(
    day: date, interchange: dict[Currency, int], fees: dict[Currency, int]
) -> Iterator[GeneratedRecord]:
    settled_at = datetime.combine(day, time.max, UTC)
    stamp = day.strftime("%Y%m%d")
    for currency in Currency:
        if currency in interchange:
            total = interchange[currency]
            record = SettlementFileRecord(
                record_id=f"ic_{stamp}_{currency.value}",
                record_type=SettlementFileRecordType.INTERCHANGE,
                card_id=None,
                authorization_id=None,
                transaction_id=None,
                amount_minor=abs(total),
                currency=currency,
                direction=SettlementDirection.CREDIT if total >= 0 else SettlementDirection.DEBIT,
                interchange_minor=None,
                fee_minor=None,
                fee_type=None,
                occurred_at=settled_at,
                settlement_date=day,
            )
            yield GeneratedRecord(record, PlatformView.DAY_TOTAL, None)
        if fees.get(currency, 0) > 0:
            record = SettlementFileRecord(
                record_id=f"pf_{stamp}_{currency.value}",
                record_type=SettlementFileRecordType.FEE,
                card_id=None,
                authorization_id=None,
                transaction_id=None,
                amount_minor=fees[currency],
                currency=currency,
                direction=SettlementDirection.DEBIT,
                interchange_minor=None,
                fee_minor=None,
                fee_type=SettlementFeeType.PROCESSING,
                occurred_at=settled_at,
                settlement_date=day,
            )
            yield GeneratedRecord(record, PlatformView.DAY_TOTAL, None)


def _pick(rng: random.Random, mix: tuple[tuple[Choice, int], ...]) -> Choice:
    """One value of the mix, each as often as its share in basis points."""
    draw = rng.randrange(BASIS_POINTS_PER_UNIT)
    for value, share in mix:
        if draw < share:
            return value
        draw -= share
    raise AssertionError("the mix adds up to one")


def _spread(count: int, seed: int) -> tuple[int, int]:
    """An affine permutation i -> (a*i + b) mod count: marks spread over the
    day instead of bunched at its start, with exact counts, in O(1) memory."""
    if count <= 1:
        return 1, 0
    rng = random.Random(f"spread:{seed}:{count}")
    multiplier = rng.randrange(count // 3 + 1, count) | 1
    while math.gcd(multiplier, count) != 1:
        multiplier += 1
    return multiplier, rng.randrange(count)


def _synthetic(
    day: date, count: int, seed: int, shares: SyntheticShares, duplicated_bps: int
) -> Iterator[GeneratedRecord]:
    rng = random.Random(f"settlement:{day.isoformat()}:{seed}")
    tag, stamp = synthetic_tag(seed), day.strftime("%Y%m%d")
    start = datetime.combine(day, time.min, UTC)
    cards = max(1, count // RECORDS_PER_CARD)
    marks = shares.counts(count)
    never, other = marks[PlatformView.NEVER_SEEN], marks[PlatformView.SEEN_OTHER_AMOUNT]
    multiplier, offset = _spread(count, seed)
    last_purchase: str | None = None
    for index in range(count):
        record_type = _pick(rng, _TYPE_MIX_BPS)
        currency = _pick(rng, _CURRENCY_MIX_BPS)
        card = rng.randrange(cards)
        if record_type == SettlementFileRecordType.FEE:
            cents = rng.randrange(_FEE_CENTS_LOW, _FEE_CENTS_HIGH)
        else:
            low, high = _pick(rng, _AMOUNT_BUCKETS)
            cents = rng.randrange(low, high)
        amount_minor = max(1, cents * 10 ** MINOR_UNIT_EXPONENT[currency] // 100)
        # Drawn for every record, used only by some: the records stay the
        # same whatever the shares are.
        difference_draw = rng.randrange(1 << 16)

        serial = f"{stamp}_{tag}_{index:08d}"
        transaction_id: str | None = f"stx_{serial}"
        authorization_id: str | None = None
        fee_type: SettlementFeeType | None = None
        if record_type in (SettlementFileRecordType.CLEARING, SettlementFileRecordType.REVERSAL):
            authorization_id = f"sau_{serial}"
        if record_type == SettlementFileRecordType.REVERSAL:
            transaction_id = None
        if record_type == SettlementFileRecordType.FEE:
            # A conversion fee on the day's last purchase (or on none yet).
            transaction_id, fee_type = last_purchase, SettlementFeeType.CURRENCY_CONVERSION
        if record_type == SettlementFileRecordType.CLEARING:
            last_purchase = transaction_id
        record = SettlementFileRecord(
            record_id=f"sr_{serial}",
            record_type=record_type,
            card_id=f"scard_{tag}_{card:07d}",
            authorization_id=authorization_id,
            transaction_id=transaction_id,
            amount_minor=amount_minor,
            currency=currency,
            direction=_DIRECTIONS[record_type],
            interchange_minor=interchange_minor(record_type, amount_minor),
            fee_minor=processing_fee_minor(record_type, amount_minor),
            fee_type=fee_type,
            occurred_at=start + timedelta(microseconds=index * DAY_MICROSECONDS // count),
            settlement_date=day,
        )
        position = (multiplier * index + offset) % count
        if position < never:
            yield GeneratedRecord(record, PlatformView.NEVER_SEEN, None)
        elif position < never + other:
            delta = 1 + difference_draw % max(1, amount_minor // OTHER_AMOUNT_DIVISOR)
            seen = amount_minor - delta if amount_minor > delta else amount_minor + delta
            yield GeneratedRecord(record, PlatformView.SEEN_OTHER_AMOUNT, seen)
        else:
            yield GeneratedRecord(record, PlatformView.SEEN_EXACT, amount_minor)
        if (
            record_type in _SETTLED_AGAIN
            and difference_draw % BASIS_POINTS_PER_UNIT < duplicated_bps
        ):
            again = record.model_copy(update={"record_id": f"sr_{serial}_again"})
            yield GeneratedRecord(again, PlatformView.DUPLICATE, None)
