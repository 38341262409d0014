"""The 3-D Secure scenario: a checkout over the card's challenge threshold
is challenged, the customer answers a wrong code then the right one (read
from their e-mail), the purchase that follows carries the authentication
and is approved, then reversed, and the card is closed."""

from __future__ import annotations

import re
import uuid

from temporalio.client import Client

from activities.providers.notify import NotifyClient
from schemas.authentication import ChallengeAnswer, ChallengeStatus, authentication_workflow_id
from schemas.cards import CardStateChange
from schemas.issuer import Merchant
from schemas.money import Currency
from schemas.providers import NOTIFY
from starters.authentication import answer_challenge
from starters.scenario_steps import wait_until
from starters.scenarios_cards import funded_virtual_card
from starters.updates import execute_update
from workers.settings import Settings
from workflows.cards import CardEntity, card_workflow_id

ELECTRONICS = Merchant(name="Volt Electronics", mcc="5732", country="GB")
# Over the default challenge threshold (500.00).
AMOUNT_MINOR = 60_000
CODE = re.compile(r"^([0-9]{6}) is your code")


async def authentication_challenged(client: Client, settings: Settings) -> list[str]:
    from starters.simulate import authorize, issuer, reverse

    customer_id, _, card_id = await funded_virtual_card(client, settings, funds_minor=100_000)
    async with issuer(settings) as network:
        authentication = await network.simulate_authentication(
            card_id=card_id,
            amount_minor=AMOUNT_MINOR,
            currency=Currency.USD,
            merchant=ELECTRONICS,
            idempotency_key=f"scenario-3ds-{uuid.uuid4().hex}",
        )
    if authentication.decision != "challenge":
        raise RuntimeError(f"not challenged: {authentication.decision_reason}")
    codes: list[str] = []

    async def code_sent() -> bool:
        async with NotifyClient(f"{settings.providers_base_url}/{NOTIFY}") as notify:
            page = await notify.list_messages(to=f"{customer_id}@example.com")
        codes[:] = [m.group(1) for message in page.data if (m := CODE.match(message.body))]
        return bool(codes)

    await wait_until(code_sent, "the challenge's code is sent")
    code = codes[-1]
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for attempt in (wrong, code):
        await answer_challenge(
            client, authentication.id, ChallengeAnswer(card_id=card_id, code=attempt)
        )
    challenge = client.get_workflow_handle(
        authentication_workflow_id(authentication.id), result_type=ChallengeStatus
    )
    if (await challenge.result()).outcome != "authenticated":
        raise RuntimeError("the right code did not authenticate")
    card = client.get_workflow_handle(card_workflow_id(card_id))

    async def remembered() -> bool:
        state = await card.query(CardEntity.status)
        return any(a.outcome == "authenticated" for a in state.authentications)

    await wait_until(remembered, "the card remembers the authentication")
    purchase = await authorize(
        settings, card_id, AMOUNT_MINOR, merchant=ELECTRONICS, authentication_id=authentication.id
    )
    if purchase.status != "pending":
        raise RuntimeError(f"the authenticated purchase was declined: {purchase.decision_reason}")
    await reverse(settings, purchase.id)

    async def released() -> bool:
        state = await card.query(CardEntity.status)
        return not any(r.held for r in state.authorizations.values())

    await wait_until(released, "the reversal releases the hold")
    await execute_update(card, CardEntity.close, CardStateChange(reason="scenario"))
    await card.result()
    return [challenge.id, card.id]
