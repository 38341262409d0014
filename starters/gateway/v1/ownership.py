"""The customers a key acts for, as the routes check them.

A key bound to customers acts only on theirs: each route's access is one of
its dependencies (starters/gateway/access.py says how they are marked),
program-wide or resolving the customer the route acts on. The dependencies
every process's router uses are here; those that trace a process's own
resource (a card, a transaction) live with its router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from temporalio.client import Client

from schemas.customers import CUSTOMER_ID_CHARS_MAX, CUSTOMER_ID_PATTERN
from starters.gateway import access
from starters.gateway.errors import ApiError, GatewayCode, process_error
from starters.gateway.state import TemporalClient


def require_customer(request: Request, customer_id: str | None, subject: str) -> None:
    """403 unless the key acts for `customer_id`: the same answer whether
    `subject` is another customer's or does not exist."""
    if not access.principal(request).acts_for(customer_id):
        raise ApiError(
            GatewayCode.CUSTOMER_NOT_ALLOWED,
            f"this API key acts only for its own customers, and {subject} is not known as "
            "one of theirs",
        )


async def require_owner(
    request: Request, subject: str, owner: Callable[[], Awaitable[str | None]]
) -> None:
    """A bound key must act for the customer `owner` reads from durable data."""
    if access.principal(request).bound:
        require_customer(request, await owner(), subject)


async def require_process_owner(
    request: Request, client: Client, workflow_id: str, subject: str
) -> None:
    """A bound key must act for the process's `CustomerId` search attribute."""
    try:
        await require_owner(request, subject, lambda: access.process_customer(client, workflow_id))
    except ApiError:
        raise
    except Exception as error:  # noqa: BLE001 - Temporal busy or unreachable: 503
        raise process_error(error, subject) from None


@access.classified(access.PROGRAM_WIDE)
async def program_wide(request: Request) -> None:
    """A route acting on the whole program: refused to a key bound to customers."""
    if access.principal(request).bound:
        raise ApiError(
            GatewayCode.PROGRAM_WIDE_ROUTE,
            "this API key acts only for its own customers, and this route acts on the whole "
            "program",
        )


# After a program-wide route's scope: `dependencies=[*requires(SCOPE), PROGRAM_WIDE]`.
PROGRAM_WIDE = Depends(program_wide)

# The id of a process that is a request's own (a card issue, an FX conversion).
RequestIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
CustomerIdPath = Annotated[str, Path(pattern=CUSTOMER_ID_PATTERN, max_length=CUSTOMER_ID_CHARS_MAX)]


@access.customer_scoped("the path's customer_id")
async def _own_customer(request: Request, customer_id: CustomerIdPath) -> str:
    require_customer(request, customer_id, f"customer {customer_id}")
    return customer_id


OwnCustomerId = Annotated[str, Depends(_own_customer)]


def request_process_owner(
    workflow_id_of: Callable[[str], str], process: str, subject: str
) -> Callable[[Request, Client, str], Awaitable[str]]:
    """The dependency that hands a route the request id in its path (a card
    issue's, an FX conversion's), once a bound key is known to act for the
    customer of that `process`: its CustomerId search attribute."""

    @access.customer_scoped(f"the {process} process's CustomerId search attribute")
    async def own(request: Request, client: TemporalClient, request_id: RequestIdPath) -> str:
        workflow_id = workflow_id_of(request_id)
        await require_process_owner(request, client, workflow_id, f"{subject} {request_id}")
        return request_id

    return own
