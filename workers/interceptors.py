"""Interceptors every worker runs, and the one every client uses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from temporalio import client
from temporalio.client import WorkflowQueryFailedError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from activities.errors import unrepresentable_value


class UnrepresentableValueInterceptor(Interceptor):
    """Fails an activity that met a value its layer cannot represent at once,
    as a non-retryable UnrepresentableValue (activities.errors), instead of
    letting it retry forever."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ClassifyingInbound(next)


class _ClassifyingInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except Exception as error:
            classified = unrepresentable_value(error)
            if classified is None:
                raise
            raise classified from error


# A query of a process that has just finished can reach the worker while it
# still holds the finished run: the SDK then replays the whole history over
# the run it holds and answers with a nondeterminism error, although the
# history replays cleanly (the replay tests and a Replayer on that very
# history agree). Asked again once the worker has let the run go, the query
# replays from the start and answers. Only that error is asked again, a few
# times; a real nondeterminism (a code change) fails after the last.
QUERY_NONDETERMINISM = "[TMPRL1100] Nondeterminism error"
log = logging.getLogger("cardflow.queries")
QUERY_ATTEMPTS_MAX = 4
QUERY_RETRY_FIRST_SECONDS = 0.1


class PostCloseQueryInterceptor(client.Interceptor):
    """Asks again a query answered with the SDK's post-close replay race."""

    def intercept_client(self, next: client.OutboundInterceptor) -> client.OutboundInterceptor:
        return _QueryAskedAgain(next)


class _QueryAskedAgain(client.OutboundInterceptor):
    async def query_workflow(self, input: client.QueryWorkflowInput) -> Any:
        for attempt in range(1, QUERY_ATTEMPTS_MAX + 1):
            try:
                return await super().query_workflow(input)
            except WorkflowQueryFailedError as error:
                if QUERY_NONDETERMINISM not in str(error) or attempt == QUERY_ATTEMPTS_MAX:
                    raise
                log.warning(
                    "query %s of %s met the post-close replay race (attempt %d); asking again",
                    input.query,
                    input.id,
                    attempt,
                )
                await asyncio.sleep(QUERY_RETRY_FIRST_SECONDS * 2 ** (attempt - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")
