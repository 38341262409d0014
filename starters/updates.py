"""How a client sends a process an update: by the workflow's method, waiting
UPDATE_RPC_TIMEOUT for it unless the caller says otherwise.

Temporal's SDK types an update method by what it returns when it is called,
and for an `async def` handler registered with `@workflow.update(name=...)`
that is the coroutine, not its result, although the SDK hands the caller the
decoded result. `execute_update` sends the update through the SDK unchanged
and gives the caller the result's own type, so mypy checks the argument
against the handler's parameter and the answer against its return type.
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, NoReturn, TypeVar, overload

from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.workflow import UpdateMethodMultiParam

from schemas.refusals import Refusal, refused

# How long a caller waits for the process to take an update (unless it says
# otherwise); longer means its workers are down or far behind, and the call
# raises WorkflowUpdateRPCTimeoutOrCancelledError; an update sent again with
# the same update id attaches to the first (and answers its result) instead
# of running twice. The FX and dispute clients bound their other calls to the
# process by it too.
UPDATE_RPC_TIMEOUT = timedelta(seconds=30)

ParamT = TypeVar("ParamT")
ResultT = TypeVar("ResultT")

# What `arg` is when the handler takes no argument.
_NO_ARGUMENT: Any = object()


@overload
async def execute_update(
    handle: WorkflowHandle[Any, Any],
    update: UpdateMethodMultiParam[[Any], Coroutine[Any, Any, ResultT]],
    *,
    id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> ResultT: ...


@overload
async def execute_update(
    handle: WorkflowHandle[Any, Any],
    update: UpdateMethodMultiParam[[Any, ParamT], Coroutine[Any, Any, ResultT]],
    arg: ParamT,
    *,
    id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> ResultT: ...


async def execute_update(
    handle: WorkflowHandle[Any, Any],
    update: Any,
    arg: Any = _NO_ARGUMENT,
    *,
    id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> Any:
    """Send the update of the workflow's `async def` handler `update` (with
    `arg`, if it takes one) as `handle.execute_update` does, and answer its result."""
    arguments = [] if arg is _NO_ARGUMENT else [arg]
    return await handle.execute_update(update, args=arguments, id=id, rpc_timeout=rpc_timeout)


async def ended_result(
    handle: WorkflowHandle[Any, ResultT], error: RPCError, process: str
) -> ResultT:
    """The result of a process that has ended (Temporal refuses updates then);
    re-raises `error` when the process is running or does not exist. One that
    ended without an outcome (failed, terminated) is refused as finished."""
    if error.status != RPCStatusCode.NOT_FOUND:
        raise error
    try:
        description = await handle.describe()
    except RPCError:
        raise error from None
    if description.status == WorkflowExecutionStatus.RUNNING:
        raise error
    try:
        return await handle.result()
    except WorkflowFailureError as failure:
        refuse(Refusal.FINISHED, f"the {process} ended without an outcome: {failure.cause}")


def refuse(code: Refusal, reason: str) -> NoReturn:
    """Refuse the way a process refuses an update (its ApplicationError typed
    with the refusal's code), so every caller handles one error."""
    cause = refused(code, reason)
    raise WorkflowUpdateFailedError(cause) from cause
