"""The Tron custody client against the real simulator: its contract and how it meets faults."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.providers.tron import TronClient
from schemas.money import Currency
from schemas.tron import INSUFFICIENT_FUNDS, ChainWithdrawal, CustodyBalance
from tests.activities.providers.test_bank_client import answers_lost
from tests.polling import until
from tests.simulators.waiting import everything_received

# 250.000001 USDT: the last micro-unit must survive the round trip.
AMOUNT_MICRO_USDT = 250_000_001
SENDER = "TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU7"
FAST_TIMEOUT = httpx.Timeout(connect=1.0, read=1.0, write=1.0, pool=1.0)


# The customer's own wallet a withdrawal goes to.
RECIPIENT = SENDER
OPENING_MICRO_USDT = 9_000_000_000


def client(sim: Any, **kwargs: Any) -> TronClient:
    return TronClient(sim.provider_url("tron"), **kwargs)


async def send(tron: TronClient, key: str = "wd-1", **fields: Any) -> ChainWithdrawal:
    return await tron.send_usdt(
        **{
            "to_address": RECIPIENT,
            "amount_minor": AMOUNT_MICRO_USDT,
            "reference": "wd_1",
            "idempotency_key": key,
            **fields,
        }
    )


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


async def test_usdt_sent_from_custody_confirms_to_finality_through_the_client(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/tron", {"custody_opening_balance": OPENING_MICRO_USDT})
    async with client(sim) as tron:
        sent = await send(tron)
        assert (sent.status, sent.confirmations, sent.currency) == ("confirming", 0, Currency.USDT)
        assert (sent.to_address, sent.amount_minor, sent.reference) == (
            RECIPIENT,
            AMOUNT_MICRO_USDT,
            "wd_1",
        )
        assert await tron.get_withdrawal(sent.tx_hash) == sent
        assert await tron.custody_balance() == CustodyBalance(
            currency=Currency.USDT, balance_minor=OPENING_MICRO_USDT - AMOUNT_MICRO_USDT
        )
        await tron.mine_blocks(19, idempotency_key="mine-1")
        final = await tron.get_withdrawal(sent.tx_hash)
        assert (final.status, final.confirmations) == ("finalized", 19) and final.finalized_at
        assert await tron.withdrawals_by_reference("wd_1") == [final]
        assert (await tron.custody_balance()).balance_minor == (
            OPENING_MICRO_USDT - AMOUNT_MICRO_USDT
        )
        with pytest.raises(ApplicationError) as too_late:
            await tron.simulate_withdrawal_failed(sent.tx_hash, "reverted", idempotency_key="f-1")
    assert too_late.value.type == "ProviderConflict" and too_late.value.non_retryable
    received = await everything_received(sim, webhook_sink)
    assert [(r.event["type"], r.event["data"]["confirmations"]) for r in received] == [
        ("withdrawal.confirming", 0),
        ("withdrawal.confirming", 1),
        ("withdrawal.confirming", 6),
        ("withdrawal.confirming", 19),
        ("withdrawal.finalized", 19),
    ]
    assert ChainWithdrawal(**received[-1].event["data"]) == final


async def test_a_failed_withdrawal_through_the_client_leaves_custody_whole(sim: Any) -> None:
    sim.admin("PUT", "/options/tron", {"custody_opening_balance": OPENING_MICRO_USDT})
    async with client(sim) as tron:
        sent = await send(tron)
        failed = await tron.simulate_withdrawal_failed(
            sent.tx_hash, "out_of_energy", idempotency_key="fail-1"
        )
        assert (failed.status, failed.failure_reason) == ("failed", "out_of_energy")
        assert failed.failed_at
        assert (await tron.custody_balance()).balance_minor == OPENING_MICRO_USDT


async def test_a_send_above_custody_is_a_final_conflict_coded_insufficient_funds(
    sim: Any,
) -> None:
    sim.admin("PUT", "/options/tron", {"custody_opening_balance": AMOUNT_MICRO_USDT - 1})
    async with client(sim) as tron:
        with pytest.raises(ApplicationError) as refused:
            await send(tron)
        assert await tron.withdrawals_by_reference("wd_1") == []
    assert refused.value.type == "ProviderConflict" and refused.value.non_retryable
    [details] = refused.value.details
    assert (details["status"], details["code"]) == (409, INSUFFICIENT_FUNDS)


async def test_a_mistyped_address_or_an_unknown_withdrawal_is_a_final_error(sim: Any) -> None:
    async with client(sim) as tron:
        with pytest.raises(ApplicationError) as rejected:
            await send(tron, to_address="TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU8")
        with pytest.raises(ApplicationError) as missing:
            await tron.get_withdrawal("e" * 64)
        assert await tron.withdrawals_by_reference("wd_1") == []
    assert rejected.value.type == "ProviderRejectedRequest" and rejected.value.non_retryable
    assert rejected.value.details[0]["code"] == "value_error at body.to_address"
    assert missing.value.type == "ProviderNotFound"


async def test_a_send_whose_answer_is_lost_is_found_by_reference_and_its_retry_is_that_one(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/tron", {"custody_opening_balance": OPENING_MICRO_USDT})
    async with (
        answers_lost(sim.provider_url("tron")) as url,
        TronClient(url, timeout=FAST_TIMEOUT) as tron,
    ):
        with pytest.raises(ApplicationError) as unanswered:
            await send(tron, key="withdrawal/wd_1/send")
        assert unanswered.value.type == "ProviderTimeout" and not unanswered.value.non_retryable
        [made] = await until(
            lambda: tron.withdrawals_by_reference("wd_1"), bool, "the unanswered send found"
        )
        assert await send(tron, key="withdrawal/wd_1/send") == made
        assert await tron.withdrawals_by_reference("wd_1") == [made]
        assert (await tron.custody_balance()).balance_minor == (
            OPENING_MICRO_USDT - AMOUNT_MICRO_USDT
        )
    [event] = await everything_received(sim, webhook_sink)
    assert (event.event["type"], ChainWithdrawal(**event.event["data"])) == (
        "withdrawal.confirming",
        made,
    )
