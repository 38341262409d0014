"""Which customers an API key acts for, route by route.

A key bound to customers (`cardflow apikey create --customer ID`, repeatable)
acts only on their processes, cards and data, and on no program-wide route.
Every `/v1` route says which kind it is through exactly one of its
dependencies, marked here:

- program-wide: pings, billing runs, reconciliations, operators' decisions;
  a bound key gets 403 `program_wide_route` whatever its scopes;
- customer-scoped: the dependency that hands the route its customer id, card
  id, transaction id, process id or body finds the customer the route acts
  on, and a bound key gets 403 `customer_not_allowed` for any customer not
  its own.

A resource named by id is traced to its customer through durable data, never
through the request: the `cards` and `card_transactions` tables, or a
process's `CustomerId` search attribute (set at its start by the gateway,
kept by the process itself from its input). Another customer's resource and
one that does not exist get the same 403, so a bound key learns nothing of
other customers' resources. A key bound to no customer skips every check,
with no look-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from fastapi import Request
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.api_keys import Principal
from schemas.search import CUSTOMER_ID

# The refusals' codes (ErrorBody.code).
CUSTOMER_NOT_ALLOWED = "customer_not_allowed"
PROGRAM_WIDE_ROUTE = "program_wide_route"

_ACCESS_ATTRIBUTE = "cardflow_route_access"


@dataclass(frozen=True)
class RouteAccess:
    """How a `/v1` route serves a key bound to customers."""

    program_wide: bool
    # Where the customer the route acts on is read (customer-scoped routes).
    customer_from: str = ""

    def __str__(self) -> str:
        return "program-wide" if self.program_wide else f"customer: {self.customer_from}"


PROGRAM_WIDE = RouteAccess(program_wide=True)

F = TypeVar("F", bound=Callable[..., Any])


def classified(access: RouteAccess) -> Callable[[F], F]:
    """Mark a route dependency as the one that decides the route's access."""

    def mark(dependency: F) -> F:
        setattr(dependency, _ACCESS_ATTRIBUTE, access)
        return dependency

    return mark


def customer_scoped(customer_from: str) -> Callable[[F], F]:
    """Mark a dependency that refuses a bound key other customers' `customer_from`."""
    return classified(RouteAccess(program_wide=False, customer_from=customer_from))


def access_of(dependency: Any) -> RouteAccess | None:
    """The access a dependency decides, if it is marked."""
    access = getattr(dependency, _ACCESS_ATTRIBUTE, None)
    return access if isinstance(access, RouteAccess) else None


def route_access(route: Any) -> list[RouteAccess]:
    """The access marks of a route's dependencies, nested ones included
    (exactly one for every `/v1` route)."""
    found: list[RouteAccess] = []
    pending = list(getattr(getattr(route, "dependant", None), "dependencies", []))
    while pending:
        dependant = pending.pop()
        access = access_of(dependant.call)
        if access is not None:
            found.append(access)
        pending.extend(dependant.dependencies)
    return found


def principal(request: Request) -> Principal:
    """The verified key of this request (every `/v1` route authenticates first)."""
    found: Principal | None = getattr(request.state, "api_principal", None)
    assert found is not None, "the request was not authenticated"
    return found


# ----- the customer a resource belongs to, from durable data --------------------


async def card_customer(pool: asyncpg.Pool, card_id: str) -> str | None:
    """The customer a card was issued to, as the card's issue recorded it."""
    customer: str | None = await pool.fetchval(
        "SELECT customer_id FROM cards WHERE card_id = $1", card_id
    )
    return customer


async def transaction_customer(pool: asyncpg.Pool, transaction_id: str) -> str | None:
    """The customer of a settled card transaction, as the card's process recorded it."""
    customer: str | None = await pool.fetchval(
        "SELECT customer_id FROM card_transactions WHERE transaction_id = $1", transaction_id
    )
    return customer


async def process_customer(client: Client, workflow_id: str) -> str | None:
    """A process's `CustomerId` search attribute: None for a process of no
    customer (a ping, a reconciliation) and for one that does not exist.
    Temporal's other failures (unreachable, overloaded) are raised."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            return None
        raise
    return description.typed_search_attributes.get(CUSTOMER_ID)
