"""The Tron custody simulator: one address per customer, deposits confirmed block by block,
webhooks at the configured milestones and finality, reorgs before finality."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.simulators.waiting import everything_received

# 1234.567891 USDT: every one of the six decimal places is significant.
AMOUNT_MICRO_USDT = 1_234_567_891
SENDER = "TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU7"
TRON_ADDRESS = re.compile(r"^T[1-9A-HJ-NP-Za-km-z]{33}$")


def post(sim: Any, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{sim.provider_url('tron')}{path}", json=body, timeout=5)


def get(sim: Any, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{sim.provider_url('tron')}{path}", params=params, timeout=5)


def address_of(sim: Any, customer_id: str) -> str:
    """The deposit address made for a customer custody has not seen before."""
    response = post(sim, "/v1/addresses", {"customer_id": customer_id})
    assert response.status_code == 201, response.text
    return str(response.json()["address"])


def deposit(sim: Any, address: str, amount_minor: int = AMOUNT_MICRO_USDT) -> dict[str, Any]:
    response = post(
        sim,
        "/v1/simulate/deposits",
        {"address": address, "amount_minor": amount_minor, "from_address": SENDER},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def mine(sim: Any, count: int) -> dict[str, Any]:
    response = post(sim, "/v1/simulate/blocks", {"count": count})
    assert response.status_code == 200, response.text
    return dict(response.json())


def timeline(received: list[Any]) -> list[tuple[str, int]]:
    return [(r.event["type"], r.event["data"]["confirmations"]) for r in received]


def test_the_same_customer_always_gets_the_same_address_and_others_another(sim: Any) -> None:
    first = post(sim, "/v1/addresses", {"customer_id": "cus_1"})
    again = post(sim, "/v1/addresses", {"customer_id": "cus_1"})
    other = post(sim, "/v1/addresses", {"customer_id": "cus_2"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json() == first.json()
    address = first.json()["address"]
    assert TRON_ADDRESS.match(address) and TRON_ADDRESS.match(other.json()["address"])
    assert other.json()["address"] != address
    assert get(sim, f"/v1/addresses/{address}").json() == first.json()
    # Derived from the customer id, not drawn at random: it outlives the state
    # (which is gone: the address is made anew, 201).
    sim.reset()
    assert address_of(sim, "cus_1") == address


def test_an_address_custody_did_not_make_is_unknown_and_takes_no_deposit(sim: Any) -> None:
    unknown = get(sim, f"/v1/addresses/{SENDER}")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": f"no deposit address {SENDER}"}
    response = post(
        sim,
        "/v1/simulate/deposits",
        {"address": SENDER, "amount_minor": 1, "from_address": SENDER},
    )
    assert response.status_code == 404 and response.json() == unknown.json()
    nothing = get(sim, f"/v1/deposits/{'0' * 64}")
    assert nothing.status_code == 404 and nothing.json() == {"detail": f"no deposit {'0' * 64}"}


async def test_a_deposit_is_reported_at_each_configured_milestone_then_at_finality(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin(
        "PUT", "/options/tron", {"finality_confirmations": 8, "confirmation_milestones": [5, 2, 8]}
    )
    address = address_of(sim, "cus_1")
    created = deposit(sim, address)
    assert re.fullmatch(r"[0-9a-f]{64}", created["tx_hash"])
    assert (created["status"], created["confirmations"]) == ("confirming", 0)
    assert created["amount_minor"] == AMOUNT_MICRO_USDT and created["currency"] == "USDT"

    mine(sim, 1)  # 1 confirmation: no milestone
    mine(sim, 5)  # 6: passes milestones 2 and 5 in one call
    head = mine(sim, 10)  # 16 blocks on top, but final at 8: it stops counting there
    # Every webhook these blocks will ever cause: none after finality.
    received = await everything_received(sim, webhook_sink)

    assert timeline(received) == [
        ("deposit.detected", 0),
        ("deposit.confirmations", 2),
        ("deposit.confirmations", 5),
        ("deposit.confirmations", 8),
        ("deposit.finalized", 8),
    ]
    assert {r.event["data"]["tx_hash"] for r in received} == {created["tx_hash"]}
    assert all(r.event["data"]["amount_minor"] == AMOUNT_MICRO_USDT for r in received)
    assert received[-1].event["data"]["status"] == "finalized"
    found = get(sim, f"/v1/deposits/{created['tx_hash']}").json()
    assert (found["status"], found["confirmations"]) == ("finalized", 8)
    assert found["finalized_at"] and head["head_block_number"] == created["block_number"] + 16


async def test_by_default_milestones_are_1_6_and_19_and_19_is_final(
    sim: Any, webhook_sink: Any
) -> None:
    created = deposit(sim, address_of(sim, "cus_1"))
    mine(sim, 19)
    received = await everything_received(sim, webhook_sink)
    assert timeline(received) == [
        ("deposit.detected", 0),
        ("deposit.confirmations", 1),
        ("deposit.confirmations", 6),
        ("deposit.confirmations", 19),
        ("deposit.finalized", 19),
    ]
    assert get(sim, f"/v1/deposits/{created['tx_hash']}").json()["status"] == "finalized"


async def test_a_reorg_before_finality_drops_the_deposit_for_good(
    sim: Any, webhook_sink: Any
) -> None:
    created = deposit(sim, address_of(sim, "cus_1"))
    mine(sim, 3)
    response = post(sim, f"/v1/simulate/deposits/{created['tx_hash']}/reorg")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["confirmations"]) == ("dropped", 0)

    # A dropped deposit neither counts on nor drops twice.
    mine(sim, 30)
    again = post(sim, f"/v1/simulate/deposits/{created['tx_hash']}/reorg")
    assert again.status_code == 200 and again.json() == response.json()
    # Every webhook the deposit, the blocks and both reorgs will ever cause.
    received = await everything_received(sim, webhook_sink)
    assert timeline(received) == [
        ("deposit.detected", 0),
        ("deposit.confirmations", 1),
        ("deposit.dropped", 0),
    ]
    assert get(sim, f"/v1/deposits/{created['tx_hash']}").json() == response.json()


async def test_a_finalized_deposit_cannot_be_dropped(sim: Any, webhook_sink: Any) -> None:
    sim.admin("PUT", "/options/tron", {"finality_confirmations": 2})
    created = deposit(sim, address_of(sim, "cus_1"))
    mine(sim, 2)
    response = post(sim, f"/v1/simulate/deposits/{created['tx_hash']}/reorg")
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"deposit {created['tx_hash']} is final and cannot be dropped"
    }
    assert get(sim, f"/v1/deposits/{created['tx_hash']}").json()["status"] == "finalized"
    received = await everything_received(sim, webhook_sink)
    assert [r.event["type"] for r in received] == [
        "deposit.detected",
        "deposit.confirmations",
        "deposit.finalized",
    ]


async def test_deposits_are_listed_per_address_oldest_first_in_pages(
    sim: Any, webhook_sink: Any
) -> None:
    first_address, second_address = address_of(sim, "cus_1"), address_of(sim, "cus_2")
    first_deposits = [deposit(sim, first_address, amount) for amount in (1, 20, 300)]
    second_deposit = deposit(sim, second_address, 4_000_000)

    first = get(sim, f"/v1/addresses/{first_address}/deposits", limit=2).json()
    assert [d["tx_hash"] for d in first["data"]] == [d["tx_hash"] for d in first_deposits[:2]]
    assert first["has_more"] is True
    rest = get(
        sim,
        f"/v1/addresses/{first_address}/deposits",
        limit=2,
        starting_after=first["data"][-1]["tx_hash"],
    ).json()
    assert rest == {"data": [first_deposits[2]], "has_more": False}
    others = get(sim, f"/v1/addresses/{second_address}/deposits").json()
    assert others == {"data": [second_deposit], "has_more": False}

    stranger = get(
        sim, f"/v1/addresses/{first_address}/deposits", starting_after=second_deposit["tx_hash"]
    )
    assert stranger.status_code == 422
    assert stranger.json()["detail"][0]["loc"] == ["query", "starting_after"]
    received = await everything_received(sim, webhook_sink)
    assert [r.event["data"]["tx_hash"] for r in received] == [
        d["tx_hash"] for d in [*first_deposits, second_deposit]
    ]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/addresses", {"customer_id": ""}, "customer_id"),
        ("/v1/simulate/deposits", {"amount_minor": 1.5}, "amount_minor"),
        ("/v1/simulate/deposits", {"amount_minor": "100"}, "amount_minor"),
        ("/v1/simulate/deposits", {"amount_minor": 0}, "amount_minor"),
        ("/v1/simulate/deposits", {"from_address": "0x9f8e7d"}, "from_address"),
        ("/v1/simulate/deposits", {"address": "TooShort"}, "address"),
        ("/v1/simulate/blocks", {"count": 0}, "count"),
        ("/v1/simulate/blocks", {"count": 1_001}, "count"),
    ],
)
def test_bad_input_gets_a_422_naming_the_field(
    sim: Any, path: str, body: dict[str, Any], field: str
) -> None:
    valid = {"address": SENDER, "amount_minor": 1, "from_address": SENDER}
    if path == "/v1/simulate/deposits":
        body = {**valid, **body}
    response = post(sim, path, body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]
