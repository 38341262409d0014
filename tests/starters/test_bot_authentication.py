"""A 3-D Secure challenge answered in Telegram: the customer, linked to the
bot and told there, gets the code in the chat and answers it with a message;
a wrong code first is counted and told."""

from __future__ import annotations

import re
import uuid

import httpx

from activities.api_keys import SCOPE_PROCESSES_START
from schemas.authentication import AuthenticationPolicy
from schemas.cards import CardPolicy
from schemas.money import Currency
from tests import polling
from tests.conftest import Platform
from tests.customers import SHOP, issuer, open_card
from tests.starters.test_bot import Chat, chat  # noqa: F401 - the fixture

ALWAYS = CardPolicy(authentication=AuthenticationPolicy(require_challenge=True))


async def test_a_challenge_is_answered_with_the_code_sent_in_telegram(
    platform: Platform,
    chat: Chat,  # noqa: F811 - the fixture
) -> None:
    card = await open_card(platform, policy=ALWAYS)
    app = await platform.key_headers(SCOPE_PROCESSES_START, customers=[card.customer_id])
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=app) as http:
        issued = await http.post(f"/v1/customers/{card.customer_id}/telegram-link")
        linked = await chat.reply_to(f"/start {issued.json()['code']}")
        assert "linked" in linked["text"]
        chosen = await http.put(
            f"/v1/customers/{card.customer_id}/notification-channels",
            json={"preferred_channels": ["telegram"]},
        )
        assert chosen.status_code == 200, chosen.text
    async with issuer(platform) as client:
        authentication = await client.simulate_authentication(
            card_id=card.card_id,
            amount_minor=1_000,
            currency=Currency.USD,
            merchant=SHOP,
            idempotency_key=f"3ds-{uuid.uuid4().hex}",
        )
    assert authentication.status == "pending_challenge"
    told = await chat.told("is your code")
    found = re.search(r"([0-9]{6}) is your code", told)
    assert found is not None, told
    code = found.group(1)
    wrong = await chat.reply_to(f"{(int(code) + 1) % 10**6:06d}")
    assert "wrong" in wrong["text"] and "2 more tries" in wrong["text"], wrong["text"]
    passed = await chat.reply_to(code)
    assert passed["text"] == f"Confirmed: your payment at {SHOP.name} can go ahead."

    async def reported() -> bool:
        async with issuer(platform) as client:
            return (await client.get_authentication(authentication.id)).status == "authenticated"

    await polling.eventually(reported, "the issuer is told the challenge passed")
