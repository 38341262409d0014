"""The simulated card issuer: card lifecycle and shipping, real-time
authorizations and what follows them, disputes, funding and settlement."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from schemas.units import DAY_SECONDS
from tests import polling
from tests.conftest import free_port
from tests.providers import running, simulator_process

ADDRESS = {
    "line1": "1 Main St",
    "line2": "Apt 4",
    "city": "Springfield",
    "postal_code": "12345",
    "country": "US",
}
CAFE = {"name": "Corner Cafe", "mcc": "5812", "country": "US"}
HOTEL = {"name": "Hotel Lutetia", "mcc": "7011", "country": "FR"}
DELIVERY_SECONDS_MAX = 10

Answer = tuple[int, dict[str, Any], float]


def answer(decision: str, approved: int | None = None, reason: str = "ok") -> Answer:
    """What cardflow's gateway says to a real-time authorization request."""
    return 200, {"decision": decision, "approved_amount_minor": approved, "reason": reason}, 0


def always(reply: Answer) -> Callable[[str, dict[str, Any]], Answer]:
    return lambda name, event: reply


APPROVE = always(answer("approve"))


class Issuer:
    """The issuer's API over HTTP, asserting the status each call must get."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def call(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        return await self.http.request(method, path, json=body, params=params)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = await self.call(method, path, body)
        assert response.status_code == status, response.text
        return response.json()

    async def refused(self, method: str, path: str, body: Any = None, status: int = 409) -> str:
        response = await self.call(method, path, body)
        assert response.status_code == status, response.text
        return str(response.json()["detail"])

    async def cardholder(self) -> str:
        body = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"}
        created = await self.ok("POST", "/v1/cardholders", {**body, "address": ADDRESS}, 201)
        return str(created["id"])

    async def card(self, card_type: str = "virtual", currency: str = "USD") -> dict[str, Any]:
        cardholder_id = await self.cardholder()
        body = {"cardholder_id": cardholder_id, "type": card_type, "currency": currency}
        return dict(await self.ok("POST", "/v1/cards", body, 201))

    async def ship(self, card_id: str, status: str | None = None) -> dict[str, Any]:
        body = {} if status is None else {"status": status}
        return dict(await self.ok("POST", f"/v1/simulate/cards/{card_id}/shipping", body))

    async def state(self, card_id: str, state: str) -> dict[str, Any]:
        return dict(await self.ok("PATCH", f"/v1/cards/{card_id}", {"state": state}))

    async def authorize(
        self,
        card_id: str,
        amount_minor: int,
        currency: str = "USD",
        merchant: dict[str, str] = CAFE,
        partial: bool = False,
    ) -> dict[str, Any]:
        body = {
            "card_id": card_id,
            "amount_minor": amount_minor,
            "currency": currency,
            "merchant": merchant,
            "partial_approval_capable": partial,
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

    async def authorization(self, auth_id: str) -> dict[str, Any]:
        return dict(await self.ok("GET", f"/v1/authorizations/{auth_id}"))


@pytest_asyncio.fixture
async def issuer(sim: Any) -> AsyncIterator[Issuer]:
    # Async on purpose: the issuer calls the test's gateway (on this event
    # loop) while a simulated authorization is in flight.
    async with httpx.AsyncClient(base_url=sim.provider_url("issuer"), timeout=10) as http:
        yield Issuer(http)


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


async def event_types(sim: Any, webhook_sink: Any) -> list[str]:
    return [event["type"] for event in await webhooks(sim, webhook_sink)]


# ----- cardholders and cards ----------------------------------------------------------


async def test_a_cardholder_is_created_and_read_back(issuer: Issuer) -> None:
    cardholder_id = await issuer.cardholder()
    found = await issuer.ok("GET", f"/v1/cardholders/{cardholder_id}")
    assert cardholder_id == "ch_000001"
    assert found["status"] == "active" and found["address"] == ADDRESS


async def test_a_virtual_card_is_open_at_once_and_never_shows_its_number(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    card = await issuer.card("virtual", "EUR")
    assert card["id"] == "card_000001" and card["state"] == "open"
    assert card["currency"] == "EUR" and card["shipping"] is None
    assert len(card["last4"]) == 4 and card["last4"].isdigit()
    assert card["token"].startswith("tok_")
    assert not {"pan", "number", "card_number", "cvv"} & set(card)
    events = await webhooks(sim, webhook_sink)
    assert [event["type"] for event in events] == ["cardholder.created", "card.created"]
    assert events[1]["data"] == card


async def test_a_physical_card_ships_and_activates_only_once_delivered(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    card = await issuer.card("physical")
    card_id = card["id"]
    assert card["state"] == "pending_fulfillment"
    assert card["shipping"]["status"] == "pending"
    assert card["shipping"]["name"] == "Ada Lovelace" and card["shipping"]["address"] == ADDRESS
    refusal = await issuer.refused("POST", f"/v1/cards/{card_id}/activate")
    assert "pending_fulfillment" in refusal

    assert (await issuer.ship(card_id))["shipping"]["status"] == "submitted"
    shipped = await issuer.ship(card_id)
    assert shipped["state"] == "pending_activation"
    assert shipped["shipping"]["status"] == "shipped"
    assert shipped["shipping"]["carrier"] and shipped["shipping"]["tracking_number"]
    assert date.fromisoformat(shipped["shipping"]["eta"]) > datetime.now(UTC).date()
    refusal = await issuer.refused("POST", f"/v1/cards/{card_id}/activate")
    assert "before delivery" in refusal and "shipped" in refusal

    assert (await issuer.ship(card_id))["shipping"]["status"] == "delivered"
    opened = await issuer.ok("POST", f"/v1/cards/{card_id}/activate")
    assert opened["state"] == "open" and opened["activated_at"]
    assert "open" in await issuer.refused("POST", f"/v1/cards/{card_id}/activate")

    events = await webhooks(sim, webhook_sink)
    assert [event["type"] for event in events] == [
        "cardholder.created",
        "card.created",
        "card.shipping.updated",
        "fee.charged",
        "card.shipping.updated",
        "card.shipping.updated",
        "card.activated",
    ]
    assert [e["data"]["shipping"]["status"] for e in events if e["type"].startswith("card.s")] == [
        "submitted",
        "shipped",
        "delivered",
    ]
    fee = events[3]["data"]
    assert fee["type"] == "card_production" and fee["card_id"] == card_id
    assert fee["amount_minor"] == 300 and fee["currency"] == "USD"


async def test_a_card_pauses_resumes_and_closes(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    card_id = (await issuer.card())["id"]
    assert (await issuer.state(card_id, "paused"))["state"] == "paused"
    # Asking for the state a card is in changes nothing and announces nothing.
    assert (await issuer.state(card_id, "paused"))["state"] == "paused"
    assert (await issuer.state(card_id, "open"))["state"] == "open"
    closed = await issuer.ok("PATCH", f"/v1/cards/{card_id}", {"state": "closed", "reason": "lost"})
    assert closed["state"] == "closed" and closed["state_reason"] == "lost" and closed["closed_at"]
    assert (await issuer.ok("GET", f"/v1/cards/{card_id}"))["state"] == "closed"
    assert (await event_types(sim, webhook_sink))[2:] == [
        "card.paused",
        "card.resumed",
        "card.closed",
    ]


@pytest.mark.parametrize(
    ("card_type", "setup", "wanted", "message"),
    [
        ("virtual", "closed", "paused", "cannot pause card card_000001: it is closed"),
        ("virtual", "closed", "open", "cannot resume card card_000001: it is closed"),
        ("physical", None, "paused", "it is pending_fulfillment, and pause needs open"),
        ("physical", None, "open", "a new physical card opens by activation"),
    ],
)
async def test_illegal_state_changes_are_refused_with_a_409(
    issuer: Issuer, card_type: str, setup: str | None, wanted: str, message: str
) -> None:
    card_id = (await issuer.card(card_type))["id"]
    if setup is not None:
        await issuer.state(card_id, setup)
    before = await issuer.ok("GET", f"/v1/cards/{card_id}")
    refusal = await issuer.refused("PATCH", f"/v1/cards/{card_id}", {"state": wanted})
    assert message in refusal
    assert await issuer.ok("GET", f"/v1/cards/{card_id}") == before


async def test_a_virtual_card_is_never_activated_shipped_or_rescheduled(issuer: Issuer) -> None:
    card_id = (await issuer.card("virtual"))["id"]
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    for path, body in [
        (f"/v1/cards/{card_id}/activate", None),
        (f"/v1/simulate/cards/{card_id}/shipping", {}),
        (f"/v1/cards/{card_id}/shipping/reschedule", {"delivery_date": tomorrow}),
    ]:
        assert "is virtual" in await issuer.refused("POST", path, body)


async def test_shipping_moves_one_step_at_a_time_and_stops_at_its_end(issuer: Issuer) -> None:
    returned_id = (await issuer.card("physical"))["id"]
    refusal = await issuer.refused(
        "POST", f"/v1/simulate/cards/{returned_id}/shipping", {"status": "delivered"}
    )
    assert "it can move to submitted, not delivered" in refusal
    await issuer.ship(returned_id)
    await issuer.ship(returned_id)
    returned = await issuer.ship(returned_id, "returned")
    assert returned["shipping"]["status"] == "returned"
    assert returned["state"] == "pending_activation"
    assert "before delivery" in await issuer.refused("POST", f"/v1/cards/{returned_id}/activate")
    assert "nothing (final)" in await issuer.refused(
        "POST", f"/v1/simulate/cards/{returned_id}/shipping", {}
    )

    failed_id = (await issuer.card("physical"))["id"]
    await issuer.ship(failed_id)
    failed = await issuer.ship(failed_id, "failure")
    assert failed["shipping"]["status"] == "failure" and failed["state"] == "pending_fulfillment"

    closed_id = (await issuer.card("physical"))["id"]
    await issuer.state(closed_id, "closed")
    assert "closed" in await issuer.refused("POST", f"/v1/simulate/cards/{closed_id}/shipping", {})


async def test_delivery_is_rescheduled_only_before_shipment(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    card_id = (await issuer.card("physical"))["id"]
    path = f"/v1/cards/{card_id}/shipping/reschedule"
    today = datetime.now(UTC).date()
    later = today + timedelta(days=20)
    rescheduled = await issuer.ok("POST", path, {"delivery_date": later.isoformat()})
    assert rescheduled["shipping"]["requested_delivery_date"] == later.isoformat()
    await issuer.ship(card_id)
    even_later = later + timedelta(days=1)
    await issuer.ok("POST", path, {"delivery_date": even_later.isoformat()})
    shipped = await issuer.ship(card_id)
    # The carrier keeps to the date asked for when it is later than its estimate.
    assert shipped["shipping"]["eta"] == even_later.isoformat()

    refusal = await issuer.refused("POST", path, {"delivery_date": even_later.isoformat()})
    assert "already shipped" in refusal and "only before shipment" in refusal
    response = await issuer.call("POST", path, {"delivery_date": today.isoformat()})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "delivery_date"]
    types = await event_types(sim, webhook_sink)
    assert types.count("card.shipping.updated") == 4  # two reschedules, submitted, shipped


async def test_reissue_closes_the_old_card_and_links_the_new_one(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    old = await issuer.card("physical", "GBP")
    new = await issuer.ok("POST", f"/v1/cards/{old['id']}/reissue", {"reason": "damaged"}, 201)
    assert new["id"] != old["id"] and new["replaces"] == old["id"]
    assert new["type"] == "physical" and new["currency"] == "GBP"
    assert new["state"] == "pending_fulfillment" and new["reissue_reason"] == "damaged"
    # A damaged card keeps its number; it gets a new token and a new shipment.
    assert new["last4"] == old["last4"] and new["token"] != old["token"]
    assert new["shipping"]["status"] == "pending"
    assert new["shipping"]["address"] == old["shipping"]["address"]
    closed = await issuer.ok("GET", f"/v1/cards/{old['id']}")
    assert closed["state"] == "closed" and closed["replaced_by"] == new["id"]
    assert closed["state_reason"] == "reissued (damaged)"
    assert "closed" in await issuer.refused("POST", f"/v1/cards/{old['id']}/reissue", {})

    virtual = await issuer.card("virtual")
    stolen = await issuer.ok(
        "POST", f"/v1/cards/{virtual['id']}/reissue", {"reason": "stolen"}, 201
    )
    assert stolen["state"] == "open" and stolen["shipping"] is None

    events = await webhooks(sim, webhook_sink)
    reissue_events = [e for e in events if e["type"] in ("card.closed", "card.reissued")]
    assert [(e["type"], e["data"]["id"]) for e in reissue_events] == [
        ("card.closed", old["id"]),
        ("card.reissued", new["id"]),
        ("card.closed", virtual["id"]),
        ("card.reissued", stolen["id"]),
    ]


async def test_cards_are_listed_per_cardholder_a_page_at_a_time(issuer: Issuer) -> None:
    first = await issuer.card()
    holder = first["cardholder_id"]
    more = [
        await issuer.ok(
            "POST", "/v1/cards", {"cardholder_id": holder, "type": kind, "currency": "USD"}, 201
        )
        for kind in ("physical", "virtual")
    ]
    await issuer.card()  # another cardholder's
    page = (
        await issuer.call("GET", "/v1/cards", params={"cardholder_id": holder, "limit": 2})
    ).json()
    assert [card["id"] for card in page["data"]] == [first["id"], more[0]["id"]]
    assert page["has_more"] is True
    params = {"cardholder_id": holder, "limit": 2, "starting_after": more[0]["id"]}
    rest = (await issuer.call("GET", "/v1/cards", params=params)).json()
    assert [card["id"] for card in rest["data"]] == [more[1]["id"]] and rest["has_more"] is False


async def test_a_cards_authorizations_and_transactions_are_listed_a_page_at_a_time(
    issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card())["id"]
    other = (await issuer.card())["id"]
    auths = [await issuer.authorize(card_id, amount) for amount in (100, 200, 300)]
    await issuer.authorize(other, 400)
    cleared = await issuer.clear(auths[0]["id"])
    page = (
        await issuer.call("GET", "/v1/authorizations", params={"card_id": card_id, "limit": 2})
    ).json()
    assert [a["id"] for a in page["data"]] == [auths[0]["id"], auths[1]["id"]]
    assert page["data"][0]["status"] == "cleared" and page["has_more"] is True
    params = {"card_id": card_id, "limit": 2, "starting_after": auths[1]["id"]}
    rest = (await issuer.call("GET", "/v1/authorizations", params=params)).json()
    assert [a["id"] for a in rest["data"]] == [auths[2]["id"]] and rest["has_more"] is False
    listed = (await issuer.call("GET", "/v1/transactions", params={"card_id": card_id})).json()
    assert listed == {"data": [cleared], "has_more": False}
    unknown = {"card_id": card_id, "starting_after": "auth_nope"}
    refused = await issuer.call("GET", "/v1/authorizations", params=unknown)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["query", "starting_after"]


@pytest.mark.parametrize(
    ("path", "body", "location"),
    [
        ("/v1/cards", {"cardholder_id": "ch_1", "type": "metal", "currency": "USD"}, "type"),
        ("/v1/cards", {"cardholder_id": "ch_1", "type": "virtual", "currency": "XYZ"}, "currency"),
        (
            "/v1/cards",
            {"cardholder_id": "ch_1", "type": "virtual", "currency": "USD", "shipping": {}},
            "shipping",
        ),
        (
            "/v1/simulate/authorize",
            {"card_id": "card_1", "amount_minor": 10.5, "currency": "USD", "merchant": CAFE},
            "amount_minor",
        ),
        (
            "/v1/simulate/authorize",
            {"card_id": "card_1", "amount_minor": 100, "currency": "USD", "merchant": {}},
            "merchant",
        ),
        (
            "/v1/program/funding/deposits",
            {"amount_minor": "100", "currency": "USD"},
            "amount_minor",
        ),
        ("/v1/disputes", {"transaction_id": "txn_1", "reason": "bored"}, "reason"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    issuer: Issuer, path: str, body: dict[str, Any], location: str
) -> None:
    response = await issuer.call("POST", path, body)
    assert response.status_code == 422
    assert location in [str(error["loc"][1]) for error in response.json()["detail"]]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/cardholders/ch_999999",
        "/v1/cards/card_999999",
        "/v1/authorizations/auth_999999",
        "/v1/transactions/txn_999999",
        "/v1/disputes/dp_999999",
    ],
)
async def test_unknown_resources_are_404s(issuer: Issuer, path: str) -> None:
    response = await issuer.call("GET", path)
    assert response.status_code == 404 and path.rsplit("/", 1)[1] in response.text


# ----- real-time authorization ---------------------------------------------------------


async def test_an_approved_authorization_holds_the_amount_cardflow_was_asked_for(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card = await issuer.card()
    auth = await issuer.authorize(card["id"], 1_250)
    assert auth["id"] == "auth_000001" and auth["status"] == "pending"
    assert auth["amount_minor"] == auth["pending_amount_minor"] == 1_250
    assert auth["decided_by"] == "cardflow" and auth["decision_reason"] == "ok"

    [asked] = webhook_sink.realtime_received
    assert asked.provider == "issuer" and asked.event["type"] == "authorization.request"
    assert asked.event_id == asked.event["id"]
    data = asked.event["data"]
    assert data["authorization_id"] == auth["id"] and data["kind"] == "initial"
    assert data["card_id"] == card["id"] and data["cardholder_id"] == card["cardholder_id"]
    assert (data["amount_minor"], data["currency"]) == (1_250, "USD")
    assert data["merchant"] == CAFE and data["partial_approval_capable"] is False

    events = await webhooks(sim, webhook_sink)
    assert [event["type"] for event in events][-1] == "authorization.created"
    assert events[-1]["data"]["id"] == auth["id"]


async def test_a_declined_authorization_is_recorded_with_cardflows_reason(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = always(answer("decline", reason="insufficient_funds"))
    card_id = (await issuer.card())["id"]
    auth = await issuer.authorize(card_id, 5_000)
    assert auth["status"] == "declined" and auth["pending_amount_minor"] == 0
    assert auth["decided_by"] == "cardflow" and auth["decision_reason"] == "insufficient_funds"
    types = await event_types(sim, webhook_sink)
    assert types[-2:] == ["authorization.created", "authorization.declined"]
    refusal = await issuer.refused("POST", f"/v1/simulate/authorizations/{auth['id']}/clear", {})
    assert "declined" in refusal


async def test_a_partial_approval_holds_only_when_the_merchant_can_take_it(
    issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = always(answer("approve", approved=600, reason="partial"))
    card_id = (await issuer.card())["id"]
    partial = await issuer.authorize(card_id, 1_000, partial=True)
    assert partial["status"] == "pending" and partial["requested_amount_minor"] == 1_000
    assert partial["amount_minor"] == partial["pending_amount_minor"] == 600
    all_or_nothing = await issuer.authorize(card_id, 1_000, partial=False)
    assert all_or_nothing["status"] == "declined" and all_or_nothing["decided_by"] == "cardflow"
    assert "cannot take a partial approval" in all_or_nothing["decision_reason"]


async def test_a_gateway_slower_than_the_deadline_gets_the_stand_in_decision(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/issuer", {"authorization_deadline_ms": 300})
    webhook_sink.realtime = lambda name, event: (200, answer("approve")[1], 1)
    card_id = (await issuer.card())["id"]
    declined = await issuer.authorize(card_id, 700)
    assert declined["status"] == "declined" and declined["decided_by"] == "stand_in"
    assert declined["decision_reason"] == "stand-in decline: no answer within the 300 ms deadline"

    sim.admin("PUT", "/options/issuer", {"stand_in_decision": "approve"})
    approved = await issuer.authorize(card_id, 700)
    assert approved["status"] == "pending" and approved["decided_by"] == "stand_in"
    assert approved["pending_amount_minor"] == 700
    assert len(webhook_sink.realtime_received) == 2


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ((500, {"error": "boom"}, 0), "stand-in decline: gateway answered HTTP 500"),
        ((200, {"decision": "maybe", "reason": "?"}, 0), "malformed gateway answer: decision"),
        (answer("approve", approved=2_000), "malformed gateway answer: approved 2000 of 1000"),
    ],
)
async def test_an_unusable_gateway_answer_gets_the_stand_in_decision(
    issuer: Issuer, webhook_sink: Any, reply: Answer, reason: str
) -> None:
    webhook_sink.realtime = always(reply)
    card_id = (await issuer.card())["id"]
    auth = await issuer.authorize(card_id, 1_000)
    assert auth["status"] == "declined" and auth["decided_by"] == "stand_in"
    assert reason in auth["decision_reason"]


@pytest.mark.parametrize(
    ("card_type", "state", "reason"),
    [
        ("virtual", "paused", "is paused"),
        ("virtual", "closed", "is closed"),
        ("physical", None, "is not activated (pending_fulfillment)"),
    ],
)
async def test_a_card_that_is_not_open_is_declined_without_asking_cardflow(
    sim: Any, issuer: Issuer, webhook_sink: Any, card_type: str, state: str | None, reason: str
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card(card_type))["id"]
    if state is not None:
        await issuer.state(card_id, state)
    auth = await issuer.authorize(card_id, 900)
    assert auth["status"] == "declined" and auth["decided_by"] == "issuer"
    assert reason in auth["decision_reason"]
    assert webhook_sink.realtime_received == []
    assert (await event_types(sim, webhook_sink))[-2:] == [
        "authorization.created",
        "authorization.declined",
    ]


async def test_a_foreign_purchase_is_converted_and_charged_a_conversion_fee(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card("virtual", "USD"))["id"]
    auth = await issuer.authorize(card_id, 10_000, "EUR", HOTEL)
    assert (auth["merchant_amount_minor"], auth["merchant_currency"]) == (10_000, "EUR")
    assert (auth["pending_amount_minor"], auth["currency"]) == (10_800, "USD")
    assert auth["conversion_rate"] == "1.0800000000"
    asked = webhook_sink.realtime_received[0].event["data"]
    assert (asked["amount_minor"], asked["merchant_amount_minor"]) == (10_800, 10_000)
    cleared = await issuer.clear(auth["id"])
    assert cleared["amount_minor"] == 10_800 and cleared["merchant_amount_minor"] == 10_000
    events = await webhooks(sim, webhook_sink)
    assert [event["type"] for event in events][-2:] == ["transaction.cleared", "fee.charged"]
    fee = events[-1]["data"]
    assert fee["type"] == "currency_conversion" and fee["amount_minor"] == 108
    assert fee["transaction_id"] == cleared["id"] and fee["authorization_id"] == auth["id"]


async def test_an_increment_asks_cardflow_again_and_grows_the_hold_only_when_approved(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    def decide(name: str, event: dict[str, Any]) -> Answer:
        data = event["data"]
        if data["kind"] == "incremental" and data["pending_amount_minor"] >= 15_000:
            return answer("decline", reason="hold limit")
        return answer("approve")

    webhook_sink.realtime = decide
    card_id = (await issuer.card())["id"]
    auth = await issuer.authorize(card_id, 10_000, merchant=HOTEL)
    path = f"/v1/simulate/authorizations/{auth['id']}/increment"
    grown = await issuer.ok("POST", path, {"amount_minor": 5_000})
    assert grown["pending_amount_minor"] == grown["amount_minor"] == 15_000
    refused = await issuer.ok("POST", path, {"amount_minor": 5_000})
    assert refused["pending_amount_minor"] == 15_000 and refused["status"] == "pending"
    assert [d["outcome"] for d in refused["decisions"]] == ["approve", "approve", "decline"]
    assert refused["decisions"][-1]["reason"] == "hold limit"
    asked = [received.event["data"] for received in webhook_sink.realtime_received]
    assert [(a["kind"], a["amount_minor"], a["pending_amount_minor"]) for a in asked] == [
        ("initial", 10_000, 0),
        ("incremental", 5_000, 10_000),
        ("incremental", 5_000, 15_000),
    ]
    assert (await event_types(sim, webhook_sink))[-3:] == [
        "authorization.created",
        "authorization.incremented",
        "authorization.increment_declined",
    ]


async def test_advice_changes_the_hold_without_asking_cardflow(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card())["id"]
    auth = await issuer.authorize(card_id, 10_000, merchant={**CAFE, "mcc": "5542"})
    path = f"/v1/simulate/authorizations/{auth['id']}/advice"
    advised = await issuer.ok("POST", path, {"pending_amount_minor": 4_321, "reason": "pump done"})
    assert advised["pending_amount_minor"] == advised["amount_minor"] == 4_321
    assert advised["history"][-1] == {
        "kind": "advice",
        "amount_minor": -5_679,
        "pending_amount_minor": 4_321,
        "reference": "pump done",
        "at": advised["history"][-1]["at"],
    }
    assert len(webhook_sink.realtime_received) == 1
    events = await webhooks(sim, webhook_sink)
    assert events[-1]["type"] == "authorization.advice"
    assert events[-1]["data"]["pending_amount_minor"] == 4_321


async def test_clearings_equal_lower_higher_and_several_each_settle_a_transaction(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card())["id"]

    equal = await issuer.authorize(card_id, 1_000)
    txn = await issuer.clear(equal["id"], 1_000)
    assert txn["id"] == "txn_000001" and txn["type"] == "clearing" and txn["direction"] == "debit"
    assert (txn["authorization_status"], txn["authorization_pending_amount_minor"]) == (
        "cleared",
        0,
    )

    higher = await issuer.authorize(card_id, 1_000, merchant={**CAFE, "name": "Tipped"})
    over = await issuer.clear(higher["id"], 1_200)
    assert over["amount_minor"] == 1_200 and over["authorization_status"] == "cleared"
    assert (await issuer.authorization(higher["id"]))["cleared_amount_minor"] == 1_200

    split = await issuer.authorize(card_id, 1_000)
    first = await issuer.clear(split["id"], 400)
    assert (first["authorization_status"], first["authorization_pending_amount_minor"]) == (
        "pending",
        600,
    )
    second = await issuer.clear(split["id"], 250)
    assert second["authorization_pending_amount_minor"] == 350
    last = await issuer.clear(split["id"])
    assert last["amount_minor"] == 350 and last["authorization_status"] == "cleared"
    found = await issuer.authorization(split["id"])
    assert found["cleared_amount_minor"] == 1_000 and found["pending_amount_minor"] == 0
    assert [entry["reference"] for entry in found["history"] if entry["kind"] == "clearing"] == [
        first["id"],
        second["id"],
        last["id"],
    ]
    assert "cleared" in await issuer.refused(
        "POST", f"/v1/simulate/authorizations/{split['id']}/clear", {"amount_minor": 1}
    )

    events = await webhooks(sim, webhook_sink)
    cleared = [event["data"] for event in events if event["type"] == "transaction.cleared"]
    assert [(t["id"], t["authorization_id"], t["amount_minor"]) for t in cleared] == [
        ("txn_000001", equal["id"], 1_000),
        ("txn_000002", higher["id"], 1_200),
        ("txn_000003", split["id"], 400),
        ("txn_000004", split["id"], 250),
        ("txn_000005", split["id"], 350),
    ]


async def test_a_final_lower_clearing_releases_what_stays_held(
    issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card())["id"]
    auth = await issuer.authorize(card_id, 1_000)
    txn = await issuer.clear(auth["id"], 800, final=True)
    assert txn["amount_minor"] == 800 and txn["released_amount_minor"] == 200
    found = await issuer.authorization(auth["id"])
    assert found["status"] == "cleared" and found["pending_amount_minor"] == 0
    assert found["released_amount_minor"] == 200


async def test_a_reversal_gives_back_part_or_all_of_what_is_held(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card())["id"]
    auth = await issuer.authorize(card_id, 1_000)
    path = f"/v1/simulate/authorizations/{auth['id']}/reverse"
    partial = await issuer.ok("POST", path, {"amount_minor": 300}, 201)
    assert partial["id"] == "rev_000001" and partial["amount_minor"] == 300
    assert (partial["authorization_status"], partial["authorization_pending_amount_minor"]) == (
        "pending",
        700,
    )
    assert "only 700 is pending" in await issuer.refused("POST", path, {"amount_minor": 701})
    rest = await issuer.ok("POST", path, {}, 201)
    assert rest["amount_minor"] == 700 and rest["authorization_status"] == "reversed"
    found = await issuer.authorization(auth["id"])
    assert found["reversed_amount_minor"] == 1_000 and found["pending_amount_minor"] == 0
    assert "reversed" in await issuer.refused("POST", path, {})
    events = await webhooks(sim, webhook_sink)
    reversed_ = [event["data"] for event in events if event["type"] == "authorization.reversed"]
    assert [(r["id"], r["authorization_id"], r["amount_minor"]) for r in reversed_] == [
        ("rev_000001", auth["id"], 300),
        ("rev_000002", auth["id"], 700),
    ]


async def test_an_expired_authorization_releases_its_hold_and_may_still_be_presented(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card())["id"]
    auth = await issuer.authorize(card_id, 2_500)
    expired = await issuer.ok("POST", f"/v1/simulate/authorizations/{auth['id']}/expire")
    assert expired["status"] == "expired" and expired["pending_amount_minor"] == 0
    assert expired["released_amount_minor"] == 2_500
    assert "expired" in await issuer.refused(
        "POST", f"/v1/simulate/authorizations/{auth['id']}/reverse", {}
    )
    events = await webhooks(sim, webhook_sink)
    assert events[-1]["type"] == "authorization.expired"
    assert events[-1]["data"]["released_amount_minor"] == 2_500
    # A late presentment settles even though the hold is gone.
    late = await issuer.clear(auth["id"], 2_500)
    assert late["amount_minor"] == 2_500 and late["authorization_status"] == "cleared"


async def test_a_refund_credits_and_a_force_post_debits_without_an_authorization(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    card_id = (await issuer.card())["id"]
    await issuer.state(card_id, "closed")
    money = {"card_id": card_id, "amount_minor": 1_999, "currency": "USD", "merchant": CAFE}
    refund = await issuer.ok("POST", "/v1/simulate/refunds", money, 201)
    assert (refund["type"], refund["direction"], refund["amount_minor"]) == (
        "refund",
        "credit",
        1_999,
    )
    forced = await issuer.ok("POST", "/v1/simulate/force_posts", money, 201)
    assert (forced["type"], forced["direction"]) == ("force_post", "debit")
    assert forced["authorization_id"] is None
    assert await issuer.ok("GET", f"/v1/transactions/{forced['id']}") == forced
    events = await webhooks(sim, webhook_sink)
    assert [(event["type"], event["data"]["id"]) for event in events[-2:]] == [
        ("transaction.refunded", refund["id"]),
        ("transaction.force_posted", forced["id"]),
    ]


# ----- disputes -------------------------------------------------------------------------


async def settled_purchase(issuer: Issuer, amount_minor: int = 4_000) -> dict[str, Any]:
    card_id = (await issuer.card())["id"]
    auth = await issuer.authorize(card_id, amount_minor)
    return await issuer.clear(auth["id"])


EVIDENCE = [{"type": "cardholder_statement", "description": "I never received the goods"}]


async def test_a_dispute_won_after_arbitration_credits_a_chargeback(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    txn = await settled_purchase(issuer)
    opened = await issuer.ok(
        "POST",
        "/v1/disputes",
        {"transaction_id": txn["id"], "reason": "not_received", "evidence": EVIDENCE},
        201,
    )
    assert opened["id"] == "dp_000001" and opened["status"] == "open"
    assert (opened["amount_minor"], opened["currency"]) == (4_000, "USD")
    assert opened["evidence"][0]["description"] == EVIDENCE[0]["description"]
    decide = f"/v1/simulate/disputes/{opened['id']}/decide"
    for outcome in ("representment", "pre_arbitration", "won"):
        decided = await issuer.ok("POST", decide, {"outcome": outcome})
        assert decided["status"] == outcome
    chargeback = await issuer.ok("GET", f"/v1/transactions/{decided['chargeback_transaction_id']}")
    assert (chargeback["type"], chargeback["direction"], chargeback["amount_minor"]) == (
        "chargeback",
        "credit",
        4_000,
    )
    assert chargeback["dispute_id"] == opened["id"]
    funding = await issuer.ok("GET", "/v1/program/funding")
    usd = next(balance for balance in funding["balances"] if balance["currency"] == "USD")
    assert (usd["settled_debits_minor"], usd["settled_credits_minor"]) == (4_000, 4_000)
    assert [entry["status"] for entry in decided["history"]] == [
        "open",
        "representment",
        "pre_arbitration",
        "won",
    ]
    assert (await event_types(sim, webhook_sink))[-4:] == [
        "dispute.created",
        "dispute.representment",
        "dispute.pre_arbitration",
        "dispute.won",
    ]


@pytest.mark.parametrize("ending", ["lost", "withdrawn"])
async def test_a_lost_or_withdrawn_dispute_credits_nothing_and_is_final(
    sim: Any, issuer: Issuer, webhook_sink: Any, ending: str
) -> None:
    webhook_sink.realtime = APPROVE
    txn = await settled_purchase(issuer)
    body = {"transaction_id": txn["id"], "reason": "fraudulent", "amount_minor": 1_500}
    dispute = await issuer.ok("POST", "/v1/disputes", body, 201)
    if ending == "lost":
        ended = await issuer.ok(
            "POST", f"/v1/simulate/disputes/{dispute['id']}/decide", {"outcome": "lost"}
        )
    else:
        ended = await issuer.ok("POST", f"/v1/disputes/{dispute['id']}/withdraw")
    assert ended["status"] == ending and ended["closed_at"]
    assert ended["chargeback_transaction_id"] is None and ended["amount_minor"] == 1_500
    for path, request in [
        (f"/v1/simulate/disputes/{dispute['id']}/decide", {"outcome": "won"}),
        (f"/v1/disputes/{dispute['id']}/withdraw", None),
        (f"/v1/disputes/{dispute['id']}/evidence", {"evidence": EVIDENCE}),
    ]:
        assert ending in await issuer.refused("POST", path, request)
    assert (await event_types(sim, webhook_sink))[-2:] == ["dispute.created", f"dispute.{ending}"]


async def test_a_dispute_needs_a_settled_debit_and_is_opened_once(
    issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    txn = await settled_purchase(issuer, 2_000)
    too_much = await issuer.call(
        "POST",
        "/v1/disputes",
        {"transaction_id": txn["id"], "reason": "duplicate", "amount_minor": 2_001},
    )
    assert too_much.status_code == 422
    assert too_much.json()["detail"][0]["loc"] == ["body", "amount_minor"]
    dispute = await issuer.ok(
        "POST", "/v1/disputes", {"transaction_id": txn["id"], "reason": "duplicate"}, 201
    )
    again = await issuer.refused(
        "POST", "/v1/disputes", {"transaction_id": txn["id"], "reason": "other"}
    )
    assert f"already disputed in {dispute['id']}" in again
    skip = await issuer.refused(
        "POST", f"/v1/simulate/disputes/{dispute['id']}/decide", {"outcome": "pre_arbitration"}
    )
    assert "needs it representment" in skip
    refund = await issuer.ok(
        "POST",
        "/v1/simulate/refunds",
        {"card_id": txn["card_id"], "amount_minor": 100, "currency": "USD", "merchant": CAFE},
        201,
    )
    refusal = await issuer.refused(
        "POST", "/v1/disputes", {"transaction_id": refund["id"], "reason": "other"}
    )
    assert "only clearings and force posts" in refusal
    missing = await issuer.call(
        "POST", "/v1/disputes", {"transaction_id": "txn_999999", "reason": "other"}
    )
    assert missing.status_code == 404


async def test_evidence_is_added_while_the_dispute_is_undecided(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    txn = await settled_purchase(issuer)
    dispute = await issuer.ok(
        "POST", "/v1/disputes", {"transaction_id": txn["id"], "reason": "not_as_described"}, 201
    )
    more = [{"type": "correspondence", "description": "Merchant refused a return"}]
    added = await issuer.ok("POST", f"/v1/disputes/{dispute['id']}/evidence", {"evidence": more})
    assert [item["type"] for item in added["evidence"]] == ["correspondence"]
    assert (await issuer.ok("GET", f"/v1/disputes/{dispute['id']}")) == added
    assert (await event_types(sim, webhook_sink))[-1] == "dispute.evidence_added"


# ----- program funding and settlement -------------------------------------------------------


async def test_program_funding_is_deposits_less_settled_spend_and_fees(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    deposit = {"amount_minor": 100_000, "currency": "USD", "reference": "wire-1"}
    funded = await issuer.ok("POST", "/v1/program/funding/deposits", deposit, 201)
    assert funded["id"] == "fund_000001"
    card_id = (await issuer.card())["id"]
    cleared = await issuer.authorize(card_id, 10_000, "EUR", HOTEL)  # 10_800 USD
    await issuer.clear(cleared["id"])  # and a 108 conversion fee
    await issuer.authorize(card_id, 2_000)  # still pending
    money = {"card_id": card_id, "amount_minor": 500, "currency": "USD", "merchant": CAFE}
    await issuer.ok("POST", "/v1/simulate/refunds", money, 201)

    funding = await issuer.ok("GET", "/v1/program/funding")
    usd = next(balance for balance in funding["balances"] if balance["currency"] == "USD")
    assert usd == {
        "currency": "USD",
        "deposited_minor": 100_000,
        "settled_debits_minor": 10_800,
        "settled_credits_minor": 500,
        "fees_minor": 108,
        "balance_minor": 100_000 - 10_800 + 500 - 108,
        "pending_authorizations_minor": 2_000,
        "available_minor": 100_000 - 10_800 + 500 - 108 - 2_000,
    }
    eur = next(balance for balance in funding["balances"] if balance["currency"] == "EUR")
    assert eur["balance_minor"] == 0
    assert (await event_types(sim, webhook_sink))[0] == "funding_deposit.created"


async def test_the_settlement_report_lists_exactly_the_days_records_as_json_and_csv(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card())["id"]
    cleared = await issuer.authorize(card_id, 3_000)
    clearing = await issuer.clear(cleared["id"], 1_000)
    reversal = await issuer.ok(
        "POST", f"/v1/simulate/authorizations/{cleared['id']}/reverse", {"amount_minor": 500}, 201
    )
    money = {"card_id": card_id, "amount_minor": 700, "currency": "USD", "merchant": CAFE}
    refund = await issuer.ok("POST", "/v1/simulate/refunds", money, 201)
    foreign = {**money, "currency": "EUR", "amount_minor": 5_000, "merchant": HOTEL}
    force_post = await issuer.ok("POST", "/v1/simulate/force_posts", foreign, 201)
    expired = await issuer.authorize(card_id, 900)
    await issuer.ok("POST", f"/v1/simulate/authorizations/{expired['id']}/expire")
    await issuer.authorize(card_id, 800)  # pending: not settled, not reported

    sim.admin("PUT", "/options/issuer", {"clock_offset_seconds": DAY_SECONDS})
    tomorrows = await issuer.clear(cleared["id"], 1_500)

    today = datetime.now(UTC).date()
    report = await issuer.ok("GET", f"/v1/reports/settlement/{today.isoformat()}")
    assert report["settlement_date"] == today.isoformat()
    assert [(r["record_type"], r["id"]) for r in report["records"]] == [
        ("clearing", clearing["id"]),
        ("reversal", reversal["id"]),
        ("refund", refund["id"]),
        ("force_post", force_post["id"]),
        ("fee", "fee_000001"),
    ]
    first = report["records"][0]
    assert first == {
        "record_type": "clearing",
        "id": clearing["id"],
        "created_at": clearing["created_at"],
        "card_id": card_id,
        "authorization_id": cleared["id"],
        "transaction_id": clearing["id"],
        "amount_minor": 1_000,
        "currency": "USD",
        "direction": "debit",
    }
    fee = report["records"][4]
    assert (fee["transaction_id"], fee["amount_minor"]) == (force_post["id"], 54)
    assert report["totals"] == [
        {
            "currency": "USD",
            "debits_minor": 1_000 + 5_400 + 54,
            "credits_minor": 700,
            "net_minor": 700 - 1_000 - 5_400 - 54,
            "records": 5,
        }
    ]

    response = await issuer.call(
        "GET", f"/v1/reports/settlement/{today.isoformat()}", params={"format": "csv"}
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["id"] for row in rows] == [record["id"] for record in report["records"]]
    assert rows[0] == {key: "" if value is None else str(value) for key, value in first.items()}
    assert rows[1]["transaction_id"] == "" and rows[1]["direction"] == "none"

    tomorrow = await issuer.ok("GET", f"/v1/reports/settlement/{today + timedelta(days=1)}")
    assert [(r["record_type"], r["id"]) for r in tomorrow["records"]] == [
        ("clearing", tomorrows["id"])
    ]
    empty = await issuer.ok("GET", f"/v1/reports/settlement/{today - timedelta(days=1)}")
    assert empty["records"] == [] and empty["totals"] == []

    bad = await issuer.call("GET", "/v1/reports/settlement/2024-13-45")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "settlement_date"
    bad_format = await issuer.call(
        "GET", f"/v1/reports/settlement/{today}", params={"format": "xml"}
    )
    assert bad_format.status_code == 422 and bad_format.json()["detail"][0]["loc"][-1] == "format"


async def test_a_clock_set_behind_and_a_late_settlement_move_records_between_days(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    """Behind by two days, what the issuer does now happened the day before
    yesterday; settling a day late, its transaction is in yesterday's report,
    not in the report of the day it happened."""
    webhook_sink.realtime = APPROVE
    sim.admin("PUT", "/options/issuer", {"clock_offset_seconds": -2 * DAY_SECONDS})
    today = datetime.now(UTC).date()
    happened, settled = today - timedelta(days=2), today - timedelta(days=1)
    card_id = (await issuer.card())["id"]
    on_time = await issuer.clear((await issuer.authorize(card_id, 1_000))["id"], 1_000)
    sim.admin("PUT", "/options/issuer", {"settlement_delay_days": 1})
    late = await issuer.clear((await issuer.authorize(card_id, 2_000))["id"], 2_000)

    assert date.fromisoformat(late["created_at"][:10]) == happened
    assert late["settlement_date"] == settled.isoformat()
    assert on_time["settlement_date"] is None
    first = await issuer.ok("GET", f"/v1/reports/settlement/{happened.isoformat()}")
    assert [r["id"] for r in first["records"]] == [on_time["id"]]
    second = await issuer.ok("GET", f"/v1/reports/settlement/{settled.isoformat()}")
    assert [(r["id"], r["created_at"]) for r in second["records"]] == [
        (late["id"], late["created_at"])
    ]
    # Ahead of a clock that is behind, today's report has nothing.
    assert (await issuer.ok("GET", f"/v1/reports/settlement/{today}"))["records"] == []


async def test_cards_and_authorizations_survive_a_restart(tmp_path: Path) -> None:
    # Nobody listens at this gateway: the issuer stands in, and webhooks wait.
    process = simulator_process(tmp_path, free_port(), f"http://127.0.0.1:{free_port()}")
    with running(process):
        async with httpx.AsyncClient(base_url=process.provider_url("issuer")) as http:
            before = Issuer(http)
            physical = await before.card("physical")
            shipped = await before.ship(physical["id"])
            virtual_id = (await before.card("virtual"))["id"]
            auth = await before.authorize(virtual_id, 1_000)
    assert auth["decided_by"] == "stand_in" and "unreachable" in auth["decision_reason"]
    with running(process):
        async with httpx.AsyncClient(base_url=process.provider_url("issuer")) as http:
            after = Issuer(http)
            assert await after.ok("GET", f"/v1/cards/{physical['id']}") == shipped
            assert await after.authorization(auth["id"]) == auth
            # Ids carry on where they stopped.
            assert (await after.card())["id"] == "card_000003"
        pending = [row for row in process.admin("GET", "/webhooks") if not row["delivered_at"]]
        assert [row["type"] for row in pending][:3] == [
            "cardholder.created",
            "card.created",
            "card.shipping.updated",
        ]


async def clearing_of(issuer: Issuer, process: Any, card_id: str, auth_id: str) -> tuple[int, int]:
    """The issuer's transactions clearing `auth_id`, and the
    transaction.cleared events it holds to send about them."""
    listed = await issuer.ok("GET", f"/v1/transactions?card_id={card_id}")
    ids = {t["id"] for t in listed["data"] if t.get("authorization_id") == auth_id}
    events = [
        row
        for row in process.admin("GET", "/webhooks")
        if row["type"] == "transaction.cleared" and row["about"] in ids
    ]
    return len(ids), len(events)


async def test_a_clearing_killed_at_any_write_is_recorded_whole_or_not_at_all(
    tmp_path: Path,
) -> None:
    """The issuer's process is killed (as SIGKILL would) after the first,
    second, third... write of a clearing, until one clearing gets through.
    Each time it comes back with the clearing whole (the authorization
    cleared, its transaction, the transaction.cleared event to send) or not
    at all, and the merchant's retry under the same Idempotency-Key ends with
    exactly one of each: never a cleared authorization nobody is told about."""
    from tests.providers import webhook_receiver

    async with webhook_receiver(free_port()) as gateway:
        gateway.realtime = APPROVE
        process = simulator_process(tmp_path, free_port(), gateway.url)
        gateway.secrets.update(process.secrets)
        with running(process):
            async with httpx.AsyncClient(
                base_url=process.provider_url("issuer"), timeout=10
            ) as http:
                issuer = Issuer(http)
                card_id = (await issuer.card())["id"]
                killed_at = 0
                while True:
                    auth = await issuer.authorize(card_id, 2_500)
                    assert auth["status"] == "pending", auth
                    process.fault(
                        kind="crash",
                        method="POST",
                        path_prefix=f"/issuer/v1/simulate/authorizations/{auth['id']}/clear",
                        after_writes=killed_at,
                        times=1,
                    )
                    path = f"/v1/simulate/authorizations/{auth['id']}/clear"
                    key = {"Idempotency-Key": f"clear-{auth['id']}"}
                    try:
                        cleared = await http.post(path, json={"final": True}, headers=key)
                    except httpx.HTTPError:
                        cleared = None
                    if cleared is not None:
                        # The clearing wrote fewer times than the crash waited for.
                        assert cleared.status_code == 201, cleared.text
                        assert killed_at > 2, "a clearing writes more than twice"
                        break
                    assert process.process is not None
                    assert process.process.wait(timeout=10) != 0
                    process.start()
                    found = await issuer.authorization(auth["id"])
                    transactions, events = await clearing_of(issuer, process, card_id, auth["id"])
                    seen = (found["status"], transactions, events)
                    assert seen in {("pending", 0, 0), ("cleared", 1, 1)}, (killed_at, seen)
                    retried = await http.post(path, json={"final": True}, headers=key)
                    if seen[0] == "pending":
                        assert retried.status_code == 201, retried.text
                    assert await clearing_of(issuer, process, card_id, auth["id"]) == (1, 1)
                    assert (await issuer.authorization(auth["id"]))["status"] == "cleared"
                    killed_at += 1
