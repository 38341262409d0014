"""The provider boundary against a real simulator: each fault mode and how the client reacts."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.providers.activities import ProviderClients
from activities.providers.bank import BankClient
from schemas.money import Currency
from tests.metrics import prometheus_runtime, scrape
from tests.polling import until


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


class ModuleSearches(importlib.abc.MetaPathFinder):
    """Records every module Python searches for: a module already imported is
    never searched for, so after a warm-up each entry is an import that failed
    and will be tried again, path by path, on the next call."""

    def __init__(self) -> None:
        self.searched: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        self.searched.append(fullname)
        return None


@contextmanager
def module_searches() -> Iterator[ModuleSearches]:
    probe = ModuleSearches()
    sys.meta_path.insert(0, probe)
    try:
        yield probe
    finally:
        sys.meta_path.remove(probe)


async def test_a_call_searches_for_no_module_once_warm(sim: Any) -> None:
    """httpcore asks `sniffio` which event loop runs it on every request, and
    without it installed each of those is a failed import searched on disk:
    about 0.3 ms of CPU per call, on every provider call and every simulator
    request on the authorization path."""
    async with client(sim) as bank:
        created = await arrive(bank, key="warm")
        with module_searches() as probe:
            await bank.get_inbound_transfer(created.id)
            await arrive(bank, key="warm-2")
    assert probe.searched == []


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


# ----- a failed call keeps no personal data ---------------------------------------------
#
# A provider's error body may echo what it was sent (a KYC 422 names the date of
# birth it refused). The error leaves the boundary as an exception message that
# Temporal's SDK logs and records, so it carries the status, the provider's own
# error code and its request id, never the body.

AUGUSTA = {
    "first_name": "Augusta",
    "last_name": "Byron-Kingsley",
    "date_of_birth": "1985-03-17",
    "email": "augusta.bk@example.org",
    "line1": "12 Ockham Lane",
    "phone": "+441632960961",
    "message": "your one-time code is 483920",
    "from_address": "TQyAugustaSenderAddressXXXXXXXXXX",
    "amount": "7654321",
}


async def call_carrying_personal_data(provider: str, base_url: str) -> Any:
    """One mutating call of each provider client, its body full of AUGUSTA."""
    from activities.providers.fx import FxClient
    from activities.providers.issuer import IssuerClient
    from activities.providers.kyc import KycClient
    from activities.providers.notify import NotifyClient
    from activities.providers.tron import TronClient
    from schemas.issuer import Address
    from schemas.notify import Channel

    url = f"{base_url}/{provider}"
    key = "personal-1"
    if provider == "kyc":
        async with KycClient(url) as kyc:
            return await kyc.create_applicant(
                external_customer_id="c-augusta",
                first_name=AUGUSTA["first_name"],
                last_name=AUGUSTA["last_name"],
                date_of_birth=date.fromisoformat(AUGUSTA["date_of_birth"]),
                country="GBR",
                idempotency_key=key,
            )
    if provider == "issuer":
        async with IssuerClient(url) as issuer:
            return await issuer.create_cardholder(
                first_name=AUGUSTA["first_name"],
                last_name=AUGUSTA["last_name"],
                email=AUGUSTA["email"],
                address=Address(
                    line1=AUGUSTA["line1"], city="London", postal_code="N1 9GU", country="GB"
                ),
                phone_number=AUGUSTA["phone"],
                idempotency_key=key,
            )
    if provider == "notify":
        async with NotifyClient(url) as notify:
            return await notify.send_message(
                channel=Channel.EMAIL,
                to=AUGUSTA["email"],
                body=AUGUSTA["message"],
                subject="Hello",
                idempotency_key=key,
            )
    if provider == "bank":
        async with BankClient(url) as bank:
            return await bank.simulate_inbound_transfer(
                reference="INV-9",
                amount_minor=500,
                currency=Currency.EUR,
                sender_name=f"{AUGUSTA['first_name']} {AUGUSTA['last_name']}",
                idempotency_key=key,
            )
    if provider == "tron":
        async with TronClient(url) as tron:
            return await tron.simulate_deposit(
                address="TCardflowDepositAddressXXXXXXXXXXX",
                amount_minor=5_000_000,
                from_address=AUGUSTA["from_address"],
                idempotency_key=key,
            )
    assert provider == "fx", provider
    async with FxClient(url) as fx:
        return await fx.create_quote(
            sell_currency=Currency.USD,
            buy_currency=Currency.EUR,
            sell_amount_minor=int(AUGUSTA["amount"]),
            idempotency_key=key,
        )


def texts_of(error: ApplicationError, records: list[logging.LogRecord]) -> list[str]:
    """Everything of a failed call that reaches a log line or a history."""
    formatter = logging.Formatter()
    texts = [str(error), error.message, repr(error.details), repr(error)]
    for record in records:
        texts.append(formatter.format(record))
        texts.append(repr(record.__dict__))
    return texts


def leaks(texts: list[str]) -> list[str]:
    return [value for value in AUGUSTA.values() if any(value in text for text in texts)]


@pytest.mark.parametrize("provider", ["kyc", "issuer", "notify", "bank", "tron", "fx"])
async def test_a_rejection_echoing_the_request_leaves_no_personal_data_in_the_error(
    sim: Any, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.fault(path_prefix=f"/{provider}/v1", kind="reject", times=1)
    with pytest.raises(ApplicationError) as raised:
        await call_carrying_personal_data(provider, sim.url)
    error = raised.value
    assert error.type == "ProviderRejectedRequest" and error.non_retryable
    # The provider did echo the request: that is what must not come through.
    assert leaks(texts_of(error, caplog.records)) == []
    # What is kept: the status, the provider's error code and field, its request id.
    [details] = error.details
    assert details["status"] == 422
    assert details["code"] == "value_error at body"
    assert details["request_id"].startswith("req_")
    assert "422" in error.message and details["request_id"] in error.message


async def test_the_kyc_providers_own_422_names_the_field_but_not_the_birth_date(
    sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from activities.providers.kyc import KycClient

    caplog.set_level(logging.DEBUG)
    born = date.today() + timedelta(days=400)  # the provider refuses a future birth date
    async with KycClient(sim.provider_url("kyc")) as kyc:
        with pytest.raises(ApplicationError) as raised:
            await kyc.create_applicant(
                external_customer_id="c-future",
                first_name=AUGUSTA["first_name"],
                last_name=AUGUSTA["last_name"],
                date_of_birth=born,
                country="GBR",
                idempotency_key="future-1",
            )
    texts = texts_of(raised.value, caplog.records)
    assert not [t for t in texts if born.isoformat() in t or AUGUSTA["first_name"] in t]
    assert raised.value.details[0]["code"] == "value_error at body.date_of_birth"


async def test_a_response_breaking_the_contract_keeps_none_of_its_content(
    sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from activities.providers.kyc import KycClient

    class Misread(KycClient):
        """A client whose model of the applicant is wrong about two personal fields."""

        async def applicant_as_numbers(self, applicant_id: str) -> Any:
            class Numbers(BaseModel):
                first_name: int
                date_of_birth: int

            return await self.call("GET", f"/v1/applicants/{applicant_id}", Numbers)

    caplog.set_level(logging.DEBUG)
    async with Misread(sim.provider_url("kyc")) as kyc:
        created = await kyc.create_applicant(
            external_customer_id="c-contract",
            first_name=AUGUSTA["first_name"],
            last_name=AUGUSTA["last_name"],
            date_of_birth=date.fromisoformat(AUGUSTA["date_of_birth"]),
            country="GBR",
            idempotency_key="contract-1",
        )
        with pytest.raises(ApplicationError) as raised:
            await kyc.applicant_as_numbers(created.id)
    assert raised.value.type == "ProviderContractError"
    assert leaks(texts_of(raised.value, caplog.records)) == []
    assert "int_parsing at date_of_birth" in raised.value.message


async def test_each_call_is_timed_by_provider_and_outcome(sim: Any) -> None:
    """Inside an activity a call records `cardflow_provider_call_seconds`:
    `ok`, or the type its failure was classified as."""
    runtime, port = prometheus_runtime()
    env = ActivityEnvironment()
    env.metric_meter = runtime.metric_meter

    @activity.defn(name="bank.arrive")
    async def arrive_once() -> None:
        async with client(sim) as bank:
            await arrive(bank, key=f"timed-{activity.info().attempt}")

    await env.run(arrive_once)
    sim.fault(path_prefix="/bank/v1/simulate", kind="error", status=503, times=1)
    with pytest.raises(ApplicationError):
        await env.run(arrive_once)

    async def calls() -> dict[str, float]:
        return {
            sample.labels["outcome"]: sample.value
            for sample in await scrape(port)
            if sample.name == "cardflow_provider_call_seconds_count"
            and sample.labels["provider"] == "bank"
        }

    counted = await until(calls, lambda c: len(c) == 2, "both calls timed", 10)
    assert counted == {"ok": 1, "ProviderUnavailable": 1}


async def test_a_call_outside_an_activity_is_timed_on_the_meter_it_is_given(sim: Any) -> None:
    """The gateway's own calls (reveal tokens, deposit addresses, shipping)
    are timed on the gateway's meter; a client given none times nothing."""
    runtime, port = prometheus_runtime()
    clients = ProviderClients(sim.url)
    silent = ProviderClients(sim.url)
    try:
        clients.time_calls_on(runtime.metric_meter)
        await arrive(clients.bank, key="gateway-timed")
        await arrive(silent.bank, key="gateway-silent")
    finally:
        await clients.aclose()
        await silent.aclose()

    async def calls() -> list[float]:
        return [
            sample.value
            for sample in await scrape(port)
            if sample.name == "cardflow_provider_call_seconds_count"
            and sample.labels == {**sample.labels, "provider": "bank", "outcome": "ok"}
        ]

    assert await until(calls, bool, "the call timed", 10) == [1]
