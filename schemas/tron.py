"""What cardflow reads from the Tron (USDT-TRC20) custody API: deposit addresses
and deposits, withdrawals sent from custody, and the custody balance.

Amounts are micro-USDT (6 decimal places), integers end to end.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from schemas.money import AMOUNT_MINOR_MAX, Currency

# The code a refused withdrawal carries (HTTP 409, the error's `code`): custody
# holds less than the amount.
INSUFFICIENT_FUNDS = "insufficient_funds"

WITHDRAWAL_REFERENCE_CHARS_MAX = 140
# What a sandbox custodian (the Tron simulator) holds of its own at the start:
# a million USDT, in micro-USDT.
CUSTODY_OPENING_BALANCE_MINOR_DEFAULT = 10**12

# A Tron address is Base58Check of a 0x41 byte, 20 account bytes and a 4-byte
# checksum (the first bytes of the payload's double SHA-256): always 34
# characters starting with "T".
TRON_ADDRESS_PATTERN = r"^T[1-9A-HJ-NP-Za-km-z]{33}$"
TRON_ADDRESS_CHARS = 34
TRON_ADDRESS_PREFIX = b"\x41"
TRON_ACCOUNT_BYTES = 20
BASE58_CHECKSUM_BYTES = 4
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_TRON_ADDRESS_BYTES = len(TRON_ADDRESS_PREFIX) + TRON_ACCOUNT_BYTES + BASE58_CHECKSUM_BYTES


def base58check(payload: bytes) -> str:
    """`payload` and its 4-byte double-SHA-256 checksum in Bitcoin's Base58."""
    data = payload + _checksum(payload)
    number = int.from_bytes(data, "big")
    encoded = ""
    while number:
        number, digit = divmod(number, len(BASE58_ALPHABET))
        encoded = BASE58_ALPHABET[digit] + encoded
    leading_zero_bytes = len(data) - len(data.lstrip(b"\x00"))
    return BASE58_ALPHABET[0] * leading_zero_bytes + encoded


def checked_tron_address(address: str) -> str:
    """The address when it is a Tron account's: 34 Base58 characters that decode
    to 0x41, 20 account bytes and the checksum of those 21 bytes. A typo in an
    address almost never keeps its checksum, so money is not sent to it."""
    if len(address) != TRON_ADDRESS_CHARS or not set(address) <= set(BASE58_ALPHABET):
        raise ValueError(f"a Tron address is {TRON_ADDRESS_CHARS} Base58 characters")
    number = 0
    for char in address:
        number = number * len(BASE58_ALPHABET) + BASE58_ALPHABET.index(char)
    if number.bit_length() > 8 * _TRON_ADDRESS_BYTES:
        raise ValueError("not a Tron address")
    data = number.to_bytes(_TRON_ADDRESS_BYTES, "big")
    payload, checksum = data[:-BASE58_CHECKSUM_BYTES], data[-BASE58_CHECKSUM_BYTES:]
    if not payload.startswith(TRON_ADDRESS_PREFIX):
        raise ValueError("not a Tron address (its version byte is not 0x41)")
    if _checksum(payload) != checksum:
        raise ValueError("the Tron address's checksum does not match it")
    return address


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:BASE58_CHECKSUM_BYTES]


# A Tron account's address, its Base58Check checksum verified.
TronAddress = Annotated[str, AfterValidator(checked_tron_address)]

DepositStatus = Literal["confirming", "finalized", "dropped"]
# A withdrawal is `confirming` from the block it lands in, `finalized` at its
# finality depth, or `failed` (out of energy, reverted) before that, the money
# staying in custody.
WithdrawalStatus = Literal["confirming", "finalized", "failed"]


class DepositAddress(BaseModel):
    """A customer's one deposit address (Tron base58, 34 characters, "T...")."""

    address: str
    customer_id: str
    created_at: str


class Deposit(BaseModel):
    """A USDT transfer to a deposit address and how deep it is in the chain."""

    tx_hash: str
    address: str
    customer_id: str
    from_address: str
    amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: Currency
    block_number: int
    confirmations: int = Field(ge=0)
    finality_confirmations: int = Field(ge=1)
    status: DepositStatus
    detected_at: str
    finalized_at: str | None = None
    dropped_at: str | None = None


class DepositPage(BaseModel):
    """One page of an address's deposits, oldest first."""

    data: list[Deposit]
    has_more: bool


class ChainHead(BaseModel):
    """The chain after mining: its latest block and how many were just mined."""

    head_block_number: int
    blocks_mined: int


class ChainWithdrawal(BaseModel):
    """USDT sent from custody to an address, and how deep it is in the chain."""

    tx_hash: str
    to_address: str
    amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: Currency
    # The payer's own id for the send (a withdrawal request's id).
    reference: str
    status: WithdrawalStatus
    confirmations: int = Field(ge=0)
    block_number: int
    finality_confirmations: int = Field(ge=1)
    failure_reason: str | None = None
    created_at: str
    finalized_at: str | None = None
    failed_at: str | None = None


class WithdrawalPage(BaseModel):
    """One page of withdrawals, oldest first."""

    data: list[ChainWithdrawal]
    has_more: bool


class CustodyBalance(BaseModel):
    """What custody holds: finalized deposits in, every withdrawal not failed out."""

    currency: Currency
    balance_minor: int
