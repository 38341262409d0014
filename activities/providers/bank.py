"""Client of the bank's API: inbound transfers, payouts, the operating balance and statement.

A payout refused for the operating balance is a ProviderConflict whose code is
`insufficient_funds` (schemas.bank.INSUFFICIENT_FUNDS); like every answer to a
keyed call, the refusal is what a retry with the same key gets again. A create
that went unanswered (ProviderTimeout, ProviderUnreachable) may or may not have
made the payout: `payouts_by_reference` tells, and a retry with the same key
returns the payout it made, never a second one.

The simulate_* calls exist only on the sandbox; the demo and tests use them.
"""

from __future__ import annotations

from typing import Any

from temporalio.exceptions import ApplicationError

from activities.providers.http import ProviderClient
from schemas.bank import (
    BankBalance,
    InboundTransfer,
    Payout,
    PayoutPage,
    ReturnReason,
    StatementLine,
    StatementPage,
)
from schemas.money import Currency
from schemas.providers import BANK

# The most the bank answers per page; the list calls read pages of it.
PAGE_SIZE_MAX = 200
# Payouts under one reference are a handful (a retried withdrawal at most).
PAYOUT_PAGES_MAX = 10
# Beyond this many lines a statement is read page by page (statement_page).
STATEMENT_PAGES_MAX = 100


class BankClient(ProviderClient):
    provider = BANK

    async def get_inbound_transfer(self, transfer_id: str) -> InboundTransfer:
        return await self.call("GET", f"/v1/inbound_transfers/{transfer_id}", InboundTransfer)

    async def create_payout(
        self,
        *,
        amount_minor: int,
        currency: Currency,
        iban: str,
        name: str,
        reference: str,
        idempotency_key: str,
    ) -> Payout:
        """Pay `amount_minor` out of the operating account to the IBAN; `reference`
        is the payer's own id for it (a withdrawal request's). The payout is
        accepted (or already sent); ProviderRejectedRequest names a bad field
        (the IBAN), ProviderConflict `insufficient_funds` when the balance is short."""
        return await self.call(
            "POST",
            "/v1/payouts",
            Payout,
            json={
                "amount_minor": amount_minor,
                "currency": currency.value,
                "destination": {"iban": iban, "name": name},
                "reference": reference,
            },
            idempotency_key=idempotency_key,
        )

    async def get_payout(self, payout_id: str) -> Payout:
        return await self.call("GET", f"/v1/payouts/{payout_id}", Payout)

    async def payout_once(
        self,
        *,
        amount_minor: int,
        currency: Currency,
        iban: str,
        name: str,
        reference: str,
        idempotency_key: str,
    ) -> Payout:
        """The payout of `reference`: the one the bank holds already (a create
        whose answer was lost, a retry after a crash), else one made now with
        the key. Never two: the bank is asked first, and the key makes a
        repeated create the same payout. Two already there is non-retryable
        PayoutDuplicated, for an operator."""
        made = await self.payouts_by_reference(reference)
        if len(made) > 1:
            raise ApplicationError(
                f"the bank holds {len(made)} payouts with reference {reference}",
                type="PayoutDuplicated",
                non_retryable=True,
            )
        if made:
            return made[0]
        return await self.create_payout(
            amount_minor=amount_minor,
            currency=currency,
            iban=iban,
            name=name,
            reference=reference,
            idempotency_key=idempotency_key,
        )

    async def payouts_by_reference(self, reference: str) -> list[Payout]:
        """Every payout made with `reference`, oldest first (none when a create
        that went unanswered never reached the bank)."""
        payouts: list[Payout] = []
        params: dict[str, Any] = {"reference": reference, "limit": PAGE_SIZE_MAX}
        for _ in range(PAYOUT_PAGES_MAX):
            page = await self.call("GET", "/v1/payouts", PayoutPage, params=params)
            payouts += page.data
            if not page.has_more:
                return payouts
            params["starting_after"] = page.data[-1].id
        raise RuntimeError(
            f"more than {PAYOUT_PAGES_MAX * PAGE_SIZE_MAX} payouts share a reference"
        )

    async def balance(self, currency: Currency) -> BankBalance:
        """What the operating account holds in `currency`, available to pay out."""
        return await self.call("GET", f"/v1/balances/{currency.value}", BankBalance)

    async def statement_page(
        self, currency: Currency, *, limit: int | None = None, starting_after: str | None = None
    ) -> StatementPage:
        """One page of the operating account's movements in `currency`, oldest first."""
        params: dict[str, Any] = {"currency": currency.value}
        if limit is not None:
            params["limit"] = limit
        if starting_after is not None:
            params["starting_after"] = starting_after
        return await self.call("GET", "/v1/statement", StatementPage, params=params)

    async def statement(self, currency: Currency) -> list[StatementLine]:
        """Every movement of the operating account in `currency`, oldest first:
        inbound transfers and returned or failed payouts positive, payouts negative."""
        lines: list[StatementLine] = []
        starting_after: str | None = None
        for _ in range(STATEMENT_PAGES_MAX):
            page = await self.statement_page(
                currency, limit=PAGE_SIZE_MAX, starting_after=starting_after
            )
            lines += page.data
            if not page.has_more:
                return lines
            starting_after = page.data[-1].id
        raise RuntimeError(
            f"the {currency.value} statement is longer than"
            f" {STATEMENT_PAGES_MAX * PAGE_SIZE_MAX} lines: read it with statement_page"
        )

    async def simulate_inbound_transfer(
        self,
        *,
        reference: str,
        amount_minor: int,
        currency: Currency,
        sender_name: str,
        idempotency_key: str,
    ) -> InboundTransfer:
        """Sandbox only: make a transfer arrive (the demo and tests use it)."""
        return await self.call(
            "POST",
            "/v1/simulate/inbound_transfers",
            InboundTransfer,
            json={
                "reference": reference,
                "amount_minor": amount_minor,
                "currency": currency.value,
                "sender_name": sender_name,
            },
            idempotency_key=idempotency_key,
        )

    async def simulate_payout_sent(self, payout_id: str, *, idempotency_key: str) -> Payout:
        """Sandbox only: the bank sends an accepted payout."""
        return await self.call(
            "POST",
            f"/v1/simulate/payouts/{payout_id}/send",
            Payout,
            idempotency_key=idempotency_key,
        )

    async def simulate_payout_failed(
        self, payout_id: str, reason: str, *, idempotency_key: str
    ) -> Payout:
        """Sandbox only: the bank gives up on an accepted payout (`reason` a code
        such as account_frozen); its amount comes back to the balance."""
        return await self.call(
            "POST",
            f"/v1/simulate/payouts/{payout_id}/fail",
            Payout,
            json={"reason": reason},
            idempotency_key=idempotency_key,
        )

    async def simulate_payout_returned(
        self, payout_id: str, reason: ReturnReason, *, idempotency_key: str
    ) -> Payout:
        """Sandbox only: the receiving bank sends a sent payout back; its amount
        comes back to the balance."""
        return await self.call(
            "POST",
            f"/v1/simulate/payouts/{payout_id}/return",
            Payout,
            json={"reason": reason},
            idempotency_key=idempotency_key,
        )
