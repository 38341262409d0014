"""What the public API shows of a process's state.

A workflow's state carries what the process needs to run (task queue
names, ledger key counters, issuer events already applied, bounds carried
across continue-as-new); a client sees only what a cardholder's app or an
upstream system may act on. Each view is built from the process's status
query answer and shares no class with the state it shows, so a field added
to the state never reaches the API unnoticed.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from schemas.cards import CardInput, Merchant, SpendingLimits
from schemas.issuer import CardState
from schemas.money import Currency


class OpenAuthorizationView(BaseModel):
    """An approved purchase whose funds are held until it clears, is
    reversed or expires."""

    authorization_id: str
    merchant: Merchant
    merchant_amount_minor: int
    merchant_currency: Currency
    authorized_minor: int
    held_minor: int
    cleared_minor: int
    created_at: datetime
    expires_at: datetime


class CardExceptionView(BaseModel):
    """Money the issuer moved that the card could not mirror on its own,
    waiting for an operator's decision."""

    id: str
    kind: str
    amount_minor: int
    authorization_id: str | None
    transaction_id: str | None
    detail: str


class CardView(BaseModel):
    """A card as the API shows it: its state, limits, what it holds and has spent."""

    card_id: str
    customer_id: str
    state: CardState
    currency: Currency
    limits: SpendingLimits
    # The card that replaced this one (reported lost or stolen), once issued.
    replaced_by: str | None
    open_authorizations: int = Field(description="Authorizations holding funds")
    held_minor: int = Field(description="The funds they hold, in the card's currency")
    authorizations: list[OpenAuthorizationView]
    # What the daily and monthly limits are checked against, with the UTC
    # day (YYYY-MM-DD) and month (YYYY-MM) they count.
    spent_day: str
    spent_day_minor: int
    spent_month: str
    spent_month_minor: int
    exceptions: list[CardExceptionView] = Field(description="Exceptions not yet decided")
    closed_at: datetime | None

    @classmethod
    def of(cls, card: CardInput) -> CardView:
        """The view of the card entity's state (its status query's answer)."""
        holding = [record for record in card.authorizations.values() if record.held]
        return cls.model_validate(
            {
                **card.model_dump(include=_CARD_FIELDS),
                "open_authorizations": len(holding),
                "held_minor": sum(record.held_minor for record in holding),
                # Each view takes its fields by name (a property included).
                "authorizations": [
                    OpenAuthorizationView.model_validate(record, from_attributes=True)
                    for record in holding
                ],
                "exceptions": [
                    CardExceptionView.model_validate(exception, from_attributes=True)
                    for exception in card.exceptions
                    if exception.resolution is None
                ],
            }
        )


# The view's fields the card's state holds as they are; the others are
# worked out from it.
_CARD_FIELDS = set(CardView.model_fields) - {
    "open_authorizations",
    "held_minor",
    "authorizations",
    "exceptions",
}
