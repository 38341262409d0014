"""The gateway's requests are served on its event loop alone: none of their
dependencies is a plain function, which FastAPI would run in its thread pool
(a hop to a thread and back, on every request; nine on each of the issuer's
real-time authorizations and its webhook)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from starters.gateway.app import create_app
from starters.gateway.realtime import REALTIME_AUTHORIZATION_PATH
from workers.settings import load_settings

pytestmark = pytest.mark.fast

ISSUER_FACING_PATHS = (REALTIME_AUTHORIZATION_PATH, "/webhooks/{provider}")


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every route, those of included routers too (their prefixes are empty)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)


def dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from dependencies(dependency)


def runs_on_the_loop(dependency: Dependant) -> bool:
    call = dependency.call
    if call is None:
        return True
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    method = getattr(call, "__call__", None)  # noqa: B004 - an instance's own __call__
    return not inspect.isfunction(call) and inspect.iscoroutinefunction(method)


def test_no_request_has_a_dependency_run_in_the_thread_pool(tmp_path: Path) -> None:
    app = create_app(load_settings(CARDFLOW_HOME=str(tmp_path)))
    routes = list(api_routes(app.routes))
    assert set(ISSUER_FACING_PATHS) <= {route.path for route in routes}
    threaded = [
        f"{route.path}: {getattr(dependency.call, '__qualname__', dependency.call)}"
        for route in routes
        for dependency in dependencies(route.dependant)
        if not runs_on_the_loop(dependency)
    ]
    assert threaded == []
