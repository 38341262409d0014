"""The chaos workload's events sent again: the issuer announcing a clearing
it announced before, the very event or the same clearing under a new event
id, however long ago the card saw the first."""

from __future__ import annotations

import asyncio
import time

from bench.chaos.evidence import CustomerRef, TransactionRef
from bench.chaos.plan import Operation
from bench.chaos.workload_calls import (
    POLL_SECONDS,
    PROCESS_WAIT_SECONDS,
    OperationSkipped,
    WorkloadCalls,
    expect,
)
from schemas.providers import ISSUER


class Redelivery(WorkloadCalls):
    """The issuer's events delivered again."""

    async def op_represent(self, customer: CustomerRef, operation: Operation) -> str:
        """The issuer announces a clearing it announced before: the very event
        again (its dashboard's resend), or the same clearing under a new event
        id (a replay after the issuer's own incident). The card must not move
        its money again, however long ago it saw the first."""
        cleared = [
            t for t in customer.purchases if self.evidence.transactions[t].type == "clearing"
        ]
        transaction_id = self._pick(cleared, operation, "clearing")
        if operation.choice % 2 == 0:
            return await self._resend_event_about(transaction_id, operation)
        return await self._reannounce(transaction_id)

    async def _reannounce(self, transaction_id: str) -> str:
        """The issuer's event about a transaction it settled long ago, under a
        new event id (past the gateway's memory of event ids)."""
        transaction = await self.provider(lambda: self.issuer.get_transaction(transaction_id))
        event_type = {
            "clearing": "transaction.cleared",
            "force_post": "transaction.force_posted",
            "refund": "transaction.refunded",
        }[transaction.type.value]
        emitted = await self._admin(
            "POST",
            "/webhooks/emit",
            json={
                "simulator": ISSUER,
                "type": event_type,
                "data": transaction.model_dump(mode="json"),
            },
        )
        expect(emitted, 201)
        return "re-presented under a new event id"

    async def op_resend_oldest(self, customer: CustomerRef, operation: Operation) -> str:
        """The issuer announces again, under a new event id, the first clearing
        of the customer's busiest card (after the burst, hundreds of that
        card's events ago): the card must not move its money again,
        whatever it still remembers. (The very event again is stopped by the
        gateway's own record of event ids.)"""
        per_card: dict[str, list[TransactionRef]] = {}
        for transaction in self.evidence.transactions.values():
            if transaction.customer == customer.index:
                per_card.setdefault(transaction.card_id, []).append(transaction)
        if not per_card:
            raise OperationSkipped("no transaction")
        busiest = max(per_card.values(), key=len)
        # After the card has been sent every one of them: the announcement
        # must come hundreds of the card's events after the first.
        await self._until_delivered({t.transaction_id for t in busiest})
        # A clearing of a purchase, if the card has one: its money came from a
        # hold, so applying it again would take it a second time from the
        # wallet (a force post is posted under its own id either way).
        oldest = next((t for t in busiest if t.type == "clearing"), busiest[0])
        self.evidence.resent.append((operation.number, oldest.transaction_id, "new event id"))
        return await self._reannounce(oldest.transaction_id)

    async def _until_delivered(self, object_ids: set[str]) -> None:
        deadline = time.monotonic() + PROCESS_WAIT_SECONDS
        while time.monotonic() < deadline:
            answer = await self._admin("GET", "/webhooks", params={"undelivered": "true"})
            expect(answer, 200)
            if not any(row.get("about") in object_ids for row in answer.json()):
                return
            await asyncio.sleep(POLL_SECONDS)

    async def _resend_event_about(self, object_id: str, operation: Operation) -> str:
        answer = await self._admin(
            "POST", "/webhooks/resend", json={"simulator": ISSUER, "about": object_id}
        )
        expect(answer, 200)
        event_id = answer.json().get("resent")
        if event_id is None:
            raise OperationSkipped(f"no event about {object_id} delivered yet")
        self.evidence.resent.append((operation.number, object_id, str(event_id)))
        return "the same event resent"
