"""Dispute activities: the disputed transaction as the card recorded it
(ledger queue) and the issuer's dispute API (providers queue).

Every issuer call carries the workflow step's idempotency key, so Temporal
may retry any of them; errors arrive classified by the HTTP boundary.
"""

from __future__ import annotations

import asyncpg

from activities.providers.activities import ProviderClients
from activities.queues import ledger_activity, provider_activity
from schemas.disputes import DisputedTransaction, IssuerDisputeRequest
from schemas.issuer import Dispute, DisputeEvidence

LOAD_TRANSACTION = "disputes.load_transaction"
ISSUER_OPEN = "disputes.issuer_open"
ISSUER_GET = "disputes.issuer_get"
ISSUER_ADD_EVIDENCE = "disputes.issuer_add_evidence"
ISSUER_WITHDRAW = "disputes.issuer_withdraw"
ISSUER_ESCALATE = "disputes.issuer_escalate"


class DisputeLedgerActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @ledger_activity(LOAD_TRANSACTION)
    async def load_transaction(self, transaction_id: str) -> DisputedTransaction | None:
        """The settled transaction, or None when the card never recorded it."""
        row = await self.pool.fetchrow(
            "SELECT transaction_id, card_id, customer_id, kind, amount_minor, currency,"
            " merchant_name, occurred_at FROM card_transactions WHERE transaction_id = $1",
            transaction_id,
        )
        return None if row is None else DisputedTransaction.model_validate(dict(row))

    def all(self) -> list[object]:
        return [self.load_transaction]


def _evidence(request: IssuerDisputeRequest) -> list[DisputeEvidence]:
    return [
        DisputeEvidence(type=item.type, description=item.description) for item in request.evidence
    ]


class DisputeProviderActivities:
    def __init__(self, clients: ProviderClients) -> None:
        self.clients = clients

    @provider_activity(ISSUER_OPEN)
    async def issuer_open(self, request: IssuerDisputeRequest) -> Dispute:
        assert request.reason is not None
        return await self.clients.issuer.open_dispute(
            transaction_id=request.transaction_id,
            reason=request.reason,
            evidence=_evidence(request),
            amount_minor=request.amount_minor,
            idempotency_key=request.key,
        )

    @provider_activity(ISSUER_GET)
    async def issuer_get(self, dispute_id: str) -> Dispute:
        return await self.clients.issuer.get_dispute(dispute_id)

    @provider_activity(ISSUER_ADD_EVIDENCE)
    async def issuer_add_evidence(self, request: IssuerDisputeRequest) -> Dispute:
        return await self.clients.issuer.add_dispute_evidence(
            request.dispute_id, evidence=_evidence(request), idempotency_key=request.key
        )

    @provider_activity(ISSUER_WITHDRAW)
    async def issuer_withdraw(self, request: IssuerDisputeRequest) -> Dispute:
        return await self.clients.issuer.withdraw_dispute(
            request.dispute_id, idempotency_key=request.key
        )

    @provider_activity(ISSUER_ESCALATE)
    async def issuer_escalate(self, request: IssuerDisputeRequest) -> Dispute:
        """Answers the merchant's representment: the dispute goes to pre-arbitration."""
        return await self.clients.issuer.call(
            "POST",
            f"/v1/disputes/{request.dispute_id}/pre_arbitration",
            Dispute,
            idempotency_key=request.key,
        )

    def all(self) -> list[object]:
        return [
            self.issuer_open,
            self.issuer_get,
            self.issuer_add_evidence,
            self.issuer_withdraw,
            self.issuer_escalate,
        ]
