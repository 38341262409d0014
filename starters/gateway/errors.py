"""The gateway's one error contract.

Every error the gateway answers is a JSON object with a `code` and a
`detail`: the code is the contract a client acts on (it does not change),
the detail is for people (it may). A request that fails validation keeps
FastAPI's shape, `detail` a list of errors with their field locations, and
gains `code: "invalid_request"`. An error nobody expected is a 500
`internal_error` whose `error_id` names the log line that tells what happened.

A code has exactly one HTTP status, `ERROR_STATUS` below. A process refuses
an update with an ApplicationError whose type is a Refusal code
(schemas/refusals.py); `process_error` turns what a call on a process raised
into the answer.
"""

from __future__ import annotations

import builtins
import logging
import math
import uuid
from enum import StrEnum
from typing import Any

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, JsonValue
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import (
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError
from temporalio.service import RPCError, RPCStatusCode

from schemas.periods import PERIOD_NOT_ENDED_ERROR, PeriodNotEnded
from schemas.refusals import Refusal, refusal_of

log = logging.getLogger("cardflow.gateway.errors")


class GatewayCode(StrEnum):
    """The gateway's own codes, next to the processes' refusals (Refusal)."""

    # Idempotency (starters/gateway/v1/idempotency.py).
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    PROCESS_EXISTS = "process_exists"
    # The process did not answer in time (its workers down or far behind), or
    # Temporal could not be reached: try again, with the same Idempotency-Key.
    PROCESS_TIMEOUT = "process_timeout"
    # A process refused, for a reason that carries no code.
    REFUSED = "refused"
    # Who may call (starters/gateway/auth.py, access.py).
    UNAUTHENTICATED = "unauthenticated"
    SCOPE_MISSING = "scope_missing"
    CUSTOMER_NOT_ALLOWED = "customer_not_allowed"
    PROGRAM_WIDE_ROUTE = "program_wide_route"
    RATE_LIMITED = "rate_limited"
    KEY_STORE_UNAVAILABLE = "key_store_unavailable"
    # What the gateway takes in (starters/gateway/intake.py).
    BAD_REQUEST = "bad_request"
    BAD_CONTENT_LENGTH = "bad_content_length"
    BODY_TOO_LARGE = "body_too_large"
    BODY_TOO_SLOW = "body_too_slow"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # Providers' signed requests (starters/gateway/webhooks.py, realtime.py).
    UNKNOWN_PROVIDER = "unknown_provider"
    INVALID_SIGNATURE = "invalid_signature"
    REPLAYED = "replayed"
    MALFORMED_EVENT = "malformed_event"
    TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"
    INTERNAL_ERROR = "internal_error"


ErrorCode = Refusal | GatewayCode

# The one table of code -> HTTP status. The rule between 409 and 422: 422
# when the request itself can never succeed as sent (malformed, or naming a
# period that has not ended); 409 when it is well formed but the state of
# the customer, wallet, card or process refuses it now (insufficient funds,
# a declined or disallowed movement, a quote expired): the same request may
# succeed later or elsewhere. 503: try again later (Retry-After says when).
ERROR_STATUS: dict[ErrorCode, int] = {
    GatewayCode.BAD_REQUEST: 400,
    GatewayCode.BAD_CONTENT_LENGTH: 400,
    GatewayCode.MALFORMED_EVENT: 400,
    GatewayCode.UNAUTHENTICATED: 401,
    GatewayCode.INVALID_SIGNATURE: 401,
    GatewayCode.REPLAYED: 401,
    GatewayCode.SCOPE_MISSING: 403,
    GatewayCode.CUSTOMER_NOT_ALLOWED: 403,
    GatewayCode.PROGRAM_WIDE_ROUTE: 403,
    Refusal.NOT_FOUND: 404,
    GatewayCode.UNKNOWN_PROVIDER: 404,
    GatewayCode.METHOD_NOT_ALLOWED: 405,
    GatewayCode.BODY_TOO_SLOW: 408,
    Refusal.WRONG_STATE: 409,
    Refusal.ALREADY_DONE: 409,
    Refusal.FINISHED: 409,
    Refusal.QUOTE_EXPIRED: 409,
    Refusal.CANCELLED: 409,
    Refusal.INSUFFICIENT_FUNDS: 409,
    Refusal.DECLINED: 409,
    Refusal.NOT_ALLOWED: 409,
    Refusal.OPEN_AUTHORIZATIONS: 409,
    Refusal.EVIDENCE_MISSING: 409,
    GatewayCode.REFUSED: 409,
    GatewayCode.PROCESS_EXISTS: 409,
    GatewayCode.IDEMPOTENCY_KEY_REUSED: 409,
    GatewayCode.BODY_TOO_LARGE: 413,
    Refusal.INVALID_REQUEST: 422,
    Refusal.PERIOD_NOT_ENDED: 422,
    GatewayCode.RATE_LIMITED: 429,
    GatewayCode.INTERNAL_ERROR: 500,
    Refusal.PROVIDER_UNAVAILABLE: 503,
    GatewayCode.PROCESS_TIMEOUT: 503,
    GatewayCode.KEY_STORE_UNAVAILABLE: 503,
    GatewayCode.TEMPORARILY_UNAVAILABLE: 503,
}
# Every code has its status.
assert set(ERROR_STATUS) == {*Refusal, *GatewayCode}

# A client told 503 tries again after this long.
RETRY_AFTER_SECONDS = 5

_CODES: list[JsonValue] = [code.value for code in sorted(ERROR_STATUS)]
_TABLE = ", ".join(f"{code.value} {status}" for code, status in ERROR_STATUS.items())


class ErrorBody(BaseModel):
    """Every error the gateway answers but a request's validation errors."""

    code: str = Field(
        description="What kind of error, the contract a client acts on; each code has one "
        f"HTTP status: {_TABLE}",
        json_schema_extra={"enum": _CODES},
    )
    detail: str = Field(description="For people; it may change")
    error_id: str | None = Field(
        default=None, description="internal_error only: the id the gateway logged it under"
    )


class ValidationErrorBody(BaseModel):
    """A request the gateway or the process cannot take as sent (422)."""

    code: str = Field(
        description="invalid_request; period_not_ended for a day or month not over yet",
        json_schema_extra={"enum": [Refusal.INVALID_REQUEST.value, Refusal.PERIOD_NOT_ENDED.value]},
    )
    detail: list[dict[str, Any]] | str = Field(
        description="A request that fails validation: FastAPI's errors, each with its field's "
        "location (loc), message (msg), type and input. A request the process refused as "
        "invalid: its reason, naming the field"
    )


class ApiError(HTTPException):
    """An error answered as `{"code", "detail"}`, with its code's status."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str | list[dict[str, Any]],
        headers: dict[str, str] | None = None,
        *,
        error_id: str | None = None,
    ) -> None:
        status = ERROR_STATUS[code]
        if status == 503:
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.code = code
        self.error_id = error_id

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code.value, "detail": _encodable(self.detail)}
        if self.error_id is not None:
            body["error_id"] = self.error_id
        return body


def internal_error(error: BaseException, context: str) -> ApiError:
    """A 500 for an error nobody expected, logged (with its traceback) under
    the `error_id` the answer names; the detail tells nothing of the cause."""
    error_id = str(uuid.uuid4())
    log.error("internal error %s in %s: %r", error_id, context, error, exc_info=error)
    return ApiError(
        GatewayCode.INTERNAL_ERROR,
        f"the gateway failed unexpectedly; quote error id {error_id} when reporting it",
        error_id=error_id,
    )


def period_not_ended(error: PeriodNotEnded, value: str) -> ApiError:
    """The 422 of a day or month not over yet, naming the path's field as a
    validation error does."""
    return ApiError(Refusal.PERIOD_NOT_ENDED, error.detail("path", value))


def _encodable(value: Any) -> Any:
    """`value` as JSON can carry it: a lone surrogate shown as its escape, a
    NaN or an infinity (which Python's json reads) as its name."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_encodable(item) for item in value]
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    return value


# ----- what a process raised, as an answer ------------------------------------

# The types processes failed or refused with before their refusals carried
# a Refusal code (histories recorded then, and failures that are not refusals).
LEGACY_REFUSALS: dict[str, Refusal] = {
    PERIOD_NOT_ENDED_ERROR: Refusal.PERIOD_NOT_ENDED,
    "CustomerNotApproved": Refusal.NOT_ALLOWED,
    "FeeNotCharged": Refusal.DECLINED,
    "CreditRefused": Refusal.DECLINED,
    "NotDelivered": Refusal.FINISHED,
    "NotActivated": Refusal.FINISHED,
    "FxQuoteMismatch": Refusal.PROVIDER_UNAVAILABLE,
    "NoFirmQuote": Refusal.PROVIDER_UNAVAILABLE,
    # A message the process could not read as its model.
    "ValidationError": Refusal.INVALID_REQUEST,
}

# What the SDK raises when an update's payload does not decode as its model.
_UNDECODABLE = "Failed decoding arguments"

# Temporal's answers that mean "not now": the process or the server is busy,
# far behind or unreachable, and a retry may succeed.
TRANSIENT_RPC_STATUSES = (
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.CANCELLED,
)


def _python_bug(error_type: str) -> bool:
    """Whether an ApplicationError's type names one of Python's own errors
    (the SDK names an exception a handler raised by its class): a KeyError or
    an AssertionError is a bug, not a refusal. ValueError is the exception:
    validators raised it to refuse before refusals had codes."""
    found = getattr(builtins, error_type, None)
    return (
        isinstance(found, type) and issubclass(found, BaseException) and error_type != "ValueError"
    )


def refusal_error(error: WorkflowUpdateFailedError, subject: str) -> ApiError:
    """The answer to an update the process refused or failed."""
    cause = error.cause
    if isinstance(cause, (CancelledError, TerminatedError)):
        return ApiError(Refusal.FINISHED, f"the process of {subject} ended before it answered")
    if not isinstance(cause, ApplicationError):
        return internal_error(error, f"an update of {subject}")
    code = refusal_of(cause.type) or (LEGACY_REFUSALS.get(cause.type) if cause.type else None)
    if code is not None:
        return ApiError(code, cause.message)
    if cause.type == "RuntimeError" and cause.message == _UNDECODABLE:
        # The payload is not the update's model: the cause says which field.
        reason = cause.cause
        detail = f"{_UNDECODABLE}: {reason}" if reason is not None else _UNDECODABLE
        return ApiError(Refusal.INVALID_REQUEST, detail)
    if cause.type is not None and _python_bug(cause.type):
        return internal_error(error, f"an update of {subject}")
    return ApiError(GatewayCode.REFUSED, cause.message)


def process_busy(subject: str) -> ApiError:
    return ApiError(
        GatewayCode.PROCESS_TIMEOUT,
        f"the process of {subject} did not answer in time and may still act on the request; "
        "try again later (sent again with the same Idempotency-Key, an update gets the first "
        "one's answer instead of acting twice)",
    )


def process_error(error: BaseException, subject: str) -> ApiError:
    """The answer to a call on the process of `subject` (an update, a query, a
    signal) that raised `error`: a refusal with its code, a missing process
    404, a process or Temporal that does not answer in time 503, and
    anything else a 500."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, WorkflowUpdateFailedError):
        return refusal_error(error, subject)
    if isinstance(error, WorkflowUpdateRPCTimeoutOrCancelledError):
        # The update waits in the process and may still run: a retry with the
        # same Idempotency-Key (the same update id) gets its result.
        return process_busy(subject)
    if isinstance(error, RPCError):
        if error.status == RPCStatusCode.NOT_FOUND:
            return ApiError(Refusal.NOT_FOUND, f"no running process for {subject}")
        if error.status in TRANSIENT_RPC_STATUSES:
            return process_busy(subject)
    return internal_error(error, f"a call on the process of {subject}")


# ----- the app's handlers ---------------------------------------------------


async def api_error_response(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


# The codes of the errors the framework itself raises (no route, no method).
_FRAMEWORK_CODES: dict[int, ErrorCode] = {
    400: GatewayCode.BAD_REQUEST,
    404: Refusal.NOT_FOUND,
    405: GatewayCode.METHOD_NOT_ALLOWED,
}


async def http_error_response(request: Request, error: Exception) -> JSONResponse:
    """An HTTPException not raised as an ApiError: the framework's own (no
    such route, method not allowed); any other is a bug of the gateway's."""
    assert isinstance(error, StarletteHTTPException)
    if isinstance(error, ApiError):
        return await api_error_response(request, error)
    code = _FRAMEWORK_CODES.get(error.status_code)
    answer = (
        ApiError(code, str(error.detail), dict(error.headers or {}))
        if code is not None
        else internal_error(error, f"{request.method} {request.url.path}")
    )
    return await api_error_response(request, answer)


async def validation_error_response(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 (each error's location, message and input) with its
    code, answerable even when the input itself cannot be encoded (a JSON
    `\\ud800` escape, a NaN)."""
    assert isinstance(error, RequestValidationError)
    answer = ApiError(Refusal.INVALID_REQUEST, jsonable_encoder(error.errors()))
    return await api_error_response(request, answer)


async def unexpected_error_response(request: Request, error: Exception) -> JSONResponse:
    """Whatever else a route raised: a 500 internal_error, logged under its id."""
    answer = internal_error(error, f"{request.method} {request.url.path}")
    return await api_error_response(request, answer)
