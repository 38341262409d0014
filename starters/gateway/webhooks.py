"""Provider webhooks: verify, deduplicate, deliver to the right workflow.

A delivery is answered 2xx only once the workflow has it (or the event has no
route), so a provider retries everything else. An event id is remembered
after delivery with its signing time: a redelivery (signed later) is answered
200 without touching any workflow; the same signed message again is a replay
and gets 401. Two copies racing past that check are harmless: workflows keep
events by id.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.issuer_events import REMEMBER_WITH_EVENT_SQL, issuer_event, remember_with_event_args
from activities.metrics import GatewayMetrics
from schemas.providers import ISSUER
from schemas.task_queues import TaskQueues
from starters.gateway.errors import ApiError, GatewayCode, refusal_error
from starters.gateway.routes import ProviderEvent, Route, Start, route_for
from starters.gateway.state import DatabasePool, Metrics, Queues, Secrets, TemporalClient

# Why a webhook was refused, as the rejections metric labels it.
REJECTION_REASONS = (
    "signature",
    "malformed",
    "replayed",
    "too_large",
    "too_slow",
    "refused",
    "unavailable",
)

log = logging.getLogger("cardflow.gateway.webhooks")

WEBHOOK_BODY_BYTES_MAX = 256 * 1024

router = APIRouter(tags=["provider webhooks"])


# The signature headers as Standard Webhooks writes them: the signing time in
# whole seconds since the epoch, and signatures `v<n>,<base64>` separated by
# one space. The library reads a fraction of a second it does not sign, and
# fails with other errors than its own on anything else.
_TIMESTAMP = re.compile(r"[0-9]{1,20}")
_SIGNATURE = r"v[0-9]{1,3},[A-Za-z0-9+/]+={0,2}"
_SIGNATURES = re.compile(f"{_SIGNATURE}(?: {_SIGNATURE})*")


def verify(body: bytes, headers: dict[str, str], secrets: list[str]) -> None:
    """Accept the body if any configured secret signed it within the tolerance;
    anything else, unreadable headers and a body that is not UTF-8 included,
    raises WebhookVerificationError (so is answered 401 and counted)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp = lowered.get("webhook-timestamp")
    if timestamp and not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookVerificationError("webhook-timestamp must be whole seconds since the epoch")
    signatures = lowered.get("webhook-signature")
    if signatures and not _SIGNATURES.fullmatch(signatures):
        raise WebhookVerificationError("malformed webhook-signature")
    try:
        # The payload is JSON text, signed as text: bytes that are not UTF-8
        # carry no signature cardflow can check.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookVerificationError("the body is not UTF-8 text") from None
    last: WebhookVerificationError | None = None
    for secret in secrets:
        try:
            Webhook(secret).verify(text, lowered, json_parse=False)
            return
        except WebhookVerificationError as error:
            last = error
        except ValueError as error:  # e.g. base64 of a length no encoder writes
            raise WebhookVerificationError(f"malformed webhook-signature: {error}") from None
    raise last or WebhookVerificationError("no secret configured")


async def deliver(
    client: Client,
    queues: TaskQueues,
    provider: str,
    event: ProviderEvent,
    route: Route,
    pool: asyncpg.Pool,
) -> str | None:
    """Hand the event to its workflow (one its route wants); None when no
    process is waiting for it."""
    if route.resolve is not None:
        resolved = await route.resolve(pool, event)
        if resolved is None:
            return None
        workflow_id = resolved
    else:
        workflow_id = route.workflow_id(provider, event)
    argument = route.argument(provider, event)
    if route.kind == "signal":
        try:
            await client.get_workflow_handle(workflow_id).signal(route.name, argument)
        except RPCError as error:
            if error.status is not RPCStatusCode.NOT_FOUND or route.restart is None:
                raise
            restart = await route.restart(pool, event, queues)
            if restart is None:
                raise
            # The process ended: start it again with the event (or, should it
            # have been started meanwhile, signal the running one).
            await _start_with_signal(
                client, route, workflow_id, restart, argument, WorkflowIDReusePolicy.ALLOW_DUPLICATE
            )
    elif route.kind == "update":
        await client.get_workflow_handle(workflow_id).execute_update(route.name, argument)
    else:
        assert route.start is not None
        start = route.start(provider, event, queues)
        # A finished process is not started again by a late event.
        await _start_with_signal(
            client, route, workflow_id, start, argument, WorkflowIDReusePolicy.REJECT_DUPLICATE
        )
    return workflow_id


async def _start_with_signal(
    client: Client,
    route: Route,
    workflow_id: str,
    start: Start,
    argument: Any,
    reuse: WorkflowIDReusePolicy,
) -> None:
    """Signal-with-start: the running process gets the event, else one starts with it."""
    await client.start_workflow(
        start.workflow,
        start.argument,
        id=workflow_id,
        task_queue=start.task_queue,
        start_signal=route.name,
        start_signal_args=[argument],
        id_reuse_policy=reuse,
        static_summary=route.summary(start.argument) if route.summary else None,
        static_details=route.details(start.argument) if route.details else None,
    )


def malformed(error: ValidationError) -> ApiError:
    """A 400 naming each field of the event that is wrong (not its input)."""
    errors = error.errors(include_url=False, include_context=False, include_input=False)
    return ApiError(GatewayCode.MALFORMED_EVENT, [dict(found) for found in errors])


@router.post("/webhooks/{provider}", include_in_schema=False)
async def receive_webhook(
    provider: str,
    request: Request,
    secrets: Secrets,
    metrics: Metrics,
    pool: DatabasePool,
    client: TemporalClient,
    queues: Queues,
) -> JSONResponse:
    provider_secrets = secrets.get(provider)
    if provider_secrets is None:
        metrics.rejected("unknown", "unknown_provider")
        raise ApiError(GatewayCode.UNKNOWN_PROVIDER, f"unknown provider {provider}")
    body = await request.body()
    if len(body) > WEBHOOK_BODY_BYTES_MAX:
        metrics.rejected(provider, "too_large")
        raise ApiError(GatewayCode.BODY_TOO_LARGE, "webhook body too large")
    try:
        verify(body, dict(request.headers), provider_secrets)
    except WebhookVerificationError as error:
        log.warning("refused %s webhook: %s", provider, error)
        metrics.rejected(provider, "signature")
        raise ApiError(
            GatewayCode.INVALID_SIGNATURE, f"invalid webhook signature: {error}"
        ) from None
    try:
        event = ProviderEvent.model_validate_json(body)
    except ValidationError as error:
        metrics.rejected(provider, "malformed")
        raise malformed(error) from None
    if event.id != request.headers.get("webhook-id"):
        metrics.rejected(provider, "malformed")
        raise ApiError(GatewayCode.MALFORMED_EVENT, "webhook-id header does not match the event id")

    signed_at = int(request.headers["webhook-timestamp"])
    route = route_for(provider, event.type)
    if route is None or (route.wanted is not None and not route.wanted(event)):
        # Nothing to deliver (most of them: the issuer repeating the card's own
        # answer): remembering it is the one round trip, and only an event
        # remembered already needs the second, to tell a redelivery from a replay.
        if await _remember(pool, provider, event, "ignored", None, signed_at):
            metrics.delivered(provider, "ignored")
            return JSONResponse({"status": "ignored", "event_id": event.id, "workflow_id": None})
        accepted_signed_at = await _accepted_signed_at(pool, provider, event)
        return _seen_before(provider, event, signed_at, accepted_signed_at, metrics)
    accepted_signed_at = await _accepted_signed_at(pool, provider, event)
    if accepted_signed_at is not None:
        return _seen_before(provider, event, signed_at, accepted_signed_at, metrics)

    workflow_id: str | None = None
    try:
        workflow_id = await deliver(client, queues, provider, event, route, pool)
        outcome = "delivered" if workflow_id is not None else "ignored"
    except ValidationError as error:
        metrics.rejected(provider, "malformed")
        raise malformed(error) from None
    except WorkflowUpdateFailedError as error:
        metrics.rejected(provider, "refused")
        raise refusal_error(error, f"{provider} event {event.id}") from None
    except WorkflowAlreadyStartedError:
        outcome = "ignored"  # the process finished; a late event starts nothing
    except RPCError as error:
        if error.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.ALREADY_EXISTS):
            # Temporal is unreachable or overloaded: the provider retries.
            log.error("could not deliver %s %s: %s", provider, event.id, error)
            metrics.rejected(provider, "unavailable")
            raise _unavailable() from None
        outcome = "ignored"  # no such process (any more)
    except Exception:  # noqa: BLE001 - e.g. no connection to Temporal at all
        # Not delivered and not remembered: the provider's retry will be.
        log.exception("could not deliver %s %s", provider, event.id)
        metrics.rejected(provider, "unavailable")
        raise _unavailable() from None
    await _remember(pool, provider, event, outcome, workflow_id, signed_at)
    metrics.delivered(provider, outcome)
    return JSONResponse({"status": outcome, "event_id": event.id, "workflow_id": workflow_id})


async def _accepted_signed_at(
    pool: asyncpg.Pool, provider: str, event: ProviderEvent
) -> int | None:
    """When the accepted copy of the event was signed; None if none was accepted."""
    found = await pool.fetchval(
        "SELECT signed_at FROM gateway_webhook_events WHERE provider = $1 AND event_id = $2",
        provider,
        event.id,
    )
    return None if found is None else int(found)


_REMEMBER_SQL = (
    "INSERT INTO gateway_webhook_events"
    " (provider, event_id, event_type, outcome, workflow_id, signed_at)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true"
)


async def _remember(
    pool: asyncpg.Pool,
    provider: str,
    event: ProviderEvent,
    outcome: str,
    workflow_id: str | None,
    signed_at: int,
) -> bool:
    """Remember the event as accepted; False if it was remembered already.
    The issuer's word on a card's authorizations, state, shipping and
    disputes is a customer event, written in the same statement."""
    remembered = (provider, event.id, event.type, outcome, workflow_id, signed_at)
    reported = issuer_event(event.id, event.type, event.data) if provider == ISSUER else None
    if reported is not None:
        fresh = await pool.fetchval(
            REMEMBER_WITH_EVENT_SQL, *remembered, *remember_with_event_args(reported)
        )
    else:
        fresh = await pool.fetchval(_REMEMBER_SQL, *remembered)
    return fresh is True


def _seen_before(
    provider: str,
    event: ProviderEvent,
    signed_at: int,
    accepted_signed_at: int | None,
    metrics: GatewayMetrics,
) -> JSONResponse:
    """The answer to an event accepted before (its copy signed at
    `accepted_signed_at`): a redelivery, signed later, is a duplicate answered
    200; the very message again is a replay, refused."""
    if accepted_signed_at is not None and signed_at <= accepted_signed_at:
        metrics.rejected(provider, "replayed")
        raise ApiError(GatewayCode.REPLAYED, "replayed webhook")
    metrics.delivered(provider, "duplicate")
    return JSONResponse({"status": "duplicate", "event_id": event.id})


def _unavailable() -> ApiError:
    return ApiError(GatewayCode.TEMPORARILY_UNAVAILABLE, "temporarily unable to deliver")
