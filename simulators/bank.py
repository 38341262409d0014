"""Bank: inbound transfers, payouts from the operating account, its balance and statement.

    POST /bank/v1/simulate/inbound_transfers   an incoming credit arrives
    GET  /bank/v1/inbound_transfers/{id}       read it back
    POST /bank/v1/payouts                      pay out to an IBAN (Idempotency-Key)
    GET  /bank/v1/payouts/{id}                 one payout
    GET  /bank/v1/payouts?reference=...        those with the reference, oldest first, paged
    POST /bank/v1/simulate/payouts/{id}/send   accepted -> sent
    POST /bank/v1/simulate/payouts/{id}/fail   accepted -> failed     {reason}
    POST /bank/v1/simulate/payouts/{id}/return sent -> returned       {reason}
    GET  /bank/v1/balances/{currency}          the operating account's available balance
    GET  /bank/v1/statement?currency=...       its movements, oldest first, paged

A payout is modelled on Stripe Treasury OutboundPayments and Modern Treasury
payment orders. It is `accepted` when made, and its amount leaves the
operating balance then; the bank sends it (`sent`) or gives up first
(`failed`); a sent payout may come back later (`returned`). A failed or
returned payout's amount comes back to the balance. Any other transition is
refused with 409.

The operating balance per currency is the option `opening_balances` plus
inbound transfers, minus payouts (from acceptance), plus failed and returned
payouts; the statement lists each of those movements, signed.

Refusals: a body the API does not take (an IBAN whose format, country length
or ISO 13616 check digits are wrong; a currency the bank does not pay out)
is 422 naming the field; a payout above the operating balance is
409 {"detail": ..., "code": "insufficient_funds"} (the request is well formed,
the account's state refuses it, as every state refusal here is a 409) and
makes nothing; an unknown payout is 404.

Webhooks, each carrying the transfer or the payout as it is then:
    inbound_transfer.received
    payout.sent, payout.failed, payout.returned

Options (PUT /_admin/options/bank), read on every request:
    opening_balances    {currency: minor units} the account starts with; a
                        currency left out starts with OPENING_BALANCE_MINOR_DEFAULT
    payouts_auto_send   a new payout is sent at once (false)
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, ValidationError, field_validator

from schemas.bank import (
    BENEFICIARY_NAME_CHARS_MAX,
    INSUFFICIENT_FUNDS,
    PAYOUT_REFERENCE_CHARS_MAX,
    PayoutDestination,
    PayoutStatus,
    ReturnReason,
    StatementLineKind,
)
from schemas.money import AMOUNT_MINOR_MAX, Currency
from simulators.framework.context import SimulatorContext
from simulators.framework.paging import page_after
from simulators.framework.store import now_iso

NAME = "bank"

INBOUND = "bank.inbound"
PAYOUTS = "bank.payout"
STATEMENT = "bank.statement"

# Generous: tests that are not about the balance never meet it.
OPENING_BALANCE_MINOR_DEFAULT = 10**12
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
ID_CHARS_MAX = 32
# The bank pays out in the fiat currencies it holds; USDT leaves by chain.
PAYOUT_CURRENCIES = frozenset(Currency) - {Currency.USDT}
FailureReason = Annotated[
    str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64, description="e.g. account_frozen")
]


class InboundTransferIn(BaseModel):
    reference: str = Field(min_length=1, max_length=140, description="Payer's reference")
    amount_minor: int = Field(gt=0, le=10**15)
    currency: Currency
    sender_name: str = Field(default="Unknown sender", max_length=140)
    sender_iban: str | None = Field(default=None, max_length=34)


class InboundTransfer(InboundTransferIn):
    id: str
    status: Literal["received"]
    received_at: str


class PayoutIn(BaseModel):
    amount_minor: StrictInt = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: Currency
    destination: PayoutDestination
    reference: str = Field(
        min_length=1,
        max_length=PAYOUT_REFERENCE_CHARS_MAX,
        description="The payer's own id for the payout, e.g. a withdrawal request's id",
    )

    @field_validator("currency")
    @classmethod
    def _paid_out_by_bank(cls, currency: Currency) -> Currency:
        if currency not in PAYOUT_CURRENCIES:
            raise ValueError(f"the bank does not pay out {currency.value}")
        return currency


class Payout(BaseModel):
    id: str
    status: PayoutStatus
    amount_minor: int
    currency: Currency
    destination_iban: str
    destination_name: str = Field(max_length=BENEFICIARY_NAME_CHARS_MAX)
    reference: str
    failure_reason: str | None = None
    return_reason: ReturnReason | None = None
    created_at: str
    sent_at: str | None = None
    failed_at: str | None = None
    returned_at: str | None = None


class PayoutPage(BaseModel):
    data: list[Payout]
    has_more: bool


class FailIn(BaseModel):
    reason: FailureReason


class ReturnIn(BaseModel):
    reason: ReturnReason


class BankBalance(BaseModel):
    currency: Currency
    available_minor: int


class StatementLine(BaseModel):
    id: str
    kind: StatementLineKind
    amount_minor: int
    currency: Currency
    reference: str
    source_id: str
    at: str


class StatementPage(BaseModel):
    data: list[StatementLine]
    has_more: bool


class BankOptions(BaseModel):
    opening_balances: dict[Currency, Annotated[StrictInt, Field(ge=0, le=AMOUNT_MINOR_MAX)]]
    payouts_auto_send: StrictBool


class Refused(Exception):
    """A well-formed request the account's state refuses: 409 with a code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _number(doc_id: str) -> int:
    """The sequence number in a readable id (po_000012 -> 12): creation order."""
    return int(doc_id.rpartition("_")[2])


def create(context: SimulatorContext) -> FastAPI:
    app = context.app(title="Bank (simulated)")

    @app.exception_handler(Refused)
    async def refused(_: Request, error: Refused) -> JSONResponse:
        return JSONResponse({"detail": error.message, "code": error.code}, status_code=409)

    def options() -> BankOptions:
        try:
            return BankOptions(
                opening_balances=context.option(NAME, "opening_balances", {}),
                payouts_auto_send=context.option(NAME, "payouts_auto_send", False),
            )
        except ValidationError as error:
            raise HTTPException(status_code=500, detail=f"bad bank options: {error}") from None

    def lines(currency: Currency) -> list[StatementLine]:
        found = [StatementLine(**line) for line in context.store.list(STATEMENT)]
        return sorted(
            (line for line in found if line.currency is currency), key=lambda x: _number(x.id)
        )

    def available_minor(currency: Currency) -> int:
        opening = options().opening_balances.get(currency, OPENING_BALANCE_MINOR_DEFAULT)
        return opening + sum(line.amount_minor for line in lines(currency))

    def post_line(
        kind: StatementLineKind,
        amount_minor: int,
        currency: Currency,
        reference: str,
        source: str,
        at: str | None,
    ) -> None:
        """One movement of the account, stamped when its transfer or payout got there."""
        assert at is not None, (kind, source)
        line = StatementLine(
            id=f"stl_{context.store.next_number(STATEMENT):06d}",
            kind=kind,
            amount_minor=amount_minor,
            currency=currency,
            reference=reference,
            source_id=source,
            at=at,
        )
        context.store.put(STATEMENT, line.id, line.model_dump(mode="json"))

    def payout_or_404(payout_id: str) -> Payout:
        found = context.store.get(PAYOUTS, payout_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no payout {payout_id}")
        return Payout(**found)

    def save_and_emit(payout: Payout, event_type: str) -> None:
        # The document first: a webhook consumer reading the payout back never
        # sees it older than the event it was told about.
        context.store.put(PAYOUTS, payout.id, payout.model_dump(mode="json"))
        context.outbox.emit(NAME, event_type, payout.model_dump(mode="json"))

    def sent(payout: Payout) -> Payout:
        if payout.status != "accepted":
            raise HTTPException(
                status_code=409,
                detail=f"payout {payout.id} is {payout.status}; only an accepted one is sent",
            )
        done = payout.model_copy(update={"status": "sent", "sent_at": now_iso()})
        save_and_emit(done, "payout.sent")
        return done

    @app.post("/v1/simulate/inbound_transfers", status_code=201)
    async def simulate_inbound(body: InboundTransferIn) -> InboundTransfer:
        transfer = InboundTransfer(
            **body.model_dump(),
            id=f"ibt_{context.store.next_number(INBOUND):06d}",
            status="received",
            received_at=now_iso(),
        )
        context.store.put(INBOUND, transfer.id, transfer.model_dump(mode="json"))
        post_line(
            "inbound_transfer",
            transfer.amount_minor,
            transfer.currency,
            transfer.reference,
            transfer.id,
            transfer.received_at,
        )
        context.outbox.emit(NAME, "inbound_transfer.received", transfer.model_dump(mode="json"))
        return transfer

    @app.get("/v1/inbound_transfers/{transfer_id}")
    async def get_inbound(transfer_id: str) -> InboundTransfer:
        found = context.store.get(INBOUND, transfer_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no inbound transfer {transfer_id}")
        return InboundTransfer(**found)

    @app.post("/v1/payouts", status_code=201)
    async def create_payout(body: PayoutIn) -> Payout:
        """An accepted payout, its amount taken from the operating balance at once
        (sent too when the option payouts_auto_send is on); 409
        insufficient_funds, making nothing, when the balance is below it."""
        # No await between the check and the debit: no other request runs in
        # between, so two payouts can never both spend the same balance.
        available = available_minor(body.currency)
        if available < body.amount_minor:
            raise Refused(
                INSUFFICIENT_FUNDS,
                f"the operating account holds {available} {body.currency.value} minor units,"
                f" below the payout's {body.amount_minor}",
            )
        payout = Payout(
            id=f"po_{context.store.next_number(PAYOUTS):06d}",
            status="accepted",
            amount_minor=body.amount_minor,
            currency=body.currency,
            destination_iban=body.destination.iban,
            destination_name=body.destination.name,
            reference=body.reference,
            created_at=now_iso(),
        )
        context.store.put(PAYOUTS, payout.id, payout.model_dump(mode="json"))
        post_line(
            "payout",
            -payout.amount_minor,
            payout.currency,
            payout.reference,
            payout.id,
            payout.created_at,
        )
        if options().payouts_auto_send:
            return sent(payout)
        return payout

    @app.get("/v1/payouts/{payout_id}")
    async def get_payout(payout_id: str) -> Payout:
        return payout_or_404(payout_id)

    @app.get("/v1/payouts")
    async def payouts_by_reference(
        reference: Annotated[str, Query(min_length=1, max_length=PAYOUT_REFERENCE_CHARS_MAX)],
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(max_length=ID_CHARS_MAX)] = None,
    ) -> PayoutPage:
        """The payouts made with `reference`, oldest first, `limit` at a time: how
        a payer whose create went unanswered learns whether it was made."""
        found = sorted(
            (p for p in context.store.list(PAYOUTS) if p["reference"] == reference),
            key=lambda p: _number(p["id"]),
        )
        page, has_more = page_after(
            found,
            key="id",
            starting_after=starting_after,
            limit=limit,
            missing=f"no payout {starting_after} with this reference",
        )
        return PayoutPage(data=[Payout(**p) for p in page], has_more=has_more)

    @app.post("/v1/simulate/payouts/{payout_id}/send")
    async def simulate_send(payout_id: str) -> Payout:
        """The bank sends an accepted payout; webhook payout.sent."""
        return sent(payout_or_404(payout_id))

    @app.post("/v1/simulate/payouts/{payout_id}/fail")
    async def simulate_fail(payout_id: str, body: FailIn) -> Payout:
        """The bank gives up on an accepted payout: its amount comes back to the
        balance; webhook payout.failed."""
        payout = payout_or_404(payout_id)
        if payout.status != "accepted":
            raise HTTPException(
                status_code=409,
                detail=f"payout {payout_id} is {payout.status}; only an accepted one can fail",
            )
        failed = payout.model_copy(
            update={"status": "failed", "failure_reason": body.reason, "failed_at": now_iso()}
        )
        post_line(
            "payout_failed",
            failed.amount_minor,
            failed.currency,
            failed.reference,
            failed.id,
            failed.failed_at,
        )
        save_and_emit(failed, "payout.failed")
        return failed

    @app.post("/v1/simulate/payouts/{payout_id}/return")
    async def simulate_return(payout_id: str, body: ReturnIn) -> Payout:
        """The receiving bank sends a sent payout back: its amount comes back to
        the balance; webhook payout.returned."""
        payout = payout_or_404(payout_id)
        if payout.status != "sent":
            raise HTTPException(
                status_code=409,
                detail=f"payout {payout_id} is {payout.status}; only a sent one can come back",
            )
        returned = payout.model_copy(
            update={"status": "returned", "return_reason": body.reason, "returned_at": now_iso()}
        )
        post_line(
            "payout_returned",
            returned.amount_minor,
            returned.currency,
            returned.reference,
            returned.id,
            returned.returned_at,
        )
        save_and_emit(returned, "payout.returned")
        return returned

    @app.get("/v1/balances/{currency}")
    async def balance(currency: Currency) -> BankBalance:
        """What the operating account holds in `currency`, available to pay out."""
        return BankBalance(currency=currency, available_minor=available_minor(currency))

    @app.get("/v1/statement")
    async def statement(
        currency: Currency,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        starting_after: Annotated[str | None, Query(max_length=ID_CHARS_MAX)] = None,
    ) -> StatementPage:
        """The operating account's movements in `currency`, oldest first, `limit`
        at a time; pass the last line's id as `starting_after` for the next page."""
        page, has_more = page_after(
            [line.model_dump(mode="json") for line in lines(currency)],
            key="id",
            starting_after=starting_after,
            limit=limit,
            missing=f"no {currency.value} statement line {starting_after}",
        )
        return StatementPage(data=[StatementLine(**line) for line in page], has_more=has_more)

    return app
