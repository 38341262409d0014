"""The cashback store: campaigns, customer segments, and the purchases the rules
count; and the one ledger-queue activity that gathers the evaluator's data."""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg
from temporalio.exceptions import ApplicationError

from activities.queues import ledger_activity
from schemas.cashback import (
    CAMPAIGNS_ACTIVE_MAX,
    DEFAULT_SEGMENT,
    Campaign,
    CampaignLoad,
    CashbackContext,
    CashbackContextRequest,
    CustomerFacts,
    RecentPurchases,
    StoredCampaign,
)
from schemas.money import Currency

LOAD_CONTEXT = "cashback.load_context"
# Stored campaign versions one listing returns at most.
CAMPAIGNS_LIST_MAX = 1_000
# Purchases count toward "recent activity"; refunds do not.
PURCHASE_KINDS = ("clearing", "force_post")


class CampaignConflict(Exception):
    """A campaign version already stored with another document."""


class CustomerNotFound(Exception):
    pass


class TooManyCampaigns(Exception):
    pass


class CashbackStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load_campaigns(self, campaigns: list[Campaign]) -> CampaignLoad:
        """Store each version once, all or nothing. A version already stored with
        the same document is left as it is (loading a file twice is a no-op); a
        version stored with another document is refused: a change is a new version."""
        loaded: list[str] = []
        unchanged: list[str] = []
        async with self._pool.acquire() as connection, connection.transaction():
            for campaign in campaigns:
                name = f"{campaign.id} v{campaign.version}"
                document = campaign.model_dump(mode="json")
                stored = await connection.fetchval(
                    """
                    INSERT INTO cashback_campaigns
                        (campaign_id, version, document, valid_from, valid_to)
                    VALUES ($1, $2, $3::jsonb, $4, $5)
                    ON CONFLICT (campaign_id, version) DO NOTHING
                    RETURNING true
                    """,
                    campaign.id,
                    campaign.version,
                    json.dumps(document),
                    campaign.valid_from,
                    campaign.valid_to,
                )
                if stored:
                    loaded.append(name)
                    continue
                same = await connection.fetchval(
                    "SELECT document = $3::jsonb FROM cashback_campaigns "
                    "WHERE campaign_id = $1 AND version = $2",
                    campaign.id,
                    campaign.version,
                    json.dumps(document),
                )
                if not same:
                    raise CampaignConflict(
                        f"campaign {name} is already loaded with other terms; "
                        f"load the change as version {campaign.version + 1} or later"
                    )
                unchanged.append(name)
        return CampaignLoad(loaded=loaded, unchanged=unchanged)

    async def list_campaigns(self) -> list[StoredCampaign]:
        """Every stored version, newest version of each campaign first."""
        rows = await self._pool.fetch(
            """
            SELECT document, loaded_at,
                   version = max(version) OVER (PARTITION BY campaign_id) AS latest
            FROM cashback_campaigns
            ORDER BY campaign_id, version DESC
            LIMIT $1
            """,
            CAMPAIGNS_LIST_MAX,
        )
        return [
            StoredCampaign(
                campaign=Campaign.model_validate_json(row["document"]),
                loaded_at=row["loaded_at"],
                latest=row["latest"],
            )
            for row in rows
        ]

    async def campaigns_in_force(self, at: datetime) -> list[Campaign]:
        """The latest version of each campaign, when its window holds `at`."""
        rows = await self._pool.fetch(
            """
            SELECT document FROM (
                SELECT DISTINCT ON (campaign_id) document, valid_from, valid_to
                FROM cashback_campaigns
                ORDER BY campaign_id, version DESC
            ) latest
            WHERE valid_from <= $1 AND (valid_to IS NULL OR valid_to > $1)
            ORDER BY document->>'id'
            LIMIT $2
            """,
            at,
            CAMPAIGNS_ACTIVE_MAX + 1,
        )
        if len(rows) > CAMPAIGNS_ACTIVE_MAX:
            raise TooManyCampaigns(
                f"more than {CAMPAIGNS_ACTIVE_MAX} campaigns are in force at {at.isoformat()}"
            )
        return [Campaign.model_validate_json(row["document"]) for row in rows]

    async def set_segment(self, customer_id: str, segment: str) -> None:
        try:
            await self._pool.execute(
                """
                INSERT INTO customer_segments (customer_id, segment) VALUES ($1, $2)
                ON CONFLICT (customer_id) DO UPDATE
                    SET segment = excluded.segment, updated_at = now()
                """,
                customer_id,
                segment,
            )
        except asyncpg.ForeignKeyViolationError:
            raise CustomerNotFound(f"no customer {customer_id}") from None

    async def segment(self, customer_id: str) -> str:
        found = await self._pool.fetchval(
            "SELECT segment FROM customer_segments WHERE customer_id = $1", customer_id
        )
        return str(found) if found else DEFAULT_SEGMENT

    async def recent_purchases(
        self,
        customer_id: str,
        transaction_id: str | None,
        at: datetime,
        windows_seconds: list[int],
    ) -> list[RecentPurchases]:
        """For each window, the customer's purchases in the `window` seconds up to
        `at`, this transaction (if any) excluded."""
        if not windows_seconds:
            return []
        rows = await self._pool.fetch(
            """
            SELECT w.seconds, count(t.transaction_id) AS purchases
            FROM unnest($4::integer[]) AS w(seconds)
            LEFT JOIN card_transactions t
              ON t.customer_id = $1
             AND t.transaction_id IS DISTINCT FROM $2::text
             AND t.kind = ANY($5::text[])
             AND t.occurred_at <= $3
             AND t.occurred_at > $3 - make_interval(secs => w.seconds)
            GROUP BY w.seconds
            ORDER BY w.seconds
            """,
            customer_id,
            transaction_id,
            at,
            sorted(set(windows_seconds)),
            list(PURCHASE_KINDS),
        )
        return [
            RecentPurchases(within_seconds=row["seconds"], purchases=row["purchases"])
            for row in rows
        ]

    async def customer_facts(
        self,
        customer_id: str,
        campaigns: list[Campaign],
        at: datetime,
        transaction_id: str | None = None,
    ) -> CustomerFacts:
        """The customer's segment and the purchase counts the campaigns'
        recent-activity rules ask for, up to `at` (`transaction_id` not counted)."""
        windows = [
            campaign.rules.recent_purchases.within_seconds
            for campaign in campaigns
            if campaign.rules.recent_purchases is not None
        ]
        return CustomerFacts(
            segment=await self.segment(customer_id),
            recent=await self.recent_purchases(customer_id, transaction_id, at, windows),
        )

    async def add_card_transaction(
        self,
        *,
        transaction_id: str,
        card_id: str,
        customer_id: str,
        amount_minor: int,
        currency: Currency,
        occurred_at: datetime,
        mcc: str | None = None,
        merchant_name: str | None = None,
        kind: str = "clearing",
        refunded_transaction_id: str | None = None,
    ) -> None:
        """Record a settled transaction (once per id). The card process writes its
        own rows; tests and scenarios use this to stand in for it."""
        await self._pool.execute(
            """
            INSERT INTO card_transactions (transaction_id, card_id, customer_id, kind,
                refunded_transaction_id, amount_minor, currency, merchant_name, mcc, occurred_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            ON CONFLICT (transaction_id) DO NOTHING
            """,
            transaction_id,
            card_id,
            customer_id,
            kind,
            refunded_transaction_id,
            amount_minor,
            currency.value,
            merchant_name,
            mcc,
            occurred_at,
        )


class CashbackActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.store = CashbackStore(pool)

    @ledger_activity(LOAD_CONTEXT)
    async def load_context(self, request: CashbackContextRequest) -> CashbackContext:
        """The campaigns in force at the purchase, the customer's segment and the
        purchase counts their recent-activity rules ask for."""
        try:
            campaigns = await self.store.campaigns_in_force(request.occurred_at)
        except TooManyCampaigns as error:
            raise ApplicationError(
                str(error), type="TooManyCampaigns", non_retryable=True
            ) from None
        customer = await self.store.customer_facts(
            request.customer_id, campaigns, request.occurred_at, request.transaction_id
        )
        return CashbackContext(
            campaigns=campaigns, segment=customer.segment, recent=customer.recent
        )

    def all(self) -> list[object]:
        return [self.load_context]
