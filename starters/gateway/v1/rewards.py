"""A customer's rewards: `GET /v1/customers/{customer_id}/rewards` (scope
`customers:read`), each fact read from where it lives:

- per currency, the cashback earned (paid to the wallet) and clawed back by
  refunds: the ledger's posted transfers between `expense:cashback:{CCY}`
  and the customer's wallets, so the figures agree with it to the unit; and
  the latest of those transfers one by one (RECENT_LINES_MAX, newest first);
- pending cashback: the customer's Cashback processes that have not paid
  their reward yet (Temporal's visibility, then each one's status), within
  PENDING_SECONDS_MAX; when Temporal does not answer in time `unavailable`
  says so and the rest of the page stands;
- personal offers: the campaigns in force now that the rules engine
  (schemas/cashback.py `offered`) finds this customer eligible for, by their
  segment and recent purchases; what a purchase must be (currency, amount,
  merchant category) is each offer's terms.

The ledger's totals are read after the pending processes, so a reward paid
in between is counted once, as earned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, Field
from temporalio.client import Client

from activities.api_keys import SCOPE_CUSTOMERS_READ
from activities.cashback import CashbackStore, TooManyCampaigns
from schemas.cashback import Campaign, offered
from schemas.money import Currency, Money
from schemas.search import AMOUNT_MINOR, CURRENCY, CUSTOMER_ID, PROCESS_STATUS
from schemas.units import BASIS_POINTS_PER_UNIT, DAY_SECONDS
from starters.gateway.errors import ErrorBody
from starters.gateway.state import DatabasePool, TemporalClient
from starters.gateway.v1.customers import known_customer, unavailable_reason
from starters.gateway.v1.ownership import OwnCustomerId
from starters.gateway.v1.shared import READ, process_router, route
from workflows.cashback import (
    CASHBACK_WORKFLOW,
    REWARD_STEP,
    UNPAID_STAGES,
    Cashback,
    cashback_transfer_key,
)
from workflows.process import STATUS_STUCK

router = process_router()

# The pool, or one of its connections in a transaction.
Reader = asyncpg.Pool | PoolConnectionProxy

# Cashback transfers listed one by one at most, newest first.
RECENT_LINES_MAX = 50
# Pending processes listed (and asked their status) at most.
PENDING_LISTED_MAX = 50
# Temporal's budget: visibility and the pending processes' status queries.
PENDING_SECONDS_MAX = 2.0

# The customer's wallets' posted transfers with a cashback expense account:
# a reward credits the wallet, a clawback debits it.
_CASHBACK_TRANSFERS = """
SELECT w.currency, t.id, t.idempotency_key, t.amount_minor, t.created_at,
       t.credit_account_id = w.id AS earned
FROM ledger_accounts w
JOIN ledger_transfers t ON (t.credit_account_id = w.id OR t.debit_account_id = w.id)
JOIN ledger_accounts c ON c.id = CASE WHEN t.credit_account_id = w.id
                                      THEN t.debit_account_id ELSE t.credit_account_id END
WHERE w.owner_id = $1 AND w.kind = 'wallet' AND t.kind = 'posted'
  AND c.code LIKE 'expense:cashback:%'
"""
_TOTALS_SQL = f"""
WITH cashback AS ({_CASHBACK_TRANSFERS})
SELECT currency,
       coalesce(sum(amount_minor) FILTER (WHERE earned), 0) AS earned_minor,
       coalesce(sum(amount_minor) FILTER (WHERE NOT earned), 0) AS clawed_back_minor
FROM cashback
GROUP BY currency
ORDER BY currency
"""
_LINES_SQL = f"""
WITH cashback AS ({_CASHBACK_TRANSFERS})
SELECT currency, idempotency_key, amount_minor, created_at, earned
FROM cashback
ORDER BY id DESC
LIMIT $2
"""


class CashbackPaid(BaseModel):
    """The ledger's cashback of one currency: paid to the wallet, and taken back."""

    currency: Currency
    earned_minor: int = Field(description="Cashback paid to the wallet")
    clawed_back_minor: int = Field(description="Cashback taken back from the wallet by refunds")

    @property
    def net_minor(self) -> int:
        return self.earned_minor - self.clawed_back_minor


class CashbackLine(BaseModel):
    transaction_id: str | None = Field(
        description="The purchase it rewards (or whose refund takes it back); none for "
        "cashback an operator moved by hand"
    )
    kind: Literal["earned", "clawed_back"]
    campaign_id: str | None = Field(description="The campaign that paid it (earned)")
    refund_id: str | None = Field(description="The refund that took it back (clawed back)")
    amount_minor: int
    currency: Currency
    at: datetime


async def cashback_paid(db: Reader, customer_id: str) -> list[CashbackPaid]:
    """Per currency, the cashback the ledger paid to the customer's wallets and
    took back, by currency."""
    return [
        CashbackPaid(
            currency=row["currency"],
            earned_minor=row["earned_minor"],
            clawed_back_minor=row["clawed_back_minor"],
        )
        for row in await db.fetch(_TOTALS_SQL, customer_id)
    ]


async def cashback_lines(
    db: Reader, customer_id: str, limit: int = RECENT_LINES_MAX
) -> list[CashbackLine]:
    """The customer's latest cashback transfers, newest first, at most `limit`."""
    lines = []
    for row in await db.fetch(_LINES_SQL, customer_id, limit):
        named = cashback_transfer_key(row["idempotency_key"])
        earned = bool(row["earned"])
        lines.append(
            CashbackLine(
                transaction_id=named.transaction_id if named else None,
                kind="earned" if earned else "clawed_back",
                campaign_id=named.subject if named and named.step == REWARD_STEP else None,
                refund_id=named.subject if named and named.step != REWARD_STEP else None,
                amount_minor=row["amount_minor"],
                currency=row["currency"],
                at=row["created_at"],
            )
        )
    return lines


class CashbackTotals(BaseModel):
    currency: Currency
    earned_minor: int = Field(description="Cashback paid to the wallet (the ledger's)")
    clawed_back_minor: int = Field(description="Taken back by refunds (the ledger's)")
    net_minor: int = Field(description="Earned less clawed back")
    pending_minor: int | None = Field(
        description="Decided on purchases and not paid yet; null when the pending "
        "processes are unavailable"
    )
    pending_purchases: int | None = Field(
        description="Purchases whose cashback is not paid yet (decided or still being "
        "evaluated); null when unavailable"
    )


class PendingCashback(BaseModel):
    transaction_id: str
    currency: Currency | None
    purchase_amount_minor: int | None
    stage: str = Field(description="starting, evaluating or paying")
    reward_minor: int | None = Field(description="Decided and not paid yet; null while evaluated")


class Offer(BaseModel):
    campaign_id: str
    version: int
    name: str
    description: str = Field(description="What it pays, on which purchases, in words")
    basis_points: int = Field(description="Of each purchase's amount (100 bp = 1%)")
    currencies: list[Currency]
    cap_minor: dict[Currency, int] = Field(description="The most one purchase earns, by currency")
    min_amount_minor: dict[Currency, int] = Field(
        description="The least a purchase must be, by currency"
    )
    mcc_include: list[str] = Field(description="Only these merchant categories (empty: any)")
    mcc_exclude: list[str] = Field(description="Never these merchant categories")
    stackable: bool = Field(description="Paid on top of the best other offer")
    valid_to: datetime | None = Field(description="Ends then (exclusive); null: no end set")


class RewardsView(BaseModel):
    customer_id: str
    as_of: datetime
    cashback: list[CashbackTotals]
    recent: list[CashbackLine] = Field(description=f"At most {RECENT_LINES_MAX}, newest first")
    pending: list[PendingCashback] = Field(
        description=f"At most {PENDING_LISTED_MAX} (the totals count those listed)"
    )
    offers: list[Offer] = Field(description="Campaigns in force that this customer can earn")
    unavailable: dict[str, str] = Field(
        default_factory=dict,
        description="Sources that did not answer in time, by the field they give, and why",
    )


async def _pending(client: Client, customer_id: str) -> list[PendingCashback]:
    # The id matched CUSTOMER_ID_PATTERN (letters, digits, _ . -): no quote in it.
    # A process not paid yet shows one of these statuses (or none before its
    # first step); its own status says whether it still is.
    statuses = ", ".join(f"'{status}'" for status in (*UNPAID_STAGES, STATUS_STUCK))
    query = (
        f"WorkflowType = '{CASHBACK_WORKFLOW}' AND {CUSTOMER_ID.name} = '{customer_id}'"
        f" AND ExecutionStatus = 'Running'"
        f" AND ({PROCESS_STATUS.name} IN ({statuses}) OR {PROCESS_STATUS.name} IS NULL)"
    )
    listed = [
        execution async for execution in client.list_workflows(query, limit=PENDING_LISTED_MAX)
    ]
    statuses_now = await asyncio.gather(
        *(client.get_workflow_handle(execution.id).query(Cashback.status) for execution in listed)
    )
    pending = []
    for execution, status in zip(listed, statuses_now, strict=True):
        if status.stage not in UNPAID_STAGES or status.reward_minor:
            continue
        attributes = execution.typed_search_attributes
        currency = attributes.get(CURRENCY)
        pending.append(
            PendingCashback(
                transaction_id=status.transaction_id,
                currency=Currency(currency) if currency else status.currency,
                purchase_amount_minor=attributes.get(AMOUNT_MINOR),
                stage=status.stage,
                reward_minor=status.pending_minor or None,
            )
        )
    return pending


async def _offers(pool: asyncpg.Pool, customer_id: str, at: datetime) -> list[Offer]:
    store = CashbackStore(pool)
    campaigns = await store.campaigns_in_force(at)
    customer = await store.customer_facts(customer_id, campaigns, at)
    return [_offer(campaign) for campaign in offered(campaigns, customer, at)]


def _offer(campaign: Campaign) -> Offer:
    rules, reward = campaign.rules, campaign.reward
    return Offer(
        campaign_id=campaign.id,
        version=campaign.version,
        name=campaign.name,
        description=describe(campaign),
        basis_points=reward.basis_points,
        currencies=rules.currencies,
        cap_minor=dict(reward.cap_minor),
        min_amount_minor=dict(rules.min_amount_minor),
        mcc_include=rules.mcc_include,
        mcc_exclude=rules.mcc_exclude,
        stackable=reward.stackable,
        valid_to=campaign.valid_to,
    )


def describe(campaign: Campaign) -> str:
    """What the campaign pays and on which purchases, in one sentence."""
    rules, reward = campaign.rules, campaign.reward
    percent = Decimal(reward.basis_points) * 100 / BASIS_POINTS_PER_UNIT
    words = [
        f"{percent.normalize():f}% cashback on purchases in "
        + _either(c.value for c in rules.currencies)
    ]
    if rules.mcc_include:
        words.append("at merchant categories (MCC) " + ", ".join(rules.mcc_include))
    if rules.mcc_exclude:
        words.append("except merchant categories (MCC) " + ", ".join(rules.mcc_exclude))
    if rules.min_amount_minor:
        words.append("of at least " + _either(_money(rules.min_amount_minor)))
    if reward.cap_minor:
        words.append("up to " + _either(_money(reward.cap_minor)) + " per purchase")
    recent = rules.recent_purchases
    if recent is not None:
        within = (
            f"{recent.within_seconds // DAY_SECONDS} day(s)"
            if recent.within_seconds % DAY_SECONDS == 0
            else f"{recent.within_seconds} seconds"
        )
        words.append(f"after {recent.purchases_min} other purchase(s) within {within}")
    if reward.stackable:
        words.append("on top of your best other offer")
    if campaign.valid_to is not None:
        words.append(f"until {campaign.valid_to.isoformat()}")
    return ", ".join(words)


def _money(amounts: dict[Currency, int]) -> list[str]:
    return [
        str(Money(amount_minor=amount, currency=currency))
        for currency, amount in sorted(amounts.items())
    ]


def _either(values: Iterable[str]) -> str:
    return " or ".join(values)


def _totals(
    paid: list[CashbackPaid], pending: list[PendingCashback] | None
) -> list[CashbackTotals]:
    currencies = {row.currency for row in paid} | {
        p.currency for p in pending or [] if p.currency is not None
    }
    by_currency = {row.currency: row for row in paid}
    totals = []
    for currency in sorted(currencies):
        row = by_currency.get(
            currency, CashbackPaid(currency=currency, earned_minor=0, clawed_back_minor=0)
        )
        waiting = None if pending is None else [p for p in pending if p.currency == currency]
        totals.append(
            CashbackTotals(
                currency=currency,
                earned_minor=row.earned_minor,
                clawed_back_minor=row.clawed_back_minor,
                net_minor=row.net_minor,
                pending_minor=None
                if waiting is None
                else sum(p.reward_minor or 0 for p in waiting),
                pending_purchases=None if waiting is None else len(waiting),
            )
        )
    return totals


@route(
    router,
    READ,
    "/customers/{customer_id}/rewards",
    "A customer's cashback (earned, clawed back, pending, the latest lines) and the "
    "campaigns they can earn from now",
    scope=SCOPE_CUSTOMERS_READ,
    responses={404: {"model": ErrorBody}},
)
async def rewards_route(
    customer_id: OwnCustomerId, pool: DatabasePool, client: TemporalClient
) -> RewardsView:
    await known_customer(pool, customer_id)
    as_of = datetime.now(UTC)
    unavailable: dict[str, str] = {}
    pending_read = asyncio.create_task(
        asyncio.wait_for(_pending(client, customer_id), PENDING_SECONDS_MAX)
    )
    try:
        offers: list[Offer] = []
        try:
            offers = await _offers(pool, customer_id, as_of)
        except TooManyCampaigns as error:
            # An operator loaded more than the engine evaluates: no offer is sure.
            unavailable["offers"] = unavailable_reason(error)
        pending: list[PendingCashback] | None = None
        try:
            pending = await pending_read
        except Exception as error:  # noqa: BLE001 - reported in the answer, not a failure
            unavailable["pending"] = unavailable_reason(error)
    finally:
        pending_read.cancel()
    # One snapshot of the ledger: the lines and the totals agree.
    async with (
        pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        paid = await cashback_paid(connection, customer_id)
        recent = await cashback_lines(connection, customer_id)
    if pending is not None:
        # Paid since its status was read: the ledger counts it, as earned.
        paid_now = {line.transaction_id for line in recent if line.kind == "earned"}
        pending = [p for p in pending if p.transaction_id not in paid_now]
    return RewardsView(
        customer_id=customer_id,
        as_of=as_of,
        cashback=_totals(paid, pending),
        recent=recent,
        pending=pending or [],
        offers=offers,
        unavailable=unavailable,
    )
