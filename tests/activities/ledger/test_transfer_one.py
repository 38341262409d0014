"""A lone transfer or hold goes through ledger_transfer_one, which decides
exactly as ledger_submit does for a batch of one. The same sequences of
requests are sent through each, on twin sets of accounts, and every outcome,
error, recorded row and balance of one twin matches the other's."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activities.ledger import IdempotencyConflict, Ledger, LedgerError, UnrepresentableValue
from activities.ledger.coalesce import TransferCoalescer
from activities.ledger.errors import translate
from activities.ledger.store import NOT_A_HOLD, outcome_of, transfer_hash
from activities.ledger.verify import verify
from schemas.ledger import AccountSpec, HoldRequest, Rejection, TransferOutcome, TransferRequest
from schemas.money import Currency
from tests.activities.ledger.helpers import (
    BANK,
    SETTLEMENT,
    hold,
    move,
    open_basics,
    own_event_loop,
)

# The largest total a balance column holds (a bigint).
TOTAL_MAX = 2**63 - 1
# What the overflow accounts' nearly full side can still take: "full" in
# debits, "sink" in credits.
OVERFLOW_ROOM_MINOR = 40
WALLET_FUNDS_MINOR = 1_000
OWED_MINOR = 500
HOLD_SECONDS = 3_600

# Each twin's accounts; "ghost" is never opened and "shut" is closed.
ACCOUNTS: dict[str, AccountSpec] = {
    "a": AccountSpec(
        code="a", currency=Currency.USD, kind="wallet", debits_must_not_exceed_credits=True
    ),
    "b": AccountSpec(
        code="b", currency=Currency.USD, kind="wallet", debits_must_not_exceed_credits=True
    ),
    # Striped: which row a call writes depends on its database session.
    "sys": AccountSpec(code="sys", currency=Currency.USD, kind="system", balance_slots=4),
    "owed": AccountSpec(
        code="owed", currency=Currency.USD, kind="debt", credits_must_not_exceed_debits=True
    ),
    "eur": AccountSpec(code="eur", currency=Currency.EUR, kind="system"),
    "eur_w": AccountSpec(
        code="eur_w", currency=Currency.EUR, kind="wallet", debits_must_not_exceed_credits=True
    ),
    "shut": AccountSpec(code="shut", currency=Currency.USD, kind="system"),
    "full": AccountSpec(code="full", currency=Currency.USD, kind="system"),
    "sink": AccountSpec(code="sink", currency=Currency.USD, kind="system"),
}
NAMES = (*ACCOUNTS, "ghost")


@dataclass(frozen=True)
class Step:
    """One request, sent alike to both twins. An edge transfer or hold is for
    exactly what the pair can take (the tighter of the debit's and the
    credit's room) plus `delta`. A replay sends an earlier request again; a
    reuse sends its key with another amount."""

    action: str
    debit: str = "a"
    credit: str = "b"
    amount_minor: int = 1
    currency: Currency = Currency.USD
    atomic: bool = True
    # Which earlier new request a replay or reuse takes (modulo their count).
    earlier: int = 0
    delta: int = 0


@dataclass
class Twin:
    """One set of accounts and the path its single requests take."""

    prefix: str
    sent: list[TransferRequest] = field(default_factory=list)
    # Each key's first outcome, which a replay must return again.
    firsts: dict[str, TransferOutcome] = field(default_factory=dict)

    def code(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def plain(self, text: str) -> str:
        """`text` with this twin's account codes and keys made the twins' common form."""
        return text.replace(self.prefix, "<twin>")


Observed = tuple[object, ...]


# What a transfer from $1 to $2 can move at most: the debit's room (what a
# wallet can spend, or what its debits can take before they overflow) and
# the credit's, on the rows this session writes.
_ROOM = """
SELECT least(
    (SELECT CASE WHEN a.debits_must_not_exceed_credits
                 THEN b.credits_posted - b.debits_posted - b.debits_pending
                 ELSE $3 - b.debits_posted - b.debits_pending END
     FROM ledger_accounts a JOIN ledger_balances b
       ON b.account_id = a.id AND b.slot = pg_backend_pid() % a.balance_slots
     WHERE a.code = $1),
    (SELECT CASE WHEN a.credits_must_not_exceed_debits
                 THEN b.debits_posted - b.credits_posted - b.credits_pending
                 ELSE $3 - b.credits_posted - b.credits_pending END
     FROM ledger_accounts a JOIN ledger_balances b
       ON b.account_id = a.id AND b.slot = pg_backend_pid() % a.balance_slots
     WHERE a.code = $2))
"""


async def request_for(pool: asyncpg.Pool, twin: Twin, step: Step, now: datetime) -> TransferRequest:
    """The step's request for one twin: unvalidated, so the database's own
    checks (amounts, same account) are what refuse it."""
    if step.action in ("replay", "reuse"):
        earlier = twin.sent[step.earlier % len(twin.sent)]
        if step.action == "replay":
            return earlier
        return earlier.model_copy(update={"amount_minor": earlier.amount_minor + 1})
    amount = step.amount_minor
    if step.action in ("edge", "edge_hold"):
        room = await pool.fetchval(_ROOM, twin.code(step.debit), twin.code(step.credit), TOTAL_MAX)
        amount = step.amount_minor if room is None else room + step.delta
    common: dict[str, Any] = dict(
        key=f"{twin.prefix}-{len(twin.sent)}",
        debit=twin.code(step.debit),
        credit=twin.code(step.credit),
        amount_minor=amount,
        currency=step.currency,
    )
    request: TransferRequest
    if step.action in ("transfer", "edge"):
        request = TransferRequest.model_construct(**common)
    else:
        seconds = -HOLD_SECONDS if step.action == "expired_hold" else HOLD_SECONDS
        request = HoldRequest.model_construct(**common, expires_at=now + timedelta(seconds=seconds))
    twin.sent.append(request)
    return request


async def through_transfer_one(
    ledger: Ledger, request: TransferRequest, atomic: bool
) -> TransferOutcome:
    [outcome] = await ledger.submit([request], atomic=atomic)
    return outcome


async def through_submit(
    pool: asyncpg.Pool, request: TransferRequest, atomic: bool
) -> TransferOutcome:
    """ledger_submit with a batch of one, its errors typed as the ledger types them."""
    is_hold = isinstance(request, HoldRequest)
    try:
        [row] = await pool.fetch(
            "SELECT * FROM ledger_submit($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            atomic,
            [request.key],
            [transfer_hash(request)],
            [is_hold],
            [request.debit],
            [request.credit],
            [request.amount_minor],
            [request.currency.value],
            [request.expires_at if isinstance(request, HoldRequest) else NOT_A_HOLD],
        )
    except asyncpg.PostgresError as error:
        typed = translate(error)
        if typed is None:
            raise
        raise typed from None
    return outcome_of(request.key, request.amount_minor, row)


def observe(
    twin: Twin, request: TransferRequest, result: TransferOutcome | LedgerError
) -> Observed:
    """What both twins must agree on, with this twin's codes and keys made common."""
    if isinstance(result, UnrepresentableValue):
        # The driver's message quotes the argument, a scalar or an array.
        return ("error", type(result).__name__)
    if isinstance(result, LedgerError):
        return ("error", type(result).__name__, twin.plain(str(result)))
    if result.replayed:
        first = twin.firsts[request.key]
        # A replay returns the first outcome itself: its transfer, or its
        # rejection with the detail and instant it was recorded with.
        assert (result.transfer_id, result.rejection, result.detail, result.created_at) == (
            first.transfer_id,
            first.rejection,
            first.detail,
            first.created_at,
        ), (result, first)
    elif result.rejection is not Rejection.IDEMPOTENCY_CONFLICT:
        twin.firsts[request.key] = result
    return (
        "accepted" if result.transfer_id is not None else "rejected",
        result.rejection,
        twin.plain(result.detail),
        result.replayed,
    )


async def send(
    ledger: Ledger,
    pool: asyncpg.Pool,
    twin: Twin,
    request: TransferRequest,
    atomic: bool,
    one: bool,
) -> Observed:
    result: TransferOutcome | LedgerError
    try:
        if one:
            result = await through_transfer_one(ledger, request, atomic)
        else:
            result = await through_submit(pool, request, atomic)
    except LedgerError as error:
        result = error
    return observe(twin, request, result)


async def open_twin(ledger: Ledger, twin: Twin) -> None:
    """The twin's accounts, funded through a batch (ledger_submit) alike for both."""
    for spec in ACCOUNTS.values():
        await ledger.open_account(spec.model_copy(update={"code": twin.code(spec.code)}))
    assert await ledger.close_account(twin.code("shut"))

    def funding(debit: str, credit: str, amount: int, currency: Currency) -> TransferRequest:
        return TransferRequest.model_construct(
            key=f"{twin.prefix}-fund-{credit}",
            debit=twin.code(debit),
            credit=twin.code(credit),
            amount_minor=amount,
            currency=currency,
        )

    outcomes = await ledger.submit(
        [
            funding("sys", "a", WALLET_FUNDS_MINOR, Currency.USD),
            funding("sys", "b", WALLET_FUNDS_MINOR, Currency.USD),
            funding("eur", "eur_w", WALLET_FUNDS_MINOR, Currency.EUR),
            funding("owed", "sys", OWED_MINOR, Currency.USD),
            funding("full", "sink", TOTAL_MAX - OVERFLOW_ROOM_MINOR, Currency.USD),
        ]
    )
    assert all(outcome.accepted for outcome in outcomes), outcomes


async def recorded(pool: asyncpg.Pool, twin: Twin) -> tuple[object, ...]:
    """The twin's balance rows, transfers and rejections, in the common form."""
    pattern = f"{twin.prefix}%"
    balances = await pool.fetch(
        """
        SELECT a.code, b.slot, b.debits_posted, b.credits_posted, b.debits_pending,
               b.credits_pending, b.closed
        FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id
        WHERE a.code LIKE $1 ORDER BY a.code, b.slot
        """,
        pattern,
    )
    transfers = await pool.fetch(
        """
        SELECT t.idempotency_key, t.kind, d.code AS debit, t.debit_slot, c.code AS credit,
               t.credit_slot, t.amount_minor, t.currency, t.expires_at
        FROM ledger_transfers t
        JOIN ledger_accounts d ON d.id = t.debit_account_id
        JOIN ledger_accounts c ON c.id = t.credit_account_id
        WHERE t.idempotency_key LIKE $1 ORDER BY t.id
        """,
        pattern,
    )
    rejections = await pool.fetch(
        "SELECT idempotency_key, code, detail FROM ledger_rejections"
        " WHERE idempotency_key LIKE $1 ORDER BY created_at",
        pattern,
    )
    return tuple(
        tuple(twin.plain(value) if isinstance(value, str) else value for value in row.values())
        for row in (*balances, *transfers, *rejections)
    )


async def run_twins(pool: asyncpg.Pool, steps: list[Step]) -> list[Observed]:
    """Send each step through ledger_transfer_one on one twin and through
    ledger_submit on the other; assert they agree, and return what was seen.

    `pool` holds a single connection, so both twins write the same slot of a
    striped account and even its rows must match."""
    ledger = Ledger(pool)
    run = uuid.uuid4().hex[:10]
    one, batch = Twin(f"t{run}one"), Twin(f"t{run}bat")
    for twin in (one, batch):
        await open_twin(ledger, twin)
    seen: list[Observed] = []
    for number, step in enumerate(steps):
        if step.action in ("replay", "reuse") and not one.sent:
            continue
        now = datetime.now(UTC)
        for_one = await request_for(pool, one, step, now)
        for_batch = await request_for(pool, batch, step, now)
        by_one = await send(ledger, pool, one, for_one, step.atomic, True)
        by_batch = await send(ledger, pool, batch, for_batch, step.atomic, False)
        assert by_one == by_batch, (number, step)
        seen.append(by_one)
    assert await recorded(pool, one) == await recorded(pool, batch)
    return seen


async def single_connection_pool(database_url: str) -> asyncpg.Pool:
    return await asyncpg.create_pool(database_url, min_size=1, max_size=1)


async def test_each_rule_decides_alike_through_both_functions(database_url: str) -> None:
    steps = [
        Step("transfer", "a", "b", 100),  # sent[0]: accepted
        Step("hold", "a", "sys", 200),  # sent[1]: a hold, accepted
        Step("transfer", "a", "b", 701),  # sent[2]: 700 available
        Step("transfer", "a", "ghost", 5),
        Step("transfer", "ghost", "a", 5),
        Step("transfer", "a", "a", 5),
        Step("transfer", "a", "eur", 5),
        Step("transfer", "sys", "shut", 5),
        Step("expired_hold", "a", "sys", 5),
        Step("transfer", "full", "sys", OVERFLOW_ROOM_MINOR + 1),
        Step("transfer", "sys", "sink", OVERFLOW_ROOM_MINOR + 1),
        Step("transfer", "sys", "owed", OWED_MINOR + 1),
        Step("transfer", "a", "b", 0),
        Step("transfer", "a", "b", TOTAL_MAX),
        Step("replay", earlier=0),
        Step("replay", earlier=2, atomic=False),
        Step("reuse", earlier=0),
        Step("reuse", earlier=2, atomic=False),
        Step("transfer", "full", "sys", OVERFLOW_ROOM_MINOR),
        Step("transfer", "a", "b", 700),
    ]
    pool = await single_connection_pool(database_url)
    try:
        seen = await run_twins(pool, steps)
        assert await verify(pool) == []
    finally:
        await pool.close()
    overflow = Rejection.BALANCE_OVERFLOW
    expected = [
        ("accepted", None, False),
        ("accepted", None, False),
        ("rejected", Rejection.INSUFFICIENT_FUNDS, False),
        ("rejected", Rejection.UNKNOWN_ACCOUNT, False),
        ("rejected", Rejection.UNKNOWN_ACCOUNT, False),
        ("rejected", Rejection.SAME_ACCOUNT, False),
        ("rejected", Rejection.CURRENCY_MISMATCH, False),
        ("rejected", Rejection.ACCOUNT_CLOSED, False),
        ("rejected", Rejection.INVALID_EXPIRY, False),
        ("rejected", overflow, False),
        ("rejected", overflow, False),
        ("rejected", Rejection.CREDITS_EXCEED_DEBITS, False),
        ("rejected", Rejection.INVALID_AMOUNT, False),
        ("rejected", Rejection.INSUFFICIENT_FUNDS, False),
        ("accepted", None, True),
        ("rejected", Rejection.INSUFFICIENT_FUNDS, True),
        "error",
        ("rejected", Rejection.IDEMPOTENCY_CONFLICT, False),
        ("accepted", None, False),
        ("accepted", None, False),
    ]
    assert [o[0] if o[0] == "error" else (o[0], o[1], o[3]) for o in seen] == expected
    assert "700 available, 701 requested" in str(seen[2][2])
    assert "in debits" in str(seen[9][2]) and "in credits" in str(seen[10][2])
    assert seen[16][1] == IdempotencyConflict.__name__
    assert seen[16][2] == 'idempotency key "<twin>-0" was already used with a different payload'


# Most steps pair two open USD accounts, so they get as far as the balance
# checks; the rest pair any two names. Repeated entries weigh the draw.
USD_OPEN = ("a", "b", "sys", "owed", "full", "sink")
PAIRS = st.one_of(
    st.tuples(st.sampled_from(USD_OPEN), st.sampled_from(USD_OPEN)).filter(
        lambda pair: pair[0] != pair[1]
    ),
    st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES)),
)
ACTION_DRAWS = (
    "transfer",
    "transfer",
    "hold",
    "expired_hold",
    "edge",
    "edge_hold",
    "replay",
    "reuse",
)
AMOUNTS = st.one_of(
    st.integers(1, 600),
    st.integers(1, 600),
    st.sampled_from(
        [0, -1, OVERFLOW_ROOM_MINOR, OVERFLOW_ROOM_MINOR + 1, 2**62, TOTAL_MAX - 1, TOTAL_MAX]
    ),
)
STEPS = st.builds(
    lambda action, pair, **rest: Step(action, *pair, **rest),
    action=st.sampled_from(ACTION_DRAWS),
    pair=PAIRS,
    amount_minor=AMOUNTS,
    currency=st.sampled_from([Currency.USD, Currency.USD, Currency.USD, Currency.EUR]),
    atomic=st.booleans(),
    earlier=st.integers(0, 1_000),
    delta=st.sampled_from([0, -1, 1]),
)


def test_random_single_requests_decide_alike_through_both_functions(database_url: str) -> None:
    with own_event_loop() as loop:
        pool = loop.run_until_complete(single_connection_pool(database_url))

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(steps=st.lists(STEPS, min_size=10, max_size=40))
        def twins_agree(steps: list[Step]) -> None:
            loop.run_until_complete(run_twins(pool, steps))

        try:
            twins_agree()
            assert loop.run_until_complete(verify(pool)) == []
        finally:
            loop.run_until_complete(pool.close())


async def test_a_lone_request_never_calls_ledger_submit(ledger_pool: asyncpg.Pool) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a", "w:b")
    # With ledger_submit out of reach, only batches of two or more fail.
    await ledger_pool.execute(
        "ALTER FUNCTION ledger_submit(boolean, text[], bytea[], boolean[], text[], text[],"
        " bigint[], text[], timestamptz[]) RENAME TO ledger_submit_set_aside"
    )
    assert (await ledger.transfer(move(BANK, "w:a", 1_000))).accepted
    hold_request = hold("w:a", SETTLEMENT, 300)
    held = await ledger.transfer(hold_request)
    assert held.accepted and held.amount_minor == 300
    lone = await TransferCoalescer(ledger).transfer(move("w:a", "w:b", 200))
    assert lone.accepted
    [independent] = await ledger.submit([move("w:b", "w:a", 50)], atomic=False)
    assert independent.accepted
    again = await ledger.transfer(hold_request)
    assert again.replayed and again.transfer_id == held.transfer_id
    with pytest.raises(IdempotencyConflict, match=held.key):
        await ledger.transfer(move(BANK, "w:a", 1, k=held.key))
    balance = await ledger.balance("w:a")
    assert (balance.posted, balance.debits_pending, balance.available) == (850, 300, 550)
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await ledger.submit([move(BANK, "w:a", 1), move(BANK, "w:b", 1)])
