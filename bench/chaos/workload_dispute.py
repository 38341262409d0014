"""The chaos workload's disputes: a purchase disputed through the `/v1` API
and decided by the issuer."""

from __future__ import annotations

from bench.chaos.evidence import CustomerRef
from bench.chaos.plan import Operation
from bench.chaos.workload_calls import WorkloadCalls
from schemas.issuer import DisputeOutcome

DISPUTE_REASON = "fraudulent"


class Disputes(WorkloadCalls):
    """Disputed purchases."""

    async def op_dispute(self, customer: CustomerRef, operation: Operation) -> str:
        candidates = [
            t
            for t in customer.purchases
            if not self.evidence.transactions[t].disputed
            and self.evidence.transactions[t].refunded_minor == 0
        ]
        transaction_id = self._pick(candidates, operation, "purchase to dispute")
        purchase = self.evidence.transactions[transaction_id]
        purchase.disputed = True
        body = {
            "transaction_id": transaction_id,
            "customer_id": customer.customer_id,
            "reason": DISPUTE_REASON,
            "evidence": [
                {"type": "cardholder_statement", "description": "I did not make this purchase."}
            ],
        }
        started = await self.call_api(
            "POST", "/disputes", body, key=self.key("op", operation.number)
        )
        if started.status_code not in (200, 202):
            return f"dispute refused {started.status_code}"
        workflow_id = started.json()["workflow_id"]
        self.evidence.disputes[workflow_id] = customer.index
        self.evidence.started_by[workflow_id] = operation.number
        submitted = await self.call_api(
            "POST",
            f"/disputes/{transaction_id}/submit",
            {},
            key=self.key("op", operation.number, "submit"),
        )
        if submitted.status_code != 200:
            return f"submit refused {submitted.status_code}"
        status = await self.until_process(
            workflow_id,
            lambda s: (
                s["status"] != "RUNNING" or bool((s.get("details") or {}).get("issuer_dispute_id"))
            ),
            "the issuer's dispute",
        )
        dispute_id = (status.get("details") or {}).get("issuer_dispute_id")
        if not dispute_id:
            return f"dispute ended {status['status']}"
        outcome = DisputeOutcome.WON if operation.choice % 2 == 0 else DisputeOutcome.LOST
        await self.provider(
            lambda: self.issuer.simulate_dispute_decision(
                dispute_id, outcome=outcome, idempotency_key=self.key("op", operation.number, "d")
            )
        )
        return f"dispute {outcome.value}"
