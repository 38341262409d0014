"""The chart of accounts: one helper per account code, and the spec each
system account is opened with. Every process names accounts through here."""

from __future__ import annotations

from schemas.ledger import AccountSpec
from schemas.money import Currency

# Hot system accounts take part in most transfers of their currency; their
# balance is striped over this many rows so concurrent transfers do not queue
# on one row lock.
SYSTEM_ACCOUNT_SLOTS = 8


def wallet(customer_id: str, currency: Currency | str) -> str:
    return f"customer:{customer_id}:wallet:{Currency(currency).value}"


def bank_inbound(currency: Currency | str) -> str:
    return f"bank:inbound:{Currency(currency).value}"


def bank_outbound(currency: Currency | str) -> str:
    """Payouts from the program's bank account: withdrawals sent out."""
    return f"bank:outbound:{Currency(currency).value}"


def crypto_custody() -> str:
    return f"crypto:custody:{Currency.USDT.value}"


def issuer_settlement(currency: Currency | str) -> str:
    return f"issuer:settlement:{Currency(currency).value}"


def issuer_prefunding(currency: Currency | str) -> str:
    """The program's money wired to its issuer to prefund the cards' spend."""
    return f"issuer:prefunding:{Currency(currency).value}"


def fx_pool(currency: Currency | str) -> str:
    return f"fx:pool:{Currency(currency).value}"


def fx_rounding(currency: Currency | str) -> str:
    return f"fx:rounding:{Currency(currency).value}"


def revenue_fees(currency: Currency | str) -> str:
    return f"revenue:fees:{Currency(currency).value}"


def revenue_interchange(currency: Currency | str) -> str:
    """The interchange the program earns on its cards' purchases, settled daily."""
    return f"revenue:interchange:{Currency(currency).value}"


def expense_issuer_fees(currency: Currency | str) -> str:
    """The issuer's fees to the program (processing, conversion, card production)."""
    return f"expense:issuer-fees:{Currency(currency).value}"


def revenue_fx(currency: Currency | str) -> str:
    return f"revenue:fx:{Currency(currency).value}"


def expense_cashback(currency: Currency | str) -> str:
    return f"expense:cashback:{Currency(currency).value}"


def disputes_provisional(currency: Currency | str) -> str:
    return f"disputes:provisional:{Currency(currency).value}"


def suspense_reconciliation(currency: Currency | str) -> str:
    return f"suspense:reconciliation:{Currency(currency).value}"


# Account code prefix -> the kind a system account of that family is opened with.
_SYSTEM_KINDS: dict[str, str] = {
    "bank:inbound": "bank",
    "bank:outbound": "bank",
    "crypto:custody": "custody",
    "issuer:settlement": "settlement",
    "issuer:prefunding": "prefunding",
    "fx:pool": "fx_pool",
    "fx:rounding": "fx_rounding",
    "revenue:fees": "revenue",
    "revenue:fx": "revenue",
    "revenue:interchange": "revenue",
    "expense:issuer-fees": "expense",
    "expense:cashback": "expense",
    "disputes:provisional": "disputes",
    "suspense:reconciliation": "suspense",
}


def system_account(code: str) -> AccountSpec:
    """The spec of a system account: unconstrained (it may run either way, as a
    bank's inbound or a pool does) and striped. Opening it again is a no-op."""
    family, _, currency = code.rpartition(":")
    kind = _SYSTEM_KINDS.get(family)
    if kind is None:
        raise ValueError(f"{code!r} is not a system account code")
    return AccountSpec(
        code=code, currency=Currency(currency), kind=kind, balance_slots=SYSTEM_ACCOUNT_SLOTS
    )
