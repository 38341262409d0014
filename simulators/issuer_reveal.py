"""Showing a card's number to its holder without the program ever seeing it,
as Stripe's ephemeral keys and Lithic's embedded card UI do.

    POST  /v1/cards/{id}/reveal_tokens   the program asks for a token: single
                                         use, bound to the card, short-lived
    GET   /v1/embed/card?token=...       the holder's device trades it for the
                                         number, expiry and CVV, once

The number and CVV are made when the card is first revealed (ending in the
card's last4, passing the Luhn check) and kept here only. A token used,
expired (TTL `reveal_token_seconds`, at most 60, default 60, on the issuer's
clock) or unknown gets 410 or 404 and reveals nothing; a closed card gets no
token.

The embed route answers any origin (`Access-Control-Allow-Origin: *`, as an
issuer's embeddable card is meant to be loaded from the program's own
pages, e.g. the Telegram WebApp on the gateway): the token in its URL is the
only credential, and no cookie is ever read. Nothing else of the issuer's
API is open to browsers.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from simulators.issuer_models import Card
from simulators.issuer_state import CARDS, Collection, IssuerState, conflict

REVEAL_TOKEN_SECONDS_DEFAULT = 60
REVEAL_TOKEN_SECONDS_MAX = 60
PAN_DIGITS = 16
# A test issuer's range, as sandbox numbers are.
PAN_PREFIX = "4111"
# What the embed route answers a browser with, its refusals included, so a
# page of another origin can read either; the card is never cached.
EMBED_HEADERS = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"}


class CardSecret(BaseModel):
    """What only the issuer and the holder ever see."""

    id: str = Field(description="The card's id")
    pan: str = Field(pattern=r"^[0-9]{16}$")
    cvv: str = Field(pattern=r"^[0-9]{3}$")


class RevealToken(BaseModel):
    id: str = Field(description="The token")
    card_id: str
    expires_at: datetime
    used_at: datetime | None = None


class RevealTokenOut(BaseModel):
    token: str
    url: str = Field(description="Where the holder's device fetches the card, once")
    card_id: str
    expires_at: datetime


class CardDetails(BaseModel):
    card_id: str
    pan: str
    exp_month: int
    exp_year: int
    cvv: str


SECRETS = Collection("issuer.card_secrets", "sec", "card number", CardSecret)
TOKENS = Collection("issuer.reveal_tokens", "rvl", "reveal token", RevealToken)


def luhn_check_digit(digits: str) -> str:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return luhn_check_digit(number[:-1]) == number[-1]


def _new_pan(last4: str) -> str:
    """A Luhn-valid number ending in `last4`: the middle digits are chosen
    until the check digit (the last) comes out as last4's own."""
    while True:
        middle = "".join(
            str(secrets.randbelow(10)) for _ in range(PAN_DIGITS - len(PAN_PREFIX) - 4)
        )
        candidate = PAN_PREFIX + middle + last4
        if luhn_valid(candidate):
            return candidate


def _secret_of(state: IssuerState, card: Card) -> CardSecret:
    found = state.find(SECRETS, card.id)
    if found is None:
        found = CardSecret(
            id=card.id, pan=_new_pan(card.last4), cvv=f"{secrets.randbelow(1000):03d}"
        )
        state.save(SECRETS, found)
    return found


def router(state: IssuerState) -> APIRouter:
    api = state.context.router()

    @api.post("/v1/cards/{card_id}/reveal_tokens", status_code=201)
    async def create_reveal_token(card_id: str, request: Request) -> RevealTokenOut:
        """A single-use token to show the card to its holder, bound to the card."""
        card = state.load(CARDS, card_id)
        if card.state == "closed":
            conflict(f"card {card_id} is closed: its number is never shown again")
        _secret_of(state, card)
        seconds = state.option_int(
            "reveal_token_seconds", REVEAL_TOKEN_SECONDS_DEFAULT, 1, REVEAL_TOKEN_SECONDS_MAX
        )
        token = RevealToken(
            id=f"rvl_{secrets.token_urlsafe(24)}",
            card_id=card_id,
            expires_at=state.now() + timedelta(seconds=seconds),
        )
        state.save(TOKENS, token)
        # The issuer's own address as the program reached it (its mount included).
        base = str(request.url).split("/v1/cards/", 1)[0]
        return RevealTokenOut(
            token=token.id,
            url=f"{base}/v1/embed/card?token={token.id}",
            card_id=card_id,
            expires_at=token.expires_at,
        )

    @api.get("/v1/embed/card")
    async def reveal(
        token: Annotated[str, Query(min_length=1, max_length=100)], response: Response
    ) -> CardDetails:
        """The holder's device: the card's number, expiry and CVV, once per token."""
        response.headers.update(EMBED_HEADERS)
        found = state.find(TOKENS, token)
        if found is None:
            raise HTTPException(404, "no such reveal token", headers=EMBED_HEADERS)
        if found.used_at is not None:
            raise HTTPException(410, "this reveal token was used", headers=EMBED_HEADERS)
        if state.now() >= found.expires_at:
            raise HTTPException(410, "this reveal token expired", headers=EMBED_HEADERS)
        state.save(TOKENS, found.model_copy(update={"used_at": state.now()}))
        card = state.load(CARDS, found.card_id)
        secret = _secret_of(state, card)
        return CardDetails(
            card_id=card.id,
            pan=secret.pan,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
            cvv=secret.cvv,
        )

    return api
