"""Client of the Tron (USDT-TRC20) custody API: deposit addresses and deposits.

The simulate_* and mine_blocks calls exist only on the sandbox; the demo and
tests use them to move the chain.
"""

from __future__ import annotations

from typing import Any

from activities.providers.http import ProviderClient
from schemas.providers import TRON
from schemas.tron import ChainHead, Deposit, DepositAddress, DepositPage


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
