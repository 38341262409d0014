"""`GET /v1/customers/{customer_id}/overview`: every section from its own
source on its own budget; a slow or failing source leaves its section stale
or unavailable, never the page."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from activities.api_keys import SCOPE_CUSTOMERS_READ
from activities.ledger import Ledger
from schemas import accounts
from schemas.issuer import CardType
from schemas.ledger import AccountSpec, TransferRequest
from schemas.money import Currency
from schemas.search import AMOUNT_MINOR, CURRENCY, CUSTOMER_ID, PROCESS_STATUS
from starters.gateway.v1.overview import SOURCE_SECONDS
from tests.polling import until
from tests.starters.test_v1_customers import (
    Api,
    a_card,
    a_customer_with_money,
    api,
    issuer_card,
    key,
)
from workflows.dispute import DISPUTE_WORKFLOW, dispute_workflow_id
from workflows.topup import TOPUP_WORKFLOW, topup_workflow_id

__all__ = ["api"]

CASHBACK_USD = accounts.expense_cashback(Currency.USD)
PAGE_SECONDS_MAX = max(SOURCE_SECONDS.values())
UNHURRIED_SECONDS = 30.0


async def a_physical_card(api: Api, sim: Any, customer_id: str) -> str:
    return (await issuer_card(api, sim, customer_id, CardType.PHYSICAL)).id


async def in_flight(api: Api, customer_id: str, workflow_type: str, workflow_id: str) -> None:
    """A process of the customer's as visibility shows it, on a queue no one polls."""
    await api.client.start_workflow(
        workflow_type,
        id=workflow_id,
        task_queue=f"nobody-polls-{uuid.uuid4().hex[:8]}",
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(CUSTOMER_ID, customer_id),
                SearchAttributePair(PROCESS_STATUS, "processing"),
                SearchAttributePair(AMOUNT_MINOR, 4_200),
                SearchAttributePair(CURRENCY, "USD"),
            ]
        ),
    )


async def cashback(api: Api, customer_id: str, amount_minor: int) -> None:
    ledger = Ledger(api.pool)
    await ledger.open_account(AccountSpec(code=CASHBACK_USD, currency=Currency.USD, kind="expense"))
    await ledger.transfer(
        TransferRequest(
            key=key(),
            debit=CASHBACK_USD,
            credit=accounts.wallet(customer_id, Currency.USD),
            amount_minor=amount_minor,
            currency=Currency.USD,
        )
    )


async def overview(api: Api, customer_id: str) -> tuple[dict[str, Any], float]:
    headers = await api.headers(SCOPE_CUSTOMERS_READ)
    started = time.monotonic()
    answer = await api.http.get(f"/v1/customers/{customer_id}/overview", headers=headers)
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    return answer.json(), elapsed


async def test_every_section_comes_from_its_source(
    api: Api, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What each source gives, not how fast: budgets no loaded machine misses
    # (the budgets themselves are the next test's).
    for name in SOURCE_SECONDS:
        monkeypatch.setitem(SOURCE_SECONDS, name, UNHURRIED_SECONDS)
    customer_id = await a_customer_with_money(api)
    card_id = await a_physical_card(api, sim, customer_id)
    await cashback(api, customer_id, 300)
    dispute = dispute_workflow_id(f"txn-{uuid.uuid4().hex[:8]}")
    topup = topup_workflow_id("bank", f"ref-{uuid.uuid4().hex[:8]}")
    await in_flight(api, customer_id, DISPUTE_WORKFLOW, dispute)
    await in_flight(api, customer_id, TOPUP_WORKFLOW, topup)

    def listed(page: dict[str, Any]) -> bool:
        return bool(page["disputes"]["data"]) and bool(page["topups"]["data"])

    page = await until(lambda: overview_page(api, customer_id), listed, "both processes listed")

    assert page["kyc_status"] == "approved"
    for name in ("balances", "rewards", "cards", "shipping", "disputes", "topups"):
        assert page[name]["status"] == "ok", (name, page[name])
    wallets = {w["currency"]: w["available_minor"] for w in page["balances"]["data"]["wallets"]}
    assert wallets == {"EUR": 3_000, "USD": 10_000 - 1_200 - 2_500 + 300}
    assert page["rewards"]["data"] == [{"currency": "USD", "cashback_minor": 300}]
    # The physical card is being shipped: it has no process yet.
    assert page["cards"]["data"] == [
        {"card_id": card_id, "kind": "physical", "state": "issuing", "view": None}
    ]
    [shipment] = page["shipping"]["data"]
    assert shipment["card_id"] == card_id and shipment["shipping"]["status"] == "pending"
    assert [p["process_id"] for p in page["disputes"]["data"]] == [dispute]
    assert page["topups"]["data"] == [
        {"process_id": topup, "status": "processing", "amount_minor": 4_200, "currency": "USD"}
    ]


async def overview_page(api: Api, customer_id: str) -> dict[str, Any]:
    page, _ = await overview(api, customer_id)
    return page


async def test_a_slow_and_a_failing_source_leave_the_page_answered_on_time(
    api: Api, sim: Any
) -> None:
    customer_id = await a_customer_with_money(api)
    await a_physical_card(api, sim, customer_id)
    first, _ = await overview(api, customer_id)
    assert first["shipping"]["status"] == "ok"
    # An issuer slower than the shipping's budget, and a card whose process
    # cannot answer (no worker has ever run it).
    sim.fault(path_prefix="/issuer/", kind="latency", seconds=SOURCE_SECONDS["shipping"] + 2)
    await a_card(api, customer_id, "open")

    page, elapsed = await overview(api, customer_id)

    assert elapsed < PAGE_SECONDS_MAX + 1.0
    # Both come back with their last good answer, each with its reason.
    cards = page["cards"]
    assert cards["status"] == "stale" and cards["data"] == first["cards"]["data"]
    # Temporal refuses the query, or holds it for a worker past the budget.
    assert cards["reason"] == "did not answer within its budget" or cards["reason"].startswith(
        "failed (temporal "
    ), cards
    shipping = page["shipping"]
    assert shipping["status"] == "stale", shipping
    assert shipping["reason"] == "did not answer within its budget"
    assert shipping["data"] == first["shipping"]["data"]
    assert shipping["as_of"] == first["shipping"]["as_of"]
    assert page["balances"]["status"] == "ok"

    # A customer seen for the first time under the same faults: nothing to
    # stand in, so unavailable, and still answered on time.
    newcomer = await a_customer_with_money(api)
    await a_physical_card(api, sim, newcomer)
    fresh, elapsed = await overview(api, newcomer)
    assert elapsed < PAGE_SECONDS_MAX + 1.0
    assert fresh["shipping"] == {
        "status": "unavailable",
        "reason": "did not answer within its budget",
        "as_of": None,
        "data": None,
    }
    assert fresh["balances"]["status"] == "ok"


async def test_an_unknown_customer_is_not_found(api: Api) -> None:
    headers = await api.headers(SCOPE_CUSTOMERS_READ)
    answer = await api.http.get("/v1/customers/nobody-here/overview", headers=headers)
    assert answer.status_code == 404, answer.text
