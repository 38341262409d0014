"""A simulated provider's call takes effect whole or not at all.

A real issuer never records a clearing without the event that announces it,
nor an authorization's new state without the transaction that changed it,
whenever its process dies. Here each mutating route's code runs in stretches
between its awaits (a real-time authorization awaits the gateway's answer);
a route of `atomic_route` runs every stretch inside one store transaction
(Store.atomic), committed when the stretch ends. A simulator killed inside a
stretch comes back with none of it: the caller's retry, under the same
Idempotency-Key, then makes the call afresh.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from fastapi.routing import APIRoute

from simulators.framework.idempotency import MUTATING
from simulators.framework.store import Store

# Set on an endpoint made atomic (to the store), so a route re-registered by
# an including router is not wrapped twice.
ATOMIC_MARK = "__cardflow_atomic_store__"


class _Stretches:
    """Drives a coroutine by hand, each of its synchronous stretches (from
    one resumption to the next suspension) inside one store transaction."""

    def __init__(self, store: Store, coroutine: Coroutine[Any, Any, Any]) -> None:
        self._store = store
        self._coroutine = coroutine

    def __await__(self) -> Generator[Any, Any, Any]:
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            with self._store.atomic():
                try:
                    if thrown is None:
                        suspended = self._coroutine.send(sent)
                    else:
                        suspended = self._coroutine.throw(thrown)
                except StopIteration as finished:
                    return finished.value
            try:
                sent, thrown = (yield suspended), None
            except BaseException as error:  # cancelled while suspended: passed on
                sent, thrown = None, error


def atomic_endpoint(store: Store, endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """`endpoint` (a route function) with each stretch atomic; a synchronous
    one (run on a worker thread) is one stretch."""
    if not inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        def atomic_sync(*args: Any, **kwargs: Any) -> Any:
            with store.atomic():
                return endpoint(*args, **kwargs)

        return atomic_sync

    @functools.wraps(endpoint)
    async def atomic(*args: Any, **kwargs: Any) -> Any:
        return await _Stretches(store, endpoint(*args, **kwargs))

    return atomic


def atomic_route(store: Store) -> type[APIRoute]:
    """The route class of a simulator's app and routers: each mutating route
    it registers runs atomic stretches on `store`."""

    class AtomicRoute(APIRoute):
        def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
            methods = {method.upper() for method in options.get("methods") or ()}
            if methods & MUTATING and getattr(endpoint, ATOMIC_MARK, None) is not store:
                endpoint = atomic_endpoint(store, endpoint)
                setattr(endpoint, ATOMIC_MARK, store)
            super().__init__(path, endpoint, **options)

    return AtomicRoute
