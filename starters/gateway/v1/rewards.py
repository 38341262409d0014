"""`GET /v1/customers/{customer_id}/rewards` (scope `customers:read`): a
customer's cashback and the campaigns they can earn from now."""

from __future__ import annotations

from pydantic import BaseModel

from activities.api_keys import SCOPE_CUSTOMERS_READ
from starters.gateway.errors import ErrorBody
from starters.gateway.state import DatabasePool
from starters.gateway.v1.customers import known_customer
from starters.gateway.v1.ownership import OwnCustomerId
from starters.gateway.v1.shared import READ, process_router, route

router = process_router()


class RewardsView(BaseModel):
    customer_id: str


@route(
    router,
    READ,
    "/customers/{customer_id}/rewards",
    "A customer's cashback (earned, clawed back, pending) and personal offers",
    scope=SCOPE_CUSTOMERS_READ,
    responses={404: {"model": ErrorBody}},
)
async def rewards_route(customer_id: OwnCustomerId, pool: DatabasePool) -> RewardsView:
    await known_customer(pool, customer_id)
    return RewardsView(customer_id=customer_id)
