"""The Tron custody client against the real simulator: its contract and how it meets faults."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.providers.tron import TronClient
from schemas.money import Currency

# 250.000001 USDT: the last micro-unit must survive the round trip.
AMOUNT_MICRO_USDT = 250_000_001
SENDER = "TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU7"
FAST_TIMEOUT = httpx.Timeout(connect=1.0, read=1.0, write=1.0, pool=1.0)


def client(sim: Any, **kwargs: Any) -> TronClient:
    return TronClient(sim.provider_url("tron"), **kwargs)


async def test_a_deposit_goes_from_detected_to_final_through_the_client(
    sim: Any, webhook_sink: Any
) -> None:
    async with client(sim) as tron:
        address = await tron.get_or_create_address("cus_7", idempotency_key="addr-1")
        # A new key, the same customer: the same address.
        assert await tron.get_or_create_address("cus_7", idempotency_key="addr-2") == address
        assert await tron.get_address(address.address) == address

        detected = await tron.simulate_deposit(
            address=address.address,
            amount_minor=AMOUNT_MICRO_USDT,
            from_address=SENDER,
            idempotency_key="dep-1",
        )
        assert (detected.status, detected.confirmations) == ("confirming", 0)
        head = await tron.mine_blocks(19, idempotency_key="mine-1")
        assert head.blocks_mined == 19
        assert head.head_block_number == detected.block_number + 19

        final = await tron.get_deposit(detected.tx_hash)
        assert (final.status, final.confirmations) == ("finalized", 19)
        assert final.amount_minor == AMOUNT_MICRO_USDT and final.currency is Currency.USDT
        assert final.customer_id == "cus_7"
        page = await tron.list_deposits(address.address)
        assert page.data == [final] and not page.has_more

        with pytest.raises(ApplicationError) as conflict:
            await tron.simulate_reorg(detected.tx_hash, idempotency_key="reorg-1")
    assert conflict.value.type == "ProviderConflict" and conflict.value.non_retryable
    received = await webhook_sink.wait_for(5)
    assert received[-1].event["type"] == "deposit.finalized"


async def test_a_reorg_through_the_client_drops_an_unfinal_deposit(
    sim: Any, webhook_sink: Any
) -> None:
    async with client(sim) as tron:
        address = await tron.get_or_create_address("cus_7", idempotency_key="addr-1")
        detected = await tron.simulate_deposit(
            address=address.address, amount_minor=1, from_address=SENDER, idempotency_key="dep-1"
        )
        dropped = await tron.simulate_reorg(detected.tx_hash, idempotency_key="reorg-1")
    assert dropped.status == "dropped" and dropped.dropped_at
    received = await webhook_sink.wait_for(2)
    assert [r.event["type"] for r in received] == ["deposit.detected", "deposit.dropped"]


async def test_a_dropped_connection_on_a_keyed_deposit_is_retried_leaving_one_deposit(
    sim: Any, webhook_sink: Any
) -> None:
    async with client(sim) as tron:
        address = await tron.get_or_create_address("cus_7", idempotency_key="addr-1")
        sim.fault(path_prefix="/tron/v1/simulate/deposits", kind="drop", times=1)
        detected = await tron.simulate_deposit(
            address=address.address,
            amount_minor=AMOUNT_MICRO_USDT,
            from_address=SENDER,
            idempotency_key="dep-1",
        )
        page = await tron.list_deposits(address.address)
    assert [deposit.tx_hash for deposit in page.data] == [detected.tx_hash]
    [detection] = await webhook_sink.wait_for(1)
    assert detection.event["data"]["tx_hash"] == detected.tx_hash


async def test_a_503_while_mining_is_retryable_and_the_keyed_retry_mines_once(
    sim: Any, webhook_sink: Any
) -> None:
    async with client(sim, timeout=FAST_TIMEOUT) as tron:
        address = await tron.get_or_create_address("cus_7", idempotency_key="addr-1")
        detected = await tron.simulate_deposit(
            address=address.address, amount_minor=1, from_address=SENDER, idempotency_key="dep-1"
        )
        sim.fault(path_prefix="/tron/v1/simulate/blocks", kind="error", status=503, times=1)
        with pytest.raises(ApplicationError) as error:
            await tron.mine_blocks(5, idempotency_key="mine-1")
        assert error.value.type == "ProviderUnavailable" and not error.value.non_retryable

        # Temporal's retry and any repeat of it, with the same key: five blocks, once.
        first = await tron.mine_blocks(5, idempotency_key="mine-1")
        assert await tron.mine_blocks(5, idempotency_key="mine-1") == first
        assert (await tron.get_deposit(detected.tx_hash)).confirmations == 5
    received = await webhook_sink.wait_for(2)
    assert [r.event["type"] for r in received] == ["deposit.detected", "deposit.confirmations"]


async def test_unknown_things_and_bad_input_are_final_errors(sim: Any) -> None:
    async with client(sim) as tron:
        with pytest.raises(ApplicationError) as missing:
            await tron.get_deposit("f" * 64)
        with pytest.raises(ApplicationError) as unknown_address:
            await tron.get_address(SENDER)
        address = await tron.get_or_create_address("cus_7", idempotency_key="addr-1")
        with pytest.raises(ApplicationError) as rejected:
            await tron.simulate_deposit(
                address=address.address,
                amount_minor=0,
                from_address=SENDER,
                idempotency_key="dep-0",
            )
    assert missing.value.type == unknown_address.value.type == "ProviderNotFound"
    assert rejected.value.type == "ProviderRejectedRequest" and rejected.value.non_retryable
    assert "amount_minor" in str(rejected.value)
