"""A card's controls as data (schemas/card_controls.py), enforced by real
authorizations: each control, each scope (program, customer, card) with the
narrower winning, temporary controls undone by the card's own timer, a
single-use card closing itself, and changes of the program's or a
customer's controls reaching every card, late or repeated copies ignored.

Each test asks the card through the issuer simulator (its real-time
request, through the gateway), sets controls through the API, and checks
the money the ledger holds."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from activities.api_keys import SCOPE_OPERATIONS
from activities.ledger.verify import verify
from schemas.card_controls import ControlsChangeResult, ScopedControls
from schemas.cards import CardInput
from schemas.issuer import CardState, Merchant
from schemas.money import Currency
from tests import polling
from tests.conftest import Platform
from tests.customers import (
    FREE,
    authorize,
    card_state,
    issue_card,
    issuer,
    open_card,
    wallet_becomes,
)
from workflows.cards import SCOPED_CONTROLS_SIGNAL

FUNDS = {Currency.USD: 500_000}
GROCER = Merchant(name="Corner Shop", mcc="5411", country="GB")
CASINO = Merchant(name="Lucky Star", mcc="7995", country="GB")
BISTRO = Merchant(name="Le Bistro", mcc="5812", country="FR")
AIRLINE = Merchant(name="Sky Air", mcc="4511", country="US")


async def api(platform: Platform) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=platform.gateway_url, headers=platform.api_headers, timeout=60
    )


async def put_card_controls(platform: Platform, card_id: str, controls: dict[str, Any]) -> None:
    async with await api(platform) as http:
        answer = await http.put(
            f"/v1/cards/{card_id}/controls",
            json=controls,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
    assert answer.status_code == 200, answer.text


async def reason(platform: Platform, card_id: str, amount: int, merchant: Merchant) -> str:
    return (await authorize(platform, card_id, amount, merchant=merchant)).decision_reason


async def change_controls(
    platform: Platform, controls: dict[str, Any], customer_id: str | None = None
) -> dict[str, Any]:
    """A change of the program's (or a customer's) controls, through the API,
    waited for until every card was sent it; its result."""
    request_id = f"ctl-{uuid.uuid4().hex[:10]}"
    body = {"request_id": request_id, "controls": controls, "reason": "test"}
    if customer_id is None:
        path, headers = "/v1/card-controls", await platform.key_headers(SCOPE_OPERATIONS)
    else:
        path, headers = f"/v1/customers/{customer_id}/card-controls", platform.api_headers
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=60) as http:
        answer = await http.post(
            path, json=body, headers={**headers, "Idempotency-Key": request_id}
        )
    assert answer.status_code == 202, answer.text
    handle = platform.stack.client.get_workflow_handle(
        answer.json()["workflow_id"], result_type=ControlsChangeResult
    )
    result: dict[str, Any] = (await handle.result()).model_dump()
    return result


async def test_mcc_and_country_lists_with_named_groups_decide_and_hold_nothing_refused(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform, FUNDS)
    await put_card_controls(
        platform,
        card_id,
        {"mcc_block": ["group:gambling"], "country_allow": ["GB", "US"]},
    )
    assert await reason(platform, card_id, 1_000, CASINO) == "mcc_not_allowed"
    assert await reason(platform, card_id, 1_000, BISTRO) == "country_not_allowed"
    assert await reason(platform, card_id, 1_000, GROCER) == "approved"
    # An allow list lets only what it names: travel, anywhere but France.
    await put_card_controls(
        platform, card_id, {"mcc_allow": ["group:travel"], "country_block": ["FR"]}
    )
    assert await reason(platform, card_id, 1_000, GROCER) == "mcc_not_allowed"
    assert await reason(platform, card_id, 1_000, AIRLINE) == "approved"
    await wallet_becomes(platform, customer_id, posted=500_000, pending=2_000)
    assert await verify(platform.stack.pool) == []


async def test_a_merchant_lock_on_the_first_merchant_or_a_named_one(platform: Platform) -> None:
    _, card_id, _ = await open_card(platform, FUNDS)
    await put_card_controls(platform, card_id, {"merchant_lock": {"mode": "first"}})
    assert await reason(platform, card_id, 1_000, GROCER) == "approved"
    assert await reason(platform, card_id, 1_000, BISTRO) == "merchant_locked"
    assert await reason(platform, card_id, 1_000, GROCER) == "approved"
    await put_card_controls(
        platform, card_id, {"merchant_lock": {"mode": "named", "name": "le bistro"}}
    )
    assert await reason(platform, card_id, 1_000, GROCER) == "merchant_locked"
    assert await reason(platform, card_id, 1_000, BISTRO) == "approved"


async def test_a_single_use_card_pays_once_and_closes_itself_once_that_purchase_cleared(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform, FUNDS)
    await put_card_controls(platform, card_id, {"single_use": True})
    first = await authorize(platform, card_id, 4_000, merchant=GROCER)
    assert first.decision_reason == "approved"
    assert await reason(platform, card_id, 100, GROCER) == "single_use_card_used"
    async with issuer(platform) as client:
        # Its increment is the same purchase: it passes.
        grown = await client.simulate_increment(
            first.id, amount_minor=500, idempotency_key=uuid.uuid4().hex
        )
        assert grown.decisions[-1].reason == "approved"
        await client.simulate_clearing(
            first.id, amount_minor=4_500, final=True, idempotency_key=uuid.uuid4().hex
        )
    await wallet_becomes(platform, customer_id, posted=500_000 - 4_500, pending=0)

    async def closed() -> bool:
        return (await card_state(handle)).state is CardState.CLOSED

    await polling.eventually(closed, "the single-use card closes itself")
    async with issuer(platform) as client:
        at_issuer = await client.get_card(card_id)
    assert at_issuer.state is CardState.CLOSED
    assert await verify(platform.stack.pool) == []


async def test_window_limits_by_amount_count_and_mcc_group(platform: Platform) -> None:
    customer_id, card_id, _ = await open_card(platform, FUNDS)
    await put_card_controls(
        platform,
        card_id,
        {
            "limits": [
                {"window": "week", "amount_max_minor": 20_000},
                {"window": "day", "count_max": 3},
                {"window": "lifetime", "amount_max_minor": 2_000, "mcc_group": "dining"},
            ]
        },
    )
    assert await reason(platform, card_id, 1_500, BISTRO.model_copy(update={"country": "GB"})) == (
        "approved"
    )
    assert await reason(platform, card_id, 600, BISTRO.model_copy(update={"country": "GB"})) == (
        "over_mcc_group_limit"
    )
    assert await reason(platform, card_id, 8_000, GROCER) == "approved"
    assert await reason(platform, card_id, 10_501, GROCER) == "over_weekly_limit"
    assert await reason(platform, card_id, 500, GROCER) == "approved"
    # Three purchases today: the fourth is over the count, however small.
    assert await reason(platform, card_id, 1, GROCER) == "over_count_limit"
    await wallet_becomes(platform, customer_id, posted=500_000, pending=10_000)


async def test_a_nightly_freeze_declines_within_its_hours_only(platform: Platform) -> None:
    _, card_id, _ = await open_card(platform, FUNDS)
    hour = datetime.now(UTC).hour
    # Three hours around now: the test never crosses its edge.
    around = {"from_hour": (hour - 1) % 24, "to_hour": (hour + 2) % 24}
    await put_card_controls(platform, card_id, {"nightly_freeze": around})
    assert await reason(platform, card_id, 1_000, GROCER) == "card_frozen_by_schedule"
    elsewhere = {"from_hour": (hour + 3) % 24, "to_hour": (hour + 5) % 24}
    await put_card_controls(platform, card_id, {"nightly_freeze": elsewhere})
    assert await reason(platform, card_id, 1_000, GROCER) == "approved"


async def test_a_temporary_raise_of_the_daily_limit_undoes_itself_on_the_cards_timer(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform, FUNDS)
    await put_card_controls(
        platform, card_id, {"limits": [{"window": "day", "amount_max_minor": 1_000}]}
    )
    until = datetime.now(UTC) + timedelta(seconds=4)
    async with await api(platform) as http:
        added = await http.post(
            f"/v1/cards/{card_id}/temporary-controls",
            json={
                "id": "holiday",
                "controls": {"limits": [{"window": "day", "amount_max_minor": 50_000}]},
                "until": until.isoformat(),
                "reason": "travelling",
            },
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert added.status_code == 200, added.text
        past = await http.post(
            f"/v1/cards/{card_id}/temporary-controls",
            json={"id": "late", "controls": {}, "until": "2020-01-01T00:00:00Z"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
    assert past.status_code == 422 and "until must be in the future" in past.text
    assert await reason(platform, card_id, 3_000, GROCER) == "approved"

    async def undone() -> bool:
        return (await card_state(handle)).temporary_controls == []

    # The card's own timer removes it: nothing else asks the card anything.
    await polling.eventually(undone, "the temporary control undoes itself", seconds=30)
    assert datetime.now(UTC) >= until
    assert await reason(platform, card_id, 3_000, GROCER) == "over_daily_limit"
    await wallet_becomes(platform, customer_id, posted=500_000, pending=3_000)


async def test_the_narrowest_scope_wins_and_a_change_reaches_old_and_new_cards(
    platform: Platform,
) -> None:
    blocked_customer, blocked_card, _ = await open_card(platform, FUNDS)
    free_customer, free_card, free_handle = await open_card(platform, FUNDS)
    program = await change_controls(platform, {"country_block": ["FR"], "mcc_block": ["7995"]})
    assert program["scope"] == "program" and program["cards_sent"] >= 2
    # The customer's own setting of the same field (nothing blocked) wins
    # over the program's for their cards; the card's own wins over both.
    customer = await change_controls(platform, {"country_block": []}, free_customer)
    assert (customer["scope"], customer["version"], customer["cards_sent"]) == ("customer", 1, 1)
    assert await reason(platform, blocked_card, 1_000, BISTRO) == "country_not_allowed"
    assert await reason(platform, free_card, 1_000, BISTRO) == "approved"
    assert await reason(platform, free_card, 1_000, CASINO) == "mcc_not_allowed"
    await put_card_controls(platform, free_card, {"mcc_block": []})
    assert await reason(platform, free_card, 1_000, CASINO) == "approved"
    # A card issued after the change starts with the versions in force.
    issued = await (await issue_card(platform, blocked_customer, fees=FREE)).result()
    assert issued.card_id is not None
    assert await reason(platform, issued.card_id, 1_000, BISTRO) == "country_not_allowed"
    # A late copy of an older version changes nothing.
    held = (await card_state(free_handle)).scoped_controls["customer"]
    await free_handle.signal(SCOPED_CONTROLS_SIGNAL, ScopedControls(scope="customer", version=0))
    await free_handle.signal(SCOPED_CONTROLS_SIGNAL, held)
    state: CardInput = await card_state(free_handle)
    assert state.scoped_controls["customer"] == held
    assert await reason(platform, free_card, 1_000, BISTRO) == "approved"
    await wallet_becomes(platform, free_customer, posted=500_000, pending=3_000)
    assert await verify(platform.stack.pool) == []


async def test_the_same_change_sent_twice_is_one_version(platform: Platform) -> None:
    customer_id, _, _ = await open_card(platform, FUNDS)
    request_id = f"ctl-{uuid.uuid4().hex[:10]}"
    body = {"request_id": request_id, "controls": {"single_use": True}, "reason": "twice"}
    async with await api(platform) as http:
        answers = await asyncio.gather(
            *(
                http.post(
                    f"/v1/customers/{customer_id}/card-controls",
                    json=body,
                    headers={"Idempotency-Key": request_id},
                )
                for _ in range(2)
            )
        )
    assert {answer.json()["workflow_id"] for answer in answers} == {f"controls-change/{request_id}"}
    handle = platform.stack.client.get_workflow_handle(f"controls-change/{request_id}")
    await handle.result()
    async with await api(platform) as http:
        current = await http.get(f"/v1/customers/{customer_id}/card-controls")
    versions = await platform.stack.pool.fetch(
        "SELECT version FROM card_controls WHERE scope = 'customer' AND scope_id = $1",
        customer_id,
    )
    assert [row["version"] for row in versions] == [1]
    assert current.status_code == 200
    assert {c["scope"]: c["version"] for c in current.json()}["customer"] == 1


async def test_a_bad_control_is_422_naming_the_field(platform: Platform) -> None:
    _, card_id, _ = await open_card(platform, FUNDS)
    refusals = [
        ({"mcc_block": ["group:nothing"]}, ["body", "mcc_block"]),
        ({"mcc_allow": ["541"]}, ["body", "mcc_allow"]),
        ({"country_allow": ["fra"]}, ["body", "country_allow"]),
        ({"limits": [{"window": "day"}]}, ["body", "limits", 0]),
        ({"limits": [{"window": "fortnight", "count_max": 1}]}, ["body", "limits", 0, "window"]),
        ({"merchant_lock": {"mode": "named"}}, ["body", "merchant_lock"]),
        ({"nightly_freeze": {"from_hour": 3, "to_hour": 3}}, ["body", "nightly_freeze"]),
        ({"single_use": True, "colour": "red"}, ["body", "colour"]),
    ]
    async with await api(platform) as http:
        for body, loc in refusals:
            answer = await http.put(
                f"/v1/cards/{card_id}/controls",
                json=body,
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            assert (answer.status_code, answer.json()["code"]) == (422, "invalid_request"), body
            assert [error["loc"] for error in answer.json()["detail"]] == [loc], answer.text
    assert (await reason(platform, card_id, 1_000, CASINO)) == "approved"
