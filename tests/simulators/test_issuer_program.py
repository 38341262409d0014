"""The card program's prefunded balance at the simulated issuer: settlement
draws it down and credits add back, to the unit; the issuer declines on its
own what the program cannot pay for; fundings are pending until their lead
time has passed on the issuer's clock, and made once per key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests import polling

ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}
CAFE = {"name": "Corner Cafe", "mcc": "5812", "country": "US"}
HOTEL = {"name": "Hotel Lutetia", "mcc": "7011", "country": "FR"}
DELIVERY_SECONDS_MAX = 10
HOUR_SECONDS = 3_600
# The opening balance of a currency the option program_balances leaves out.
OPENING_DEFAULT_MINOR = 10**13
UNDERFUNDED = "program_underfunded"

Answer = tuple[int, dict[str, Any], float]


def approve(name: str, event: dict[str, Any]) -> Answer:
    """cardflow's gateway approving every real-time request in full."""
    return 200, {"decision": "approve", "approved_amount_minor": None, "reason": "approved"}, 0


class Issuer:
    """The issuer's API over HTTP, asserting the status each call must get."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> httpx.Response:
        headers = {} if key is None else {"Idempotency-Key": key}
        return await self.http.request(method, path, json=body, params=params, headers=headers)

    async def ok(
        self,
        method: str,
        path: str,
        body: Any = None,
        status: int = 200,
        params: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> Any:
        response = await self.call(method, path, body, params, key)
        assert response.status_code == status, response.text
        return response.json()

    async def card(self, currency: str = "USD") -> str:
        holder = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"}
        cardholder = await self.ok("POST", "/v1/cardholders", {**holder, "address": ADDRESS}, 201)
        body = {"cardholder_id": cardholder["id"], "type": "virtual", "currency": currency}
        return str((await self.ok("POST", "/v1/cards", body, 201))["id"])

    async def authorize(
        self, card_id: str, amount_minor: int, currency: str = "USD", merchant: Any = CAFE
    ) -> dict[str, Any]:
        body = {
            "card_id": card_id,
            "amount_minor": amount_minor,
            "currency": currency,
            "merchant": merchant,
        }
        return dict(await self.ok("POST", "/v1/simulate/authorize", body, 201))

    async def clear(
        self, auth_id: str, amount_minor: int | None = None, final: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"final": final}
        if amount_minor is not None:
            body["amount_minor"] = amount_minor
        path = f"/v1/simulate/authorizations/{auth_id}/clear"
        return dict(await self.ok("POST", path, body, 201))

    async def merchant_money(
        self, kind: str, card_id: str, amount_minor: int, currency: str = "USD"
    ) -> dict[str, Any]:
        body = {
            "card_id": card_id,
            "amount_minor": amount_minor,
            "currency": currency,
            "merchant": CAFE,
        }
        return dict(await self.ok("POST", f"/v1/simulate/{kind}", body, 201))

    async def balances(self) -> dict[str, int]:
        listed = await self.ok("GET", "/v1/program/balances")
        return {balance["currency"]: balance["available_minor"] for balance in listed["data"]}

    async def movements(self, currency: str = "USD") -> list[dict[str, Any]]:
        page = await self.ok(
            "GET", "/v1/program/balance_transactions", params={"currency": currency, "limit": 100}
        )
        assert page["has_more"] is False
        return list(page["data"])

    async def fund(
        self, amount_minor: int, key: str, reference: str = "wire-1", currency: str = "USD"
    ) -> dict[str, Any]:
        body = {"amount_minor": amount_minor, "currency": currency, "reference": reference}
        return dict(await self.ok("POST", "/v1/program/fundings", body, 201, key=key))


@pytest_asyncio.fixture
async def issuer(sim: Any) -> AsyncIterator[Issuer]:
    # Async on purpose: the issuer calls the test's gateway (on this event
    # loop) while a simulated authorization is in flight.
    async with httpx.AsyncClient(base_url=sim.provider_url("issuer"), timeout=10) as http:
        yield Issuer(http)


def program(sim: Any, **options: Any) -> None:
    sim.admin("PUT", "/options/issuer", options)


async def webhooks(sim: Any, webhook_sink: Any) -> list[dict[str, Any]]:
    """Every event the issuer emitted in this test, in order, once each has
    reached the gateway with a valid signature."""
    emitted = [row["event_id"] for row in sim.admin("GET", "/webhooks")]
    await webhook_sink.wait_for(len(emitted), seconds=DELIVERY_SECONDS_MAX)

    async def delivered() -> dict[str, dict[str, Any]]:
        return {received.event_id: received.event for received in webhook_sink.received}

    found = await polling.until(
        delivered,
        lambda events: all(event_id in events for event_id in emitted),
        f"every event delivered: {emitted}",
        DELIVERY_SECONDS_MAX,
    )
    assert webhook_sink.rejected == 0
    return [found[event_id] for event_id in emitted]


def moved(movements: list[dict[str, Any]]) -> list[tuple[str, int, str | None]]:
    return [(m["type"], m["amount_minor"], m["source_id"]) for m in movements]


# ----- the balance follows settlement ------------------------------------------------------


async def test_settlement_draws_the_balance_down_to_the_unit_and_refunds_add_back(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    program(sim, program_balances={"USD": 100_000})
    webhook_sink.realtime = approve
    card_id = await issuer.card()
    auth = await issuer.authorize(card_id, 4_000)
    first = await issuer.clear(auth["id"], 2_500)
    rest = await issuer.clear(auth["id"])
    forced = await issuer.merchant_money("force_posts", card_id, 1_000)
    refund = await issuer.merchant_money("refunds", card_id, 300)
    # In euros, settled in the card's dollars: 10_000 EUR cents at 1.08, and
    # the network's 1% fee on the 10_800.
    hotel = await issuer.authorize(card_id, 10_000, "EUR", HOTEL)
    abroad = await issuer.clear(hotel["id"])

    balances = await issuer.balances()
    assert balances == {
        "USD": 100_000 - 2_500 - 1_500 - 1_000 + 300 - 10_800 - 108,
        "EUR": OPENING_DEFAULT_MINOR,
        "GBP": OPENING_DEFAULT_MINOR,
        "JPY": OPENING_DEFAULT_MINOR,
        "USDT": OPENING_DEFAULT_MINOR,
    }
    movements = await issuer.movements("USD")
    assert moved(movements) == [
        ("opening", 100_000, None),
        ("clearing", -2_500, first["id"]),
        ("clearing", -1_500, rest["id"]),
        ("force_post", -1_000, forced["id"]),
        ("refund", 300, refund["id"]),
        ("clearing", -10_800, abroad["id"]),
        ("fee", -108, "fee_000001"),
    ]
    assert sum(m["amount_minor"] for m in movements) == balances["USD"] == 84_392
    # Every currency opened at once (USD first); USD's movements follow.
    assert [m["id"] for m in movements] == [
        "pbt_000001",
        *(f"pbt_{number:06d}" for number in range(6, 12)),
    ]
    assert {m["currency"] for m in movements} == {"USD"}
    assert moved(await issuer.movements("EUR")) == [("opening", OPENING_DEFAULT_MINOR, None)]


async def test_a_dispute_the_cardholder_wins_credits_the_program_and_a_lost_one_nothing(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    program(sim, program_balances={"USD": 50_000})
    webhook_sink.realtime = approve
    card_id = await issuer.card()
    won_purchase = await issuer.clear((await issuer.authorize(card_id, 4_000))["id"])
    lost_purchase = await issuer.clear((await issuer.authorize(card_id, 6_000))["id"])
    outcomes = {}
    for purchase, outcome, amount_minor in (
        (won_purchase, "won", 3_000),
        (lost_purchase, "lost", 6_000),
    ):
        body = {"transaction_id": purchase["id"], "reason": "fraudulent"}
        dispute = await issuer.ok(
            "POST", "/v1/disputes", {**body, "amount_minor": amount_minor}, 201
        )
        decide = f"/v1/simulate/disputes/{dispute['id']}/decide"
        outcomes[outcome] = await issuer.ok("POST", decide, {"outcome": outcome})

    assert (await issuer.balances())["USD"] == 50_000 - 4_000 - 6_000 + 3_000
    assert moved(await issuer.movements())[-3:] == [
        ("clearing", -4_000, won_purchase["id"]),
        ("clearing", -6_000, lost_purchase["id"]),
        ("dispute", 3_000, outcomes["won"]["chargeback_transaction_id"]),
    ]
    assert outcomes["lost"]["chargeback_transaction_id"] is None


async def test_a_funding_deposit_adds_to_the_balance(sim: Any, issuer: Issuer) -> None:
    program(sim, program_balances={"GBP": 0})
    body = {"amount_minor": 7_000, "currency": "GBP", "reference": "wire-9"}
    deposit = await issuer.ok("POST", "/v1/program/funding/deposits", body, 201)
    assert (await issuer.balances())["GBP"] == 7_000
    assert moved(await issuer.movements("GBP")) == [
        ("opening", 0, None),
        ("funding", 7_000, deposit["id"]),
    ]


async def test_the_opening_balances_are_read_once_at_the_first_use_after_a_reset(
    sim: Any, issuer: Issuer
) -> None:
    program(sim, program_balances={"USD": 1_000, "EUR": -5, "GBP": "lots", "JPY": True})
    first = await issuer.balances()
    program(sim, program_balances={"USD": 2_000})
    assert (
        await issuer.balances()
        == first
        == {
            "USD": 1_000,
            "EUR": OPENING_DEFAULT_MINOR,
            "GBP": OPENING_DEFAULT_MINOR,
            "JPY": OPENING_DEFAULT_MINOR,
            "USDT": OPENING_DEFAULT_MINOR,
        }
    )
    sim.reset()
    program(sim, program_balances={"USD": 2_000})
    assert (await issuer.balances())["USD"] == 2_000
    assert moved(await issuer.movements()) == [("opening", 2_000, None)]


# ----- the issuer's own decline ---------------------------------------------------------------


async def test_an_authorization_above_the_balance_is_declined_by_the_issuer_without_asking(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    program(sim, program_balances={"USD": 5_000})
    webhook_sink.realtime = approve
    card_id = await issuer.card()
    # 4_631 EUR cents at 1.08 is 5_001.48: one cent more than the program has.
    above = await issuer.authorize(card_id, 4_631, "EUR", HOTEL)
    assert (above["status"], above["requested_amount_minor"], above["amount_minor"]) == (
        "declined",
        5_001,
        0,
    )
    assert (above["decided_by"], above["decision_reason"]) == ("issuer", UNDERFUNDED)
    [decision] = above["decisions"]
    assert (decision["outcome"], decision["decided_by"], decision["reason"]) == (
        "decline",
        "issuer",
        UNDERFUNDED,
    )
    assert webhook_sink.realtime_received == []

    at = await issuer.authorize(card_id, 5_000)
    assert (at["status"], at["amount_minor"], at["decided_by"]) == ("pending", 5_000, "cardflow")
    assert len(webhook_sink.realtime_received) == 1
    # Authorizations hold nothing of the balance: only settlement moves it.
    assert (await issuer.balances())["USD"] == 5_000

    increment = f"/v1/simulate/authorizations/{at['id']}/increment"
    refused = await issuer.ok("POST", increment, {"amount_minor": 5_001})
    assert refused["decisions"][-1]["decided_by"] == "issuer"
    assert refused["decisions"][-1]["reason"] == UNDERFUNDED
    assert refused["pending_amount_minor"] == 5_000
    assert len(webhook_sink.realtime_received) == 1
    grown = await issuer.ok("POST", increment, {"amount_minor": 5_000})
    assert (grown["pending_amount_minor"], grown["decisions"][-1]["decided_by"]) == (
        10_000,
        "cardflow",
    )
    assert len(webhook_sink.realtime_received) == 2

    # Settlement is never refused: the clearing takes the balance below zero.
    await issuer.clear(at["id"])
    assert (await issuer.balances())["USD"] == -5_000
    again = await issuer.authorize(card_id, 1)
    assert (again["status"], again["decision_reason"]) == ("declined", UNDERFUNDED)

    events = await webhooks(sim, webhook_sink)
    declined = [event for event in events if event["type"] == "authorization.declined"]
    assert [event["data"]["id"] for event in declined] == [above["id"], again["id"]]
    assert {event["data"]["decision_reason"] for event in declined} == {UNDERFUNDED}
    assert [event["type"] for event in events if event["data"].get("id") == above["id"]] == [
        "authorization.created",
        "authorization.declined",
    ]
    increments = [e["type"] for e in events if e["type"].startswith("authorization.increment")]
    assert increments == ["authorization.increment_declined", "authorization.incremented"]


# ----- fundings --------------------------------------------------------------------------------


async def test_a_funding_with_no_lead_time_is_credited_at_once_and_announced(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    program(sim, program_balances={"USD": 0})
    webhook_sink.realtime = approve
    card_id = await issuer.card()
    assert (await issuer.authorize(card_id, 2_500))["decision_reason"] == UNDERFUNDED

    funding = await issuer.fund(2_500, key="fund-1")
    assert {k: funding[k] for k in ("id", "status", "amount_minor", "currency", "reference")} == {
        "id": "pfd_000001",
        "status": "credited",
        "amount_minor": 2_500,
        "currency": "USD",
        "reference": "wire-1",
    }
    assert funding["credited_at"] is not None
    assert funding["credit_due_at"] == funding["created_at"]
    assert await issuer.ok("GET", "/v1/program/fundings/pfd_000001") == funding
    assert (await issuer.balances())["USD"] == 2_500
    assert moved(await issuer.movements())[-1] == ("funding", 2_500, "pfd_000001")
    assert (await issuer.authorize(card_id, 2_500))["status"] == "pending"

    credited = [e for e in await webhooks(sim, webhook_sink) if e["type"].startswith("program.")]
    assert [(event["type"], event["data"]) for event in credited] == [
        ("program.funding.credited", funding)
    ]


async def test_a_funding_is_pending_until_its_lead_time_has_passed_on_the_issuers_clock(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    program(sim, program_balances={"USD": 0}, funding_lead_seconds=HOUR_SECONDS)
    webhook_sink.realtime = approve
    card_id = await issuer.card()
    funding = await issuer.fund(1_000, key="fund-1")
    assert (funding["status"], funding["credited_at"]) == ("pending", None)
    due = datetime.fromisoformat(funding["credit_due_at"])
    assert due - datetime.fromisoformat(funding["created_at"]) == timedelta(seconds=HOUR_SECONDS)
    assert (await issuer.ok("GET", f"/v1/program/fundings/{funding['id']}"))["status"] == "pending"
    assert (await issuer.balances())["USD"] == 0
    assert (await issuer.authorize(card_id, 1_000))["decision_reason"] == UNDERFUNDED

    # The hour passes: the next request, whatever it is, finds it credited.
    program(sim, clock_offset_seconds=HOUR_SECONDS)
    approved = await issuer.authorize(card_id, 1_000)
    assert (approved["status"], approved["decided_by"]) == ("pending", "cardflow")
    credited = await issuer.ok("GET", f"/v1/program/fundings/{funding['id']}")
    assert credited["status"] == "credited"
    assert datetime.fromisoformat(credited["credited_at"]) >= due
    assert (await issuer.balances())["USD"] == 1_000

    events = await webhooks(sim, webhook_sink)
    assert [e["data"] for e in events if e["type"] == "program.funding.credited"] == [credited]


async def test_the_sandbox_credits_a_pending_funding_once(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    program(sim, program_balances={"EUR": 0}, funding_lead_seconds=HOUR_SECONDS)
    funding = await issuer.fund(9_000, key="fund-1", currency="EUR")
    credit = f"/v1/simulate/program/fundings/{funding['id']}/credit"
    credited = await issuer.ok("POST", credit, key="credit-1")
    assert (credited["id"], credited["status"]) == (funding["id"], "credited")
    assert (await issuer.balances())["EUR"] == 9_000

    replay = await issuer.call("POST", credit, key="credit-1")
    assert replay.status_code == 200 and replay.json() == credited
    assert replay.headers["idempotent-replayed"] == "true"
    again = await issuer.call("POST", credit, key="credit-2")
    assert again.status_code == 409
    assert (
        again.json()["detail"] == f"cannot credit program funding {funding['id']}: it is credited"
    )
    assert (await issuer.balances())["EUR"] == 9_000
    events = await webhooks(sim, webhook_sink)
    assert [e["data"] for e in events if e["type"] == "program.funding.credited"] == [credited]


async def test_a_funding_is_made_once_per_idempotency_key(sim: Any, issuer: Issuer) -> None:
    program(sim, program_balances={"USD": 0})
    first = await issuer.fund(1_200, key="wire-a")
    assert await issuer.fund(1_200, key="wire-a") == first
    body = {"amount_minor": 1_300, "currency": "USD", "reference": "wire-1"}
    other = await issuer.call("POST", "/v1/program/fundings", body, key="wire-a")
    assert other.status_code == 409
    assert other.json()["error"]["type"] == "idempotency_error"
    second = await issuer.fund(1_200, key="wire-b")
    assert second["id"] == "pfd_000002"

    listed = await issuer.ok("GET", "/v1/program/fundings", params={"reference": "wire-1"})
    assert ([f["id"] for f in listed["data"]], listed["has_more"]) == (
        ["pfd_000001", "pfd_000002"],
        False,
    )
    other_reference = await issuer.ok("GET", "/v1/program/fundings", params={"reference": "x"})
    assert other_reference == {"data": [], "has_more": False}
    assert (await issuer.balances())["USD"] == 2_400


async def test_fundings_and_movements_are_listed_a_page_at_a_time(sim: Any, issuer: Issuer) -> None:
    program(sim, program_balances={"JPY": 0})
    for number in range(3):
        await issuer.fund(100 + number, key=f"fund-{number}", currency="JPY")
    page = await issuer.ok("GET", "/v1/program/fundings", params={"limit": 2})
    assert ([f["id"] for f in page["data"]], page["has_more"]) == (
        ["pfd_000001", "pfd_000002"],
        True,
    )
    rest = await issuer.ok(
        "GET", "/v1/program/fundings", params={"limit": 2, "starting_after": "pfd_000002"}
    )
    assert ([f["id"] for f in rest["data"]], rest["has_more"]) == (["pfd_000003"], False)

    params: dict[str, Any] = {"currency": "JPY", "limit": 2}
    movements = await issuer.ok("GET", "/v1/program/balance_transactions", params=params)
    assert moved(movements["data"]) == [("opening", 0, None), ("funding", 100, "pfd_000001")]
    assert movements["has_more"] is True
    params["starting_after"] = movements["data"][-1]["id"]
    after = await issuer.ok("GET", "/v1/program/balance_transactions", params=params)
    assert moved(after["data"]) == [("funding", 101, "pfd_000002"), ("funding", 102, "pfd_000003")]
    assert after["has_more"] is False


# ----- refusals ----------------------------------------------------------------------------


FUNDING = {"amount_minor": 1_000, "currency": "USD", "reference": "wire-1"}


@pytest.mark.parametrize(
    ("change", "location"),
    [
        ({"amount_minor": 0}, ["body", "amount_minor"]),
        ({"amount_minor": -500}, ["body", "amount_minor"]),
        ({"amount_minor": 10.5}, ["body", "amount_minor"]),
        ({"amount_minor": "1000"}, ["body", "amount_minor"]),
        ({"amount_minor": 10**12 + 1}, ["body", "amount_minor"]),
        ({"currency": "XYZ"}, ["body", "currency"]),
        ({"reference": ""}, ["body", "reference"]),
        ({"reference": "r" * 141}, ["body", "reference"]),
        ({"memo": "extra"}, ["body", "memo"]),
    ],
)
async def test_a_bad_funding_is_a_422_naming_the_field(
    issuer: Issuer, change: dict[str, Any], location: list[str]
) -> None:
    response = await issuer.call("POST", "/v1/program/fundings", {**FUNDING, **change}, key="k")
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [location]


async def test_a_funding_without_a_key_or_a_reference_is_a_422_naming_it(issuer: Issuer) -> None:
    keyless = await issuer.call("POST", "/v1/program/fundings", FUNDING)
    assert keyless.status_code == 422
    assert [error["loc"] for error in keyless.json()["detail"]] == [["header", "idempotency-key"]]
    body = {"amount_minor": 1_000, "currency": "USD"}
    unnamed = await issuer.call("POST", "/v1/program/fundings", body, key="k")
    assert unnamed.status_code == 422
    assert [error["loc"] for error in unnamed.json()["detail"]] == [["body", "reference"]]
    assert (await issuer.ok("GET", "/v1/program/fundings"))["data"] == []


@pytest.mark.parametrize(
    ("params", "location"),
    [
        ({}, ["query", "currency"]),
        ({"currency": "XYZ"}, ["query", "currency"]),
        ({"currency": "USD", "limit": 0}, ["query", "limit"]),
        ({"currency": "USD", "starting_after": "pbt_999999"}, ["query", "starting_after"]),
    ],
)
async def test_a_bad_movement_listing_is_a_422_naming_the_parameter(
    issuer: Issuer, params: dict[str, Any], location: list[str]
) -> None:
    response = await issuer.call("GET", "/v1/program/balance_transactions", params=params)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [location]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/program/fundings/pfd_999999"),
        ("POST", "/v1/simulate/program/fundings/pfd_999999/credit"),
    ],
)
async def test_an_unknown_funding_is_a_404(issuer: Issuer, method: str, path: str) -> None:
    response = await issuer.call(method, path, key="k")
    assert response.status_code == 404
    assert response.json()["detail"] == "no program funding pfd_999999"
