"""Every activity a workflow can call runs on a worker that registers it.

A workflow calls an activity by reference through `workflows.steps.step`,
which sends it to the queue of the kind the activity was defined for
(`activities.queues`). An activity defined for a kind whose worker does not
register it would wait on that queue forever; one called by name could name
anything. So: every call site in `workflows/` is a reference, and every
activity (called or not) is registered by the worker of its kind.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio import activity

import activities
import workflows
from activities.providers.activities import ProviderClients
from activities.queues import QUEUE_KIND_ATTRIBUTE, QueueKind, queue_kind
from workers.build import ledger_activities, local_ledger_activities, provider_activities

WORKFLOWS_DIR = Path(workflows.__file__).parent
# Calls that run an activity; their activity argument must be a reference.
ACTIVITY_CALLS = {
    "step": 1,
    "execute_activity": 0,
    "execute_activity_method": 0,
    "execute_local_activity": 0,
    "execute_local_activity_method": 0,
    "start_activity": 0,
    "start_local_activity": 0,
}
# An address nothing listens on: the clients are only built, never used.
UNUSED_PROVIDERS_URL = "http://127.0.0.1:9"


def _name(function: Callable[..., Any]) -> str:
    definition = activity._Definition.must_from_callable(function)
    assert definition.name is not None
    return definition.name


def _defined_activities() -> Iterator[Callable[..., Any]]:
    """Every function in `activities` defined with a queue kind."""
    for module_info in pkgutil.walk_packages(activities.__path__, "activities."):
        module = importlib.import_module(module_info.name)
        for _, owner in inspect.getmembers(module):
            if inspect.isclass(owner) and owner.__module__ == module.__name__:
                for _, member in inspect.getmembers(owner, inspect.isfunction):
                    if hasattr(member, QUEUE_KIND_ATTRIBUTE):
                        yield member
            elif inspect.isfunction(owner) and hasattr(owner, QUEUE_KIND_ATTRIBUTE):
                yield owner


def _resolve(module: Any, node: ast.expr) -> Any:
    """The object an expression of names and attributes denotes in `module`."""
    if isinstance(node, ast.Name):
        return getattr(module, node.id)
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(module, node.value), node.attr)
    raise AssertionError(f"not a reference: {ast.unparse(node)}")


def _called_activities() -> Iterator[tuple[str, str, Any]]:
    """(where, call, activity) for every activity call in workflows/."""
    for path in sorted(WORKFLOWS_DIR.glob("*.py")):
        module = importlib.import_module(f"workflows.{path.stem}")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called not in ACTIVITY_CALLS or path.stem == "steps":
                continue
            position = ACTIVITY_CALLS[called]
            where = f"{path.name}:{node.lineno}"
            argument = node.args[position] if len(node.args) > position else None
            assert argument is not None, f"{where}: {called} without an activity"
            assert not isinstance(argument, ast.Constant), (
                f"{where}: {called} names its activity by a string; call it by reference"
            )
            try:
                function = _resolve(module, argument)
            except AttributeError:
                function = None
            assert callable(function), (
                f"{where}: {called}({ast.unparse(argument)}, ...) is not a reference to an"
                " activity (a name passed in as a string?)"
            )
            yield where, called, function


@pytest.fixture
async def registered(ledger_pool: asyncpg.Pool) -> AsyncIterator[dict[QueueKind, set[str]]]:
    """The activity names each activity worker registers, as production builds it."""
    clients = ProviderClients(UNUSED_PROVIDERS_URL)
    try:
        yield {
            QueueKind.LEDGER: {_name(f) for f in ledger_activities(ledger_pool)},
            QueueKind.PROVIDERS: {_name(f) for f in provider_activities(clients, ledger_pool)},
        }
    finally:
        await clients.aclose()


async def test_every_activity_is_registered_on_the_worker_of_its_queue_kind(
    registered: dict[QueueKind, set[str]],
) -> None:
    defined = list(_defined_activities())
    assert len(defined) >= 40, defined
    for function in defined:
        kind = queue_kind(function)
        assert _name(function) in registered[kind], (
            f"{function.__qualname__} is a {kind} activity the {kind} worker does not register"
        )
    # And the other way round: a worker registers only activities of its kind.
    kinds = {_name(f): queue_kind(f) for f in defined}
    for kind, names in registered.items():
        assert {name for name in names if kinds.get(name, kind) is not kind} == set()


async def test_every_activity_a_workflow_calls_is_a_reference_to_a_registered_activity(
    registered: dict[QueueKind, set[str]], ledger_pool: asyncpg.Pool
) -> None:
    local = {_name(f) for f in local_ledger_activities(ledger_pool)}
    calls = list(_called_activities())
    assert len(calls) >= 60, calls
    for where, called, function in calls:
        if "local" in called:
            assert _name(function) in local, f"{where}: {_name(function)} is no local activity"
        else:
            kind = queue_kind(function)
            assert _name(function) in registered[kind], (
                f"{where}: {_name(function)} is not registered on the {kind} worker"
            )
