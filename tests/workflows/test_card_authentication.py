"""3-D Secure end to end: the issuer simulator asks the gateway's real-time
route, the card decides, a challenge sends its code to the customer (the
notification simulator's record is the customer's inbox) and takes the
answer through the public API, and the authorization that follows is
decided with the outcome the card remembered."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks import Webhook

from activities.api_keys import SCOPE_CUSTOMERS_READ, SCOPE_PROCESSES_START
from schemas.authentication import (
    AuthenticationPolicy,
    ChallengeStatus,
    authentication_workflow_id,
)
from schemas.cards import CardPolicy, DeclineReason
from schemas.issuer import Authentication, Merchant
from schemas.money import Currency
from tests import polling
from tests.conftest import Platform
from tests.customers import SHOP, OpenCard, card_state, issuer, open_card

ABROAD = Merchant(name="Boutique Lumière", mcc="5651", country="FR")
# Challenged at 50.00 and above, and abroad (anywhere but GB).
POLICY = CardPolicy(
    authentication=AuthenticationPolicy(challenge_amount_minor=5_000, home_countries=["GB"])
)


def code_sent(platform: Platform, customer_id: str, authentication: str) -> str:
    """The newest code the customer was e-mailed for a challenge."""
    answer = httpx.get(
        f"{platform.sim.provider_url('notify')}/v1/messages",
        params={"to": f"{customer_id}@example.com"},
        timeout=10,
    )
    codes = [
        found.group(1)
        for message in answer.json()["data"]
        if (found := re.match(r"^([0-9]{6}) is your code", message["body"]))
    ]
    assert codes, f"no code was sent for {authentication}"
    return codes[-1]


async def code_arrives(platform: Platform, customer_id: str, authentication: str) -> str:
    async def sent() -> bool:
        try:
            code_sent(platform, customer_id, authentication)
        except AssertionError:
            return False
        return True

    await polling.eventually(sent, f"the code of {authentication} is sent")
    return code_sent(platform, customer_id, authentication)


async def authenticate(
    platform: Platform, card_id: str, amount: int, merchant: Merchant = SHOP
) -> Authentication:
    async with issuer(platform) as client:
        return await client.simulate_authentication(
            card_id=card_id,
            amount_minor=amount,
            currency=Currency.USD,
            merchant=merchant,
            idempotency_key=f"3ds-{uuid.uuid4().hex}",
        )


async def issuer_status(platform: Platform, authentication_id: str) -> str:
    async with issuer(platform) as client:
        return (await client.get_authentication(authentication_id)).status


async def issuer_says(platform: Platform, authentication_id: str, status: str) -> None:
    async def reported() -> bool:
        return await issuer_status(platform, authentication_id) == status

    await polling.eventually(reported, f"the issuer has {authentication_id} {status}")


async def card_remembers(card: OpenCard, authentication_id: str, outcome: str) -> None:
    async def remembered() -> bool:
        state = await card_state(card.handle)
        found = [a for a in state.authentications if a.authentication_id == authentication_id]
        return bool(found) and found[0].outcome == outcome

    await polling.eventually(remembered, f"the card remembers {authentication_id} {outcome}")


async def purchase(
    platform: Platform, card_id: str, amount: int, authentication_id: str, merchant: Merchant
) -> Any:
    async with issuer(platform) as client:
        return await client.simulate_authorization(
            card_id=card_id,
            amount_minor=amount,
            currency=Currency.USD,
            merchant=merchant,
            idempotency_key=f"auth-{uuid.uuid4().hex}",
            authentication_id=authentication_id,
        )


async def answer(
    platform: Platform, card: OpenCard, authentication_id: str, code: str
) -> httpx.Response:
    headers = await platform.key_headers(SCOPE_PROCESSES_START, customers=[card.customer_id])
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=headers) as http:
        return await http.post(
            f"/v1/cards/{card.card_id}/authentications/{authentication_id}/answer",
            json={"code": code},
        )


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


async def test_a_small_purchase_at_home_is_frictionless_and_its_authorization_approved(
    platform: Platform,
) -> None:
    card = await open_card(platform, policy=POLICY)
    authentication = await authenticate(platform, card.card_id, 1_000)
    assert (authentication.status, authentication.decision) == ("authenticated", "frictionless")
    assert authentication.decided_by == "cardflow"
    await card_remembers(card, authentication.id, "authenticated")
    approved = await purchase(platform, card.card_id, 1_000, authentication.id, SHOP)
    assert approved.status == "pending", approved
    state = await card_state(card.handle)
    [decision] = state.authorizations[approved.id].decisions
    assert decision.authentication_id == authentication.id
    assert decision.reason == "approved"


async def test_a_challenge_passed_through_the_api_lets_the_purchase_through(
    platform: Platform,
) -> None:
    card = await open_card(platform, policy=POLICY)
    authentication = await authenticate(platform, card.card_id, 2_000, ABROAD)
    assert (authentication.status, authentication.decision) == ("pending_challenge", "challenge")
    assert authentication.decision_reason == "merchant_country_not_usual"
    code = await code_arrives(platform, card.customer_id, authentication.id)
    # Nobody else's key may answer it.
    stranger = await platform.key_headers(SCOPE_PROCESSES_START, customers=["c-someone-else"])
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=stranger) as http:
        refused = await http.post(
            f"/v1/cards/{card.card_id}/authentications/{authentication.id}/answer",
            json={"code": code},
        )
    assert refused.status_code == 403, refused.text
    pending = await platform.key_headers(SCOPE_CUSTOMERS_READ, customers=[card.customer_id])
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=pending) as http:
        listed = await http.get(f"/v1/customers/{card.customer_id}/authentications")
    assert [c["authentication_id"] for c in listed.json()["data"]] == [authentication.id]

    passed = await answer(platform, card, authentication.id, code)
    assert passed.status_code == 200, passed.text
    assert passed.json()["outcome"] == "authenticated" and passed.json()["correct"]
    await issuer_says(platform, authentication.id, "authenticated")
    await card_remembers(card, authentication.id, "authenticated")
    approved = await purchase(platform, card.card_id, 2_000, authentication.id, ABROAD)
    assert approved.status == "pending", approved
    # Ended: another answer is refused, and nothing waits any more.
    again = await answer(platform, card, authentication.id, code)
    assert again.status_code == 409, again.text
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=pending) as http:
        listed = await http.get(f"/v1/customers/{card.customer_id}/authentications")
    assert listed.json()["data"] == []


async def test_three_wrong_codes_fail_the_challenge_and_decline_the_purchase(
    platform: Platform,
) -> None:
    card = await open_card(platform, policy=POLICY)
    authentication = await authenticate(platform, card.card_id, 6_000)
    assert authentication.decision_reason == "amount_at_or_above_challenge_threshold"
    code = await code_arrives(platform, card.customer_id, authentication.id)
    replies = [(await answer(platform, card, authentication.id, wrong(code))) for _ in range(3)]
    assert [r.json()["attempts_left"] for r in replies] == [2, 1, 0]
    assert [r.json()["outcome"] for r in replies] == ["pending", "pending", "failed"]
    # The right code after that changes nothing.
    late = await answer(platform, card, authentication.id, code)
    assert late.status_code == 409, late.text
    await issuer_says(platform, authentication.id, "failed")
    await card_remembers(card, authentication.id, "failed")
    declined = await purchase(platform, card.card_id, 6_000, authentication.id, SHOP)
    assert declined.status == "declined"
    assert declined.decision_reason == DeclineReason.AUTHENTICATION_FAILED.value
    state = await card_state(card.handle)
    assert declined.id not in state.authorizations


async def test_a_challenge_unanswered_times_out_and_its_purchase_is_declined(
    platform: Platform,
) -> None:
    policy = CardPolicy(
        authentication=AuthenticationPolicy(require_challenge=True, challenge_seconds=3)
    )
    card = await open_card(platform, policy=policy)
    authentication = await authenticate(platform, card.card_id, 500)
    assert authentication.decision_reason == "challenge_required"
    await code_arrives(platform, card.customer_id, authentication.id)
    await issuer_says(platform, authentication.id, "timed_out")
    await card_remembers(card, authentication.id, "timed_out")
    handle = platform.stack.client.get_workflow_handle(
        authentication_workflow_id(authentication.id), result_type=ChallengeStatus
    )
    status = await handle.result()
    assert (status.outcome, status.reported) == ("timed_out", True)
    declined = await purchase(platform, card.card_id, 500, authentication.id, SHOP)
    assert declined.decision_reason == DeclineReason.AUTHENTICATION_FAILED.value


async def test_a_frozen_card_declines_authentication(platform: Platform) -> None:
    card = await open_card(platform, policy=POLICY)
    await card.handle.execute_update("freeze", {"reason": "customer request"})
    authentication = await authenticate(platform, card.card_id, 1_000)
    # The issuer declines a paused card itself; the card would have too.
    assert authentication.status == "declined"


def _signed(secret: str, event_id: str, body: str) -> dict[str, str]:
    stamp = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, stamp, body),
    }


async def test_the_real_time_route_names_bad_fields_and_answers_a_repeat_the_same(
    platform: Platform,
) -> None:
    import json

    card = await open_card(platform, policy=POLICY)
    secret = platform.sim.secrets["issuer"]
    url = f"{platform.gateway_url}/realtime/issuer/authentication"
    data: dict[str, Any] = {
        "authentication_id": f"3ds_t{uuid.uuid4().hex[:8]}",
        "card_id": card.card_id,
        "amount_minor": 9_000,
        "currency": "USD",
        "merchant_amount_minor": 9_000,
        "merchant_currency": "USD",
        "merchant": {"name": "Corner Shop", "mcc": "5411", "country": "GB"},
        "challenge_expires_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
    }

    def event(event_id: str, body: dict[str, Any]) -> str:
        created = datetime.now(UTC).isoformat()
        envelope = {"id": event_id, "type": "authentication.request", "created_at": created}
        return json.dumps({**envelope, "data": body})

    async with httpx.AsyncClient(timeout=10) as http:
        unsigned = await http.post(url, content=b"{}", headers={"webhook-id": "x"})
        assert unsigned.status_code == 401
        bad = event("evt_bad", {**data, "amount_minor": -1, "merchant": {"mcc": "54"}})
        refused = await http.post(url, content=bad, headers=_signed(secret, "evt_bad", bad))
        assert refused.status_code == 422, refused.text
        fields = {tuple(e["loc"]) for e in refused.json()["detail"]}
        assert ("data", "amount_minor") in fields and ("data", "merchant", "mcc") in fields
        first_body = event("evt_1", data)
        first = await http.post(
            url, content=first_body, headers=_signed(secret, "evt_1", first_body)
        )
        repeat_body = event("evt_2", data)
        repeat = await http.post(
            url, content=repeat_body, headers=_signed(secret, "evt_2", repeat_body)
        )
    assert first.status_code == 200 and first.json()["decision"] == "challenge", first.text
    assert repeat.json() == first.json()
    # One challenge, one code.
    await code_arrives(platform, card.customer_id, data["authentication_id"])
    state = await card_state(card.handle)
    assert [a.authentication_id for a in state.authentications] == [data["authentication_id"]]


async def test_the_cards_rules_decide_3ds_a_decline_rule_before_a_challenge_rule(
    platform: Platform,
) -> None:
    card = await open_card(platform, policy=POLICY)
    rules = [
        {
            "id": "no-gambling",
            "mode": "active",
            "conditions": [{"kind": "mcc", "any_of": ["group:gambling"]}],
        },
        {
            "id": "challenge-dining",
            "mode": "active",
            "action": "challenge",
            "conditions": [{"kind": "mcc", "any_of": ["group:dining", "group:gambling"]}],
        },
        {
            "id": "watch-grocery",
            "mode": "shadow",
            "action": "challenge",
            "conditions": [{"kind": "mcc", "any_of": ["group:grocery"]}],
        },
    ]
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, headers=platform.api_headers, timeout=60
    ) as http:
        put = await http.put(
            f"/v1/cards/{card.card_id}/controls",
            json={"rules": rules},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
    assert put.status_code == 200, put.text
    casino = Merchant(name="Lucky Star", mcc="7995", country="GB")
    bistro = Merchant(name="Le Bistro", mcc="5812", country="GB")
    declined = await authenticate(platform, card.card_id, 1_000, casino)
    assert (declined.decision, declined.decision_reason) == ("decline", "rule:no-gambling")
    challenged = await authenticate(platform, card.card_id, 1_000, bistro)
    assert (challenged.decision, challenged.decision_reason) == (
        "challenge",
        "rule:challenge-dining",
    )
    # A shadow rule decides nothing, and a purchase no rule names keeps the
    # card's own policy: small and at home, frictionless.
    grocer = await authenticate(platform, card.card_id, 1_000, SHOP)
    assert (grocer.decision, grocer.status) == ("frictionless", "authenticated")
