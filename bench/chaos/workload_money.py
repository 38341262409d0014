"""The chaos workload's money arriving, changing currency and leaving: bank
and USDT top-ups through the bank and Tron simulators, FX conversions and
withdrawals to a bank account through the `/v1` API (the run plays the bank:
it sends the payout, fails it, or sends it and returns it)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from bench.chaos.evidence import CustomerRef
from bench.chaos.plan import VARIANTS_MAX, Operation
from bench.chaos.workload_calls import POLL_SECONDS, PROCESS_WAIT_SECONDS, WorkloadCalls
from schemas.money import Currency
from workflows.topup import topup_workflow_id


class MoneyIn(WorkloadCalls):
    """Top-ups and FX conversions."""

    async def topup_bank(self, customer: CustomerRef, amount_minor: int, key: str) -> str:
        transfer = await self.provider(
            lambda: self.bank.simulate_inbound_transfer(
                reference=customer.customer_id,
                amount_minor=amount_minor,
                currency=Currency.USD,
                sender_name="Chaos Sender",
                idempotency_key=key,
            )
        )
        workflow_id = topup_workflow_id("bank", transfer.id)
        self.evidence.topups[workflow_id] = customer.index
        return workflow_id

    async def op_topup_bank(self, customer: CustomerRef, operation: Operation) -> str:
        workflow_id = await self.topup_bank(
            customer, operation.amount_minor, self.key("op", operation.number)
        )
        self.evidence.started_by[workflow_id] = operation.number
        return "bank transfer sent"

    async def op_topup_usdt(self, customer: CustomerRef, operation: Operation) -> str:
        address = await self.provider(
            lambda: self.tron.get_or_create_address(
                customer.customer_id, idempotency_key=f"deposit-address/{customer.customer_id}"
            )
        )
        deposit = await self.provider(
            lambda: self.tron.simulate_deposit(
                address=address.address,
                amount_minor=operation.amount_minor,
                from_address="TChaosSenderAddressXXXXXXXXXXXXXXX",
                idempotency_key=self.key("op", operation.number),
            )
        )
        workflow_id = topup_workflow_id("usdt", deposit.tx_hash)
        self.evidence.topups[workflow_id] = customer.index
        self.evidence.started_by[workflow_id] = operation.number
        return "usdt deposited"

    async def op_fx(self, customer: CustomerRef, operation: Operation) -> str:
        body = {
            "customer_id": customer.customer_id,
            "sell_currency": "USD",
            "buy_currency": "EUR",
            "sell_amount_minor": operation.amount_minor,
        }
        started = await self.call_api(
            "POST", "/fx/quotes", body, key=self.key("op", operation.number)
        )
        if started.status_code not in (200, 202):
            return f"quote refused {started.status_code}"
        answer = started.json()
        workflow_id = answer["workflow_id"]
        request_id = answer.get("request_id") or workflow_id.removeprefix("fx/")
        self.evidence.conversions[workflow_id] = customer.index
        self.evidence.started_by[workflow_id] = operation.number
        late = operation.choice % 100 >= 80
        if late:
            expires_at = datetime.fromisoformat(answer["offer"]["expires_at"])
            await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds() + 0.5))
        confirmed = await self.call_api(
            "POST", f"/fx/{request_id}/confirm", key=self.key("op", operation.number, "confirm")
        )
        if confirmed.status_code == 200:
            return "converted after expiry" if late else "converted"
        return f"confirm refused {confirmed.status_code}" + (" (expired)" if late else "")


# Bank accounts the customers withdraw to (valid IBANs, one new per customer
# at first, then known).
WITHDRAWAL_IBANS = ("DE89370400440532013000", "GB82WEST12345698765432")
# Of every VARIANTS_MAX withdrawals the bank fails this many before sending,
# and returns this many after sending; it sends the rest.
WITHDRAWAL_FAILED_BELOW = 10
WITHDRAWAL_RETURNED_FROM = 90


class MoneyOut(WorkloadCalls):
    """Withdrawals, the run playing the bank."""

    async def op_withdraw(self, customer: CustomerRef, operation: Operation) -> str:
        request_id = self.key("w", operation.number)
        body = {
            "request_id": request_id,
            "customer_id": customer.customer_id,
            "amount_minor": operation.amount_minor,
            "currency": "USD",
            "destination": {
                "iban": WITHDRAWAL_IBANS[operation.choice % len(WITHDRAWAL_IBANS)],
                "name": "Chaos Customer",
            },
        }
        started = await self.call_api(
            "POST", "/withdrawals", body, key=self.key("op", operation.number)
        )
        if started.status_code not in (200, 202):
            return f"refused {started.status_code}"
        workflow_id = started.json()["workflow_id"]
        self.evidence.withdrawals[workflow_id] = customer.index
        self.evidence.started_by[workflow_id] = operation.number
        deadline = time.monotonic() + PROCESS_WAIT_SECONDS
        while True:
            payouts = await self.provider(lambda: self.bank.payouts_by_reference(request_id))
            if payouts:
                break
            status = await self.process(workflow_id)
            if status["status"] != "RUNNING":
                return "ended without a payout"
            if time.monotonic() > deadline:
                return "no payout in time"
            await asyncio.sleep(POLL_SECONDS)
        payout = payouts[0]
        variant = operation.choice % VARIANTS_MAX
        if variant < WITHDRAWAL_FAILED_BELOW:
            await self.provider(
                lambda: self.bank.simulate_payout_failed(
                    payout.id,
                    "beneficiary_bank_offline",
                    idempotency_key=self.key("fail", payout.id),
                )
            )
            return "failed at the bank"
        await self.provider(
            lambda: self.bank.simulate_payout_sent(
                payout.id, idempotency_key=self.key("send", payout.id)
            )
        )
        if variant < WITHDRAWAL_RETURNED_FROM:
            return "sent"
        await self.provider(
            lambda: self.bank.simulate_payout_returned(
                payout.id, "account_closed", idempotency_key=self.key("return", payout.id)
            )
        )
        return "sent and returned"
