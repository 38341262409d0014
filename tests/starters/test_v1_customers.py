"""`GET /v1/customers/{customer_id}`: what an app shows a customer, read from
the ledger, the cards table, the cards' processes and the Tron provider.

The balances must agree with the ledger to the unit, a slow provider must
not fail the read, and the route takes the `customers:read` scope."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment

from activities.api_keys import (
    SCOPE_CUSTOMERS_READ,
    SCOPE_OPERATIONS,
    SCOPE_PROCESSES_READ,
    ApiKeyStore,
    NewApiKey,
    Scope,
    api_key_pepper,
    parse_key,
)
from activities.customers import CustomerStore
from activities.database import create_pool
from activities.ledger import Ledger
from activities.providers.issuer import IssuerClient
from activities.providers.tron import TronClient
from schemas import accounts
from schemas.customers import KycStatus
from schemas.disputes import customer_debt, customer_debt_spec
from schemas.issuer import Address, Card, CardType
from schemas.ledger import AccountSpec, HoldRequest, TransferRequest
from schemas.money import Currency
from schemas.search import CURRENCY, CUSTOMER_ID, PROCESS_STATUS
from starters.gateway.app import create_app
from starters.gateway.v1.customers import DEPOSIT_ADDRESS_SECONDS_MAX
from tests.customers import new_id, profile, wallet_spec
from workers.settings import load_settings
from workflows.cards import CARD_WORKFLOW, card_workflow_id


@dataclass
class Api:
    http: httpx.AsyncClient
    keys: ApiKeyStore
    pool: asyncpg.Pool
    client: Client

    async def headers(self, scope: Scope, customers: list[str] | None = None) -> dict[str, str]:
        issued = await self.keys.create(
            NewApiKey(name=f"app-{uuid.uuid4().hex[:6]}", scopes=[scope], customers=customers)
        )
        return {"Authorization": f"Bearer {issued.key}"}


@pytest_asyncio.fixture(loop_scope="session")
async def api(
    workflow_env: WorkflowEnvironment, database_url: str, tmp_path: Path, sim: Any
) -> AsyncIterator[Api]:
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path), DATABASE_URL=database_url, CARDFLOW_PROVIDERS_URL=sim.url
    )
    pool = await create_pool(database_url, size_max=4)
    app = create_app(settings, client=workflow_env.client, pool=pool)
    app.state.client, app.state.pool = workflow_env.client, pool
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30
        ) as http:
            yield Api(http, ApiKeyStore(pool, api_key_pepper(settings)), pool, workflow_env.client)
    finally:
        await pool.close()


BANK_USD = accounts.bank_inbound(Currency.USD)
BANK_EUR = accounts.bank_inbound(Currency.EUR)
SETTLEMENT_USD = accounts.issuer_settlement(Currency.USD)


def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


async def a_customer_with_money(api: Api) -> str:
    """USD: 10,000 in, 2,500 held by an authorization, 1,200 cleared; EUR:
    3,000 in; 700 EUR owed from a lost dispute."""
    customer_id = new_id("view")
    store = CustomerStore(api.pool)
    await store.save(profile(customer_id))
    await store.set_kyc_status(customer_id, KycStatus.APPROVED)
    ledger = Ledger(api.pool)
    for code, currency, kind in (
        (BANK_USD, Currency.USD, "bank"),
        (BANK_EUR, Currency.EUR, "bank"),
        (SETTLEMENT_USD, Currency.USD, "settlement"),
    ):
        await ledger.open_account(AccountSpec(code=code, currency=currency, kind=kind))
    usd, eur = (accounts.wallet(customer_id, c) for c in (Currency.USD, Currency.EUR))
    for currency in (Currency.USD, Currency.EUR):
        await ledger.open_account(wallet_spec(customer_id, currency))
    await ledger.open_account(customer_debt_spec(customer_id, Currency.EUR))
    for debit, credit, amount, currency in (
        (BANK_USD, usd, 10_000, Currency.USD),
        (BANK_EUR, eur, 3_000, Currency.EUR),
        (usd, SETTLEMENT_USD, 1_200, Currency.USD),
    ):
        await ledger.transfer(
            TransferRequest(
                key=key(), debit=debit, credit=credit, amount_minor=amount, currency=currency
            )
        )
    await ledger.transfer(
        TransferRequest(
            key=key(),
            debit=customer_debt(customer_id, Currency.EUR),
            credit=BANK_EUR,
            amount_minor=700,
            currency=Currency.EUR,
        )
    )
    await ledger.transfer(
        HoldRequest(
            key=key(),
            debit=usd,
            credit=SETTLEMENT_USD,
            amount_minor=2_500,
            currency=Currency.USD,
            expires_at=datetime.now(UTC) + timedelta(days=7),
        )
    )
    return customer_id


ADDRESS = Address(line1="1 Main St", city="Berlin", postal_code="10115", country="DE")


async def issuer_card(api: Api, sim: Any, customer_id: str, kind: CardType) -> Card:
    """A card the issuer made for the customer, recorded in the cards table as
    a card issue records it (its process not started: a physical card's
    starts once delivered and activated)."""
    async with IssuerClient(sim.provider_url("issuer")) as issuer:
        holder = await issuer.create_cardholder(
            first_name="Ada",
            last_name="Lovelace",
            email=f"{customer_id}@example.com",
            address=ADDRESS,
            idempotency_key=f"holder-{customer_id}-{kind.value}",
        )
        card = await issuer.create_card(
            cardholder_id=holder.id,
            card_type=kind,
            currency=Currency.USD,
            idempotency_key=f"card-{customer_id}-{kind.value}",
        )
    await api.pool.execute(
        "INSERT INTO cards (card_id, request_id, customer_id, kind) VALUES ($1, $2, $3, $4)",
        card.id,
        f"r-{uuid.uuid4().hex[:8]}",
        customer_id,
        kind.value,
    )
    return card


async def a_card(api: Api, customer_id: str, status: str | None) -> str:
    """A card in the cards table and, unless `status` is None (its process
    not started yet), its process showing `status` as the card's does."""
    card_id = f"card-{uuid.uuid4().hex[:10]}"
    await api.pool.execute(
        "INSERT INTO cards (card_id, request_id, customer_id, kind) VALUES ($1, $2, $3, 'virtual')",
        card_id,
        f"r-{uuid.uuid4().hex[:8]}",
        customer_id,
    )
    if status is not None:
        await api.client.start_workflow(
            CARD_WORKFLOW,
            id=card_workflow_id(card_id),
            task_queue=f"nobody-polls-{uuid.uuid4().hex[:8]}",
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(CUSTOMER_ID, customer_id),
                    SearchAttributePair(PROCESS_STATUS, status),
                    SearchAttributePair(CURRENCY, "USD"),
                ]
            ),
        )
    return card_id


async def test_balances_debt_and_cards_agree_with_their_sources(api: Api, sim: Any) -> None:
    customer_id = await a_customer_with_money(api)
    frozen = await a_card(api, customer_id, "paused")
    issuing = await a_card(api, customer_id, None)
    headers = await api.headers(SCOPE_CUSTOMERS_READ, customers=[customer_id])

    answer = await api.http.get(f"/v1/customers/{customer_id}", headers=headers)

    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["kyc_status"] == "approved" and view["unavailable"] == {}
    ledger = Ledger(api.pool)
    for wallet in view["wallets"]:
        balance = await ledger.balance(accounts.wallet(customer_id, wallet["currency"]))
        assert wallet["posted_minor"] == balance.posted
        assert wallet["available_minor"] == balance.available
        assert wallet["pending_minor"] == balance.debits_pending
    assert {w["currency"]: w["available_minor"] for w in view["wallets"]} == {
        "EUR": 3_000,
        "USD": 10_000 - 1_200 - 2_500,
    }
    assert view["debts"] == [{"currency": "EUR", "outstanding_minor": 700}]
    cards = {card["card_id"]: card for card in view["cards"]}
    assert cards[frozen]["state"] == "paused" and cards[frozen]["currency"] == "USD"
    assert cards[issuing]["state"] == "issuing" and cards[issuing]["currency"] is None
    async with TronClient(sim.provider_url("tron")) as tron:
        address = await tron.customer_address(customer_id)
    assert view["usdt_deposit_address"] == address.address


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        (
            {"kind": "latency", "seconds": DEPOSIT_ADDRESS_SECONDS_MAX + 3},
            "did not answer within its budget",
        ),
        ({"kind": "error", "status": 503}, "failed (ProviderUnavailable)"),
    ],
)
async def test_a_slow_or_failing_provider_leaves_its_field_empty_and_named_not_the_read_failed(
    api: Api, sim: Any, fault: dict[str, Any], why: str
) -> None:
    customer_id = await a_customer_with_money(api)
    headers = await api.headers(SCOPE_CUSTOMERS_READ)
    sim.fault(path_prefix="/tron/", **fault)

    started = time.monotonic()
    answer = await api.http.get(f"/v1/customers/{customer_id}", headers=headers)
    elapsed = time.monotonic() - started

    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["usdt_deposit_address"] is None
    assert view["unavailable"] == {"usdt_deposit_address": why}
    assert {w["currency"] for w in view["wallets"]} == {"USD", "EUR"}
    # Answered at the provider's budget, not when the provider answered.
    assert elapsed < DEPOSIT_ADDRESS_SECONDS_MAX + 2


async def test_the_route_takes_the_customers_read_scope_and_knows_its_customers(
    api: Api,
) -> None:
    customer_id = await a_customer_with_money(api)
    reader = await api.headers(SCOPE_PROCESSES_READ)
    refused = await api.http.get(f"/v1/customers/{customer_id}", headers=reader)
    assert refused.status_code == 403 and refused.json()["code"] == "scope_missing"
    allowed = await api.headers(SCOPE_CUSTOMERS_READ)
    missing = await api.http.get(f"/v1/customers/{new_id('nobody')}", headers=allowed)
    assert missing.status_code == 404, missing.text
    bad = await api.http.get("/v1/customers/not%20an%20id", headers=allowed)
    assert bad.status_code == 422, bad.text


# ----- PUT /v1/customers/{customer_id}/kyc-tier: an operator moves a tier -------------


async def test_an_operator_moves_a_customers_tier_once_recording_who_and_why(api: Api) -> None:
    customer_id = await a_customer_with_money(api)
    operator = await api.headers(SCOPE_OPERATIONS)
    parsed = parse_key(operator["Authorization"].removeprefix("Bearer "))
    assert parsed is not None
    key_id = parsed[0]
    change = {"tier": "enhanced", "reason": "source of funds verified"}
    first = await api.http.put(
        f"/v1/customers/{customer_id}/kyc-tier", json=change, headers=operator
    )
    again = await api.http.put(
        f"/v1/customers/{customer_id}/kyc-tier", json=change, headers=operator
    )
    assert (first.status_code, first.json()) == (
        200,
        {
            "customer_id": customer_id,
            "kyc_tier": "enhanced",
            "previous_tier": "standard",
            "changed": True,
        },
    )
    assert again.json() == {**first.json(), "previous_tier": "enhanced", "changed": False}
    # One change on record (the same tier again records nothing), named by the key.
    changes = await api.pool.fetch(
        "SELECT from_tier, to_tier, reason, changed_by FROM kyc_tier_changes"
        " WHERE customer_id = $1",
        customer_id,
    )
    assert [dict(row) for row in changes] == [
        {
            "from_tier": "standard",
            "to_tier": "enhanced",
            "reason": "source of funds verified",
            "changed_by": f"api-key:{key_id}",
        }
    ]
    reader = await api.headers(SCOPE_CUSTOMERS_READ)
    view = await api.http.get(f"/v1/customers/{customer_id}", headers=reader)
    assert view.json()["kyc_tier"] == "enhanced"


async def test_a_bad_tier_change_is_422_naming_the_field_and_an_unknown_customer_404(
    api: Api,
) -> None:
    customer_id = await a_customer_with_money(api)
    operator = await api.headers(SCOPE_OPERATIONS)
    refusals: list[tuple[dict[str, Any], list[Any]]] = [
        (
            {"tier": "platinum", "reason": "x"},
            [("body", "tier"), "Input should be 'basic', 'standard' or 'enhanced'"],
        ),
        ({"tier": "basic"}, [("body", "reason"), "Field required"]),
        (
            {"tier": "basic", "reason": ""},
            [("body", "reason"), "String should have at least 1 character"],
        ),
        (
            {"tier": "basic", "reason": "x", "by": "me"},
            [("body", "by"), "Extra inputs are not permitted"],
        ),
    ]
    for body, (loc, msg) in refusals:
        answer = await api.http.put(
            f"/v1/customers/{customer_id}/kyc-tier", json=body, headers=operator
        )
        assert (answer.status_code, answer.json()["code"]) == (422, "invalid_request"), body
        assert [(tuple(e["loc"]), e["msg"]) for e in answer.json()["detail"]] == [(loc, msg)]
    assert (
        await api.pool.fetchval(
            "SELECT kyc_tier FROM customers WHERE customer_id = $1", customer_id
        )
        == "standard"
    )
    assert (
        await api.pool.fetchval(
            "SELECT count(*) FROM kyc_tier_changes WHERE customer_id = $1", customer_id
        )
        == 0
    )
    nobody = new_id("nobody")
    missing = await api.http.put(
        f"/v1/customers/{nobody}/kyc-tier",
        json={"tier": "basic", "reason": "x"},
        headers=operator,
    )
    assert (missing.status_code, missing.json()) == (
        404,
        {"code": "not_found", "detail": f"no customer {nobody}"},
    )
    reader = await api.headers(SCOPE_CUSTOMERS_READ)
    unscoped = await api.http.put(
        f"/v1/customers/{customer_id}/kyc-tier",
        json={"tier": "basic", "reason": "x"},
        headers=reader,
    )
    assert unscoped.status_code == 403 and unscoped.json()["code"] == "scope_missing"
