"""What an operator finds and reads in the Web UI, on the stack the demo ran on.

Every process shows a static summary and details (encrypted in the history,
free of personal data) and carries the search attributes of its kind; every
saved query of the README's table runs against the server, and the ones this
module makes true find their process; the card's search-attributes patch keeps
cards started before it replaying.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory

from activities.events import CUSTOMERS_ENDPOINT_ID
from activities.providers.kyc import KycClient
from schemas.disputes import DisputeInput
from schemas.fx import FxConversionInput
from schemas.issuer import DisputeReason
from schemas.kyc import KycDecision
from schemas.money import Currency
from schemas.onboarding import OnboardingInput
from schemas.providers import KYC
from starters import simulate
from starters.dispute import open_dispute, wait_for_stage, wait_until_recorded
from starters.fx import quote
from starters.histories import RECORDING_KEYS_FILENAME
from starters.onboarding import start_onboarding
from starters.scenario_steps import PASSPORT, new_customer, reach
from starters.scenarios_cards import funded_virtual_card
from starters.topup import simulate_bank_transfer
from tests import polling
from tests.starters.conftest import DemoStack
from workers.build import guarded_replayer
from workers.client import connect
from workers.converter import build_data_converter
from workers.settings import Settings, parse_encryption_keys
from workflows import cards
from workflows.cards import card_workflow_id
from workflows.catalog import ALL_WORKFLOWS
from workflows.dispute import dispute_workflow_id
from workflows.dispute_steps import WAITING_FOR_EVIDENCE
from workflows.event_delivery import EventDelivery, event_delivery_workflow_id
from workflows.fx import fx_workflow_id
from workflows.onboarding import onboarding_workflow_id
from workflows.topup import topup_workflow_id

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HISTORIES = ROOT / "tests" / "histories"
# Visibility is eventually consistent: a query may lag the workflow this long.
VISIBILITY_WAIT_SECONDS = 10
WORKFLOW_METADATA_QUERY = "__temporal_workflow_metadata"
# Wakes sent between looks at whether the event delivery continued as new
# (it does past 2,000 history events, about eight a wake).
WAKES_PER_ROUND = 50
CONTINUE_SECONDS_MAX = 120
# 15,000.00 USD: over the default top-up maximum (10,000.00), so it waits for review.
OVER_LIMIT_MINOR = 1_500_000
# The example ids of the README's queries, replaced with this module's.
EXAMPLE_CUSTOMER = '"c-123"'
EXAMPLE_CARD = '"card_000001"'

# What each workflow type must carry once it has started its business steps.
REQUIRED_SEARCH_ATTRIBUTES: dict[str, set[str]] = {
    "Onboarding": {"CustomerId", "Provider", "ProcessStatus"},
    "CardIssue": {"CustomerId", "CardId", "Currency", "Provider", "ProcessStatus"},
    "Card": {"CustomerId", "CardId", "ProcessStatus", "Currency", "Provider"},
    "Topup": {"CustomerId", "AmountMinor", "Currency", "Provider", "ProcessStatus"},
    "FxConversion": {"CustomerId", "AmountMinor", "Currency", "Provider", "ProcessStatus"},
    "Dispute": {"CustomerId", "CardId", "AmountMinor", "Currency", "Provider", "ProcessStatus"},
    "Reconciliation": {"Provider", "AmountMinor", "ProcessStatus"},
    "ScheduledReconciliation": {"Provider", "ProcessStatus"},
    "Billing": {"CustomerId", "ProcessStatus"},
    "BillingRun": {"ProcessStatus"},
    "Cashback": {"CustomerId", "CardId", "AmountMinor", "Currency", "ProcessStatus"},
    "Ping": {"ProcessStatus"},
    "EventDelivery": {"ProcessStatus"},
    "Withdrawal": {"CustomerId", "AmountMinor", "Currency", "Provider", "ProcessStatus"},
    "AccountClosure": {"CustomerId", "ProcessStatus"},
    # The schedule's hourly run may come while these tests run.
    "ProgramFunding": {"ProcessStatus"},
    # A change of the program's controls names no customer.
    "ControlsChange": {"ProcessStatus"},
    "FraudScan": {"ProcessStatus"},
    "FraudCase": {"CustomerId", "ProcessStatus"},
    "Authentication": {"CustomerId", "CardId", "ProcessStatus"},
    "SettlementIngest": {"Provider", "ProcessStatus"},
}
# The processes `cardflow demo` runs (at the least).
DEMO_WORKFLOW_TYPES = {
    "Onboarding",
    "CardIssue",
    "Card",
    "Topup",
    "FxConversion",
    "Cashback",
    "Dispute",
    "Reconciliation",
    "Billing",
    "Withdrawal",
    "AccountClosure",
}


def saved_queries() -> dict[str, str]:
    """The README's saved-query table: operator question -> visibility query."""
    section = README.read_text().split("### Saved queries", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\| (.+?) \| `(.+)` \|", line.strip())
        if match:
            rows[match[1]] = match[2]
    return rows


@dataclass(frozen=True)
class Arranged:
    """Processes this module leaves waiting, each made to match a saved query."""

    customer_id: str
    card_id: str
    dispute: str
    exception_card: str
    over_limit_topup: str
    unmatched_topup: str
    onboarding_review: str
    fx_awaiting: str

    def waiting(self) -> list[str]:
        return [
            self.dispute,
            self.over_limit_topup,
            self.unmatched_topup,
            self.onboarding_review,
            self.fx_awaiting,
        ]


# The query of each README row this module makes true -> the process it must find.
def expected(arranged: Arranged) -> dict[str, str]:
    return {
        "Disputes waiting for the customer's evidence": arranged.dispute,
        "Top-ups in operator review": arranged.over_limit_topup,
        "Unmatched bank transfers waiting to be assigned": arranged.unmatched_topup,
        "Onboarding in manual KYC review": arranged.onboarding_review,
        "Cards with an open exception": arranged.exception_card,
        "FX quotes awaiting confirmation": arranged.fx_awaiting,
        "Everything waiting for an operator": arranged.onboarding_review,
        "Everything of one customer": arranged.dispute,
        "Everything about one card": arranged.exception_card,
        "Large top-ups (over 10,000 USD)": arranged.over_limit_topup,
    }


def concrete(query: str, arranged: Arranged) -> str:
    return query.replace(EXAMPLE_CUSTOMER, f'"{arranged.customer_id}"').replace(
        EXAMPLE_CARD, f'"{arranged.card_id}"'
    )


async def matching_ids(client: Client, query: str) -> set[str]:
    return {execution.id async for execution in client.list_workflows(query)}


async def until_found(client: Client, query: str, wanted: str, question: str) -> None:
    """Until `query` finds `wanted`: the visibility store indexes a change a
    moment after the workflow makes it."""

    async def found() -> set[str]:
        return await matching_ids(client, query)

    await polling.until(
        found,
        lambda ids: wanted in ids,
        f"{question!r}: {query} found {wanted}",
        VISIBILITY_WAIT_SECONDS,
    )


async def kyc_on_hold(settings: Settings, applicant_id: str) -> None:
    async with KycClient(f"{settings.providers_base_url}/{KYC}") as kyc:
        await kyc.simulate_decision(
            applicant_id, result=KycDecision.ON_HOLD, idempotency_key=f"hold-{uuid.uuid4()}"
        )


async def card_exception(client: Client, settings: Settings, card_id: str) -> None:
    """The issuer force-posts more than the wallet holds: an exception for an operator."""
    await simulate.force_post(settings, card_id, 1_000_000)
    card = client.get_workflow_handle(card_workflow_id(card_id))

    async def recorded() -> bool:
        state: Any = await card.query("status")
        return any(e.get("resolution") is None for e in state.get("exceptions", []))

    await polling.eventually(
        recorded, f"card {card_id} recorded an exception", VISIBILITY_WAIT_SECONDS
    )


@pytest.fixture(scope="module")
async def arranged(demo_stack: DemoStack) -> AsyncIterator[Arranged]:
    settings = demo_stack.stack.settings()
    queues = settings.task_queues
    client = await connect(settings)
    customer_id, _, card_id = await funded_virtual_card(client, settings, funds_minor=10_000)

    # A cleared purchase disputed without evidence: it waits for the evidence.
    authorization = await simulate.authorize(settings, card_id, 1_000)
    cleared = await simulate.clear(settings, authorization.id, final=True)
    await wait_until_recorded(client, cleared.id)
    await open_dispute(
        client,
        queues,
        DisputeInput(
            transaction_id=cleared.id, customer_id=customer_id, reason=DisputeReason.FRAUDULENT
        ),
    )
    await wait_for_stage(client, cleared.id, lambda view: view.stage == WAITING_FOR_EVIDENCE)
    await card_exception(client, settings, card_id)

    over_limit = await simulate_bank_transfer(settings, customer_id, OVER_LIMIT_MINOR, Currency.USD)
    unmatched = await simulate_bank_transfer(
        settings, f"nobody-{uuid.uuid4().hex[:8]}", 5_000, Currency.USD
    )

    onboarding = await start_onboarding(
        client, queues, OnboardingInput(profile=new_customer("review"), documents=[PASSPORT])
    )
    applicant = await reach(onboarding, "waiting for the KYC result")
    await kyc_on_hold(settings, applicant.applicant_id or "")
    await reach(onboarding, "in operator review")

    fx = FxConversionInput(
        request_id=f"operator-view-{uuid.uuid4().hex[:8]}",
        customer_id=customer_id,
        sell_currency=Currency.USD,
        buy_currency=Currency.EUR,
        sell_amount_minor=1_000,
    )
    await quote(client, queues, fx)

    made = Arranged(
        customer_id=customer_id,
        card_id=card_id,
        dispute=dispute_workflow_id(cleared.id),
        exception_card=card_workflow_id(card_id),
        over_limit_topup=topup_workflow_id("bank", over_limit.id),
        unmatched_topup=topup_workflow_id("bank", unmatched.id),
        onboarding_review=onboarding_workflow_id(applicant.customer_id),
        fx_awaiting=fx_workflow_id(fx.request_id),
    )
    try:
        yield made
    finally:
        # Nothing of theirs is in flight while they wait: ending them leaves
        # the shared stack as the demo left it for the other tests.
        for workflow_id in made.waiting():
            await client.get_workflow_handle(workflow_id).terminate(reason="test done")


async def continue_as_new(client: Client, workflow_id: str) -> None:
    """Wake a long-lived process until its history is long enough that it
    continues as new (as the customers' event delivery does after hours of
    idle polls)."""
    handle = client.get_workflow_handle(workflow_id)
    first_run = (await handle.describe()).run_id

    async def continued() -> bool:
        for _ in range(WAKES_PER_ROUND):
            await handle.signal(EventDelivery.wake)
        return (await handle.describe()).run_id != first_run

    await polling.eventually(continued, f"{workflow_id} continued as new", CONTINUE_SECONDS_MAX)


async def test_every_process_the_demo_ran_shows_a_summary_details_and_its_search_attributes(
    demo_stack: DemoStack,
) -> None:
    client = await connect(demo_stack.stack.settings())
    await continue_as_new(client, event_delivery_workflow_id(CUSTOMERS_ENDPOINT_ID))
    checked_before = datetime.now(UTC)
    seen: set[str] = set()
    first_runs_checked: set[str] = set()
    continued: set[str] = set()
    async for execution in client.list_workflows(""):
        if execution.start_time > checked_before:
            continue  # started by another test meanwhile
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        described = await handle.describe()
        kind = described.workflow_type
        first_run = described.raw_description.workflow_execution_info.first_run_id
        if first_run and first_run != execution.run_id:
            # A run continued as new: the SDK's continue-as-new carries no
            # static summary or details, so the Web UI shows the process's
            # current details (its stage and figures) and its first run,
            # listed too, holds the summary.
            continued.add(execution.id)
            if described.status is WorkflowExecutionStatus.RUNNING:
                metadata = await handle.query(WORKFLOW_METADATA_QUERY, result_type=WorkflowMetadata)
                assert metadata.current_details, f"{execution.id} ({kind}): no current details"
            continue
        first_runs_checked.add(execution.id)
        summary = await described.static_summary()
        details = await described.static_details()
        assert summary, f"{execution.id} ({kind}) has no static summary"
        assert details and "Waits for:" in details, f"{execution.id} ({kind}): {details!r}"
        # The demo's customers are all "Ada Lovelace" with an example.com e-mail.
        for text in (summary, details):
            assert "Lovelace" not in text and "@" not in text, f"{execution.id}: {text!r}"
        metadata = described.raw_description.execution_config.user_metadata
        assert metadata.summary.metadata["encoding"] == b"binary/encrypted"
        assert metadata.details.metadata["encoding"] == b"binary/encrypted"
        carried = {pair.key.name for pair in described.typed_search_attributes}
        missing = REQUIRED_SEARCH_ATTRIBUTES[kind] - carried
        assert not missing, f"{execution.id} ({kind}) lacks {sorted(missing)}"
        seen.add(kind)
    assert DEMO_WORKFLOW_TYPES <= seen, f"the demo ran only {sorted(seen)}"
    assert event_delivery_workflow_id(CUSTOMERS_ENDPOINT_ID) in continued
    assert continued <= first_runs_checked, continued - first_runs_checked


async def test_every_saved_query_in_the_readme_runs_and_finds_what_waits(
    demo_stack: DemoStack, arranged: Arranged
) -> None:
    client = await connect(demo_stack.stack.settings())
    queries = saved_queries()
    finds = expected(arranged)
    assert set(finds) <= set(queries), f"README rows missing: {sorted(set(finds) - set(queries))}"
    for question, query in queries.items():
        # Every query is valid visibility syntax (the server refuses others).
        await matching_ids(client, concrete(query, arranged))
        wanted = finds.get(question)
        if wanted is None:
            continue
        await until_found(client, concrete(query, arranged), wanted, question)


async def test_the_unmatched_transfer_query_leaves_out_transfers_already_matched(
    demo_stack: DemoStack, arranged: Arranged
) -> None:
    client = await connect(demo_stack.stack.settings())
    query = saved_queries()["Unmatched bank transfers waiting to be assigned"]
    found = await matching_ids(client, query)
    assert arranged.unmatched_topup in found
    assert arranged.over_limit_topup not in found


def replay_old_card(monkeypatch: pytest.MonkeyPatch, *, guarded: bool) -> Any:
    if not guarded:
        patched = workflow.patched

        def always(patch_id: str) -> bool:
            return patch_id == cards.CARD_SEARCH_ATTRIBUTES_PATCH or patched(patch_id)

        monkeypatch.setattr(workflow, "patched", always)
    keys = parse_encryption_keys((HISTORIES / RECORDING_KEYS_FILENAME).read_text().strip())
    replayer = guarded_replayer(list(ALL_WORKFLOWS), build_data_converter(keys))
    document = json.loads((HISTORIES / "unpatched-card-purchase.json").read_text())
    history = WorkflowHistory.from_json(document["workflow_id"], document["history"])
    return replayer.replay_workflow(history, raise_on_replay_failure=False)


async def test_a_card_started_before_the_search_attributes_patch_replays_only_thanks_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guarded = await replay_old_card(monkeypatch, guarded=True)
    assert guarded.replay_failure is None
    unguarded = await replay_old_card(monkeypatch, guarded=False)
    assert unguarded.replay_failure is not None
    assert "Nondeterminism" in str(unguarded.replay_failure)
