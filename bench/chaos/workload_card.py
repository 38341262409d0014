"""The chaos workload's card traffic, as the card network sends it to the
issuer: authorizations, increments, clearings, reversals, refunds, force
posts and a burst of force posts on one card."""

from __future__ import annotations

import asyncio

from bench.chaos.evidence import AuthorizationRef, CustomerRef, TransactionRef
from bench.chaos.plan import Operation
from bench.chaos.workload_calls import OperationSkipped, WorkloadCalls
from schemas.issuer import Authorization, AuthorizationStatus, DecidedBy, Merchant, Transaction
from schemas.money import Currency

MERCHANTS = (
    Merchant(name="Corner Shop", mcc="5411", country="GB"),
    Merchant(name="Cafe Lumiere", mcc="5814", country="FR"),
    Merchant(name="Autobahn Fuel", mcc="5541", country="DE"),
    Merchant(name="Grand Hotel", mcc="7011", country="GB"),
    Merchant(name="Book Nook", mcc="5942", country="GB"),
)
BURST_POST_MINOR = 1
# A fleet card's batch arrives together, not one at a time.
BURST_IN_FLIGHT = 8


class CardTraffic(WorkloadCalls):
    """The card network's operations on a customer's cards."""

    async def _open_authorization(
        self, customer: CustomerRef, operation: Operation
    ) -> Authorization:
        """One of the customer's authorizations the issuer still holds, as it
        stands now; one the issuer has finished since is dropped and skipped."""
        authorization_id = self._pick(customer.open_authorizations, operation, "open authorization")
        current = await self.provider(lambda: self.issuer.get_authorization(authorization_id))
        if current.status is not AuthorizationStatus.PENDING:
            customer.open_authorizations.remove(authorization_id)
            raise OperationSkipped(f"authorization {current.status.value}")
        return current

    async def op_authorize(self, customer: CustomerRef, operation: Operation) -> str:
        card_id = self._pick(self._usable_cards(customer), operation, "card")
        merchant = MERCHANTS[operation.choice % len(MERCHANTS)]
        authorization = await self.provider(
            lambda: self.issuer.simulate_authorization(
                card_id=card_id,
                amount_minor=operation.amount_minor,
                currency=Currency.USD,
                merchant=merchant,
                partial_approval_capable=operation.choice % 7 == 0,
                idempotency_key=self.key("op", operation.number),
            )
        )
        return self._authorized(customer, card_id, operation, authorization)

    def _authorized(
        self, customer: CustomerRef, card_id: str, operation: Operation, answer: Authorization
    ) -> str:
        stand_in = any(d.decided_by is DecidedBy.STAND_IN for d in answer.decisions)
        if answer.id not in self.evidence.authorizations:
            self.evidence.authorizations[answer.id] = AuthorizationRef(
                answer.id, card_id, customer.index, operation.number, stand_in
            )
            if stand_in:
                self.evidence.stand_ins += 1
        if answer.status is AuthorizationStatus.PENDING:
            if answer.id not in customer.open_authorizations:
                customer.open_authorizations.append(answer.id)
            return "approved (stand-in)" if stand_in else "approved"
        return "declined (stand-in)" if stand_in else "declined"

    async def op_increment(self, customer: CustomerRef, operation: Operation) -> str:
        authorization_id = self._pick(customer.open_authorizations, operation, "open authorization")
        card_id = self.evidence.authorizations[authorization_id].card_id
        answer = await self.provider(
            lambda: self.issuer.simulate_increment(
                authorization_id,
                amount_minor=max(1, operation.amount_minor // 4),
                idempotency_key=self.key("op", operation.number),
            )
        )
        before = self.evidence.stand_ins
        self._authorized(customer, card_id, operation, answer)
        stand_in = any(
            d.decided_by is DecidedBy.STAND_IN and d.kind == "increment" for d in answer.decisions
        )
        if stand_in and self.evidence.stand_ins == before:
            self.evidence.stand_ins += 1
        last = answer.decisions[-1]
        return "approved" if last.approved_amount_minor > 0 else "declined"

    def _transaction(
        self, customer: CustomerRef, card_id: str, operation: Operation, tx: Transaction
    ) -> None:
        if tx.id in self.evidence.transactions:
            return
        self.evidence.transactions[tx.id] = TransactionRef(
            tx.id, card_id, customer.index, operation.number, tx.type.value, tx.amount_minor
        )
        if tx.type.value in ("clearing", "force_post"):
            customer.purchases.append(tx.id)

    async def op_clear(self, customer: CustomerRef, operation: Operation) -> str:
        current = await self._open_authorization(customer, operation)
        authorization_id = current.id
        card_id = self.evidence.authorizations[authorization_id].card_id
        held = current.pending_amount_minor
        variant = operation.choice % 100
        if variant < 50:
            amount, final, label = None, True, "cleared equal"
        elif variant < 80:
            amount, final, label = max(1, held * (50 + variant % 40) // 100), True, "cleared lower"
        else:
            amount, final, label = held + max(1, held * (variant % 10) // 100), True, "higher"
            label = "cleared higher"
        tx = await self.provider(
            lambda: self.issuer.simulate_clearing(
                authorization_id,
                amount_minor=amount,
                final=final,
                idempotency_key=self.key("op", operation.number),
            )
        )
        self._transaction(customer, card_id, operation, tx)
        if authorization_id in customer.open_authorizations:
            customer.open_authorizations.remove(authorization_id)
        return label

    async def op_reverse(self, customer: CustomerRef, operation: Operation) -> str:
        current = await self._open_authorization(customer, operation)
        authorization_id = current.id
        partial = operation.choice % 2 == 0 and current.pending_amount_minor > 1
        amount = current.pending_amount_minor // 2 if partial else None
        reversal = await self.provider(
            lambda: self.issuer.simulate_reversal(
                authorization_id,
                amount_minor=amount,
                idempotency_key=self.key("op", operation.number),
            )
        )
        if reversal.authorization_status is not AuthorizationStatus.PENDING:
            customer.open_authorizations.remove(authorization_id)
        return "reversed partly" if partial else "reversed"

    async def op_refund(self, customer: CustomerRef, operation: Operation) -> str:
        refundable = [
            t
            for t in customer.purchases
            if self.evidence.transactions[t].amount_minor
            > self.evidence.transactions[t].refunded_minor
            and not self.evidence.transactions[t].disputed
        ]
        transaction_id = self._pick(refundable, operation, "refundable purchase")
        purchase = self.evidence.transactions[transaction_id]
        left = purchase.amount_minor - purchase.refunded_minor
        amount = left if operation.choice % 3 == 0 else max(1, min(left, operation.amount_minor))
        merchant = MERCHANTS[operation.choice % len(MERCHANTS)]
        tx = await self.provider(
            lambda: self.issuer.simulate_refund(
                card_id=purchase.card_id,
                amount_minor=amount,
                currency=Currency.USD,
                merchant=merchant,
                refunded_transaction_id=transaction_id,
                idempotency_key=self.key("op", operation.number),
            )
        )
        purchase.refunded_minor += amount
        self._transaction(customer, purchase.card_id, operation, tx)
        state = self.evidence.cards[purchase.card_id].state
        return "refunded" if state in ("open", "frozen") else f"refunded to a {state} card"

    async def op_force_post(self, customer: CustomerRef, operation: Operation) -> str:
        card_id = self._pick(self._usable_cards(customer), operation, "card")
        merchant = MERCHANTS[operation.choice % len(MERCHANTS)]
        tx = await self.provider(
            lambda: self.issuer.simulate_force_post(
                card_id=card_id,
                amount_minor=operation.amount_minor,
                currency=Currency.USD,
                merchant=merchant,
                idempotency_key=self.key("op", operation.number),
            )
        )
        self._transaction(customer, card_id, operation, tx)
        return "force posted"

    def _clearings(self, card_id: str) -> int:
        return sum(
            1
            for t in self.evidence.transactions.values()
            if t.card_id == card_id and t.type == "clearing"
        )

    async def op_burst(self, customer: CustomerRef, operation: Operation) -> str:
        """`amount_minor` small force posts on one card, BURST_IN_FLIGHT at once:
        the card with the most cleared purchases (the one re-announced after)."""
        usable = self._usable_cards(customer)
        card_id = self._pick(usable, operation, "card")
        cleared = {card: self._clearings(card) for card in usable}
        if any(cleared.values()):
            card_id = max(usable, key=lambda card: cleared[card])
        merchant = MERCHANTS[operation.choice % len(MERCHANTS)]
        gate = asyncio.Semaphore(BURST_IN_FLIGHT)

        async def post(index: int) -> None:
            async with gate:
                tx = await self.provider(
                    lambda: self.issuer.simulate_force_post(
                        card_id=card_id,
                        amount_minor=BURST_POST_MINOR,
                        currency=Currency.USD,
                        merchant=merchant,
                        idempotency_key=self.key("op", operation.number, index),
                    )
                )
            self._transaction(customer, card_id, operation, tx)

        await asyncio.gather(*(post(index) for index in range(operation.amount_minor)))
        return "burst"
