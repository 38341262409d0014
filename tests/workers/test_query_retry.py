"""A query that meets the SDK's post-close replay race is asked again.

The race itself (a query of a process that has just finished, answered with a
nondeterminism error although its history replays cleanly) shows up in
tests/workflows/test_cashback.py run in two workers; here the interceptor's
rule is pinned down: that error only, a bounded number of times."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio import client
from temporalio.client import WorkflowQueryFailedError

from workers import interceptors
from workers.interceptors import QUERY_ATTEMPTS_MAX, PostCloseQueryInterceptor

RACE = (
    "[TMPRL1100] Nondeterminism error: UpsertWorkflowSearchAttributesMachine does not handle"
    " HistoryEvent(id: 7, ActivityTaskScheduled)"
)


class Answers(client.OutboundInterceptor):
    """The layer below: fails with each of `failures`, then answers."""

    def __init__(self, *failures: str) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def query_workflow(self, input: client.QueryWorkflowInput) -> Any:
        self.calls += 1
        if self.failures:
            raise WorkflowQueryFailedError(self.failures.pop(0))
        return "status"


def asked(below: Answers) -> client.OutboundInterceptor:
    return PostCloseQueryInterceptor().intercept_client(below)


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interceptors, "QUERY_RETRY_FIRST_SECONDS", 0.0)


QUERY: Any = client.QueryWorkflowInput(
    id="cashback/t",
    run_id=None,
    query="status",
    args=[],
    reject_condition=None,
    headers={},
    ret_type=None,
    rpc_metadata={},
    rpc_timeout=None,
)


async def test_the_race_is_asked_again_until_the_query_answers() -> None:
    below = Answers(RACE, RACE)
    assert await asked(below).query_workflow(QUERY) == "status"
    assert below.calls == 3


async def test_any_other_query_failure_is_answered_at_once() -> None:
    below = Answers("query handler raised: KeyError", RACE)
    with pytest.raises(WorkflowQueryFailedError, match="KeyError"):
        await asked(below).query_workflow(QUERY)
    assert below.calls == 1


async def test_a_lasting_nondeterminism_fails_after_the_last_attempt() -> None:
    below = Answers(*[RACE] * (QUERY_ATTEMPTS_MAX + 1))
    with pytest.raises(WorkflowQueryFailedError, match="Nondeterminism"):
        await asked(below).query_workflow(QUERY)
    assert below.calls == QUERY_ATTEMPTS_MAX
