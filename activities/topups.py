"""Top-up activities: who a payment belongs to, the daily-limit record
(ledger queue, PostgreSQL), and the "top-up credited" receipt (providers queue).

Every one is idempotent: matching only reads; a usage row is written once
per top-up (a retry returns the first decision); a status change is a plain
overwrite; the receipt carries the notification's idempotency key.
"""

from __future__ import annotations

import re

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.providers.activities import ProviderActivities, ProviderClients
from activities.queues import ledger_activity, provider_activity
from schemas import accounts
from schemas.customers import (
    CUSTOMER_ID_PATTERN,
    KycStatus,
    KycTier,
    Notification,
    NotificationReceipt,
)
from schemas.disputes import customer_debt
from schemas.money import Currency, Money
from schemas.topup import (
    CustomerMatch,
    CustomerMatchRequest,
    ReceiptRequest,
    UsageDecision,
    UsageReservation,
    UsageStatusChange,
)

MATCH_CUSTOMER = "topups.match_customer"
RESERVE_USAGE = "topups.reserve_usage"
SET_USAGE_STATUS = "topups.set_usage_status"
SEND_RECEIPT = "topups.send_receipt"

_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)


class TopupActivities:
    """Ledger-queue activities: they share the ledger worker's database pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @ledger_activity(MATCH_CUSTOMER)
    async def match_customer(self, request: CustomerMatchRequest) -> CustomerMatch:
        """The customer a payment with this reference belongs to: an approved
        customer with an open wallet in the currency; else why not. Also which
        of the credit's system accounts are not open yet (one round trip)."""
        reference = request.reference.strip()
        row = await self._pool.fetchrow(
            """
            SELECT (SELECT kyc_status FROM customers WHERE customer_id = $1) AS kyc_status,
                   (SELECT status FROM ledger_accounts WHERE code = $2) AS wallet_status,
                   ARRAY(SELECT wanted.code FROM unnest($3::text[]) AS wanted(code)
                         WHERE NOT EXISTS (SELECT 1 FROM ledger_accounts a
                                           WHERE a.code = wanted.code)) AS missing,
                   (SELECT coalesce(sum(b.debits_posted - b.credits_posted
                                        - b.credits_pending), 0)
                    FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id
                    WHERE a.code = $4) AS debt
            """,
            reference,
            accounts.wallet(reference, request.currency),
            request.system_accounts,
            customer_debt(reference, request.currency),
        )
        assert row is not None
        missing = list(row["missing"])
        if not _CUSTOMER_ID.match(reference):
            reason = f"reference {reference!r} is not a customer id"
        elif row["kyc_status"] is None:
            reason = f"no customer {reference}"
        elif row["kyc_status"] != KycStatus.APPROVED.value:
            reason = f"customer {reference} is not approved (KYC {row['kyc_status']})"
        elif row["wallet_status"] != "open":
            reason = f"customer {reference} has no open {request.currency.value} wallet"
        else:
            return CustomerMatch(
                customer_id=reference,
                missing_accounts=missing,
                debt_outstanding_minor=max(0, int(row["debt"])),
            )
        return CustomerMatch(customer_id=None, reason=reason, missing_accounts=missing)

    @ledger_activity(RESERVE_USAGE)
    async def reserve_usage(self, request: UsageReservation) -> UsageDecision:
        """Count the top-up against the customer's day if it fits under the
        limit and their KYC tier's caps (the month's top-ups, the wallet's
        balance with every top-up reserved and not yet credited), or if it is
        forced; a retry answers as the first call did. The tier's check and
        topup_reserve_usage (migrations/0006_topups.sql) run in one
        transaction, under the customer's lock for the currency."""
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"topup-tier/{request.customer_id}/{request.currency.value}",
            )
            over = None
            if not request.force and request.tier_limits:
                over = await _over_tier(connection, request)
            if over is not None:
                existing = await connection.fetchval(
                    "SELECT status FROM topup_usage WHERE topup_id = $1", request.topup_id
                )
                if existing is None or existing == "released":
                    return UsageDecision(
                        reserved=False,
                        used_minor=0,
                        daily_max_minor=request.daily_max_minor,
                        over=over,
                    )
            row = await connection.fetchrow(
                "SELECT * FROM topup_reserve_usage($1, $2, $3, $4, $5, $6, $7)",
                request.topup_id,
                request.customer_id,
                request.currency.value,
                request.amount_minor,
                request.day,
                request.daily_max_minor,
                request.force,
            )
        assert row is not None
        existing = row["existing"]
        reserved = row["inserted"] or (existing is not None and existing != "released")
        return UsageDecision(
            reserved=reserved,
            used_minor=int(row["used_minor"]),
            daily_max_minor=request.daily_max_minor,
        )

    @ledger_activity(SET_USAGE_STATUS)
    async def set_usage_status(self, change: UsageStatusChange) -> None:
        """Mark the top-up's usage credited, or released so it no longer counts."""
        await self._pool.execute(
            "UPDATE topup_usage SET status = $2, updated_at = now() WHERE topup_id = $1",
            change.topup_id,
            change.status,
        )

    def all(self) -> list[object]:
        return [self.match_customer, self.reserve_usage, self.set_usage_status]


class TopupReceiptActivities:
    """Providers-queue activity: the customer's "top-up credited" message."""

    def __init__(self, clients: ProviderClients, pool: asyncpg.Pool) -> None:
        self._providers = ProviderActivities(clients, pool)

    @provider_activity(SEND_RECEIPT)
    async def send_receipt(self, request: ReceiptRequest) -> NotificationReceipt:
        """Send the receipt on the customer's channels. A provider that keeps
        failing past `attempts_max` attempts is given up on: the error becomes
        non-retryable, and the top-up treats it as a permanent failure."""
        notification = Notification(
            key=request.key,
            customer_id=request.customer_id,
            subject=request.subject,
            body=request.body,
        )
        try:
            return await self._providers.notify_customer(notification)
        except ApplicationError as error:
            attempt = activity.info().attempt
            if error.non_retryable or request.attempts_max is None:
                raise
            if attempt < request.attempts_max:
                raise
            raise ApplicationError(
                f"the receipt could not be sent in {attempt} attempts: {error}",
                type="ReceiptNotDelivered",
                non_retryable=True,
            ) from error

    def all(self) -> list[object]:
        return [self.send_receipt]


async def _over_tier(connection: PoolConnectionProxy, request: UsageReservation) -> str | None:
    """Why the customer's KYC tier does not let this top-up in, if it does not."""
    row = await connection.fetchrow(
        """
        SELECT c.kyc_tier,
               (SELECT coalesce(sum(u.amount_minor), 0) FROM topup_usage u
                WHERE u.customer_id = $1 AND u.currency = $2
                  AND date_trunc('month', u.day) = date_trunc('month', $3::date)
                  AND u.status IN ('reserved', 'credited') AND u.topup_id <> $4) AS month,
               (SELECT coalesce(sum(u.amount_minor), 0) FROM topup_usage u
                WHERE u.customer_id = $1 AND u.currency = $2
                  AND u.status = 'reserved' AND u.topup_id <> $4) AS coming,
               (SELECT coalesce(sum(b.credits_posted - b.debits_posted), 0)
                FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id
                WHERE a.code = $5) AS balance
        FROM customers c WHERE c.customer_id = $1
        """,
        request.customer_id,
        request.currency.value,
        request.day,
        request.topup_id,
        accounts.wallet(request.customer_id, request.currency),
    )
    if row is None:
        return None
    tier = KycTier(row["kyc_tier"])
    limits = request.tier_limits.get(tier, {}).get(request.currency)
    if limits is None:
        return None
    amount = request.amount_minor
    month = int(row["month"])
    if month + amount > limits.monthly_load_minor:
        return (
            f"{_money(amount, request.currency)} would take this month's top-ups to "
            f"{_money(month + amount, request.currency)}, over the {tier.value} tier's "
            f"{_money(limits.monthly_load_minor, request.currency)}"
        )
    balance = int(row["balance"]) + int(row["coming"])
    if limits.balance_cap_minor is not None and balance + amount > limits.balance_cap_minor:
        return (
            f"{_money(amount, request.currency)} would take the wallet to "
            f"{_money(balance + amount, request.currency)}, over the {tier.value} tier's "
            f"cap of {_money(limits.balance_cap_minor, request.currency)}"
        )
    return None


def _money(amount_minor: int, currency: Currency) -> str:
    return str(Money(amount_minor=amount_minor, currency=currency))
