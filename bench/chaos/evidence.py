"""What the chaos run's traffic got back (bench/chaos/workload.py): the
customers, cards, authorizations and transactions the issuer made, and the
ids of every process whose result moves a customer's money; the money model
(bench/chaos/money.py) reads them at the end."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CardRef:
    card_id: str
    customer: int
    kind: str
    state: str = "open"  # open, frozen, lost


@dataclass
class AuthorizationRef:
    authorization_id: str
    card_id: str
    customer: int
    operation: int
    # Of the issuer's answer: who decided (the card, or the issuer's stand-in).
    stand_in: bool = False


@dataclass
class TransactionRef:
    transaction_id: str
    card_id: str
    customer: int
    operation: int
    type: str
    amount_minor: int
    refunded_minor: int = 0
    disputed: bool = False


@dataclass
class CustomerRef:
    index: int
    customer_id: str
    cards: list[str] = field(default_factory=list)
    open_authorizations: list[str] = field(default_factory=list)
    purchases: list[str] = field(default_factory=list)


@dataclass
class Evidence:
    """What the system answered, for the model and the report."""

    customers: list[CustomerRef] = field(default_factory=list)
    cards: dict[str, CardRef] = field(default_factory=dict)
    authorizations: dict[str, AuthorizationRef] = field(default_factory=dict)
    transactions: dict[str, TransactionRef] = field(default_factory=dict)
    # workflow id -> customer index, per process whose result moves money.
    topups: dict[str, int] = field(default_factory=dict)
    conversions: dict[str, int] = field(default_factory=dict)
    card_issues: dict[str, int] = field(default_factory=dict)
    disputes: dict[str, int] = field(default_factory=dict)
    withdrawals: dict[str, int] = field(default_factory=dict)
    # workflow id -> the operation that started it, for a violation's report.
    started_by: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    stand_ins: int = 0
    # Events the issuer sent again: (operation, what they are about, event id).
    resent: list[tuple[int, str, str]] = field(default_factory=list)

    def count(self, kind: str, outcome: str) -> None:
        per_kind = self.outcomes.setdefault(kind, {})
        per_kind[outcome] = per_kind.get(outcome, 0) + 1
