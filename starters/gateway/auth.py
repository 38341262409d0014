"""Who may call the upstream API (`/v1`), and how often.

Every `/v1` route depends on `RequireScope(scope)`, which in turn:

1. authenticates the request's `Authorization: Bearer cfk_...` key
   (401 with `WWW-Authenticate: Bearer` when the key is missing, malformed,
   unknown, wrong, expired or revoked: one message for all, so an answer
   never tells whether another key exists);
2. throttles it: a token bucket per (key, route), refilled at
   `CARDFLOW_API_RATE_PER_SECOND` up to `CARDFLOW_API_BURST` tokens; an empty
   bucket is a 429 with `Retry-After` (whole seconds until a token is back);
3. checks the scope (403 naming the scope the route requires).

A key bound to customers is then held to them by the route itself
(`starters/gateway/access.py`): 403 on other customers' processes, cards and
data, and on program-wide routes.

Buckets live in the gateway process: with N gateway replicas behind a load
balancer the fleet admits up to N times the configured rate. Webhook and
real-time routes (`/webhooks/...`, `/realtime/...`) are authenticated by
their providers' signatures, not by API keys, and draw on no bucket here: a
client flooding `/v1` cannot use up the issuer's authorization budget.

The key is read from the header only (never from a query string, which
access logs would keep) and is never logged: a log line names the key id.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.applications import Starlette

from activities.api_key_verifier import KEY_CACHE_SECONDS, KeyVerifier
from activities.api_keys import (
    SCOPES,
    ApiKeyStore,
    Principal,
    api_key_pepper,
    parse_key,
)
from starters.gateway.errors import ApiError, GatewayCode
from starters.gateway.state import pool_of, settings_of

log = logging.getLogger("cardflow.gateway.auth")

# One message for every refused key: it must not tell a missing key from an
# unknown, wrong, expired or revoked one.
UNAUTHENTICATED_DETAIL = (
    "a valid API key is required: send 'Authorization: Bearer cfk_...' with a key that is "
    "not expired or revoked"
)
KEY_STORE_RETRY_AFTER_SECONDS = 5
# Bucket bookkeeping is bounded: a bucket idle long enough to be full again
# is dropped (a new one starts full, so nothing changes), and past this many
# live buckets the least recently used go first.
BUCKETS_MAX = 100_000

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `cardflow apikey create`: `Authorization: Bearer cfk_...`",
)


class TokenBuckets:
    """Token buckets by key: `rate_per_second` refill, at most `burst` tokens."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        buckets_max: int = BUCKETS_MAX,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("the rate must be positive and the burst at least 1")
        self.rate_per_second = rate_per_second
        self.burst = burst
        self._buckets_max = buckets_max
        self._monotonic = monotonic
        # key -> (tokens, when they were counted); least recently used first.
        self._buckets: OrderedDict[Any, tuple[float, float]] = OrderedDict()
        self._refill_seconds = burst / rate_per_second

    def take(self, key: Any) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one is."""
        now = self._monotonic()
        self._evict(now)
        tokens, counted_at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted_at) * self.rate_per_second)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate_per_second

    def __len__(self) -> int:
        return len(self._buckets)

    def _evict(self, now: float) -> None:
        while self._buckets:
            key, (_, counted_at) = next(iter(self._buckets.items()))
            if now - counted_at < self._refill_seconds and len(self._buckets) < self._buckets_max:
                return
            del self._buckets[key]


@dataclass
class ApiGuard:
    """The gateway's verifier and buckets (one per app)."""

    verifier: KeyVerifier
    buckets: TokenBuckets


def api_guard(app: Starlette) -> ApiGuard:
    """The app's guard, built on first use from its settings and pool.

    Tests may set `app.state.api_guard` beforehand (e.g. a cache of 0 s).
    """
    guard = getattr(app.state, "api_guard", None)
    if isinstance(guard, ApiGuard):
        return guard
    settings = settings_of(app)
    guard = ApiGuard(
        verifier=KeyVerifier(
            ApiKeyStore(pool_of(app), api_key_pepper(settings)),
            cache_seconds=KEY_CACHE_SECONDS,
        ),
        buckets=TokenBuckets(settings.api_rate_per_second, settings.api_burst),
    )
    app.state.api_guard = guard
    return guard


def key_store_unavailable() -> ApiError:
    return ApiError(
        GatewayCode.KEY_STORE_UNAVAILABLE,
        "API keys cannot be checked right now; try again",
        headers={"Retry-After": str(KEY_STORE_RETRY_AFTER_SECONDS)},
    )


class RequireScope:
    """A dependency: an authenticated, unthrottled key holding `scope`."""

    def __init__(self, scope: str) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        self.scope = scope

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        guard = api_guard(request.app)
        presented = credentials.credentials if credentials is not None else None
        try:
            principal = await guard.verifier.verify(presented)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            raise key_store_unavailable() from None
        if principal is None:
            # Name the key id only (when the key is well formed), never the key.
            parsed = parse_key(presented) if presented else None
            log.debug(
                "refused %s %s: API key %s",
                request.method,
                request.url.path,
                f"id {parsed[0]} not valid" if parsed else "missing or malformed",
            )
            challenge = 'Bearer realm="cardflow"'
            if presented is not None:
                challenge += ', error="invalid_token"'
            raise ApiError(
                GatewayCode.UNAUTHENTICATED,
                UNAUTHENTICATED_DETAIL,
                headers={"WWW-Authenticate": challenge},
            )
        route = request.scope.get("route")
        template = getattr(route, "path_format", request.url.path)
        wait_seconds = guard.buckets.take((principal.key_id, request.method, template))
        if wait_seconds > 0:
            retry_after = max(1, math.ceil(wait_seconds))
            log.debug("throttled API key %s on %s %s", principal.key_id, request.method, template)
            raise ApiError(
                GatewayCode.RATE_LIMITED,
                f"too many requests from this API key to {request.method} {template}; "
                f"retry after {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        if self.scope not in principal.scopes:
            log.info(
                "API key %s ('%s') lacks scope %s for %s %s",
                principal.key_id,
                principal.name,
                self.scope,
                request.method,
                template,
            )
            raise ApiError(
                GatewayCode.SCOPE_MISSING,
                f"this API key lacks the scope '{self.scope}' that this route requires",
            )
        request.state.api_key_id = principal.key_id
        request.state.api_principal = principal
        return principal


def requires(scope: str) -> list[DependsParam]:
    """`dependencies=requires(SCOPE)` on a route: the one scope it needs."""
    return [Depends(RequireScope(scope))]


def route_scope(route: Any) -> list[str]:
    """The scopes a route's dependencies require (one for every `/v1` route)."""
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return []
    return [
        dependency.call.scope
        for dependency in dependant.dependencies
        if isinstance(dependency.call, RequireScope)
    ]


# Documented on every `/v1` route (the OpenAPI contract).
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown, expired or revoked API key (unauthenticated)"},
    403: {
        "description": "The API key lacks the scope this route requires (scope_missing); or, "
        "bound to customers, the route acts on another customer (customer_not_allowed) or on "
        "the whole program (program_wide_route)"
    },
    429: {
        "description": "This key's budget for this route is spent (rate_limited); see Retry-After"
    },
}
