"""The one way tests make a customer with money and a card.

A customer is made as onboarding leaves one: the profile saved, KYC approved
(unless a test says otherwise), a wallet open in each currency the test
names, opened with the spec onboarding opens it with; each wallet is then
funded from the bank through the ledger, under the same rules a top-up's
credit meets. A card is issued by the real card-issuing process through the
issuer simulator, or, for a test that asks a card directly, started as a card
entity of its own. Purchases are asked of the issuer simulator, as a merchant
would, and the wallet's balance is read from the ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date
from typing import Any, NamedTuple

import httpx
from temporalio.client import WorkflowHandle, WorkflowQueryFailedError

from activities.customers import CustomerStore
from activities.ledger import Ledger
from activities.providers.issuer import IssuerClient
from schemas import accounts
from schemas.cards import (
    CardInput,
    CardIssueInput,
    CardIssuePolicy,
    CardIssueResult,
    CardPolicy,
    SpendingLimits,
)
from schemas.customers import CustomerProfile, KycStatus
from schemas.issuer import Address, Authorization, CardState, Merchant
from schemas.ledger import AccountSpec, Balance, TransferRequest
from schemas.money import Currency
from tests import polling
from tests.conftest import Platform, RunningStack
from tests.replays import NONDETERMINISM, nondeterminism_report
from workers.secrets import telegram_bot_token
from workflows.card_issue import CARD_ISSUE_WORKFLOW, card_issue_workflow_id
from workflows.cards import CARD_WORKFLOW, LIMITS_UPDATE, card_workflow_id

# What a customer holds when a test does not say: 100.00 USD.
FUNDS: Mapping[Currency, int] = {Currency.USD: 10_000}
# The wallets onboarding opens (OnboardingPolicy's currencies), nothing in them yet.
EMPTY_WALLETS: Mapping[Currency, int] = {Currency.USD: 0, Currency.EUR: 0}

HOME = Address(line1="1 Analytical Way", city="London", postal_code="N1 9GU", country="GB")
# The issuing fees a test of card issuing charges; FREE charges none.
FEES = CardIssuePolicy(issuance_fee_virtual_minor=100, issuance_fee_physical_minor=500)
FREE = CardIssuePolicy(issuance_fee_virtual_minor=0, issuance_fee_physical_minor=0)

SHOP = Merchant(name="Corner Shop", mcc="5411", country="GB")
CASINO = Merchant(name="Lucky Star", mcc="7995", country="GB")

Where = Platform | RunningStack


def _stack(where: Where) -> RunningStack:
    return where.stack if isinstance(where, Platform) else where


def new_id(prefix: str = "c") -> str:
    """A customer id no other test uses; customers are listed in id order, so a
    test that needs an order chooses the prefixes."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def profile(customer_id: str | None = None, **changes: Any) -> CustomerProfile:
    """Ada Lovelace's profile under `customer_id` (a new id unless given),
    with `changes` made to it."""
    customer_id = customer_id or new_id()
    fields: dict[str, Any] = {
        "customer_id": customer_id,
        "first_name": "Ada",
        "last_name": "Lovelace",
        "date_of_birth": date(1990, 12, 10),
        "country": "GBR",
        "email": f"{customer_id}@example.com",
    }
    return CustomerProfile(**(fields | changes))


def wallet_spec(customer_id: str, currency: Currency) -> AccountSpec:
    """A customer's wallet as onboarding opens it: it may never go below zero."""
    return AccountSpec(
        code=accounts.wallet(customer_id, currency),
        currency=currency,
        kind="wallet",
        owner_id=customer_id,
        debits_must_not_exceed_credits=True,
    )


def funding_key(customer_id: str, currency: Currency) -> str:
    """The ledger key of the bank transfer `fund` credits a wallet with."""
    return f"fund-{customer_id}-{currency.value}"


async def customer(
    where: Where,
    funds: Mapping[Currency, int] = FUNDS,
    *,
    approved: bool = True,
    prefix: str = "c",
) -> str:
    """A new customer's id: the profile saved, KYC approved unless not
    `approved`, a wallet open in each currency of `funds`, each funded with its
    amount (0 leaves it empty)."""
    stack = _stack(where)
    customer_id = new_id(prefix)
    store = CustomerStore(stack.pool)
    await store.save(profile(customer_id))
    if approved:
        await store.set_kyc_status(customer_id, KycStatus.APPROVED)
    ledger = Ledger(stack.pool)
    for currency, amount_minor in funds.items():
        await ledger.open_account(wallet_spec(customer_id, currency))
        if amount_minor:
            await fund(stack, customer_id, currency, amount_minor)
    return customer_id


async def fund(where: Where, customer_id: str, currency: Currency, amount_minor: int) -> None:
    """Credit the customer's open wallet `amount_minor` from the bank, once
    (the transfer's key is the customer's and the currency's)."""
    ledger = Ledger(_stack(where).pool)
    await ledger.open_account(accounts.system_account(accounts.bank_inbound(currency)))
    outcome = await ledger.transfer(
        TransferRequest(
            key=funding_key(customer_id, currency),
            debit=accounts.bank_inbound(currency),
            credit=accounts.wallet(customer_id, currency),
            amount_minor=amount_minor,
            currency=currency,
        )
    )
    assert outcome.accepted, outcome


async def wallet(where: Where, customer_id: str, currency: Currency = Currency.USD) -> Balance:
    """The customer's wallet in `currency`, as the ledger has it now."""
    return await Ledger(_stack(where).pool).balance(accounts.wallet(customer_id, currency))


async def wallet_becomes(where: Where, customer_id: str, posted: int, pending: int) -> Balance:
    """The customer's USD wallet once its posted balance and pending debits are
    these; fails with the wallet as it last was if they never are."""

    async def check() -> bool:
        balance = await wallet(where, customer_id)
        return (balance.posted, balance.debits_pending) == (posted, pending)

    try:
        await polling.eventually(check, f"wallet posted {posted}, pending {pending}")
    except AssertionError:
        raise AssertionError(f"wallet is {await wallet(where, customer_id)}") from None
    return await wallet(where, customer_id)


# ----- cards --------------------------------------------------------------------


async def issue_card(
    where: Where,
    customer_id: str,
    kind: str = "virtual",
    *,
    address: Address = HOME,
    fees: CardIssuePolicy = FEES,
    policy: CardPolicy | None = None,
) -> WorkflowHandle[Any, CardIssueResult]:
    """The card-issuing process for the customer's new USD card, started."""
    stack = _stack(where)
    queues = stack.queues
    request_id = f"r-{uuid.uuid4().hex[:10]}"
    return await stack.client.start_workflow(
        CARD_ISSUE_WORKFLOW,
        CardIssueInput(
            request_id=request_id,
            customer_id=customer_id,
            kind=kind,  # type: ignore[arg-type]
            address=address,
            policy=fees,
            card_policy=policy or CardPolicy(),
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
            workflows_task_queue=queues.workflows,
        ),
        id=card_issue_workflow_id(request_id),
        task_queue=queues.workflows,
        result_type=CardIssueResult,
    )


class OpenCard(NamedTuple):
    customer_id: str
    card_id: str
    handle: WorkflowHandle[Any, Any]


async def open_card(
    platform: Platform,
    funds: Mapping[Currency, int] = FUNDS,
    *,
    policy: CardPolicy | None = None,
    limits: SpendingLimits | None = None,
) -> OpenCard:
    """A new customer (as `customer` makes one, with `funds`) holding an open
    virtual USD card, issued without a fee; its limits set by the card's own
    update when `limits` are given."""
    customer_id = await customer(platform, funds)
    issued = await (await issue_card(platform, customer_id, fees=FREE, policy=policy)).result()
    assert issued.card_id is not None, issued
    handle = platform.stack.client.get_workflow_handle(card_workflow_id(issued.card_id))
    if limits is not None:
        await handle.execute_update(LIMITS_UPDATE, limits)
    return OpenCard(customer_id, issued.card_id, handle)


async def card_of_its_own(
    where: Where, customer_id: str, *, card_id: str | None = None, **fields: Any
) -> WorkflowHandle[Any, Any]:
    """A card entity started directly, without the issuing process (so with no
    card at the issuer unless `card_id` names one): open, its other state
    fields as `fields` say."""
    stack = _stack(where)
    queues = stack.queues
    card_id = card_id or f"card_own_{uuid.uuid4().hex[:10]}"
    fields.setdefault("state", CardState.OPEN)
    return await stack.client.start_workflow(
        CARD_WORKFLOW,
        CardInput(
            card_id=card_id,
            customer_id=customer_id,
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
            workflows_task_queue=queues.workflows,
            **fields,
        ),
        id=card_workflow_id(card_id),
        task_queue=queues.workflows,
    )


async def card_state(handle: WorkflowHandle[Any, Any]) -> CardInput:
    """The card entity's state, as its status query answers it. A query that
    meets a nondeterminism error (the worker replayed the card's history to
    answer it) fails the test with the histories that do not replay."""
    try:
        state: CardInput = await handle.query("status", result_type=CardInput)
    except WorkflowQueryFailedError as error:
        if NONDETERMINISM not in str(error):
            raise
        # The SDK's handle keeps its client (and so the data converter) to itself.
        report = await nondeterminism_report(handle._client, handle.id, error)
        raise AssertionError(report) from error
    return state


# ----- purchases at the issuer ------------------------------------------------------


def issuer(platform: Platform) -> IssuerClient:
    """A client of the issuer simulator, acting as a merchant or the network."""
    return IssuerClient(platform.sim.provider_url("issuer"))


async def authorize(
    platform: Platform,
    card_id: str,
    amount: int,
    *,
    merchant: Merchant = SHOP,
    currency: Currency = Currency.USD,
    partial: bool = False,
) -> Authorization:
    """A merchant's authorization of `amount` on the card, as the issuer decided it."""
    async with issuer(platform) as client:
        return await client.simulate_authorization(
            card_id=card_id,
            amount_minor=amount,
            currency=currency,
            merchant=merchant,
            partial_approval_capable=partial,
            idempotency_key=f"auth-{uuid.uuid4().hex}",
        )


# ----- Telegram ------------------------------------------------------------------------


def bot_id(platform: Platform) -> int:
    """The id of the customers' bot the platform's gateway and workers know."""
    return int(telegram_bot_token(platform.settings).split(":")[0])


async def telegram_said(platform: Platform, chat_id: int | str) -> list[str]:
    """The texts the customers' bot sent to the chat, oldest first (the
    Telegram simulator's record)."""
    async with httpx.AsyncClient(base_url=platform.sim.provider_url("telegram")) as telegram:
        answer = await telegram.get(f"/simulate/bots/{bot_id(platform)}/chats/{chat_id}/messages")
    assert answer.status_code == 200, answer.text
    return [str(message.get("text") or message.get("caption")) for message in answer.json()["data"]]


async def upload_at(url: str, person: str) -> httpx.Response:
    """The person opens the KYC provider's upload page they were sent and
    uploads a passport's photo."""
    async with httpx.AsyncClient(timeout=10) as browser:
        page = await browser.get(url)
        assert page.status_code == 200, page.text
        assert f"Verify your identity, {person}" in page.text
        return await browser.post(
            url,
            data={"type": "passport", "country": "DEU"},
            files={"file": ("passport.jpg", b"\xff\xd8\xff a photo", "image/jpeg")},
        )
