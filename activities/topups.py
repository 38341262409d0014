"""Top-up activities: who a payment belongs to, the daily-limit record
(ledger queue, PostgreSQL), and the "top-up credited" receipt (providers queue).

Every one is idempotent: matching only reads; a usage row is written once
per top-up (a retry returns the first decision); a status change is a plain
overwrite; the receipt carries the notification's idempotency key.
"""

from __future__ import annotations

import re

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.providers.activities import ProviderActivities, ProviderClients
from activities.queues import ledger_activity, provider_activity
from schemas import accounts
from schemas.customers import CUSTOMER_ID_PATTERN, KycStatus, Notification, NotificationReceipt
from schemas.disputes import customer_debt
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
        limit (or is forced); a retry answers as the first call did. One call
        of topup_reserve_usage (migrations/0006_topups.sql), under its lock."""
        row = await self._pool.fetchrow(
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
