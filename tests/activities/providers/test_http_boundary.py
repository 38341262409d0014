"""The provider boundary against a real simulator: each fault mode and how the client reacts."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.providers.bank import BankClient
from schemas.money import Currency


def client(sim: Any, **kwargs: Any) -> BankClient:
    return BankClient(sim.provider_url("bank"), **kwargs)


async def arrive(bank: BankClient, key: str = "k-1", amount: int = 500) -> Any:
    return await bank.simulate_inbound_transfer(
        reference="INV-9",
        amount_minor=amount,
        currency=Currency.EUR,
        sender_name="ACME",
        idempotency_key=key,
    )


async def test_a_call_parses_into_the_response_model(sim: Any) -> None:
    async with client(sim) as bank:
        created = await arrive(bank)
        assert (await bank.get_inbound_transfer(created.id)) == created


async def test_connection_drops_are_retried_in_the_call_when_keyed(sim: Any) -> None:
    sim.fault(path_prefix="/bank/v1/simulate", kind="drop", times=2)
    async with client(sim) as bank:
        created = await arrive(bank, key="drop-1")
    assert created.amount_minor == 500
    [record] = sim.admin("GET", "/webhooks")
    assert record["event_id"]  # exactly one transfer was made


async def test_a_short_429_is_waited_out_in_the_call(sim: Any) -> None:
    sim.fault(path_prefix="/bank/v1/simulate", kind="rate_limit", seconds=1, times=1)
    started = time.monotonic()
    async with client(sim) as bank:
        await arrive(bank)
    assert time.monotonic() - started >= 1.0


async def test_a_long_429_is_left_to_temporal_with_its_delay(sim: Any) -> None:
    sim.fault(path_prefix="/bank/v1/simulate", kind="rate_limit", seconds=30, times=1)
    async with client(sim) as bank:
        with pytest.raises(ApplicationError) as error:
            await arrive(bank)
    assert error.value.type == "ProviderRateLimited" and not error.value.non_retryable
    assert error.value.next_retry_delay == timedelta(seconds=30)


@pytest.mark.parametrize(
    ("fault", "kind", "retryable"),
    [
        ({"kind": "error", "status": 503}, "ProviderUnavailable", True),
        ({"kind": "timeout", "seconds": 3}, "ProviderTimeout", True),
    ],
)
async def test_server_faults_become_retryable_errors(
    sim: Any, fault: dict[str, Any], kind: str, retryable: bool
) -> None:
    sim.fault(path_prefix="/bank/v1/simulate", times=1, **fault)
    timeout = httpx.Timeout(connect=1.0, read=1.0, write=1.0, pool=1.0)
    async with client(sim, timeout=timeout) as bank:
        with pytest.raises(ApplicationError) as error:
            await arrive(bank)
        assert error.value.type == kind and error.value.non_retryable is not retryable
        # The retry Temporal makes with the same key succeeds, once.
        await arrive(bank)
        assert len(sim.admin("GET", "/webhooks")) == 1


async def test_an_unreachable_provider_is_retryable(sim: Any) -> None:
    async with BankClient("http://127.0.0.1:9") as bank:
        with pytest.raises(ApplicationError) as error:
            await bank.get_inbound_transfer("ibt_1")
    assert error.value.type == "ProviderUnreachable" and not error.value.non_retryable


async def test_client_errors_are_final(sim: Any) -> None:
    async with client(sim) as bank:
        with pytest.raises(ApplicationError) as missing:
            await bank.get_inbound_transfer("ibt_nope")
        await arrive(bank, key="same")
        with pytest.raises(ApplicationError) as conflict:
            await arrive(bank, key="same", amount=501)
    assert missing.value.type == "ProviderNotFound" and missing.value.non_retryable
    assert conflict.value.type == "ProviderConflict" and conflict.value.non_retryable


async def test_a_response_that_breaks_the_contract_is_final(sim: Any) -> None:
    class Broken(BankClient):
        async def get_inbound_transfer(self, transfer_id: str) -> Any:
            return await self.call("GET", "/_admin/health", int)

    async with Broken(sim.url) as bank:
        with pytest.raises(ApplicationError) as error:
            await bank.get_inbound_transfer("x")
    assert error.value.type == "ProviderContractError" and error.value.non_retryable


async def test_a_mutating_call_without_a_key_is_refused_before_sending(sim: Any) -> None:
    async with client(sim) as bank:
        with pytest.raises(ValueError, match="idempotency key"):
            await bank.call("POST", "/v1/simulate/inbound_transfers", dict, json={})
