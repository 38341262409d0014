"""Commands and results of the double-entry ledger."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, model_validator

from schemas.money import AMOUNT_MINOR_MAX, Currency

# Limits, with their units, shared by the API, the SQL functions and tests.
BATCH_SIZE_MAX = 8_000
HISTORY_PAGE_SIZE_MAX = 1_000
BALANCE_SLOTS_MAX = 64

AccountCode = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@-]+$")]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200)]
AmountMinor = Annotated[StrictInt, Field(gt=0, le=AMOUNT_MINOR_MAX)]


class Rejection(StrEnum):
    """Why the ledger refused a transfer; recorded and returned again on retry."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    CREDITS_EXCEED_DEBITS = "credits_exceed_debits"
    UNKNOWN_ACCOUNT = "unknown_account"
    CURRENCY_MISMATCH = "currency_mismatch"
    ACCOUNT_CLOSED = "account_closed"
    INVALID_AMOUNT = "invalid_amount"
    SAME_ACCOUNT = "same_account"
    INVALID_EXPIRY = "invalid_expiry"
    HOLD_NOT_FOUND = "hold_not_found"
    HOLD_ALREADY_RESOLVED = "hold_already_resolved"
    HOLD_EXPIRED = "hold_expired"
    HOLD_NOT_EXPIRED = "hold_not_expired"
    # The transfer would take an account's running totals past what the
    # ledger's integers hold; every other transfer goes on.
    BALANCE_OVERFLOW = "balance_overflow"
    # Independent batches only: this item's key was used with another payload.
    # Not recorded: the key already has its outcome.
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"


class AccountSpec(BaseModel):
    """An account to open; opening the same code again with the same spec is a no-op."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: AccountCode
    currency: Currency
    kind: Annotated[str, Field(min_length=1, max_length=64)]
    owner_id: str | None = Field(default=None, max_length=200)
    debits_must_not_exceed_credits: bool = False
    credits_must_not_exceed_debits: bool = False
    # Rows the balance is striped over; for system accounts in most transfers.
    balance_slots: int = Field(default=1, ge=1, le=BALANCE_SLOTS_MAX)

    @model_validator(mode="after")
    def _check_flags(self) -> AccountSpec:
        if self.debits_must_not_exceed_credits and self.credits_must_not_exceed_debits:
            raise ValueError("an account takes at most one balance constraint")
        constrained = self.debits_must_not_exceed_credits or self.credits_must_not_exceed_debits
        if constrained and self.balance_slots != 1:
            raise ValueError("balance_slots must be 1 for a constrained account")
        return self


class Account(AccountSpec):
    id: int
    status: Literal["open", "closed"]
    created_at: datetime


class TransferRequest(BaseModel):
    """Move amount_minor from debit to credit, once per idempotency key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: IdempotencyKey
    debit: AccountCode
    credit: AccountCode
    amount_minor: AmountMinor
    currency: Currency

    @model_validator(mode="after")
    def _check_accounts(self) -> TransferRequest:
        if self.debit == self.credit:
            raise ValueError("debit and credit must be different accounts")
        return self


class HoldRequest(TransferRequest):
    """A pending transfer: reserves the amount until posted, voided or expired."""

    expires_at: AwareDatetime


class HoldResolution(BaseModel):
    """Post (all or part of), void or expire the hold created with hold_key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: IdempotencyKey
    hold_key: IdempotencyKey
    action: Literal["post", "void", "expire"]
    # Post: the amount to post; None posts the whole hold. The rest is released,
    # unless rest_key is given. Void with rest_key: the amount to release.
    amount_minor: AmountMinor | None = None
    # The rest of the hold stays pending as a new hold with this key and the
    # same expiry, atomically (a partial clearing or a partial reversal).
    rest_key: IdempotencyKey | None = None

    @model_validator(mode="after")
    def _check_amount(self) -> HoldResolution:
        if self.rest_key is not None:
            if self.action == "expire" or self.amount_minor is None:
                raise ValueError("rest_key needs action 'post' or 'void' and amount_minor")
            if self.rest_key == self.key:
                raise ValueError("rest_key must differ from key")
        elif self.action != "post" and self.amount_minor is not None:
            raise ValueError("amount_minor is only for action 'post', or 'void' with rest_key")
        return self


class TransferBatch(BaseModel):
    """Up to 8,000 transfers and holds; atomic means all or nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    items: Annotated[
        list[HoldRequest | TransferRequest], Field(min_length=1, max_length=BATCH_SIZE_MAX)
    ]
    atomic: bool = True


class TransferOutcome(BaseModel):
    key: str
    transfer_id: int | None
    rejection: Rejection | None = None
    detail: str = ""
    # True when this key was seen before and the first outcome is returned.
    replayed: bool = False
    created_at: datetime
    amount_minor: int | None = None

    @property
    def accepted(self) -> bool:
        return self.rejection is None


class Balance(BaseModel):
    code: str
    currency: Currency
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    as_of: datetime | None = None

    @property
    def posted(self) -> int:
        """Credits minus debits (a wallet's balance)."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What a wallet can spend: posted balance less pending debits."""
        return self.credits_posted - self.debits_posted - self.debits_pending


class HistoryEntry(BaseModel):
    transfer_id: int
    key: str
    kind: str
    direction: Literal["debit", "credit"]
    counterparty: str
    amount_minor: int
    currency: Currency
    created_at: datetime
    pending_id: int | None = None


class HistoryPage(BaseModel):
    entries: list[HistoryEntry]
    # Pass back to get the next page; None when this page is the last.
    next_cursor: int | None = None


class Violation(BaseModel):
    """One broken ledger invariant, as reported by the verifier."""

    check: str
    subject: str
    detail: str
