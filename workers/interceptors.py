"""Interceptors every worker runs."""

from __future__ import annotations

from typing import Any

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
