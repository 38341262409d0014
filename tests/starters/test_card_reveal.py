"""`POST /v1/cards/{card_id}/reveal`: the issuer gives a single-use,
short-lived token bound to the card; the holder's device trades it for the
number at the issuer. The number never reaches cardflow: not its answers,
logs, database or histories."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from activities.api_keys import (
    SCOPE_CARDS_REVEAL,
    SCOPE_CUSTOMERS_READ,
)
from activities.customers import CustomerStore
from activities.providers.issuer import IssuerClient
from schemas.issuer import CardState, CardType
from simulators.issuer_reveal import luhn_valid
from tests.customers import new_id, profile
from tests.starters.test_v1_customers import Api, api, issuer_card

TOKEN_SECONDS_MAX = 60

__all__ = ["api"]


async def an_issued_card(api: Api, sim: Any) -> tuple[str, str]:
    """(card id, last4) of a virtual card the issuer made for a new customer."""
    customer_id = new_id("reveal")
    await CustomerStore(api.pool).save(profile(customer_id))
    card = await issuer_card(api, sim, customer_id, CardType.VIRTUAL)
    return card.id, card.last4


async def reveal(api: Api, card_id: str) -> httpx.Response:
    return await api.http.post(
        f"/v1/cards/{card_id}/reveal", headers=await api.headers(SCOPE_CARDS_REVEAL)
    )


async def test_the_device_gets_the_number_once_and_cardflow_never_sees_it(
    api: Api, sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    started = datetime.now(UTC)
    card_id, last4 = await an_issued_card(api, sim)

    answer = await reveal(api, card_id)

    assert answer.status_code == 201, answer.text
    token = answer.json()
    assert token["card_id"] == card_id
    expires_at = datetime.fromisoformat(token["expires_at"])
    assert expires_at <= datetime.now(UTC) + timedelta(seconds=TOKEN_SECONDS_MAX)
    # The holder's device, straight to the issuer.
    async with httpx.AsyncClient() as device:
        shown = await device.get(token["url"])
        again = await device.get(token["url"])
    assert shown.status_code == 200, shown.text
    card = shown.json()
    pan = card["pan"]
    assert len(pan) == 16 and pan.endswith(last4) and luhn_valid(pan)
    assert re.fullmatch(r"[0-9]{3}", card["cvv"]) and 1 <= card["exp_month"] <= 12
    assert again.status_code == 410, "a token shows the card once"

    # Nowhere in cardflow: its answer, its logs, its database, its histories.
    assert pan not in answer.text
    assert not [record for record in caplog.records if pan in record.getMessage()]
    assert "cards" in await tables_holding(api.pool, card_id), "the scan finds what is there"
    assert await tables_holding(api.pool, pan) == []
    async for execution in api.client.list_workflows(
        f"StartTime >= '{started.isoformat().replace('+00:00', 'Z')}'"
    ):
        history = await api.client.get_workflow_handle(execution.id).fetch_history()
        assert pan not in history.to_json(), execution.id


async def tables_holding(pool: asyncpg.Pool, text: str) -> list[str]:
    """The tables of the database with `text` anywhere in a row."""
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    holding = []
    for row in tables:
        name = row["table_name"]
        found = await pool.fetchval(
            f'SELECT count(*) FROM "{name}" t WHERE t::text LIKE $1',  # noqa: S608 - catalog names
            f"%{text}%",
        )
        if found:
            holding.append(name)
    return holding


async def test_a_token_past_its_life_shows_nothing(api: Api, sim: Any) -> None:
    card_id, _ = await an_issued_card(api, sim)
    token = (await reveal(api, card_id)).json()
    # The issuer's clock moves past the token's life.
    sim.admin("PUT", "/options/issuer", {"clock_offset_seconds": TOKEN_SECONDS_MAX + 1})
    async with httpx.AsyncClient() as device:
        late = await device.get(token["url"])
        forged = await device.get(token["url"].replace(token["token"], "rvl_forged"))
    assert late.status_code == 410 and "expired" in late.text
    assert forged.status_code == 404


async def test_a_closed_card_is_not_revealed_and_the_scope_is_required(api: Api, sim: Any) -> None:
    card_id, _ = await an_issued_card(api, sim)
    reader = await api.http.post(
        f"/v1/cards/{card_id}/reveal", headers=await api.headers(SCOPE_CUSTOMERS_READ)
    )
    assert reader.status_code == 403 and reader.json()["code"] == "scope_missing"
    async with IssuerClient(sim.provider_url("issuer")) as issuer:
        await issuer.update_card_state(
            card_id, state=CardState.CLOSED, idempotency_key=f"close-{card_id}"
        )
    closed = await reveal(api, card_id)
    assert closed.status_code == 409 and closed.json()["code"] == "wrong_state", closed.text


async def test_an_issuer_that_fails_or_knows_no_such_card_reveals_nothing(
    api: Api, sim: Any
) -> None:
    card_id, _ = await an_issued_card(api, sim)
    sim.fault(path_prefix="/issuer/v1/cards", kind="error", status=503, times=1)
    down = await reveal(api, card_id)
    assert down.status_code == 503 and down.json()["code"] == "provider_unavailable", down.text
    # Asked again once the issuer answers, the token comes.
    assert (await reveal(api, card_id)).status_code == 201
    # A card of ours the issuer does not know (its record and the issuer apart).
    customer_id = new_id("reveal")
    await CustomerStore(api.pool).save(profile(customer_id))
    unknown_id = f"card-unknown-{uuid.uuid4().hex[:8]}"
    await api.pool.execute(
        "INSERT INTO cards (card_id, request_id, customer_id, kind) VALUES ($1, $2, $3, 'virtual')",
        unknown_id,
        f"r-{uuid.uuid4().hex[:8]}",
        customer_id,
    )
    unknown = await reveal(api, unknown_id)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found", unknown.text
