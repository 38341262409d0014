"""CPU time of a benchmark's processes, by part, from psutil readings.

A part is one OS process and, when it forks (PostgreSQL's postmaster and its
backends), everything below it: the CPU of its live descendants and of the
children it has already reaped (the kernel adds a reaped child's time to its
parent's children_user/children_system). Each process is counted once: a live
one by its own time, a reaped one in its parent's children's time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

SECONDS_TO_MS = 1000.0


@dataclass(frozen=True)
class Part:
    """A process to account for; `family` counts its descendants too."""

    name: str
    pid: int
    family: bool = True


# psutil has no type stubs: its pcputimes named tuple reaches here as Any.
def own_cpu_seconds(times: Any) -> float:
    return float(times.user + times.system)


def reaped_children_cpu_seconds(times: Any) -> float:
    return float(getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0))


def cpu_seconds(part: Part) -> float | None:
    """User plus system CPU seconds of the part so far; None if it is gone."""
    try:
        root = psutil.Process(part.pid)
        descendants = root.children(recursive=True) if part.family else []
    except psutil.NoSuchProcess:
        return None
    total = 0.0
    # Descendants first, the root last: a child that exits after it was
    # listed is then found in the root's reaped children's time instead.
    for member in descendants:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += own_cpu_seconds(times) + reaped_children_cpu_seconds(times)
    try:
        times = root.cpu_times()
    except psutil.NoSuchProcess:
        return None
    total += own_cpu_seconds(times)
    if part.family:
        total += reaped_children_cpu_seconds(times)
    return total


def sample(parts: Iterable[Part]) -> dict[str, float]:
    """CPU seconds so far by part name; a part that is gone is left out."""
    readings: dict[str, float] = {}
    for part in parts:
        seconds = cpu_seconds(part)
        if seconds is not None:
            readings[part.name] = readings.get(part.name, 0.0) + seconds
    return readings


def deltas(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds spent between two samples, for the parts found in both."""
    return {name: after[name] - before[name] for name in before if name in after}


def ms_per_call(spent_seconds: Mapping[str, float], calls: int) -> dict[str, float]:
    """CPU milliseconds per call by part, from the seconds a step spent."""
    assert calls > 0, "a step makes at least one call"
    return {
        name: round(seconds * SECONDS_TO_MS / calls, 3) for name, seconds in spent_seconds.items()
    }


def total(readings: Mapping[str, float], names: Sequence[str]) -> float:
    """The sum of the named parts' figures (a name not read counts nothing)."""
    return sum(readings.get(name, 0.0) for name in names)
