"""The bank simulator: payouts to an IBAN through their lifecycle, refusals, webhooks,
and the operating account's balance and statement."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.simulators.waiting import everything_received

IBAN = "DE89370400440532013000"
IBAN_PAPER = "de89 3704 0044 0532 0130 00"
OTHER_IBAN = "GB82WEST12345698765432"
OPENING_EUR_MINOR = 100_000
# 123.45 EUR: both decimal places significant.
AMOUNT_MINOR = 12_345


def post(
    sim: Any, path: str, body: dict[str, Any] | None = None, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(f"{sim.provider_url('bank')}{path}", json=body, headers=headers, timeout=5)


def get(sim: Any, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{sim.provider_url('bank')}{path}", params=params, timeout=5)


def payout_body(
    amount_minor: int = AMOUNT_MINOR,
    reference: str = "wd_1",
    currency: str = "EUR",
    iban: str = IBAN,
) -> dict[str, Any]:
    return {
        "amount_minor": amount_minor,
        "currency": currency,
        "destination": {"iban": iban, "name": "Ada Lovelace"},
        "reference": reference,
    }


def pay(sim: Any, **fields: Any) -> dict[str, Any]:
    response = post(sim, "/v1/payouts", payout_body(**fields))
    assert response.status_code == 201, response.text
    return dict(response.json())


def available(sim: Any, currency: str = "EUR") -> int:
    response = get(sim, f"/v1/balances/{currency}")
    assert response.status_code == 200, response.text
    assert response.json()["currency"] == currency
    return int(response.json()["available_minor"])


def statement(sim: Any, currency: str = "EUR") -> list[tuple[str, int, str, str]]:
    response = get(sim, "/v1/statement", currency=currency)
    assert response.status_code == 200, response.text
    assert response.json()["has_more"] is False
    return [
        (line["kind"], line["amount_minor"], line["reference"], line["source_id"])
        for line in response.json()["data"]
    ]


def open_with(sim: Any, **balances: int) -> None:
    sim.admin("PUT", "/options/bank", {"opening_balances": balances})


async def test_a_payout_is_accepted_and_its_amount_leaves_the_balance_at_once(
    sim: Any, webhook_sink: Any
) -> None:
    open_with(sim, EUR=OPENING_EUR_MINOR)
    response = post(sim, "/v1/payouts", payout_body(iban=IBAN_PAPER), key="po-1")
    assert response.status_code == 201, response.text
    payout = response.json()
    assert payout["created_at"]
    assert payout == {
        "id": "po_000001",
        "status": "accepted",
        "amount_minor": AMOUNT_MINOR,
        "currency": "EUR",
        # Taken in the paper format, kept in the electronic one.
        "destination_iban": IBAN,
        "destination_name": "Ada Lovelace",
        "reference": "wd_1",
        "failure_reason": None,
        "return_reason": None,
        "created_at": payout["created_at"],
        "sent_at": None,
        "failed_at": None,
        "returned_at": None,
    }
    assert get(sim, "/v1/payouts/po_000001").json() == payout
    assert available(sim) == OPENING_EUR_MINOR - AMOUNT_MINOR
    assert statement(sim) == [("payout", -AMOUNT_MINOR, "wd_1", "po_000001")]
    # Acceptance is the answer to the call: no webhook.
    assert await everything_received(sim, webhook_sink) == []


async def test_a_sent_payout_that_comes_back_returns_its_amount(
    sim: Any, webhook_sink: Any
) -> None:
    open_with(sim, EUR=OPENING_EUR_MINOR)
    payout = pay(sim)
    sent = post(sim, f"/v1/simulate/payouts/{payout['id']}/send")
    assert sent.status_code == 200, sent.text
    assert sent.json()["status"] == "sent" and sent.json()["sent_at"]
    assert available(sim) == OPENING_EUR_MINOR - AMOUNT_MINOR

    returned = post(
        sim, f"/v1/simulate/payouts/{payout['id']}/return", {"reason": "account_closed"}
    )
    assert returned.status_code == 200, returned.text
    assert returned.json() == {
        **sent.json(),
        "status": "returned",
        "return_reason": "account_closed",
        "returned_at": returned.json()["returned_at"],
    }
    assert returned.json()["returned_at"]
    assert get(sim, f"/v1/payouts/{payout['id']}").json() == returned.json()
    assert available(sim) == OPENING_EUR_MINOR
    assert statement(sim) == [
        ("payout", -AMOUNT_MINOR, "wd_1", "po_000001"),
        ("payout_returned", AMOUNT_MINOR, "wd_1", "po_000001"),
    ]
    received = await everything_received(sim, webhook_sink)
    assert [(r.provider, r.event["type"], r.event["data"]) for r in received] == [
        ("bank", "payout.sent", sent.json()),
        ("bank", "payout.returned", returned.json()),
    ]


async def test_a_failed_payout_gives_its_amount_back(sim: Any, webhook_sink: Any) -> None:
    open_with(sim, EUR=OPENING_EUR_MINOR)
    payout = pay(sim)
    failed = post(sim, f"/v1/simulate/payouts/{payout['id']}/fail", {"reason": "account_frozen"})
    assert failed.status_code == 200, failed.text
    assert failed.json() == {
        **payout,
        "status": "failed",
        "failure_reason": "account_frozen",
        "failed_at": failed.json()["failed_at"],
    }
    assert failed.json()["failed_at"] and failed.json()["sent_at"] is None
    assert available(sim) == OPENING_EUR_MINOR
    assert statement(sim) == [
        ("payout", -AMOUNT_MINOR, "wd_1", "po_000001"),
        ("payout_failed", AMOUNT_MINOR, "wd_1", "po_000001"),
    ]
    [event] = await everything_received(sim, webhook_sink)
    assert (event.event["type"], event.event["data"]) == ("payout.failed", failed.json())


async def test_with_auto_send_a_payout_is_sent_as_it_is_made(sim: Any, webhook_sink: Any) -> None:
    sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    payout = pay(sim)
    assert payout["status"] == "sent" and payout["sent_at"]
    assert get(sim, f"/v1/payouts/{payout['id']}").json() == payout
    [event] = await everything_received(sim, webhook_sink)
    assert (event.event["type"], event.event["data"]) == ("payout.sent", payout)


@pytest.mark.parametrize(
    ("steps", "refused", "status"),
    [
        (["send"], "send", "sent"),
        (["send"], "fail", "sent"),
        ([], "return", "accepted"),
        (["fail"], "send", "failed"),
        (["fail"], "fail", "failed"),
        (["fail"], "return", "failed"),
        (["send", "return"], "return", "returned"),
        (["send", "return"], "send", "returned"),
    ],
)
async def test_an_illegal_transition_is_a_409_that_changes_nothing(
    sim: Any, webhook_sink: Any, steps: list[str], refused: str, status: str
) -> None:
    payout = pay(sim)
    bodies = {"send": None, "fail": {"reason": "other"}, "return": {"reason": "other"}}
    for step in steps:
        assert post(sim, f"/v1/simulate/payouts/{payout['id']}/{step}", bodies[step]).is_success
    before = get(sim, f"/v1/payouts/{payout['id']}").json()
    balance_before = available(sim)
    response = post(sim, f"/v1/simulate/payouts/{payout['id']}/{refused}", bodies[refused])
    assert response.status_code == 409
    assert response.json()["detail"].startswith(f"payout {payout['id']} is {status}; only ")
    assert get(sim, f"/v1/payouts/{payout['id']}").json() == before
    assert available(sim) == balance_before
    received = await everything_received(sim, webhook_sink)
    assert len(received) == len(steps)


async def test_a_payout_above_the_balance_is_refused_and_makes_nothing(
    sim: Any, webhook_sink: Any
) -> None:
    open_with(sim, EUR=AMOUNT_MINOR)
    response = post(sim, "/v1/payouts", payout_body(amount_minor=AMOUNT_MINOR + 1), key="po-1")
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"the operating account holds {AMOUNT_MINOR} EUR minor units,"
        f" below the payout's {AMOUNT_MINOR + 1}",
        "code": "insufficient_funds",
    }
    assert get(sim, "/v1/payouts", reference="wd_1").json() == {"data": [], "has_more": False}
    assert available(sim) == AMOUNT_MINOR and statement(sim) == []
    # The whole balance can go, to the last cent.
    assert pay(sim, amount_minor=AMOUNT_MINOR)["status"] == "accepted"
    assert available(sim) == 0
    refused = post(sim, "/v1/payouts", payout_body(amount_minor=1, reference="wd_2"))
    assert (refused.status_code, refused.json()["code"]) == (409, "insufficient_funds")
    assert await everything_received(sim, webhook_sink) == []


async def test_the_balance_counts_inbound_transfers_per_currency(
    sim: Any, webhook_sink: Any
) -> None:
    open_with(sim, EUR=OPENING_EUR_MINOR, USD=0)
    inbound = post(
        sim,
        "/v1/simulate/inbound_transfers",
        {"reference": "CF-REF-1", "amount_minor": 5_000, "currency": "USD"},
    ).json()
    assert available(sim, "USD") == 5_000
    usd = pay(sim, currency="USD", amount_minor=4_999, reference="wd_usd")
    eur = pay(sim, amount_minor=1, reference="wd_eur")
    assert (available(sim, "USD"), available(sim, "EUR")) == (1, OPENING_EUR_MINOR - 1)
    # A currency the option leaves out starts with the generous default.
    assert available(sim, "GBP") == 10**12
    assert statement(sim, "USD") == [
        ("inbound_transfer", 5_000, "CF-REF-1", inbound["id"]),
        ("payout", -4_999, "wd_usd", usd["id"]),
    ]
    assert statement(sim, "EUR") == [("payout", -1, "wd_eur", eur["id"])]
    assert statement(sim, "GBP") == []
    received = await everything_received(sim, webhook_sink)
    assert [r.event["type"] for r in received] == ["inbound_transfer.received"]


def test_the_statement_is_paged_oldest_first_with_each_line_whole(sim: Any) -> None:
    payouts = [pay(sim, amount_minor=amount, reference=f"wd_{amount}") for amount in (1, 2, 3)]
    failed = post(sim, f"/v1/simulate/payouts/{payouts[1]['id']}/fail", {"reason": "other"})
    first = get(sim, "/v1/statement", currency="EUR", limit=3).json()
    assert first["has_more"] is True
    [line, *_] = first["data"]
    assert line == {
        "id": "stl_000001",
        "kind": "payout",
        "amount_minor": -1,
        "currency": "EUR",
        "reference": "wd_1",
        "source_id": payouts[0]["id"],
        "at": payouts[0]["created_at"],
    }
    assert [x["id"] for x in first["data"]] == [
        "stl_000001",
        "stl_000002",
        "stl_000003",
    ]
    rest = get(sim, "/v1/statement", currency="EUR", limit=3, starting_after="stl_000003").json()
    assert rest["has_more"] is False
    assert [(x["id"], x["kind"], x["amount_minor"], x["at"]) for x in rest["data"]] == [
        ("stl_000004", "payout_failed", 2, failed.json()["failed_at"])
    ]
    unknown = get(sim, "/v1/statement", currency="EUR", starting_after="stl_999999")
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["query", "starting_after"]


def test_payouts_are_found_by_their_reference_oldest_first_in_pages(sim: Any) -> None:
    first = pay(sim, reference="wd_1")
    pay(sim, reference="wd_2")
    second = pay(sim, reference="wd_1", amount_minor=1)
    third = pay(sim, reference="wd_1", amount_minor=2)
    found = get(sim, "/v1/payouts", reference="wd_1").json()
    assert found == {"data": [first, second, third], "has_more": False}
    page = get(sim, "/v1/payouts", reference="wd_1", limit=2).json()
    assert page == {"data": [first, second], "has_more": True}
    rest = get(sim, "/v1/payouts", reference="wd_1", limit=2, starting_after=second["id"]).json()
    assert rest == {"data": [third], "has_more": False}
    assert get(sim, "/v1/payouts", reference="wd_9").json() == {"data": [], "has_more": False}


def test_a_keyed_payout_is_made_once_and_its_key_takes_no_other_payout(sim: Any) -> None:
    open_with(sim, EUR=OPENING_EUR_MINOR)
    first = post(sim, "/v1/payouts", payout_body(), key="po-1")
    again = post(sim, "/v1/payouts", payout_body(), key="po-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = post(sim, "/v1/payouts", payout_body(amount_minor=1), key="po-1")
    assert other.status_code == 409
    assert other.json()["error"]["type"] == "idempotency_error"
    assert get(sim, "/v1/payouts", reference="wd_1").json()["data"] == [first.json()]
    assert available(sim) == OPENING_EUR_MINOR - AMOUNT_MINOR


def test_unknown_payouts_are_404(sim: Any) -> None:
    assert get(sim, "/v1/payouts/po_999999").status_code == 404
    assert get(sim, "/v1/payouts/po_999999").json() == {"detail": "no payout po_999999"}
    for step, body in (
        ("send", None),
        ("fail", {"reason": "other"}),
        ("return", {"reason": "other"}),
    ):
        response = post(sim, f"/v1/simulate/payouts/po_999999/{step}", body)
        assert (response.status_code, response.json()) == (404, {"detail": "no payout po_999999"})


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        # The check digits of a real IBAN, one digit of its account number off.
        ({"iban": "DE89370400440532013001"}, ["destination", "iban"]),
        ({"iban": "DE8937040044053201300"}, ["destination", "iban"]),  # 21 chars, DE has 22
        ({"iban": "US12345678901234567"}, ["destination", "iban"]),  # no IBANs in the US
        ({"iban": "DE89-3704-0044-0532-0130-00"}, ["destination", "iban"]),
        ({"iban": ""}, ["destination", "iban"]),
        ({"name": ""}, ["destination", "name"]),
        ({"amount_minor": 0}, ["amount_minor"]),
        ({"amount_minor": 10.5}, ["amount_minor"]),
        ({"amount_minor": "100"}, ["amount_minor"]),
        ({"amount_minor": 10**15 + 1}, ["amount_minor"]),
        ({"currency": "USDT"}, ["currency"]),
        ({"currency": "XXX"}, ["currency"]),
        ({"reference": ""}, ["reference"]),
        ({"reference": "r" * 141}, ["reference"]),
    ],
)
def test_a_payout_the_bank_cannot_take_is_a_422_naming_the_field(
    sim: Any, fields: dict[str, Any], loc: list[str]
) -> None:
    body = payout_body()
    destination_fields = {k: v for k, v in fields.items() if k in ("iban", "name")}
    body["destination"] |= destination_fields
    body |= {k: v for k, v in fields.items() if k not in destination_fields}
    response = post(sim, "/v1/payouts", body)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", *loc]]
    assert get(sim, "/v1/payouts", reference="wd_1").json()["data"] == []


def test_other_bad_input_is_a_422_naming_the_field(sim: Any) -> None:
    payout = pay(sim)
    cases = [
        (post(sim, f"/v1/simulate/payouts/{payout['id']}/fail", {"reason": "Bad Reason"}), "body"),
        (post(sim, f"/v1/simulate/payouts/{payout['id']}/return", {"reason": "lost"}), "body"),
        (get(sim, "/v1/payouts"), "query"),
        (get(sim, "/v1/statement"), "query"),
        (get(sim, "/v1/balances/XXX"), "path"),
    ]
    assert [(r.status_code, r.json()["detail"][0]["loc"][0]) for r, _ in cases] == [
        (422, where) for _, where in cases
    ]
    assert [r.json()["detail"][0]["loc"][-1] for r, _ in cases] == [
        "reason",
        "reason",
        "reference",
        "currency",
        "currency",
    ]
