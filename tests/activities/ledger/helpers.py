"""Small builders shared by the ledger tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from activities.ledger import Ledger
from schemas.ledger import AccountSpec, HoldRequest, HoldResolution, TransferRequest
from schemas.money import Currency

BANK = "bank:inbound:USD"
SETTLEMENT = "issuer:settlement:USD"


def key(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wallet_spec(code: str, currency: Currency = Currency.USD) -> AccountSpec:
    return AccountSpec(
        code=code,
        currency=currency,
        kind="wallet",
        owner_id=code,
        debits_must_not_exceed_credits=True,
    )


async def open_basics(ledger: Ledger, *wallets: str, settlement_slots: int = 8) -> None:
    await ledger.open_account(AccountSpec(code=BANK, currency=Currency.USD, kind="bank"))
    await ledger.open_account(
        AccountSpec(
            code=SETTLEMENT,
            currency=Currency.USD,
            kind="settlement",
            balance_slots=settlement_slots,
        )
    )
    for wallet in wallets:
        await ledger.open_account(wallet_spec(wallet))


def move(debit: str, credit: str, amount: int, k: str | None = None) -> TransferRequest:
    return TransferRequest(
        key=k or key(), debit=debit, credit=credit, amount_minor=amount, currency=Currency.USD
    )


def hold(
    debit: str, credit: str, amount: int, *, seconds: float = 60, k: str | None = None
) -> HoldRequest:
    return HoldRequest(
        key=k or key("hold"),
        debit=debit,
        credit=credit,
        amount_minor=amount,
        currency=Currency.USD,
        expires_at=datetime.now(UTC) + timedelta(seconds=seconds),
    )


def resolve(hold_key: str, action: str, amount: int | None = None) -> HoldResolution:
    return HoldResolution(
        key=key(action),
        hold_key=hold_key,
        action=action,  # type: ignore[arg-type]
        amount_minor=amount,
    )


@contextlib.contextmanager
def own_event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop of the test's own, made current so asyncpg binds to it rather than
    to the (idle) session loop of the async fixtures: hypothesis runs each
    example synchronously. Whatever loop was current (after other tests none
    may be: a sync test runs in the main thread with no loop set) is put back."""
    try:
        previous: asyncio.AbstractEventLoop | None = (
            asyncio.get_event_loop_policy().get_event_loop()
        )
    except RuntimeError:
        previous = None
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        loop.close()
        asyncio.set_event_loop(previous)
