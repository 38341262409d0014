"""Client of the bank's inbound-transfer API."""

from __future__ import annotations

from activities.providers.http import ProviderClient
from schemas.bank import InboundTransfer
from schemas.money import Currency
from schemas.providers import BANK


class BankClient(ProviderClient):
    provider = BANK

    async def get_inbound_transfer(self, transfer_id: str) -> InboundTransfer:
        return await self.call("GET", f"/v1/inbound_transfers/{transfer_id}", InboundTransfer)

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
