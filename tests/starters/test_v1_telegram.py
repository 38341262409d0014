"""Linking a customer's Telegram account: the customer's app asks for a
single-use code and the bot's deep link; the bot redeems it for the user who
pressed Start, once; the WebApp then knows the user as that customer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from temporalio.client import WorkflowExecutionStatus

from activities.api_keys import (
    SCOPE_CUSTOMERS_READ,
    SCOPE_PROCESSES_START,
    SCOPE_TELEGRAM_LINK,
)
from activities.customers import CustomerStore
from activities.telegram import TelegramLinks
from schemas.notify import Channel
from tests.starters.test_v1_customers import Api, a_customer_with_money, api
from workflows.onboarding import onboarding_workflow_id

__all__ = ["api"]

ADA, GRACE = 4_242, 5_353


async def code_for(api: Api, customer_id: str) -> dict[str, str]:
    headers = await api.headers(SCOPE_PROCESSES_START, customers=[customer_id])
    answer = await api.http.post(f"/v1/customers/{customer_id}/telegram-link", headers=headers)
    assert answer.status_code == 201, answer.text
    issued: dict[str, str] = answer.json()
    return issued


async def test_a_code_links_the_user_who_redeems_it_once(api: Api) -> None:
    customer_id = await a_customer_with_money(api)
    issued = await code_for(api, customer_id)
    assert issued["url"] == f"https://t.me/cardflow_bot?start={issued['code']}"
    expires_at = datetime.fromisoformat(issued["expires_at"])
    assert timedelta(minutes=9) < expires_at - datetime.now(UTC) <= timedelta(minutes=10)
    bot = await api.headers(SCOPE_TELEGRAM_LINK)
    body = {"code": issued["code"], "telegram_user_id": ADA}
    first = await api.http.post("/v1/telegram/links", json=body, headers=bot)
    assert first.status_code == 201, first.text
    assert first.json() == {"telegram_user_id": ADA, "customer_id": customer_id}
    # Start pressed twice: the same link, nothing new.
    again = await api.http.post("/v1/telegram/links", json=body, headers=bot)
    assert again.status_code == 200 and again.json() == first.json()
    # The code is spent for anyone else.
    stolen = await api.http.post(
        "/v1/telegram/links", json={**body, "telegram_user_id": GRACE}, headers=bot
    )
    assert stolen.status_code == 422 and "another Telegram user" in stolen.json()["detail"]
    found = await api.http.get(f"/v1/telegram/links/{ADA}", headers=bot)
    assert found.json()["customer_id"] == customer_id
    assert (await api.http.get(f"/v1/telegram/links/{GRACE}", headers=bot)).status_code == 404
    assert await TelegramLinks(api.pool).customer_of(ADA) == customer_id


async def test_an_expired_or_unknown_code_and_a_second_customer_are_refused(api: Api) -> None:
    ada, grace = await a_customer_with_money(api), await a_customer_with_money(api)
    bot = await api.headers(SCOPE_TELEGRAM_LINK)
    expired = await code_for(api, ada)
    await api.pool.execute(
        "UPDATE telegram_link_codes SET expires_at = now() - interval '1 second'"
    )
    late = await api.http.post(
        "/v1/telegram/links", json={"code": expired["code"], "telegram_user_id": ADA}, headers=bot
    )
    assert late.status_code == 422 and "expired" in late.json()["detail"]
    unknown = await api.http.post(
        "/v1/telegram/links", json={"code": "x" * 32, "telegram_user_id": ADA}, headers=bot
    )
    assert unknown.status_code == 422 and "no such" in unknown.json()["detail"]
    linked = await code_for(api, ada)
    assert (
        await api.http.post(
            "/v1/telegram/links",
            json={"code": linked["code"], "telegram_user_id": ADA},
            headers=bot,
        )
    ).status_code == 201
    # One Telegram user, one customer: Grace's code cannot take Ada's Telegram.
    other = await code_for(api, grace)
    taken = await api.http.post(
        "/v1/telegram/links", json={"code": other["code"], "telegram_user_id": ADA}, headers=bot
    )
    assert taken.status_code == 409 and taken.json()["code"] == "already_done"
    # Refused, so Grace's code is still hers to use.
    mine = await api.http.post(
        "/v1/telegram/links", json={"code": other["code"], "telegram_user_id": GRACE}, headers=bot
    )
    assert mine.status_code == 201, mine.text


async def test_the_routes_take_their_scopes_and_the_customers_key(api: Api) -> None:
    customer_id = await a_customer_with_money(api)
    reader = await api.headers(SCOPE_CUSTOMERS_READ)
    refused = await api.http.post("/v1/telegram/links", json={}, headers=reader)
    assert refused.status_code == 403 and refused.json()["code"] == "scope_missing"
    others = await api.headers(SCOPE_PROCESSES_START, customers=["c-someone-else"])
    theirs = await api.http.post(f"/v1/customers/{customer_id}/telegram-link", headers=others)
    assert theirs.status_code == 403 and theirs.json()["code"] == "customer_not_allowed"
    bot = await api.headers(SCOPE_TELEGRAM_LINK)
    bad = await api.http.post(
        "/v1/telegram/links", json={"code": "short", "telegram_user_id": 0}, headers=bot
    )
    assert bad.status_code == 422 and "code" in bad.text and "telegram_user_id" in bad.text


SIGNUP = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "date_of_birth": "1990-12-10",
    "country": "DEU",
}


async def test_a_signup_saves_links_and_onboards_once_and_refuses_a_linked_user(api: Api) -> None:
    user = 7_000_000 + uuid.uuid4().int % 1_000_000
    bot = await api.headers(SCOPE_TELEGRAM_LINK) | {"Idempotency-Key": f"tg-signup-{user}"}
    body = SIGNUP | {"telegram_user_id": user}
    bad = await api.http.post(
        "/v1/telegram/signups",
        json=body | {"country": "de", "date_of_birth": "2999-01-01"},
        headers=bot,
    )
    assert bad.status_code == 422, bad.text
    assert {tuple(error["loc"]) for error in bad.json()["detail"]} == {
        ("body", "country"),
        ("body", "date_of_birth"),
    }
    # Nothing was written for the refused body.
    assert await TelegramLinks(api.pool).customer_of(user) is None

    first = await api.http.post("/v1/telegram/signups", json=body, headers=bot)
    assert first.status_code == 202, first.text
    customer_id = f"tg-{user}"
    assert first.json()["workflow_id"] == onboarding_workflow_id(customer_id)
    again = await api.http.post("/v1/telegram/signups", json=body, headers=bot)
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["run_id"] == first.json()["run_id"]
    assert await TelegramLinks(api.pool).customer_of(user) == customer_id
    saved = await CustomerStore(api.pool).get(customer_id)
    assert (saved.telegram_chat_id, saved.preferred_channels) == (str(user), [Channel.TELEGRAM])
    started = await api.client.get_workflow_handle(onboarding_workflow_id(customer_id)).describe()
    assert started.status is WorkflowExecutionStatus.RUNNING

    # A user linked to a customer of the app's signs up: refused, nothing written.
    linked_user = user + 1
    existing = await a_customer_with_money(api)
    await TelegramLinks(api.pool).link(linked_user, existing)
    refused = await api.http.post(
        "/v1/telegram/signups",
        json=SIGNUP | {"telegram_user_id": linked_user},
        headers=bot | {"Idempotency-Key": f"tg-signup-{linked_user}"},
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "already_done"
    assert not await api.pool.fetchval(
        "SELECT count(*) FROM customers WHERE customer_id = $1", f"tg-{linked_user}"
    )


async def test_linking_records_the_chat_and_the_customer_chooses_telegram(api: Api) -> None:
    customer_id = await a_customer_with_money(api)
    own = await api.headers(SCOPE_PROCESSES_START, customers=[customer_id])
    path = f"/v1/customers/{customer_id}/notification-channels"
    # No Telegram chat on file yet: choosing it is refused, naming the field.
    early = await api.http.put(path, json={"preferred_channels": ["telegram"]}, headers=own)
    assert early.status_code == 422, early.text
    assert early.json() == {
        "code": "invalid_request",
        "detail": "preferred_channels: no address on file for telegram",
    }
    user = 8_000_000 + uuid.uuid4().int % 1_000_000
    issued = await code_for(api, customer_id)
    bot = await api.headers(SCOPE_TELEGRAM_LINK)
    linked = await api.http.post(
        "/v1/telegram/links", json={"code": issued["code"], "telegram_user_id": user}, headers=bot
    )
    assert linked.status_code == 201, linked.text
    assert (await CustomerStore(api.pool).get(customer_id)).telegram_chat_id == str(user)
    chosen = {"preferred_channels": ["telegram", "email"]}
    for _ in range(2):  # the same choice twice: the same answer
        answer = await api.http.put(path, json=chosen, headers=own)
        assert answer.status_code == 200 and answer.json() == chosen, answer.text
    saved = await CustomerStore(api.pool).get(customer_id)
    assert saved.preferred_channels == [Channel.TELEGRAM, Channel.EMAIL]
    refused_bodies: list[dict[str, list[str]]] = [
        {"preferred_channels": []},
        {"preferred_channels": ["email", "email"]},
    ]
    for body in refused_bodies:
        bad = await api.http.put(path, json=body, headers=own)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == [
            "body",
            "preferred_channels",
        ], bad.text
    push = await api.http.put(path, json={"preferred_channels": ["push"]}, headers=own)
    assert push.json()["detail"] == "preferred_channels: no address on file for push"
    other = await api.headers(SCOPE_PROCESSES_START, customers=[await a_customer_with_money(api)])
    assert (await api.http.put(path, json=chosen, headers=other)).status_code == 403
    # Nothing refused changed the choice.
    assert (await CustomerStore(api.pool).get(customer_id)).preferred_channels == [
        Channel.TELEGRAM,
        Channel.EMAIL,
    ]
