"""The card's 3-D Secure decision and its memory, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.authentication import (
    AuthenticationPolicy,
    AuthenticationRecord,
    AuthenticationRequest,
    authentication_decision,
    challenge_deadline,
    remember,
)
from schemas.cards import CardInput, CardPolicy
from schemas.issuer import CardState, Merchant
from schemas.money import Currency

NOW = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)


def card(state: CardState = CardState.OPEN, **policy: object) -> CardInput:
    return CardInput(
        card_id="card_1",
        customer_id="c-1",
        state=state,
        policy=CardPolicy(authentication=AuthenticationPolicy(**policy)),  # type: ignore[arg-type]
    )


def request(amount_minor: int = 1_000, country: str = "GB") -> AuthenticationRequest:
    return AuthenticationRequest(
        authentication_id="3ds_1",
        card_id="card_1",
        amount_minor=amount_minor,
        currency=Currency.USD,
        merchant_amount_minor=amount_minor,
        merchant_currency=Currency.USD,
        merchant=Merchant(name="Shop", mcc="5411", country=country),
        challenge_expires_at=NOW + timedelta(minutes=10),
        requested_at=NOW,
    )


def test_a_card_not_open_declines_before_any_rule() -> None:
    for state in (CardState.PAUSED, CardState.CLOSED):
        decided = authentication_decision(card(state, require_challenge=True), request(), NOW)
        assert decided == ("decline", "card_not_open")


def test_the_amount_threshold_challenges_at_and_above_it_only() -> None:
    policy_card = card(challenge_amount_minor=5_000)
    assert authentication_decision(policy_card, request(4_999), NOW)[0] == "frictionless"
    assert authentication_decision(policy_card, request(5_000), NOW) == (
        "challenge",
        "amount_at_or_above_challenge_threshold",
    )


def test_a_merchant_outside_the_usual_countries_is_challenged_when_there_are_any() -> None:
    anywhere = card(challenge_amount_minor=None)
    assert authentication_decision(anywhere, request(country="FR"), NOW)[0] == "frictionless"
    home = card(challenge_amount_minor=None, home_countries=["GB"])
    assert authentication_decision(home, request(country="GB"), NOW)[0] == "frictionless"
    assert authentication_decision(home, request(country="FR"), NOW)[1] == (
        "merchant_country_not_usual"
    )


def test_the_deadline_is_the_policys_but_never_past_the_issuers_window() -> None:
    short = AuthenticationPolicy(challenge_seconds=60)
    assert challenge_deadline(short, request()) == NOW + timedelta(seconds=60)
    long = AuthenticationPolicy(challenge_seconds=3_600)
    assert challenge_deadline(long, request()) == NOW + timedelta(minutes=10)


def test_the_card_remembers_the_newest_outcomes_only() -> None:
    records: list[AuthenticationRecord] = []
    for number in range(5):
        record = AuthenticationRecord(
            authentication_id=f"3ds_{number}",
            decision="frictionless",
            reason="frictionless",
            outcome="authenticated",
            amount_minor=100,
            merchant_name="Shop",
            decided_at=NOW,
        )
        remember(records, record, kept=3)
    assert [r.authentication_id for r in records] == ["3ds_2", "3ds_3", "3ds_4"]
