"""The card's money, inside its entity workflow `card/{card_id}`.

Real-time authorizations: the gateway sends the issuer's question as the
`authorize` update; the card decides from its state, spending limits,
velocity and (through the hold itself) the wallet's available balance, places
the hold in the ledger as a local activity (latency), and answers approve or
decline with a reason code.

Then the issuer's webhooks, as `network_event` signals, applied one at a time:
- an authorization's snapshot (created, declined, incremented, advice,
  expired) is compared with the card's own decisions: when the issuer did
  something else (its stand-in decision because the answer came too late, a
  merchant that could not take a partial approval), the holds follow the
  issuer, so the ledger matches what the issuer did;
- a clearing posts from the holds (lower: the rest stays held, or is released
  when final; higher: the excess within the tolerance as an extra transfer,
  beyond it an operator exception); several may follow one authorization;
- a reversal releases all or part of the holds; a force post debits the
  wallet without an authorization; a refund credits it;
- a hold not cleared within the policy is voided by a workflow timer.

Correct under disorder (behind CARD_MONEY_PATCH; cards started before it
keep their counter-named keys until they continue as new):
- every idempotent payload is a function of durable inputs: a hold's expiry
  derives from the issuer's own time of asking (or of its authorization),
  never from the clock of the workflow task that places it, so a task retried
  after a crash submits the very same hold;
- every ledger key of an issuer event derives from the issuer's ids (the
  authorization, its decision or history entry, the transaction, the
  reversal), and a transaction or reversal is claimed by its id in the
  database before it moves money, so applying an event twice is harmless
  whatever the card remembers;
- finished stays finished: a late snapshot of a cleared, reversed or expired
  authorization, or one older than what the card already took in, is ignored;
- a ledger conflict never fails the card: it becomes an exception for an
  operator and the card runs on.
The wallet never goes below zero: what the issuer settled that the wallet
cannot cover becomes an exception for an operator.
Deterministic: for use inside the workflow only.

The parts, each in its own module: CardLedger (workflows/card_ledger.py:
accounts, ledger calls, keys, claims, the exceptions' record), CardHolds
(workflows/card_holds.py), CardAuthorizations
(workflows/card_authorizations.py) and CardEvents (workflows/card_events.py);
CardMoney composes them, with the operators' resolution of an exception.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas import accounts
    from schemas.cards import CardException, ExceptionDecision
    from workflows.card_authorizations import CardAuthorizations
    from workflows.card_events import CardEvents
    from workflows.steps import step_key


class CardMoney(CardAuthorizations, CardEvents):
    """The card's money: its authorizations, holds, issuer events and the
    exceptions an operator resolves."""

    async def resolve_exception(self, decision: ExceptionDecision) -> str:
        found = next(e for e in self.state.exceptions if e.id == decision.exception_id)
        async with self.lock:
            await self._open_accounts()
            if decision.action == "dismiss":
                pass  # a conflict an operator put right by hand: nothing to move
            elif decision.action == "charge":
                charged = await self._transfer(
                    _exception_key(found, "charge", found.charges_refused),
                    self.wallet,
                    self.settlement,
                    found.amount_minor,
                )
                if not charged.accepted:
                    found.charges_refused += 1
                    return f"not charged: {charged.detail}; the exception stays open"
            else:
                await self._transfer(
                    _exception_key(found, "write-off"),
                    accounts.suspense_reconciliation(self.state.currency),
                    self.settlement,
                    found.amount_minor,
                )
        found.resolution = f"{decision.action}: {decision.reason}"
        return found.resolution


def _exception_key(found: CardException, action: str, attempt: int = 0) -> str:
    """The key of an exception's settling transfer. It names the issuer's
    transaction, as the card's other postings on issuer:settlement do, so the
    reconciliation counts it toward that transaction (and never fixes, or
    fixes twice, what the operator's decision already settled). A charge
    after `attempt` refused ones names its attempt beside the exception."""
    exception = found.id if attempt == 0 else f"{found.id}~{attempt}"
    if found.transaction_id is None:
        return step_key(f"exception/{exception}/{action}")
    return step_key(f"exception/{exception}/{action}/{found.transaction_id}")
