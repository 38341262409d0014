"""Withdrawals `withdrawal/{request_id}`: a customer's money paid out of their
wallet to a bank account or a USDT-TRC20 address, within their KYC tier's
limits, less a fee.

Ledger legs, held first (the wallet's currency), posted once the bank has
sent the payout or the chain finalized the send, voided when it failed or
never started:

    bank         wallet -> bank:outbound:{CCY}      the payout
    usdt         wallet -> fx:pool:{CCY}            the amount sold, then at a
                 fx:pool:USDT -> crypto:custody:USDT  firm quote the USDT sent,
                 (spread and rounding as any conversion: schemas/conversion.py)
    fee          wallet -> revenue:fees:{CCY}       the withdrawal fee
    returned     bank:outbound:{CCY} -> wallet      a payout the bank returned
                                                    after sending it (principal)
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
)

from schemas.customers import CustomerId, KycTier
from schemas.edge import EdgeModel, Name
from schemas.ledger import AmountMinor
from schemas.money import AMOUNT_MINOR_MAX, Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.tron import TronAddress
from schemas.units import BASIS_POINTS_PER_UNIT, DAY_SECONDS, HOUR_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)

RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# ISO 13616: two letters, two check digits, up to 30 letters and digits.
IBAN_PATTERN = r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$"


def iban_checksum_valid(iban: str) -> bool:
    """ISO 7064 mod 97-10 over the IBAN with its first four characters moved
    to the end and letters as numbers (A = 10 ... Z = 35)."""
    moved = iban[4:] + iban[:4]
    digits = "".join(str(int(char, 36)) for char in moved)
    return int(digits) % 97 == 1


class BankDestination(EdgeModel):
    """A bank account in the customer's own name (SEPA-style, by IBAN)."""

    model_config = ConfigDict(extra="forbid")

    rail: Literal["bank"] = "bank"
    iban: str = Field(pattern=IBAN_PATTERN, description="Without spaces, upper case")
    name: Name = Field(description="The account holder, as the bank knows them")

    @field_validator("iban")
    @classmethod
    def _checksum(cls, iban: str) -> str:
        if not iban_checksum_valid(iban):
            raise ValueError("the check digits do not match")
        return iban

    @property
    def fingerprint(self) -> str:
        """What makes two destinations the same one."""
        return f"bank:{self.iban}"

    def describe(self) -> str:
        return f"bank account ending {self.iban[-4:]}"


class TronDestination(EdgeModel):
    """A USDT-TRC20 address (the chain checks nothing: the custodian refuses
    one whose Base58Check checksum fails)."""

    model_config = ConfigDict(extra="forbid")

    rail: Literal["usdt"]
    address: TronAddress = Field(description="Tron base58 address, its checksum verified")

    @property
    def fingerprint(self) -> str:
        return f"usdt:{self.address}"

    def describe(self) -> str:
        return f"USDT-TRC20 address {self.address[:6]}...{self.address[-4:]}"


def _rail(value: object) -> str:
    """A destination's rail; one that names none is a bank account."""
    if isinstance(value, dict):
        return str(value.get("rail", "bank"))
    return str(getattr(value, "rail", "bank"))


Destination = Annotated[
    Annotated[BankDestination, Tag("bank")] | Annotated[TronDestination, Tag("usdt")],
    Discriminator(_rail),
]
Rail = Literal["bank", "usdt"]


class WithdrawalFee(BaseModel):
    """A fixed part per currency plus basis points of the amount paid out."""

    model_config = ConfigDict(extra="forbid")

    bps: int = Field(default=0, ge=0, le=BASIS_POINTS_PER_UNIT)
    fixed_minor: dict[Currency, Annotated[int, Field(ge=0, le=AMOUNT_MINOR_MAX)]] = Field(
        default_factory=dict
    )

    def fee_minor(self, amount_minor: int, currency: Currency) -> int:
        """Fixed plus bps rounded down (in the customer's favour)."""
        return self.fixed_minor.get(currency, 0) + amount_minor * self.bps // BASIS_POINTS_PER_UNIT


class TierLimits(BaseModel):
    """A tier's withdrawal limits in one currency, in its minor units."""

    model_config = ConfigDict(extra="forbid")

    per_withdrawal_max_minor: int = Field(ge=0, le=AMOUNT_MINOR_MAX)
    monthly_max_minor: int = Field(ge=0, le=AMOUNT_MINOR_MAX)


def _default_fees() -> dict[Rail, WithdrawalFee]:  # pragma: no mutate block
    fixed = {Currency.USD: 100, Currency.EUR: 100, Currency.GBP: 100, Currency.JPY: 150}
    return {
        "bank": WithdrawalFee(bps=0, fixed_minor=fixed),
        # A chain send costs the custodian energy; the conversion its spread.
        "usdt": WithdrawalFee(bps=50, fixed_minor=fixed),
    }


def _default_limits() -> dict[KycTier, dict[Currency, TierLimits]]:  # pragma: no mutate block
    def each(per: int, monthly: int) -> dict[Currency, TierLimits]:
        return {
            currency: TierLimits(
                per_withdrawal_max_minor=per * scale, monthly_max_minor=monthly * scale
            )
            for currency, scale in (
                (Currency.USD, 100),
                (Currency.EUR, 100),
                (Currency.GBP, 100),
                (Currency.JPY, 1),
            )
        }

    return {
        KycTier.BASIC: each(0, 0),
        KycTier.STANDARD: each(2_000, 5_000),
        KycTier.ENHANCED: each(20_000, 100_000),
    }


def _default_review_threshold() -> dict[Currency, int]:  # pragma: no mutate block
    return {Currency.USD: 50_000, Currency.EUR: 50_000, Currency.GBP: 50_000, Currency.JPY: 50_000}


class WithdrawalPolicy(BaseModel):
    """Every limit and wait of a withdrawal, so tests run the same code in seconds."""

    model_config = ConfigDict(extra="forbid")

    fees: dict[Rail, WithdrawalFee] = Field(default_factory=_default_fees)
    limits: dict[KycTier, dict[Currency, TierLimits]] = Field(default_factory=_default_limits)
    # A destination never paid to before waits this long first (the customer
    # is told, and may cancel if it was not them)...
    new_destination_cooling_seconds: int = Field(default=DAY_SECONDS, ge=0)
    # ...and above this amount an operator decides instead.
    new_destination_review_minor: dict[Currency, int] = Field(
        default_factory=_default_review_threshold
    )
    review_wait_seconds: int = Field(default=3 * DAY_SECONDS, ge=1)
    # The holds outlive any wait for the bank's answer.
    hold_seconds: int = Field(default=30 * DAY_SECONDS, ge=60)
    # No word from the bank for this long: the bank is asked.
    outcome_poll_seconds: int = Field(default=HOUR_SECONDS, ge=1)
    # A sent payout can come back this long after (SEPA returns come within
    # days); the process watches for it.
    return_watch_seconds: int = Field(default=14 * DAY_SECONDS, ge=0)
    # An account's closure pays the whole balance out whatever the tier's
    # limits: a holder of e-money may always redeem it.
    tier_limits_apply: bool = True

    def fee_minor(self, rail: Rail, amount_minor: int, currency: Currency) -> int:
        """The fee for a withdrawal by `rail`; none when the policy names none."""
        return self.fees.get(rail, WithdrawalFee()).fee_minor(amount_minor, currency)


class WithdrawalRequest(EdgeModel):
    """A customer's withdrawal as the API takes it."""

    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    customer_id: CustomerId
    amount_minor: AmountMinor
    currency: Currency
    destination: Destination


class WithdrawalInput(WithdrawalRequest):
    """The workflow's input: the request, when it was made, the policy and queues."""

    requested_at: AwareDatetime
    policy: WithdrawalPolicy = Field(default_factory=WithdrawalPolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers


PayoutStatus = Literal["accepted", "sent", "failed", "returned"]


class PayoutUpdate(BaseModel):
    """The bank's word on the payout (its webhook, or its answer when asked)."""

    payout_id: str = Field(min_length=1, max_length=100)
    status: PayoutStatus
    amount_minor: int
    reason: str | None = Field(default=None, max_length=500)


class PayoutRequest(BaseModel):
    """Pay out once: the bank is asked for a payout with this reference first."""

    key: str
    reference: str
    amount_minor: int
    currency: Currency
    iban: str
    name: str


class ChainSendRequest(BaseModel):
    """Send USDT from custody once: custody is asked for a send with this
    reference first."""

    key: str
    reference: str
    amount_minor: int
    address: str


class WithdrawalCheck(BaseModel):
    request_id: str
    customer_id: str
    amount_minor: int
    currency: Currency
    fingerprint: str
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$")
    policy: WithdrawalPolicy


class WithdrawalCheckResult(BaseModel):
    """Whether the withdrawal may go ahead (its month's usage then reserved),
    or why not; whether its destination is new to this customer."""

    refused: str | None = None
    tier: KycTier | None = None
    month_used_minor: int = 0
    new_destination: bool = False


class UsageChange(BaseModel):
    request_id: str
    status: Literal["reserved", "paid", "released"]


class DestinationUse(BaseModel):
    customer_id: str
    fingerprint: str
    request_id: str


class WithdrawalReview(EdgeModel):
    """An operator's decision on a withdrawal to a new destination above the threshold."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: str = Field(min_length=3, max_length=500)
    operator: str = Field(min_length=1, max_length=100)


WithdrawalOutcome = Literal["paid", "returned", "rejected", "failed", "cancelled"]


class WithdrawalStatus(BaseModel):
    request_id: str
    customer_id: str
    stage: str
    outcome: WithdrawalOutcome | None
    reason: str | None
    amount_minor: int
    fee_minor: int
    currency: Currency
    new_destination: bool
    cooling_until: datetime | None
    payout_id: str | None
    payout_status: PayoutStatus | None
    # The money left: posted to the bank or the chain (a bank payout is then
    # watched for a return until `return_watch_seconds` pass).
    paid: bool = False


class WithdrawalResult(BaseModel):
    request_id: str
    customer_id: str
    outcome: WithdrawalOutcome
    reason: str
    amount_minor: int
    fee_minor: int
    currency: Currency
    payout_id: str | None
