"""Client of the Tron (USDT-TRC20) custody API: deposit addresses and deposits,
USDT sent from custody, and the custody balance.

A send refused for the custody balance is a ProviderConflict whose code is
`insufficient_funds` (schemas.tron.INSUFFICIENT_FUNDS); like every answer to a
keyed call, the refusal is what a retry with the same key gets again. A send
that went unanswered (ProviderTimeout, ProviderUnreachable) may or may not
have been broadcast: `withdrawals_by_reference` tells, and a retry with the
same key returns the withdrawal it made, never a second one.

The simulate_* and mine_blocks calls exist only on the sandbox; the demo and
tests use them to move the chain.
"""

from __future__ import annotations

from typing import Any

from activities.providers.http import ProviderClient
from schemas.providers import TRON
from schemas.tron import (
    ChainHead,
    ChainWithdrawal,
    CustodyBalance,
    Deposit,
    DepositAddress,
    DepositPage,
    WithdrawalPage,
)

# The most custody answers per page; withdrawals_by_reference reads pages of it.
PAGE_SIZE_MAX = 200
# Withdrawals under one reference are a handful (a retried request at most).
WITHDRAWAL_PAGES_MAX = 10


class TronClient(ProviderClient):
    provider = TRON

    async def get_or_create_address(
        self, customer_id: str, *, idempotency_key: str
    ) -> DepositAddress:
        """The customer's deposit address; the same one on every call for that customer."""
        return await self.call(
            "POST",
            "/v1/addresses",
            DepositAddress,
            json={"customer_id": customer_id},
            idempotency_key=idempotency_key,
        )

    async def customer_address(self, customer_id: str) -> DepositAddress:
        """The customer's deposit address, under the one key every caller uses
        for it (the CLI, the gateway): asked any number of times, one address."""
        return await self.get_or_create_address(
            customer_id, idempotency_key=f"deposit-address/{customer_id}"
        )

    async def get_address(self, address: str) -> DepositAddress:
        return await self.call("GET", f"/v1/addresses/{address}", DepositAddress)

    async def get_deposit(self, tx_hash: str) -> Deposit:
        return await self.call("GET", f"/v1/deposits/{tx_hash}", Deposit)

    async def list_deposits(
        self, address: str, *, limit: int | None = None, starting_after: str | None = None
    ) -> DepositPage:
        """One page of the address's deposits, oldest first; the provider's
        default page size unless `limit` is given."""
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if starting_after is not None:
            params["starting_after"] = starting_after
        return await self.call(
            "GET", f"/v1/addresses/{address}/deposits", DepositPage, params=params
        )

    async def simulate_deposit(
        self, *, address: str, amount_minor: int, from_address: str, idempotency_key: str
    ) -> Deposit:
        """Sandbox only: a transfer of `amount_minor` micro-USDT lands at `address`."""
        return await self.call(
            "POST",
            "/v1/simulate/deposits",
            Deposit,
            json={"address": address, "amount_minor": amount_minor, "from_address": from_address},
            idempotency_key=idempotency_key,
        )

    async def mine_blocks(self, count: int, *, idempotency_key: str) -> ChainHead:
        """Sandbox only: mine `count` blocks, confirming open deposits."""
        return await self.call(
            "POST",
            "/v1/simulate/blocks",
            ChainHead,
            json={"count": count},
            idempotency_key=idempotency_key,
        )

    async def simulate_reorg(self, tx_hash: str, *, idempotency_key: str) -> Deposit:
        """Sandbox only: a reorg drops the deposit; ProviderConflict once it is final."""
        return await self.call(
            "POST",
            f"/v1/simulate/deposits/{tx_hash}/reorg",
            Deposit,
            idempotency_key=idempotency_key,
        )

    async def send_usdt(
        self, *, to_address: str, amount_minor: int, reference: str, idempotency_key: str
    ) -> ChainWithdrawal:
        """Send `amount_minor` micro-USDT from custody to `to_address`; `reference` is
        the payer's own id for it (a withdrawal request's). The withdrawal is
        confirming in the head block; ProviderRejectedRequest names a bad field
        (an address whose checksum fails), ProviderConflict `insufficient_funds`
        when custody holds less."""
        return await self.call(
            "POST",
            "/v1/withdrawals",
            ChainWithdrawal,
            json={"to_address": to_address, "amount_minor": amount_minor, "reference": reference},
            idempotency_key=idempotency_key,
        )

    async def get_withdrawal(self, tx_hash: str) -> ChainWithdrawal:
        return await self.call("GET", f"/v1/withdrawals/{tx_hash}", ChainWithdrawal)

    async def withdrawals_by_reference(self, reference: str) -> list[ChainWithdrawal]:
        """Every withdrawal sent with `reference`, oldest first (none when a send
        that went unanswered never reached custody)."""
        withdrawals: list[ChainWithdrawal] = []
        params: dict[str, Any] = {"reference": reference, "limit": PAGE_SIZE_MAX}
        for _ in range(WITHDRAWAL_PAGES_MAX):
            page = await self.call("GET", "/v1/withdrawals", WithdrawalPage, params=params)
            withdrawals += page.data
            if not page.has_more:
                return withdrawals
            params["starting_after"] = page.data[-1].tx_hash
        raise RuntimeError(
            f"more than {WITHDRAWAL_PAGES_MAX * PAGE_SIZE_MAX} withdrawals share a reference"
        )

    async def custody_balance(self) -> CustodyBalance:
        """What custody holds: finalized deposits in, every withdrawal not failed out."""
        return await self.call("GET", "/v1/custody/balance", CustodyBalance)

    async def simulate_withdrawal_failed(
        self, tx_hash: str, reason: str, *, idempotency_key: str
    ) -> ChainWithdrawal:
        """Sandbox only: a confirming withdrawal fails (`reason` a code such as
        out_of_energy or reverted), its money staying in custody; ProviderConflict
        once it is final."""
        return await self.call(
            "POST",
            f"/v1/simulate/withdrawals/{tx_hash}/fail",
            ChainWithdrawal,
            json={"reason": reason},
            idempotency_key=idempotency_key,
        )
