"""What cardflow reads from the FX rate source (firm quotes), and below them
the customer's conversion process: its input, policy, offer, status and result.

Rates are Decimal and travel as strings; a rate sent as a JSON number is a
broken contract, refused when parsed rather than trusted after a trip through
a binary float.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)

from schemas.customers import CustomerId
from schemas.edge import EdgeModel
from schemas.money import AMOUNT_MINOR_MAX, Currency, Rate
from schemas.refusals import Refusal
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import BASIS_POINTS_PER_UNIT, MINUTE_SECONDS


def _not_a_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError("a rate must be a decimal string, not a binary float")
    return value


WireRate = Annotated[Rate, BeforeValidator(_not_a_float)]


class FxQuoteStatus(StrEnum):
    OPEN = "open"
    EXPIRED = "expired"


class FxFixedSide(StrEnum):
    """Which amount the customer fixed; the other was computed from the rate."""

    SELL = "sell"
    BUY = "buy"


class FxQuote(BaseModel):
    id: str
    status: FxQuoteStatus
    sell_currency: Currency
    buy_currency: Currency
    fixed_side: FxFixedSide
    sell_amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    buy_amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    # Units of buy_currency per unit of sell_currency, after the spread.
    rate: WireRate
    mid_rate: WireRate
    spread_bps: int = Field(ge=0)
    created_at: AwareDatetime
    expires_at: AwareDatetime


# ----- the FX conversion process `fx/{request_id}` ---------------------------
#
# Below: cardflow's own models of a customer's conversion, built on the
# provider's firm quote above.

# The largest amount one conversion may fix: 10**12 minor units (ten billion
# dollars, a million USDT), the rate source's own ceiling; the policy's
# per-currency maximum is far below it.
FX_AMOUNT_MINOR_MAX = 10**12
# A fee above 10% of the amount is a typo in the policy, not a price.
FEE_BPS_MAX = 1_000
_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)

RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
FxAmountMinor = Annotated[StrictInt, Field(gt=0, le=FX_AMOUNT_MINOR_MAX)]


class FxCurrencyTerms(BaseModel):
    """What selling one currency costs and how much of it one conversion may sell,
    in that currency's minor units."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fee_fixed_minor: int = Field(default=0, ge=0, le=AMOUNT_MINOR_MAX)
    sell_amount_min_minor: int = Field(ge=1, le=FX_AMOUNT_MINOR_MAX)
    sell_amount_max_minor: int = Field(ge=1, le=FX_AMOUNT_MINOR_MAX)

    @model_validator(mode="after")
    def _min_below_max(self) -> FxCurrencyTerms:
        if self.sell_amount_min_minor > self.sell_amount_max_minor:
            raise ValueError("sell_amount_min_minor must not exceed sell_amount_max_minor")
        return self


def _default_terms() -> dict[Currency, FxCurrencyTerms]:  # pragma: no mutate block
    return {
        Currency.USD: FxCurrencyTerms(
            fee_fixed_minor=25, sell_amount_min_minor=100, sell_amount_max_minor=1_000_000
        ),
        Currency.EUR: FxCurrencyTerms(
            fee_fixed_minor=25, sell_amount_min_minor=100, sell_amount_max_minor=1_000_000
        ),
        Currency.GBP: FxCurrencyTerms(
            fee_fixed_minor=20, sell_amount_min_minor=100, sell_amount_max_minor=1_000_000
        ),
        Currency.JPY: FxCurrencyTerms(
            fee_fixed_minor=40, sell_amount_min_minor=100, sell_amount_max_minor=150_000_000
        ),
        Currency.USDT: FxCurrencyTerms(
            fee_fixed_minor=250_000,
            sell_amount_min_minor=1_000_000,
            sell_amount_max_minor=10_000_000_000,
        ),
    }


class FxPolicy(BaseModel):
    """Prices, limits and every wait of a conversion, so tests run it in seconds."""

    model_config = ConfigDict(extra="forbid")

    # The fee: the sell currency's fee_fixed_minor plus fee_bps of the sell
    # amount (see conversion_fee_minor), charged in the sell currency.
    fee_bps: int = Field(default=50, ge=0, le=FEE_BPS_MAX)
    # Per sell currency; selling a currency not listed is refused.
    terms: dict[Currency, FxCurrencyTerms] = Field(default_factory=_default_terms)
    # The customer confirms before the quote expires, and never later than this
    # after it arrived, whatever the rate source's TTL.
    confirm_wait_seconds_max: int = Field(default=15 * MINUTE_SECONDS, ge=1)
    # After an unconfirmed quote expires the process stays open this long, so a
    # late confirm is refused with the reason instead of finding no process.
    late_confirm_window_seconds: int = Field(default=MINUTE_SECONDS, ge=0)
    # The rate source must quote within this (retrying 5xx and 429 meanwhile).
    quote_wait_seconds: int = Field(default=2 * MINUTE_SECONDS, ge=1)
    # The completion notice is best-effort: given up after this, never undoing
    # the conversion.
    notification_wait_seconds: int = Field(default=5 * MINUTE_SECONDS, ge=1)


def conversion_fee_minor(sell_amount_minor: int, terms: FxCurrencyTerms, fee_bps: int) -> int:
    """The fee of selling sell_amount_minor: the fixed fee plus fee_bps of the
    amount, the basis-point part rounded UP to the minor unit (like the rate
    source's own rounding, never in the customer's favour by a fraction).
    Integer arithmetic only."""
    assert sell_amount_minor > 0 and fee_bps >= 0
    proportional = -(-sell_amount_minor * fee_bps // BASIS_POINTS_PER_UNIT)
    return terms.fee_fixed_minor + proportional


class FxConversionRequest(EdgeModel):
    """What a customer asks (also the API's body): sell one currency for
    another, fixing exactly one of the two amounts (minor units); the other
    comes from the quote."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    sell_currency: Currency
    # Validated after sell_currency, against it.
    buy_currency: Currency
    sell_amount_minor: FxAmountMinor | None = None
    # Validated last, even when left out, to check that exactly one amount is given.
    buy_amount_minor: FxAmountMinor | None = Field(default=None, validate_default=True)

    @field_validator("buy_currency")
    @classmethod
    def _two_currencies(cls, value: Currency, info: ValidationInfo) -> Currency:
        if value == info.data.get("sell_currency"):
            raise ValueError("buy_currency must differ from sell_currency")
        return value

    @field_validator("buy_amount_minor")
    @classmethod
    def _exactly_one_amount(cls, value: int | None, info: ValidationInfo) -> int | None:
        # An invalid sell_amount_minor is reported on its own; don't pile on.
        if "sell_amount_minor" not in info.data:
            return value
        if (info.data["sell_amount_minor"] is None) == (value is None):
            raise ValueError("give exactly one of sell_amount_minor and buy_amount_minor")
        return value

    @property
    def fixed_side(self) -> FxFixedSide:
        return FxFixedSide.SELL if self.sell_amount_minor is not None else FxFixedSide.BUY


class FxConversionInput(FxConversionRequest):
    """The FX conversion workflow's input: the request, its id, the policy."""

    request_id: RequestId
    policy: FxPolicy = Field(default_factory=FxPolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows


class FxOutcome(StrEnum):
    CONVERTED = "converted"
    # The atomic batch was rejected (insufficient funds, a closed wallet).
    DECLINED = "declined"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    # Not allowed: customer not approved or without a wallet, amount outside the
    # policy, or the rate source refused the request (4xx).
    REFUSED = "refused"
    # The rate source gave no quote within the policy (down, rate limited).
    FAILED = "failed"


class FxQuoteOffer(BaseModel):
    """What the customer is asked to confirm: the quote, the fee, and by when."""

    request_id: str
    quote: FxQuote
    # In the sell currency, on top of quote.sell_amount_minor.
    fee_minor: int = Field(ge=0)
    total_debit_minor: int = Field(gt=0)
    # The earlier of the quote's expiry and the policy's confirm_wait_seconds_max.
    expires_at: AwareDatetime


# The refusal a request meets once the conversion has its outcome (a decline
# names the ledger's reason instead, in the result's declined_as).
END_REFUSALS = {
    FxOutcome.CONVERTED: Refusal.ALREADY_DONE,
    FxOutcome.DECLINED: Refusal.DECLINED,
    FxOutcome.EXPIRED: Refusal.QUOTE_EXPIRED,
    FxOutcome.CANCELLED: Refusal.CANCELLED,
    FxOutcome.REFUSED: Refusal.NOT_ALLOWED,
    FxOutcome.FAILED: Refusal.PROVIDER_UNAVAILABLE,
}


class FxConversionResult(BaseModel):
    """How a conversion ended; amounts are zero unless it converted."""

    request_id: str
    customer_id: str
    outcome: FxOutcome
    reason: str
    sell_currency: Currency
    buy_currency: Currency
    quote_id: str | None = None
    rate: WireRate | None = None
    mid_rate: WireRate | None = None
    spread_bps: int | None = None
    # The sale (the quote's sell amount, without the fee) in the sell
    # currency, and what it bought, into the buy wallet.
    sold_amount_minor: int = Field(default=0, ge=0)
    bought_amount_minor: int = Field(default=0, ge=0)
    # In the sell currency, on top of the sale.
    fee_minor: int = Field(default=0, ge=0)
    # In the buy currency: what the spread earned (revenue:fx) and what the
    # roundings left (fx:rounding).
    spread_minor: int = Field(default=0, ge=0)
    rounding_minor: int = Field(default=0, ge=0)
    expires_at: AwareDatetime | None = None
    # Whether the completion notice went out; a failed notice never undoes a
    # conversion. The confirm update answers before it is sent (False there).
    notified: bool = False
    # The ledger's refusal, when it declined the batch: insufficient_funds or
    # declined (a closed wallet, a limit).
    declined_as: Refusal | None = None

    def refusal(self) -> Refusal:
        """The code a request is refused with once the conversion ended so
        (confirming a cancelled one, cancelling a converted one)."""
        return self.declined_as or END_REFUSALS[self.outcome]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def debited_amount_minor(self) -> int:
        """What the sell wallet lost: the sale plus the fee (one atomic batch).

        Derived, so a result stored before it existed answers it too; sent in
        the JSON, and ignored when a result is read back."""
        return self.sold_amount_minor + self.fee_minor

    def summary(self) -> str:
        """The reason, starting with the outcome's word ("expired: ...")."""
        outcome = self.outcome.value
        return self.reason if self.reason.startswith(outcome) else f"{outcome}: {self.reason}"


class FxStatus(BaseModel):
    """The `status` query's answer."""

    request_id: str
    customer_id: str
    stage: str
    outcome: FxOutcome | None = None
    reason: str = ""
    sell_currency: Currency
    buy_currency: Currency
    fixed_side: FxFixedSide
    sell_amount_minor: int | None = None
    buy_amount_minor: int | None = None
    fee_minor: int | None = None
    quote: FxQuote | None = None
    expires_at: AwareDatetime | None = None
    confirmed: bool = False
