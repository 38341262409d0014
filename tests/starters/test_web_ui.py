"""The operator's Temporal Web UI, driven in headless Chromium on the demo stack.

What an operator relies on, proven in the real UI: a workflow's page shows its
input decoded through cardflow's codec server and the details the workflow
keeps current; the workflow list finds a customer's processes by cardflow's
search attributes; and a decision sent from the UI's update form, with the
JSON the README documents, reaches the workflow.

Chromium is Debian's (`make test` installs it); nothing is downloaded at run
time. `CARDFLOW_CHROMIUM` points at another build.
"""

from __future__ import annotations

import base64
import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Locator, Page, ViewportSize, async_playwright, expect
from playwright.async_api import Error as PlaywrightError
from pydantic import ValidationError
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from activities.providers.kyc import KycClient
from schemas.kyc import KycDecision
from schemas.onboarding import KycReview, OnboardingInput, OnboardingResult
from schemas.providers import KYC
from starters.onboarding import start_onboarding
from starters.scenario_steps import PASSPORT, new_customer, reach
from tests.starters.conftest import DemoStack
from workers.client import connect
from workers.settings import Settings
from workflows.onboarding import ONBOARDING_WORKFLOW, REVIEW_UPDATE

CHROMIUM_DEFAULT = "/usr/bin/chromium"
# The machine has no internet: without these Chromium keeps dialling out
# (updates, sync, QUIC probes) and floods the log with refused connections.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# The UI decodes through the codec server after it renders the raw payload;
# the machine is slow and shared, so every wait is generous.
UI_TIMEOUT_MS = 30_000
VIEWPORT = ViewportSize(width=1400, height=1400)
WORKFLOW_RESULT_TIMEOUT = timedelta(seconds=30)

# The built-in query the SDK answers with the workflow's current details.
WORKFLOW_METADATA_QUERY = "__temporal_workflow_metadata"
ENCRYPTED_ENCODING = b"binary/encrypted"
# How an undecoded payload shows in the UI: its metadata is base64 JSON.
ENCRYPTED_MARKERS = (
    ENCRYPTED_ENCODING.decode(),
    base64.b64encode(ENCRYPTED_ENCODING).decode().rstrip("="),
    "encryption-key-id",
)
# Our own customers' ids start with this, so the demo's are told apart.
CUSTOMER_TAG = "web-ui"
README = Path(__file__).resolve().parents[2] / "README.md"
README_JSON_BLOCK = re.compile(r"```json\n(.*?)\n```", re.DOTALL)

expect.set_options(timeout=UI_TIMEOUT_MS)


def chromium_path() -> str:
    path = os.environ.get("CARDFLOW_CHROMIUM") or CHROMIUM_DEFAULT
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"Debian's chromium is not at {path}: `make test` installs it "
            "(apt-get install chromium), or set CARDFLOW_CHROMIUM to a Chromium binary"
        )
    return path


def readme_kyc_review() -> str:
    """The JSON the README gives operators for an onboarding's `review` update.

    The first JSON block after the README's "Send an update" that is a valid
    KYC review: the onboarding's example comes first.
    """
    text = README.read_text()
    start = text.lower().find("send an update")
    assert start >= 0, "the README no longer says how to send an update from the Web UI"
    for block in README_JSON_BLOCK.findall(text, start):
        try:
            KycReview.model_validate_json(block)
        except ValidationError:
            continue
        return str(block)
    raise AssertionError("the README gives no JSON for the onboarding's review update")


@dataclass
class WebUi:
    """One browser page on the stack's Web UI, with the operator's moves."""

    page: Page
    namespace: str
    screenshots: Path

    async def open_workflow(self, workflow_id: str) -> None:
        await self.page.goto(
            f"/namespaces/{self.namespace}/workflows/{quote(workflow_id, safe='')}"
        )
        await expect(self.page.get_by_role("heading", name=workflow_id)).to_be_visible()

    async def search(self, query: str) -> None:
        """Type a raw visibility query into the workflow list's query box."""
        box = self.page.get_by_role("searchbox", name="Enter a query")
        if not await box.is_visible():
            await self.page.get_by_test_id("toggle-manual-query").click()
        await box.fill(query)
        await box.press("Enter")

    def workflow_cell(self, workflow_id: str) -> Locator:
        """The workflow list's Workflow ID cell of `workflow_id`."""
        table = self.page.get_by_role("table", name="Workflows")
        return table.get_by_role("cell", name=workflow_id, exact=True)

    @asynccontextmanager
    async def screenshot_on_failure(self, name: str) -> AsyncIterator[None]:
        """Re-raise a failed check with the path of a screenshot of the page."""
        try:
            yield
        except (AssertionError, PlaywrightError) as error:
            path = self.screenshots / f"{name}.png"
            await self.page.screenshot(path=path, full_page=True)
            raise AssertionError(f"{error}\nscreenshot of the Web UI: {path}") from error


@pytest.fixture(scope="module")
def settings(demo_stack: DemoStack) -> Settings:
    return demo_stack.stack.settings()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(settings: Settings) -> Client:
    return await connect(settings)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS)
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def ui(browser: Browser, settings: Settings, tmp_path: Path) -> AsyncIterator[WebUi]:
    context = await browser.new_context(base_url=settings.web_ui_url, viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield WebUi(await context.new_page(), settings.temporal_namespace, tmp_path)
    finally:
        await context.close()


async def demo_onboarding(client: Client) -> WorkflowHandle[Any, Any]:
    """An approved onboarding the demo ran, not one of this module's own."""
    query = f'WorkflowType="{ONBOARDING_WORKFLOW}" AND ProcessStatus="approved"'
    async for execution in client.list_workflows(query):
        if not execution.id.split("/", 1)[1].startswith(f"{CUSTOMER_TAG}-"):
            return client.get_workflow_handle(execution.id)
    raise AssertionError(f"the demo left no approved onboarding ({query})")


@pytest_asyncio.fixture(loop_scope="session")
async def onboarding_in_review(
    client: Client, settings: Settings
) -> WorkflowHandle[Any, OnboardingResult]:
    """A new customer whose KYC check the provider put on hold for an operator."""
    request = OnboardingInput(profile=new_customer(CUSTOMER_TAG), documents=[PASSPORT])
    handle = await start_onboarding(client, settings.task_queues, request)
    status = await reach(handle, "waiting for the KYC result")
    assert status.applicant_id is not None
    async with KycClient(f"{settings.providers_base_url}/{KYC}") as kyc:
        await kyc.simulate_decision(
            status.applicant_id,
            result=KycDecision.ON_HOLD,
            idempotency_key=f"web-ui-hold-{uuid.uuid4()}",
        )
    await reach(handle, "in operator review")
    return handle


async def test_a_workflow_page_shows_the_input_decoded_and_the_current_details(
    ui: WebUi, client: Client
) -> None:
    handle = await demo_onboarding(client)
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [stored] = started.input.payloads
    [request] = await client.data_converter.decode([stored], [OnboardingInput])
    email = request.profile.email
    # The server holds the personal data encrypted: only the codec can show it.
    assert stored.metadata["encoding"] == ENCRYPTED_ENCODING
    assert email.encode() not in stored.data
    metadata = await handle.query(WORKFLOW_METADATA_QUERY, result_type=WorkflowMetadata)
    assert metadata.current_details, "the onboarding set no current details"
    summary = await (await handle.describe()).static_summary()
    assert summary, "the onboarding was started without a summary"

    async with ui.screenshot_on_failure("decoded-input"):
        await ui.open_workflow(handle.id)
        input_panel = ui.page.get_by_role("textbox", name="Input")
        await expect(input_panel).to_contain_text(email)
        await expect(input_panel).to_contain_text(request.profile.customer_id)
        for marker in ENCRYPTED_MARKERS:
            await expect(input_panel).not_to_contain_text(marker)

    async with ui.screenshot_on_failure("current-details"):
        await ui.page.get_by_role("tab", name="User Metadata").click()
        current = ui.page.frame_locator("#user-metadata-current-details").locator("body")
        await expect(current).to_contain_text(metadata.current_details)
        shown_summary = ui.page.frame_locator("#user-metadata-summary").locator("body")
        await expect(shown_summary).to_contain_text(summary)


async def test_the_workflow_list_finds_a_customers_processes_by_search_attribute(
    ui: WebUi, client: Client, onboarding_in_review: WorkflowHandle[Any, OnboardingResult]
) -> None:
    demo = await demo_onboarding(client)
    demo_customer = demo.id.split("/", 1)[1]
    other = onboarding_in_review.id
    demo_workflows = [w.id async for w in client.list_workflows(f'CustomerId="{demo_customer}"')]
    assert demo.id in demo_workflows and len(demo_workflows) > 1
    await ui.page.goto(f"/namespaces/{ui.namespace}/workflows")

    async with ui.screenshot_on_failure("search-demo-customer"):
        await ui.search(f'CustomerId="{demo_customer}"')
        for workflow_id in demo_workflows:
            await expect(ui.workflow_cell(workflow_id)).to_be_visible()
        await expect(ui.workflow_cell(other)).to_have_count(0)

    async with ui.screenshot_on_failure("search-other-customer"):
        await ui.search(f'CustomerId="{other.split("/", 1)[1]}"')
        await expect(ui.workflow_cell(other)).to_be_visible()
        await expect(ui.workflow_cell(demo.id)).to_have_count(0)

    # The operator's saved query: onboardings waiting for a KYC review.
    async with ui.screenshot_on_failure("search-in-review"):
        await ui.search(
            f'WorkflowType="{ONBOARDING_WORKFLOW}" AND ProcessStatus="in operator review"'
        )
        await expect(ui.workflow_cell(other)).to_be_visible()
        await expect(ui.workflow_cell(demo.id)).to_have_count(0)


async def test_a_kyc_review_sent_from_the_update_form_approves_the_onboarding(
    ui: WebUi, onboarding_in_review: WorkflowHandle[Any, OnboardingResult]
) -> None:
    review = readme_kyc_review()
    decided = KycReview.model_validate_json(review)
    assert decided.decision == "approve", "the README's example review should approve"
    async with ui.screenshot_on_failure("update-form"):
        await ui.open_workflow(onboarding_in_review.id)
        await ui.page.get_by_role("button", name="More Actions").click()
        await ui.page.get_by_role("menuitem", name="Send an Update").click()
        dialog = ui.page.get_by_role("dialog", name="Send an Update")
        # The names offered come from the running workflow's own definitions.
        await dialog.get_by_role("button", name="Select an Update").click()
        await dialog.get_by_role("option", name=REVIEW_UPDATE, exact=True).click()
        data = dialog.get_by_role("textbox", name="Data")
        await data.fill(review)
        # The form takes the editor's JSON when the editor loses focus; a
        # click on Submit straight from the editor races that and sends nothing.
        await data.press("Tab")
        await dialog.get_by_role("button", name="Submit").click()
        await expect(dialog).to_be_hidden()

    result = await onboarding_in_review.result(rpc_timeout=WORKFLOW_RESULT_TIMEOUT)
    assert result.outcome == "approved"
    assert decided.operator in result.reason
    description = await onboarding_in_review.describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    # The UI sent the decision through the codec: the history holds it encrypted.
    history = await onboarding_in_review.fetch_history()
    [accepted] = [
        event.workflow_execution_update_accepted_event_attributes
        for event in history.events
        if event.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    [decision] = accepted.accepted_request.input.args.payloads
    assert decision.metadata["encoding"] == ENCRYPTED_ENCODING
    assert decided.reason.encode() not in decision.data
