"""A hypothesis state machine drives random ledger operations against an
in-memory model; after every step the database agrees with the model and the
verifier finds nothing."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from activities.ledger import AccountNotEmpty, IdempotencyConflict, Ledger
from activities.ledger.verify import verify
from schemas.ledger import (
    AccountSpec,
    HoldRequest,
    HoldResolution,
    Rejection,
    TransferOutcome,
    TransferRequest,
)
from schemas.money import Currency
from tests.activities.ledger.helpers import own_event_loop

NAMES = ("a", "b", "c", "sys", "owed", "ghost")  # "ghost" is never opened
SHORT_HOLD_SECONDS = 0.5
LONG_HOLD_SECONDS = 600


@dataclass
class ModelAccount:
    currency: Currency
    constrained: bool
    # Its credits may never exceed its debits (a receivable, such as a
    # customer's debt): what it is owed can be repaid, never over-repaid.
    credit_limited: bool = False
    closed: bool = False
    dp: int = 0
    cp: int = 0
    dpend: int = 0
    cpend: int = 0


@dataclass
class ModelHold:
    key: str
    debit: str
    credit: str
    amount: int
    expires_at: float  # time.time()
    resolved: bool = False


@dataclass
class Sent:
    request: Any
    outcome: TransferOutcome


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    pool: asyncpg.Pool
    ledger: Ledger
    log: list[str] = field(default_factory=list)


class LedgerMachine(RuleBasedStateMachine):
    world: World

    def __init__(self) -> None:
        super().__init__()
        self.prefix = uuid.uuid4().hex[:8]
        self.accounts: dict[str, ModelAccount] = {}
        self.holds: list[ModelHold] = []
        self.sent: list[Sent] = []
        self.counter = 0

    # ----- helpers ------------------------------------------------------

    def run(self, coroutine: Any) -> Any:
        return self.world.loop.run_until_complete(coroutine)

    def code(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def key(self) -> str:
        self.counter += 1
        return f"{self.prefix}-{self.counter}"

    def expect_transfer(
        self,
        debit: str,
        credit: str,
        amount: int,
        currency: Currency,
        pending: bool,
        balances: dict[str, ModelAccount],
    ) -> Rejection | None:
        d, c = balances.get(debit), balances.get(credit)
        if d is None or c is None:
            return Rejection.UNKNOWN_ACCOUNT
        if d.currency != currency or c.currency != currency:
            return Rejection.CURRENCY_MISMATCH
        if d.closed or c.closed:
            return Rejection.ACCOUNT_CLOSED
        if d.constrained and d.dp + d.dpend + amount > d.cp:
            return Rejection.INSUFFICIENT_FUNDS
        if c.credit_limited and c.cp + c.cpend + amount > c.dp:
            return Rejection.CREDITS_EXCEED_DEBITS
        if pending:
            d.dpend += amount
            c.cpend += amount
        else:
            d.dp += amount
            c.cp += amount
        return None

    # ----- rules --------------------------------------------------------

    @initialize(funds=st.integers(1, 2_000))
    def a_funded_wallet(self, funds: int) -> None:
        """Every run starts with money where the rules bite: a constrained
        account ("a", a wallet) funded from an unconstrained one ("sys")."""
        self.open_account("a", Currency.USD, constrained=True)
        self.open_account("sys", Currency.USD, constrained=False)
        self.transfer("sys", "a", funds, Currency.USD, None)
        self.open_account("owed", Currency.USD, constrained=False, credit_limited=True)
        self.transfer("owed", "sys", funds, Currency.USD, None)

    @rule(
        name=st.sampled_from(NAMES[:4]),
        currency=st.sampled_from([Currency.USD, Currency.EUR]),
        constrained=st.booleans(),
    )
    def open_account(
        self, name: str, currency: Currency, constrained: bool, credit_limited: bool = False
    ) -> None:
        spec = AccountSpec(
            code=self.code(name),
            currency=currency,
            kind="test",
            debits_must_not_exceed_credits=constrained,
            credits_must_not_exceed_debits=credit_limited,
            balance_slots=1 if constrained or credit_limited else 4,
        )
        existing = self.accounts.get(name)
        if existing is None:
            self.run(self.world.ledger.open_account(spec))
            self.accounts[name] = ModelAccount(currency, constrained, credit_limited)
        elif (existing.currency, existing.constrained, existing.credit_limited) == (
            currency,
            constrained,
            credit_limited,
        ):
            assert self.run(self.world.ledger.open_account(spec)).code == spec.code
        else:
            with pytest.raises(Exception, match="other attributes"):
                self.run(self.world.ledger.open_account(spec))

    @rule(
        debit=st.sampled_from(NAMES),
        credit=st.sampled_from(NAMES),
        amount=st.integers(1, 500),
        currency=st.sampled_from([Currency.USD, Currency.EUR]),
        hold=st.sampled_from([None, "short", "long"]),
    )
    def transfer(
        self, debit: str, credit: str, amount: int, currency: Currency, hold: str | None
    ) -> None:
        if debit == credit:
            return
        common = dict(
            key=self.key(),
            debit=self.code(debit),
            credit=self.code(credit),
            amount_minor=amount,
            currency=currency,
        )
        if hold is None:
            request: TransferRequest = TransferRequest.model_validate(common)
        else:
            seconds = SHORT_HOLD_SECONDS if hold == "short" else LONG_HOLD_SECONDS
            request = HoldRequest.model_validate(
                {**common, "expires_at": datetime.now(UTC) + timedelta(seconds=seconds)}
            )
        expected = self.expect_transfer(
            debit, credit, amount, currency, hold is not None, self.accounts
        )
        outcome = self.run(self.world.ledger.transfer(request))
        assert outcome.rejection == expected, (outcome, expected)
        self.sent.append(Sent(request, outcome))
        if isinstance(request, HoldRequest) and expected is None:
            self.holds.append(
                ModelHold(request.key, debit, credit, amount, request.expires_at.timestamp())
            )

    @precondition(lambda self: any(a.constrained and not a.closed for a in self.accounts.values()))
    @rule(data=st.data(), delta=st.sampled_from([-1, 0, 1]), hold=st.booleans())
    def spend_to_the_edge(self, data: st.DataObject, delta: int, hold: bool) -> None:
        """Spend exactly the available balance (net of what is held), one
        less or one more: the boundary."""
        name = data.draw(
            st.sampled_from(
                sorted(n for n, a in self.accounts.items() if a.constrained and not a.closed)
            )
        )
        account = self.accounts[name]
        others = sorted(
            n
            for n, a in self.accounts.items()
            if n != name and a.currency == account.currency and not a.closed
        )
        if not others:
            return
        available = account.cp - account.dp - account.dpend
        amount = available + delta
        if amount <= 0:
            return
        self.transfer(
            name,
            data.draw(st.sampled_from(others)),
            amount,
            account.currency,
            "long" if hold else None,
        )

    @precondition(lambda self: "owed" in self.accounts and not self.accounts["owed"].closed)
    @rule(delta=st.sampled_from([-1, 0, 1]), hold=st.booleans())
    def repay_to_the_edge(self, delta: int, hold: bool) -> None:
        """Repay exactly what is owed (net of repayments held), one less or
        one more: the credit limit's boundary."""
        owed = self.accounts["owed"]
        amount = owed.dp - owed.cp - owed.cpend + delta
        if amount <= 0 or self.accounts["sys"].closed:
            return
        self.transfer("sys", "owed", amount, owed.currency, "long" if hold else None)

    @precondition(
        lambda self: any(
            a.constrained and not a.closed and a.cp - a.dp - a.dpend > 0
            for a in self.accounts.values()
        )
    )
    @rule(data=st.data(), share=st.sampled_from([2, 3, 1]))
    def hold_part_of_a_wallet(self, data: st.DataObject, share: int) -> None:
        """Hold a share of what a constrained account can spend, so what
        follows spends against pending debits."""
        name = data.draw(
            st.sampled_from(
                sorted(
                    n
                    for n, a in self.accounts.items()
                    if a.constrained and not a.closed and a.cp - a.dp - a.dpend > 0
                )
            )
        )
        account = self.accounts[name]
        others = sorted(
            n
            for n, a in self.accounts.items()
            if n != name and a.currency == account.currency and not a.closed
        )
        if not others:
            return
        amount = max(1, (account.cp - account.dp - account.dpend) // share)
        self.transfer(name, data.draw(st.sampled_from(others)), amount, account.currency, "long")

    @rule(
        items=st.lists(
            st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES), st.integers(1, 300)),
            min_size=2,
            max_size=5,
        ),
        atomic=st.booleans(),
    )
    def batch(self, items: list[tuple[str, str, int]], atomic: bool) -> None:
        items = [(d, c, a) for d, c, a in items if d != c]
        if not items:
            return
        requests = [
            TransferRequest(
                key=self.key(),
                debit=self.code(d),
                credit=self.code(c),
                amount_minor=a,
                currency=Currency.USD,
            )
            for d, c, a in items
        ]
        trial = {name: ModelAccount(**vars(account)) for name, account in self.accounts.items()}
        expected = [self.expect_transfer(d, c, a, Currency.USD, False, trial) for d, c, a in items]
        outcomes = self.run(self.world.ledger.submit(requests, atomic=atomic))
        first_failure = next((e for e in expected if e is not None), None)
        if atomic and first_failure is not None:
            assert all(o.rejection == first_failure for o in outcomes), (outcomes, expected)
        else:
            assert [o.rejection for o in outcomes] == expected
            self.accounts = trial
        self.sent += [Sent(r, o) for r, o in zip(requests, outcomes, strict=True)]

    @precondition(lambda self: self.holds)
    @rule(
        data=st.data(),
        action=st.sampled_from(["post", "void", "expire"]),
        fraction=st.sampled_from([None, 1, 2, 3]),
    )
    def resolve_hold(self, data: st.DataObject, action: str, fraction: int | None) -> None:
        hold = data.draw(st.sampled_from(self.holds))
        short = hold.expires_at - time.time() < LONG_HOLD_SECONDS / 2
        if short and action in ("post", "expire"):
            # Act clearly after expiry, so the model and the database agree.
            time.sleep(max(0.0, hold.expires_at - time.time()) + 0.05)
        amount = None
        if action == "post" and fraction is not None:
            amount = max(1, hold.amount // fraction)
        request = HoldResolution(
            key=self.key(),
            hold_key=hold.key,
            action=action,  # type: ignore[arg-type]
            amount_minor=amount,
        )
        if hold.resolved:
            expected: Rejection | None = Rejection.HOLD_ALREADY_RESOLVED
        elif action == "post" and short:
            expected = Rejection.HOLD_EXPIRED
        elif action == "expire" and not short:
            expected = Rejection.HOLD_NOT_EXPIRED
        else:
            expected = None
        outcome = self.run(self.world.ledger.resolve_hold(request))
        assert outcome.rejection == expected, (outcome, expected)
        self.sent.append(Sent(request, outcome))
        if expected is None:
            hold.resolved = True
            d, c = self.accounts[hold.debit], self.accounts[hold.credit]
            d.dpend -= hold.amount
            c.cpend -= hold.amount
            if action == "post":
                posted = amount or hold.amount
                d.dp += posted
                c.cp += posted

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def retry_same_key(self, data: st.DataObject) -> None:
        sent = data.draw(st.sampled_from(self.sent))
        if isinstance(sent.request, HoldResolution):
            again = self.run(self.world.ledger.resolve_hold(sent.request))
        else:
            again = self.run(self.world.ledger.transfer(sent.request))
        assert again.replayed
        assert (again.transfer_id, again.rejection) == (
            sent.outcome.transfer_id,
            sent.outcome.rejection,
        )

    @precondition(lambda self: any(not isinstance(s.request, HoldResolution) for s in self.sent))
    @rule(data=st.data())
    def reuse_key_with_another_payload(self, data: st.DataObject) -> None:
        sent = data.draw(
            st.sampled_from([s for s in self.sent if not isinstance(s.request, HoldResolution)])
        )
        changed = sent.request.model_copy(update={"amount_minor": sent.request.amount_minor + 1})
        with pytest.raises(IdempotencyConflict, match=sent.request.key):
            self.run(self.world.ledger.transfer(changed))

    @precondition(lambda self: self.accounts)
    @rule(data=st.data())
    def close_account(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.accounts)))
        account = self.accounts[name]
        empty = account.dp == account.cp and account.dpend == 0 and account.cpend == 0
        if account.closed:
            assert self.run(self.world.ledger.close_account(self.code(name))) is False
        elif empty:
            assert self.run(self.world.ledger.close_account(self.code(name))) is True
            account.closed = True
        else:
            with pytest.raises(AccountNotEmpty):
                self.run(self.world.ledger.close_account(self.code(name)))

    # ----- invariants ---------------------------------------------------

    @invariant()
    def database_agrees_with_model(self) -> None:
        for name, model in self.accounts.items():
            balance = self.run(self.world.ledger.balance(self.code(name)))
            assert (
                balance.debits_posted,
                balance.credits_posted,
                balance.debits_pending,
                balance.credits_pending,
            ) == (model.dp, model.cp, model.dpend, model.cpend), name

    @invariant()
    def verifier_passes(self) -> None:
        assert self.run(verify(self.world.pool)) == []


# The CI profile runs on every `make test`; `deep` (HYPOTHESIS_PROFILE=deep,
# `make deep-model`) runs far more and longer sequences.
settings.register_profile(
    "ci",
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "deep",
    max_examples=1_500,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
MODEL_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")


def test_ledger_matches_its_model_under_random_operations(database_url: str) -> None:
    with own_event_loop() as loop:
        pool = loop.run_until_complete(asyncpg.create_pool(database_url, min_size=1, max_size=2))
        LedgerMachine.world = World(loop, pool, Ledger(pool))
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings.get_profile(MODEL_PROFILE),
        )
        loop.run_until_complete(pool.close())
