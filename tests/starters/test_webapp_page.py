"""The Telegram WebApp's page (`/webapp/`), driven in headless Chromium on a
platform of its own: opened as Telegram opens it, with initData in the URL's
hash, it shows the customer's exact balances and feed (declines with their
reason, older entries by "More"), freezes a card once, sets limits that are
in force, and shows the card's number fetched from the issuer itself, never
through the gateway. Forged, stale and unlinked initData show nothing.

Chromium is Debian's, launched as tests/starters/test_web_ui.py launches it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Response,
    Route,
    expect,
)

from activities.ledger import Ledger
from activities.telegram import TelegramLinks
from schemas import accounts
from schemas.cards import DeclineReason, SpendingLimits
from schemas.events import DECLINE_SENTENCES
from schemas.issuer import AuthorizationStatus, CardState
from schemas.ledger import TransferRequest
from schemas.money import Currency
from simulators.telegram import signed_init_data
from starters.gateway.webapp_page import assets
from tests import polling
from tests.conftest import Platform
from tests.customers import CASINO, authorize, card_state, customer, open_card
from tests.starters.test_web_ui import UI_TIMEOUT_MS, VIEWPORT, browser
from workers.secrets import telegram_bot_token

__all__ = ["browser"]

ADA, GRACE, NOBODY = 8_100_001, 8_100_002, 8_100_003
# What the customers of these tests hold: 100.00 USD and 1.234567 USDT.
FUNDS = {Currency.USD: 10_000, Currency.USDT: 1_234_567}
TOPUPS, TOPUP_MINOR = 20, 100
# The page's feed page (app.js's FEED_PAGE_SIZE).
FEED_PAGE_SIZE = 20


@dataclass
class WebApp:
    """The platform's gateway, its bot's token, and a browser context on the gateway."""

    platform: Platform
    bot_token: str
    context: BrowserContext
    # Every answer the gateway gave the page, to look inside afterwards.
    gateway_answers: list[Response] = field(default_factory=list)

    def init_data(self, user_id: int, **signed: Any) -> str:
        return signed_init_data(self.bot_token, user_id, **signed)

    async def open(self, init_data: str | None, *, by_telegram_script: bool = False) -> Page:
        """The page as Telegram opens it: launch parameters in the URL's hash,
        or (`by_telegram_script`) initData in Telegram's script's
        `Telegram.WebApp.initData`, as when the page loads that script."""
        page = await self.context.new_page()
        if by_telegram_script:
            script = f"window.Telegram = {{WebApp: {{initData: {json.dumps(init_data)}}}}};"
            await page.add_init_script(script)
            init_data = None

        def answered(response: Response) -> None:
            if response.url.startswith(self.platform.gateway_url):
                self.gateway_answers.append(response)

        page.on("response", answered)
        launch = "tgWebAppVersion=7.10&tgWebAppPlatform=tdesktop"
        if init_data is not None:
            launch = f"tgWebAppData={quote(init_data, safe='')}&{launch}"
        await page.goto(f"/webapp/#{launch}")
        return page

    def tma(self, user_id: int) -> dict[str, str]:
        return {"Authorization": f"tma {self.init_data(user_id)}"}


@pytest_asyncio.fixture(loop_scope="session")
async def webapp(platform: Platform, browser: Browser) -> AsyncIterator[WebApp]:
    context = await browser.new_context(base_url=platform.gateway_url, viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield WebApp(platform, telegram_bot_token(platform.settings), context)
    finally:
        await context.close()


def card_of(page: Page, card_id: str) -> Locator:
    return page.locator(f'article[data-card-id="{card_id}"]')


async def feed_of(webapp: WebApp, user_id: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=webapp.platform.gateway_url) as http:
        answer = await http.get(
            "/webapp/v1/transactions", params={"limit": 100}, headers=webapp.tma(user_id)
        )
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()["data"]
    return entries


async def feed_reaches(webapp: WebApp, user_id: int, kinds: list[str]) -> None:
    """Wait until the user's feed, newest first, begins with entries of `kinds`."""

    async def newest_kinds() -> list[str]:
        return [entry["kind"] for entry in await feed_of(webapp, user_id)][: len(kinds)]

    await polling.until(newest_kinds, lambda found: found == kinds, f"the feed begins {kinds}")


async def topped_up(platform: Platform, customer_id: str, count: int, amount_minor: int) -> None:
    """`count` bank top-ups of `amount_minor` USD credited to the customer's wallet."""
    ledger = Ledger(platform.stack.pool)
    for n in range(count):
        outcome = await ledger.transfer(
            TransferRequest(
                key=f"topup/bank/{customer_id}-{n}/credit",
                debit=accounts.bank_inbound(Currency.USD),
                credit=accounts.wallet(customer_id, Currency.USD),
                amount_minor=amount_minor,
                currency=Currency.USD,
            )
        )
        assert outcome.accepted, outcome


async def test_the_page_shows_the_exact_balances_and_the_feed_with_declines_and_more(
    webapp: WebApp,
) -> None:
    platform = webapp.platform
    customer_id, card_id, _ = await open_card(platform, FUNDS)
    await TelegramLinks(platform.stack.pool).link(ADA, customer_id)
    await topped_up(platform, customer_id, TOPUPS, TOPUP_MINOR)
    held = await authorize(platform, card_id, 1_234)
    assert held.status is AuthorizationStatus.PENDING, held
    await feed_reaches(webapp, ADA, ["authorization"])
    declined = await authorize(platform, card_id, 50_000)
    assert declined.status is AuthorizationStatus.DECLINED, declined
    await feed_reaches(webapp, ADA, ["decline", "authorization"])

    page = await webapp.open(webapp.init_data(ADA))

    usd = page.locator('li.wallet[data-currency="USD"]')
    # 100.00 + 20 x 1.00 in, 12.34 held.
    await expect(usd.locator(".available")).to_have_text("107.66 USD")
    await expect(usd.locator(".held")).to_have_text("12.34 USD")
    usdt = page.locator('li.wallet[data-currency="USDT"]')
    await expect(usdt.locator(".available")).to_have_text("1.234567 USDT")
    await expect(usdt.locator(".held")).to_have_text("0.000000 USDT")
    await expect(page.locator("li.wallet")).to_have_count(2)
    await expect(card_of(page, card_id).locator(".state")).to_have_text("Active")

    entries = page.locator("#entries > li")
    await expect(entries).to_have_count(FEED_PAGE_SIZE)
    decline, hold = entries.nth(0), entries.nth(1)
    await expect(decline).to_have_attribute("data-kind", "decline")
    await expect(decline.locator(".what")).to_have_text("Corner Shop")
    await expect(decline.locator(".amount")).to_have_text("-500.00 USD")
    await expect(decline.locator(".status")).to_have_text("declined")
    insufficient = DECLINE_SENTENCES[DeclineReason.INSUFFICIENT_FUNDS]
    await expect(decline.locator(".reason")).to_have_text(insufficient)
    await expect(hold.locator(".what")).to_have_text("Corner Shop")
    await expect(hold.locator(".amount")).to_have_text("-12.34 USD")
    await expect(hold.locator(".status")).to_have_text("pending")
    await expect(hold.locator(".reason")).to_have_count(0)
    # The rest of the first page: the newest 18 top-ups.
    await expect(entries.locator(".what")).to_have_text(
        ["Corner Shop", "Corner Shop", *["Top-up"] * (FEED_PAGE_SIZE - 2)]
    )

    more = page.get_by_role("button", name="More")
    await more.click()
    # The two oldest top-ups, then the wallets' first money (USDT's, then USD's,
    # as the customer's wallets were funded).
    await expect(entries).to_have_count(TOPUPS + 4)
    await expect(entries.locator(".amount")).to_have_text(
        ["-500.00 USD", "-12.34 USD", *["1.00 USD"] * TOPUPS, "1.234567 USDT", "100.00 USD"]
    )
    await expect(more).to_be_hidden()


async def test_the_page_freezes_once_sets_limits_in_force_and_shows_the_issuers_number(
    webapp: WebApp,
) -> None:
    platform = webapp.platform
    customer_id, card_id, card = await open_card(platform, FUNDS)
    await TelegramLinks(platform.stack.pool).link(ADA, customer_id)
    page = await webapp.open(webapp.init_data(ADA))
    shown = card_of(page, card_id)
    toggle = shown.locator("button.toggle")
    await expect(toggle).to_have_text("Freeze")

    # Pressed twice in a row: the second press meets the first one's busy button.
    await toggle.dblclick()
    await expect(shown.locator(".state")).to_have_text("Frozen")
    await expect(shown.locator(".message")).to_have_text("Card frozen")
    await expect(toggle).to_have_text("Unfreeze")
    state = await card_state(card)
    assert (state.state, state.changes) == (CardState.PAUSED, 1)

    form = shown.locator("form.limits")
    await form.get_by_label("Per purchase").fill("50")
    await form.get_by_label("Per day").fill("75.5")
    await form.get_by_label("Blocked merchant codes (MCC)").fill("7995, 5812")
    await form.get_by_role("button", name="Save limits").click()
    await expect(shown.locator(".message")).to_have_text("Limits saved")
    await expect(form.get_by_label("Per day")).to_have_value("75.50")
    await expect(form.get_by_label("Per month")).to_have_value("")
    async with httpx.AsyncClient(base_url=platform.gateway_url) as http:
        read = await http.get(f"/webapp/v1/cards/{card_id}", headers=webapp.tma(ADA))
    assert read.status_code == 200, read.text
    assert SpendingLimits.model_validate(read.json()["limits"]) == SpendingLimits(
        per_transaction_minor=5_000, per_day_minor=7_550, blocked_mccs=["5812", "7995"]
    )

    await toggle.click()
    await expect(shown.locator(".state")).to_have_text("Active")
    state = await card_state(card)
    assert (state.state, state.changes) == (CardState.OPEN, 2)
    # In force: a purchase over the new limit, and one of a blocked kind, are declined.
    over = await authorize(platform, card_id, 5_001)
    blocked = await authorize(platform, card_id, 100, merchant=CASINO)
    assert (over.status, over.decision_reason) == (
        AuthorizationStatus.DECLINED,
        DeclineReason.OVER_TRANSACTION_LIMIT,
    )
    assert (blocked.status, blocked.decision_reason) == (
        AuthorizationStatus.DECLINED,
        DeclineReason.BLOCKED_MCC,
    )

    # The number the issuer shows the holder (the same each time it is revealed).
    async with httpx.AsyncClient(base_url=platform.gateway_url) as http:
        token = await http.post(f"/v1/cards/{card_id}/reveal", headers=platform.api_headers)
        assert token.status_code == 201, token.text
        secret = (await http.get(token.json()["url"])).json()
    pan = secret["pan"]
    await shown.get_by_role("button", name="Show card number").click()
    grouped = " ".join(pan[i : i + 4] for i in range(0, 16, 4))
    await expect(shown.locator(".pan")).to_have_text(grouped)
    expiry = f"{secret['exp_month']:02d}/{str(secret['exp_year'])[-2:]}"
    await expect(shown.locator(".expiry")).to_have_text(expiry)
    await expect(shown.locator(".cvv")).to_have_text(secret["cvv"])
    # The page had it from the issuer; the gateway never said it.
    gateway_said = [await answer.text() for answer in webapp.gateway_answers]
    assert any("/reveal" in answer.url for answer in webapp.gateway_answers)
    assert not [said for said in gateway_said if pan in said]
    await shown.get_by_role("button", name="Hide").click()
    await expect(shown.locator(".pan")).to_have_text("")


async def test_forged_stale_and_unlinked_init_data_and_other_customers_cards_show_nothing(
    webapp: WebApp,
) -> None:
    platform = webapp.platform
    customer_id, card_id, card = await open_card(platform, FUNDS)
    links = TelegramLinks(platform.stack.pool)
    await links.link(ADA, customer_id)
    await links.link(GRACE, await customer(platform))
    good = webapp.init_data(ADA)
    for by_telegram_script in (False, True):
        page = await webapp.open(good, by_telegram_script=by_telegram_script)
        await expect(page.locator('li.wallet[data-currency="USD"] .available')).to_have_text(
            "100.00 USD"
        )

    stale_at = int(time.time()) - platform.settings.webapp_init_data_seconds_max - 60
    hash_at = good.index("hash=") + len("hash=")
    changed_hash = good[:hash_at] + ("0" if good[hash_at] != "0" else "1") + good[hash_at + 1 :]
    not_linked = "This Telegram account is not linked to a customer"
    from_the_bot = "Open this page from the bot"
    refusals = {
        "no initData": (None, from_the_bot, "This page shows your cards"),
        "hash changed": (changed_hash, from_the_bot, "initData does not verify"),
        "user changed": (
            good.replace(str(ADA), str(GRACE)),
            from_the_bot,
            "initData does not verify",
        ),
        "stale": (
            webapp.init_data(ADA, auth_date=stale_at),
            from_the_bot,
            "initData is too old: open the WebApp again",
        ),
        "unlinked user": (
            webapp.init_data(NOBODY),
            not_linked,
            "this Telegram user is linked to no customer: /start the bot",
        ),
    }
    for why, (init_data, title, detail) in refusals.items():
        refused = await webapp.open(init_data)
        alert = refused.get_by_role("alert")
        await expect(alert.get_by_role("heading"), why).to_have_text(title)
        await expect(alert.locator("#refused-detail"), why).to_contain_text(detail)
        for section in ("#balances", "#cards", "#feed"):
            await expect(refused.locator(section), why).to_be_hidden()
        await expect(refused.locator("li, article"), why).to_have_count(0)
        await expect(refused.locator("body"), why).not_to_contain_text("USD")
        await refused.close()

    # Grace's own initData, on Ada's card: refused, and the card is as it was.
    headers = {**webapp.tma(GRACE), "Idempotency-Key": uuid.uuid4().hex}
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=headers) as http:
        answers = {
            "read": await http.get(f"/webapp/v1/cards/{card_id}"),
            "freeze": await http.post(
                f"/webapp/v1/cards/{card_id}/actions", json={"action": "freeze"}
            ),
            "limits": await http.put(
                f"/webapp/v1/cards/{card_id}/limits", json={"per_transaction_minor": 1}
            ),
            "reveal": await http.post(f"/webapp/v1/cards/{card_id}/reveal"),
            "no such card": await http.get("/webapp/v1/cards/card_none"),
        }
    for what, answer in answers.items():
        assert (answer.status_code, answer.json()["code"]) == (403, "customer_not_allowed"), what
    state = await card_state(card)
    assert (state.state, state.changes, state.limits) == (CardState.OPEN, 0, SpendingLimits())


async def test_the_page_formats_and_reads_amounts_in_minor_units_exactly(browser: Browser) -> None:
    """Amounts are shown and read with string and integer arithmetic, by each
    currency's exponent, never through a float (0.1 + 0.2 is not 0.3)."""
    origin = "http://webapp.test"
    files = assets()
    context = await browser.new_context(base_url=origin)
    try:

        async def serve(route: Route) -> None:
            name = route.request.url.removeprefix(f"{origin}/webapp/") or "index.html"
            asset = files[name]
            await route.fulfill(body=asset.body, content_type=asset.media_type)

        await context.route(f"{origin}/webapp/**", serve)
        page = await context.new_page()
        await page.goto("/webapp/")
        formatted = await page.evaluate(
            """() => [
                formatMoney(5, "USD"), formatMoney(-5, "USDT"), formatMoney(1234, "JPY"),
                formatMoney(0, "EUR"), formatMoney(1000000000000000, "GBP"),
                formatMoney(-123456789, "USD"),
            ]"""
        )
        assert formatted == [
            "0.05 USD",
            "-0.000005 USDT",
            "1234 JPY",
            "0.00 EUR",
            "10000000000000.00 GBP",
            "-1234567.89 USD",
        ]
        read = await page.evaluate(
            """() => [["0.1", "USD"], ["0.29", "USD"], ["", "USD"], [" 12 ", "JPY"],
                      ["1.000001", "USDT"], ["10000000000000.00", "USD"]]
                .map(([typed, currency]) => parseMoney(typed, currency, "Per day"))"""
        )
        assert read == [10, 29, None, 12, 1_000_001, 10**15]
        refused = await page.evaluate(
            """() => [["0.001", "USD"], ["1.5", "JPY"], ["-1", "USD"], ["1e3", "USD"],
                      ["10000000000000.01", "USD"]]
                .map(([typed, currency]) => {
                    try { return parseMoney(typed, currency, "Per day"); }
                    catch (error) { return error.message; }
                })"""
        )
        assert refused == [
            'Per day: "0.001" is not an amount of USD, with at most 2 decimals',
            'Per day: "1.5" is not an amount of JPY, with no decimals',
            'Per day: "-1" is not an amount of USD, with at most 2 decimals',
            'Per day: "1e3" is not an amount of USD, with at most 2 decimals',
            "Per day: 10000000000000.01 USD is more than any limit can be",
        ]
    finally:
        await context.close()
