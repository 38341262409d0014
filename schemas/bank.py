"""What cardflow reads from the bank's API: inbound transfers, payouts, the
bank's operating balance and its statement.

Payouts are modelled on Stripe Treasury OutboundPayments and Modern Treasury
payment orders: `accepted` when the bank takes the order (the money leaves the
operating balance then), `sent` once it is on its way, `failed` if the bank
gives up before sending, `returned` if the receiving bank sends it back. A
failed or returned payout's money comes back to the operating balance.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from schemas.money import AMOUNT_MINOR_MAX, Currency

# The code a refused payout carries (HTTP 409, the error's `code`): the bank's
# operating balance in that currency is below the amount.
INSUFFICIENT_FUNDS = "insufficient_funds"

PAYOUT_REFERENCE_CHARS_MAX = 140
BENEFICIARY_NAME_CHARS_MAX = 140

# ISO 13616: two country letters, two check digits, then the national account
# number (BBAN) of the country's fixed length; 34 characters at most.
IBAN_CHARS_MAX = 34
IBAN_PATTERN = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]+$")
IBAN_CHECK_MODULUS = 97
IBAN_CHECK_REMAINDER = 1
# Every country of the SWIFT IBAN Registry and the length of its IBANs.
IBAN_LENGTH_BY_COUNTRY: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip


def electronic_iban(value: object) -> object:
    """The IBAN in its electronic format: spaces (the paper format groups by
    four) removed, letters upper case. Anything else is left for the checks."""
    if isinstance(value, str):
        return "".join(value.split()).upper()
    return value


def checked_iban(iban: str) -> str:
    """The IBAN when it is one: its country's length and ISO 13616's mod-97
    check digits (the number read with A=10 ... Z=35, the first four
    characters moved to the end, leaves remainder 1 when divided by 97)."""
    if len(iban) > IBAN_CHARS_MAX or not IBAN_PATTERN.match(iban):
        raise ValueError("an IBAN is 2 country letters, 2 check digits and the account number")
    length = IBAN_LENGTH_BY_COUNTRY.get(iban[:2])
    if length is None:
        raise ValueError(f"{iban[:2]} does not use IBANs")
    if len(iban) != length:
        raise ValueError(f"an IBAN of {iban[:2]} is {length} characters, not {len(iban)}")
    digits = "".join(str(int(char, 36)) for char in iban[4:] + iban[:4])
    if int(digits) % IBAN_CHECK_MODULUS != IBAN_CHECK_REMAINDER:
        raise ValueError("the IBAN's check digits do not match it")
    return iban


# An IBAN as a bank takes it: in paper or electronic format, kept electronic.
Iban = Annotated[str, BeforeValidator(electronic_iban), AfterValidator(checked_iban)]

PayoutStatus = Literal["accepted", "sent", "failed", "returned"]
# Why a receiving bank sent a payout back.
ReturnReason = Literal["account_closed", "invalid_account", "beneficiary_refused", "other"]
StatementLineKind = Literal["inbound_transfer", "payout", "payout_failed", "payout_returned"]


class InboundTransfer(BaseModel):
    id: str
    reference: str
    amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: Currency
    sender_name: str
    status: str
    received_at: str


class PayoutDestination(BaseModel):
    """Where a payout goes: the beneficiary's IBAN and name."""

    iban: Iban
    name: str = Field(min_length=1, max_length=BENEFICIARY_NAME_CHARS_MAX)


class Payout(BaseModel):
    """Money the bank sends out of the operating account, and where it stands."""

    id: str
    status: PayoutStatus
    amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: Currency
    destination_iban: str
    destination_name: str
    # The payer's own id for the payout (a withdrawal request's id): what a
    # caller whose create went unanswered asks for.
    reference: str
    failure_reason: str | None = None
    return_reason: ReturnReason | None = None
    created_at: str
    sent_at: str | None = None
    failed_at: str | None = None
    returned_at: str | None = None


class PayoutPage(BaseModel):
    """One page of payouts, oldest first."""

    data: list[Payout]
    has_more: bool


class BankBalance(BaseModel):
    """What the bank's operating account holds in one currency, available to pay out."""

    currency: Currency
    available_minor: int


class StatementLine(BaseModel):
    """One movement of the operating account: positive in, negative out."""

    id: str
    kind: StatementLineKind
    amount_minor: int = Field(ge=-AMOUNT_MINOR_MAX, le=AMOUNT_MINOR_MAX)
    currency: Currency
    reference: str
    # The inbound transfer or payout the line is about (ibt_..., po_...).
    source_id: str
    at: str


class StatementPage(BaseModel):
    """One page of a currency's statement, oldest first."""

    data: list[StatementLine]
    has_more: bool
