"""How a process tells its cancellation from a failure, and finishes what a
cancellation interrupted. Deterministic; for use inside workflows.

A workflow's cancellation reaches the code that was awaiting in one of two
shapes. Awaiting a timer or a condition, it is asyncio's CancelledError.
Awaiting an activity (or a child workflow), the SDK asks the server to cancel
the activity and resolves the await at once with an ActivityError (a
ChildWorkflowError) whose cause is Temporal's CancelledError, while the
activity itself may still be running and may still commit. So a process that
decides between "cancelled" and "failed" asks `is_cancellation`, never
`isinstance(error, asyncio.CancelledError)`; and a step a cancellation
interrupted has an unknown outcome until it is submitted again with its
idempotency key, which returns the first outcome (or posts it now, if the
first never reached the ledger).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from temporalio.exceptions import is_cancelled_exception

T = TypeVar("T")


def is_cancellation(error: BaseException) -> bool:
    """True when `error` is the workflow being cancelled, in whichever shape
    it reached the await: asyncio's CancelledError, Temporal's CancelledError,
    or an ActivityError / ChildWorkflowError caused by a CancelledError."""
    return is_cancelled_exception(error)


async def shielded(step: Awaitable[T]) -> T:
    """Run `step` to its end even if the workflow is cancelled meanwhile, and
    answer its result (a cancellation arriving during it is absorbed: whoever
    calls this has decided the step must finish)."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        return await task
