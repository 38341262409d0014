"""Idempotency-Key: a start or an update acts once, however often it is sent.

A key names one request of the API key that sent it: a repeat (same key,
same body) returns the process the first one started and never starts a
second; the same key with another body is refused (409
`idempotency_key_reused`); and a process is never answered to a request
that did not start it (409 `process_exists`, e.g. a second onboarding of a
customer). Where a process's id is the request's own (a card issue, an FX
conversion, a ping), it is a digest of the API key's id and the
Idempotency-Key, so no two keys share one. An update sent with a key runs
under an update id derived from it, so a retry attaches to the first
sending's update and gets its answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Protocol, TypeVar

import asyncpg
from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from schemas.search import CUSTOMER_ID
from schemas.task_queues import TaskQueues
from starters.gateway.errors import ApiError, GatewayCode, process_error
from starters.gateway.state import DatabasePool, GatewaySettings, Queues, TemporalClient
from starters.gateway.v1.shared import ProcessRef, steer
from workflows.metadata import StartMetadata

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

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


def request_hash(route: str, body: BaseModel | None, *path: str) -> bytes:
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
    pool: asyncpg.Pool, idempotency: Idempotency, route: str, hashed: bytes
) -> Remembered | None:
    """What this Idempotency-Key of this API key asked on `route` before, if
    anything; or, remembered before keys were scoped to API keys, this same
    request (its process was started under the unscoped key, before an upgrade)."""
    row = await pool.fetchrow(_RECALL_SQL, idempotency.api_key_id, route, idempotency.key)
    if row is None:
        return None
    known = Remembered(bytes(row["request_hash"]), row["workflow_id"], row["run_id"])
    if not row["api_key_id"] and known.request_hash != hashed:
        return None  # another request, of whichever API key
    return known


async def remember(
    pool: asyncpg.Pool, idempotency: Idempotency, route: str, hashed: bytes, workflow_id: str
) -> Remembered:
    """Remember the request before acting on it (a concurrent first sending
    wins) and answer what is remembered: a key is taken by its first request."""
    await pool.execute(
        "INSERT INTO gateway_api_requests (api_key_id, route, idempotency_key, request_hash,"
        " workflow_id, run_id) VALUES ($1, $2, $3, $4, $5, '') ON CONFLICT DO NOTHING",
        idempotency.api_key_id,
        route,
        idempotency.key,
        hashed,
        workflow_id,
    )
    known = await recall(pool, idempotency, route, hashed)
    assert known is not None, "this API key's own row is there, inserted or found"
    return known


async def claim(
    pool: asyncpg.Pool, idempotency: Idempotency, route: str, hashed: bytes, workflow_id: str
) -> Remembered:
    """The request this key names on `route`, remembered now if it is new; the
    409 of a reused key if the key was taken by another request."""
    known = await recall(pool, idempotency, route, hashed)
    if known is None:
        known = await remember(pool, idempotency, route, hashed, workflow_id)
    if known.request_hash != hashed:
        raise ApiError(
            GatewayCode.IDEMPOTENCY_KEY_REUSED,
            f"Idempotency-Key {idempotency.key} was already used with a different request",
        )
    return known


@dataclass(frozen=True)
class Starter:
    """Starts a request's process once (a route's dependency)."""

    client: Client
    pool: asyncpg.Pool
    queues: TaskQueues

    async def start(
        self,
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
        """Start the process of this request, or answer the one a first
        sending of it started; refuse a reused key (another body) and a
        process that another request started (a second onboarding of one
        customer).

        A customer's process carries its `CustomerId` search attribute from
        its start (the process keeps it too), so a key bound to that customer
        can reach it at once."""
        hashed = request_hash(route, body)
        known = await claim(self.pool, idempotency, route, hashed, workflow_id)
        replayed = bool(known.run_id)
        if not replayed:
            # This request's first sending, or one that stopped before it knew the run.
            started_by = {
                "api_key_id": idempotency.api_key_id,
                "route": route,
                "idempotency_key": idempotency.key,
                "request_sha256": hashed.hex(),
            }
            try:
                handle = await self.client.start_workflow(
                    workflow,
                    argument,
                    id=known.workflow_id,
                    task_queue=self.queues.workflows,
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
                replayed, run_id = True, await self._own_run(known.workflow_id, started_by)
            except Exception as error:  # noqa: BLE001 - Temporal busy or unreachable: 503
                raise process_error(error, known.workflow_id) from None
            await self.pool.execute(
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

    async def _own_run(self, workflow_id: str, started_by: dict[str, str]) -> str:
        """The run of `workflow_id` if this request started it (a concurrent or
        earlier sending of it); else the 409 of a process another request started."""
        try:
            description = await self.client.get_workflow_handle(workflow_id).describe()
        except Exception as error:  # noqa: BLE001 - Temporal busy or unreachable: 503
            raise process_error(error, workflow_id) from None
        if await description.memo_value(API_REQUEST_MEMO, None) != started_by:
            raise ApiError(
                GatewayCode.PROCESS_EXISTS,
                f"{workflow_id} already exists and another request started it",
            )
        return description.run_id


async def starter(client: TemporalClient, pool: DatabasePool, queues: Queues) -> Starter:
    return Starter(client, pool, queues)


ProcessStarter = Annotated[Starter, Depends(starter)]


class Update(Protocol[T_co]):
    """An update of one process by its client function (e.g. starters.cards's
    `partial(set_limits, client, card_id, limits)`), under the given update
    id, waiting at most `rpc_timeout` for the process to take it."""

    def __call__(self, *, update_id: str | None, rpc_timeout: timedelta) -> Awaitable[T_co]: ...


@dataclass(frozen=True)
class Updates:
    """Sends a route's update to a running process (a route's dependency)."""

    client: Client
    pool: asyncpg.Pool
    rpc_timeout: timedelta

    async def send(
        self,
        update: Update[T],
        idempotency: Idempotency | None,
        route: str,
        workflow_id: str,
        subject: str,
        body: BaseModel | None = None,
    ) -> T:
        """Send `update` and answer its result, or the process's refusal (see
        shared.steer). With an Idempotency-Key, the update's id is the
        request's own, so a retry attaches to the first sending's update and
        answers its result instead of running again; the key is taken by its
        first request (the same key for another process or body is a 409).
        Without one, every call is a new update."""
        update_id = None
        if idempotency is not None:
            hashed = request_hash(route, body, workflow_id)
            await claim(self.pool, idempotency, route, hashed, workflow_id)
            update_id = idempotency.update_id(route)
        return await steer(update(update_id=update_id, rpc_timeout=self.rpc_timeout), subject)


async def updates(client: TemporalClient, pool: DatabasePool, settings: GatewaySettings) -> Updates:
    return Updates(client, pool, timedelta(seconds=settings.api_update_timeout_seconds))


ProcessUpdates = Annotated[Updates, Depends(updates)]
