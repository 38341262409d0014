"""Which task queue each activity runs on, declared where the activity is.

cardflow's activities run on two kinds of queue: the ledger's (database work,
many connections, short steps) and the providers' (calls to outside APIs, rate
limited fleet-wide). Every activity is defined with `ledger_activity` or
`provider_activity` instead of `activity.defn`, so its kind travels with it:
a workflow's step reads the kind from the activity it calls (workflows/steps.py),
and a test checks that the worker of that kind registers it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from temporalio import activity

F = TypeVar("F", bound=Callable[..., Any])

# The attribute the kind is kept in on the activity's function.
QUEUE_KIND_ATTRIBUTE = "__cardflow_queue_kind__"


class QueueKind(StrEnum):
    LEDGER = "ledger"
    PROVIDERS = "providers"


def _defined_on(kind: QueueKind, name: str) -> Callable[[F], F]:
    def define(function: F) -> F:
        setattr(function, QUEUE_KIND_ATTRIBUTE, kind)
        return activity.defn(name=name)(function)

    return define


def ledger_activity(name: str) -> Callable[[F], F]:
    """Define an activity named `name` that runs on the ledger queue."""
    return _defined_on(QueueKind.LEDGER, name)


def provider_activity(name: str) -> Callable[[F], F]:
    """Define an activity named `name` that runs on the providers queue."""
    return _defined_on(QueueKind.PROVIDERS, name)


def queue_kind(function: Callable[..., Any]) -> QueueKind:
    """The queue kind `function` was defined for; it must have been defined
    with ledger_activity or provider_activity."""
    kind = getattr(function, QUEUE_KIND_ATTRIBUTE, None)
    if not isinstance(kind, QueueKind):
        raise TypeError(f"{function.__qualname__} is not a cardflow activity")
    return kind
