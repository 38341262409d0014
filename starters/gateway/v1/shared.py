"""What every process's router shares: how it is built and documented, and
how a call on a running process is answered."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from temporalio.client import WorkflowHandle

from starters.gateway.auth import AUTH_RESPONSES
from starters.gateway.errors import ErrorBody, ValidationErrorBody, process_error


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


# The id of a process that is a request's own (a card issue, an FX conversion).
RequestIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


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


# How every start route answers besides 202 (documented for the OpenAPI contract).
START_RESPONSES: dict[int | str, dict[str, Any]] = {
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
STEER_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    503: {"model": ErrorBody},
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    503: {"model": ErrorBody},
}

T = TypeVar("T")


async def found_or_started(handle: WorkflowHandle[Any, Any]) -> tuple[str, bool]:
    """The run of a process a start made, or found already there (a start
    by the process's own id answers a handle without a run): the run's id,
    and whether it was found."""
    if handle.result_run_id is not None:
        return handle.result_run_id, False
    return (await handle.describe()).run_id, True


async def steer(call: Awaitable[T], subject: str) -> T:
    """Await an update, query or signal of the process of `subject`: its
    refusal is answered with its code, a missing process 404, an unreachable
    Temporal or a process that does not take the call in time (its workers
    down or far behind) 503 with Retry-After, anything else 500."""
    try:
        return await call
    except Exception as error:  # noqa: BLE001 - every failure has its answer
        raise process_error(error, subject) from None
