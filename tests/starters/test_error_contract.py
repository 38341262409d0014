"""Every error the gateway answers is `{"code", "detail"}`, with the one status
its code has: a process's refusal by its Refusal code, a missing process 404
not_found, anything unexpected a 500 internal_error whose error_id names the
log line. The card's view shows none of the card process's own state, and a
route takes its client from its typed dependency."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import (
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from schemas.fx import FxOutcome
from schemas.money import Currency
from schemas.refusals import Refusal
from starters import topup
from starters.gateway.errors import ERROR_STATUS, ErrorBody, GatewayCode, process_error
from starters.gateway.state import database_pool, temporal_client
from tests.conftest import Platform, RunningStack
from tests.customers import EMPTY_WALLETS, authorize, card_of_its_own, customer, new_id, open_card
from tests.starters.inprocess import gateway_app
from tests.workflows import test_fx_conversion as fx_helpers
from tests.workflows import test_topup as topup_helpers
from workflows.cards import card_workflow_id
from workflows.topup_steps import STAGE_CONFIRMATIONS

# ----- the table and the answer to what a process raised ---------------------


def refused_with(error_type: str | None, message: str = "the reason") -> WorkflowUpdateFailedError:
    return WorkflowUpdateFailedError(ApplicationError(message, type=error_type))


def test_every_code_has_one_status_and_the_openapi_lists_them() -> None:
    assert {*Refusal, *GatewayCode} == set(ERROR_STATUS)
    documented = ErrorBody.model_json_schema()["properties"]["code"]
    assert set(documented["enum"]) == {code.value for code in ERROR_STATUS}
    for code, status in ERROR_STATUS.items():
        assert f"{code.value} {status}" in documented["description"]


@pytest.mark.parametrize("refusal", list(Refusal))
def test_a_refusal_is_answered_by_its_code_with_its_status(refusal: Refusal) -> None:
    answer = process_error(refused_with(refusal.value), "card_1")
    assert (answer.status_code, answer.body()) == (
        ERROR_STATUS[refusal],
        {"code": refusal.value, "detail": "the reason"},
    )


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        ("PeriodNotEnded", Refusal.PERIOD_NOT_ENDED),
        ("CustomerNotApproved", Refusal.NOT_ALLOWED),
        ("FeeNotCharged", Refusal.DECLINED),
        ("CreditRefused", Refusal.DECLINED),
        ("NotDelivered", Refusal.FINISHED),
        ("NotActivated", Refusal.FINISHED),
        ("FxQuoteMismatch", Refusal.PROVIDER_UNAVAILABLE),
        ("NoFirmQuote", Refusal.PROVIDER_UNAVAILABLE),
        # Refusals that carry no code: a validator's ValueError, an untyped one.
        ("ValueError", GatewayCode.REFUSED),
        (None, GatewayCode.REFUSED),
        ("SomethingTheProcessNamed", GatewayCode.REFUSED),
    ],
)
def test_older_failure_types_are_answered_by_the_code_they_mean(
    error_type: str | None, code: Refusal | GatewayCode
) -> None:
    answer = process_error(refused_with(error_type), "card_1")
    assert (answer.status_code, answer.code) == (ERROR_STATUS[code], code)


def test_an_update_payload_the_process_cannot_decode_is_422_invalid_request() -> None:
    undecodable = ApplicationError("Failed decoding arguments", type="RuntimeError")
    undecodable.__cause__ = ApplicationError("reason: Field required", type="ValidationError")
    answer = process_error(WorkflowUpdateFailedError(undecodable), "topup/bank/t1")
    assert (answer.status_code, answer.code) == (422, Refusal.INVALID_REQUEST)
    assert "reason: Field required" in str(answer.detail)


@pytest.mark.parametrize(
    "error",
    [
        refused_with("KeyError", "'card_9'"),
        refused_with("AssertionError"),
        RPCError("permission denied", RPCStatusCode.PERMISSION_DENIED, b""),
        RuntimeError("no connection"),
    ],
    ids=["key-error", "assertion", "rpc-permission-denied", "runtime-error"],
)
def test_what_no_process_refused_on_purpose_is_500_internal_error_never_409(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    answer = process_error(error, "card_1")
    assert (answer.status_code, answer.code) == (500, GatewayCode.INTERNAL_ERROR)
    assert answer.error_id is not None and answer.error_id in str(answer.detail)
    assert [r.levelno for r in caplog.records if answer.error_id in r.getMessage()] == [
        logging.ERROR
    ]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (RPCError("not found", RPCStatusCode.NOT_FOUND, b""), 404, Refusal.NOT_FOUND),
        (RPCError("deadline", RPCStatusCode.DEADLINE_EXCEEDED, b""), 503, "process_timeout"),
        (RPCError("busy", RPCStatusCode.UNAVAILABLE, b""), 503, "process_timeout"),
        (WorkflowUpdateRPCTimeoutOrCancelledError(), 503, "process_timeout"),
        (WorkflowUpdateFailedError(CancelledError("cancelled")), 409, Refusal.FINISHED),
    ],
)
def test_temporals_answers_have_their_codes(error: Exception, status: int, code: str) -> None:
    answer = process_error(error, "card_1")
    assert (answer.status_code, answer.code) == (status, code)
    if status == 503:
        assert answer.headers is not None and int(answer.headers["Retry-After"]) > 0


# ----- through the gateway, in this process ----------------------------------


async def test_a_process_that_does_not_exist_is_404_not_found(
    stack: RunningStack, tmp_path: Path
) -> None:
    async with gateway_app(stack, tmp_path) as gateway:
        for method, path, body in (
            ("GET", "/v1/processes/card/nobody", None),
            ("GET", "/v1/cards/card_nobody", None),
            ("POST", "/v1/cards/card_nobody/actions", {"action": "freeze"}),
            ("GET", "/v1/fx/nobody", None),
            ("POST", "/v1/fx/nobody/confirm", None),
            ("GET", "/v1/topups/bank/ibt_nobody", None),
            ("GET", "/v1/disputes/txn_nobody", None),
            ("POST", "/v1/nowhere", None),
        ):
            answer = await gateway.http.request(method, path, json=body)
            assert (answer.status_code, answer.json()["code"]) == (404, "not_found"), path


async def test_a_malformed_body_is_422_invalid_request_naming_the_field(
    stack: RunningStack, tmp_path: Path
) -> None:
    async with gateway_app(stack, tmp_path) as gateway:
        answer = await gateway.http.post(
            "/v1/cards/card_1/actions", json={"action": "shred"}, headers={"Idempotency-Key": "k"}
        )
    assert (answer.status_code, answer.json()["code"]) == (422, "invalid_request")
    assert [error["loc"] for error in answer.json()["detail"]] == [["body", "action"]]


class FailingClient:
    """A Temporal client whose every workflow call raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_workflow_handle(self, workflow_id: str, **_: Any) -> FailingClient:
        return self

    async def query(self, *_: Any, **__: Any) -> Any:
        raise self.error

    async def describe(self) -> Any:
        raise self.error


async def test_an_unexpected_error_is_a_500_whose_error_id_is_in_the_log(
    stack: RunningStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway_app(stack, tmp_path) as gateway:
        # In a call on a process: not a refusal, so never a 409.
        failing = FailingClient(RuntimeError("the wire fell out"))
        gateway.app.dependency_overrides[temporal_client] = lambda: failing
        on_a_process = await gateway.http.get("/v1/fx/r-1")
        # Anywhere else in a route (here: the pool a start uses).

        def no_pool() -> Any:
            raise RuntimeError("the pool is gone")

        gateway.app.dependency_overrides = {database_pool: no_pool}
        anywhere = await gateway.http.post(
            "/v1/pings", json={"requested_by": "t"}, headers={"Idempotency-Key": "k-500"}
        )
    for answer, cause in ((on_a_process, "the wire fell out"), (anywhere, "the pool is gone")):
        body = answer.json()
        assert (answer.status_code, body["code"]) == (500, "internal_error"), body
        assert set(body) == {"code", "detail", "error_id"}
        assert cause not in body["detail"]  # the cause is logged, not told
        logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
        assert len(logged) == 1 and logged[0].levelno == logging.ERROR
        assert logged[0].exc_info is not None and cause in str(logged[0].exc_info[1])


async def test_a_route_takes_its_client_from_its_typed_dependency(
    stack: RunningStack, tmp_path: Path
) -> None:
    async with gateway_app(stack, tmp_path) as gateway:
        given: list[str] = []

        def client_of_the_test() -> Any:
            given.append("client")
            return stack.client

        # The app has no client of its own: only the dependency can give one.
        del gateway.app.state.client
        gateway.app.dependency_overrides[temporal_client] = client_of_the_test
        started = await gateway.http.post(
            "/v1/pings", json={"requested_by": "t"}, headers={"Idempotency-Key": "typed"}
        )
        assert started.status_code == 202, started.text
        status = await gateway.http.get(started.json()["status_url"])
        assert status.status_code == 200, status.text
        assert status.json()["workflow_type"] == "Ping"
        assert given == ["client", "client"]
        # Without the dependency's answer, the route has no client to reach for.
        gateway.app.dependency_overrides.clear()
        missing = await gateway.http.get(started.json()["status_url"])
        assert (missing.status_code, missing.json()["code"]) == (500, "internal_error")


# The card's view: what a cardholder's app may see, nothing of the process's own.
CARD_VIEW_KEYS = {
    "card_id",
    "customer_id",
    "state",
    "currency",
    "limits",
    "replaced_by",
    "open_authorizations",
    "held_minor",
    "authorizations",
    "spent_day",
    "spent_day_minor",
    "spent_month",
    "spent_month_minor",
    "exceptions",
    "closed_at",
}


async def test_the_card_view_shows_no_internal_state(stack: RunningStack, tmp_path: Path) -> None:
    handle = await card_of_its_own(stack, new_id(), seen_events=["evt_seen_by_the_card"])
    card_id = handle.id.removeprefix(card_workflow_id(""))
    try:
        async with gateway_app(stack, tmp_path) as gateway:
            card = await gateway.http.get(f"/v1/cards/{card_id}")
            process = await gateway.http.get(f"/v1/processes/{handle.id}")
    finally:
        await handle.terminate("the test is over")
    assert card.status_code == 200, card.text
    assert set(card.json()) == CARD_VIEW_KEYS
    assert (card.json()["open_authorizations"], card.json()["held_minor"]) == (0, 0)
    assert process.json()["details"] == card.json()
    for text in (card.text, process.text):
        assert stack.queues.prefix not in text and "evt_seen_by_the_card" not in text


# ----- through real processes ------------------------------------------------


async def post(platform: Platform, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, timeout=30, headers=platform.api_headers
    ) as http:
        return await http.post(path, json=body)


async def test_a_confirm_after_the_quote_expired_is_409_quote_expired(
    platform: Platform,
) -> None:
    fx_helpers.rates(platform, quote_ttl_seconds=1)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    # The process stays open long after its quote expired, to refuse late confirms.
    patient = fx_helpers.POLICY.model_copy(update={"late_confirm_window_seconds": 600})
    request = fx_helpers.conversion(
        customer_id, Currency.USD, Currency.EUR, sell_minor=5_000, policy=patient
    )
    await fx_helpers.quoted(platform, request)
    await fx_helpers.stage_of(platform, request.request_id, FxOutcome.EXPIRED.value)
    try:
        late = await post(platform, f"/v1/fx/{request.request_id}/confirm")
    finally:
        await fx_helpers.handle_of(platform, request.request_id).cancel()
    assert (late.status_code, late.json()["code"]) == (409, "quote_expired"), late.text


async def test_a_confirm_the_wallet_cannot_pay_is_409_insufficient_funds(
    platform: Platform,
) -> None:
    fx_helpers.rates(platform)
    # The sale, not the fee on top of it.
    customer_id = await customer(platform, {Currency.USD: 10_004})
    request = fx_helpers.conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=10_004)
    await fx_helpers.quoted(platform, request)
    declined = await post(platform, f"/v1/fx/{request.request_id}/confirm")
    assert (declined.status_code, declined.json()["code"]) == (409, "insufficient_funds")
    result = await fx_helpers.handle_of(platform, request.request_id).result()
    assert result.outcome is FxOutcome.DECLINED


async def test_closing_a_card_with_open_authorizations_is_409_open_authorizations(
    platform: Platform,
) -> None:
    _, card_id, _ = await open_card(platform)
    await authorize(platform, card_id, 500)
    closed = await post(platform, f"/v1/cards/{card_id}/actions", {"action": "close"})
    assert (closed.status_code, closed.json()["code"]) == (409, "open_authorizations")


async def test_a_review_of_a_top_up_with_none_pending_is_409_wrong_state(
    platform: Platform,
) -> None:
    topup_helpers.chain(platform)
    customer_id = await customer(platform, EMPTY_WALLETS)
    deposit = await topup.simulate_deposit(
        platform.settings, customer_id, topup_helpers.DEPOSIT_MINOR
    )
    await topup_helpers.reach(platform, "usdt", deposit.tx_hash, STAGE_CONFIRMATIONS)
    review = topup_helpers.approve().model_dump(exclude_none=True)
    refused = await post(platform, f"/v1/topups/usdt/{deposit.tx_hash}/review", review)
    assert (refused.status_code, refused.json()["code"]) == (409, "wrong_state"), refused.text
