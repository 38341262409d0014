"""The customer's feed (`GET /v1/customers/{id}/transactions`) and the event
stream (`GET /v1/events`): every entry agrees with the ledger to the unit, a
declined purchase says why, and paging never skips nor repeats an event,
however the writers' commits interleave with the readers."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from activities.api_keys import (
    SCOPE_CUSTOMERS_READ,
    SCOPE_PROCESSES_READ,
    SCOPE_WEBHOOKS_MANAGE,
)
from activities.events import sequence
from activities.ledger import Ledger
from schemas import accounts
from schemas.cards import CardPolicy, CardStateChange, ExceptionDecision, SpendingLimits
from schemas.ledger import AccountSpec, TransferRequest
from schemas.money import Currency
from tests import polling
from tests.conftest import Platform
from tests.customers import (
    CASINO,
    SHOP,
    authorize,
    card_state,
    customer,
    issuer,
    open_card,
    wallet,
    wallet_becomes,
)
from workflows.cards import (
    FREEZE_UPDATE,
    LIMITS_UPDATE,
    RESOLVE_EXCEPTION_UPDATE,
    UNFREEZE_UPDATE,
)

BANK_USD = accounts.bank_inbound(Currency.USD)


async def feed_of(platform: Platform, customer_id: str, **params: Any) -> list[dict[str, Any]]:
    """Every entry of the customer's feed, page by page."""
    headers = await platform.key_headers(SCOPE_CUSTOMERS_READ, customers=[customer_id])
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=headers) as http:
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            answer = await http.get(f"/v1/customers/{customer_id}/transactions", params=query)
            assert answer.status_code == 200, answer.text
            page = answer.json()
            entries.extend(page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                return entries


async def test_the_feed_shows_holds_declines_clearings_and_refunds_as_the_ledger_moved(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    await handle.execute_update(LIMITS_UPDATE, SpendingLimits(blocked_mccs=["7995"]))
    declined = await authorize(platform, card_id, 700, merchant=CASINO)
    assert declined.decision_reason == "blocked_mcc"
    bought = await authorize(platform, card_id, 3_000)
    still_open = await authorize(platform, card_id, 1_000)
    async with issuer(platform) as client:
        cleared = await client.simulate_clearing(
            bought.id, amount_minor=2_800, final=True, idempotency_key=f"clear-{bought.id}"
        )
        refund = await client.simulate_refund(
            card_id=card_id,
            amount_minor=500,
            currency=Currency.USD,
            merchant=SHOP,
            refunded_transaction_id=cleared.id,
            idempotency_key=f"refund-{cleared.id}",
        )

    async def complete() -> bool:
        kinds = [entry["kind"] for entry in await feed_of(platform, customer_id, limit=2)]
        return sorted(kinds) == sorted(
            ["adjustment", "decline", "authorization", "authorization", "clearing", "refund"]
        )

    await polling.eventually(complete, "every purchase is in the feed")
    entries = await feed_of(platform, customer_id, limit=2)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_kind.setdefault(entry["kind"], []).append(entry)
    decline = by_kind["decline"][0]
    assert decline["reason_code"] == "blocked_mcc" and "blocked" in decline["reason"]
    assert decline["authorization_id"] == declined.id and decline["amount_minor"] == -700
    assert decline["merchant"]["name"] == CASINO.name and decline["posted_minor"] == 0
    holds = {entry["authorization_id"]: entry for entry in by_kind["authorization"]}
    assert holds[bought.id]["status"] == "cleared" and holds[bought.id]["pending_minor"] == 0
    assert holds[still_open.id]["status"] == "pending"
    assert holds[still_open.id]["pending_minor"] == 1_000
    assert holds[still_open.id]["hold_expires_at"] is not None
    clearing = by_kind["clearing"][0]
    assert (clearing["transaction_id"], clearing["posted_minor"]) == (cleared.id, -2_800)
    assert clearing["merchant"]["name"] == SHOP.name
    assert clearing["process_id"] == f"card/{card_id}"
    assert by_kind["refund"][0]["transaction_id"] == refund.id
    # The feed agrees with the ledger to the unit.
    balance = await wallet(platform, customer_id)
    assert sum(entry["posted_minor"] for entry in entries) == balance.posted == 10_000 - 2_800 + 500
    assert sum(entry["pending_minor"] for entry in entries) == balance.debits_pending == 1_000
    # Newest first, and filters narrow it.
    assert [entry["kind"] for entry in entries][-1] == "adjustment"
    only = await feed_of(platform, customer_id, kind=["decline", "refund"])
    assert sorted(entry["kind"] for entry in only) == ["decline", "refund"]
    assert await feed_of(platform, customer_id, card_id="card_nobody") == []


async def test_the_feed_takes_customers_read_and_knows_its_customers(platform: Platform) -> None:
    customer_id = await customer(platform)
    async with httpx.AsyncClient(base_url=platform.gateway_url) as http:
        path = f"/v1/customers/{customer_id}/transactions"
        reader = await platform.key_headers(SCOPE_PROCESSES_READ)
        refused = await http.get(path, headers=reader)
        assert refused.status_code == 403 and refused.json()["code"] == "scope_missing"
        other = await platform.key_headers(SCOPE_CUSTOMERS_READ, customers=["someone_else"])
        theirs = await http.get(path, headers=other)
        assert theirs.status_code == 403 and theirs.json()["code"] == "customer_not_allowed"
        allowed = await platform.key_headers(SCOPE_CUSTOMERS_READ)
        missing = await http.get("/v1/customers/nobody_here/transactions", headers=allowed)
        assert missing.status_code == 404, missing.text
        bad = await http.get(path, headers=allowed, params={"cursor": "x1"})
        assert bad.status_code == 422 and "cursor" in bad.text
        bad_kind = await http.get(path, headers=allowed, params={"kind": "lottery"})
        assert bad_kind.status_code == 422 and "kind" in bad_kind.text


async def _topup_credit(
    connection: asyncpg.Connection | asyncpg.Pool,
    customer_id: str,
    amount: int,
    currency: Currency = Currency.USD,
) -> None:
    """A top-up's credit as the ledger writes it (its key names the process)."""
    ref = uuid.uuid4().hex[:10]
    await Ledger(connection).transfer(  # type: ignore[arg-type]
        TransferRequest(
            key=f"topup/bank/{ref}/credit",
            debit=accounts.bank_inbound(currency),
            credit=accounts.wallet(customer_id, currency),
            amount_minor=amount,
            currency=currency,
        )
    )


async def test_a_writer_committing_late_never_leaves_a_gap_behind_a_reader(
    platform: Platform,
) -> None:
    pool = platform.stack.pool
    # Accounts of their own (another currency): the late writer's locks
    # never stand in the other writer's way.
    late_customer = await customer(platform, {Currency.EUR: 0})
    customer_id = await customer(platform, {Currency.USD: 0})
    for currency in (Currency.USD, Currency.EUR):
        await Ledger(pool).open_account(
            AccountSpec(code=accounts.bank_inbound(currency), currency=currency, kind="bank")
        )
    manager = await platform.key_headers(SCOPE_WEBHOOKS_MANAGE)
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=manager) as http:

        async def events_after(after: int) -> list[dict[str, Any]]:
            answer = await http.get("/v1/events", params={"after": after, "type": "topup.credited"})
            assert answer.status_code == 200, answer.text
            found: list[dict[str, Any]] = answer.json()["data"]
            return found

        late = await asyncpg.connect(platform.stack.database_url)
        try:
            # The late writer's event is written first and committed last.
            transaction = late.transaction()
            await transaction.start()
            await _topup_credit(late, late_customer, 111, Currency.EUR)
            await _topup_credit(pool, customer_id, 222)
            first = await events_after(0)
            assert [event["data"]["amount_minor"] for event in first] == [222]
            await transaction.commit()
        finally:
            await late.close()
        await _topup_credit(pool, customer_id, 333)
        rest = await events_after(first[-1]["seq"])
        # The late one comes behind the position already read, never before it.
        assert [event["data"]["amount_minor"] for event in rest] == [111, 333]
        assert [event["customer_id"] for event in first + rest] == [
            customer_id,
            late_customer,
            customer_id,
        ]
        assert all(event["process_id"].startswith("topup/bank/") for event in first + rest)
    entries = await feed_of(platform, customer_id, limit=1)
    assert [entry["amount_minor"] for entry in entries] == [333, 222]
    assert (await wallet(platform, customer_id)).posted == 555


async def test_the_feed_pages_without_gaps_or_repeats_while_new_money_arrives(
    platform: Platform,
) -> None:
    pool = platform.stack.pool
    customer_id = await customer(platform, {Currency.USD: 0})
    await Ledger(pool).open_account(AccountSpec(code=BANK_USD, currency=Currency.USD, kind="bank"))
    for amount in range(1, 8):
        await _topup_credit(pool, customer_id, amount)
    await sequence(pool)
    headers = await platform.key_headers(SCOPE_CUSTOMERS_READ, customers=[customer_id])
    seen: list[int] = []
    cursor: str | None = None
    arriving = 100
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=headers) as http:
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            answer = await http.get(f"/v1/customers/{customer_id}/transactions", params=params)
            page = answer.json()
            seen.extend(entry["amount_minor"] for entry in page["data"])
            # New money arrives between every two pages.
            arriving += 1
            await _topup_credit(pool, customer_id, arriving)
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    newest = await feed_of(platform, customer_id, limit=100)
    assert [entry["amount_minor"] for entry in newest][: arriving - 100] == list(
        range(arriving, 100, -1)
    )


async def test_a_hold_the_cards_timer_expires_shows_expired_once(platform: Platform) -> None:
    customer_id, card_id, _ = await open_card(platform, policy=CardPolicy(hold_expiry_seconds=1))
    auth = await authorize(platform, card_id, 1_200)
    await wallet_becomes(platform, customer_id, posted=10_000, pending=0)

    async def expired() -> bool:
        holds = await feed_of(platform, customer_id, kind=["authorization"])
        return [(h["status"], h["pending_minor"]) for h in holds] == [("expired", 0)]

    # The card's own timer released it: the ledger's release is the event.
    await polling.eventually(expired, "the hold shows expired")
    # The issuer too says the authorization expired, twice: still one event.
    platform.sim.admin("POST", "/webhooks", {"duplicate": True})
    async with issuer(platform) as client:
        await client.simulate_expiry(auth.id, idempotency_key=f"expire-{auth.id}")
    manager = await platform.key_headers(SCOPE_WEBHOOKS_MANAGE)
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=manager) as http:

        async def issuer_word_in() -> bool:
            count = await platform.stack.pool.fetchval(
                "SELECT count(*) FROM gateway_webhook_events WHERE event_type ="
                " 'authorization.expired'"
            )
            return bool(count)

        await polling.eventually(issuer_word_in, "the issuer's expiry arrived")
        answer = await http.get(
            "/v1/events", params={"customer_id": customer_id, "type": "hold.expired"}
        )
    [event] = answer.json()["data"]
    assert (event["authorization_id"], event["card_id"]) == (auth.id, card_id)


async def test_a_card_frozen_and_unfrozen_is_told_as_the_issuer_changed_it(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform)
    await handle.execute_update(FREEZE_UPDATE, CardStateChange(reason="lost it"))
    await handle.execute_update(UNFREEZE_UPDATE, CardStateChange(reason="found it"))
    manager = await platform.key_headers(SCOPE_WEBHOOKS_MANAGE)
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=manager) as http:

        async def changes() -> list[tuple[str, str]]:
            answer = await http.get(
                "/v1/events", params={"customer_id": customer_id, "type": "card.state_changed"}
            )
            return [(e["data"]["change"], e["data"]["state"]) for e in answer.json()["data"]]

        async def both() -> bool:
            return len(await changes()) >= 2

        await polling.eventually(both, "the card's changes are events")
        assert await changes() == [("paused", "paused"), ("resumed", "open")]
        issued = await http.get(
            "/v1/events", params={"customer_id": customer_id, "type": "card.issued"}
        )
    [card] = issued.json()["data"]
    assert (card["card_id"], card["data"]["kind"]) == (card_id, "virtual")
    assert card["process_id"].startswith("card-issue/")


async def test_a_clearing_beyond_the_tolerance_shows_what_the_wallet_paid_and_what_waits(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(
        platform, policy=CardPolicy(clearing_over_tolerance_bps=2_000)
    )
    over = await authorize(platform, card_id, 1_000)
    async with issuer(platform) as client:
        cleared = await client.simulate_clearing(over.id, amount_minor=1_500, idempotency_key="t2")
    await wallet_becomes(platform, customer_id, posted=9_000, pending=0)

    async def clearing() -> dict[str, Any] | None:
        found = await feed_of(platform, customer_id, kind=["clearing"])
        return found[0] if found else None

    async def shown() -> bool:
        return await clearing() is not None

    await polling.eventually(shown, "the clearing is in the feed")
    entry = await clearing()
    assert entry is not None and entry["transaction_id"] == cleared.id
    assert (entry["amount_minor"], entry["posted_minor"], entry["unposted_minor"]) == (
        -1_500,
        -1_000,
        500,
    )
    [exception] = (await card_state(handle)).exceptions
    await handle.execute_update(
        RESOLVE_EXCEPTION_UPDATE,
        ExceptionDecision(exception_id=exception.id, action="charge", reason="receipt"),
        result_type=str,
    )
    await wallet_becomes(platform, customer_id, posted=8_500, pending=0)

    async def agrees() -> bool:
        entries = await feed_of(platform, customer_id)
        return bool(sum(e["posted_minor"] for e in entries) == 8_500)

    # The operator's charge is an adjustment: the feed adds up to the wallet again.
    await polling.eventually(agrees, "the feed adds up to the wallet")
    kinds = [e["kind"] for e in await feed_of(platform, customer_id)]
    assert kinds[0] == "adjustment"
