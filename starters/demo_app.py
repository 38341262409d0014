"""The demo as an app built on cardflow sees it: an upstream app's webhook
endpoint (the simulator's) that is sent the customer's events while the
demo runs, a purchase the card declines, then the customer's overview and
transaction feed read through the public API with a key bound to them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from temporalio.client import Client

from activities.api_keys import (
    SCOPE_CUSTOMERS_READ,
    SCOPE_PROCESSES_START,
    ApiKeyStore,
    NewApiKey,
    api_key_pepper,
)
from activities.database import create_pool
from activities.providers.issuer import IssuerClient
from schemas.events import EventType
from schemas.issuer import Merchant
from schemas.money import Currency, Money
from starters.scenario_steps import STAGE_WAIT_SECONDS_MAX
from starters.scenarios_events import upstream_deliveries, upstream_endpoint
from workers.secrets import telegram_bot_token
from workers.settings import Settings
from workflows.event_delivery import event_delivery_workflow_id

Say = Callable[[str, str | None], None]
DEMO_RECEIVER = "demo-app"
# The Telegram users the demo's instructions speak as: a new one each run, as
# a Telegram user is linked to one customer and each run makes its own.
DEMO_TELEGRAM_USERS = 420_000_000
FEED_LINES_MAX = 12
TOO_DEAR = Merchant(name="Grand Piano Store", mcc="5733", country="GB")


async def register_demo_app(client: Client, settings: Settings, say: Say) -> str:
    """Register the simulator's upstream app for every event type; its endpoint id."""
    endpoint_id = await upstream_endpoint(
        client, settings, DEMO_RECEIVER, [t.value for t in EventType]
    )
    say(
        f"Webhook endpoint {endpoint_id}: the upstream app is sent every event, signed",
        event_delivery_workflow_id(endpoint_id),
    )
    return endpoint_id


def _money(amount_minor: int | None, currency: str) -> str:
    if amount_minor is None:
        return "-"
    return str(Money(amount_minor=amount_minor, currency=Currency(currency)))


def feed_line(entry: dict[str, Any]) -> str:
    """One feed entry as the app would list it."""
    merchant = (entry.get("merchant") or {}).get("name")
    what = f"{entry['kind']:<13} {_money(entry['amount_minor'], entry['currency']):>14}"
    status = entry["status"]
    line = f"{what}  {status:<8} {merchant or entry.get('process_id') or ''}"
    if entry.get("reason"):
        line += f" - {entry['reason']}"
    return line


async def show_as_an_app(
    client: Client, settings: Settings, say: Say, endpoint_id: str, customer_id: str, card_id: str
) -> None:
    """A declined purchase, then what the app shows and what it was sent."""
    async with IssuerClient(f"{settings.providers_base_url}/issuer") as issuer:
        declined = await issuer.simulate_authorization(
            card_id=card_id,
            amount_minor=1_500_000,
            currency=Currency.USD,
            merchant=TOO_DEAR,
            partial_approval_capable=False,
            idempotency_key=f"demo-decline-{uuid.uuid4().hex[:8]}",
        )
    say(f"A 15,000.00 USD purchase is declined: {declined.decision_reason}", None)
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        issued = await ApiKeyStore(pool, api_key_pepper(settings)).create(
            NewApiKey(name="demo app", scopes=[SCOPE_CUSTOMERS_READ], customers=[customer_id])
        )
    finally:
        await pool.close()
    headers = {"Authorization": f"Bearer {issued.key}"}
    async with httpx.AsyncClient(
        base_url=settings.gateway_base_url, headers=headers, timeout=10
    ) as http:
        overview = (await http.get(f"/v1/customers/{customer_id}/overview")).json()
        say(f"The app's home screen (GET /v1/customers/{customer_id}/overview):", None)
        for wallet in overview["balances"]["data"]["wallets"]:
            say(
                f"  {wallet['currency']}: available "
                f"{_money(wallet['available_minor'], wallet['currency'])}",
                None,
            )
        cards = overview["cards"]["data"] or []
        shown = ", ".join(f"{card['card_id']} {card['state']}" for card in cards)
        say(f"  cards: {shown}", None)
        for name, section in overview.items():
            if isinstance(section, dict) and section.get("status") not in (None, "ok"):
                say(f"  section {name}: {section['status']} ({section.get('reason')})", None)
        # The decline's event comes with the issuer's webhook: wait for it.
        entries: list[dict[str, Any]] = []
        for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
            page = await http.get(
                f"/v1/customers/{customer_id}/transactions", params={"limit": FEED_LINES_MAX}
            )
            entries = page.json()["data"]
            if any(e["authorization_id"] == declined.id for e in entries):
                break
            await asyncio.sleep(0.05)
        say(f"The app's feed (GET /v1/customers/{customer_id}/transactions), newest first:", None)
        for entry in entries:
            say(f"  {feed_line(entry)}", None)
    await _bot_how_to(settings, say, customer_id)
    deliveries = await upstream_deliveries(settings, DEMO_RECEIVER)
    accepted = [d for d in deliveries if d["outcome"] == "accepted"]
    kinds = sorted({d["type"] for d in accepted})
    say(
        f"The upstream app was sent {len(accepted)} events so far, each signature verified "
        f"({', '.join(kinds)})",
        event_delivery_workflow_id(endpoint_id),
    )


async def _bot_how_to(settings: Settings, say: Say, customer_id: str) -> None:
    """The customer's Telegram: linked through the bot (the demo's Telegram
    user says /start with the code the customer's app hands over), then how to
    talk to the bot through the Telegram simulator and the WebApp's URL,
    opened as Telegram opens it (initData signed for that user)."""
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        issued = await ApiKeyStore(pool, api_key_pepper(settings)).create(
            NewApiKey(name="demo app link", scopes=[SCOPE_PROCESSES_START], customers=[customer_id])
        )
    finally:
        await pool.close()
    async with httpx.AsyncClient(
        base_url=settings.gateway_base_url,
        headers={"Authorization": f"Bearer {issued.key}"},
        timeout=10,
    ) as http:
        answer = await http.post(f"/v1/customers/{customer_id}/telegram-link")
    answer.raise_for_status()
    code = answer.json()["code"]
    bot_id = telegram_bot_token(settings).split(":", 1)[0]
    users = f"{settings.providers_base_url}/telegram/simulate/bots/{bot_id}"
    user = DEMO_TELEGRAM_USERS + uuid.uuid4().int % 1_000_000
    async with httpx.AsyncClient(base_url=users, timeout=10) as telegram:
        await telegram.post(f"/users/{user}/messages", json={"text": f"/start {code}"})
        answered: list[dict[str, Any]] = []
        for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
            answered = (await telegram.get(f"/chats/{user}/messages")).json()["data"]
            if answered:
                break
            await asyncio.sleep(0.05)
        if not answered:
            say("The bot did not answer /start: `cardflow dev status` shows its part", None)
            return
        opened = await telegram.post(f"/users/{user}/webapp")
        opened.raise_for_status()
    say(f"Telegram user {user} said /start <code> to the bot: {answered[0]['text']}", None)
    webapp = f"{settings.webapp_page_url}#tgWebAppData={quote(opened.json()['init_data'])}"
    say(
        f"The customer's WebApp, as Telegram opens it (valid "
        f"{settings.webapp_init_data_seconds_max // 60} min): {webapp}",
        None,
    )
    say("Talk to the bot through the Telegram simulator, as that user:", None)
    for text in ("/balance", "/cards", "/transactions", "/topup", "/notifications", "/app"):
        say(
            f"  curl -s -X POST {users}/users/{user}/messages"
            f" -H 'content-type: application/json' -d '{{\"text\": \"{text}\"}}'",
            None,
        )
    say(f"  and read its answers: curl -s {users}/chats/{user}/messages", None)
    say(
        "  a new person signs up as any other user id: /signup, then the questions it asks",
        None,
    )
