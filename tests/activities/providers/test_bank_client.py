"""The bank client against the real simulator: payouts, the balance and statement, and
what a payer does when a create goes unanswered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.providers.bank import BankClient
from schemas.bank import INSUFFICIENT_FUNDS, BankBalance, Payout
from schemas.money import Currency
from tests.polling import until
from tests.simulators.waiting import everything_received

IBAN = "GB82WEST12345698765432"
OPENING_GBP_MINOR = 1_000_000
# 4321.09 GBP: both decimal places significant.
AMOUNT_MINOR = 432_109
FAST_TIMEOUT = httpx.Timeout(connect=1.0, read=1.0, write=1.0, pool=1.0)
RELAY_CHUNK_BYTES = 64 * 1024


def client(url: str, **kwargs: Any) -> BankClient:
    return BankClient(url, **kwargs)


async def pay(bank: BankClient, key: str = "po-1", **fields: Any) -> Payout:
    return await bank.create_payout(
        **{
            "amount_minor": AMOUNT_MINOR,
            "currency": Currency.GBP,
            "iban": IBAN,
            "name": "Grace Hopper",
            "reference": "wd_1",
            "idempotency_key": key,
            **fields,
        }
    )


@contextlib.asynccontextmanager
async def answers_lost(upstream_url: str, connections: int = 1) -> AsyncIterator[str]:
    """A loopback relay to `upstream_url` that delivers every request, but on its
    first `connections` connections keeps the provider's answer from the caller:
    the provider did what it was asked, and the caller's read times out. Yields
    the URL to call instead of `upstream_url`."""
    upstream = httpx.URL(upstream_url)
    losing = connections

    async def relay(caller_in: asyncio.StreamReader, caller_out: asyncio.StreamWriter) -> None:
        nonlocal losing
        lose = losing > 0
        losing -= 1
        provider_in, provider_out = await asyncio.open_connection(upstream.host, upstream.port)
        answered = asyncio.Event()

        async def requests() -> None:
            while chunk := await caller_in.read(RELAY_CHUNK_BYTES):
                provider_out.write(chunk)
                await provider_out.drain()
            # The caller gave up; the provider still finishes its answer (a
            # provider seeing the caller leave might drop the request instead).
            await answered.wait()
            provider_out.close()

        async def answers() -> None:
            while chunk := await provider_in.read(RELAY_CHUNK_BYTES):
                answered.set()
                if not lose:
                    caller_out.write(chunk)
                    await caller_out.drain()
            answered.set()
            caller_out.close()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(requests(), answers())

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield str(upstream.copy_with(host="127.0.0.1", port=port))
    finally:
        server.close()


async def test_a_payout_goes_out_and_comes_back_through_the_client(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/bank", {"opening_balances": {"GBP": OPENING_GBP_MINOR}})
    async with client(sim.provider_url("bank")) as bank:
        accepted = await pay(bank)
        assert (accepted.id, accepted.status, accepted.amount_minor) == (
            "po_000001",
            "accepted",
            AMOUNT_MINOR,
        )
        assert (accepted.currency, accepted.destination_iban) == (Currency.GBP, IBAN)
        assert (accepted.destination_name, accepted.reference) == ("Grace Hopper", "wd_1")
        assert await bank.get_payout(accepted.id) == accepted
        assert await bank.balance(Currency.GBP) == BankBalance(
            currency=Currency.GBP, available_minor=OPENING_GBP_MINOR - AMOUNT_MINOR
        )

        sent = await bank.simulate_payout_sent(accepted.id, idempotency_key="send-1")
        assert sent.status == "sent" and sent.sent_at
        returned = await bank.simulate_payout_returned(
            accepted.id, "beneficiary_refused", idempotency_key="return-1"
        )
        assert (returned.status, returned.return_reason) == ("returned", "beneficiary_refused")
        assert await bank.payouts_by_reference("wd_1") == [returned]
        assert (await bank.balance(Currency.GBP)).available_minor == OPENING_GBP_MINOR
        lines = await bank.statement(Currency.GBP)
    assert [(x.kind, x.amount_minor, x.reference, x.source_id, x.at) for x in lines] == [
        ("payout", -AMOUNT_MINOR, "wd_1", "po_000001", accepted.created_at),
        ("payout_returned", AMOUNT_MINOR, "wd_1", "po_000001", returned.returned_at),
    ]
    received = await everything_received(sim, webhook_sink)
    assert [(r.event["type"], Payout(**r.event["data"])) for r in received] == [
        ("payout.sent", sent),
        ("payout.returned", returned),
    ]


async def test_a_failed_payout_through_the_client_gives_the_money_back(sim: Any) -> None:
    sim.admin("PUT", "/options/bank", {"opening_balances": {"GBP": OPENING_GBP_MINOR}})
    async with client(sim.provider_url("bank")) as bank:
        accepted = await pay(bank)
        failed = await bank.simulate_payout_failed(
            accepted.id, "compliance_rejected", idempotency_key="fail-1"
        )
        assert (failed.status, failed.failure_reason) == ("failed", "compliance_rejected")
        assert failed.failed_at and failed.sent_at is None
        assert (await bank.balance(Currency.GBP)).available_minor == OPENING_GBP_MINOR
        with pytest.raises(ApplicationError) as illegal:
            await bank.simulate_payout_sent(accepted.id, idempotency_key="send-1")
    assert illegal.value.type == "ProviderConflict" and illegal.value.non_retryable


async def test_a_payout_above_the_balance_is_a_final_conflict_coded_insufficient_funds(
    sim: Any,
) -> None:
    sim.admin("PUT", "/options/bank", {"opening_balances": {"GBP": AMOUNT_MINOR - 1}})
    async with client(sim.provider_url("bank")) as bank:
        with pytest.raises(ApplicationError) as refused:
            await pay(bank)
        assert await bank.payouts_by_reference("wd_1") == []
        assert (await bank.balance(Currency.GBP)).available_minor == AMOUNT_MINOR - 1
    assert refused.value.type == "ProviderConflict" and refused.value.non_retryable
    [details] = refused.value.details
    assert (details["status"], details["code"]) == (409, INSUFFICIENT_FUNDS)


async def test_a_bad_iban_or_an_unknown_payout_is_a_final_error_naming_it(sim: Any) -> None:
    async with client(sim.provider_url("bank")) as bank:
        with pytest.raises(ApplicationError) as rejected:
            await pay(bank, iban="GB82WEST12345698765433")
        with pytest.raises(ApplicationError) as missing:
            await bank.get_payout("po_424242")
    assert rejected.value.type == "ProviderRejectedRequest" and rejected.value.non_retryable
    assert rejected.value.details[0]["code"] == "value_error at body.destination.iban"
    assert missing.value.type == "ProviderNotFound" and missing.value.non_retryable


async def test_a_create_whose_answer_is_lost_is_found_by_reference_and_its_retry_is_that_payout(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/bank", {"opening_balances": {"GBP": OPENING_GBP_MINOR}})
    async with (
        answers_lost(sim.provider_url("bank")) as url,
        client(url, timeout=FAST_TIMEOUT) as bank,
    ):
        with pytest.raises(ApplicationError) as unanswered:
            await pay(bank, key="withdrawal/wd_1/payout")
        assert unanswered.value.type == "ProviderTimeout" and not unanswered.value.non_retryable

        # The bank made it; asking by the payer's own reference tells.
        [made] = await until(
            lambda: bank.payouts_by_reference("wd_1"), bool, "the unanswered payout found"
        )
        assert (made.status, made.amount_minor) == ("accepted", AMOUNT_MINOR)
        # The retry Temporal makes, with the same key: that payout, not a second.
        assert await pay(bank, key="withdrawal/wd_1/payout") == made
        assert await bank.payouts_by_reference("wd_1") == [made]
        assert (await bank.balance(Currency.GBP)).available_minor == (
            OPENING_GBP_MINOR - AMOUNT_MINOR
        )
    assert await everything_received(sim, webhook_sink) == []


async def test_a_create_timed_out_by_the_bank_is_retryable_and_its_keyed_retry_makes_one(
    sim: Any,
) -> None:
    sim.fault(path_prefix="/bank/v1/payouts", method="POST", kind="timeout", seconds=2, times=1)
    async with client(sim.provider_url("bank"), timeout=FAST_TIMEOUT) as bank:
        with pytest.raises(ApplicationError) as unanswered:
            await pay(bank)
        assert unanswered.value.type == "ProviderTimeout" and not unanswered.value.non_retryable
        retried = await pay(bank)
        assert await pay(bank) == retried
        assert await bank.payouts_by_reference("wd_1") == [retried]


async def test_the_statement_reads_page_by_page(sim: Any) -> None:
    async with client(sim.provider_url("bank")) as bank:
        made = [
            await pay(bank, key=f"po-{n}", amount_minor=n, reference=f"wd_{n}") for n in range(1, 6)
        ]
        first = await bank.statement_page(Currency.GBP, limit=2)
        rest = await bank.statement_page(Currency.GBP, limit=4, starting_after=first.data[-1].id)
        whole = await bank.statement(Currency.GBP)
        assert await bank.statement(Currency.EUR) == []
    assert first.has_more and not rest.has_more
    assert [*first.data, *rest.data] == whole
    assert [(x.amount_minor, x.source_id) for x in whole] == [(-p.amount_minor, p.id) for p in made]
