"""The upstream HTTP API (`/v1`): start processes idempotently, read and
steer them, one router per process (starters/gateway/v1/).

Every route takes an API key with the one scope it names
(starters/gateway/auth.py); a key bound to customers acts only on theirs
(starters/gateway/access.py); a start carries an Idempotency-Key
(starters/gateway/v1/idempotency.py); every error is answered as
starters/gateway/errors.py says.
"""

from __future__ import annotations

from fastapi import APIRouter

from starters.gateway.v1 import (
    authentications,
    billing,
    cards,
    closures,
    controls,
    customers,
    disputes,
    events,
    fraud,
    fx,
    onboarding,
    overview,
    processes,
    reconciliation,
    rewards,
    settlements,
    telegram,
    topups,
    withdrawals,
)

PROCESS_ROUTERS = (
    processes.router,
    customers.router,
    overview.router,
    rewards.router,
    events.router,
    telegram.router,
    onboarding.router,
    cards.router,
    authentications.router,
    fx.router,
    topups.router,
    billing.router,
    disputes.router,
    withdrawals.router,
    closures.router,
    controls.router,
    fraud.router,
    reconciliation.router,
    settlements.router,
)

# Every route of every process, in one router (each route carries its own
# prefix, scope and documented answers from its process's router).
router = APIRouter(routes=[route for process in PROCESS_ROUTERS for route in process.routes])
