"""The one way tests wait for something the system will report: poll it until
it is ready, and fail naming what was last seen when it never is. A wait is
always on a condition, never a pause of a guessed length."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Far longer than anything here takes on a busy machine, so only a condition
# that never comes true reaches it.
WAIT_SECONDS_MAX = 20.0
POLL_SECONDS = 0.05


async def _polled(
    produce: Callable[[], Awaitable[T]], ready: Callable[[T], bool], seconds: float
) -> tuple[bool, T]:
    """Whether `produce` returned a `ready` value within `seconds`, and the
    last value it returned (the ready one, when it did)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await produce()
        if ready(value):
            return True, value
        if asyncio.get_running_loop().time() > deadline:
            return False, value
        await asyncio.sleep(POLL_SECONDS)


async def until(
    produce: Callable[[], Awaitable[T]],
    ready: Callable[[T], bool],
    what: str,
    seconds: float = WAIT_SECONDS_MAX,
) -> T:
    """The first value `produce` returns that is `ready`; fails, naming `what`
    and the last value, when none is within `seconds`."""
    came, value = await _polled(produce, ready, seconds)
    if not came:
        raise AssertionError(f"never {what} within {seconds} s (last: {value!r})")
    return value


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float = WAIT_SECONDS_MAX
) -> None:
    """Return once `check` answers True; fail naming `what` if it never does."""
    await until(check, bool, what, seconds)


async def settled(check: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    """Whether `check` answered True within `seconds`, without failing when it
    did not: for a wait the caller judges itself, or that only lets what is
    still on its way land before the next test (a drain)."""
    came, _ = await _polled(check, bool, seconds)
    return came


def until_sync(
    produce: Callable[[], T],
    ready: Callable[[T], bool],
    what: str,
    seconds: float = WAIT_SECONDS_MAX,
    *,
    every: float = POLL_SECONDS,
) -> T:
    """`until` for a caller with no event loop (a process started before one
    runs): blocks between polls, `every` seconds apart (a costly probe, such
    as scraping every part's metrics, polls less often)."""
    deadline = time.monotonic() + seconds
    while True:
        value = produce()
        if ready(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what} within {seconds} s (last: {value!r})")
        time.sleep(every)
