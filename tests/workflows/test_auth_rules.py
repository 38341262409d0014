"""Authorization rules (schemas/auth_rules.py) in the card's decisions: an
active rule declines and names itself, a shadow rule changes no answer but
is recorded, a velocity rule counts the card's approvals in its window, and
the program's rules loaded through the API reach every card with their
version, the program's other controls kept."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.api_keys import SCOPE_OPERATIONS
from activities.ledger.verify import verify
from schemas.card_controls import ControlsChangeResult
from schemas.cards import AuthorizationAnswer
from schemas.cards import Merchant as CardMerchant
from schemas.issuer import Merchant
from schemas.money import Currency
from tests.conftest import Platform
from tests.customers import authorize, open_card, wallet_becomes
from tests.metrics import prometheus_runtime, scrape
from tests.workflows.test_card_disorder import question_to
from workers.monitoring import MADE_AT_FIRST_EVENT
from workflows.card_authorizations import count_rules
from workflows.cards import AUTHORIZE_UPDATE

FUNDS = {Currency.USD: 500_000}
CASINO = CardMerchant(name="Lucky Star", mcc="7995", country="GB")
GROCER = CardMerchant(name="Corner Shop", mcc="5411", country="GB")
RULES = [
    {
        "id": "big-spend",
        "description": "purchases of 50.00 or more",
        "mode": "shadow",
        "conditions": [{"kind": "amount", "at_least_minor": 5_000}],
    },
    {
        "id": "no-gambling",
        "mode": "active",
        "conditions": [{"kind": "mcc", "any_of": ["group:gambling"]}],
    },
]


async def ask(
    handle: WorkflowHandle[Any, Any], amount: int, merchant: CardMerchant
) -> AuthorizationAnswer:
    """The card's own answer to a purchase, as the gateway asks it."""
    question = question_to(handle, f"req-{uuid.uuid4().hex[:10]}").model_copy(
        update={"amount_minor": amount, "merchant_amount_minor": amount, "merchant": merchant}
    )
    answer: AuthorizationAnswer = await handle.execute_update(
        AUTHORIZE_UPDATE, question, result_type=AuthorizationAnswer
    )
    return answer


async def put_controls(platform: Platform, card_id: str, controls: dict[str, Any]) -> None:
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, headers=platform.api_headers, timeout=60
    ) as http:
        answer = await http.put(
            f"/v1/cards/{card_id}/controls",
            json=controls,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
    assert answer.status_code == 200, answer.text


async def test_an_active_rule_declines_naming_itself_and_a_shadow_rule_changes_no_answer(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform, FUNDS)
    await put_controls(platform, card_id, {"rules": RULES})
    declined = await ask(handle, 1_000, CASINO)
    assert (declined.decision, declined.reason, declined.rule_id, declined.rules_version) == (
        "decline",
        "declined_by_rule",
        "no-gambling",
        "card",
    )
    shadowed = await ask(handle, 6_000, GROCER)
    assert (shadowed.decision, shadowed.approved_amount_minor, shadowed.shadow_rules) == (
        "approve",
        6_000,
        ["big-spend"],
    )
    quiet = await ask(handle, 4_999, GROCER)
    assert (quiet.decision, quiet.shadow_rules) == ("approve", [])
    # Through the issuer, the decline is the card's own reason.
    through = await authorize(
        platform, card_id, 1_000, merchant=Merchant(name="Lucky Star", mcc="7995", country="GB")
    )
    assert through.decision_reason == "declined_by_rule"
    await wallet_becomes(platform, customer_id, posted=500_000, pending=10_999)
    assert await verify(platform.stack.pool) == []


async def test_a_velocity_rule_counts_the_cards_approvals_in_its_window(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform, FUNDS)
    velocity = {
        "id": "three-an-hour",
        "mode": "active",
        "conditions": [{"kind": "velocity", "window_seconds": 3_600, "count_at_least": 3}],
    }
    await put_controls(platform, card_id, {"rules": [velocity]})
    answers = [await ask(handle, 1_000, GROCER) for _ in range(4)]
    assert [a.reason for a in answers] == [
        "approved",
        "approved",
        "declined_by_rule",
        # A declined purchase is no approval: still two in the window.
        "declined_by_rule",
    ]
    await wallet_becomes(platform, customer_id, posted=500_000, pending=2_000)


async def test_program_rules_loaded_through_the_api_reach_every_card_keeping_other_controls(
    platform: Platform,
) -> None:
    _, card_id, handle = await open_card(platform, FUNDS)
    operator = await platform.key_headers(SCOPE_OPERATIONS)

    async def started(path: str, body: dict[str, Any]) -> ControlsChangeResult:
        async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=60) as http:
            answer = await http.post(
                path, json=body, headers={**operator, "Idempotency-Key": body["request_id"]}
            )
        assert answer.status_code == 202, answer.text
        change = platform.stack.client.get_workflow_handle(
            answer.json()["workflow_id"], result_type=ControlsChangeResult
        )
        result: ControlsChangeResult = await change.result()
        return result

    blocked = await started(
        "/v1/card-controls",
        {
            "request_id": f"ctl-{uuid.uuid4().hex[:8]}",
            "controls": {"country_block": ["FR"]},
            "reason": "sanctions policy",
        },
    )
    loaded = await started(
        "/v1/rules",
        {"request_id": f"rules-{uuid.uuid4().hex[:8]}", "rules": RULES, "reason": "launch"},
    )
    assert loaded.version == blocked.version + 1 and loaded.cards_sent >= 1
    declined = await ask(handle, 1_000, CASINO)
    assert (declined.rule_id, declined.rules_version) == (
        "no-gambling",
        f"program v{loaded.version}",
    )
    # The rules changed alone: the program's country block still holds.
    france = await ask(handle, 1_000, GROCER.model_copy(update={"country": "FR"}))
    assert france.reason == "country_not_allowed"
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=60) as http:
        in_force = (await http.get("/v1/rules", headers=operator)).json()
    assert in_force["version"] == loaded.version
    assert [rule["id"] for rule in in_force["rules"]] == ["big-spend", "no-gambling"]


@workflow.defn(name="CountsRules", sandboxed=False)
class CountsRules:
    """What a card records as it decides: two shadow rules would have declined,
    an active one declined."""

    @workflow.run
    async def run(self) -> None:
        count_rules(["watch", "big-spend"], "no-gambling")
        count_rules(["watch"], None)


async def test_the_rules_counters_are_exported_under_their_names(platform: Platform) -> None:
    names = {"cardflow_rule_declines_total", "cardflow_rule_shadow_declines_total"}
    assert names <= MADE_AT_FIRST_EVENT
    runtime, port = prometheus_runtime()
    client = await Client.connect(
        platform.stack.client.service_client.config.target_host,
        namespace=platform.stack.client.namespace,
        runtime=runtime,
        data_converter=platform.stack.client.config()["data_converter"],
    )
    queue = f"counts-rules-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[CountsRules]):
        await client.execute_workflow(CountsRules.run, id=f"counts/{queue}", task_queue=queue)
    found = {
        (sample.name, sample.labels.get("rule")): sample.value
        for sample in await scrape(port)
        if sample.name in names
    }
    assert found == {
        ("cardflow_rule_shadow_declines_total", "watch"): 2,
        ("cardflow_rule_shadow_declines_total", "big-spend"): 1,
        ("cardflow_rule_declines_total", "no-gambling"): 1,
    }
