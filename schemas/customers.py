"""Customers: who they are, how they want to hear from us, their KYC standing."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, PastDate, model_validator

from schemas.edge import EdgeModel, Name
from schemas.notify import Channel

# A customer's id names their processes, ledger accounts and statement
# directory, and is typed on command lines: it starts with a letter or a
# digit, so it is never "." or ".." (a directory's parent) nor an option.
CUSTOMER_ID_CHARS_MAX = 64
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
CustomerId = Annotated[
    str,
    Field(
        pattern=CUSTOMER_ID_PATTERN,
        max_length=CUSTOMER_ID_CHARS_MAX,
        description="Letters, digits, '_', '.' and '-', starting with a letter or a digit",
    ),
]

# A living person's birth date: a day in the past, from 1900 on.
BIRTH_DATE_MIN = date(1900, 1, 1)
BirthDate = Annotated[
    PastDate, Field(ge=BIRTH_DATE_MIN, description=f"A past day, from {BIRTH_DATE_MIN} on")
]


class KycStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class KycTier(StrEnum):
    """How far a customer is verified; each tier has its own limits (top-ups,
    withdrawals, card spend). A customer is `standard` unless an operator
    moves them (`PUT /v1/customers/{id}/kyc-tier`, `cardflow kyc tier`)."""

    BASIC = "basic"
    STANDARD = "standard"
    ENHANCED = "enhanced"


class TierChange(EdgeModel):
    """An operator's move of a customer to another KYC tier, and why."""

    model_config = ConfigDict(extra="forbid")

    tier: KycTier
    reason: str = Field(min_length=1, max_length=500)


class KycStatusChange(BaseModel):
    """A customer's KYC standing as their onboarding decided it."""

    # A plain string, not CustomerId: an id the pattern refused would fail
    # decoding, which Temporal retries without end; the customer store refuses
    # an id it cannot hold (or does not know) without retrying.
    customer_id: str
    status: KycStatus


class CustomerProfile(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    first_name: Name
    last_name: Name
    date_of_birth: BirthDate
    country: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 3166-1 alpha-3")
    email: EmailStr | None = None
    push_token: str | None = Field(default=None, max_length=500)
    telegram_chat_id: str | None = Field(default=None, pattern=r"^-?\d{1,20}$")
    preferred_channels: list[Channel] = Field(
        default_factory=lambda: [Channel.EMAIL], min_length=1, max_length=len(Channel)
    )

    @model_validator(mode="after")
    def _channels_have_addresses(self) -> CustomerProfile:
        addresses = {
            Channel.EMAIL: self.email,
            Channel.PUSH: self.push_token,
            Channel.TELEGRAM: self.telegram_chat_id,
        }
        for channel in self.preferred_channels:
            if not addresses[channel]:
                raise ValueError(f"preferred channel {channel.value} has no address")
        return self


class Notification(BaseModel):
    """One message to a customer, sent on each of their preferred channels once."""

    key: str = Field(min_length=1, max_length=200)
    customer_id: CustomerId
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=2_000)


class NotificationReceipt(BaseModel):
    key: str
    message_ids: list[str]
    channels: list[Channel]
