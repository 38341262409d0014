"""A process cancelled mid-step, the way it happens: a database call held up
by another transaction's locks (as a busy wallet or a migration holds it up),
the workflow cancelled while its activity waits, and the call completing
(a posting committing) after the workflow has moved on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, UpdateWorkflowExecutionLifecycleStage
from temporalio.api.update.v1 import UpdateRef, WaitPolicy
from temporalio.api.workflowservice.v1 import PollWorkflowExecutionUpdateRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from tests.polling import eventually, until


@dataclass(frozen=True)
class Lock:
    """Another database session holding locks until the block ends."""

    pid: int


@contextlib.asynccontextmanager
async def balances_locked(database_url: str, *codes: str) -> AsyncIterator[Lock]:
    """Hold the balance rows of the accounts `codes` (FOR UPDATE): any posting
    that touches one of them waits until the block ends (the lock is released)."""
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            locked = await connection.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM ledger_balances b"
                " JOIN ledger_accounts a ON a.id = b.account_id"
                " WHERE a.code = ANY($1::text[]) FOR UPDATE OF b) AS rows",
                list(codes),
            )
            assert locked, f"no balance rows to lock for {codes}: open the accounts first"
            yield Lock(pid=await connection.fetchval("SELECT pg_backend_pid()"))
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def table_locked(database_url: str, table: str) -> AsyncIterator[Lock]:
    """Hold `table` exclusively: even a read of it waits until the block ends."""
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            await connection.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield Lock(pid=await connection.fetchval("SELECT pg_backend_pid()"))
    finally:
        await connection.close()


async def until_waiting(pool: asyncpg.Pool, lock: Lock, count: int = 1) -> None:
    """Until `count` database sessions wait for the lock (a posting is held up)."""

    async def waiting() -> int:
        found: int = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            lock.pid,
        )
        return found

    await until(waiting, lambda found: found >= count, f"{count} session(s) waiting for the lock")


async def until_activity_cancel_requested(handle: WorkflowHandle[Any, Any]) -> None:
    """Until the workflow has taken in its cancellation where it awaited an
    activity: it asked the server to cancel that activity."""

    async def cancel_requested() -> bool:
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED:
                return True
        return False

    await eventually(cancel_requested, f"{handle.id} asked to cancel an activity")


async def until_admitted(client: Client, handle: WorkflowHandle[Any, Any], update_id: str) -> None:
    """Until the server has admitted update `update_id` (it waits for the
    workflow's next task, e.g. while its worker is away): polled at the
    ADMITTED stage, which the SDK's own start_update does not offer."""
    request = PollWorkflowExecutionUpdateRequest(
        namespace=client.namespace,
        update_ref=UpdateRef(
            workflow_execution=WorkflowExecution(workflow_id=handle.id), update_id=update_id
        ),
        identity="test",
        wait_policy=WaitPolicy(
            lifecycle_stage=UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ADMITTED
        ),
    )

    async def admitted() -> bool:
        try:
            await client.workflow_service.poll_workflow_execution_update(
                request, timeout=timedelta(seconds=1)
            )
        except RPCError as error:
            if error.status is not RPCStatusCode.NOT_FOUND:
                raise
            return False
        return True

    await eventually(admitted, f"update {update_id} admitted")
