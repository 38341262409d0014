"""The customer store: profiles, notification preferences, KYC standing."""

from __future__ import annotations

import asyncpg
from temporalio.exceptions import ApplicationError

from activities.queues import ledger_activity
from schemas.customers import CustomerProfile, KycStatus, KycStatusChange, KycTier, TierChange
from schemas.notify import Channel

SAVE_PROFILE = "customers.save_profile"
SET_KYC_STATUS = "customers.set_kyc_status"
GET_KYC_STATUS = "customers.get_kyc_status"


class NoAddress(Exception):
    """A channel chosen has no address on file (no email, push token or chat)."""


class CustomerNotFound(Exception):
    pass


class CustomerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def save(self, profile: CustomerProfile) -> None:
        """Insert or update; contact details and preferences follow the latest profile."""
        await self._pool.execute(
            """
            INSERT INTO customers (customer_id, first_name, last_name, date_of_birth, country,
                                   email, push_token, telegram_chat_id, preferred_channels)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (customer_id) DO UPDATE SET
                first_name = excluded.first_name, last_name = excluded.last_name,
                date_of_birth = excluded.date_of_birth, country = excluded.country,
                email = excluded.email, push_token = excluded.push_token,
                telegram_chat_id = excluded.telegram_chat_id,
                preferred_channels = excluded.preferred_channels, updated_at = now()
            """,
            profile.customer_id,
            profile.first_name,
            profile.last_name,
            profile.date_of_birth,
            profile.country,
            profile.email,
            profile.push_token,
            profile.telegram_chat_id,
            [channel.value for channel in profile.preferred_channels],
        )

    async def get(self, customer_id: str) -> CustomerProfile:
        row = await self._pool.fetchrow(
            "SELECT * FROM customers WHERE customer_id = $1", customer_id
        )
        if row is None:
            raise CustomerNotFound(f"no customer {customer_id}")
        return CustomerProfile(
            customer_id=row["customer_id"],
            first_name=row["first_name"],
            last_name=row["last_name"],
            date_of_birth=row["date_of_birth"],
            country=row["country"],
            email=row["email"],
            push_token=row["push_token"],
            telegram_chat_id=row["telegram_chat_id"],
            preferred_channels=row["preferred_channels"],
        )

    async def set_channels(self, customer_id: str, channels: list[Channel]) -> list[Channel]:
        """The channels the customer is told on, each of which must have its
        address on file (checked in the same statement that sets them)."""
        wanted = [channel.value for channel in channels]
        row = await self._pool.fetchrow(
            """
            UPDATE customers SET preferred_channels = $2, updated_at = now()
            WHERE customer_id = $1
              AND ('email' <> ALL($2) OR email IS NOT NULL)
              AND ('push' <> ALL($2) OR push_token IS NOT NULL)
              AND ('telegram' <> ALL($2) OR telegram_chat_id IS NOT NULL)
            RETURNING preferred_channels
            """,
            customer_id,
            wanted,
        )
        if row is not None:
            return [Channel(value) for value in row["preferred_channels"]]
        profile = await self.get(customer_id)
        addresses = {
            Channel.EMAIL: profile.email,
            Channel.PUSH: profile.push_token,
            Channel.TELEGRAM: profile.telegram_chat_id,
        }
        missing = [channel.value for channel in channels if not addresses[channel]]
        raise NoAddress(f"no address on file for {', '.join(missing)}")

    async def set_kyc_status(self, customer_id: str, status: KycStatus) -> None:
        updated = await self._pool.execute(
            "UPDATE customers SET kyc_status = $2, updated_at = now() WHERE customer_id = $1",
            customer_id,
            status.value,
        )
        if updated == "UPDATE 0":
            raise CustomerNotFound(f"no customer {customer_id}")

    async def set_tier(self, customer_id: str, change: TierChange, changed_by: str) -> KycTier:
        """Move the customer to `change.tier`, recording who and why; the tier
        it was in. The same tier again changes and records nothing. Every
        card's next decision applies the new tier's limits (they read it)."""
        async with self._pool.acquire() as connection, connection.transaction():
            previous = await connection.fetchval(
                "SELECT kyc_tier FROM customers WHERE customer_id = $1 FOR UPDATE", customer_id
            )
            if previous is None:
                raise CustomerNotFound(f"no customer {customer_id}")
            if previous != change.tier.value:
                await connection.execute(
                    "UPDATE customers SET kyc_tier = $2, updated_at = now() WHERE customer_id = $1",
                    customer_id,
                    change.tier.value,
                )
                await connection.execute(
                    "INSERT INTO kyc_tier_changes"
                    " (customer_id, from_tier, to_tier, reason, changed_by)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    customer_id,
                    previous,
                    change.tier.value,
                    change.reason,
                    changed_by,
                )
        return KycTier(previous)

    async def kyc_status(self, customer_id: str) -> KycStatus | None:
        value = await self._pool.fetchval(
            "SELECT kyc_status FROM customers WHERE customer_id = $1", customer_id
        )
        return KycStatus(value) if value else None


class CustomerActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.store = CustomerStore(pool)

    @ledger_activity(SAVE_PROFILE)
    async def save_profile(self, profile: CustomerProfile) -> None:
        await self.store.save(profile)

    @ledger_activity(SET_KYC_STATUS)
    async def set_kyc_status(self, change: KycStatusChange) -> None:
        try:
            await self.store.set_kyc_status(change.customer_id, change.status)
        except CustomerNotFound as error:
            raise ApplicationError(
                str(error), type="CustomerNotFound", non_retryable=True
            ) from None

    @ledger_activity(GET_KYC_STATUS)
    async def get_kyc_status(self, customer_id: str) -> KycStatus | None:
        return await self.store.kyc_status(customer_id)

    def all(self) -> list[object]:
        return [self.save_profile, self.set_kyc_status, self.get_kyc_status]
