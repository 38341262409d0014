"""The upstream HTTP API: start processes idempotently, read their status.

A start carries an `Idempotency-Key` header. A key names one request of the
API key that sent it: a repeat (same key, same body) returns the process the
first one started and never starts a second; the same key with another body
is refused (409 `idempotency_key_reused`); and a process is never answered to
a request that did not start it (409 `process_exists`, e.g. a second
onboarding of a customer). Where a process's id is the request's own (a card
issue, an FX conversion, a ping), it is a digest of the API key's id and the
Idempotency-Key, so no two keys share one.

A key bound to customers acts only on theirs: each route's access is one of
its dependencies (starters/gateway/access.py), program-wide or resolving the
customer the route acts on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.api_keys import (
    SCOPE_ADMIN,
    SCOPE_OPERATIONS,
    SCOPE_PROCESSES_READ,
    SCOPE_PROCESSES_START,
)
from schemas.billing import BillingInput, BillingRunInput, BillingStatus, Period, Statement
from schemas.cards import (
    CardInput,
    CardIssueInput,
    ExceptionDecision,
    RescheduleDelivery,
    SpendingLimits,
)
from schemas.customers import (
    CUSTOMER_ID_CHARS_MAX,
    CUSTOMER_ID_PATTERN,
    CustomerId,
    CustomerProfile,
)
from schemas.disputes import (
    DisputeInput,
    DisputeRequest,
    DisputeStatusView,
    DisputeSubmission,
    EvidenceItem,
    OperatorAction,
    WithdrawRequest,
)
from schemas.edge import DAY_MAX, DAY_MIN, EdgeModel
from schemas.fx import (
    FxConversionInput,
    FxConversionRequest,
    FxConversionResult,
    FxQuoteOffer,
    FxStatus,
)
from schemas.health import PingInput
from schemas.issuer import Address
from schemas.money import Currency
from schemas.onboarding import DocumentSpec, KycReview, OnboardingInput, Resubmission
from schemas.search import CUSTOMER_ID
from schemas.task_queues import TaskQueues
from schemas.topup import TopupReview, TopupSource, TopupStatus
from starters.billing import billing_status, read_statement, start_billing, statements_dir
from starters.billing import with_queues as with_billing_queues
from starters.cards import (
    activate,
    card_status,
    change_card,
    reschedule,
    resolve_exception,
    set_limits,
)
from starters.dispute import add_evidence as add_dispute_evidence
from starters.dispute import operator_action as dispute_operator_action
from starters.dispute import status as dispute_status
from starters.dispute import submit as submit_dispute
from starters.dispute import with_queues as with_dispute_queues
from starters.dispute import withdraw as withdraw_dispute
from starters.fx import cancel as cancel_fx
from starters.fx import confirm as confirm_fx
from starters.fx import status as fx_status
from starters.fx import wait_quote as wait_fx_quote
from starters.fx import with_queues as with_fx_queues
from starters.gateway import access
from starters.gateway.access import CUSTOMER_NOT_ALLOWED, PROGRAM_WIDE_ROUTE
from starters.gateway.auth import AUTH_RESPONSES, requires
from starters.onboarding import resubmit, review, with_queues
from starters.topup import review as review_topup
from starters.topup import status as topup_status
from workflows.billing import (
    BILLING_RUN_WORKFLOW,
    billing_run_start_metadata,
    billing_run_workflow_id,
    billing_workflow_id,
)
from workflows.cards import (
    CARD_ISSUE_WORKFLOW,
    card_issue_start_metadata,
    card_issue_workflow_id,
    card_workflow_id,
)
from workflows.dispute import DISPUTE_WORKFLOW, dispute_start_metadata, dispute_workflow_id
from workflows.fx import FX_WORKFLOW, fx_start_metadata, fx_workflow_id
from workflows.health import PING_WORKFLOW, ping_start_metadata, ping_workflow_id
from workflows.metadata import StartMetadata
from workflows.onboarding import (
    ONBOARDING_WORKFLOW,
    onboarding_start_metadata,
    onboarding_workflow_id,
)
from workflows.topup import topup_workflow_id


class ErrorBody(BaseModel):
    detail: str
    code: str | None = Field(
        default=None,
        description="Set where a client may act on the kind of refusal: "
        "idempotency_key_reused, process_exists, process_timeout, customer_not_allowed, "
        "program_wide_route",
    )


# The refusals a client can tell apart by `code`.
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
PROCESS_EXISTS = "process_exists"
PROCESS_TIMEOUT = "process_timeout"


class ApiError(HTTPException):
    """A refusal with a `code` next to its `detail` (see ErrorBody)."""

    def __init__(
        self, status_code: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.code = code


def _encodable(value: Any) -> Any:
    """`value` as JSON can carry it: a lone surrogate shown as its escape, a
    NaN or an infinity (which Python's json reads) as its name."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    return value


async def validation_error_response(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 (each error's location, message and input), answerable
    even when the input itself cannot be encoded (a JSON `\\ud800` escape, a
    NaN)."""
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": _encodable(jsonable_encoder(error.errors()))}, status_code=422)


async def api_error_response(request: Request, error: Exception) -> JSONResponse:
    """The gateway's handler of ApiError (registered by the app)."""
    assert isinstance(error, ApiError)
    return JSONResponse(
        ErrorBody(detail=str(error.detail), code=error.code).model_dump(),
        status_code=error.status_code,
        headers=error.headers,
    )


router = APIRouter(
    prefix="/v1",
    tags=["processes"],
    # Every route takes an API key with the one scope it names (starters/gateway/auth.py).
    responses={code: {**answer, "model": ErrorBody} for code, answer in AUTH_RESPONSES.items()},
)

IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:-]+$"
IDEMPOTENCY_KEY_CHARS_MAX = 100
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_CHARS_MAX,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Your unique key for this request; repeats return the same process",
    ),
]
OptionalIdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_CHARS_MAX,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Your unique key for this request: a repeat (after a 503, say) is "
        "answered what the first one did, and the process acts on it once",
    ),
]


@dataclass(frozen=True)
class Idempotency:
    """A request's Idempotency-Key, scoped to the API key that sent it."""

    api_key_id: str
    key: str

    def digest(self, *scope: str) -> str:
        """64 hex digits (SHA-256) of the API key's id, the Idempotency-Key and
        `scope`: two different requests never get the same one, and it fits
        every process's request id (`^[A-Za-z0-9_.-]{1,64}$`)."""
        # Neither an API key id nor an Idempotency-Key can hold a newline.
        material = "\n".join((self.api_key_id, self.key, *scope))
        return hashlib.sha256(material.encode()).hexdigest()

    @property
    def request_id(self) -> str:
        """The id of the process this request starts, where the process is the request's own."""
        return self.digest()

    def update_id(self, route: str) -> str:
        """The Temporal update id of this request to a process: a retry with the
        same Idempotency-Key attaches to the same update (and its result)."""
        return f"{route}/{self.digest(route)}"


def _api_key_id(request: Request) -> str:
    key_id: str | None = getattr(request.state, "api_key_id", None)
    # Every /v1 route authenticates before its parameters are read (auth.py).
    assert key_id, "the request was not authenticated"
    return key_id


async def _start_key(request: Request, key: IdempotencyKey) -> Idempotency:
    return Idempotency(_api_key_id(request), key)


async def _update_key(request: Request, key: OptionalIdempotencyKey = None) -> Idempotency | None:
    return None if key is None else Idempotency(_api_key_id(request), key)


# A start's Idempotency-Key (required) and an update's (optional).
StartKey = Annotated[Idempotency, Depends(_start_key)]
UpdateKey = Annotated[Idempotency | None, Depends(_update_key)]


# ----- the customers a key acts for (starters/gateway/access.py) ----------------


def _require_customer(request: Request, customer_id: str | None, subject: str) -> None:
    """403 unless the key acts for `customer_id`: the same answer whether
    `subject` is another customer's or does not exist."""
    if not access.principal(request).acts_for(customer_id):
        raise ApiError(
            403,
            CUSTOMER_NOT_ALLOWED,
            f"this API key acts only for its own customers, and {subject} is not known as "
            "one of theirs",
        )


async def _require_owner(
    request: Request, subject: str, owner: Callable[[], Awaitable[str | None]]
) -> None:
    """A bound key must act for the customer `owner` reads from durable data."""
    if access.principal(request).bound:
        _require_customer(request, await owner(), subject)


async def _require_process_owner(request: Request, workflow_id: str, subject: str) -> None:
    client: Client = request.app.state.client
    try:
        await _require_owner(request, subject, lambda: access.process_customer(client, workflow_id))
    except RPCError as error:
        raise _process_error(error, subject) from None


@access.classified(access.PROGRAM_WIDE)
async def program_wide(request: Request) -> None:
    """A route acting on the whole program: refused to a key bound to customers."""
    if access.principal(request).bound:
        raise ApiError(
            403,
            PROGRAM_WIDE_ROUTE,
            "this API key acts only for its own customers, and this route acts on the whole "
            "program",
        )


# After a program-wide route's scope: `dependencies=[*requires(SCOPE), PROGRAM_WIDE]`.
PROGRAM_WIDE = Depends(program_wide)
STATUS_QUERY_TIMEOUT = timedelta(seconds=2)
PING_API_EXECUTION_TIMEOUT = timedelta(minutes=5)


class StartPing(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    requested_by: str = Field(min_length=1, max_length=200, description="Who asks")


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


class ProcessStatus(BaseModel):
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    stage: str | None = None
    # The process's own status query, as it answers it (running processes only).
    details: dict[str, Any] | None = None
    start_time: datetime
    close_time: datetime | None = None


# How every start route answers besides 202 (documented for the OpenAPI contract).
START_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ProcessRef, "description": "This Idempotency-Key already started it"},
    409: {
        "model": ErrorBody,
        "description": "This Idempotency-Key came with another body (idempotency_key_reused), "
        "or another request started this process (process_exists)",
    },
}
# A route that awaits a running process (`_steer`): it may be missing (404),
# refuse (409), or Temporal may be unreachable (503); a read cannot refuse.
STEER_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    503: {"model": ErrorBody},
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    503: {"model": ErrorBody},
}


def _request_hash(route: str, body: BaseModel | None, *path: str) -> bytes:
    payload = None if body is None else body.model_dump(mode="json")
    canonical = json.dumps([route, *path, payload], sort_keys=True)
    return hashlib.sha256(canonical.encode()).digest()


# The memo a process started through the API carries: which request started
# it, so a start that finds it running can tell its own earlier attempt
# (answered as a replay) from someone else's process (refused).
API_REQUEST_MEMO = "cardflow-api-request"

_RECALL_SQL = (
    "SELECT api_key_id, request_hash, workflow_id, run_id FROM gateway_api_requests"
    " WHERE route = $2 AND idempotency_key = $3 AND api_key_id IN ($1, '')"
    # A request of this API key first; one remembered before requests were
    # scoped to API keys (api_key_id '') only failing that.
    " ORDER BY api_key_id DESC LIMIT 1"
)


@dataclass(frozen=True)
class Remembered:
    request_hash: bytes
    workflow_id: str
    run_id: str


async def recall(
    pool: asyncpg.Pool, idempotency: Idempotency, route: str, request_hash: bytes
) -> Remembered | None:
    """What this Idempotency-Key of this API key asked on `route` before, if
    anything; or, remembered before keys were scoped to API keys, this same
    request (its process was started under the unscoped key, before an upgrade)."""
    row = await pool.fetchrow(_RECALL_SQL, idempotency.api_key_id, route, idempotency.key)
    if row is None:
        return None
    known = Remembered(bytes(row["request_hash"]), row["workflow_id"], row["run_id"])
    if not row["api_key_id"] and known.request_hash != request_hash:
        return None  # another request, of whichever API key
    return known


async def remember(
    pool: asyncpg.Pool,
    idempotency: Idempotency,
    route: str,
    request_hash: bytes,
    workflow_id: str,
) -> Remembered:
    """Remember the request before acting on it (a concurrent first sending
    wins) and answer what is remembered: a key is taken by its first request."""
    await pool.execute(
        "INSERT INTO gateway_api_requests (api_key_id, route, idempotency_key, request_hash,"
        " workflow_id, run_id) VALUES ($1, $2, $3, $4, $5, '') ON CONFLICT DO NOTHING",
        idempotency.api_key_id,
        route,
        idempotency.key,
        request_hash,
        workflow_id,
    )
    known = await recall(pool, idempotency, route, request_hash)
    assert known is not None, "this API key's own row is there, inserted or found"
    return known


def _key_reused(idempotency: Idempotency) -> ApiError:
    return ApiError(
        409,
        IDEMPOTENCY_KEY_REUSED,
        f"Idempotency-Key {idempotency.key} was already used with a different request",
    )


def require_same_request(
    known: Remembered, request_hash: bytes, idempotency: Idempotency
) -> Remembered:
    """The remembered request, if it is this one; else the 409 of a reused key."""
    if known.request_hash != request_hash:
        raise _key_reused(idempotency)
    return known


async def start_idempotently(
    request: Request,
    response: Response,
    *,
    route: str,
    idempotency: Idempotency,
    body: BaseModel,
    workflow: str,
    workflow_id: str,
    argument: Any,
    execution_timeout: timedelta | None = None,
    metadata: StartMetadata | None = None,
    customer_id: str | None = None,
) -> ProcessRef:
    """Start the process of this request, or answer the one a first sending of
    it started; refuse a reused key (another body) and a process that
    another request started (a second onboarding of one customer).

    A customer's process carries its `CustomerId` search attribute from its
    start (the process keeps it too), so a key bound to that customer can
    reach it at once."""
    state: Any = request.app.state
    pool: asyncpg.Pool = state.pool
    client: Client = state.client
    request_hash = _request_hash(route, body)
    known = await recall(pool, idempotency, route, request_hash)
    if known is None:
        known = await remember(pool, idempotency, route, request_hash, workflow_id)
    require_same_request(known, request_hash, idempotency)
    replayed = bool(known.run_id)
    if not replayed:
        # This request's first sending, or one that stopped before it knew the run.
        started_by = {
            "api_key_id": idempotency.api_key_id,
            "route": route,
            "idempotency_key": idempotency.key,
            "request_sha256": request_hash.hex(),
        }
        try:
            handle = await client.start_workflow(
                workflow,
                argument,
                id=known.workflow_id,
                task_queue=state.queues.workflows,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                execution_timeout=execution_timeout,
                memo={API_REQUEST_MEMO: started_by},
                search_attributes=(
                    None
                    if customer_id is None
                    else TypedSearchAttributes([SearchAttributePair(CUSTOMER_ID, customer_id)])
                ),
                static_summary=metadata.summary if metadata else None,
                static_details=metadata.details if metadata else None,
            )
            run_id = handle.result_run_id or ""
        except WorkflowAlreadyStartedError:
            description = await client.get_workflow_handle(known.workflow_id).describe()
            if await description.memo_value(API_REQUEST_MEMO, None) != started_by:
                raise ApiError(
                    409,
                    PROCESS_EXISTS,
                    f"{known.workflow_id} already exists and another request started it",
                ) from None
            # A concurrent or earlier sending of this request started it.
            replayed = True
            run_id = description.run_id
        await pool.execute(
            "UPDATE gateway_api_requests SET run_id = $4"
            " WHERE api_key_id = $1 AND route = $2 AND idempotency_key = $3",
            idempotency.api_key_id,
            route,
            idempotency.key,
            run_id,
        )
        known = Remembered(known.request_hash, known.workflow_id, run_id)
    response.status_code = 200 if replayed else 202
    return ProcessRef(
        workflow_id=known.workflow_id,
        run_id=known.run_id,
        process=workflow,
        replayed=replayed,
        status_url=f"/v1/processes/{known.workflow_id}",
    )


@router.post(
    "/pings",
    dependencies=[*requires(SCOPE_PROCESSES_START), PROGRAM_WIDE],
    status_code=202,
    response_model=ProcessRef,
    responses=START_RESPONSES,
    summary="Start a health check through every task queue",
)
async def start_ping(
    request: Request, response: Response, body: StartPing, idempotency: StartKey
) -> ProcessRef:
    queues: TaskQueues = request.app.state.queues
    ping = PingInput(
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        requested_by=body.requested_by,
    )
    return await start_idempotently(
        request,
        response,
        route="pings",
        idempotency=idempotency,
        body=body,
        workflow=PING_WORKFLOW,
        workflow_id=ping_workflow_id(f"api-{idempotency.request_id}"),
        argument=ping,
        execution_timeout=PING_API_EXECUTION_TIMEOUT,
        metadata=ping_start_metadata(ping),
    )


WorkflowIdPath = Annotated[str, Path(min_length=1, max_length=300)]


@access.customer_scoped("the process's CustomerId search attribute")
async def _own_process(request: Request, workflow_id: WorkflowIdPath) -> str:
    await _require_process_owner(request, workflow_id, f"process {workflow_id}")
    return workflow_id


OwnProcessId = Annotated[str, Depends(_own_process)]


@router.get(
    "/processes/{workflow_id:path}",
    dependencies=requires(SCOPE_PROCESSES_READ),
    response_model=ProcessStatus,
    responses={404: {"model": ErrorBody}},
    summary="A process's status",
)
async def process_status(request: Request, workflow_id: OwnProcessId) -> ProcessStatus:
    client: Client = request.app.state.client
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise HTTPException(status_code=404, detail=f"no process {workflow_id}") from None
        raise
    stage: str | None = None
    details: dict[str, Any] | None = None
    if description.status == WorkflowExecutionStatus.RUNNING:
        try:
            answer = await handle.query("status", rpc_timeout=STATUS_QUERY_TIMEOUT)
        except Exception:  # noqa: BLE001 - a process without the query still has a status
            answer = None
        if isinstance(answer, str):
            stage = answer
        elif isinstance(answer, dict):
            details = answer
            found = answer.get("stage") or answer.get("state")
            stage = str(found) if found is not None else None
    return ProcessStatus(
        workflow_id=workflow_id,
        run_id=description.run_id,
        workflow_type=description.workflow_type,
        status=description.status.name if description.status else "UNKNOWN",
        stage=stage,
        details=details,
        start_time=description.start_time,
        close_time=description.close_time,
    )


class StartOnboarding(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    profile: CustomerProfile
    documents: list[DocumentSpec] = Field(min_length=1, max_length=10)


@access.customer_scoped("the body's profile.customer_id")
async def _own_onboarding(request: Request, body: StartOnboarding) -> StartOnboarding:
    customer_id = body.profile.customer_id
    _require_customer(request, customer_id, f"customer {customer_id}")
    return body


@router.post(
    "/onboardings",
    dependencies=requires(SCOPE_PROCESSES_START),
    status_code=202,
    response_model=ProcessRef,
    responses=START_RESPONSES,
    summary="Onboard a customer: wallets and KYC",
)
async def start_onboarding_route(
    request: Request,
    response: Response,
    body: Annotated[StartOnboarding, Depends(_own_onboarding)],
    idempotency: StartKey,
) -> ProcessRef:
    queues: TaskQueues = request.app.state.queues
    onboarding = with_queues(
        OnboardingInput(profile=body.profile, documents=body.documents), queues
    )
    return await start_idempotently(
        request,
        response,
        route="onboardings",
        idempotency=idempotency,
        body=body,
        workflow=ONBOARDING_WORKFLOW,
        workflow_id=onboarding_workflow_id(body.profile.customer_id),
        argument=onboarding,
        metadata=onboarding_start_metadata(onboarding),
        customer_id=body.profile.customer_id,
    )


def _process_error(error: RPCError, customer_id: str) -> HTTPException:
    """An HTTP answer for Temporal's refusal to reach a customer's onboarding."""
    if error.status == RPCStatusCode.NOT_FOUND:
        return HTTPException(status_code=404, detail=f"no running process for {customer_id}")
    if error.status in (
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.CANCELLED,
    ):
        return _process_busy(customer_id)
    return HTTPException(status_code=409, detail=f"the process refused: {error.message}")


# A client told 503 tries again after this long.
PROCESS_RETRY_AFTER_SECONDS = 5


def _process_busy(subject: str) -> ApiError:
    return ApiError(
        503,
        PROCESS_TIMEOUT,
        f"the process of {subject} did not answer in time and may still act on the request; "
        "try again later (sent again with the same Idempotency-Key, an update gets the first "
        "one's answer instead of acting twice)",
        headers={"Retry-After": str(PROCESS_RETRY_AFTER_SECONDS)},
    )


CustomerIdPath = Annotated[str, Path(pattern=CUSTOMER_ID_PATTERN, max_length=CUSTOMER_ID_CHARS_MAX)]


@access.customer_scoped("the path's customer_id")
async def _own_customer(request: Request, customer_id: CustomerIdPath) -> str:
    _require_customer(request, customer_id, f"customer {customer_id}")
    return customer_id


OwnCustomerId = Annotated[str, Depends(_own_customer)]


@router.post(
    "/onboardings/{customer_id}/review",
    dependencies=[*requires(SCOPE_OPERATIONS), PROGRAM_WIDE],
    responses=STEER_RESPONSES,
    summary="An operator decides an onboarding on hold",
)
async def review_onboarding_route(
    request: Request, customer_id: CustomerIdPath, body: KycReview, idempotency: UpdateKey
) -> dict[str, str]:
    client: Client = request.app.state.client
    send = await update_options(
        request, idempotency, "onboarding-review", onboarding_workflow_id(customer_id), body
    )
    return {
        "result": await _steer(
            review(
                client,
                customer_id,
                body,
                update_id=send.update_id,
                rpc_timeout=send.rpc_timeout,
            ),
            customer_id,
        )
    }


@router.post(
    "/onboardings/{customer_id}/documents",
    dependencies=requires(SCOPE_PROCESSES_START),
    status_code=202,
    responses={404: {"model": ErrorBody}},
    summary="The customer resubmits documents after a RETRY verdict",
)
async def resubmit_documents_route(
    request: Request, customer_id: OwnCustomerId, body: Resubmission
) -> dict[str, str]:
    client: Client = request.app.state.client
    try:
        await resubmit(client, customer_id, body)
    except RPCError as error:
        raise _process_error(error, customer_id) from None
    return {"result": "documents received"}


class IssueCard(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    kind: Literal["virtual", "physical"]
    currency: Currency = Currency.USD
    address: Address


class CardAction(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["freeze", "unfreeze", "close", "report_lost", "report_stolen"]
    reason: str = Field(default="customer request", min_length=1, max_length=200)


CardIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]


@access.customer_scoped("the body's customer_id")
async def _own_card_issue_body(request: Request, body: IssueCard) -> IssueCard:
    _require_customer(request, body.customer_id, f"customer {body.customer_id}")
    return body


@access.customer_scoped("the cards table, by card_id")
async def _own_card(request: Request, card_id: CardIdPath) -> str:
    pool: asyncpg.Pool = request.app.state.pool
    await _require_owner(request, f"card {card_id}", lambda: access.card_customer(pool, card_id))
    return card_id


OwnCardId = Annotated[str, Depends(_own_card)]


@router.post(
    "/cards",
    dependencies=requires(SCOPE_PROCESSES_START),
    status_code=202,
    response_model=ProcessRef,
    responses=START_RESPONSES,
    summary="Issue a card to an approved customer",
)
async def issue_card_route(
    request: Request,
    response: Response,
    body: Annotated[IssueCard, Depends(_own_card_issue_body)],
    idempotency: StartKey,
) -> ProcessRef:
    queues: TaskQueues = request.app.state.queues
    issue = CardIssueInput(
        request_id=idempotency.request_id,
        customer_id=body.customer_id,
        kind=body.kind,
        currency=body.currency,
        address=body.address,
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )
    started = await start_idempotently(
        request,
        response,
        route="cards",
        idempotency=idempotency,
        body=body,
        workflow=CARD_ISSUE_WORKFLOW,
        workflow_id=card_issue_workflow_id(issue.request_id),
        argument=issue,
        metadata=card_issue_start_metadata(issue),
        customer_id=body.customer_id,
    )
    # A request remembered before ids were digests has the id it was started with.
    started.request_id = started.workflow_id.removeprefix(card_issue_workflow_id(""))
    return started


@router.post(
    "/cards/{card_id}/actions",
    dependencies=requires(SCOPE_PROCESSES_START),
    responses=STEER_RESPONSES,
    summary="Freeze, unfreeze, close, or report a card lost or stolen",
)
async def card_action_route(
    request: Request, card_id: OwnCardId, body: CardAction, idempotency: UpdateKey
) -> dict[str, str]:
    client: Client = request.app.state.client
    send = await update_options(
        request, idempotency, "card-actions", card_workflow_id(card_id), body
    )
    changed = change_card(
        client,
        card_id,
        body.action,
        body.reason,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return {"result": await _steer(changed, card_id)}


RequestIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


@access.customer_scoped("the card issue process's CustomerId search attribute")
async def _own_card_issue(request: Request, request_id: RequestIdPath) -> str:
    workflow_id = card_issue_workflow_id(request_id)
    await _require_process_owner(request, workflow_id, f"card issue {request_id}")
    return request_id


OwnCardIssueId = Annotated[str, Depends(_own_card_issue)]


T = TypeVar("T")


def _refused(error: WorkflowUpdateFailedError) -> HTTPException:
    return HTTPException(status_code=409, detail=str(error.cause))


async def _steer(
    call: Awaitable[T],
    subject: str,
    refused: Callable[[WorkflowUpdateFailedError], HTTPException] = _refused,
) -> T:
    """Await an update or query on a process: a refusal is a 409 with the
    process's reason, a missing process a 404; an unreachable Temporal, or a
    process that does not take the update in time (its workers down or far
    behind), a 503 with Retry-After."""
    try:
        return await call
    except WorkflowUpdateFailedError as error:
        raise refused(error) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        # The update waits in the process and may still run: a retry with the
        # same Idempotency-Key (the same update id) gets its result.
        raise _process_busy(subject) from None
    except RPCError as error:
        raise _process_error(error, subject) from None


@dataclass(frozen=True)
class UpdateOptions:
    """How a route sends its update: under which update id, waiting how long."""

    update_id: str | None
    rpc_timeout: timedelta


async def update_options(
    request: Request,
    idempotency: Idempotency | None,
    route: str,
    workflow_id: str,
    body: BaseModel | None = None,
) -> UpdateOptions:
    """With an Idempotency-Key, the update's id is the request's own, so a retry
    attaches to the first sending's update and answers its result instead of
    running again; the key is taken by its first request (the same key for
    another process or body is a 409). Without one, every call is a new update."""
    settings = request.app.state.settings
    rpc_timeout = timedelta(seconds=settings.api_update_timeout_seconds)
    if idempotency is None:
        return UpdateOptions(None, rpc_timeout)
    pool: asyncpg.Pool = request.app.state.pool
    request_hash = _request_hash(route, body, workflow_id)
    known = await recall(pool, idempotency, route, request_hash)
    if known is None:
        known = await remember(pool, idempotency, route, request_hash, workflow_id)
    require_same_request(known, request_hash, idempotency)
    return UpdateOptions(idempotency.update_id(route), rpc_timeout)


async def _update_process(call: Awaitable[Any], subject: str) -> dict[str, str]:
    return {"result": str(await _steer(call, subject))}


@router.post(
    "/card-issues/{request_id}/reschedule",
    dependencies=requires(SCOPE_PROCESSES_START),
    responses=STEER_RESPONSES,
    summary="Move a physical card's delivery date, until it ships",
)
async def reschedule_route(
    request: Request, request_id: OwnCardIssueId, body: RescheduleDelivery, idempotency: UpdateKey
) -> dict[str, str]:
    send = await update_options(
        request, idempotency, "card-issue-reschedule", card_issue_workflow_id(request_id), body
    )
    rescheduled = reschedule(
        request.app.state.client,
        request_id,
        body,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return await _update_process(rescheduled, request_id)


@router.post(
    "/card-issues/{request_id}/activate",
    dependencies=requires(SCOPE_PROCESSES_START),
    responses=STEER_RESPONSES,
    summary="Activate a delivered physical card (a replacement by its own card id)",
)
async def activate_route(
    request: Request, request_id: OwnCardIssueId, idempotency: UpdateKey
) -> dict[str, str]:
    send = await update_options(
        request, idempotency, "card-issue-activate", card_issue_workflow_id(request_id)
    )
    activated = activate(
        request.app.state.client,
        request_id,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return await _update_process(activated, request_id)


@router.put(
    "/cards/{card_id}/limits",
    dependencies=requires(SCOPE_PROCESSES_START),
    responses=STEER_RESPONSES,
    summary="Set a card's spending limits",
)
async def limits_route(
    request: Request, card_id: OwnCardId, body: SpendingLimits, idempotency: UpdateKey
) -> SpendingLimits:
    send = await update_options(
        request, idempotency, "card-limits", card_workflow_id(card_id), body
    )
    stored = set_limits(
        request.app.state.client,
        card_id,
        body,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return await _steer(stored, card_id)


@router.get(
    "/cards/{card_id}",
    dependencies=requires(SCOPE_PROCESSES_READ),
    responses=READ_RESPONSES,
    summary="A card's state: limits, open authorizations and holds, exceptions",
)
async def card_route(request: Request, card_id: OwnCardId) -> CardInput:
    return await _steer(card_status(request.app.state.client, card_id), card_id)


@router.post(
    "/cards/{card_id}/exceptions",
    dependencies=[*requires(SCOPE_OPERATIONS), PROGRAM_WIDE],
    responses=STEER_RESPONSES,
    summary="Decide an exception: charge the wallet or write the amount off to suspense",
)
async def card_exception_route(
    request: Request, card_id: CardIdPath, body: ExceptionDecision, idempotency: UpdateKey
) -> dict[str, str]:
    send = await update_options(
        request, idempotency, "card-exceptions", card_workflow_id(card_id), body
    )
    resolved = resolve_exception(
        request.app.state.client,
        card_id,
        body,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return await _update_process(resolved, card_id)


# ----- FX conversions `fx/{request_id}` ---------------------------------------


def _fx_refusal(error: WorkflowUpdateFailedError) -> HTTPException:
    """409 with the process's reason ("declined: insufficient funds ...")."""
    cause = error.cause
    return HTTPException(status_code=409, detail=getattr(cause, "message", None) or str(cause))


class FxQuoteStarted(ProcessRef):
    offer: FxQuoteOffer = Field(description="Confirm it before offer.expires_at")


@access.customer_scoped("the body's customer_id")
async def _own_fx_body(request: Request, body: FxConversionRequest) -> FxConversionRequest:
    _require_customer(request, body.customer_id, f"customer {body.customer_id}")
    return body


@access.customer_scoped("the FX process's CustomerId search attribute")
async def _own_fx(request: Request, request_id: RequestIdPath) -> str:
    workflow_id = fx_workflow_id(request_id)
    await _require_process_owner(request, workflow_id, f"FX conversion {request_id}")
    return request_id


OwnFxId = Annotated[str, Depends(_own_fx)]


@router.post(
    "/fx/quotes",
    dependencies=requires(SCOPE_PROCESSES_START),
    status_code=202,
    response_model=FxQuoteStarted,
    responses={
        **START_RESPONSES,
        409: {"model": ErrorBody, "description": "Refused (the reason), or a reused key"},
        503: {"model": ErrorBody},
    },
    summary="Start a conversion and answer its firm quote (offer.request_id names it)",
)
async def fx_quote_route(
    request: Request,
    response: Response,
    body: Annotated[FxConversionRequest, Depends(_own_fx_body)],
    idempotency: StartKey,
) -> FxQuoteStarted:
    conversion = with_fx_queues(
        FxConversionInput(request_id=idempotency.request_id, **body.model_dump()),
        request.app.state.queues,
    )
    started = await start_idempotently(
        request,
        response,
        route="fx-quotes",
        idempotency=idempotency,
        body=body,
        workflow=FX_WORKFLOW,
        workflow_id=fx_workflow_id(conversion.request_id),
        argument=conversion,
        metadata=fx_start_metadata(conversion),
        customer_id=body.customer_id,
    )
    # A request remembered before ids were digests has the id it was started with.
    started.request_id = started.workflow_id.removeprefix(fx_workflow_id(""))
    offer = await _steer(
        wait_fx_quote(request.app.state.client, started.request_id),
        started.request_id,
        _fx_refusal,
    )
    return FxQuoteStarted(**started.model_dump(), offer=offer)


@router.post(
    "/fx/{request_id}/confirm",
    dependencies=requires(SCOPE_PROCESSES_START),
    response_model=FxConversionResult,
    responses=STEER_RESPONSES,
    summary="Convert at the quote; 409 with the reason when expired, cancelled or declined",
)
async def fx_confirm_route(request: Request, request_id: OwnFxId) -> FxConversionResult:
    return await _steer(confirm_fx(request.app.state.client, request_id), request_id, _fx_refusal)


@router.post(
    "/fx/{request_id}/cancel",
    dependencies=requires(SCOPE_PROCESSES_START),
    responses=STEER_RESPONSES,
    summary="Drop an unconfirmed quote; nothing is converted",
)
async def fx_cancel_route(request: Request, request_id: OwnFxId) -> dict[str, str]:
    return {
        "result": await _steer(
            cancel_fx(request.app.state.client, request_id), request_id, _fx_refusal
        )
    }


@router.get(
    "/fx/{request_id}",
    dependencies=requires(SCOPE_PROCESSES_READ),
    response_model=FxStatus,
    responses=READ_RESPONSES,
    summary="A conversion's stage, quote, amounts and expiry",
)
async def fx_status_route(request: Request, request_id: OwnFxId) -> FxStatus:
    return await _steer(fx_status(request.app.state.client, request_id), request_id)


# ----- Top-ups `topup/{source}/{external_ref}` ----------------------------------

ExternalRefPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


@dataclass(frozen=True)
class TopupRef:
    source: TopupSource
    external_ref: str


@access.customer_scoped("the top-up process's CustomerId search attribute")
async def _own_topup(
    request: Request, source: TopupSource, external_ref: ExternalRefPath
) -> TopupRef:
    workflow_id = topup_workflow_id(source, external_ref)
    await _require_process_owner(request, workflow_id, f"top-up {source}/{external_ref}")
    return TopupRef(source, external_ref)


@router.get(
    "/topups/{source}/{external_ref}",
    dependencies=requires(SCOPE_PROCESSES_READ),
    response_model=TopupStatus,
    responses=READ_RESPONSES,
    summary="A top-up's stage, amounts, confirmations and pending review",
)
async def topup_status_route(
    request: Request, topup: Annotated[TopupRef, Depends(_own_topup)]
) -> TopupStatus:
    source, external_ref = topup.source, topup.external_ref
    return await _steer(
        topup_status(request.app.state.client, source, external_ref), f"{source}/{external_ref}"
    )


@router.post(
    "/topups/{source}/{external_ref}/review",
    dependencies=[*requires(SCOPE_OPERATIONS), PROGRAM_WIDE],
    responses=STEER_RESPONSES,
    summary="An operator approves (assigning an unmatched payment) or rejects a top-up",
)
async def topup_review_route(
    request: Request,
    source: TopupSource,
    external_ref: ExternalRefPath,
    body: TopupReview,
    idempotency: UpdateKey,
) -> dict[str, str]:
    send = await update_options(
        request, idempotency, "topup-review", topup_workflow_id(source, external_ref), body
    )
    reviewed = review_topup(
        request.app.state.client,
        source,
        external_ref,
        body,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return await _update_process(reviewed, f"{source}/{external_ref}")


# ----- Fees and statements `billing/{customer_id}/{period}` ---------------------

PeriodPath = Annotated[Period, Path(description="The month, YYYY-MM")]


@router.post(
    "/billing/{customer_id}/{period}",
    dependencies=requires(SCOPE_ADMIN),
    status_code=202,
    response_model=ProcessRef,
    responses={200: {"model": ProcessRef, "description": "This period was billed already"}},
    summary="Bill a customer's month (a past one too): card fees, then the statement",
)
async def billing_start_route(
    request: Request, response: Response, customer_id: OwnCustomerId, period: PeriodPath
) -> ProcessRef:
    # The process id is the period's: a repeat finds the first process, so no
    # Idempotency-Key is needed and the same period never charges twice. A
    # month not over is refused: billed early, it would pre-empt its real run.
    from schemas.periods import PeriodNotEnded

    settings = request.app.state.settings
    try:
        handle = await start_billing(
            request.app.state.client,
            request.app.state.queues,
            BillingInput(
                customer_id=customer_id,
                period=period,
                statements_dir=str(statements_dir(settings)),
            ),
        )
    except PeriodNotEnded as error:
        raise HTTPException(status_code=422, detail=error.detail("path", period)) from None
    # A new start knows its run; a handle to the existing process does not.
    replayed = handle.result_run_id is None
    if replayed:
        response.status_code = 200
        run_id = (await handle.describe()).run_id
    else:
        run_id = handle.result_run_id or ""
    return ProcessRef(
        workflow_id=billing_workflow_id(customer_id, period),
        run_id=run_id,
        process="billing",
        status_url=f"/v1/billing/{customer_id}/{period}",
        replayed=replayed,
    )


@router.post(
    "/billing-runs/{period}",
    dependencies=[*requires(SCOPE_ADMIN), PROGRAM_WIDE],
    status_code=202,
    response_model=ProcessRef,
    summary="Bill every customer with cards for a month (skips those billed already)",
)
async def billing_run_route(request: Request, period: PeriodPath) -> ProcessRef:
    from datetime import UTC

    from temporalio.common import WorkflowIDConflictPolicy

    from schemas.periods import PeriodNotEnded, refuse_unended_month

    try:
        refuse_unended_month("period", period, datetime.now(UTC))
    except PeriodNotEnded as error:
        raise HTTPException(status_code=422, detail=error.detail("path", period)) from None
    settings = request.app.state.settings
    run = with_billing_queues(
        BillingRunInput(period=period, statements_dir=str(statements_dir(settings))),
        request.app.state.queues,
    )
    workflow_id = billing_run_workflow_id(period)
    metadata = billing_run_start_metadata(run)
    handle = await request.app.state.client.start_workflow(
        BILLING_RUN_WORKFLOW,
        run,
        id=workflow_id,
        task_queue=request.app.state.queues.workflows,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=metadata.summary,
        static_details=metadata.details,
    )
    return ProcessRef(
        workflow_id=workflow_id,
        run_id=handle.result_run_id or "",
        process="billing-run",
        status_url=f"/v1/processes/{workflow_id}",
        replayed=False,
    )


@router.get(
    "/billing/{customer_id}/{period}",
    dependencies=requires(SCOPE_PROCESSES_READ),
    response_model=BillingStatus,
    responses=STEER_RESPONSES,
    summary="A billing process's stage, fees and statement paths",
)
async def billing_status_route(
    request: Request, customer_id: OwnCustomerId, period: PeriodPath
) -> BillingStatus:
    from temporalio.client import WorkflowQueryFailedError, WorkflowQueryRejectedError

    try:
        return await _steer(
            billing_status(request.app.state.client, customer_id, period),
            f"{customer_id}/{period}",
        )
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as error:
        detail = f"the process did not answer: {error}"
        raise HTTPException(status_code=409, detail=detail) from None


@router.get(
    "/statements/{customer_id}/{period}",
    dependencies=requires(SCOPE_PROCESSES_READ),
    response_model=Statement,
    responses={404: {"model": ErrorBody}},
    summary="A customer's statement of a month: balances, every transaction, fees",
)
async def statement_route(
    request: Request, customer_id: OwnCustomerId, period: PeriodPath
) -> Statement:
    statement = read_statement(request.app.state.settings, customer_id, period)
    if statement is None:
        raise HTTPException(status_code=404, detail=f"no statement for {customer_id} in {period}")
    return statement


# ----- Disputes `dispute/{transaction_id}` ------------------------------------------

TransactionIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]


@access.customer_scoped("the body's customer_id, and the card_transactions table")
async def _own_dispute_body(request: Request, body: DisputeRequest) -> DisputeRequest:
    # The transaction must be one of the key's customers' too: the body
    # names a customer, the recorded transaction says whose it is.
    _require_customer(request, body.customer_id, f"customer {body.customer_id}")
    pool: asyncpg.Pool = request.app.state.pool
    transaction_id = body.transaction_id
    await _require_owner(
        request,
        f"transaction {transaction_id}",
        lambda: access.transaction_customer(pool, transaction_id),
    )
    return body


@access.customer_scoped("the card_transactions table, by transaction_id")
async def _own_transaction(request: Request, transaction_id: TransactionIdPath) -> str:
    pool: asyncpg.Pool = request.app.state.pool
    await _require_owner(
        request,
        f"transaction {transaction_id}",
        lambda: access.transaction_customer(pool, transaction_id),
    )
    return transaction_id


OwnTransactionId = Annotated[str, Depends(_own_transaction)]


@router.post(
    "/disputes",
    dependencies=requires(SCOPE_PROCESSES_START),
    status_code=202,
    response_model=ProcessRef,
    responses=START_RESPONSES,
    summary="Dispute a cleared transaction (once per transaction); then add evidence and submit",
)
async def open_dispute_route(
    request: Request,
    response: Response,
    body: Annotated[DisputeRequest, Depends(_own_dispute_body)],
    idempotency: StartKey,
) -> ProcessRef:
    dispute = with_dispute_queues(
        DisputeInput.model_validate(body.model_dump()), request.app.state.queues
    )
    return await start_idempotently(
        request,
        response,
        route="disputes",
        idempotency=idempotency,
        body=body,
        workflow=DISPUTE_WORKFLOW,
        workflow_id=dispute_workflow_id(body.transaction_id),
        argument=dispute,
        metadata=dispute_start_metadata(dispute),
        customer_id=body.customer_id,
    )


@router.post(
    "/disputes/{transaction_id}/evidence",
    dependencies=requires(SCOPE_PROCESSES_START),
    responses=READ_RESPONSES,
    summary="Hand in one piece of evidence",
)
async def dispute_evidence_route(
    request: Request, transaction_id: OwnTransactionId, body: EvidenceItem
) -> dict[str, str]:
    try:
        await add_dispute_evidence(request.app.state.client, transaction_id, body)
    except RPCError as error:
        raise _process_error(error, transaction_id) from None
    return {"result": "evidence received"}


@router.post(
    "/disputes/{transaction_id}/submit",
    dependencies=requires(SCOPE_PROCESSES_START),
    response_model=DisputeStatusView,
    responses=STEER_RESPONSES,
    summary="Submit the evidence (or answer a representment); 409 names what is missing",
)
async def dispute_submit_route(
    request: Request,
    transaction_id: OwnTransactionId,
    body: DisputeSubmission,
    idempotency: UpdateKey,
) -> DisputeStatusView:
    send = await update_options(
        request, idempotency, "dispute-submit", dispute_workflow_id(transaction_id), body
    )
    submitted = submit_dispute(
        request.app.state.client,
        transaction_id,
        body.evidence,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return await _steer(submitted, transaction_id)


@router.post(
    "/disputes/{transaction_id}/withdraw",
    dependencies=requires(SCOPE_PROCESSES_START),
    response_model=DisputeStatusView,
    responses=STEER_RESPONSES,
    summary="Withdraw an undecided dispute; any provisional credit is taken back",
)
async def dispute_withdraw_route(
    request: Request,
    transaction_id: OwnTransactionId,
    body: WithdrawRequest,
    idempotency: UpdateKey,
) -> DisputeStatusView:
    send = await update_options(
        request, idempotency, "dispute-withdraw", dispute_workflow_id(transaction_id), body
    )
    withdrawn = withdraw_dispute(
        request.app.state.client,
        transaction_id,
        body,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return await _steer(withdrawn, transaction_id)


@router.post(
    "/disputes/{transaction_id}/operator",
    dependencies=[*requires(SCOPE_OPERATIONS), PROGRAM_WIDE],
    response_model=DisputeStatusView,
    responses=STEER_RESPONSES,
    summary="An operator credits provisionally now, or answers a representment now",
)
async def dispute_operator_route(
    request: Request,
    transaction_id: TransactionIdPath,
    body: OperatorAction,
    idempotency: UpdateKey,
) -> DisputeStatusView:
    send = await update_options(
        request, idempotency, "dispute-operator", dispute_workflow_id(transaction_id), body
    )
    acted = dispute_operator_action(
        request.app.state.client,
        transaction_id,
        body,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return await _steer(acted, transaction_id)


@router.get(
    "/disputes/{transaction_id}",
    dependencies=requires(SCOPE_PROCESSES_READ),
    response_model=DisputeStatusView,
    responses=READ_RESPONSES,
    summary="A dispute's stage, evidence, deadlines and amounts",
)
async def dispute_status_route(
    request: Request, transaction_id: OwnTransactionId
) -> DisputeStatusView:
    return await _steer(dispute_status(request.app.state.client, transaction_id), transaction_id)


# ----- Reconciliation `reconciliation/{provider}/{date}` ------------------------

from datetime import date as _date  # noqa: E402

from temporalio.client import WorkflowQueryFailedError  # noqa: E402

from schemas.periods import PeriodNotEnded  # noqa: E402
from schemas.reconciliation import (  # noqa: E402
    Decision,
    ReconciliationItem,
    ReconciliationStatus,
)
from starters.reconcile import decide as decide_reconciliation  # noqa: E402
from starters.reconcile import reconciliation_input  # noqa: E402
from starters.reconcile import start as start_reconciliation  # noqa: E402
from starters.reconcile import status as reconciliation_status  # noqa: E402
from workflows.reconciliation import reconciliation_workflow_id  # noqa: E402

# A day whose reconciliation's date arithmetic stays in range (schemas.edge.Day).
SettlementDatePath = Annotated[
    _date,
    Path(ge=DAY_MIN, le=DAY_MAX, description=f"The UTC day, YYYY-MM-DD, {DAY_MIN} to {DAY_MAX}"),
]


@router.post(
    "/reconciliations/issuer/{settlement_date}",
    dependencies=[*requires(SCOPE_ADMIN), PROGRAM_WIDE],
    status_code=202,
    response_model=ProcessRef,
    responses={200: {"model": ProcessRef, "description": "This day was reconciled already"}},
    summary="Reconcile the issuer's settlement report of a UTC day (YYYY-MM-DD)",
)
async def reconciliation_start_route(
    request: Request, response: Response, settlement_date: SettlementDatePath
) -> ProcessRef:
    # The process id is the day's: a repeat finds the first process (a failed
    # one runs again), so no Idempotency-Key is needed. A day not yet over is
    # refused: reconciled early, it would pre-empt the run once it is over.
    queues = request.app.state.queues
    try:
        handle = await start_reconciliation(
            request.app.state.client,
            queues,
            reconciliation_input(request.app.state.settings, queues, settlement_date),
        )
    except PeriodNotEnded as error:
        detail = error.detail("path", settlement_date.isoformat())
        raise HTTPException(status_code=422, detail=detail) from None
    replayed = handle.result_run_id is None
    if replayed:
        response.status_code = 200
        run_id = (await handle.describe()).run_id
    else:
        run_id = handle.result_run_id or ""
    return ProcessRef(
        workflow_id=reconciliation_workflow_id("issuer", settlement_date),
        run_id=run_id,
        process="reconciliation",
        status_url=f"/v1/reconciliations/issuer/{settlement_date.isoformat()}",
        replayed=replayed,
    )


@router.get(
    "/reconciliations/issuer/{settlement_date}",
    dependencies=[*requires(SCOPE_PROCESSES_READ), PROGRAM_WIDE],
    response_model=ReconciliationStatus,
    responses=READ_RESPONSES,
    summary="A reconciliation's stage and its differences",
)
async def reconciliation_status_route(
    request: Request, settlement_date: SettlementDatePath
) -> ReconciliationStatus:
    try:
        return await _steer(
            reconciliation_status(request.app.state.client, settlement_date),
            settlement_date.isoformat(),
        )
    except WorkflowQueryFailedError as error:
        detail = f"the process did not answer: {error}"
        raise HTTPException(status_code=409, detail=detail) from None


@router.post(
    "/reconciliations/issuer/{settlement_date}/decisions",
    dependencies=[*requires(SCOPE_OPERATIONS), PROGRAM_WIDE],
    response_model=ReconciliationItem,
    responses=STEER_RESPONSES,
    summary="An operator decides one difference over the threshold: adjust or dismiss",
)
async def reconciliation_decide_route(
    request: Request, settlement_date: SettlementDatePath, body: Decision, idempotency: UpdateKey
) -> ReconciliationItem:
    workflow_id = reconciliation_workflow_id("issuer", settlement_date)
    send = await update_options(request, idempotency, "reconciliation-decisions", workflow_id, body)
    decided = decide_reconciliation(
        request.app.state.client,
        settlement_date,
        body,
        update_id=send.update_id,
        rpc_timeout=send.rpc_timeout,
    )
    return await _steer(decided, settlement_date.isoformat())
