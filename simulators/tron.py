"""Tron (USDT-TRC20) custody and chain: deposit addresses, deposits, blocks, reorgs.

    POST /tron/v1/addresses                           a customer's deposit address
    GET  /tron/v1/addresses/{address}                 read it back
    GET  /tron/v1/addresses/{address}/deposits        deposits to it, oldest first, paged
    GET  /tron/v1/deposits/{tx_hash}                  one deposit
    POST /tron/v1/simulate/deposits                   a USDT transfer lands in the head block
    POST /tron/v1/simulate/blocks                     mine blocks: confirmations count up
    POST /tron/v1/simulate/deposits/{tx_hash}/reorg   a reorg drops a deposit before finality
    POST /tron/v1/withdrawals                         send USDT from custody (Idempotency-Key)
    GET  /tron/v1/withdrawals/{tx_hash}               one withdrawal
    GET  /tron/v1/withdrawals?reference=...           those with the reference, oldest first, paged
    POST /tron/v1/simulate/withdrawals/{tx_hash}/fail a withdrawal fails before finality
    GET  /tron/v1/custody/balance                     what custody holds

A deposit is `confirming` from the block it lands in, `finalized` once it has
its finality depth of confirmations (it stops counting there), or `dropped`
if a reorg removes it first. A withdrawal lands in the head block the same
way and counts up with the same blocks to `finalized`, or `failed` (out of
energy, reverted) before that, its money staying in custody.

The custody balance is what a custodian lets you spend: the option
custody_opening_balance, plus finalized deposits (a confirming one can still
be dropped), minus every withdrawal not failed (the money leaves custody's
wallet when the transaction is signed and broadcast), minus the option
custody_drift_minor.

Refusals: a body the API does not take (a `to_address` whose Base58Check
checksum is wrong) is 422 naming the field; a withdrawal above the custody
balance is 409 {"detail": ..., "code": "insufficient_funds"} and sends
nothing; failing a finalized or failed withdrawal, or dropping a finalized
deposit, is 409; an unknown one is 404.

Webhooks, each carrying the deposit or withdrawal as it was at that moment:
    deposit.detected        at 0 confirmations
    deposit.confirmations   at each milestone confirmation count
    deposit.finalized       at the finality depth
    deposit.dropped         when a reorg removes it
    withdrawal.confirming   at 0 confirmations (broadcast), then at each milestone
    withdrawal.finalized    at the finality depth
    withdrawal.failed       when it fails

Options (PUT /_admin/options/tron), read on every request:
    finality_confirmations   confirmations that make a deposit or withdrawal final (19)
    confirmation_milestones  counts that get a deposit.confirmations or
                             withdrawal.confirming webhook ([1, 6, 19])
    custody_opening_balance  micro-USDT custody starts with (10**12: a million USDT)
    custody_drift_minor      micro-USDT missing from custody, for drift tests (0)
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, ValidationError

from schemas.money import AMOUNT_MINOR_MAX, Currency
from schemas.tron import (
    CUSTODY_OPENING_BALANCE_MINOR_DEFAULT,
    INSUFFICIENT_FUNDS,
    TRON_ACCOUNT_BYTES,
    TRON_ADDRESS_CHARS,
    TRON_ADDRESS_PATTERN,
    TRON_ADDRESS_PREFIX,
    WITHDRAWAL_REFERENCE_CHARS_MAX,
    TronAddress,
    WithdrawalStatus,
    base58check,
)
from simulators.framework.context import SimulatorContext
from simulators.framework.paging import page_after
from simulators.framework.store import now_iso

NAME = "tron"

ADDRESSES = "tron.address"
DEPOSITS = "tron.deposit"
CHAIN = "tron.chain"
WITHDRAWALS = "tron.withdrawal"
CHAIN_HEAD_ID = "head"

FINALITY_CONFIRMATIONS_DEFAULT = 19
CONFIRMATION_MILESTONES_DEFAULT = (1, 6, 19)
# Bounds on the options, so a mistyped setting fails loudly instead of
# leaving deposits that never finalize.
FINALITY_CONFIRMATIONS_MAX = 1_000
CONFIRMATION_MILESTONES_COUNT_MAX = 50

BLOCKS_PER_CALL_MAX = 1_000
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
CUSTOMER_ID_CHARS_MAX = 64
# The chain does not start at block 1: heights look like mainnet's.
GENESIS_BLOCK_NUMBER = 60_000_000
# Generous: tests that are not about the custody balance never meet it.

# Salts the derivation so custody addresses are not simply hashes of customer ids.
ADDRESS_DERIVATION_DOMAIN = b"cardflow-simulated-tron-custody\x00"
TX_HASH_BYTES = 32

# A deposit's addresses need only look like Tron's: the sandbox takes any
# sender the test names, and a deposit address is one custody made (404 if not).
AddressShaped = Annotated[
    str, Field(pattern=TRON_ADDRESS_PATTERN, description="Tron base58 address")
]
DepositStatus = Literal["confirming", "finalized", "dropped"]
FailureReason = Annotated[
    str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64, description="e.g. out_of_energy")
]


class AddressIn(BaseModel):
    customer_id: str = Field(
        min_length=1, max_length=CUSTOMER_ID_CHARS_MAX, pattern=r"^[A-Za-z0-9_.:\-]+$"
    )


class DepositAddress(BaseModel):
    address: str
    customer_id: str
    created_at: str


class DepositIn(BaseModel):
    address: AddressShaped
    amount_minor: StrictInt = Field(gt=0, le=AMOUNT_MINOR_MAX, description="Micro-USDT")
    from_address: AddressShaped


class Deposit(BaseModel):
    tx_hash: str
    address: str
    customer_id: str
    from_address: str
    amount_minor: int
    currency: Currency
    block_number: int
    confirmations: int
    # The depth this deposit needs, fixed when it is detected so changing the
    # option later neither finalizes nor strands deposits already on the way.
    finality_confirmations: int
    status: DepositStatus
    detected_at: str
    finalized_at: str | None = None
    dropped_at: str | None = None


class DepositPage(BaseModel):
    data: list[Deposit]
    has_more: bool


class WithdrawalIn(BaseModel):
    to_address: TronAddress
    amount_minor: StrictInt = Field(gt=0, le=AMOUNT_MINOR_MAX, description="Micro-USDT")
    reference: str = Field(
        min_length=1,
        max_length=WITHDRAWAL_REFERENCE_CHARS_MAX,
        description="The payer's own id for the send, e.g. a withdrawal request's id",
    )


class ChainWithdrawal(BaseModel):
    tx_hash: str
    to_address: str
    amount_minor: int
    currency: Currency
    reference: str
    status: WithdrawalStatus
    confirmations: int
    block_number: int
    # Fixed when it is broadcast, as a deposit's is when it is detected.
    finality_confirmations: int
    failure_reason: str | None = None
    created_at: str
    finalized_at: str | None = None
    failed_at: str | None = None


class WithdrawalPage(BaseModel):
    data: list[ChainWithdrawal]
    has_more: bool


class FailIn(BaseModel):
    reason: FailureReason


class CustodyBalance(BaseModel):
    currency: Currency
    balance_minor: int


class MineIn(BaseModel):
    count: StrictInt = Field(ge=1, le=BLOCKS_PER_CALL_MAX, description="Blocks to mine")


class ChainHead(BaseModel):
    head_block_number: int
    blocks_mined: int


# Deposits and withdrawals count confirmations the same way.
OnChain = TypeVar("OnChain", Deposit, ChainWithdrawal)


class TronOptions(BaseModel):
    finality_confirmations: int = Field(ge=1, le=FINALITY_CONFIRMATIONS_MAX)
    confirmation_milestones: list[Annotated[int, Field(ge=1, le=FINALITY_CONFIRMATIONS_MAX)]] = (
        Field(max_length=CONFIRMATION_MILESTONES_COUNT_MAX)
    )
    custody_opening_balance: StrictInt = Field(ge=0, le=AMOUNT_MINOR_MAX)
    custody_drift_minor: StrictInt = Field(ge=-AMOUNT_MINOR_MAX, le=AMOUNT_MINOR_MAX)


class Refused(Exception):
    """A well-formed request custody's state refuses: 409 with a code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def deposit_address(customer_id: str) -> str:
    """The customer's deposit address: the same for the same customer, always.

    Derived from the customer id by hashing, shaped like a real Tron address
    (Base58Check, version byte 0x41); no key pair stands behind it.
    """
    account = hashlib.sha256(ADDRESS_DERIVATION_DOMAIN + customer_id.encode()).digest()
    address = base58check(TRON_ADDRESS_PREFIX + account[:TRON_ACCOUNT_BYTES])
    assert len(address) == TRON_ADDRESS_CHARS and address.startswith("T"), address
    return address


def create(context: SimulatorContext) -> FastAPI:
    app = context.app(title="Tron USDT-TRC20 custody (simulated)")

    @app.exception_handler(Refused)
    async def refused(_: Request, error: Refused) -> JSONResponse:
        return JSONResponse({"detail": error.message, "code": error.code}, status_code=409)

    def options() -> TronOptions:
        try:
            return TronOptions(
                finality_confirmations=context.option(
                    NAME, "finality_confirmations", FINALITY_CONFIRMATIONS_DEFAULT
                ),
                confirmation_milestones=context.option(
                    NAME, "confirmation_milestones", list(CONFIRMATION_MILESTONES_DEFAULT)
                ),
                custody_opening_balance=context.option(
                    NAME, "custody_opening_balance", CUSTODY_OPENING_BALANCE_MINOR_DEFAULT
                ),
                custody_drift_minor=context.option(NAME, "custody_drift_minor", 0),
            )
        except ValidationError as error:
            raise HTTPException(status_code=500, detail=f"bad tron options: {error}") from None

    def head_block_number() -> int:
        found = context.store.get(CHAIN, CHAIN_HEAD_ID)
        return GENESIS_BLOCK_NUMBER if found is None else int(found["block_number"])

    def address_or_404(address: str) -> DepositAddress:
        found = context.store.get(ADDRESSES, address)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no deposit address {address}")
        return DepositAddress(**found)

    def deposit_or_404(tx_hash: str) -> Deposit:
        found = context.store.get(DEPOSITS, tx_hash)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no deposit {tx_hash}")
        return Deposit(**found)

    def withdrawal_or_404(tx_hash: str) -> ChainWithdrawal:
        found = context.store.get(WITHDRAWALS, tx_hash)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no withdrawal {tx_hash}")
        return ChainWithdrawal(**found)

    def save_and_emit(item: OnChain, events: list[tuple[str, OnChain]]) -> None:
        # The document first: a webhook consumer reading the deposit or
        # withdrawal back never sees it older than the event it was told about.
        kind = DEPOSITS if isinstance(item, Deposit) else WITHDRAWALS
        context.store.put(kind, item.tx_hash, item.model_dump(mode="json"))
        for event_type, snapshot in events:
            context.outbox.emit(NAME, event_type, snapshot.model_dump(mode="json"))

    def custody_balance_minor() -> int:
        settings = options()
        deposited = sum(
            int(d["amount_minor"])
            for d in context.store.list(DEPOSITS)
            if d["status"] == "finalized"
        )
        sent = sum(
            int(w["amount_minor"])
            for w in context.store.list(WITHDRAWALS)
            if w["status"] != "failed"
        )
        return settings.custody_opening_balance + deposited - sent - settings.custody_drift_minor

    @app.post("/v1/addresses", status_code=201)
    async def get_or_create_address(body: AddressIn, response: Response) -> DepositAddress:
        """The customer's one deposit address: 201 when first made, then 200 with
        the same address for every later request for that customer."""
        address = deposit_address(body.customer_id)
        found = context.store.get(ADDRESSES, address)
        if found is not None:
            response.status_code = 200
            return DepositAddress(**found)
        created = DepositAddress(
            address=address, customer_id=body.customer_id, created_at=now_iso()
        )
        context.store.put(ADDRESSES, address, created.model_dump(mode="json"))
        return created

    @app.get("/v1/addresses/{address}")
    async def get_address(address: str) -> DepositAddress:
        """A deposit address this custody made; 404 for any other address."""
        return address_or_404(address)

    @app.get("/v1/addresses/{address}/deposits")
    async def list_deposits(
        address: str,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(max_length=2 * TX_HASH_BYTES)] = None,
    ) -> DepositPage:
        """Deposits to the address, oldest first, `limit` at a time; pass the last
        tx_hash as `starting_after` for the next page."""
        address_or_404(address)
        deposits = [d for d in context.store.list(DEPOSITS) if d["address"] == address]
        page, has_more = page_after(
            deposits,
            key="tx_hash",
            starting_after=starting_after,
            limit=limit,
            missing=f"no deposit {starting_after} to address {address}",
        )
        return DepositPage(data=[Deposit(**d) for d in page], has_more=has_more)

    @app.get("/v1/deposits/{tx_hash}")
    async def get_deposit(tx_hash: str) -> Deposit:
        """A deposit as it stands now: confirmations, status, timestamps."""
        return deposit_or_404(tx_hash)

    @app.post("/v1/simulate/deposits", status_code=201)
    async def simulate_deposit(body: DepositIn) -> Deposit:
        """A USDT transfer to a custody address lands in the head block with 0
        confirmations; webhook deposit.detected. 404 if custody did not make the
        address."""
        owner = address_or_404(body.address)
        deposit = Deposit(
            **body.model_dump(),
            tx_hash=secrets.token_hex(TX_HASH_BYTES),
            customer_id=owner.customer_id,
            currency=Currency.USDT,
            block_number=head_block_number(),
            confirmations=0,
            finality_confirmations=options().finality_confirmations,
            status="confirming",
            detected_at=now_iso(),
        )
        save_and_emit(deposit, [("deposit.detected", deposit)])
        return deposit

    @app.post("/v1/simulate/blocks")
    async def mine_blocks(body: MineIn) -> ChainHead:
        """Mine `count` blocks. Every confirming deposit gains confirmations, up to
        its finality depth, where it becomes finalized and stops counting. Each
        milestone passed gets its own webhook, in order, even when one call
        passes several."""
        head = head_block_number() + body.count
        context.store.put(CHAIN, CHAIN_HEAD_ID, {"block_number": head})
        milestones = sorted(set(options().confirmation_milestones))
        stamp = now_iso()
        for found in context.store.list(DEPOSITS):
            deposit = Deposit(**found)
            if deposit.status == "confirming":
                save_and_emit(
                    *_mined(
                        deposit,
                        head,
                        milestones,
                        stamp,
                        "deposit.confirmations",
                        "deposit.finalized",
                    )
                )
        for found in context.store.list(WITHDRAWALS):
            withdrawal = ChainWithdrawal(**found)
            if withdrawal.status == "confirming":
                save_and_emit(
                    *_mined(
                        withdrawal,
                        head,
                        milestones,
                        stamp,
                        "withdrawal.confirming",
                        "withdrawal.finalized",
                    )
                )
        return ChainHead(head_block_number=head, blocks_mined=body.count)

    @app.post("/v1/simulate/deposits/{tx_hash}/reorg")
    async def simulate_reorg(tx_hash: str) -> Deposit:
        """A reorg removes the deposit's transaction: status dropped, 0
        confirmations, webhook deposit.dropped. A dropped deposit is returned
        as it is (no second webhook); a finalized one cannot be dropped (409)."""
        deposit = deposit_or_404(tx_hash)
        if deposit.status == "finalized":
            raise HTTPException(
                status_code=409, detail=f"deposit {tx_hash} is final and cannot be dropped"
            )
        if deposit.status == "dropped":
            return deposit
        dropped = deposit.model_copy(
            update={"status": "dropped", "confirmations": 0, "dropped_at": now_iso()}
        )
        save_and_emit(dropped, [("deposit.dropped", dropped)])
        return dropped

    @app.post("/v1/withdrawals", status_code=201)
    async def send_usdt(body: WithdrawalIn) -> ChainWithdrawal:
        """Custody signs and broadcasts a USDT transfer to `to_address`: it lands in
        the head block with 0 confirmations (webhook withdrawal.confirming) and
        its amount leaves the custody balance; 409 insufficient_funds, sending
        nothing, when custody holds less."""
        # No await between the check and the send: no other request runs in
        # between, so two withdrawals can never both spend the same balance.
        balance = custody_balance_minor()
        if balance < body.amount_minor:
            raise Refused(
                INSUFFICIENT_FUNDS,
                f"custody holds {balance} micro-USDT, below the withdrawal's {body.amount_minor}",
            )
        withdrawal = ChainWithdrawal(
            **body.model_dump(),
            tx_hash=secrets.token_hex(TX_HASH_BYTES),
            currency=Currency.USDT,
            status="confirming",
            confirmations=0,
            block_number=head_block_number(),
            finality_confirmations=options().finality_confirmations,
            created_at=now_iso(),
        )
        save_and_emit(withdrawal, [("withdrawal.confirming", withdrawal)])
        return withdrawal

    @app.get("/v1/withdrawals/{tx_hash}")
    async def get_withdrawal(tx_hash: str) -> ChainWithdrawal:
        """A withdrawal as it stands now: confirmations, status, timestamps."""
        return withdrawal_or_404(tx_hash)

    @app.get("/v1/withdrawals")
    async def withdrawals_by_reference(
        reference: Annotated[str, Query(min_length=1, max_length=WITHDRAWAL_REFERENCE_CHARS_MAX)],
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(max_length=2 * TX_HASH_BYTES)] = None,
    ) -> WithdrawalPage:
        """The withdrawals sent with `reference`, oldest first, `limit` at a time: how
        a payer whose send went unanswered learns whether it was made."""
        found = [w for w in context.store.list(WITHDRAWALS) if w["reference"] == reference]
        page, has_more = page_after(
            found,
            key="tx_hash",
            starting_after=starting_after,
            limit=limit,
            missing=f"no withdrawal {starting_after} with this reference",
        )
        return WithdrawalPage(data=[ChainWithdrawal(**w) for w in page], has_more=has_more)

    @app.post("/v1/simulate/withdrawals/{tx_hash}/fail")
    async def simulate_withdrawal_failed(tx_hash: str, body: FailIn) -> ChainWithdrawal:
        """A confirming withdrawal fails (out of energy, reverted): it stops
        counting, its money stays in custody; webhook withdrawal.failed. A
        finalized or failed one cannot fail (409)."""
        withdrawal = withdrawal_or_404(tx_hash)
        if withdrawal.status != "confirming":
            raise HTTPException(
                status_code=409,
                detail=f"withdrawal {tx_hash} is {withdrawal.status};"
                " only a confirming one can fail",
            )
        failed = withdrawal.model_copy(
            update={"status": "failed", "failure_reason": body.reason, "failed_at": now_iso()}
        )
        save_and_emit(failed, [("withdrawal.failed", failed)])
        return failed

    @app.get("/v1/custody/balance")
    async def custody_balance() -> CustodyBalance:
        """What custody holds: finalized deposits in, withdrawals not failed out."""
        return CustodyBalance(currency=Currency.USDT, balance_minor=custody_balance_minor())

    return app


def _mined(
    item: OnChain,
    head: int,
    milestones: list[int],
    stamp: str,
    milestone_event: str,
    final_event: str,
) -> tuple[OnChain, list[tuple[str, OnChain]]]:
    """The confirming item once the chain's head is `head`, and the webhooks the
    blocks on top cause, in order: each milestone passed, then finality."""
    reached = min(head - item.block_number, item.finality_confirmations)
    events = [
        (milestone_event, _at(item, milestone, stamp))
        for milestone in milestones
        if item.confirmations < milestone <= reached
    ]
    updated = _at(item, reached, stamp)
    if updated.status == "finalized":
        events.append((final_event, updated))
    return updated, events


def _at(item: OnChain, confirmations: int, stamp: str) -> OnChain:
    """The item as it is at `confirmations` (finalized from its depth on)."""
    update: dict[str, Any] = {"confirmations": confirmations}
    if confirmations >= item.finality_confirmations:
        update |= {"status": "finalized", "finalized_at": stamp}
    return item.model_copy(update=update)
