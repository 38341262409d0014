"""What every process's router shares: how it is built and documented, and
how a call on a running process is answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from temporalio.client import WorkflowHandle

from activities.api_keys import SCOPE_PROCESSES_READ, SCOPE_PROCESSES_START
from schemas.periods import PeriodNotEnded
from starters.gateway.auth import AUTH_RESPONSES, requires
from starters.gateway.errors import ErrorBody, ValidationErrorBody, period_not_ended, process_error
from starters.gateway.v1.ownership import PROGRAM_WIDE


def process_router() -> APIRouter:
    """A process's `/v1` router: every route takes an API key with the one
    scope it names (starters/gateway/auth.py), and answers errors as
    starters/gateway/errors.py says."""
    return APIRouter(
        prefix="/v1",
        tags=["processes"],
        responses={
            **{code: {**answer, "model": ErrorBody} for code, answer in AUTH_RESPONSES.items()},
            422: {"model": ValidationErrorBody, "description": "Validation Error"},
            500: {"model": ErrorBody, "description": "internal_error, logged under error_id"},
        },
    )


class ProcessRef(BaseModel):
    workflow_id: str
    run_id: str
    process: str
    status_url: str
    replayed: bool = Field(description="True when this key had already started the process")
    request_id: str | None = Field(
        default=None,
        description="The process's request id, where its routes take one "
        "(/v1/card-issues/{request_id}/..., /v1/fx/{request_id}/...)",
    )


Responses = dict[int | str, dict[str, Any]]

# How every start route answers besides 202 (documented for the OpenAPI contract).
START_RESPONSES: Responses = {
    200: {"model": ProcessRef, "description": "This Idempotency-Key already started it"},
    409: {
        "model": ErrorBody,
        "description": "This Idempotency-Key came with another body (idempotency_key_reused), "
        "or another request started this process (process_exists)",
    },
    503: {"model": ErrorBody, "description": "Temporal did not answer (process_timeout)"},
}
# A route that awaits a running process (`steer`): it may be missing (404),
# refuse (409, or 422 for a request it cannot take), or not answer in time
# (503); a read cannot refuse.
STEER_RESPONSES: Responses = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    503: {"model": ErrorBody},
}
READ_RESPONSES: Responses = {
    404: {"model": ErrorBody},
    503: {"model": ErrorBody},
}

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RouteKind:
    """What routes of one kind share: their method, success status, the key
    scope they take by default and how they are documented to answer."""

    method: str
    scope: str
    responses: Responses
    status_code: int | None = None
    response_model: Any = None
    program_wide: bool = False


# Starts a process: 202 with the process it started.
START = RouteKind("POST", SCOPE_PROCESSES_START, START_RESPONSES, 202, ProcessRef)
# Steers a running process, which may refuse.
UPDATE = RouteKind("POST", SCOPE_PROCESSES_START, STEER_RESPONSES)
# Reads a process (or hands it something), which cannot refuse.
READ = RouteKind("GET", SCOPE_PROCESSES_READ, READ_RESPONSES)


def route(
    router: APIRouter, kind: RouteKind, path: str, summary: str, **differences: Any
) -> Callable[[F], F]:
    """A route of `router` of `kind` (with `differences` to it: another
    method, scope, model...): it takes an API key with its scope and, if
    program-wide, refuses a key bound to customers. With no response_model,
    the route's return annotation is its answer's model."""
    spec = replace(kind, **differences)
    options: dict[str, Any] = {}
    if spec.status_code is not None:
        options["status_code"] = spec.status_code
    if spec.response_model is not None:
        options["response_model"] = spec.response_model
    dependencies = [*requires(spec.scope), *([PROGRAM_WIDE] if spec.program_wide else [])]
    return router.api_route(
        path,
        methods=[spec.method],
        dependencies=dependencies,
        responses=spec.responses,
        summary=summary,
        **options,
    )


async def start_by_period(
    response: Response,
    started: Awaitable[WorkflowHandle[Any, Any]],
    *,
    period: str,
    workflow_id: str,
    process: str,
    status_url: str,
) -> ProcessRef:
    """Start the process whose id is its period's (a customer's month, a
    day): a repeat finds the first one, answered 200 (no Idempotency-Key is
    needed); a period not over yet is 422 period_not_ended naming the path's
    field, before anything starts."""
    try:
        handle = await started
        # A new start knows its run; a handle to the existing process does not.
        found = handle.result_run_id is None
        run_id = (await handle.describe()).run_id if found else handle.result_run_id or ""
    except PeriodNotEnded as error:
        raise period_not_ended(error, period) from None
    except Exception as error:  # noqa: BLE001 - Temporal busy or unreachable: 503
        raise process_error(error, workflow_id) from None
    response.status_code = 200 if found else 202
    return ProcessRef(
        workflow_id=workflow_id,
        run_id=run_id,
        process=process,
        status_url=status_url,
        replayed=found,
    )


async def steer(call: Awaitable[T], subject: str) -> T:
    """Await an update, query or signal of the process of `subject`: its
    refusal is answered with its code, a missing process 404, an unreachable
    Temporal or a process that does not take the call in time (its workers
    down or far behind) 503 with Retry-After, anything else 500."""
    try:
        return await call
    except Exception as error:  # noqa: BLE001 - every failure has its answer
        raise process_error(error, subject) from None
