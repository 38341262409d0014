"""The one way tests wait for something the system will report: poll it until
it is ready, and fail naming what was last seen when it never is. A wait is
always on a condition, never a pause of a guessed length."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Far longer than anything here takes on a busy machine, so only a condition
# that never comes true reaches it.
WAIT_SECONDS_MAX = 20.0
POLL_SECONDS = 0.05


async def until(
    produce: Callable[[], Awaitable[T]],
    ready: Callable[[T], bool],
    what: str,
    seconds: float = WAIT_SECONDS_MAX,
) -> T:
    """The first value `produce` returns that is `ready`; fails, naming `what`
    and the last value, when none is within `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await produce()
        if ready(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never {what} within {seconds} s (last: {value!r})")
        await asyncio.sleep(POLL_SECONDS)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float = WAIT_SECONDS_MAX
) -> None:
    """Return once `check` answers True; fail naming `what` if it never does."""
    await until(check, bool, what, seconds)
