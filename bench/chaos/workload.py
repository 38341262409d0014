"""The chaos run's traffic: each planned operation, done through a public entry point.

Actions go where a real party would send them: the `/v1` API with an API key
(onboardings, cards, card actions, FX, disputes, billing runs,
reconciliations), the issuer simulator as the card network (authorizations
asked in real time through the gateway, increments, clearings, reversals,
refunds, force posts, shipping, dispute decisions), the bank and the Tron
simulators as the money arriving, the KYC simulator as the verifier. Every
call carries a key derived from the seed and the operation number, so a call
repeated after a dropped connection or a killed process is the same call.

What the system answered is kept in `Evidence`: the authorizations and
transactions the issuer made, and the ids of every process whose result moves
a customer's money; the money model reads them at the end.

This module holds the set-up of the run's customers, the dispatch of an
operation and the day's end; the operations live by process in
bench/chaos/workload_card.py (the card network), workload_redelivery.py
(events sent again), workload_issuing.py (cards and card actions),
workload_money.py (top-ups and FX) and workload_dispute.py, on the calls of
bench/chaos/workload_calls.py; `Evidence` is in bench/chaos/evidence.py.
"""

from __future__ import annotations

import asyncio
from datetime import date

from bench.chaos.evidence import CustomerRef
from bench.chaos.plan import Operation
from bench.chaos.workload_calls import expect
from bench.chaos.workload_card import CardTraffic
from bench.chaos.workload_controls import CardControls
from bench.chaos.workload_dispute import Disputes
from bench.chaos.workload_issuing import CardIssuing
from bench.chaos.workload_money import MoneyIn, MoneyOut
from bench.chaos.workload_redelivery import Redelivery
from schemas.kyc import KycDecision

# Every customer starts with this in USD (a bank transfer), so purchases,
# fees and conversions never meet an empty wallet.
OPENING_FUNDS_MINOR = 500_000
# The onboarding's stage once the KYC check is submitted and can be decided.
ONBOARDING_WAITS_FOR_KYC = "waiting for the KYC result"


class Workload(CardTraffic, Redelivery, CardIssuing, CardControls, MoneyIn, MoneyOut, Disputes):
    """Does the plan's operations; one instance per run."""

    # ----- set-up: customers onboarded, funded, with a card --------------

    def customer_id(self, index: int) -> str:
        return f"chaos-{self.seed}-{self.run_tag}-{index:03d}"

    async def set_up_customer(self, index: int) -> CustomerRef:
        customer = CustomerRef(index=index, customer_id=self.customer_id(index))
        cid = customer.customer_id
        profile = {
            "customer_id": cid,
            "first_name": "Chaos",
            "last_name": f"Customer{index}",
            "date_of_birth": "1990-01-01",
            "country": "GBR",
            "email": f"{cid}@example.com",
        }
        document = {"type": "passport", "country": "GBR", "file_name": "passport.jpg"}
        started = await self.call_api(
            "POST",
            "/onboardings",
            {"profile": profile, "documents": [document]},
            key=self.key("onboard", index),
        )
        expect(started, 202, 200)
        workflow_id = started.json()["workflow_id"]
        status = await self.until_process(
            workflow_id,
            lambda s: (s.get("details") or {}).get("stage") == ONBOARDING_WAITS_FOR_KYC,
            "a KYC applicant's check",
        )
        applicant_id = status["details"]["applicant_id"]
        await self.provider(
            lambda: self.kyc.simulate_decision(
                applicant_id, result=KycDecision.GREEN, idempotency_key=self.key("kyc", index)
            )
        )
        await self.until_process(workflow_id, lambda s: s["status"] == "COMPLETED", "approval")
        await self.topup_bank(customer, OPENING_FUNDS_MINOR, self.key("opening", index))
        card_id = await self.issue_card(customer, "virtual", self.key("first-card", index), -1)
        customer.cards.append(card_id)
        return customer

    # ----- the operations ------------------------------------------------

    async def run(self, operation: Operation) -> str:
        customer = self.evidence.customers[operation.customer]
        lock = self.locks.setdefault(operation.customer, asyncio.Lock())
        async with lock:
            handler = getattr(self, f"op_{operation.kind}")
            outcome: str = await handler(customer, operation)
            return outcome

    # ----- the day's end -------------------------------------------------

    async def reconcile(self, settlement_day: date) -> str:
        answer = await self.call_api("POST", f"/reconciliations/issuer/{settlement_day}")
        expect(answer, 202, 200)
        return str(answer.json()["workflow_id"])

    async def bill(self, period: str) -> str:
        answer = await self.call_api("POST", f"/billing-runs/{period}")
        expect(answer, 202, 200)
        return str(answer.json()["workflow_id"])


__all__ = ["OPENING_FUNDS_MINOR", "Workload"]
