"""What every part of the card's money stands on (workflows/card_money.py):
the card's accounts and its calls to the ledger, the names of its ledger
keys, the claim of an issuer event by its id, and the record of an exception
for an operator; with the limits and the patches these parts share.

Keys under CARD_MONEY_PATCH derive from durable inputs only (the issuer's
ids, the hold's own key), so a task retried after a crash submits the very
same payloads. Deterministic: for use inside the workflow only.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.card_tiers import CardTierActivities
    from activities.card_transactions import CardEventClaim, CardTransactionActivities
    from activities.ledger.activities import LEDGER_RETRY_POLICY, LedgerActivities
    from schemas import accounts
    from schemas.card_tiers import TierHoldRequest, tier_month
    from schemas.cards import (
        AuthorizationRecord,
        CardException,
        CardInput,
        DeclineReason,
        HeldPart,
    )
    from schemas.ledger import HoldRequest, HoldResolution, TransferOutcome, TransferRequest
    from workflows.steps import step, step_key

# The ledger's own expiry of a hold sits this far past the card's timer, so a
# clearing that races the timer still finds the hold; the timer voids it.
HOLD_LEDGER_GRACE = timedelta(hours=1)
# A local activity runs inside the workflow task; past this it is retried.
LOCAL_LEDGER_TIMEOUT = timedelta(seconds=5)
# Finished authorizations remembered, so a late snapshot never reopens one.
FINISHED_AUTHORIZATIONS_MAX = 2_000
# Ledger keys are at most 200 characters; a key derived from a long chain of
# partial postings is shortened to a digest of its full name past this.
DERIVED_KEY_CHARS_MAX = 190
# A hold named inside a posting's key: enough of a digest to tell one
# authorization's holds apart.
HOLD_DIGEST_CHARS = 16
# How the ledger's refusal of a call reaches the card: an activity's as an
# ActivityError, a local activity's (a hold) as its ApplicationError.
LEDGER_REFUSALS = (ActivityError, ApplicationError)
# Cards live for years: this change of how the card names its ledger keys,
# dates its holds and applies issuer events is behind a patch, so a card
# running the old code keeps its keys until its run continues as new.
CARD_MONEY_PATCH = "card-money-durable-keys"
# With it, the issuer's final word on an authorization the card never decided
# (the gateway's stand-in decline while the card's worker was away) finishes
# it, and a decision asked afterwards (the delayed update) is declined; an
# increment the gateway stood in for, asked after the issuer's webhook of it,
# gets that answer. Both once held what the issuer had declined, and nothing
# released it.
CARD_FINISHED_BEFORE_DECIDED_PATCH = "card-finished-before-decided"
# With it, the card's holds are placed within its customer's KYC tier
# (activities/card_tiers.py): the card's own decisions are refused past the
# tier's limits, and every hold, the issuer's stand-ins too, counts towards
# the month's spend over all the customer's cards.
CARD_TIER_LIMITS_PATCH = "card-holds-within-kyc-tier"


class CardLedger:
    """The card's money at the ledger: its state, the lock its holds change
    under, its accounts, keys and ledger calls."""

    def __init__(self, state: CardInput) -> None:
        self.state = state
        # Holds change one operation at a time: an authorization's hold, a
        # clearing's posting and a reversal's release never interleave.
        self.lock = asyncio.Lock()
        self._accounts_open = False

    # ----- accounts and ledger calls ----------------------------------------

    @property
    def wallet(self) -> str:
        return accounts.wallet(self.state.customer_id, self.state.currency)

    @property
    def settlement(self) -> str:
        return accounts.issuer_settlement(self.state.currency)

    async def _open_accounts(self) -> None:
        if self._accounts_open:
            return
        await step(
            self.state,
            LedgerActivities.open_accounts,
            [
                accounts.system_account(self.settlement),
                accounts.system_account(accounts.suspense_reconciliation(self.state.currency)),
            ],
        )
        self._accounts_open = True

    def _hold_request(self, key: str, amount_minor: int, expires_at: datetime) -> HoldRequest:
        return HoldRequest(
            key=key,
            debit=self.wallet,
            credit=self.settlement,
            amount_minor=amount_minor,
            currency=self.state.currency,
            expires_at=expires_at + HOLD_LEDGER_GRACE,
        )

    async def _hold(self, key: str, amount_minor: int, expires_at: datetime) -> TransferOutcome:
        # A local activity: the issuer waits for the answer (latency).
        return await workflow.execute_local_activity_method(
            LedgerActivities.hold,
            self._hold_request(key, amount_minor, expires_at),
            start_to_close_timeout=LOCAL_LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY_POLICY,
        )

    async def _hold_in_tier(
        self,
        key: str,
        amount_minor: int,
        expires_at: datetime,
        asked_at: datetime,
        *,
        authorized_minor: int = 0,
        enforce: bool = True,
    ) -> TransferOutcome | DeclineReason:
        """The hold (a local activity), within the customer's KYC tier under
        CARD_TIER_LIMITS_PATCH: the ledger's outcome, or the tier's reason to
        refuse it (nothing held). The approval counts in `asked_at`'s month;
        without `enforce` it is only counted."""
        if not workflow.patched(CARD_TIER_LIMITS_PATCH):
            return await self._hold(key, amount_minor, expires_at)
        within = await workflow.execute_local_activity_method(
            CardTierActivities.hold_within_tier,
            TierHoldRequest(
                hold=self._hold_request(key, amount_minor, expires_at),
                customer_id=self.state.customer_id,
                month=tier_month(asked_at),
                authorized_minor=authorized_minor,
                enforce=enforce,
            ),
            start_to_close_timeout=LOCAL_LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY_POLICY,
        )
        # The customer's segment for authorization rules, as last seen.
        self.state.customer_tier = within.tier
        if within.refusal is not None:
            return within.refusal
        assert within.outcome is not None
        return within.outcome

    async def _available(self) -> int:
        balance = await workflow.execute_local_activity_method(
            LedgerActivities.balance,
            self.wallet,
            start_to_close_timeout=LOCAL_LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY_POLICY,
        )
        return max(balance.available, 0)

    async def _available_durably(self) -> int:
        """The wallet's available balance, read by an activity whose result is
        in the history before anything depends on it."""
        balance = await step(self.state, LedgerActivities.balance, self.wallet)
        return max(balance.available, 0)

    async def _resolve(self, resolution: HoldResolution) -> TransferOutcome:
        return await step(self.state, LedgerActivities.resolve_hold, resolution)

    async def _resolve_locally(self, resolution: HoldResolution) -> TransferOutcome:
        """`_resolve` as a local activity, inside this workflow task."""
        return await workflow.execute_local_activity_method(
            LedgerActivities.resolve_hold,
            resolution,
            start_to_close_timeout=LOCAL_LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY_POLICY,
        )

    async def _transfer(self, key: str, debit: str, credit: str, amount: int) -> TransferOutcome:
        return await step(
            self.state,
            LedgerActivities.transfer,
            TransferRequest(
                key=key,
                debit=debit,
                credit=credit,
                amount_minor=amount,
                currency=self.state.currency,
            ),
        )

    @property
    def durable(self) -> bool:
        """Whether this run names its keys and dates its holds from durable
        inputs only (CARD_MONEY_PATCH). The SDK memoizes it for the run."""
        return workflow.patched(CARD_MONEY_PATCH)

    def _key(self, record: AuthorizationRecord, what: str) -> str:
        """A key named by a counter in the card's state (runs before the patch)."""
        record.keys_used += 1
        return step_key(f"auth/{record.authorization_id}/{record.keys_used}-{what}")

    def _part_key(self, record: AuthorizationRecord, part: HeldPart, what: str, cause: str) -> str:
        """The key of one operation on one hold: under the patch, named by the
        hold's own key and the issuer's id of what caused it."""
        if not self.durable:
            return self._key(record, what)
        return derived_key(part.key, f"{what}/{cause}")

    def _post_key(self, record: AuthorizationRecord, part: HeldPart, transaction_id: str) -> str:
        """The key of posting (part of) a hold for an issuer transaction. It names
        the transaction in the form the reconciliation reads back
        (card/{card}/auth/{authorization}/post-{transaction}/{hold}), the hold
        by a short digest of its key, so one clearing posting from two holds
        takes two keys."""
        if not self.durable:
            return self._key(record, f"post-{transaction_id}")
        hold = hashlib.sha256(part.key.encode()).hexdigest()[:HOLD_DIGEST_CHARS]
        return step_key(f"auth/{record.authorization_id}/post-{transaction_id}/{hold}")

    def _issuer_hold_key(self, record: AuthorizationRecord, name: str, fallback: str) -> str:
        if not self.durable:
            return self._key(record, fallback)
        return step_key(f"auth/{record.authorization_id}/{name}")

    async def _claim(self, subject_id: str) -> bool:
        """Claim an issuer money event by its id before it moves money: False
        when another application (a repeat the card forgot, another run) took it."""
        self.state.events_claimed += 1
        return await step(
            self.state,
            CardTransactionActivities.claim,
            CardEventClaim(
                subject_id=subject_id,
                card_id=self.state.card_id,
                claimant=f"{workflow.info().run_id}/{self.state.events_claimed}",
            ),
        )

    def _finish(self, authorization_id: str) -> None:
        """Forget an authorization for good: a late snapshot never reopens it."""
        self.state.authorizations.pop(authorization_id, None)
        if not self.durable:
            return
        finished = self.state.finished_authorizations
        if authorization_id not in finished:
            finished.append(authorization_id)
            del finished[:-FINISHED_AUTHORIZATIONS_MAX]

    # ----- exceptions for an operator ---------------------------------------

    def _exception(
        self,
        kind: str,
        amount_minor: int,
        authorization_id: str | None,
        transaction_id: str | None,
        detail: str,
    ) -> None:
        self.state.exceptions.append(
            CardException(
                id=f"exc-{len(self.state.exceptions) + 1}",
                kind=kind,  # type: ignore[arg-type]
                amount_minor=amount_minor,
                authorization_id=authorization_id,
                transaction_id=transaction_id,
                detail=detail,
            )
        )

    def open_exceptions(self) -> list[CardException]:
        return [e for e in self.state.exceptions if e.resolution is None]


def derived_key(base: str, suffix: str) -> str:
    """A key derived from another key; past the ledger's length, a digest of
    the whole name under the same authorization's prefix."""
    key = f"{base}/{suffix}"
    if len(key) <= DERIVED_KEY_CHARS_MAX:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"{base[: DERIVED_KEY_CHARS_MAX - 43]}/~{digest}"
