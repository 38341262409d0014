"""Tron (USDT-TRC20) custody and chain: deposit addresses, deposits, blocks, reorgs.

    POST /tron/v1/addresses                           a customer's deposit address
    GET  /tron/v1/addresses/{address}                 read it back
    GET  /tron/v1/addresses/{address}/deposits        deposits to it, oldest first, paged
    GET  /tron/v1/deposits/{tx_hash}                  one deposit
    POST /tron/v1/simulate/deposits                   a USDT transfer lands in the head block
    POST /tron/v1/simulate/blocks                     mine blocks: confirmations count up
    POST /tron/v1/simulate/deposits/{tx_hash}/reorg   a reorg drops a deposit before finality

A deposit is `confirming` from the block it lands in, `finalized` once it has
its finality depth of confirmations (it stops counting there), or `dropped`
if a reorg removes it first.

Webhooks, each carrying the deposit as it was at that moment:
    deposit.detected        at 0 confirmations
    deposit.confirmations   at each milestone confirmation count
    deposit.finalized       at the finality depth
    deposit.dropped         when a reorg removes it

Options (PUT /_admin/options/tron), read on every request:
    finality_confirmations   confirmations that make a deposit final (19)
    confirmation_milestones  counts that get a deposit.confirmations webhook ([1, 6, 19])
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Response
from pydantic import BaseModel, Field, StrictInt, ValidationError

from schemas.money import AMOUNT_MINOR_MAX, Currency
from simulators.framework.context import SimulatorContext
from simulators.framework.paging import page_after
from simulators.framework.store import now_iso

NAME = "tron"

ADDRESSES = "tron.address"
DEPOSITS = "tron.deposit"
CHAIN = "tron.chain"
CHAIN_HEAD_ID = "head"

FINALITY_CONFIRMATIONS_DEFAULT = 19
CONFIRMATION_MILESTONES_DEFAULT = (1, 6, 19)
# Bounds on the options, so a mistyped setting fails loudly instead of
# leaving deposits that never finalize.
FINALITY_CONFIRMATIONS_MAX = 1_000
CONFIRMATION_MILESTONES_COUNT_MAX = 50

BLOCKS_PER_CALL_MAX = 1_000
DEPOSITS_PAGE_SIZE_DEFAULT = 50
DEPOSITS_PAGE_SIZE_MAX = 200
CUSTOMER_ID_CHARS_MAX = 64
# The chain does not start at block 1: heights look like mainnet's.
GENESIS_BLOCK_NUMBER = 60_000_000

# A Tron address is Base58Check of a 0x41 byte, 20 account bytes and a 4-byte
# checksum: always 34 characters starting with "T".
TRON_ADDRESS_PATTERN = r"^T[1-9A-HJ-NP-Za-km-z]{33}$"
TRON_ADDRESS_CHARS = 34
TRON_ADDRESS_PREFIX = b"\x41"
TRON_ACCOUNT_BYTES = 20
BASE58_CHECKSUM_BYTES = 4
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# Salts the derivation so custody addresses are not simply hashes of customer ids.
ADDRESS_DERIVATION_DOMAIN = b"cardflow-simulated-tron-custody\x00"
TX_HASH_BYTES = 32

TronAddress = Annotated[str, Field(pattern=TRON_ADDRESS_PATTERN, description="Tron base58 address")]
DepositStatus = Literal["confirming", "finalized", "dropped"]


class AddressIn(BaseModel):
    customer_id: str = Field(
        min_length=1, max_length=CUSTOMER_ID_CHARS_MAX, pattern=r"^[A-Za-z0-9_.:\-]+$"
    )


class DepositAddress(BaseModel):
    address: str
    customer_id: str
    created_at: str


class DepositIn(BaseModel):
    address: TronAddress
    amount_minor: StrictInt = Field(gt=0, le=AMOUNT_MINOR_MAX, description="Micro-USDT")
    from_address: TronAddress


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


class MineIn(BaseModel):
    count: StrictInt = Field(ge=1, le=BLOCKS_PER_CALL_MAX, description="Blocks to mine")


class ChainHead(BaseModel):
    head_block_number: int
    blocks_mined: int


class TronOptions(BaseModel):
    finality_confirmations: int = Field(ge=1, le=FINALITY_CONFIRMATIONS_MAX)
    confirmation_milestones: list[Annotated[int, Field(ge=1, le=FINALITY_CONFIRMATIONS_MAX)]] = (
        Field(max_length=CONFIRMATION_MILESTONES_COUNT_MAX)
    )


def _base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    encoded = ""
    while number:
        number, digit = divmod(number, len(BASE58_ALPHABET))
        encoded = BASE58_ALPHABET[digit] + encoded
    leading_zero_bytes = len(data) - len(data.lstrip(b"\x00"))
    return BASE58_ALPHABET[0] * leading_zero_bytes + encoded


def deposit_address(customer_id: str) -> str:
    """The customer's deposit address: the same for the same customer, always.

    Derived from the customer id by hashing, shaped like a real Tron address
    (Base58Check, version byte 0x41); no key pair stands behind it.
    """
    account = hashlib.sha256(ADDRESS_DERIVATION_DOMAIN + customer_id.encode()).digest()
    payload = TRON_ADDRESS_PREFIX + account[:TRON_ACCOUNT_BYTES]
    checksum = hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:BASE58_CHECKSUM_BYTES]
    address = _base58(payload + checksum)
    assert len(address) == TRON_ADDRESS_CHARS and address.startswith("T"), address
    return address


def create(context: SimulatorContext) -> FastAPI:
    app = FastAPI(title="Tron USDT-TRC20 custody (simulated)")

    def options() -> TronOptions:
        try:
            return TronOptions(
                finality_confirmations=context.option(
                    NAME, "finality_confirmations", FINALITY_CONFIRMATIONS_DEFAULT
                ),
                confirmation_milestones=context.option(
                    NAME, "confirmation_milestones", list(CONFIRMATION_MILESTONES_DEFAULT)
                ),
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

    def save_and_emit(deposit: Deposit, events: list[tuple[str, Deposit]]) -> None:
        # The document first: a webhook consumer reading the deposit back
        # never sees it older than the event it was told about.
        context.store.put(DEPOSITS, deposit.tx_hash, deposit.model_dump(mode="json"))
        for event_type, snapshot in events:
            context.outbox.emit(NAME, event_type, snapshot.model_dump(mode="json"))

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
        limit: Annotated[int, Query(ge=1, le=DEPOSITS_PAGE_SIZE_MAX)] = DEPOSITS_PAGE_SIZE_DEFAULT,
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
            if deposit.status != "confirming":
                continue
            reached = min(head - deposit.block_number, deposit.finality_confirmations)
            events = [
                ("deposit.confirmations", _at(deposit, milestone, stamp))
                for milestone in milestones
                if deposit.confirmations < milestone <= reached
            ]
            updated = _at(deposit, reached, stamp)
            if updated.status == "finalized":
                events.append(("deposit.finalized", updated))
            save_and_emit(updated, events)
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

    return app


def _at(deposit: Deposit, confirmations: int, stamp: str) -> Deposit:
    """The deposit as it is at `confirmations` (finalized from its depth on)."""
    update: dict[str, Any] = {"confirmations": confirmations}
    if confirmations >= deposit.finality_confirmations:
        update |= {"status": "finalized", "finalized_at": stamp}
    return deposit.model_copy(update=update)
