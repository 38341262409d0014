"""What an app shows a customer: `GET /v1/customers/{customer_id}` (scope
`customers:read`), read from where each fact lives, never from a workflow's
state:

- the customer's KYC standing and tier, and preferred channels (the
  customers table);
- each wallet's posted, pending and available balance, and the debt owed
  in each currency (the ledger's accounts owned by the customer, summed over
  their balance rows in one query);
- each card's public view: its kind, and its state and currency as its
  process shows them to operators (the ProcessStatus and Currency search
  attributes of the Card workflows with this CustomerId); a card whose
  process has not started yet reads `issuing`;
- the customer's USDT-TRC20 deposit address (the same one every time, from
  the Tron provider, with a budget of its own).

`PUT /v1/customers/{customer_id}/kyc-tier` (scope `operations`, program-wide)
moves a customer to another KYC tier, recording who and why; the tier's
limits apply from the next top-up, withdrawal or card decision on.

A source that does not answer in time does not fail the read: the fields it
gives are empty and `unavailable` names it and why.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal

import asyncpg
from fastapi import Request
from pydantic import BaseModel, Field
from temporalio.client import Client
from temporalio.service import RPCError

from activities.api_keys import SCOPE_CUSTOMERS_READ, SCOPE_OPERATIONS
from activities.customers import CustomerNotFound, CustomerStore
from activities.providers.tron import TronClient
from schemas.customers import KycTier, TierChange
from schemas.money import Currency
from schemas.refusals import Refusal
from schemas.search import CURRENCY, CUSTOMER_ID, PROCESS_STATUS
from starters.gateway.errors import ApiError, ErrorBody
from starters.gateway.state import DatabasePool, Providers, TemporalClient
from starters.gateway.v1.ownership import CustomerIdPath, OwnCustomerId
from starters.gateway.v1.shared import READ, process_router, route
from workflows.cards import CARD_WORKFLOW, card_workflow_id

router = process_router()

# Each source's own budget: a slow one is reported, not waited for.
CARDS_SECONDS_MAX = 2.0
DEPOSIT_ADDRESS_SECONDS_MAX = 2.0
CARD_ISSUING = "issuing"

_ACCOUNTS_SQL = """
SELECT a.code, a.currency, a.kind,
       coalesce(sum(b.debits_posted), 0) AS debits_posted,
       coalesce(sum(b.credits_posted), 0) AS credits_posted,
       coalesce(sum(b.debits_pending), 0) AS debits_pending,
       coalesce(sum(b.credits_pending), 0) AS credits_pending
FROM ledger_accounts a
LEFT JOIN ledger_balances b ON b.account_id = a.id
WHERE a.owner_id = $1 AND a.kind IN ('wallet', 'receivable')
GROUP BY a.id
ORDER BY a.code
"""


class WalletView(BaseModel):
    currency: Currency
    posted_minor: int = Field(description="Credits less debits posted")
    pending_minor: int = Field(
        description="Held by open authorizations (debits pending), as a positive amount"
    )
    available_minor: int = Field(description="What can be spent now: posted less pending")


class DebtView(BaseModel):
    currency: Currency
    outstanding_minor: int = Field(
        description="Owed to the program (a lost dispute's shortfall), collected from top-ups"
    )


class CustomerCardView(BaseModel):
    card_id: str
    kind: Literal["virtual", "physical"]
    state: str = Field(
        description="open, paused, closed, pending_fulfillment, pending_activation, "
        "exception (money waits for an operator), replaced, or issuing"
    )
    currency: Currency | None
    issued_at: datetime


class CustomerView(BaseModel):
    customer_id: str
    kyc_status: Literal["pending", "approved", "rejected", "expired"]
    kyc_tier: KycTier = Field(
        description="The verification level whose limits apply (top-ups, withdrawals, card spend)"
    )
    preferred_channels: list[str]
    created_at: datetime
    wallets: list[WalletView]
    debts: list[DebtView]
    cards: list[CustomerCardView]
    usdt_deposit_address: str | None
    unavailable: dict[str, str] = Field(
        default_factory=dict,
        description="Sources that did not answer in time, by the field they give, and why",
    )


async def customer_accounts(
    pool: asyncpg.Pool, customer_id: str
) -> tuple[list[WalletView], list[DebtView]]:
    wallets: list[WalletView] = []
    debts: list[DebtView] = []
    for row in await pool.fetch(_ACCOUNTS_SQL, customer_id):
        posted = int(row["credits_posted"]) - int(row["debits_posted"])
        if row["kind"] == "wallet":
            pending = int(row["debits_pending"])
            wallets.append(
                WalletView(
                    currency=row["currency"],
                    posted_minor=posted,
                    pending_minor=pending,
                    available_minor=posted - pending,
                )
            )
        elif -posted > 0:
            # A receivable is debited with what is owed: its balance runs negative.
            debts.append(DebtView(currency=row["currency"], outstanding_minor=-posted))
    return wallets, debts


async def issued_cards(pool: asyncpg.Pool, customer_id: str) -> list[asyncpg.Record]:
    """card_id, kind and created_at of each card issued to the customer, oldest first."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT card_id, kind, created_at FROM cards WHERE customer_id = $1 ORDER BY created_at",
        customer_id,
    )
    return rows


async def known_customer(pool: asyncpg.Pool, customer_id: str) -> asyncpg.Record:
    """The customer's KYC status, channels and creation; 404 when unknown."""
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT kyc_status, kyc_tier, preferred_channels, created_at FROM customers"
        " WHERE customer_id = $1",
        customer_id,
    )
    if row is None:
        raise ApiError(Refusal.NOT_FOUND, f"no customer {customer_id}")
    return row


async def _cards(pool: asyncpg.Pool, client: Client, customer_id: str) -> list[CustomerCardView]:
    issued = await issued_cards(pool, customer_id)
    shown: dict[str, tuple[str, Currency | None]] = {}
    # The id matched CUSTOMER_ID_PATTERN (letters, digits, _ . -): no quote in it.
    query = f"WorkflowType = '{CARD_WORKFLOW}' AND {CUSTOMER_ID.name} = '{customer_id}'"
    async for execution in client.list_workflows(query):
        attributes = execution.typed_search_attributes
        currency = attributes.get(CURRENCY)
        shown[execution.id] = (
            attributes.get(PROCESS_STATUS) or CARD_ISSUING,
            Currency(currency) if currency else None,
        )
    cards = []
    for row in issued:
        state, currency = shown.get(card_workflow_id(row["card_id"]), (CARD_ISSUING, None))
        cards.append(
            CustomerCardView(
                card_id=row["card_id"],
                kind=row["kind"],
                state=state,
                currency=currency,
                issued_at=row["created_at"],
            )
        )
    return cards


async def _deposit_address(tron: TronClient, customer_id: str) -> str:
    return (await tron.customer_address(customer_id)).address


@route(
    router,
    READ,
    "/customers/{customer_id}",
    "A customer: KYC, wallets (posted, pending, available), debt, cards, deposit address",
    scope=SCOPE_CUSTOMERS_READ,
    responses={404: {"model": ErrorBody}},
)
async def customer_route(
    customer_id: OwnCustomerId,
    pool: DatabasePool,
    client: TemporalClient,
    providers: Providers,
) -> CustomerView:
    row = await known_customer(pool, customer_id)
    unavailable: dict[str, str] = {}
    cards_read = asyncio.create_task(
        asyncio.wait_for(_cards(pool, client, customer_id), CARDS_SECONDS_MAX)
    )
    address_read = asyncio.create_task(
        asyncio.wait_for(_deposit_address(providers.tron, customer_id), DEPOSIT_ADDRESS_SECONDS_MAX)
    )
    try:
        wallets, debts = await customer_accounts(pool, customer_id)
        cards: list[CustomerCardView] = []
        address: str | None = None
        try:
            cards = await cards_read
        except Exception as error:  # noqa: BLE001 - reported in the answer, not a failure
            unavailable["cards"] = unavailable_reason(error)
        try:
            address = await address_read
        except Exception as error:  # noqa: BLE001 - reported in the answer, not a failure
            unavailable["usdt_deposit_address"] = unavailable_reason(error)
    finally:
        for task in (cards_read, address_read):
            task.cancel()
    return CustomerView(
        customer_id=customer_id,
        kyc_status=row["kyc_status"],
        kyc_tier=row["kyc_tier"],
        preferred_channels=list(row["preferred_channels"]),
        created_at=row["created_at"],
        wallets=wallets,
        debts=debts,
        cards=cards,
        usdt_deposit_address=address,
        unavailable=unavailable,
    )


class TierView(BaseModel):
    customer_id: str
    kyc_tier: KycTier
    previous_tier: KycTier
    changed: bool = Field(description="False when the customer was in this tier already")


@route(
    router,
    READ,
    "/customers/{customer_id}/kyc-tier",
    "An operator moves a customer to another KYC tier (its limits apply at once)",
    method="PUT",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
    responses={404: {"model": ErrorBody}},
)
async def tier_route(
    customer_id: CustomerIdPath, body: TierChange, request: Request, pool: DatabasePool
) -> TierView:
    """The same tier again changes and records nothing (a PUT)."""
    try:
        previous = await CustomerStore(pool).set_tier(
            customer_id, body, changed_by=f"api-key:{request.state.api_key_id}"
        )
    except CustomerNotFound:
        raise ApiError(Refusal.NOT_FOUND, f"no customer {customer_id}") from None
    return TierView(
        customer_id=customer_id,
        kyc_tier=body.tier,
        previous_tier=previous,
        changed=previous is not body.tier,
    )


def unavailable_reason(error: BaseException) -> str:
    """Why a source gave nothing, without anything it said: out of time, or
    the kind of its failure (a provider's error type, Temporal's status)."""
    if isinstance(error, TimeoutError):
        return "did not answer within its budget"
    if isinstance(error, RPCError):
        return f"failed (temporal {error.status.name.lower()})"
    kind = getattr(error, "type", None) or type(error).__name__
    return f"failed ({kind})"
