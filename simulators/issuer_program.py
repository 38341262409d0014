"""The card program's prefunded balance at the issuer (Marqeta / Lithic
"program funding"): per currency, what the program has sent its issuer and
not yet spent.

Each balance opens at the option program_balances (read once, at the first
use after a reset) and then moves with every settled transaction, in the
card's currency: clearings, force posts and the network's fees draw it down;
refunds and the chargebacks of disputes the cardholder won add back; credited
fundings (and funding deposits) add to it. Every movement is recorded once,
as a balance transaction naming its source. Settlement is never refused, so
a balance may fall below zero; authorizations hold nothing of it, but one
asking for more than the balance is declined by the issuer itself
(UNDERFUNDED_REASON, simulators/issuer_realtime.py).

A funding is the program's bank wire: pending when announced, credited once
its lead time (the option funding_lead_seconds, on the issuer's clock) has
passed. No timer runs: every request to the issuer first credits the
fundings whose time has come, and the sandbox credits one at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query

from schemas.money import Currency
from schemas.units import DAY_SECONDS
from simulators.issuer_models import (
    Fee,
    FundingDeposit,
    FundingTransfer,
    FundingTransferIn,
    FundingTransferPage,
    ProgramBalance,
    ProgramBalanceList,
    ProgramBalanceTransaction,
    ProgramBalanceTransactionPage,
    ProgramBalanceTransactionType,
    Transaction,
)
from simulators.issuer_state import (
    DEPOSITS,
    FEES,
    NAME,
    PROGRAM_BALANCE_TRANSACTIONS,
    PROGRAM_FUNDINGS,
    TRANSACTIONS,
    IssuerState,
    conflict,
    unprocessable,
)
from simulators.issuer_transactions import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX

# What the issuer says when it declines a request the program cannot pay for.
UNDERFUNDED_REASON = "program_underfunded"

# Each currency's opening balance unless the option program_balances names
# it: far more than any test or the demo spends (a hundred billion dollars).
PROGRAM_BALANCE_MINOR_DEFAULT = 10**13
# An opening balance stays far inside the ledger's bigint.
PROGRAM_BALANCE_MINOR_MAX = 10**18
FUNDING_LEAD_SECONDS_DEFAULT = 0
FUNDING_LEAD_SECONDS_MAX = 30 * DAY_SECONDS
IDEMPOTENCY_KEY_CHARS_MAX = 255

# Store kinds besides the collections: each currency's balance (by currency
# code), the sources already moved (one movement per source), and the
# fundings still pending (so the check each request makes reads only them).
BALANCES = "issuer.program_balances"
MOVED = "issuer.program_balance_sources"
FUNDINGS_DUE = "issuer.program_fundings_due"

# The movement each settled transaction type makes.
TRANSACTION_MOVEMENT: dict[str, ProgramBalanceTransactionType] = {
    "clearing": "clearing",
    "force_post": "force_post",
    "refund": "refund",
    "chargeback": "dispute",
}


# ----- balances and their movements -----------------------------------------------------


def _opening_balances(state: IssuerState) -> dict[Currency, int]:
    """The option program_balances, currency by currency; a currency it does
    not name, or names with a bad amount, opens at the default."""
    configured = state.context.option(NAME, "program_balances", {})
    if not isinstance(configured, dict):
        configured = {}
    opening: dict[Currency, int] = {}
    for currency in Currency:
        value = configured.get(currency.value)
        if isinstance(value, bool) or not isinstance(value, int):
            value = PROGRAM_BALANCE_MINOR_DEFAULT
        valid = 0 <= value <= PROGRAM_BALANCE_MINOR_MAX
        opening[currency] = value if valid else PROGRAM_BALANCE_MINOR_DEFAULT
    return opening


def _open_balances(state: IssuerState) -> None:
    """Every currency's balance, at its opening amount, the first time any is
    used (the store is empty after a reset, so the option is read again)."""
    store = state.context.store
    for currency, opening_minor in _opening_balances(state).items():
        if store.get(BALANCES, currency.value) is None:
            store.put(BALANCES, currency.value, {"currency": currency.value, "available_minor": 0})
            move(state, "opening", opening_minor, currency, None)


def available_minor(state: IssuerState, currency: Currency) -> int:
    """The program's balance in `currency` now."""
    found = state.context.store.get(BALANCES, currency.value)
    if found is None:
        _open_balances(state)
        found = state.context.store.get(BALANCES, currency.value)
        assert found is not None, f"{currency} was opened just now"
    return int(found["available_minor"])


def move(
    state: IssuerState,
    kind: ProgramBalanceTransactionType,
    amount_minor: int,
    currency: Currency,
    source_id: str | None,
) -> ProgramBalanceTransaction | None:
    """Moves the balance by the signed `amount_minor`, once per source: a
    source already moved (a document saved again) moves nothing; None then.
    Synchronous, with no await between reading and writing the balance, so
    no other request on the event loop comes in between."""
    store = state.context.store
    once_key = f"{kind}/{source_id or currency.value}"
    if store.get(MOVED, once_key) is not None:
        return None
    balance_minor = available_minor(state, currency) + amount_minor
    store.put(
        BALANCES, currency.value, {"currency": currency.value, "available_minor": balance_minor}
    )
    movement = ProgramBalanceTransaction(
        id=state.new_id(PROGRAM_BALANCE_TRANSACTIONS),
        type=kind,
        amount_minor=amount_minor,
        currency=currency,
        source_id=source_id,
        created_at=state.now_iso(),
    )
    state.save(PROGRAM_BALANCE_TRANSACTIONS, movement)
    store.put(MOVED, once_key, {"id": once_key, "balance_transaction_id": movement.id})
    return movement


def _transaction_moved(state: IssuerState, transaction: Transaction) -> None:
    sign = -1 if transaction.direction == "debit" else 1
    kind = TRANSACTION_MOVEMENT[transaction.type]
    move(state, kind, sign * transaction.amount_minor, transaction.currency, transaction.id)


def _fee_moved(state: IssuerState, fee: Fee) -> None:
    move(state, "fee", -fee.amount_minor, fee.currency, fee.id)


def _deposit_moved(state: IssuerState, deposit: FundingDeposit) -> None:
    move(state, "funding", deposit.amount_minor, deposit.currency, deposit.id)


def install(state: IssuerState) -> None:
    """Every settled transaction, fee and funding deposit the issuer records,
    by whichever route, moves the program's balance."""
    state.on_save(TRANSACTIONS, lambda transaction: _transaction_moved(state, transaction))
    state.on_save(FEES, lambda fee: _fee_moved(state, fee))
    state.on_save(DEPOSITS, lambda deposit: _deposit_moved(state, deposit))


# ----- fundings ---------------------------------------------------------------------------


def _credit(state: IssuerState, funding: FundingTransfer) -> FundingTransfer:
    funding.status = "credited"
    funding.credited_at = state.now_iso()
    state.save(PROGRAM_FUNDINGS, funding)
    move(state, "funding", funding.amount_minor, funding.currency, funding.id)
    state.context.store.execute(
        "DELETE FROM documents WHERE kind = ? AND id = ?", FUNDINGS_DUE, funding.id
    )
    state.emit("program.funding.credited", funding)
    return funding


def credit_due_fundings(state: IssuerState) -> int:
    """Credits every pending funding whose lead time has passed on the
    issuer's clock; returns how many."""
    due = state.context.store.list(FUNDINGS_DUE)
    if not due:
        return 0
    now = state.now()
    credited = 0
    for entry in due:
        if datetime.fromisoformat(entry["credit_due_at"]) > now:
            continue
        funding = state.find(PROGRAM_FUNDINGS, entry["id"])
        if funding is not None and funding.status == "pending":
            _credit(state, funding)
            credited += 1
    return credited


def crediting_due_fundings(state: IssuerState) -> Callable[[], Awaitable[None]]:
    """A dependency of every issuer route: what a request finds has the
    fundings whose time came before it already credited."""

    async def credit_before_answering() -> None:
        credit_due_fundings(state)

    return credit_before_answering


async def _idempotency_key_required(
    idempotency_key: Annotated[str, Header(min_length=1, max_length=IDEMPOTENCY_KEY_CHARS_MAX)],
) -> None:
    """Money is announced once: a funding without a key is refused (422)
    rather than risk a retry wiring it twice (the key's replay itself is the
    idempotency middleware's)."""


def _page_start(ids: list[str], starting_after: str | None, what: str) -> int:
    if starting_after is None:
        return 0
    if starting_after not in ids:
        message = f"{starting_after} is not {what}"
        unprocessable(["query", "starting_after"], message, starting_after)
    return ids.index(starting_after) + 1


def router(state: IssuerState) -> APIRouter:
    api = state.context.router()

    @api.get("/v1/program/balances")
    async def get_program_balances() -> ProgramBalanceList:
        """The program's prefunded balance in every currency."""
        return ProgramBalanceList(
            data=[
                ProgramBalance(currency=currency, available_minor=available_minor(state, currency))
                for currency in Currency
            ]
        )

    @api.get("/v1/program/balance_transactions")
    async def list_program_balance_transactions(
        currency: Currency,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(min_length=1)] = None,
    ) -> ProgramBalanceTransactionPage:
        """Every movement of the balance in `currency`, oldest first (its
        opening first), paged as the card's listings are."""
        available_minor(state, currency)  # opened, so its opening is listed
        found = [m for m in state.all(PROGRAM_BALANCE_TRANSACTIONS) if m.currency == currency]
        start = _page_start([m.id for m in found], starting_after, f"a {currency} movement")
        return ProgramBalanceTransactionPage(
            data=found[start : start + limit], has_more=len(found) > start + limit
        )

    @api.post(
        "/v1/program/fundings",
        status_code=201,
        dependencies=[Depends(_idempotency_key_required)],
    )
    async def create_program_funding(body: FundingTransferIn) -> FundingTransfer:
        """The program's wire to the issuer: pending until its lead time
        (funding_lead_seconds) has passed, then credited to the balance and
        announced as program.funding.credited; with no lead time, credited
        before this answers. Needs an Idempotency-Key."""
        now = state.now()
        lead_seconds = state.option_int(
            "funding_lead_seconds", FUNDING_LEAD_SECONDS_DEFAULT, 0, FUNDING_LEAD_SECONDS_MAX
        )
        funding = FundingTransfer(
            **body.model_dump(),
            id=state.new_id(PROGRAM_FUNDINGS),
            status="pending",
            created_at=now.isoformat(),
            credit_due_at=(now + timedelta(seconds=lead_seconds)).isoformat(),
        )
        state.save(PROGRAM_FUNDINGS, funding)
        state.context.store.put(
            FUNDINGS_DUE, funding.id, {"id": funding.id, "credit_due_at": funding.credit_due_at}
        )
        if lead_seconds == 0:
            _credit(state, funding)
        return funding

    @api.get("/v1/program/fundings")
    async def list_program_fundings(
        reference: Annotated[str | None, Query(min_length=1)] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(min_length=1)] = None,
    ) -> FundingTransferPage:
        """The program's fundings, oldest first; with `reference`, only those
        the program sent with it."""
        found = [
            f for f in state.all(PROGRAM_FUNDINGS) if reference is None or f.reference == reference
        ]
        start = _page_start([f.id for f in found], starting_after, "a funding listed here")
        return FundingTransferPage(
            data=found[start : start + limit], has_more=len(found) > start + limit
        )

    @api.get("/v1/program/fundings/{funding_id}")
    async def get_program_funding(funding_id: str) -> FundingTransfer:
        """The funding, pending or credited."""
        return state.load(PROGRAM_FUNDINGS, funding_id)

    @api.post("/v1/simulate/program/fundings/{funding_id}/credit")
    async def simulate_funding_credited(funding_id: str) -> FundingTransfer:
        """Sandbox: the program's wire arrives now, whatever its lead time;
        credited and announced as program.funding.credited. A funding already
        credited is a 409."""
        funding = state.load(PROGRAM_FUNDINGS, funding_id)
        if funding.status != "pending":
            conflict(f"cannot credit program funding {funding.id}: it is {funding.status}")
        return _credit(state, funding)

    return api
