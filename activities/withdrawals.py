"""Withdrawal activities: the customer's standing, tier limits and month's
usage (ledger queue, PostgreSQL), and the payout at the bank or the send from
custody (providers queue).

Every one is idempotent: the check reserves a request's usage once (a retry
answers as the first call did); a usage status change and a destination
remembered are plain writes; the payout asks the bank for one with this
reference before it makes one, with the request's idempotency key.
"""

from __future__ import annotations

import asyncpg
from temporalio.exceptions import ApplicationError

from activities.providers.activities import ProviderClients
from activities.queues import ledger_activity, provider_activity
from schemas import accounts
from schemas.bank import Payout
from schemas.customers import KycStatus, KycTier
from schemas.tron import ChainWithdrawal
from schemas.withdrawals import (
    ChainSendRequest,
    DestinationUse,
    PayoutRequest,
    PayoutStatus,
    PayoutUpdate,
    UsageChange,
    WithdrawalCheck,
    WithdrawalCheckResult,
)

CHECK_WITHDRAWAL = "withdrawals.check"
SET_WITHDRAWAL_USAGE = "withdrawals.set_usage"
REMEMBER_DESTINATION = "withdrawals.remember_destination"
SEND_PAYOUT = "withdrawals.send_payout"
PAYOUT_STATUS = "withdrawals.payout_status"
SEND_USDT = "withdrawals.send_usdt"
SEND_STATUS = "withdrawals.send_status"


class WithdrawalActivities:
    """Ledger-queue activities: they share the ledger worker's database pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @ledger_activity(CHECK_WITHDRAWAL)
    async def check(self, request: WithdrawalCheck) -> WithdrawalCheckResult:
        """May the customer withdraw this? An approved customer with an open
        wallet, within their tier's per-withdrawal and monthly limits; the
        month's usage is reserved in the same transaction, under the
        customer's lock, so two withdrawals cannot both fit in what is left."""
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtext('withdrawal-usage/' || $1))",
                request.customer_id,
            )
            row = await connection.fetchrow(
                """
                SELECT c.kyc_status, c.kyc_tier,
                       (SELECT status FROM ledger_accounts WHERE code = $2) AS wallet_status,
                       (SELECT status FROM withdrawal_usage WHERE request_id = $3) AS reserved,
                       (SELECT coalesce(sum(amount_minor), 0) FROM withdrawal_usage
                        WHERE customer_id = $1 AND currency = $4 AND month = $5
                          AND status <> 'released' AND request_id <> $3) AS used,
                       EXISTS (SELECT 1 FROM withdrawal_destinations
                               WHERE customer_id = $1 AND fingerprint = $6) AS known
                FROM customers c WHERE c.customer_id = $1
                """,
                request.customer_id,
                accounts.wallet(request.customer_id, request.currency),
                request.request_id,
                request.currency.value,
                request.month,
                request.fingerprint,
            )
            if row is None:
                return WithdrawalCheckResult(refused=f"no customer {request.customer_id}")
            tier = KycTier(row["kyc_tier"])
            used = int(row["used"])
            new_destination = not row["known"]
            if row["reserved"] is not None:
                # A retry of the check that reserved (or released) it: the first answer.
                if row["reserved"] == "released":
                    return WithdrawalCheckResult(refused="this withdrawal was released", tier=tier)
                return WithdrawalCheckResult(
                    tier=tier, month_used_minor=used, new_destination=new_destination
                )
            refused = _refusal(request, row["kyc_status"], row["wallet_status"], tier, used)
            if refused is not None:
                return WithdrawalCheckResult(refused=refused, tier=tier, month_used_minor=used)
            await connection.execute(
                "INSERT INTO withdrawal_usage"
                " (request_id, customer_id, currency, amount_minor, month)"
                " VALUES ($1, $2, $3, $4, $5)",
                request.request_id,
                request.customer_id,
                request.currency.value,
                request.amount_minor,
                request.month,
            )
        return WithdrawalCheckResult(
            tier=tier, month_used_minor=used, new_destination=new_destination
        )

    @ledger_activity(SET_WITHDRAWAL_USAGE)
    async def set_usage(self, change: UsageChange) -> None:
        """Paid (it counts for good) or released (it no longer counts)."""
        await self._pool.execute(
            "UPDATE withdrawal_usage SET status = $2, updated_at = now() WHERE request_id = $1",
            change.request_id,
            change.status,
        )

    @ledger_activity(REMEMBER_DESTINATION)
    async def remember_destination(self, use: DestinationUse) -> None:
        """The destination was paid to: later withdrawals to it are not new."""
        await self._pool.execute(
            "INSERT INTO withdrawal_destinations (customer_id, fingerprint, first_request_id)"
            " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            use.customer_id,
            use.fingerprint,
            use.request_id,
        )

    def all(self) -> list[object]:
        return [self.check, self.set_usage, self.remember_destination]


def _refusal(
    request: WithdrawalCheck,
    kyc_status: str | None,
    wallet_status: str | None,
    tier: KycTier,
    used_minor: int,
) -> str | None:
    if kyc_status != KycStatus.APPROVED.value:
        return f"customer {request.customer_id} is not approved (KYC {kyc_status})"
    if wallet_status != "open":
        return f"customer {request.customer_id} has no open {request.currency.value} wallet"
    if not request.policy.tier_limits_apply:
        return None
    limits = request.policy.limits.get(tier, {}).get(request.currency)
    if limits is None or limits.per_withdrawal_max_minor == 0:
        return f"the {tier.value} tier cannot withdraw {request.currency.value}"
    if request.amount_minor > limits.per_withdrawal_max_minor:
        return (
            f"above the {tier.value} tier's {limits.per_withdrawal_max_minor} minor units"
            " per withdrawal"
        )
    if used_minor + request.amount_minor > limits.monthly_max_minor:
        left = max(0, limits.monthly_max_minor - used_minor)
        return (
            f"above the {tier.value} tier's monthly limit: {left} minor units left"
            f" of {limits.monthly_max_minor} in {request.month}"
        )
    return None


class PayoutActivities:
    """Providers-queue activities: the payout at the bank."""

    def __init__(self, clients: ProviderClients) -> None:
        self._clients = clients

    @provider_activity(SEND_PAYOUT)
    async def send_payout(self, request: PayoutRequest) -> PayoutUpdate:
        """The payout of this reference: the one the bank has already (a
        create whose answer was lost, a retry after a crash), else a new one
        made with the request's key. Never two: the bank is asked first, and
        the key makes a repeated create the same payout."""
        payout = await self._clients.bank.payout_once(
            amount_minor=request.amount_minor,
            currency=request.currency,
            iban=request.iban,
            name=request.name,
            reference=request.reference,
            idempotency_key=request.key,
        )
        return _update(payout)

    @provider_activity(PAYOUT_STATUS)
    async def payout_status(self, payout_id: str) -> PayoutUpdate:
        """The payout as the bank has it now (asked when its webhook is late)."""
        return _update(await self._clients.bank.get_payout(payout_id))

    @provider_activity(SEND_USDT)
    async def send_usdt(self, request: ChainSendRequest) -> PayoutUpdate:
        """The send of this reference from custody: the one custody has
        already, else a new one made with the request's key. Never two."""
        tron = self._clients.tron
        made = await tron.withdrawals_by_reference(request.reference)
        if len(made) > 1:
            raise ApplicationError(
                f"custody holds {len(made)} sends with reference {request.reference}",
                type="PayoutDuplicated",
                non_retryable=True,
            )
        sent = made[0] if made else None
        if sent is None:
            sent = await tron.send_usdt(
                to_address=request.address,
                amount_minor=request.amount_minor,
                reference=request.reference,
                idempotency_key=request.key,
            )
        return chain_update(sent)

    @provider_activity(SEND_STATUS)
    async def send_status(self, tx_hash: str) -> PayoutUpdate:
        """The send as the chain has it now (asked when its webhook is late)."""
        return chain_update(await self._clients.tron.get_withdrawal(tx_hash))

    def all(self) -> list[object]:
        return [self.send_payout, self.payout_status, self.send_usdt, self.send_status]


def _update(payout: Payout) -> PayoutUpdate:
    return PayoutUpdate(
        payout_id=payout.id,
        status=payout.status,
        amount_minor=payout.amount_minor,
        reason=payout.return_reason or payout.failure_reason,
    )


# A chain send's status as a payout's: on its way, done for good, or failed.
CHAIN_STATUSES: dict[str, PayoutStatus] = {
    "confirming": "accepted",
    "finalized": "sent",
    "failed": "failed",
}


def chain_update(sent: ChainWithdrawal) -> PayoutUpdate:
    return PayoutUpdate(
        payout_id=sent.tx_hash,
        status=CHAIN_STATUSES[sent.status],
        amount_minor=sent.amount_minor,
        reason=sent.failure_reason,
    )
