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


# A customer's own wallet, where a withdrawal goes; one character off, its
# Base58Check checksum no longer matches.
RECIPIENT = SENDER
MISTYPED_RECIPIENT = "TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU8"
OPENING_MICRO_USDT = 5_000_000_000


def withdraw(
    sim: Any, amount_minor: int = AMOUNT_MICRO_USDT, reference: str = "wd_1"
) -> dict[str, Any]:
    response = post(
        sim,
        "/v1/withdrawals",
        {"to_address": RECIPIENT, "amount_minor": amount_minor, "reference": reference},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def custody(sim: Any) -> int:
    response = get(sim, "/v1/custody/balance")
    assert response.status_code == 200, response.text
    assert response.json()["currency"] == "USDT"
    return int(response.json()["balance_minor"])


async def test_a_withdrawal_is_broadcast_into_the_head_block_and_leaves_custody_at_once(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/tron", {"custody_opening_balance": OPENING_MICRO_USDT})
    head = mine(sim, 2)["head_block_number"]
    sent = withdraw(sim)
    assert re.fullmatch(r"[0-9a-f]{64}", sent["tx_hash"]) and sent["created_at"]
    assert sent == {
        "tx_hash": sent["tx_hash"],
        "to_address": RECIPIENT,
        "amount_minor": AMOUNT_MICRO_USDT,
        "currency": "USDT",
        "reference": "wd_1",
        "status": "confirming",
        "confirmations": 0,
        "block_number": head,
        "finality_confirmations": 19,
        "failure_reason": None,
        "created_at": sent["created_at"],
        "finalized_at": None,
        "failed_at": None,
    }
    assert get(sim, f"/v1/withdrawals/{sent['tx_hash']}").json() == sent
    assert custody(sim) == OPENING_MICRO_USDT - AMOUNT_MICRO_USDT
    [event] = await everything_received(sim, webhook_sink)
    assert (event.event["type"], event.event["data"]) == ("withdrawal.confirming", sent)


async def test_a_withdrawal_confirms_with_the_blocks_like_a_deposit_to_finality(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin(
        "PUT", "/options/tron", {"finality_confirmations": 8, "confirmation_milestones": [5, 2, 8]}
    )
    sent = withdraw(sim)
    arrived = deposit(sim, address_of(sim, "cus_1"))
    mine(sim, 1)
    mine(sim, 5)
    mine(sim, 10)
    received = await everything_received(sim, webhook_sink)
    of_withdrawal = [r for r in received if r.event["data"]["tx_hash"] == sent["tx_hash"]]
    assert timeline(of_withdrawal) == [
        ("withdrawal.confirming", 0),
        ("withdrawal.confirming", 2),
        ("withdrawal.confirming", 5),
        ("withdrawal.confirming", 8),
        ("withdrawal.finalized", 8),
    ]
    # The deposit in the same blocks counts as it always did.
    assert [r.event["type"] for r in received if r not in of_withdrawal] == [
        "deposit.detected",
        "deposit.confirmations",
        "deposit.confirmations",
        "deposit.confirmations",
        "deposit.finalized",
    ]
    final = get(sim, f"/v1/withdrawals/{sent['tx_hash']}").json()
    assert (final["status"], final["confirmations"]) == ("finalized", 8)
    assert final["finalized_at"] and of_withdrawal[-1].event["data"] == final
    assert get(sim, f"/v1/deposits/{arrived['tx_hash']}").json()["status"] == "finalized"


async def test_a_withdrawal_that_fails_before_finality_leaves_the_money_in_custody(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/tron", {"custody_opening_balance": OPENING_MICRO_USDT})
    sent = withdraw(sim)
    mine(sim, 3)
    failed = post(sim, f"/v1/simulate/withdrawals/{sent['tx_hash']}/fail", {"reason": "reverted"})
    assert failed.status_code == 200, failed.text
    assert failed.json() == {
        **sent,
        "status": "failed",
        "confirmations": 3,
        "failure_reason": "reverted",
        "failed_at": failed.json()["failed_at"],
    }
    assert failed.json()["failed_at"]
    assert custody(sim) == OPENING_MICRO_USDT
    # A failed withdrawal counts no further and fails only once.
    mine(sim, 30)
    again = post(sim, f"/v1/simulate/withdrawals/{sent['tx_hash']}/fail", {"reason": "reverted"})
    assert again.status_code == 409
    assert again.json() == {
        "detail": f"withdrawal {sent['tx_hash']} is failed; only a confirming one can fail"
    }
    assert get(sim, f"/v1/withdrawals/{sent['tx_hash']}").json() == failed.json()
    received = await everything_received(sim, webhook_sink)
    assert timeline(received) == [
        ("withdrawal.confirming", 0),
        ("withdrawal.confirming", 1),
        ("withdrawal.failed", 3),
    ]
    assert received[-1].event["data"] == failed.json()


async def test_a_finalized_withdrawal_cannot_fail(sim: Any, webhook_sink: Any) -> None:
    sim.admin("PUT", "/options/tron", {"finality_confirmations": 2})
    sent = withdraw(sim)
    mine(sim, 2)
    response = post(
        sim, f"/v1/simulate/withdrawals/{sent['tx_hash']}/fail", {"reason": "out_of_energy"}
    )
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"withdrawal {sent['tx_hash']} is finalized; only a confirming one can fail"
    }
    assert get(sim, f"/v1/withdrawals/{sent['tx_hash']}").json()["status"] == "finalized"
    received = await everything_received(sim, webhook_sink)
    assert [r.event["type"] for r in received] == [
        "withdrawal.confirming",
        "withdrawal.confirming",
        "withdrawal.finalized",
    ]


async def test_a_withdrawal_above_the_custody_balance_is_refused_and_sends_nothing(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/tron", {"custody_opening_balance": AMOUNT_MICRO_USDT})
    response = post(
        sim,
        "/v1/withdrawals",
        {"to_address": RECIPIENT, "amount_minor": AMOUNT_MICRO_USDT + 1, "reference": "wd_1"},
    )
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"custody holds {AMOUNT_MICRO_USDT} micro-USDT,"
        f" below the withdrawal's {AMOUNT_MICRO_USDT + 1}",
        "code": "insufficient_funds",
    }
    assert get(sim, "/v1/withdrawals", reference="wd_1").json() == {"data": [], "has_more": False}
    assert custody(sim) == AMOUNT_MICRO_USDT
    # Every last micro-USDT can go.
    withdraw(sim, AMOUNT_MICRO_USDT)
    assert custody(sim) == 0
    [event] = await everything_received(sim, webhook_sink)
    assert event.event["type"] == "withdrawal.confirming"


def test_custody_counts_finalized_deposits_withdrawals_not_failed_and_the_drift(sim: Any) -> None:
    sim.admin(
        "PUT",
        "/options/tron",
        {
            "custody_opening_balance": OPENING_MICRO_USDT,
            "custody_drift_minor": 7,
            "finality_confirmations": 2,
        },
    )
    assert custody(sim) == OPENING_MICRO_USDT - 7
    address = address_of(sim, "cus_1")
    final_deposit = deposit(sim, address, 1_000_000)
    mine(sim, 1)
    dropped_deposit = deposit(sim, address, 20_000_000)
    confirming_deposit = deposit(sim, address, 300_000_000)
    sent = withdraw(sim, 4_000, reference="wd_1")
    failing = withdraw(sim, 50_000, reference="wd_2")
    # A deposit counts once final; a withdrawal from its broadcast.
    assert custody(sim) == OPENING_MICRO_USDT - 7 - 4_000 - 50_000
    assert post(sim, f"/v1/simulate/deposits/{dropped_deposit['tx_hash']}/reorg").is_success
    failed = post(
        sim, f"/v1/simulate/withdrawals/{failing['tx_hash']}/fail", {"reason": "reverted"}
    )
    assert failed.status_code == 200, failed.text
    mine(sim, 1)
    assert get(sim, f"/v1/deposits/{final_deposit['tx_hash']}").json()["status"] == "finalized"
    assert custody(sim) == OPENING_MICRO_USDT - 7 + 1_000_000 - 4_000
    mine(sim, 1)
    assert get(sim, f"/v1/withdrawals/{sent['tx_hash']}").json()["status"] == "finalized"
    assert custody(sim) == OPENING_MICRO_USDT - 7 + 1_000_000 + 300_000_000 - 4_000
    assert get(sim, f"/v1/deposits/{confirming_deposit['tx_hash']}").json()["status"] == (
        "finalized"
    )


def test_withdrawals_are_found_by_their_reference_oldest_first_in_pages(sim: Any) -> None:
    first = withdraw(sim, 1, reference="wd_1")
    withdraw(sim, 2, reference="wd_2")
    second = withdraw(sim, 3, reference="wd_1")
    third = withdraw(sim, 4, reference="wd_1")
    found = get(sim, "/v1/withdrawals", reference="wd_1").json()
    assert found == {"data": [first, second, third], "has_more": False}
    page = get(sim, "/v1/withdrawals", reference="wd_1", limit=2).json()
    assert page == {"data": [first, second], "has_more": True}
    rest = get(
        sim, "/v1/withdrawals", reference="wd_1", limit=2, starting_after=second["tx_hash"]
    ).json()
    assert rest == {"data": [third], "has_more": False}
    assert get(sim, "/v1/withdrawals", reference="wd_9").json() == {"data": [], "has_more": False}


def test_a_keyed_withdrawal_is_sent_once(sim: Any) -> None:
    body = {"to_address": RECIPIENT, "amount_minor": 1, "reference": "wd_1"}
    url = f"{sim.provider_url('tron')}/v1/withdrawals"
    first = httpx.post(url, json=body, headers={"Idempotency-Key": "wd-1"}, timeout=5)
    again = httpx.post(url, json=body, headers={"Idempotency-Key": "wd-1"}, timeout=5)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert get(sim, "/v1/withdrawals", reference="wd_1").json()["data"] == [first.json()]


def test_an_unknown_withdrawal_is_404(sim: Any) -> None:
    unknown = "a" * 64
    assert get(sim, f"/v1/withdrawals/{unknown}").json() == {"detail": f"no withdrawal {unknown}"}
    assert get(sim, f"/v1/withdrawals/{unknown}").status_code == 404
    response = post(sim, f"/v1/simulate/withdrawals/{unknown}/fail", {"reason": "reverted"})
    assert (response.status_code, response.json()) == (404, {"detail": f"no withdrawal {unknown}"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to_address": MISTYPED_RECIPIENT}, "to_address"),
        ({"to_address": "0x9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"}, "to_address"),
        # Base58 and 34 characters, but not 0x41 and an account.
        ({"to_address": "1" * 34}, "to_address"),
        ({"amount_minor": 0}, "amount_minor"),
        ({"amount_minor": 1.5}, "amount_minor"),
        ({"amount_minor": "100"}, "amount_minor"),
        ({"reference": ""}, "reference"),
        ({"reference": "r" * 141}, "reference"),
    ],
)
def test_a_withdrawal_custody_cannot_send_is_a_422_naming_the_field(
    sim: Any, body: dict[str, Any], field: str
) -> None:
    valid = {"to_address": RECIPIENT, "amount_minor": 1, "reference": "wd_1"}
    response = post(sim, "/v1/withdrawals", {**valid, **body})
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]
    assert get(sim, "/v1/withdrawals", reference="wd_1").json()["data"] == []


def test_other_withdrawal_input_is_a_422_naming_the_field(sim: Any) -> None:
    sent = withdraw(sim)
    bad_reason = post(sim, f"/v1/simulate/withdrawals/{sent['tx_hash']}/fail", {"reason": "Oops!"})
    no_reference = get(sim, "/v1/withdrawals")
    assert (bad_reason.status_code, no_reference.status_code) == (422, 422)
    assert bad_reason.json()["detail"][0]["loc"] == ["body", "reason"]
    assert no_reference.json()["detail"][0]["loc"] == ["query", "reference"]
