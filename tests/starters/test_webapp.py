"""The Telegram WebApp's API (`/webapp/v1`): initData checked with the bot's
token and its age, mapped to the linked customer; a user reads only their
own customer, and forged, stale and unlinked initData are refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from activities.telegram import AlreadyLinked, TelegramLinks
from simulators.telegram import signed_init_data
from tests.starters.test_v1_customers import Api, a_customer_with_money, api
from workers.secrets import telegram_bot_token
from workers.settings import load_settings

__all__ = ["api"]

OTHER_BOT_TOKEN = "7000000043:" + "z" * 35
# The gateway's default bound on initData's age.
INIT_DATA_SECONDS_MAX = 3600
ADA, GRACE, NOBODY = 4_242, 5_353, 6_464


@pytest.fixture
def bot_token(tmp_path: Path) -> str:
    """The token of the bot the `api` fixture's gateway knows: the dev one made
    under its CARDFLOW_HOME (this test's tmp_path)."""
    return telegram_bot_token(load_settings(CARDFLOW_HOME=str(tmp_path)))


def tma(init_data: str) -> dict[str, str]:
    return {"Authorization": f"tma {init_data}"}


async def test_a_linked_user_reads_their_own_customer_and_feed(api: Api, bot_token: str) -> None:
    ada = await a_customer_with_money(api)
    grace = await a_customer_with_money(api)
    links = TelegramLinks(api.pool)
    await links.link(ADA, ada)
    await links.link(GRACE, grace)
    await links.link(ADA, ada)  # again: nothing changes

    for user, customer_id in ((ADA, ada), (GRACE, grace)):
        headers = tma(signed_init_data(bot_token, user))
        me = await api.http.get("/webapp/v1/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["customer_id"] == customer_id
        wallets = {w["currency"]: w["available_minor"] for w in me.json()["wallets"]}
        assert wallets == {"EUR": 3_000, "USD": 10_000 - 1_200 - 2_500}
        feed = await api.http.get("/webapp/v1/transactions", headers=headers)
        assert feed.status_code == 200, feed.text
        assert set(feed.json()) == {"data", "next_cursor"}
    try:
        await links.link(ADA, grace)
    except AlreadyLinked:
        pass
    else:
        raise AssertionError("a Telegram user was linked to a second customer")


async def test_forged_stale_and_unlinked_init_data_are_refused(api: Api, bot_token: str) -> None:
    customer_id = await a_customer_with_money(api)
    await TelegramLinks(api.pool).link(ADA, customer_id)
    good = signed_init_data(bot_token, ADA)
    assert (await api.http.get("/webapp/v1/me", headers=tma(good))).status_code == 200

    stale_at = int(time.time()) - INIT_DATA_SECONDS_MAX - 60
    refused = {
        "no initData": {},
        "another scheme": {"Authorization": f"Bearer {good}"},
        "signed by another bot": tma(signed_init_data(OTHER_BOT_TOKEN, ADA)),
        "the user changed after signing": tma(good.replace(str(ADA), str(GRACE))),
        "stale": tma(signed_init_data(bot_token, ADA, auth_date=stale_at)),
        "not a query string": tma("%%%"),
    }
    for why, headers in refused.items():
        answer = await api.http.get("/webapp/v1/me", headers=headers)
        assert answer.status_code == 401, (why, answer.text)
        assert answer.json()["code"] == "unauthenticated", why
    unlinked = await api.http.get(
        "/webapp/v1/transactions", headers=tma(signed_init_data(bot_token, NOBODY))
    )
    assert unlinked.status_code == 403 and unlinked.json()["code"] == "customer_not_allowed"
