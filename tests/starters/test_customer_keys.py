"""A key bound to customers acts on their processes, cards and data only.

Every `/v1` route is classified (program-wide, or customer-scoped with the
resolver that finds the customer it acts on); another customer's resource and
one that does not exist get the same 403; program-wide routes get a 403 of
their own; and an Idempotency-Key never answers one key's request with
another key's first sending."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest_asyncio
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment

from activities.api_keys import SCOPES, ApiKeyStore, IssuedKey, NewApiKey, api_key_pepper
from activities.customers import CustomerStore
from activities.database import create_pool
from schemas.cards import CardIssueResult
from schemas.fx import FxConversionInput
from schemas.money import Currency
from schemas.search import CUSTOMER_ID
from schemas.topup import TopupInput
from starters.gateway.access import access_of, route_access
from starters.gateway.app import create_app
from tests.conftest import Platform
from tests.customers import customer, profile
from tests.starters.test_api_keys import api_routes
from workers.settings import load_settings
from workflows.fx import FX_WORKFLOW, fx_workflow_id
from workflows.onboarding import onboarding_workflow_id
from workflows.topup import TOPUP_WORKFLOW, topup_workflow_id
from workflows.withdrawal import withdrawal_workflow_id

PROGRAM_WIDE = "program-wide"
EXPECTED_ACCESS: dict[tuple[str, str], str] = {
    ("POST", "/v1/pings"): PROGRAM_WIDE,
    ("GET", "/v1/processes/{workflow_id}"): "customer: the process's CustomerId search attribute",
    ("GET", "/v1/customers/{customer_id}"): "customer: the path's customer_id",
    ("GET", "/v1/customers/{customer_id}/overview"): "customer: the path's customer_id",
    ("GET", "/v1/customers/{customer_id}/rewards"): "customer: the path's customer_id",
    ("GET", "/v1/customers/{customer_id}/transactions"): "customer: the path's customer_id",
    ("POST", "/v1/customers/{customer_id}/telegram-link"): "customer: the path's customer_id",
    ("POST", "/v1/telegram/links"): PROGRAM_WIDE,
    ("GET", "/v1/telegram/links/{telegram_user_id}"): PROGRAM_WIDE,
    ("POST", "/v1/telegram/signups"): PROGRAM_WIDE,
    (
        "PUT",
        "/v1/customers/{customer_id}/notification-channels",
    ): "customer: the path's customer_id",
    ("GET", "/v1/events"): PROGRAM_WIDE,
    ("POST", "/v1/events/{event_id}/redeliver"): PROGRAM_WIDE,
    ("POST", "/v1/webhook-endpoints"): PROGRAM_WIDE,
    ("GET", "/v1/webhook-endpoints"): PROGRAM_WIDE,
    ("GET", "/v1/webhook-endpoints/{endpoint_id}"): PROGRAM_WIDE,
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): PROGRAM_WIDE,
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): PROGRAM_WIDE,
    ("POST", "/v1/onboardings"): "customer: the body's profile.customer_id",
    ("POST", "/v1/onboardings/{customer_id}/review"): PROGRAM_WIDE,
    ("POST", "/v1/onboardings/{customer_id}/documents"): "customer: the path's customer_id",
    ("POST", "/v1/cards"): "customer: the body's customer_id",
    ("POST", "/v1/cards/{card_id}/actions"): "customer: the cards table, by card_id",
    ("PUT", "/v1/cards/{card_id}/limits"): "customer: the cards table, by card_id",
    ("GET", "/v1/cards/{card_id}"): "customer: the cards table, by card_id",
    ("POST", "/v1/cards/{card_id}/reveal"): "customer: the cards table, by card_id",
    ("POST", "/v1/cards/{card_id}/exceptions"): PROGRAM_WIDE,
    ("POST", "/v1/cards/{card_id}/authentications/{authentication_id}/answer"): (
        "customer: the cards table, by card_id"
    ),
    ("GET", "/v1/cards/{card_id}/authentications/{authentication_id}"): (
        "customer: the cards table, by card_id"
    ),
    ("GET", "/v1/customers/{customer_id}/authentications"): "customer: the path's customer_id",
    ("POST", "/v1/card-issues/{request_id}/reschedule"): (
        "customer: the card issue process's CustomerId search attribute"
    ),
    ("POST", "/v1/card-issues/{request_id}/activate"): (
        "customer: the card issue process's CustomerId search attribute"
    ),
    ("POST", "/v1/fx/quotes"): "customer: the body's customer_id",
    (
        "POST",
        "/v1/fx/{request_id}/confirm",
    ): "customer: the FX process's CustomerId search attribute",
    (
        "POST",
        "/v1/fx/{request_id}/cancel",
    ): "customer: the FX process's CustomerId search attribute",
    ("GET", "/v1/fx/{request_id}"): "customer: the FX process's CustomerId search attribute",
    ("GET", "/v1/topups/{source}/{external_ref}"): (
        "customer: the top-up process's CustomerId search attribute"
    ),
    ("POST", "/v1/topups/{source}/{external_ref}/review"): PROGRAM_WIDE,
    ("POST", "/v1/billing/{customer_id}/{period}"): "customer: the path's customer_id",
    ("GET", "/v1/billing/{customer_id}/{period}"): "customer: the path's customer_id",
    ("GET", "/v1/statements/{customer_id}/{period}"): "customer: the path's customer_id",
    ("POST", "/v1/billing-runs/{period}"): PROGRAM_WIDE,
    ("POST", "/v1/disputes"): "customer: the body's customer_id, and the card_transactions table",
    ("POST", "/v1/disputes/{transaction_id}/evidence"): (
        "customer: the card_transactions table, by transaction_id"
    ),
    ("POST", "/v1/disputes/{transaction_id}/submit"): (
        "customer: the card_transactions table, by transaction_id"
    ),
    ("POST", "/v1/disputes/{transaction_id}/withdraw"): (
        "customer: the card_transactions table, by transaction_id"
    ),
    ("POST", "/v1/disputes/{transaction_id}/operator"): PROGRAM_WIDE,
    ("GET", "/v1/disputes/{transaction_id}"): (
        "customer: the card_transactions table, by transaction_id"
    ),
    ("POST", "/v1/withdrawals"): "customer: the body's customer_id",
    ("GET", "/v1/withdrawals/{request_id}"): (
        "customer: the withdrawal process's CustomerId search attribute"
    ),
    ("POST", "/v1/withdrawals/{request_id}/review"): PROGRAM_WIDE,
    ("GET", "/v1/fraud-cases/{case_id}"): PROGRAM_WIDE,
    ("POST", "/v1/fraud-cases/{case_id}/decide"): PROGRAM_WIDE,
    ("POST", "/v1/closures"): "customer: the body's customer_id",
    ("GET", "/v1/closures/{customer_id}"): "customer: the path's customer_id",
    ("POST", "/v1/closures/{customer_id}/decide"): PROGRAM_WIDE,
    ("PUT", "/v1/customers/{customer_id}/kyc-tier"): PROGRAM_WIDE,
    ("PUT", "/v1/cards/{card_id}/controls"): "customer: the cards table, by card_id",
    ("POST", "/v1/cards/{card_id}/temporary-controls"): "customer: the cards table, by card_id",
    ("DELETE", "/v1/cards/{card_id}/temporary-controls/{control_id}"): (
        "customer: the cards table, by card_id"
    ),
    ("POST", "/v1/customers/{customer_id}/card-controls"): "customer: the path's customer_id",
    ("GET", "/v1/customers/{customer_id}/card-controls"): "customer: the path's customer_id",
    ("POST", "/v1/card-controls"): PROGRAM_WIDE,
    ("POST", "/v1/rules"): PROGRAM_WIDE,
    ("GET", "/v1/rules"): PROGRAM_WIDE,
    ("POST", "/v1/reconciliations/issuer/{settlement_date}"): PROGRAM_WIDE,
    ("GET", "/v1/reconciliations/issuer/{settlement_date}"): PROGRAM_WIDE,
    ("POST", "/v1/reconciliations/issuer/{settlement_date}/decisions"): PROGRAM_WIDE,
    ("GET", "/v1/settlements/issuer/{settlement_date}"): PROGRAM_WIDE,
    ("POST", "/v1/settlements/issuer/{settlement_date}/decisions"): PROGRAM_WIDE,
}
# Path parameters that name what a route acts on: a customer-scoped route
# reads them only through the dependency that checks them. Any other path
# parameter must be one of the harmless ones, so a new kind of id is looked at.
IDENTIFYING_PARAMS = {
    "customer_id",
    "card_id",
    "request_id",
    "transaction_id",
    "workflow_id",
    "source",
    "external_ref",
    # A customer's fraud case: read and decided only program-wide.
    "case_id",
}
# Periods, and the ids of what belongs to the program, not to a customer
# (webhook endpoints, the event stream, Telegram users the bot looks up).
# A card's temporary control is named within the card, whose id is checked;
# so is a card's 3-D Secure authentication (the challenge refuses another card's).
OTHER_PARAMS = {
    "period",
    "settlement_date",
    "endpoint_id",
    "event_id",
    "telegram_user_id",
    "control_id",
    "authentication_id",
}


# ----- every route is classified ------------------------------------------------


def test_every_v1_route_is_program_wide_or_resolves_the_customer_it_acts_on(
    tmp_path: Path,
) -> None:
    app = create_app(load_settings(CARDFLOW_HOME=str(tmp_path)))
    seen: dict[tuple[str, str], str] = {}
    for route in api_routes(app.routes):
        marks = route_access(route)
        if not route.path.startswith("/v1/"):
            assert marks == [], route.path  # webhooks, real-time, health: no API keys
            continue
        assert len(marks) == 1, f"{route.methods} {route.path} is classified {marks}"
        [mark] = marks
        named = {
            param.name
            for dependant in [route.dependant, *_dependants(route.dependant)]
            for param in dependant.path_params
        }
        assert named <= IDENTIFYING_PARAMS | OTHER_PARAMS, (route.path, named)
        if not mark.program_wide:
            # The ids (or, on a start, the body) reach the route only through
            # the dependency that checked them.
            [guard] = [
                dependant
                for dependant in _dependants(route.dependant)
                if access_of(dependant.call) is not None
            ]
            guarded = {param.name for param in guard.path_params}
            assert named & IDENTIFYING_PARAMS <= guarded, (route.path, named, guarded)
            if not named & IDENTIFYING_PARAMS:
                assert [param.name for param in guard.body_params] == ["body"], route.path
        for method in route.methods or ():
            seen[(method, route.path_format)] = str(mark)
    assert seen == EXPECTED_ACCESS


def _dependants(dependant: Any) -> list[Any]:
    found = []
    for dependency in dependant.dependencies:
        found.append(dependency)
        found.extend(_dependants(dependency))
    return found


# ----- an in-process gateway, with no workers ----------------------------------------


@dataclass
class Gateway:
    http: httpx.AsyncClient
    store: ApiKeyStore
    pool: asyncpg.Pool
    client: Client

    async def key(self, customers: list[str] | None = None, name: str = "partner") -> IssuedKey:
        new = NewApiKey(name=name, scopes=list(SCOPES), customers=customers)  # type: ignore[arg-type]
        return await self.store.create(new)


def bearer(issued: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued.key}"}


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(
    workflow_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> AsyncIterator[Gateway]:
    settings = load_settings(CARDFLOW_HOME=str(tmp_path), DATABASE_URL=database_url)
    pool = await create_pool(database_url, size_max=4)
    app = create_app(settings, client=workflow_env.client, pool=pool)
    app.state.client, app.state.pool = workflow_env.client, pool
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30
        ) as http:
            yield Gateway(
                http, ApiKeyStore(pool, api_key_pepper(settings)), pool, workflow_env.client
            )
    finally:
        await pool.close()


ADDRESS = {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
PASSPORT = {"type": "passport", "country": "DEU", "file_name": "passport.jpg"}


def withdrawal(request_id: str, customer_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "customer_id": customer_id,
        "amount_minor": 1_000,
        "currency": "USD",
        "destination": {"rail": "bank", "iban": "DE89370400440532013000", "name": "Grace Hopper"},
    }


def onboarding(customer_id: str) -> dict[str, Any]:
    return {
        "profile": {
            "customer_id": customer_id,
            "first_name": "Grace",
            "last_name": "Hopper",
            "date_of_birth": "1985-12-09",
            "country": "USA",
            "email": f"{customer_id}@example.com",
        },
        "documents": [PASSPORT],
    }


@dataclass(frozen=True)
class Ids:
    """One customer's resources, one of each kind a route names."""

    customer: str
    card: str
    card_issue: str
    fx: str
    topup: str
    transaction: str
    process: str
    withdrawal: str


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def resources(gateway: Gateway, everyone: IssuedKey) -> Ids:
    """A customer with a card, a settled transaction and processes of each kind,
    made as the platform makes them (workflows start with their customer)."""
    ids = Ids(
        customer=unique("c"),
        card=unique("card"),
        card_issue="",
        fx=unique("fx"),
        topup=unique("ref"),
        transaction=unique("txn"),
        process="",
        withdrawal=unique("w"),
    )
    await CustomerStore(gateway.pool).save(profile(ids.customer))
    await gateway.pool.execute(
        "INSERT INTO cards (card_id, request_id, customer_id, kind) VALUES ($1, $2, $3, 'virtual')",
        ids.card,
        unique("r"),
        ids.customer,
    )
    await gateway.pool.execute(
        "INSERT INTO card_transactions (transaction_id, card_id, customer_id, kind, amount_minor,"
        " currency, occurred_at) VALUES ($1, $2, $3, 'clearing', 1000, 'USD', $4)",
        ids.transaction,
        ids.card,
        ids.customer,
        datetime.now(UTC),
    )
    # Through the gateway, with a key bound to no customer.
    started = await gateway.http.post(
        "/v1/onboardings",
        json=onboarding(ids.customer),
        headers={**bearer(everyone), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert started.status_code == 202, started.text
    issue = await gateway.http.post(
        "/v1/cards",
        json={"customer_id": ids.customer, "kind": "virtual", "address": ADDRESS},
        headers={**bearer(everyone), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert issue.status_code == 202, issue.text
    paid_out = await gateway.http.post(
        "/v1/withdrawals",
        json=withdrawal(ids.withdrawal, ids.customer),
        headers={**bearer(everyone), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert paid_out.status_code == 202, paid_out.text
    # As a webhook or starter would start them, with the customer the
    # process itself keeps in its CustomerId.
    queue = unique("nobody-polls")
    customer = TypedSearchAttributes([SearchAttributePair(CUSTOMER_ID, ids.customer)])
    await gateway.client.start_workflow(
        FX_WORKFLOW,
        FxConversionInput(
            request_id=ids.fx,
            customer_id=ids.customer,
            sell_currency=Currency.USD,
            buy_currency=Currency.EUR,
            sell_amount_minor=1_000,
        ),
        id=fx_workflow_id(ids.fx),
        task_queue=queue,
        search_attributes=customer,
    )
    await gateway.client.start_workflow(
        TOPUP_WORKFLOW,
        TopupInput(source="bank", external_ref=ids.topup),
        id=topup_workflow_id("bank", ids.topup),
        task_queue=queue,
        search_attributes=customer,
    )
    return replace(
        ids, card_issue=issue.json()["request_id"], process=onboarding_workflow_id(ids.customer)
    )


def missing() -> Ids:
    """Ids of the same kinds that nothing has."""
    return Ids(
        customer=unique("c"),
        card=unique("card"),
        card_issue=uuid.uuid4().hex,
        fx=unique("fx"),
        topup=unique("ref"),
        transaction=unique("txn"),
        process=onboarding_workflow_id(unique("c")),
        withdrawal=unique("w"),
    )


Request = tuple[str, str, dict[str, Any] | None]
# Each customer-scoped route, as a request on one customer's resources.
CUSTOMER_ROUTES: dict[tuple[str, str], Callable[[Ids], Request]] = {
    ("GET", "/v1/processes/{workflow_id}"): lambda i: (
        "GET",
        f"/v1/processes/{i.process}",
        None,
    ),
    ("GET", "/v1/customers/{customer_id}"): lambda i: ("GET", f"/v1/customers/{i.customer}", None),
    ("GET", "/v1/customers/{customer_id}/overview"): lambda i: (
        "GET",
        f"/v1/customers/{i.customer}/overview",
        None,
    ),
    ("GET", "/v1/customers/{customer_id}/rewards"): lambda i: (
        "GET",
        f"/v1/customers/{i.customer}/rewards",
        None,
    ),
    ("GET", "/v1/customers/{customer_id}/transactions"): lambda i: (
        "GET",
        f"/v1/customers/{i.customer}/transactions",
        None,
    ),
    ("POST", "/v1/customers/{customer_id}/telegram-link"): lambda i: (
        "POST",
        f"/v1/customers/{i.customer}/telegram-link",
        None,
    ),
    ("PUT", "/v1/customers/{customer_id}/notification-channels"): lambda i: (
        "PUT",
        f"/v1/customers/{i.customer}/notification-channels",
        {"preferred_channels": ["email"]},
    ),
    ("POST", "/v1/onboardings"): lambda i: ("POST", "/v1/onboardings", onboarding(i.customer)),
    ("POST", "/v1/onboardings/{customer_id}/documents"): lambda i: (
        "POST",
        f"/v1/onboardings/{i.customer}/documents",
        {"documents": [PASSPORT]},
    ),
    ("POST", "/v1/cards"): lambda i: (
        "POST",
        "/v1/cards",
        {"customer_id": i.customer, "kind": "virtual", "address": ADDRESS},
    ),
    ("POST", "/v1/cards/{card_id}/actions"): lambda i: (
        "POST",
        f"/v1/cards/{i.card}/actions",
        {"action": "freeze"},
    ),
    ("PUT", "/v1/cards/{card_id}/limits"): lambda i: (
        "PUT",
        f"/v1/cards/{i.card}/limits",
        {"per_day_minor": 1_000},
    ),
    ("GET", "/v1/cards/{card_id}"): lambda i: ("GET", f"/v1/cards/{i.card}", None),
    ("POST", "/v1/cards/{card_id}/reveal"): lambda i: ("POST", f"/v1/cards/{i.card}/reveal", None),
    ("POST", "/v1/cards/{card_id}/authentications/{authentication_id}/answer"): lambda i: (
        "POST",
        f"/v1/cards/{i.card}/authentications/3ds_000001/answer",
        {"code": "123456"},
    ),
    ("GET", "/v1/cards/{card_id}/authentications/{authentication_id}"): lambda i: (
        "GET",
        f"/v1/cards/{i.card}/authentications/3ds_000001",
        None,
    ),
    ("GET", "/v1/customers/{customer_id}/authentications"): lambda i: (
        "GET",
        f"/v1/customers/{i.customer}/authentications",
        None,
    ),
    ("POST", "/v1/card-issues/{request_id}/reschedule"): lambda i: (
        "POST",
        f"/v1/card-issues/{i.card_issue}/reschedule",
        {"delivery_date": "2030-01-02"},
    ),
    ("POST", "/v1/card-issues/{request_id}/activate"): lambda i: (
        "POST",
        f"/v1/card-issues/{i.card_issue}/activate",
        None,
    ),
    ("POST", "/v1/fx/quotes"): lambda i: (
        "POST",
        "/v1/fx/quotes",
        {
            "customer_id": i.customer,
            "sell_currency": "USD",
            "buy_currency": "EUR",
            "sell_amount_minor": 1_000,
        },
    ),
    ("POST", "/v1/fx/{request_id}/confirm"): lambda i: ("POST", f"/v1/fx/{i.fx}/confirm", None),
    ("POST", "/v1/fx/{request_id}/cancel"): lambda i: ("POST", f"/v1/fx/{i.fx}/cancel", None),
    ("GET", "/v1/fx/{request_id}"): lambda i: ("GET", f"/v1/fx/{i.fx}", None),
    ("GET", "/v1/topups/{source}/{external_ref}"): lambda i: (
        "GET",
        f"/v1/topups/bank/{i.topup}",
        None,
    ),
    ("POST", "/v1/billing/{customer_id}/{period}"): lambda i: (
        "POST",
        f"/v1/billing/{i.customer}/2025-01",
        None,
    ),
    ("GET", "/v1/billing/{customer_id}/{period}"): lambda i: (
        "GET",
        f"/v1/billing/{i.customer}/2025-01",
        None,
    ),
    ("GET", "/v1/statements/{customer_id}/{period}"): lambda i: (
        "GET",
        f"/v1/statements/{i.customer}/2025-01",
        None,
    ),
    ("POST", "/v1/disputes"): lambda i: (
        "POST",
        "/v1/disputes",
        {"transaction_id": i.transaction, "customer_id": i.customer, "reason": "fraudulent"},
    ),
    ("POST", "/v1/disputes/{transaction_id}/evidence"): lambda i: (
        "POST",
        f"/v1/disputes/{i.transaction}/evidence",
        {"type": "receipt", "description": "the receipt"},
    ),
    ("POST", "/v1/disputes/{transaction_id}/submit"): lambda i: (
        "POST",
        f"/v1/disputes/{i.transaction}/submit",
        {},
    ),
    ("POST", "/v1/disputes/{transaction_id}/withdraw"): lambda i: (
        "POST",
        f"/v1/disputes/{i.transaction}/withdraw",
        {},
    ),
    ("GET", "/v1/disputes/{transaction_id}"): lambda i: (
        "GET",
        f"/v1/disputes/{i.transaction}",
        None,
    ),
    ("POST", "/v1/withdrawals"): lambda i: (
        "POST",
        "/v1/withdrawals",
        withdrawal(unique("w"), i.customer),
    ),
    ("GET", "/v1/withdrawals/{request_id}"): lambda i: (
        "GET",
        f"/v1/withdrawals/{i.withdrawal}",
        None,
    ),
    ("POST", "/v1/closures"): lambda i: (
        "POST",
        "/v1/closures",
        {
            "customer_id": i.customer,
            "destination": {"iban": "DE89370400440532013000", "name": "Grace Hopper"},
        },
    ),
    ("GET", "/v1/closures/{customer_id}"): lambda i: ("GET", f"/v1/closures/{i.customer}", None),
    ("PUT", "/v1/cards/{card_id}/controls"): lambda i: (
        "PUT",
        f"/v1/cards/{i.card}/controls",
        {"mcc_block": ["group:gambling"]},
    ),
    ("POST", "/v1/cards/{card_id}/temporary-controls"): lambda i: (
        "POST",
        f"/v1/cards/{i.card}/temporary-controls",
        {"id": "trip", "controls": {"country_allow": ["FR"]}, "until": "2099-01-01T00:00:00Z"},
    ),
    ("DELETE", "/v1/cards/{card_id}/temporary-controls/{control_id}"): lambda i: (
        "DELETE",
        f"/v1/cards/{i.card}/temporary-controls/trip",
        None,
    ),
    ("POST", "/v1/customers/{customer_id}/card-controls"): lambda i: (
        "POST",
        f"/v1/customers/{i.customer}/card-controls",
        {"request_id": unique("ctl"), "controls": {"single_use": True}, "reason": "partner"},
    ),
    ("GET", "/v1/customers/{customer_id}/card-controls"): lambda i: (
        "GET",
        f"/v1/customers/{i.customer}/card-controls",
        None,
    ),
}


async def send(gateway: Gateway, issued: IssuedKey, request: Request) -> httpx.Response:
    method, path, body = request
    headers = {**bearer(issued), "Idempotency-Key": uuid.uuid4().hex}
    return await gateway.http.request(method, path, json=body, headers=headers)


def without(answer: httpx.Response, *ids: str) -> tuple[int, dict[str, Any]]:
    """The answer with the ids it names blanked, to compare two answers' shape."""
    document = answer.json()
    for value in sorted(ids, key=len, reverse=True):  # an id may hold another
        document["detail"] = document["detail"].replace(value, "ID")
    return answer.status_code, document


async def test_a_bound_key_gets_the_same_403_for_another_customers_resources_and_missing_ones(
    gateway: Gateway,
) -> None:
    everyone = await gateway.key(name="operator desk")
    theirs = await resources(gateway, everyone)
    mine = unique("c")
    partner = await gateway.key([mine])
    nothing = missing()
    assert set(CUSTOMER_ROUTES) == {
        route for route, access in EXPECTED_ACCESS.items() if access != PROGRAM_WIDE
    }
    for route, request in CUSTOMER_ROUTES.items():
        other = await send(gateway, partner, request(theirs))
        absent = await send(gateway, partner, request(nothing))
        assert other.status_code == 403, (route, other.text)
        assert other.json()["code"] == "customer_not_allowed", route
        # Nothing tells "not yours" from "not there".
        assert without(other, *theirs.__dict__.values()) == without(
            absent, *nothing.__dict__.values()
        ), route
    # A dispute naming the key's own customer, of another customer's transaction.
    crossed = await send(
        gateway,
        partner,
        (
            "POST",
            "/v1/disputes",
            {"transaction_id": theirs.transaction, "customer_id": mine, "reason": "fraudulent"},
        ),
    )
    assert crossed.status_code == 403 and crossed.json()["code"] == "customer_not_allowed"
    assert theirs.transaction in crossed.json()["detail"]
    # A process of no customer is nobody's: a ping, read by its id.
    ping = await send(gateway, everyone, ("POST", "/v1/pings", {"requested_by": "ops"}))
    assert ping.status_code == 202, ping.text
    read = await send(
        gateway, partner, ("GET", f"/v1/processes/{ping.json()['workflow_id']}", None)
    )
    assert read.status_code == 403 and read.json()["code"] == "customer_not_allowed"
    # The other customer's processes still stand as they were: nothing was started or changed.
    for workflow_id in (
        fx_workflow_id(theirs.fx),
        onboarding_workflow_id(theirs.customer),
        withdrawal_workflow_id(theirs.withdrawal),
    ):
        description = await gateway.client.get_workflow_handle(workflow_id).describe()
        assert description.status is not None and description.status.name == "RUNNING"
    for request in (
        CUSTOMER_ROUTES[("POST", "/v1/cards")],
        CUSTOMER_ROUTES[("POST", "/v1/disputes")],
    ):
        # A key bound to no customer is let through by the same routes.
        answer = await send(gateway, everyone, request(theirs))
        assert answer.status_code == 202, answer.text


PROGRAM_ROUTES: list[Request] = [
    ("POST", "/v1/pings", {"requested_by": "partner"}),
    ("POST", "/v1/onboardings/{customer}/review", {}),
    ("POST", "/v1/cards/{card}/exceptions", {}),
    ("POST", "/v1/topups/bank/{topup}/review", {}),
    ("POST", "/v1/billing-runs/2025-01", None),
    ("POST", "/v1/disputes/{transaction}/operator", {}),
    ("POST", "/v1/withdrawals/{withdrawal}/review", {}),
    ("GET", "/v1/fraud-cases/{customer}-20250101", None),
    ("POST", "/v1/fraud-cases/{customer}-20250101/decide", {}),
    ("POST", "/v1/closures/{customer}/decide", {}),
    ("PUT", "/v1/customers/{customer}/kyc-tier", {"tier": "enhanced", "reason": "partner"}),
    ("POST", "/v1/card-controls", {"request_id": "ctl-1", "controls": {}, "reason": "partner"}),
    ("POST", "/v1/rules", {"request_id": "rules-1", "rules": [], "reason": "partner"}),
    ("GET", "/v1/rules", None),
    ("POST", "/v1/reconciliations/issuer/2025-01-01", None),
    ("GET", "/v1/reconciliations/issuer/2025-01-01", None),
    ("POST", "/v1/reconciliations/issuer/2025-01-01/decisions", {}),
    ("GET", "/v1/settlements/issuer/2025-01-01", None),
    ("POST", "/v1/settlements/issuer/2025-01-01/decisions", {}),
    ("GET", "/v1/events", None),
    ("POST", f"/v1/events/evt_{'0' * 32}/redeliver", None),
    ("POST", "/v1/webhook-endpoints", {"url": "https://app.example/hooks", "event_types": []}),
    ("GET", "/v1/webhook-endpoints", None),
    ("GET", "/v1/webhook-endpoints/we_0", None),
    ("DELETE", "/v1/webhook-endpoints/we_0", None),
    ("POST", "/v1/webhook-endpoints/we_0/rotate-secret", {}),
    ("POST", "/v1/telegram/links", {"code": "x" * 32, "telegram_user_id": 1}),
    ("GET", "/v1/telegram/links/1", None),
    ("POST", "/v1/telegram/signups", {}),
]


async def test_a_bound_key_is_refused_every_program_wide_route_whatever_its_scopes(
    gateway: Gateway,
) -> None:
    everyone = await gateway.key(name="operator desk")
    mine = await resources(gateway, everyone)
    partner = await gateway.key([mine.customer])
    assert len(PROGRAM_ROUTES) == list(EXPECTED_ACCESS.values()).count(PROGRAM_WIDE)
    for method, path, body in PROGRAM_ROUTES:
        # Even on its own customer's onboarding, card, top-up, dispute or withdrawal.
        answer = await send(gateway, partner, (method, path.format(**mine.__dict__), body))
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["code"] == "program_wide_route", path
    # Nothing was changed under the key: not its customer's KYC tier...
    assert await gateway.pool.fetchval(
        "SELECT kyc_tier FROM customers WHERE customer_id = $1", mine.customer
    ) in (None, "standard")
    # ...and nothing was started: not a ping, not a billing run.
    assert (
        await gateway.pool.fetchval(
            "SELECT count(*) FROM gateway_api_requests WHERE api_key_id = $1", partner.info.key_id
        )
        == 0
    )


# ----- Idempotency-Keys belong to the API key that sent them -------------------------


async def test_a_second_keys_identical_request_with_the_same_idempotency_key_is_not_a_replay(
    gateway: Gateway,
) -> None:
    customer_id = unique("c")
    first, second = await gateway.key([customer_id]), await gateway.key([customer_id])
    request: Request = ("POST", "/v1/onboardings", onboarding(customer_id))
    key = {"Idempotency-Key": f"ob-{uuid.uuid4().hex[:8]}"}
    method, path, body = request

    async def started(issued: IssuedKey) -> httpx.Response:
        return await gateway.http.request(
            method, path, json=body, headers={**bearer(issued), **key}
        )

    original = await started(first)
    replay = await started(first)
    other = await started(second)
    assert original.status_code == 202, original.text
    assert replay.status_code == 200 and replay.json()["replayed"]
    assert replay.json()["run_id"] == original.json()["run_id"]
    # The second client is not answered the first one's process as its own.
    assert other.status_code == 409, other.text
    assert other.json()["code"] == "process_exists"


# ----- end to end: a partner's key over the running platform ---------------------------


async def test_a_partner_key_runs_its_customers_processes_and_no_one_elses(
    platform: Platform,
) -> None:
    from tests.workflows.test_dispute import purchase
    from tests.workflows.test_fx_conversion import rates
    from workflows.card_issue import card_issue_workflow_id
    from workflows.cards import card_workflow_id

    rates(platform)
    mine = await customer(platform, {Currency.USD: 50_000})
    theirs = await customer(platform, {Currency.USD: 50_000})
    store = ApiKeyStore(platform.stack.pool, api_key_pepper(platform.settings))

    async def partner_key(name: str) -> IssuedKey:
        new = NewApiKey(name=name, scopes=["processes:start", "processes:read"], customers=[mine])
        return await store.create(new)

    partner, colleague = await partner_key("partner"), await partner_key("partner-2")
    async with (
        httpx.AsyncClient(
            base_url=platform.gateway_url, timeout=60, headers=bearer(partner)
        ) as api,
        httpx.AsyncClient(
            base_url=platform.gateway_url, timeout=60, headers=platform.api_headers
        ) as ops,
    ):

        async def issue(http: httpx.AsyncClient, customer_id: str) -> str:
            issued = await http.post(
                "/v1/cards",
                json={"customer_id": customer_id, "kind": "virtual", "address": ADDRESS},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            assert issued.status_code == 202, issued.text
            # Readable by its customer's key at once, before the process ran a step.
            status = await http.get(issued.json()["status_url"])
            assert status.status_code == 200, status.text
            result = await platform.stack.client.get_workflow_handle(
                card_issue_workflow_id(issued.json()["request_id"]), result_type=CardIssueResult
            ).result()
            assert result.card_id is not None, result
            card_id: str = result.card_id
            return card_id

        my_card = await issue(api, mine)
        their_card = await issue(ops, theirs)
        refused = await api.post(
            "/v1/cards",
            json={"customer_id": theirs, "kind": "virtual", "address": ADDRESS},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert refused.status_code == 403 and refused.json()["code"] == "customer_not_allowed"

        # Disputes: its customer's transaction, not another's.
        my_purchase = await purchase(platform, my_card, 1_000)
        their_purchase = await purchase(platform, their_card, 1_000)
        opened = await api.post(
            "/v1/disputes",
            json={"transaction_id": my_purchase, "customer_id": mine, "reason": "duplicate"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert opened.status_code == 202, opened.text
        assert (await api.get(f"/v1/disputes/{my_purchase}")).status_code == 200
        assert (await api.get(f"/v1/disputes/{their_purchase}")).status_code == 403

        # Cards: its own, read and frozen; another's, neither.
        assert (await api.get(f"/v1/cards/{my_card}")).status_code == 200
        assert (await api.get(f"/v1/processes/{card_workflow_id(my_card)}")).status_code == 200
        for path in (f"/v1/cards/{their_card}", f"/v1/processes/{card_workflow_id(their_card)}"):
            answer = await api.get(path)
            assert answer.status_code == 403 and answer.json()["code"] == "customer_not_allowed"
        frozen = await api.post(f"/v1/cards/{their_card}/actions", json={"action": "freeze"})
        assert frozen.status_code == 403
        assert (await ops.get(f"/v1/cards/{their_card}")).json()["state"] == "open"
        freeze = {"Idempotency-Key": f"freeze-{uuid.uuid4().hex[:8]}"}
        first = await api.post(
            f"/v1/cards/{my_card}/actions", json={"action": "freeze"}, headers=freeze
        )
        again = await api.post(
            f"/v1/cards/{my_card}/actions", json={"action": "freeze"}, headers=freeze
        )
        assert (first.status_code, first.json()) == (200, {"result": "paused"}), first.text
        assert (again.status_code, again.json()) == (200, {"result": "paused"}), again.text
        # Another key of the same partner, the same request and Idempotency-Key:
        # a request of its own (refused: the card is paused), not the first one's answer.
        other = await api.post(
            f"/v1/cards/{my_card}/actions",
            json={"action": "freeze"},
            headers={**freeze, **bearer(colleague)},
        )
        assert other.status_code == 409 and "paused" in other.json()["detail"], other.text

        # FX: its customer's quote converts; another's cannot be touched.
        def quote(customer_id: str) -> dict[str, Any]:
            return {
                "customer_id": customer_id,
                "sell_currency": "USD",
                "buy_currency": "EUR",
                "sell_amount_minor": 10_000,
            }

        mine_quoted = await api.post(
            "/v1/fx/quotes", json=quote(mine), headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        their_quoted = await ops.post(
            "/v1/fx/quotes", json=quote(theirs), headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        assert (mine_quoted.status_code, their_quoted.status_code) == (202, 202)
        mine_fx = mine_quoted.json()["offer"]["request_id"]
        their_fx = their_quoted.json()["offer"]["request_id"]
        for path in (f"/v1/fx/{their_fx}/confirm", f"/v1/fx/{their_fx}/cancel"):
            answer = await api.post(path)
            assert answer.status_code == 403 and answer.json()["code"] == "customer_not_allowed"
        assert (await api.get(f"/v1/fx/{their_fx}")).status_code == 403
        confirmed = await api.post(f"/v1/fx/{mine_fx}/confirm")
        assert confirmed.status_code == 200 and confirmed.json()["outcome"] == "converted"
        untouched = await ops.get(f"/v1/fx/{their_fx}")
        assert untouched.json()["stage"] == "awaiting confirmation"
        assert (await ops.post(f"/v1/fx/{their_fx}/cancel")).status_code == 200


# ----- the CLI ----------------------------------------------------------------------


async def test_the_cli_binds_a_key_to_customers_and_rotation_keeps_them(
    database_url: str, tmp_path: Path
) -> None:
    from tests.starters.test_api_keys import cardflow

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cardflow(tmp_path, database_url, *args)

    created = await asyncio.to_thread(
        run,
        "create",
        "--name",
        "partner",
        "--scope",
        "processes:read",
        "--customer",
        "c-2",
        "--customer",
        "c-1",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    document = json.loads(created.stdout)
    assert document["customers"] == ["c-1", "c-2"]
    plain = await asyncio.to_thread(run, "create", "--name", "ops", "--scope", "operations")
    assert plain.returncode == 0 and "customers every customer" in plain.stdout
    listed = {
        row["key_id"]: row
        for row in json.loads((await asyncio.to_thread(run, "list", "--json")).stdout)
    }
    assert listed[document["key_id"]]["customers"] == ["c-1", "c-2"]
    table = (await asyncio.to_thread(run, "list")).stdout.splitlines()
    assert "CUSTOMERS" in table[0]
    assert any(document["key_id"] in line and "c-1,c-2" in line for line in table)
    rotated = await asyncio.to_thread(run, "rotate", document["key_id"], "--json")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["customers"] == ["c-1", "c-2"]
    for bad in ("has space", "x" * 65):
        refused = await asyncio.to_thread(
            run, "create", "--name", "p", "--scope", "processes:read", "--customer", bad
        )
        assert refused.returncode == 2 and "--customer" in refused.stderr, refused.stderr
