"""The card's holds (workflows/card_money.py): holding what the issuer
approved without the card, releasing (all or part of) them, posting a
clearing from them oldest first, voiding a hold a lost workflow task left in
the ledger, and expiring them by a workflow timer past the policy's hold
period. Deterministic: for use inside the workflow only.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.cards import AuthorizationRecord, DeclineReason, HeldPart
    from schemas.issuer import AuthorizationStatus
    from schemas.ledger import HoldResolution
    from workflows.cancellation import is_cancellation
    from workflows.card_ledger import LEDGER_REFUSALS, CardLedger, derived_key
    from workflows.steps import step_key

# A decision the issuer took back (its stand-in declined what the card
# approved late) gives back its amount even when an older reversal, applied
# after the card's late hold, already gave back that decision's own hold:
# what is held is a total, whichever hold carries it.
CARD_RELEASE_ACROSS_HOLDS_PATCH = "card-release-across-holds"
# With it, a decision the card takes from the issuer because it never
# answered it (the issuer's stand-in, the gateway's, or its final word on an
# authorization the card has no record of) voids the card's own hold for that
# decision, should one be in the ledger: held by a workflow task that was lost
# (its worker killed) whose question never came back before the issuer's word.
CARD_LOST_HOLDS_PATCH = "card-lost-holds-released"
# With it, the card looks for such a lost hold by local activities, inside the
# workflow task that applies the issuer's word, instead of two activities on
# the ledger's queue: every stand-in answer (a burst the gateway sheds) asks
# this once its webhook arrives, and two activity round trips through
# Temporal per stand-in were most of the work a burst left behind it.
CARD_LOST_HOLDS_LOCAL_PATCH = "card-lost-holds-local"


class CardHolds(CardLedger):
    """The holds of the card's open authorizations, in the ledger."""

    async def _release_lost_hold(self, authorization_id: str, index: int) -> None:
        """Void the card's own hold of decision `index` (and its partial hold)
        if a lost workflow task left one in the ledger: the card is about to
        follow the issuer's answer to that question instead, and nothing else
        knows of that hold. A key never held is refused by the ledger
        (hold_not_found), which is the usual, harmless outcome."""
        if not self.durable or not workflow.patched(CARD_LOST_HOLDS_PATCH):
            return
        own = step_key(f"auth/{authorization_id}/d{index}")
        resolve = (
            self._resolve_locally
            if workflow.patched(CARD_LOST_HOLDS_LOCAL_PATCH)
            else self._resolve
        )
        outcomes = await asyncio.gather(
            *(
                resolve(
                    HoldResolution(key=derived_key(hold, "void-lost"), hold_key=hold, action="void")
                )
                for hold in (own, f"{own}-partial")
            )
        )
        for outcome in outcomes:
            if outcome.accepted:
                workflow.logger.warning(
                    "authorization %s: released %s held by a lost decision",
                    authorization_id,
                    outcome.amount_minor,
                )

    async def _hold_for_issuer(
        self, record: AuthorizationRecord, amount_minor: int, index: int | None, name: str
    ) -> None:
        """Hold what the issuer approved without the card (stand-in, advice);
        under the patch the key is named by the issuer's decision or entry."""
        key = self._issuer_hold_key(record, name, "issuer-hold")
        # Counted towards the customer's tier, never refused by it: the
        # issuer has already approved it.
        held = await self._hold_in_tier(
            key, amount_minor, record.expires_at, record.created_at, enforce=False
        )
        assert not isinstance(held, DeclineReason)
        if held.accepted:
            record.held.append(
                HeldPart(
                    key=key, amount_minor=amount_minor, decision=-1 if index is None else index
                )
            )
            return
        self._exception(
            "uncovered",
            amount_minor,
            record.authorization_id,
            None,
            f"the issuer approved {amount_minor} the wallet cannot hold ({held.detail}); "
            "a clearing of it will need an operator",
        )

    async def _release(
        self, record: AuthorizationRecord, amount_minor: int, index: int | None, cause: str
    ) -> None:
        """Give back up to amount_minor of the holds (of one decision, or the
        newest first), keeping the rest held. `cause` names what released it
        (the issuer's id of it, under the patch) in the keys."""
        remaining = await self._release_parts(record, amount_minor, index, cause)
        if (
            remaining > 0
            and index is not None
            and record.held
            and workflow.patched(CARD_RELEASE_ACROSS_HOLDS_PATCH)
        ):
            # The decision's own holds were given back already (a reversal
            # from before it, applied after it, takes the newest hold first):
            # the rest comes from the authorization's other holds.
            await self._release_parts(record, remaining, None, f"{cause}-rest")

    async def _release_parts(
        self, record: AuthorizationRecord, amount_minor: int, index: int | None, cause: str
    ) -> int:
        """Release up to amount_minor from the holds (of one decision, or all),
        newest first; returns what was left to release."""
        remaining = amount_minor
        for part in reversed(list(record.held)):
            if remaining <= 0:
                break
            if index is not None and part.decision != index:
                continue
            take = min(part.amount_minor, remaining)
            if take == part.amount_minor:
                await self._resolve(
                    HoldResolution(
                        key=self._part_key(record, part, "void", cause),
                        hold_key=part.key,
                        action="void",
                    )
                )
                record.held.remove(part)
            else:
                rest_key = self._part_key(record, part, "rest", cause)
                await self._resolve(
                    HoldResolution(
                        key=self._part_key(record, part, "void-part", cause),
                        hold_key=part.key,
                        action="void",
                        amount_minor=take,
                        rest_key=rest_key,
                    )
                )
                part.key, part.amount_minor = rest_key, part.amount_minor - take
            remaining -= take
        return remaining

    async def _post_from_holds(
        self, record: AuthorizationRecord, amount_minor: int, transaction_id: str
    ) -> int:
        """Post up to amount_minor from the holds, oldest first; what a part
        does not use stays held. Returns what is left to post."""
        remaining = amount_minor
        for part in list(record.held):
            if remaining <= 0:
                break
            take = min(part.amount_minor, remaining)
            rest_key = (
                self._part_key(record, part, "rest", transaction_id)
                if take < part.amount_minor
                else None
            )
            posted = await self._resolve(
                HoldResolution(
                    key=self._post_key(record, part, transaction_id),
                    hold_key=part.key,
                    action="post",
                    amount_minor=take if rest_key else None,
                    rest_key=rest_key,
                )
            )
            if not posted.accepted:
                # The hold is gone (expired in the ledger): post it plainly below.
                record.held.remove(part)
                continue
            if rest_key is None:
                record.held.remove(part)
            else:
                part.key, part.amount_minor = rest_key, part.amount_minor - take
            remaining -= take
        return remaining

    def _forget_if_done(
        self, record: AuthorizationRecord, issuer_status: AuthorizationStatus | None
    ) -> None:
        finished = issuer_status not in (None, AuthorizationStatus.PENDING)
        if not record.held and finished:
            self._finish(record.authorization_id)
        elif not record.held and all(d.reconciled for d in record.decisions):
            self.state.authorizations.pop(record.authorization_id, None)

    # ----- hold expiry ------------------------------------------------------

    def next_expiry(self) -> datetime | None:
        held = [r.expires_at for r in self.state.authorizations.values()]
        return min(held) if held else None

    async def expire_due(self) -> None:
        """Void the holds of authorizations past the policy's hold period."""
        now = workflow.now()
        for record in list(self.state.authorizations.values()):
            if record.expires_at > now:
                continue
            async with self.lock:
                try:
                    await self._release(record, record.held_minor, None, "expired")
                except LEDGER_REFUSALS as error:
                    if not self.durable or is_cancellation(error):
                        raise
                    # Never the end of the card, and never a timer firing
                    # again at once: the ledger's own expiry (the hold's
                    # expires_at) releases what is left; an operator looks.
                    workflow.logger.error(
                        "expiring %s: the ledger refused: %s",
                        record.authorization_id,
                        error.cause or error,
                    )
                    self._exception(
                        "ledger_conflict",
                        record.held_minor,
                        record.authorization_id,
                        None,
                        f"expiring {record.authorization_id} was not fully applied:"
                        f" {error.cause or error}",
                    )
                self._finish(record.authorization_id)
