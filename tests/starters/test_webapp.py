"""The Telegram WebApp's API (`/webapp/v1`): initData checked with the bot's
token and its age, mapped to the linked customer; a user reads only their
own customer, and forged, stale and unlinked initData are refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from activities.database import create_pool
from activities.telegram import AlreadyLinked, TelegramLinks
from simulators.telegram import signed_init_data
from starters.gateway.app import create_app
from tests.starters.test_v1_customers import Api, a_customer_with_money
from workers.settings import load_settings

BOT_TOKEN = "7000000042:" + "k" * 35
OTHER_BOT_TOKEN = "7000000043:" + "z" * 35
INIT_DATA_SECONDS_MAX = 600
ADA, GRACE, NOBODY = 4_242, 5_353, 6_464


@pytest_asyncio.fixture(loop_scope="session")
async def webapp(
    workflow_env: WorkflowEnvironment, database_url: str, tmp_path: Path, sim: Any
) -> AsyncIterator[Api]:
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        DATABASE_URL=database_url,
        CARDFLOW_PROVIDERS_URL=sim.url,
        CARDFLOW_TELEGRAM_BOT_TOKEN=BOT_TOKEN,
        CARDFLOW_WEBAPP_INIT_DATA_SECONDS_MAX=str(INIT_DATA_SECONDS_MAX),
    )
    pool = await create_pool(database_url, size_max=4)
    app = create_app(settings, client=workflow_env.client, pool=pool)
    app.state.client, app.state.pool = workflow_env.client, pool
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30
        ) as http:
            yield Api(http, None, pool, workflow_env.client)  # type: ignore[arg-type]
    finally:
        await pool.close()


def tma(init_data: str) -> dict[str, str]:
    return {"Authorization": f"tma {init_data}"}


async def test_a_linked_user_reads_their_own_customer_and_feed(webapp: Api) -> None:
    ada = await a_customer_with_money(webapp)
    grace = await a_customer_with_money(webapp)
    links = TelegramLinks(webapp.pool)
    await links.link(ADA, ada)
    await links.link(GRACE, grace)
    await links.link(ADA, ada)  # again: nothing changes

    for user, customer_id in ((ADA, ada), (GRACE, grace)):
        headers = tma(signed_init_data(BOT_TOKEN, user))
        me = await webapp.http.get("/webapp/v1/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["customer_id"] == customer_id
        wallets = {w["currency"]: w["available_minor"] for w in me.json()["wallets"]}
        assert wallets == {"EUR": 3_000, "USD": 10_000 - 1_200 - 2_500}
        feed = await webapp.http.get("/webapp/v1/transactions", headers=headers)
        assert feed.status_code == 200, feed.text
        assert set(feed.json()) == {"data", "next_cursor"}
    try:
        await links.link(ADA, grace)
    except AlreadyLinked:
        pass
    else:
        raise AssertionError("a Telegram user was linked to a second customer")


async def test_forged_stale_and_unlinked_init_data_are_refused(webapp: Api) -> None:
    customer_id = await a_customer_with_money(webapp)
    await TelegramLinks(webapp.pool).link(ADA, customer_id)
    good = signed_init_data(BOT_TOKEN, ADA)
    assert (await webapp.http.get("/webapp/v1/me", headers=tma(good))).status_code == 200

    stale_at = int(time.time()) - INIT_DATA_SECONDS_MAX - 60
    refused = {
        "no initData": {},
        "another scheme": {"Authorization": f"Bearer {good}"},
        "signed by another bot": tma(signed_init_data(OTHER_BOT_TOKEN, ADA)),
        "the user changed after signing": tma(good.replace(str(ADA), str(GRACE))),
        "stale": tma(signed_init_data(BOT_TOKEN, ADA, auth_date=stale_at)),
        "not a query string": tma("%%%"),
    }
    for why, headers in refused.items():
        answer = await webapp.http.get("/webapp/v1/me", headers=headers)
        assert answer.status_code == 401, (why, answer.text)
        assert answer.json()["code"] == "unauthenticated", why
    unlinked = await webapp.http.get(
        "/webapp/v1/transactions", headers=tma(signed_init_data(BOT_TOKEN, NOBODY))
    )
    assert unlinked.status_code == 403 and unlinked.json()["code"] == "customer_not_allowed"
