"""`GET /v1/customers/{customer_id}/rewards`: cashback earned and clawed back
as the ledger has it (to the unit), pending while a process has not paid,
and the campaigns in force that the rules engine finds the customer eligible
for; a Temporal that does not answer leaves the rest of the page standing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.common import SearchAttributePair, TypedSearchAttributes

from activities.api_keys import SCOPE_CUSTOMERS_READ, SCOPE_PROCESSES_READ
from activities.cashback import CashbackStore
from activities.ledger import Ledger
from activities.ledger.verify import verify
from schemas.accounts import expense_cashback, wallet
from schemas.cashback import Campaign, CashbackRefund
from schemas.money import Currency
from schemas.search import CUSTOMER_ID
from starters.cashback import SAMPLE_CAMPAIGNS_FILE, read_campaign_file, refund
from tests.conftest import RunningStack
from tests.customers import new_id
from tests.interruptions import balances_locked, until_waiting
from tests.polling import until
from tests.starters.test_v1_customers import Api, a_customer_with_money, api
from tests.workflows.test_cashback import OPEN, purchase, start
from tests.workflows.test_cashback import until as until_status
from workflows.cashback import CASHBACK_WORKFLOW, cashback_workflow_id

__all__ = ["api"]

GROCERIES_2PCT = "groceries-dining-2pct"
# a_customer_with_money's USD wallet: 10,000 in, 1,200 cleared (2,500 held).
USD_POSTED = 10_000 - 1_200


async def rewards(api: Api, customer_id: str) -> dict[str, Any]:
    headers = await api.headers(SCOPE_CUSTOMERS_READ, customers=[customer_id])
    answer = await api.http.get(f"/v1/customers/{customer_id}/rewards", headers=headers)
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


async def sample_campaigns(api: Api) -> None:
    await CashbackStore(api.pool).load_campaigns(
        read_campaign_file(SAMPLE_CAMPAIGNS_FILE).campaigns
    )


def campaign(campaign_id: str, **overrides: Any) -> Campaign:
    document: dict[str, Any] = {
        "id": campaign_id,
        "version": 1,
        "name": f"Campaign {campaign_id}",
        "valid_from": "2025-01-01T00:00:00Z",
        "rules": {"currencies": ["USD"]},
        "reward": {"basis_points": 300, "cap_minor": {"USD": 1_500}},
    }
    return Campaign.model_validate({**document, **overrides})


def cashback_of(page: dict[str, Any], currency: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [row for row in page["cashback"] if row["currency"] == currency]
    assert len(found) == 1, page["cashback"]
    return found[0]


async def test_earned_and_clawed_back_cashback_agree_with_the_ledger_to_the_unit(
    api: Api, stack: RunningStack
) -> None:
    customer_id = await a_customer_with_money(api)
    await sample_campaigns(api)
    request = purchase(customer_id, amount_minor=5_000, policy=OPEN)
    handle = await start(stack, request)
    await until_status(handle, lambda s: s.stage == "open for refunds")

    earned = await rewards(api, customer_id)
    assert earned["unavailable"] == {} and earned["pending"] == []
    assert cashback_of(earned, "USD") == {
        "currency": "USD",
        "earned_minor": 100,
        "clawed_back_minor": 0,
        "net_minor": 100,
        "pending_minor": 0,
        "pending_purchases": 0,
    }

    # A refund of 2,000 of the 5,000 takes back 2/5 of the 100.
    await refund(
        stack.client,
        request.transaction_id,
        CashbackRefund(refund_id="refund-1", amount_minor=2_000),
    )
    status = await until_status(handle, lambda s: s.clawed_back_minor > 0)
    page = await rewards(api, customer_id)

    usd = cashback_of(page, "USD")
    assert (usd["earned_minor"], usd["clawed_back_minor"]) == (100, 40)
    assert (usd["earned_minor"], usd["clawed_back_minor"]) == (
        status.reward_minor,
        status.clawed_back_minor,
    )
    # What the ledger holds: the expense account paid out the net, the wallet got it.
    ledger = Ledger(api.pool)
    assert (await ledger.balance(expense_cashback(Currency.USD))).posted == -usd["net_minor"]
    assert (await ledger.balance(wallet(customer_id, Currency.USD))).posted == (
        USD_POSTED + usd["net_minor"]
    )
    assert await verify(api.pool) == []
    # Newest first, each line the purchase's, with its campaign or refund.
    assert [
        (line["kind"], line["transaction_id"], line["campaign_id"], line["refund_id"])
        for line in page["recent"]
    ] == [
        ("clawed_back", request.transaction_id, None, "refund-1"),
        ("earned", request.transaction_id, GROCERIES_2PCT, None),
    ]
    assert [line["amount_minor"] for line in page["recent"]] == [40, 100]
    assert {line["currency"] for line in page["recent"]} == {"USD"}


async def test_a_reward_the_ledger_has_not_paid_yet_is_pending_then_earned(
    api: Api, stack: RunningStack
) -> None:
    customer_id = await a_customer_with_money(api)
    await sample_campaigns(api)
    request = purchase(customer_id, amount_minor=5_000, policy=OPEN)

    async with balances_locked(stack.database_url, wallet(customer_id, Currency.USD)) as lock:
        handle = await start(stack, request)
        # The rules decided 100; its posting waits for the wallet.
        await until_waiting(stack.pool, lock)

        def listed(page: dict[str, Any]) -> bool:
            return bool(page["pending"])

        page = await until(lambda: rewards(api, customer_id), listed, "the purchase pending")
        assert page["pending"] == [
            {
                "transaction_id": request.transaction_id,
                "currency": "USD",
                "purchase_amount_minor": 5_000,
                "stage": "paying",
                "reward_minor": 100,
            }
        ]
        assert cashback_of(page, "USD") == {
            "currency": "USD",
            "earned_minor": 0,
            "clawed_back_minor": 0,
            "net_minor": 0,
            "pending_minor": 100,
            "pending_purchases": 1,
        }

    await until_status(handle, lambda s: s.stage == "open for refunds")
    paid = await rewards(api, customer_id)
    assert paid["pending"] == []
    usd = cashback_of(paid, "USD")
    assert (usd["earned_minor"], usd["pending_minor"]) == (100, 0)


async def test_pending_is_reported_unavailable_when_temporal_does_not_answer(
    api: Api,
) -> None:
    customer_id = await a_customer_with_money(api)
    await sample_campaigns(api)
    # A cashback process no worker runs: listed, but its status never answers.
    await api.client.start_workflow(
        CASHBACK_WORKFLOW,
        id=cashback_workflow_id(f"txn-{uuid.uuid4().hex[:10]}"),
        task_queue=f"nobody-polls-{uuid.uuid4().hex[:8]}",
        search_attributes=TypedSearchAttributes([SearchAttributePair(CUSTOMER_ID, customer_id)]),
    )

    def reported(page: dict[str, Any]) -> bool:
        return "pending" in page["unavailable"]

    page = await until(lambda: rewards(api, customer_id), reported, "pending unavailable")

    assert page["pending"] == [] and page["cashback"] == []
    # The rest of the page stands.
    assert GROCERIES_2PCT in {offer["campaign_id"] for offer in page["offers"]}


async def test_a_campaign_for_a_segment_is_offered_to_that_segment_only(api: Api) -> None:
    segment = f"vip-{uuid.uuid4().hex[:6]}"
    store = CashbackStore(api.pool)
    await store.load_campaigns(
        [
            campaign(
                "vip-3pct",
                rules={"currencies": ["USD"], "segments": [segment], "mcc_include": ["5411"]},
            ),
            campaign("everyone-3pct", rules={"currencies": ["USD"], "mcc_exclude": ["6011"]}),
        ]
    )
    member = await a_customer_with_money(api)
    other = await a_customer_with_money(api)
    await store.set_segment(member, segment)
    await store.set_segment(other, "standard")

    offered_member = (await rewards(api, member))["offers"]
    offered_other = (await rewards(api, other))["offers"]

    assert [o["campaign_id"] for o in offered_member] == ["everyone-3pct", "vip-3pct"]
    assert [o["campaign_id"] for o in offered_other] == ["everyone-3pct"]
    [vip] = [o for o in offered_member if o["campaign_id"] == "vip-3pct"]
    assert vip == {
        "campaign_id": "vip-3pct",
        "version": 1,
        "name": "Campaign vip-3pct",
        "description": "3% cashback on purchases in USD, at merchant categories (MCC) 5411, "
        "up to 15.00 USD per purchase",
        "basis_points": 300,
        "currencies": ["USD"],
        "cap_minor": {"USD": 1_500},
        "min_amount_minor": {},
        "mcc_include": ["5411"],
        "mcc_exclude": [],
        "stackable": False,
        "valid_to": None,
    }


async def test_a_campaign_needing_recent_purchases_is_offered_once_the_customer_made_them(
    api: Api,
) -> None:
    await sample_campaigns(api)
    active = await a_customer_with_money(api)
    dormant = await a_customer_with_money(api)
    store = CashbackStore(api.pool)
    for customer_id, days_ago in ((active, 3), (dormant, 8)):
        await store.add_card_transaction(
            transaction_id=f"earlier-{uuid.uuid4().hex[:8]}",
            card_id="card-test",
            customer_id=customer_id,
            amount_minor=700,
            currency=Currency.USD,
            occurred_at=datetime.now(UTC) - timedelta(days=days_ago),
            mcc="5999",
        )

    def offered(page: dict[str, Any]) -> set[str]:
        return {offer["campaign_id"] for offer in page["offers"]}

    # The sample's active-1pct wants a purchase in the last 7 days; premium-5pct
    # is for the premium segment.
    assert offered(await rewards(api, active)) == {GROCERIES_2PCT, "active-1pct"}
    assert offered(await rewards(api, dormant)) == {GROCERIES_2PCT}


async def test_a_campaign_not_yet_valid_or_already_ended_is_not_offered(api: Api) -> None:
    now = datetime.now(UTC)
    store = CashbackStore(api.pool)
    await store.load_campaigns(
        [
            campaign("running", valid_to=(now + timedelta(days=30)).isoformat()),
            campaign("later", valid_from=(now + timedelta(days=1)).isoformat()),
            campaign("over", valid_to=(now - timedelta(days=1)).isoformat()),
            # Ended early by a later version.
            campaign("withdrawn"),
            campaign("withdrawn", version=2, valid_to=(now - timedelta(hours=1)).isoformat()),
        ]
    )
    customer_id = await a_customer_with_money(api)

    [running] = (await rewards(api, customer_id))["offers"]

    assert running["campaign_id"] == "running"
    assert datetime.fromisoformat(running["valid_to"]) == now + timedelta(days=30)


async def test_an_unknown_customer_is_404_and_another_customers_key_is_refused(
    api: Api,
) -> None:
    customer_id = await a_customer_with_money(api)
    other = await a_customer_with_money(api)
    path = f"/v1/customers/{customer_id}/rewards"

    someone_else = await api.headers(SCOPE_CUSTOMERS_READ, customers=[other])
    refused = await api.http.get(path, headers=someone_else)
    assert refused.status_code == 403 and refused.json()["code"] == "customer_not_allowed"
    # A key bound to customers gets the same answer for one that does not exist.
    nobody = new_id("nobody")
    unknown = await api.http.get(f"/v1/customers/{nobody}/rewards", headers=someone_else)
    assert unknown.status_code == 403 and unknown.json()["code"] == "customer_not_allowed"

    program = await api.headers(SCOPE_CUSTOMERS_READ)
    missing = await api.http.get(f"/v1/customers/{nobody}/rewards", headers=program)
    assert missing.status_code == 404, missing.text
    reader = await api.headers(SCOPE_PROCESSES_READ)
    wrong_scope = await api.http.get(path, headers=reader)
    assert wrong_scope.status_code == 403 and wrong_scope.json()["code"] == "scope_missing"
    assert (await api.http.get(path, headers=program)).status_code == 200
