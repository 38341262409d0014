"""Cashback: campaigns as data, the pure rule evaluator, the workflow's messages.

A campaign is a JSON document (id + version) an operator loads from a file.
For each cleared purchase the evaluator decides, with no I/O, which campaigns
pay and how much:

- A campaign matches when every rule it sets holds: the purchase's time
  (`occurred_at`) is inside [valid_from, valid_to); its currency is one the
  campaign pays in, at or above that currency's minimum; its MCC is in
  `mcc_include` (when set) and not in `mcc_exclude`; the customer's segment
  is in `segments` (when set); and the customer made at least
  `purchases_min` other purchases in the `within_seconds` before it (when set).
- Reward: basis points of the amount, rounded down, then capped per
  transaction (`cap_minor`, per currency). A reward that rounds to zero pays
  nothing.
- Several matches: non-stackable campaigns compete and only the best single
  one pays (largest amount; a tie goes to the smaller campaign id); every
  matching stackable campaign pays on top of it. The sum of a purchase's
  rewards never exceeds `total_basis_points_max` of its amount (the policy's
  limit): the best campaign is served first, then stackable ones in id order,
  each cut to what is left.
- Personal offers: the campaigns in force at an instant whose rules on the
  customer (segment, recent purchases) hold; the rules on the purchase
  (currency, minimum, MCC) are the offer's terms.
- Clawback on refunds: the reward is taken back in proportion to the amount
  refunded so far (cumulative, rounded down, so the total never exceeds what
  was paid); once the whole purchase is refunded, all of it.

Versions: the latest loaded version of a campaign id replaces the earlier
ones entirely (to end a campaign early, load a new version with `valid_to`);
to schedule a change of terms, start another campaign id at the boundary.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from schemas.customers import CustomerId
from schemas.edge import TEXT_CHARS_MAX, EdgeModel
from schemas.ledger import AmountMinor
from schemas.money import AMOUNT_MINOR_MAX, Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import BASIS_POINTS_PER_UNIT, DAY_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)
DEFAULT_SEGMENT = "standard"
# Limits: campaigns per file and per evaluation, rules per campaign, refunds per purchase.
CAMPAIGNS_PER_FILE_MAX = 200
CAMPAIGNS_ACTIVE_MAX = 200
MCCS_PER_RULE_MAX = 500
SEGMENTS_PER_RULE_MAX = 50
RECENT_WINDOW_SECONDS_MAX = 366 * DAY_SECONDS

Mcc = Annotated[str, Field(pattern=r"^[0-9]{4}$")]
Segment = Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")]
CampaignId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
# Issuer ids; short enough that every ledger key built from them stays under 200.
TransactionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]
RefundId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]
BasisPoints = Annotated[StrictInt, Field(ge=1, le=BASIS_POINTS_PER_UNIT)]


# ----- campaigns ---------------------------------------------------------------


class RecentPurchasesRule(BaseModel):
    """At least `purchases_min` other purchases by the customer in the
    `within_seconds` up to this purchase's time (this purchase not counted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    within_seconds: StrictInt = Field(ge=1, le=RECENT_WINDOW_SECONDS_MAX)
    purchases_min: StrictInt = Field(default=1, ge=1, le=10_000)


class CampaignRules(EdgeModel):
    """Who and what a campaign rewards. An empty list means "any"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currencies: list[Currency] = Field(min_length=1, max_length=len(Currency))
    # Per currency; a currency the campaign pays in but not named here has no minimum.
    min_amount_minor: dict[Currency, Annotated[StrictInt, Field(ge=0, le=AMOUNT_MINOR_MAX)]] = (
        Field(default_factory=dict)
    )
    mcc_include: list[Mcc] = Field(default_factory=list, max_length=MCCS_PER_RULE_MAX)
    mcc_exclude: list[Mcc] = Field(default_factory=list, max_length=MCCS_PER_RULE_MAX)
    segments: list[Segment] = Field(default_factory=list, max_length=SEGMENTS_PER_RULE_MAX)
    recent_purchases: RecentPurchasesRule | None = None

    @field_validator("currencies", "mcc_include", "mcc_exclude", "segments")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists each value once")
        return sorted(value)

    @model_validator(mode="after")
    def _consistent(self) -> CampaignRules:
        unknown = set(self.min_amount_minor) - set(self.currencies)
        if unknown:
            raise ValueError(
                f"min_amount_minor names {sorted(c.value for c in unknown)}, "
                "which are not in currencies"
            )
        both = set(self.mcc_include) & set(self.mcc_exclude)
        if both:
            raise ValueError(f"mcc_include and mcc_exclude both list {sorted(both)}")
        return self


class CampaignReward(EdgeModel):
    """What a matching campaign pays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    basis_points: BasisPoints
    # Per currency, the most one transaction earns; a currency not named is uncapped.
    cap_minor: dict[Currency, AmountMinor] = Field(default_factory=dict)
    stackable: bool = False


class Campaign(EdgeModel):
    """One version of a campaign, as loaded from a campaigns file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: CampaignId
    version: StrictInt = Field(ge=1, le=1_000_000)
    name: str = Field(min_length=1, max_length=200)
    valid_from: AwareDatetime
    # Exclusive; None runs until a later version ends it.
    valid_to: AwareDatetime | None = None
    rules: CampaignRules
    reward: CampaignReward

    @model_validator(mode="after")
    def _consistent(self) -> Campaign:
        if self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        uncovered = set(self.reward.cap_minor) - set(self.rules.currencies)
        if uncovered:
            raise ValueError(
                f"reward.cap_minor names {sorted(c.value for c in uncovered)}, "
                "which are not in rules.currencies"
            )
        return self


class CampaignFile(EdgeModel):
    """The document `cardflow cashback campaigns load FILE` reads."""

    model_config = ConfigDict(extra="forbid")

    campaigns: list[Campaign] = Field(min_length=1, max_length=CAMPAIGNS_PER_FILE_MAX)

    @field_validator("campaigns")
    @classmethod
    def _unique_versions(cls, value: list[Campaign]) -> list[Campaign]:
        seen: set[tuple[str, int]] = set()
        for campaign in value:
            if (campaign.id, campaign.version) in seen:
                raise ValueError(
                    f"campaign {campaign.id} version {campaign.version} is listed twice"
                )
            seen.add((campaign.id, campaign.version))
        return value


class CampaignLoad(BaseModel):
    """What a load did: versions stored now, and versions already stored as they are."""

    loaded: list[str]
    unchanged: list[str]


class StoredCampaign(BaseModel):
    campaign: Campaign
    loaded_at: datetime
    latest: bool


class SegmentAssignment(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    segment: Segment


# ----- the evaluator's facts and answer -----------------------------------------


class RecentPurchases(BaseModel):
    within_seconds: int
    purchases: int = Field(ge=0)


class CustomerFacts(BaseModel):
    """What the evaluator knows about a customer, whatever they buy."""

    model_config = ConfigDict(frozen=True)

    segment: Segment = DEFAULT_SEGMENT
    recent: list[RecentPurchases] = Field(default_factory=list)

    def purchases_within(self, within_seconds: int) -> int:
        for counted in self.recent:
            if counted.within_seconds == within_seconds:
                return counted.purchases
        # Not counted means not known: the rule cannot be shown to hold.
        return 0


class PurchaseFacts(CustomerFacts):
    """Everything the evaluator knows about one purchase and its customer."""

    amount_minor: AmountMinor
    currency: Currency
    mcc: Mcc
    occurred_at: AwareDatetime


class CampaignVerdict(BaseModel):
    """Why a campaign pays or does not, for the operator reading the details."""

    campaign_id: str
    campaign_version: int
    matched: bool
    reason: str


class RewardLine(BaseModel):
    """One campaign's reward on one purchase."""

    campaign_id: str
    campaign_version: int
    basis_points: int
    amount_minor: int = Field(gt=0)
    capped: bool = False


class CashbackDecision(BaseModel):
    rewards: list[RewardLine] = Field(default_factory=list)
    verdicts: list[CampaignVerdict] = Field(default_factory=list)

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.rewards)


def window_mismatch(campaign: Campaign, at: datetime) -> str | None:
    """None when the campaign is in force at `at`, else why not, in words."""
    if at < campaign.valid_from:
        return f"starts {campaign.valid_from.isoformat()}"
    if campaign.valid_to is not None and at >= campaign.valid_to:
        return f"ended {campaign.valid_to.isoformat()}"
    return None


def purchase_mismatch(campaign: Campaign, facts: PurchaseFacts) -> str | None:
    """None when the purchase itself (currency, amount, MCC) is one the
    campaign rewards, else the first rule it fails, in words."""
    rules = campaign.rules
    if facts.currency not in rules.currencies:
        return f"does not pay in {facts.currency.value}"
    minimum = rules.min_amount_minor.get(facts.currency, 0)
    if facts.amount_minor < minimum:
        return f"amount under the minimum of {minimum}"
    if rules.mcc_include and facts.mcc not in rules.mcc_include:
        return f"MCC {facts.mcc} not included"
    if facts.mcc in rules.mcc_exclude:
        return f"MCC {facts.mcc} excluded"
    return None


def customer_mismatch(campaign: Campaign, facts: CustomerFacts) -> str | None:
    """None when the customer (segment, recent purchases) is one the campaign
    rewards, else the first rule they fail, in words."""
    rules = campaign.rules
    if rules.segments and facts.segment not in rules.segments:
        return f"segment {facts.segment} not eligible"
    recent = rules.recent_purchases
    if recent is not None:
        count = facts.purchases_within(recent.within_seconds)
        if count < recent.purchases_min:
            return (
                f"{count} other purchase(s) in the last {recent.within_seconds}s, "
                f"needs {recent.purchases_min}"
            )
    return None


def campaign_mismatch(campaign: Campaign, facts: PurchaseFacts) -> str | None:
    """None when every rule of the campaign holds for the purchase, else the first
    rule that does not, in words."""
    return (
        window_mismatch(campaign, facts.occurred_at)
        or purchase_mismatch(campaign, facts)
        or customer_mismatch(campaign, facts)
    )


def offered(campaigns: list[Campaign], facts: CustomerFacts, at: datetime) -> list[Campaign]:
    """The campaigns a purchase by this customer at `at` can earn from: in
    force then, and every rule on the customer holding (the purchase's own
    rules, its currency, amount and MCC, are the campaign's terms), by id."""
    return sorted(
        (
            campaign
            for campaign in campaigns
            if window_mismatch(campaign, at) is None and customer_mismatch(campaign, facts) is None
        ),
        key=lambda campaign: campaign.id,
    )


def reward_minor(campaign: Campaign, facts: PurchaseFacts) -> tuple[int, bool]:
    """The campaign's reward on the purchase (rounded down) and whether the cap cut it."""
    earned = facts.amount_minor * campaign.reward.basis_points // BASIS_POINTS_PER_UNIT
    cap = campaign.reward.cap_minor.get(facts.currency)
    if cap is not None and earned > cap:
        return cap, True
    return earned, False


def evaluate(
    campaigns: list[Campaign], facts: PurchaseFacts, *, total_basis_points_max: int
) -> CashbackDecision:
    """Which campaigns pay on this purchase, and how much (see the module's rules).

    Pure and deterministic: the same campaigns and facts give the same answer
    in whatever order the campaigns come."""
    verdicts: dict[str, CampaignVerdict] = {}
    candidates: list[tuple[Campaign, int, bool]] = []
    for campaign in sorted(campaigns, key=lambda c: (c.id, c.version)):
        mismatch = campaign_mismatch(campaign, facts)
        if mismatch is None:
            earned, capped = reward_minor(campaign, facts)
            if earned > 0:
                candidates.append((campaign, earned, capped))
                continue
            mismatch = "the reward rounds down to zero"
        verdicts[campaign.id] = CampaignVerdict(
            campaign_id=campaign.id,
            campaign_version=campaign.version,
            matched=False,
            reason=mismatch,
        )

    singles = sorted(
        (c for c in candidates if not c[0].reward.stackable), key=lambda c: (-c[1], c[0].id)
    )
    stacked = [c for c in candidates if c[0].reward.stackable]
    order = singles[:1] + stacked
    for campaign, _, _ in singles[1:]:
        verdicts[campaign.id] = CampaignVerdict(
            campaign_id=campaign.id,
            campaign_version=campaign.version,
            matched=False,
            reason=f"outranked by {singles[0][0].id}",
        )

    # The sum of rewards is bounded whatever campaigns an operator loads.
    left = facts.amount_minor * total_basis_points_max // BASIS_POINTS_PER_UNIT
    rewards: list[RewardLine] = []
    for campaign, earned, capped in order:
        paid = min(earned, left)
        if paid <= 0:
            verdicts[campaign.id] = CampaignVerdict(
                campaign_id=campaign.id,
                campaign_version=campaign.version,
                matched=False,
                reason=f"the limit of {total_basis_points_max} bp per purchase is reached",
            )
            continue
        left -= paid
        rewards.append(
            RewardLine(
                campaign_id=campaign.id,
                campaign_version=campaign.version,
                basis_points=campaign.reward.basis_points,
                amount_minor=paid,
                capped=capped or paid < earned,
            )
        )
        verdicts[campaign.id] = CampaignVerdict(
            campaign_id=campaign.id,
            campaign_version=campaign.version,
            matched=True,
            reason="stacked" if campaign.reward.stackable else "best single reward",
        )
    return CashbackDecision(rewards=rewards, verdicts=[verdicts[k] for k in sorted(verdicts)])


def clawback_target_minor(paid_minor: int, amount_minor: int, refunded_minor: int) -> int:
    """How much of the reward the refunds so far take back in total: in proportion,
    rounded down (never more than was paid); all of it once the purchase is
    refunded in full."""
    if paid_minor <= 0 or refunded_minor <= 0:
        return 0
    if refunded_minor >= amount_minor:
        return paid_minor
    return paid_minor * refunded_minor // amount_minor


# ----- the workflow's input, messages, status and result ------------------------


class CashbackPolicy(BaseModel):
    """Every wait and limit of the process, so tests run it in seconds."""

    model_config = ConfigDict(extra="forbid")

    # Refunds claw back until this long after the reward is paid; then the process ends.
    clawback_window_seconds: int = Field(default=120 * DAY_SECONDS, ge=1)
    # The most all of one purchase's rewards add up to, in basis points of its amount.
    total_basis_points_max: int = Field(default=1_000, ge=1, le=BASIS_POINTS_PER_UNIT)
    # Refunds one purchase takes; more are ignored (and logged).
    refunds_max: int = Field(default=100, ge=1, le=1_000)
    # A wallet that cannot cover a clawback is read and debited what it holds, this often.
    clawback_attempts_max: int = Field(default=3, ge=1, le=10)


class CashbackInput(BaseModel):
    """One cleared purchase, as the card process recorded it in card_transactions."""

    model_config = ConfigDict(extra="forbid", str_max_length=TEXT_CHARS_MAX)

    transaction_id: TransactionId
    customer_id: CustomerId
    card_id: str = Field(min_length=1, max_length=100)
    amount_minor: AmountMinor
    currency: Currency
    mcc: Mcc
    merchant_name: str = Field(default="", max_length=200)
    occurred_at: AwareDatetime
    policy: CashbackPolicy = Field(default_factory=CashbackPolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows


class CashbackRefund(EdgeModel):
    """A merchant refund of (part of) the purchase; the signal `refund`."""

    model_config = ConfigDict(extra="forbid")

    refund_id: RefundId
    amount_minor: AmountMinor


class CashbackContextRequest(BaseModel):
    """What the ledger-queue activity needs to gather the evaluator's data."""

    customer_id: CustomerId
    transaction_id: TransactionId
    occurred_at: AwareDatetime


class CashbackContext(BaseModel):
    """The campaigns in force at the purchase, the customer's segment and recent activity."""

    campaigns: list[Campaign]
    segment: Segment = DEFAULT_SEGMENT
    recent: list[RecentPurchases] = Field(default_factory=list)


class RefundRecord(BaseModel):
    refund_id: str
    amount_minor: int
    clawed_back_minor: int
    # What all refunds so far make due and the wallet has not covered, after this one.
    shortfall_minor: int = 0
    detail: str = ""


CashbackOutcome = Literal["no_reward", "not_paid", "completed"]


class CashbackStatus(BaseModel):
    transaction_id: str
    stage: str
    currency: Currency | None = None
    rewards: list[RewardLine] = Field(default_factory=list)
    verdicts: list[CampaignVerdict] = Field(default_factory=list)
    reward_minor: int = 0
    # Decided by the rules and not paid yet (the ledger has not answered).
    pending_minor: int = 0
    refunded_minor: int = 0
    clawed_back_minor: int = 0
    shortfall_minor: int = 0
    refunds: list[RefundRecord] = Field(default_factory=list)
    notified: bool = False
    window_closes_at: datetime | None = None


class CashbackResult(BaseModel):
    transaction_id: str
    outcome: CashbackOutcome
    currency: Currency
    reason: str = ""
    rewards: list[RewardLine] = Field(default_factory=list)
    verdicts: list[CampaignVerdict] = Field(default_factory=list)
    reward_minor: int = 0
    refunded_minor: int = 0
    clawed_back_minor: int = 0
    # Clawback the refunds made due that the wallet could not cover: for an operator.
    shortfall_minor: int = 0
    refunds: list[RefundRecord] = Field(default_factory=list)
    notified: bool = False
