"""Closure activities (ledger queue): what a customer holds, their account's
status, and their cards frozen or closed through the card processes' own
updates (the card decides; a closure only asks, once per update id)."""

from __future__ import annotations

import asyncpg
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.queues import ledger_activity
from schemas.cards import CardStateChange
from schemas.closures import AccountStatusChange, CardChange, CardChangeOutcome, CustomerHoldings
from schemas.money import Currency
from schemas.refusals import Refusal
from workflows.cards import CLOSE_UPDATE, FREEZE_UPDATE, card_workflow_id

HOLDINGS = "closures.holdings"
SET_ACCOUNT_STATUS = "closures.set_account_status"
CHANGE_CARD = "closures.change_card"

_HOLDINGS_SQL = """
SELECT a.kind, a.currency,
       coalesce(sum(b.credits_posted - b.debits_posted), 0) AS balance
FROM ledger_accounts a
LEFT JOIN ledger_balances b ON b.account_id = a.id
WHERE a.owner_id = $1 AND a.kind IN ('wallet', 'receivable') AND a.status = 'open'
GROUP BY a.id
"""


class ClosureActivities:
    def __init__(self, pool: asyncpg.Pool, client: Client | None) -> None:
        self._pool = pool
        self._client = client

    @ledger_activity(HOLDINGS)
    async def holdings(self, customer_id: str) -> CustomerHoldings:
        """The customer's cards, open wallets' posted balances and debts owed."""
        cards = await self._pool.fetch(
            "SELECT card_id FROM cards WHERE customer_id = $1 ORDER BY card_id", customer_id
        )
        wallets: dict[Currency, int] = {}
        debts: dict[Currency, int] = {}
        for row in await self._pool.fetch(_HOLDINGS_SQL, customer_id):
            if row["kind"] == "wallet":
                wallets[Currency(row["currency"])] = int(row["balance"])
            elif int(row["balance"]) < 0:
                # A receivable: what the customer owes is its debit balance.
                debts[Currency(row["currency"])] = -int(row["balance"])
        return CustomerHoldings(
            cards=[row["card_id"] for row in cards], wallets=wallets, debts=debts
        )

    @ledger_activity(SET_ACCOUNT_STATUS)
    async def set_account_status(self, change: AccountStatusChange) -> None:
        await self._pool.execute(
            "UPDATE customers SET account_status = $2, updated_at = now(),"
            " closed_at = CASE WHEN $2 = 'closed' THEN now() ELSE closed_at END"
            " WHERE customer_id = $1",
            change.customer_id,
            change.status,
        )

    @ledger_activity(CHANGE_CARD)
    async def change_card(self, change: CardChange) -> CardChangeOutcome:
        """Ask the card to freeze or close. A card already so (or further:
        closed) is done; one with open authorizations is not yet."""
        if self._client is None:
            raise RuntimeError("this worker has no Temporal client to reach the cards with")
        handle = self._client.get_workflow_handle(card_workflow_id(change.card_id))
        update = FREEZE_UPDATE if change.action == "freeze" else CLOSE_UPDATE
        try:
            answer = await handle.execute_update(
                update, CardStateChange(reason=change.reason), id=change.update_id
            )
        except WorkflowUpdateFailedError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError):
                if cause.type == Refusal.WRONG_STATE.value and (
                    change.action == "freeze" or "closed" in cause.message
                ):
                    return CardChangeOutcome(done=True, detail=cause.message)
                if cause.type == Refusal.OPEN_AUTHORIZATIONS.value:
                    return CardChangeOutcome(done=False, detail=cause.message)
            raise ApplicationError(
                f"card {change.card_id} refused to {change.action}: {cause}",
                type="CardRefused",
                non_retryable=True,
            ) from None
        except RPCError as error:
            # A card whose process ended (closed long ago, replaced) is done.
            if "already completed" in error.message or "not found" in error.message:
                return CardChangeOutcome(done=True, detail=error.message)
            raise
        return CardChangeOutcome(done=True, detail=str(answer))

    def all(self) -> list[object]:
        return [self.holdings, self.set_account_status, self.change_card]
