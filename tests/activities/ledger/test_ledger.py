"""The ledger's rules, each enforced by the database transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from pydantic import ValidationError

from activities.ledger import (
    AccountConflict,
    AccountNotEmpty,
    IdempotencyConflict,
    InvalidLedgerRequest,
    Ledger,
)
from activities.ledger.verify import verify
from schemas.ledger import AccountSpec, HoldResolution, Rejection, TransferBatch
from schemas.money import Currency
from tests import polling
from tests.activities.ledger.helpers import (
    BANK,
    SETTLEMENT,
    hold,
    key,
    move,
    open_basics,
    resolve,
    wallet_spec,
)

# A hold short enough to wait out, long enough to be placed before it expires.
SHORT_HOLD_SECONDS = 1.0
CLOCK_WAIT_SECONDS_MAX = 30


async def database_now(ledger: Ledger) -> datetime:
    now: datetime = await ledger._pool.fetchval("SELECT clock_timestamp()")
    return now


async def database_clock_passes(ledger: Ledger, instant: datetime) -> None:
    """Returns once the database's clock (the one the ledger judges expiry
    by) is past `instant`."""
    await polling.until(
        lambda: database_now(ledger),
        lambda now: now > instant,
        f"the database's clock passed {instant}",
        CLOCK_WAIT_SECONDS_MAX,
    )


async def test_opening_is_idempotent_and_a_different_spec_conflicts(ledger: Ledger) -> None:
    first = await ledger.open_account(wallet_spec("w:a"))
    again = await ledger.open_account(wallet_spec("w:a"))
    assert first.id == again.id
    with pytest.raises(AccountConflict, match="w:a"):
        await ledger.open_account(wallet_spec("w:a", Currency.EUR))
    with pytest.raises(ValidationError, match="balance_slots must be 1"):
        AccountSpec(
            code="x",
            currency=Currency.USD,
            kind="wallet",
            debits_must_not_exceed_credits=True,
            balance_slots=4,
        )


async def test_a_wallet_cannot_go_below_zero_and_the_rejection_is_final(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a", "w:b")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    spend = move("w:a", "w:b", 1_500, k="spend-1")
    refused = await ledger.transfer(spend)
    assert refused.rejection is Rejection.INSUFFICIENT_FUNDS and refused.transfer_id is None
    assert "1000 available, 1500 requested" in refused.detail
    # Money arrives; the same key still returns the first outcome.
    await ledger.transfer(move(BANK, "w:a", 5_000))
    again = await ledger.transfer(spend)
    assert again.replayed and again.rejection is Rejection.INSUFFICIENT_FUNDS
    assert again.created_at == refused.created_at
    assert (await ledger.balance("w:a")).available == 6_000


async def test_a_hold_takes_from_what_the_wallet_can_spend_until_it_is_voided(
    ledger: Ledger, ledger_pool: asyncpg.Pool
) -> None:
    await open_basics(ledger, "w:a", "w:b")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    held = await ledger.transfer(hold("w:a", SETTLEMENT, 700))
    assert held.accepted
    # 300 is left to spend: neither a transfer nor another hold may take 301.
    over = await ledger.transfer(move("w:a", "w:b", 301))
    assert over.rejection is Rejection.INSUFFICIENT_FUNDS
    assert "300 available, 301 requested" in over.detail
    assert (await ledger.transfer(hold("w:a", SETTLEMENT, 301))).rejection is (
        Rejection.INSUFFICIENT_FUNDS
    )
    assert (await ledger.transfer(move("w:a", "w:b", 300))).accepted
    balance = await ledger.balance("w:a")
    assert (balance.posted, balance.debits_pending, balance.available) == (700, 700, 0)
    # Voided, the hold gives its 700 back to spend.
    voided = await ledger.resolve_hold(
        HoldResolution(key=key("void"), hold_key=held.key, action="void")
    )
    assert voided.accepted
    assert (await ledger.transfer(move("w:a", "w:b", 700))).accepted
    assert (await ledger.balance("w:a")).available == 0
    assert await verify(ledger_pool) == []


async def test_same_key_same_payload_returns_the_first_transfer(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    request = move(BANK, "w:a", 700)
    first = await ledger.transfer(request)
    second = await ledger.transfer(request)
    assert second.replayed and second.transfer_id == first.transfer_id
    assert (await ledger.balance("w:a")).posted == 700


async def test_same_key_different_payload_is_an_error_naming_the_key(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 700, k="topup-42"))
    with pytest.raises(IdempotencyConflict, match="topup-42") as error:
        await ledger.transfer(move(BANK, "w:a", 701, k="topup-42"))
    assert error.value.key == "topup-42"


async def test_concurrent_calls_with_one_key_create_one_transfer(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    request = move(BANK, "w:a", 10)
    outcomes = await asyncio.gather(*(ledger.transfer(request) for _ in range(16)))
    assert len({o.transfer_id for o in outcomes}) == 1
    assert sum(not o.replayed for o in outcomes) == 1
    assert (await ledger.balance("w:a")).posted == 10


@pytest.mark.parametrize(
    ("debit", "credit", "currency", "rejection"),
    [
        ("nobody", "w:a", Currency.USD, Rejection.UNKNOWN_ACCOUNT),
        (BANK, "w:eur", Currency.USD, Rejection.CURRENCY_MISMATCH),
        (BANK, "w:a", Currency.EUR, Rejection.CURRENCY_MISMATCH),
        (BANK, "w:closed", Currency.USD, Rejection.ACCOUNT_CLOSED),
    ],
)
async def test_bad_transfers_are_rejected_with_a_typed_reason(
    ledger: Ledger, debit: str, credit: str, currency: Currency, rejection: Rejection
) -> None:
    await open_basics(ledger, "w:a", "w:closed")
    await ledger.open_account(wallet_spec("w:eur", Currency.EUR))
    assert await ledger.close_account("w:closed")
    outcome = await ledger.transfer(
        move(debit, credit, 5).model_copy(update={"currency": currency})
    )
    assert outcome.rejection is rejection
    assert await verify(ledger._pool) == []


def test_non_positive_and_float_amounts_never_reach_the_ledger() -> None:
    for amount in (0, -5, 1.5):
        with pytest.raises(ValidationError) as error:
            move(BANK, "w:a", amount)  # type: ignore[arg-type]
        assert error.value.errors()[0]["loc"] == ("amount_minor",)
    with pytest.raises(ValidationError, match="different accounts"):
        move("w:a", "w:a", 5)


async def test_the_database_refuses_a_non_positive_amount_even_without_pydantic(
    ledger: Ledger,
) -> None:
    await open_basics(ledger, "w:a")
    forged = move(BANK, "w:a", 5).model_construct(
        key=key(), debit=BANK, credit="w:a", amount_minor=0, currency=Currency.USD
    )
    outcome = await ledger.transfer(forged)
    assert outcome.rejection is Rejection.INVALID_AMOUNT


async def test_an_account_closes_only_at_zero_with_no_open_holds(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 100))
    with pytest.raises(AccountNotEmpty, match="balance of 100"):
        await ledger.close_account("w:a")
    pending = await ledger.transfer(hold("w:a", SETTLEMENT, 100))
    await ledger.transfer(move(BANK, "w:a", 0 + 1))
    with pytest.raises(AccountNotEmpty, match="open holds"):
        await ledger.close_account("w:a")
    await ledger.resolve_hold(resolve(pending.key, "post"))
    await ledger.transfer(move("w:a", BANK, 1))
    assert await ledger.close_account("w:a") is True
    assert await ledger.close_account("w:a") is False
    assert (await ledger.get_account("w:a")).status == "closed"


async def test_partial_post_releases_the_remainder(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    created = await ledger.transfer(hold("w:a", SETTLEMENT, 600))
    during = await ledger.balance("w:a")
    assert (during.available, during.debits_pending) == (400, 600)
    posted = await ledger.resolve_hold(resolve(created.key, "post", 450))
    assert posted.accepted and posted.amount_minor == 450
    after = await ledger.balance("w:a")
    assert (after.posted, after.available, after.debits_pending) == (550, 550, 0)
    assert (await ledger.balance(SETTLEMENT)).credits_posted == 450


async def test_partial_post_or_void_can_keep_the_rest_held_atomically(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    created = await ledger.transfer(hold("w:a", SETTLEMENT, 600))
    first = HoldResolution(
        key=key("clear"), hold_key=created.key, action="post", amount_minor=250, rest_key="rest-1"
    )
    posted = await ledger.resolve_hold(first)
    assert posted.accepted and posted.amount_minor == 250
    assert (await ledger.resolve_hold(first)).replayed  # a retry changes nothing
    after = await ledger.balance("w:a")
    assert (after.posted, after.debits_pending, after.available) == (750, 350, 400)
    # Part of the rest given back (a partial reversal); the remainder still held.
    voided = await ledger.resolve_hold(
        HoldResolution(
            key=key("rev"), hold_key="rest-1", action="void", amount_minor=100, rest_key="rest-2"
        )
    )
    assert voided.accepted and voided.amount_minor == 100
    after = await ledger.balance("w:a")
    assert (after.posted, after.debits_pending, after.available) == (750, 250, 500)
    too_much = await ledger.resolve_hold(
        HoldResolution(
            key=key("rev"), hold_key="rest-2", action="void", amount_minor=251, rest_key="rest-3"
        )
    )
    assert too_much.rejection is Rejection.INVALID_AMOUNT
    done = await ledger.resolve_hold(resolve("rest-2", "post"))
    assert done.accepted and done.amount_minor == 250
    final = await ledger.balance("w:a")
    assert (final.posted, final.debits_pending) == (500, 0)
    assert (await ledger.balance(SETTLEMENT)).credits_posted == 500
    assert await verify(ledger._pool) == []


def test_a_rest_key_needs_an_amount_and_post_or_void() -> None:
    with pytest.raises(ValidationError, match="rest_key"):
        HoldResolution(key="a", hold_key="h", action="expire", amount_minor=1, rest_key="r")
    with pytest.raises(ValidationError, match="rest_key"):
        HoldResolution(key="a", hold_key="h", action="post", rest_key="r")
    with pytest.raises(ValidationError, match="amount_minor is only"):
        HoldResolution(key="a", hold_key="h", action="void", amount_minor=1)


async def test_a_hold_is_resolved_once_never_both_never_twice(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    created = await ledger.transfer(hold("w:a", SETTLEMENT, 300))
    voided = await ledger.resolve_hold(resolve(created.key, "void"))
    assert voided.accepted
    for action in ("post", "void"):
        again = await ledger.resolve_hold(resolve(created.key, action))
        assert again.rejection is Rejection.HOLD_ALREADY_RESOLVED
    assert (await ledger.balance("w:a")).available == 1_000
    racing = await ledger.transfer(hold("w:a", SETTLEMENT, 300))
    results = await asyncio.gather(
        ledger.resolve_hold(resolve(racing.key, "post")),
        ledger.resolve_hold(resolve(racing.key, "void")),
    )
    assert sorted(r.accepted for r in results) == [False, True]
    assert await verify(ledger._pool) == []


async def test_a_hold_is_never_posted_after_expiry_and_expires_only_after(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 1_000))
    # A minute to run: not expired yet however slow this machine is.
    running = await ledger.transfer(hold("w:a", SETTLEMENT, 100))
    early = await ledger.resolve_hold(resolve(running.key, "expire"))
    assert early.rejection is Rejection.HOLD_NOT_EXPIRED
    short_request = hold("w:a", SETTLEMENT, 200, seconds=SHORT_HOLD_SECONDS)
    short = await ledger.transfer(short_request)
    assert short.accepted
    await database_clock_passes(ledger, short_request.expires_at)
    late = await ledger.resolve_hold(resolve(short.key, "post"))
    assert late.rejection is Rejection.HOLD_EXPIRED
    swept = await ledger.expire_due_holds()
    assert [(o.key, o.accepted) for o in swept] == [(f"expire:{short.key}", True)]
    assert (await ledger.balance("w:a")).available == 900
    past = hold("w:a", SETTLEMENT, 1).model_copy(
        update={"expires_at": datetime.now(UTC) - timedelta(seconds=1)}
    )
    assert (await ledger.transfer(past)).rejection is Rejection.INVALID_EXPIRY


async def test_an_atomic_batch_is_all_or_nothing_and_checks_in_order(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a", "w:b")
    # b is empty: b->a only works because a->b comes first.
    good = [move(BANK, "w:a", 100), move("w:a", "w:b", 100), move("w:b", "w:a", 40)]
    assert all(o.accepted for o in await ledger.submit(good))
    bad = [move(BANK, "w:a", 5), move("w:b", "w:a", 10_000), move(BANK, "w:b", 5)]
    outcomes = await ledger.submit(bad)
    assert all(o.rejection is Rejection.INSUFFICIENT_FUNDS for o in outcomes)
    assert "batch rejected at item 2" in outcomes[0].detail
    assert (await ledger.balance("w:a")).posted == 40
    assert (await ledger.balance("w:b")).posted == 60


async def test_an_independent_batch_rejects_items_alone(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a", "w:b")
    outcomes = await ledger.submit(
        [move(BANK, "w:a", 100), move("w:b", "w:a", 10), move("w:a", "w:b", 30)], atomic=False
    )
    assert [o.rejection for o in outcomes] == [None, Rejection.INSUFFICIENT_FUNDS, None]
    assert (await ledger.balance("w:a")).posted == 70


async def test_batches_hold_up_to_8000_transfers(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a", "w:b")
    outcomes = await ledger.submit([move(BANK, "w:a" if i % 2 else "w:b", 1) for i in range(8_000)])
    assert len(outcomes) == 8_000 and all(o.accepted for o in outcomes)
    assert (await ledger.balance(BANK)).debits_posted == 8_000
    with pytest.raises(ValidationError):
        TransferBatch(items=[move(BANK, "w:a", 1) for _ in range(8_001)])
    with pytest.raises(InvalidLedgerRequest, match="1 to 8000"):
        await ledger.submit([move(BANK, "w:a", 1) for _ in range(8_001)])
    repeated = move(BANK, "w:a", 1)
    with pytest.raises(InvalidLedgerRequest, match="appears twice"):
        await ledger.submit([repeated, repeated])


async def test_balance_as_of_an_instant_and_paged_history(ledger: Ledger) -> None:
    await open_basics(ledger, "w:a")
    first = await ledger.transfer(move(BANK, "w:a", 100))
    pending = await ledger.transfer(hold("w:a", SETTLEMENT, 30))
    # The instant between, by the clock that dates the ledger's transfers.
    middle = await database_now(ledger)
    await ledger.resolve_hold(resolve(pending.key, "post", 20))
    await ledger.transfer(move(BANK, "w:a", 5))
    then = await ledger.balance("w:a", as_of=middle)
    assert (then.posted, then.debits_pending) == (100, 30)
    before = await ledger.balance("w:a", as_of=first.created_at - timedelta(microseconds=1))
    assert (before.posted, before.debits_pending) == (0, 0)
    now = await ledger.balance("w:a", as_of=datetime.now(UTC))
    assert now == (await ledger.balance("w:a")).model_copy(update={"as_of": now.as_of})
    seen: list[int] = []
    cursor = None
    while True:
        page = await ledger.history("w:a", after=cursor, limit=2)
        seen += [entry.transfer_id for entry in page.entries]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == 4 and seen == sorted(seen)


async def test_transfers_are_immutable(ledger: Ledger, ledger_pool: asyncpg.Pool) -> None:
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 100))
    for statement in (
        "UPDATE ledger_transfers SET amount_minor = 1",
        "DELETE FROM ledger_transfers",
        "TRUNCATE ledger_transfers CASCADE",
    ):
        with pytest.raises(asyncpg.PostgresError, match="immutable"):
            await ledger_pool.execute(statement)
