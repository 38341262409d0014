"""`GET /v1/customers/{customer_id}/overview` (scope `customers:read`): an
app's home screen in one call, gathered in parallel from every source, each
with its own time budget:

| section | source | budget |
|---|---|---|
| balances | the ledger: wallets (posted, pending, available) and debt | 0.5 s |
| rewards | the ledger: cashback paid to the wallets, net of clawbacks (rewards.py) | 0.5 s |
| cards | each card's process (its status query), `issuing` until it has one | 1 s |
| shipping | the issuer: each physical card's shipment and tracking | 1 s |
| disputes | disputes in progress (Temporal's visibility) | 1 s |
| topups | top-ups in flight (Temporal's visibility) | 1 s |

Every budget counts from the request's arrival. One visibility query serves
the disputes and the top-ups. A slow or failed source does not fail the page: its section comes back
`stale` with its last good answer (kept STALE_SECONDS_MAX in this gateway
process) or `unavailable`, with the reason, and the other sections as they
are. The page answers within the largest budget however its sources fare.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from fastapi import Request
from pydantic import BaseModel, Field
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.api_keys import SCOPE_CUSTOMERS_READ
from activities.providers.issuer import IssuerClient
from schemas.issuer import Shipping
from schemas.money import Currency
from schemas.search import AMOUNT_MINOR, CURRENCY, CUSTOMER_ID, PROCESS_STATUS
from schemas.views import CardView
from starters.cards import card_status
from starters.gateway.errors import ErrorBody
from starters.gateway.server import arrived_at
from starters.gateway.state import DatabasePool, Providers, TemporalClient
from starters.gateway.v1.customers import (
    CARD_ISSUING,
    DebtView,
    WalletView,
    customer_accounts,
    issued_cards,
    known_customer,
    unavailable_reason,
)
from starters.gateway.v1.ownership import OwnCustomerId
from starters.gateway.v1.rewards import cashback_paid
from starters.gateway.v1.shared import READ, process_router, route
from workflows.dispute import DISPUTE_WORKFLOW
from workflows.topup import TOPUP_WORKFLOW

router = process_router()

CardKind = Literal["virtual", "physical"]

SOURCE_SECONDS: dict[str, float] = {
    "balances": 0.5,
    "rewards": 0.5,
    "cards": 1.0,
    "shipping": 1.0,
    "disputes": 1.0,
    "topups": 1.0,
}
# A section's last good answer stands in for a failed source this long.
STALE_SECONDS_MAX = 60.0
# Processes listed per section at most.
PROCESSES_LISTED_MAX = 50


class Section(BaseModel):
    status: Literal["ok", "stale", "unavailable"]
    reason: str | None = Field(default=None, description="Why it is stale or unavailable")
    as_of: datetime | None = Field(default=None, description="When its data was read")
    data: Any = None


class BalancesData(BaseModel):
    wallets: list[WalletView]
    debts: list[DebtView]


class RewardView(BaseModel):
    currency: Currency
    cashback_minor: int = Field(description="Cashback paid to the wallet, net of clawbacks")


class OverviewCard(BaseModel):
    card_id: str
    kind: CardKind
    state: str = Field(description="The card's state, or issuing until its process starts")
    view: CardView | None = Field(description="Limits, holds and spend, from its process")


class ShipmentView(BaseModel):
    card_id: str
    shipping: Shipping | None


class ProcessView(BaseModel):
    process_id: str
    status: str | None
    amount_minor: int | None
    currency: str | None


class Overview(BaseModel):
    customer_id: str
    kyc_status: str
    balances: Section
    rewards: Section
    cards: Section
    shipping: Section
    disputes: Section
    topups: Section


class SectionCache:
    """The last good answer of each (customer, section), in this process."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], tuple[float, datetime, Any]] = {}

    def keep(self, customer_id: str, section: str, as_of: datetime, data: Any) -> None:
        self._kept[(customer_id, section)] = (time.monotonic(), as_of, data)

    def fresh_enough(self, customer_id: str, section: str) -> tuple[datetime, Any] | None:
        kept = self._kept.get((customer_id, section))
        if kept is None or time.monotonic() - kept[0] > STALE_SECONDS_MAX:
            return None
        return kept[1], kept[2]


def section_cache(request: Request) -> SectionCache:
    """The gateway process's cache (made with the app)."""
    cache = request.app.state.overview_cache
    assert isinstance(cache, SectionCache), "made by create_app"
    return cache


async def _section(
    cache: SectionCache,
    customer_id: str,
    name: str,
    read: Callable[[], Awaitable[Any]],
    arrived: float,
) -> Section:
    """One section, read within its budget counted from the request's arrival."""
    as_of = datetime.now(UTC)
    left = max(0.0, arrived + SOURCE_SECONDS[name] - time.monotonic())
    try:
        data = await asyncio.wait_for(read(), left)
    except Exception as error:  # noqa: BLE001 - the section says it, the page answers
        reason = unavailable_reason(error)
        kept = cache.fresh_enough(customer_id, name)
        if kept is None:
            return Section(status="unavailable", reason=reason)
        return Section(status="stale", reason=reason, as_of=kept[0], data=kept[1])
    cache.keep(customer_id, name, as_of, data)
    return Section(status="ok", as_of=as_of, data=data)


async def _balances(pool: asyncpg.Pool, customer_id: str) -> BalancesData:
    wallets, debts = await customer_accounts(pool, customer_id)
    return BalancesData(wallets=wallets, debts=debts)


async def _rewards(pool: asyncpg.Pool, customer_id: str) -> list[RewardView]:
    paid = await cashback_paid(pool, customer_id)
    return [RewardView(currency=row.currency, cashback_minor=row.net_minor) for row in paid]


async def _card(client: Client, card_id: str, kind: CardKind) -> OverviewCard:
    """The card as its process shows it; `issuing` while it has none (a
    physical card is shipped and activated before its process starts)."""
    try:
        view = CardView.of(await card_status(client, card_id))
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
        return OverviewCard(card_id=card_id, kind=kind, state=CARD_ISSUING, view=None)
    return OverviewCard(card_id=card_id, kind=kind, state=view.state.value, view=view)


async def _cards(pool: asyncpg.Pool, client: Client, customer_id: str) -> list[OverviewCard]:
    issued = await issued_cards(pool, customer_id)
    return list(
        await asyncio.gather(*(_card(client, row["card_id"], row["kind"]) for row in issued))
    )


async def _shipping(
    pool: asyncpg.Pool, issuer: IssuerClient, customer_id: str
) -> list[ShipmentView]:
    issued = await issued_cards(pool, customer_id)
    physical = [row["card_id"] for row in issued if row["kind"] == "physical"]
    cards = await asyncio.gather(*(issuer.get_card(card_id) for card_id in physical))
    return [ShipmentView(card_id=card.id, shipping=card.shipping) for card in cards]


async def _in_flight(client: Client, customer_id: str) -> dict[str, list[ProcessView]]:
    """The customer's running disputes and top-ups, by workflow type, in one
    visibility query."""
    # The id matched CUSTOMER_ID_PATTERN (letters, digits, _ . -): no quote in it.
    query = (
        f"WorkflowType IN ('{DISPUTE_WORKFLOW}', '{TOPUP_WORKFLOW}')"
        f" AND {CUSTOMER_ID.name} = '{customer_id}' AND ExecutionStatus = 'Running'"
    )
    found: dict[str, list[ProcessView]] = {DISPUTE_WORKFLOW: [], TOPUP_WORKFLOW: []}
    async for execution in client.list_workflows(query, limit=PROCESSES_LISTED_MAX):
        attributes = execution.typed_search_attributes
        found[execution.workflow_type].append(
            ProcessView(
                process_id=execution.id,
                status=attributes.get(PROCESS_STATUS),
                amount_minor=attributes.get(AMOUNT_MINOR),
                currency=attributes.get(CURRENCY),
            )
        )
    return found


async def _of_type(in_flight: asyncio.Task[dict[str, list[ProcessView]]], kind: str) -> Any:
    # Shielded: one section running out of time leaves the query to the other.
    return (await asyncio.shield(in_flight))[kind]


@route(
    router,
    READ,
    "/customers/{customer_id}/overview",
    "A customer's home screen: balances, rewards, cards, shipping, disputes and top-ups, "
    "each section on its own budget",
    scope=SCOPE_CUSTOMERS_READ,
    responses={404: {"model": ErrorBody}},
)
async def overview_route(
    request: Request,
    customer_id: OwnCustomerId,
    pool: DatabasePool,
    client: TemporalClient,
    providers: Providers,
) -> Overview:
    kyc_status = (await known_customer(pool, customer_id))["kyc_status"]
    arrived = arrived_at(request.scope)
    cache = section_cache(request)
    in_flight = asyncio.create_task(_in_flight(client, customer_id))
    reads: dict[str, Callable[[], Awaitable[Any]]] = {
        "balances": lambda: _balances(pool, customer_id),
        "rewards": lambda: _rewards(pool, customer_id),
        "cards": lambda: _cards(pool, client, customer_id),
        "shipping": lambda: _shipping(pool, providers.issuer, customer_id),
        "disputes": lambda: _of_type(in_flight, DISPUTE_WORKFLOW),
        "topups": lambda: _of_type(in_flight, TOPUP_WORKFLOW),
    }
    try:
        sections = await asyncio.gather(
            *(_section(cache, customer_id, name, read, arrived) for name, read in reads.items())
        )
    finally:
        in_flight.cancel()
    return Overview(
        customer_id=customer_id,
        kyc_status=kyc_status,
        **dict(zip(reads, sections, strict=True)),
    )
