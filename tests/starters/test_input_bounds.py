"""What the API takes in is bounded and means what it shows: a number that is
not finite, a string past its documented length, a customer id that is not a
safe identifier, an implausible birth date, and text carrying control or
bidirectional formatting characters are each a 422 naming the field, never
a 500 and never a process started with them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.conftest import RunningStack
from tests.starters.inprocess import ServedGateway, served_gateway
from tests.starters.test_storable_inputs import onboarding
from workers.settings import Settings

# Past what Temporal takes as one payload, and just under the API's body cap.
THREE_MIB = 3 * 1024 * 1024
NEAR_BODY_CAP = Settings.model_fields["api_body_bytes_max"].default - 64 * 1024
# Controls that rewrite a terminal's line, an ANSI colour escape, C1's NEL,
# bidirectional overrides and isolates that reorder what follows, a line
# separator; each with the character refused.
MISLEADING_TEXT = {
    "carriage-return": ("Ada\rEve", "U+000D"),
    "ansi-escape": ("Ada\x1b[31m", "U+001B"),
    "c1-control": ("Ada\x85", "U+0085"),
    "right-to-left-override": ("Ada\u202eecalevoL", "U+202E"),
    "left-to-right-isolate": ("Ada\u2066x\u2069", "U+2066"),
    "line-separator": ("Ada\u2028Eve", "U+2028"),
}


def card_issue(**address: Any) -> dict[str, Any]:
    return {
        "customer_id": f"c-{uuid.uuid4().hex[:10]}",
        "kind": "physical",
        "address": {
            "line1": "1 Main Street",
            "city": "London",
            "postal_code": "N1 9GU",
            "country": "GB",
            **address,
        },
    }


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(stack: RunningStack, tmp_path: Path) -> AsyncIterator[ServedGateway]:
    async with served_gateway(stack, tmp_path) as served:
        yield served


async def send(
    gateway: ServedGateway, method: str, path: str, *, json: Any = None, content: str | None = None
) -> httpx.Response:
    headers = {
        **gateway.api_headers,
        "Idempotency-Key": uuid.uuid4().hex,
        "content-type": "application/json",
    }
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        return await http.request(method, path, json=json, content=content, headers=headers)


def refused_naming(answer: httpx.Response, *loc: str | int) -> None:
    assert answer.status_code == 422, answer.text
    assert [error["loc"] for error in answer.json()["detail"]] == [list(loc)]


# Python's json reads NaN and Infinity, so FastAPI hands them on.
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/v1/cards/card_x/limits", '{"per_day_minor": %s}', "per_day_minor"),
        (
            "POST",
            "/v1/disputes",
            '{"transaction_id": "txn_x", "customer_id": "c-x", "reason": "fraudulent",'
            ' "amount_minor": %s}',
            "amount_minor",
        ),
        (
            "POST",
            "/v1/fx/quotes",
            '{"customer_id": "c-x", "sell_currency": "USD", "buy_currency": "EUR",'
            ' "sell_amount_minor": %s}',
            "sell_amount_minor",
        ),
        ("POST", "/v1/pings", '{"requested_by": %s}', "requested_by"),
    ],
    ids=["limits", "dispute", "fx-quote", "string-field"],
)
async def test_a_number_that_is_not_finite_is_a_422_naming_the_field(
    gateway: ServedGateway, method: str, path: str, body: str, field: str, number: str
) -> None:
    answer = await send(gateway, method, path, content=body % number)
    refused_naming(answer, "body", field)
    assert answer.json()["detail"][0]["input"] == str(float(number))


async def test_an_address_line_of_mebibytes_is_refused_naming_it(gateway: ServedGateway) -> None:
    # Under the body cap, the field's bound refuses it by name...
    answer = await send(gateway, "POST", "/v1/cards", json=card_issue(line1="x" * NEAR_BODY_CAP))
    refused_naming(answer, "body", "address", "line1")
    # ...and over it, the cap refuses the body whole; neither reaches Temporal.
    answer = await send(gateway, "POST", "/v1/cards", json=card_issue(line1="x" * THREE_MIB))
    assert answer.status_code == 413, answer.text


@pytest.mark.parametrize(
    ("field", "chars_max"),
    [("line1", 200), ("line2", 200), ("city", 200), ("postal_code", 20)],
)
async def test_an_address_is_bounded_at_its_documented_lengths(
    gateway: ServedGateway, field: str, chars_max: int
) -> None:
    answer = await send(
        gateway, "POST", "/v1/cards", json=card_issue(**{field: "x" * (chars_max + 1)})
    )
    refused_naming(answer, "body", "address", field)


@pytest.mark.parametrize("customer_id", [".", ".."])
@pytest.mark.parametrize(
    ("method", "path", "body", "loc"),
    [
        ("POST", "/v1/billing/{id}/2024-01", None, ("path", "customer_id")),
        ("GET", "/v1/billing/{id}/2024-01", None, ("path", "customer_id")),
        ("GET", "/v1/statements/{id}/2024-01", None, ("path", "customer_id")),
        (
            "POST",
            "/v1/onboardings/{id}/documents",
            {"documents": [{"type": "passport", "file_name": "passport.jpg"}]},
            ("path", "customer_id"),
        ),
        ("POST", "/v1/cards", "card", ("body", "customer_id")),
        ("POST", "/v1/onboardings", "onboarding", ("body", "profile", "customer_id")),
        (
            "POST",
            "/v1/disputes",
            {"transaction_id": "txn_x", "customer_id": "{id}", "reason": "fraudulent"},
            ("body", "customer_id"),
        ),
        (
            "POST",
            "/v1/fx/quotes",
            {
                "customer_id": "{id}",
                "sell_currency": "USD",
                "buy_currency": "EUR",
                "sell_amount_minor": 100,
            },
            ("body", "customer_id"),
        ),
    ],
    ids=[
        "bill",
        "billing-status",
        "statement",
        "resubmit",
        "card",
        "onboarding",
        "dispute",
        "fx-quote",
    ],
)
async def test_a_customer_id_of_dots_is_a_422_naming_it(
    gateway: ServedGateway,
    method: str,
    path: str,
    body: Any,
    loc: tuple[str, ...],
    customer_id: str,
) -> None:
    if body == "card":
        body = {**card_issue(), "customer_id": customer_id}
    elif body == "onboarding":
        body = onboarding(customer_id=customer_id)
    elif isinstance(body, dict) and body.get("customer_id") == "{id}":
        body = {**body, "customer_id": customer_id}
    # Percent-encoded, as a client sends dots it means as a path segment's value.
    segment = customer_id.replace(".", "%2E")
    answer = await send(gateway, method, path.replace("{id}", segment), json=body)
    refused_naming(answer, *loc)


@pytest.mark.parametrize("born", ["1800-01-01", "1899-12-31", "2999-01-01", "2100-06-30"])
async def test_an_implausible_birth_date_is_a_422_naming_it(
    gateway: ServedGateway, born: str
) -> None:
    answer = await send(gateway, "POST", "/v1/onboardings", json=onboarding(date_of_birth=born))
    refused_naming(answer, "body", "profile", "date_of_birth")


@pytest.mark.parametrize(("text", "refused"), MISLEADING_TEXT.values(), ids=MISLEADING_TEXT.keys())
@pytest.mark.parametrize(
    ("method", "path", "body", "loc"),
    [
        ("POST", "/v1/onboardings", "first_name", ("body", "profile", "first_name")),
        ("POST", "/v1/onboardings", "last_name", ("body", "profile", "last_name")),
        ("POST", "/v1/cards", "line1", ("body", "address", "line1")),
        ("POST", "/v1/cards/card_x/actions", {"action": "freeze"}, ("body", "reason")),
        (
            "POST",
            "/v1/onboardings/c-x/review",
            {"decision": "approve", "operator": "ops"},
            ("body", "reason"),
        ),
        (
            "POST",
            "/v1/disputes/txn_x/evidence",
            {"type": "receipt"},
            ("body", "description"),
        ),
    ],
    ids=["first-name", "last-name", "address", "card-reason", "review-reason", "evidence"],
)
async def test_text_with_control_or_bidi_characters_is_a_422_naming_the_field(
    gateway: ServedGateway,
    method: str,
    path: str,
    body: Any,
    loc: tuple[str, ...],
    text: str,
    refused: str,
) -> None:
    if body in ("first_name", "last_name"):
        body = onboarding(**{body: text})
    elif body == "line1":
        body = card_issue(line1=text)
    else:
        body = {**body, loc[-1]: text}
    answer = await send(gateway, method, path, json=body)
    refused_naming(answer, *loc)
    assert refused in answer.json()["detail"][0]["msg"]


async def test_evidence_may_span_lines_and_names_may_join_scripts(
    gateway: ServedGateway,
) -> None:
    # Evidence is text of several lines; a Persian name needs its zero-width non-joiner.
    evidence = await send(
        gateway,
        "POST",
        "/v1/disputes/txn_unknown/evidence",
        json={"type": "receipt", "description": "Paid twice:\n\t- 12 May\n\t- 13 May"},
    )
    assert evidence.status_code == 404, evidence.text  # valid, but no such dispute
    answer = await send(gateway, "POST", "/v1/cards", json=card_issue(line1="خیابان\u200cآزادی 1"))
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize("field", ["per_transaction_minor", "per_day_minor", "per_month_minor"])
async def test_a_spending_limit_past_the_ledgers_amounts_is_a_422_naming_it(
    gateway: ServedGateway, field: str
) -> None:
    answer = await send(gateway, "PUT", "/v1/cards/card_x/limits", json={field: 10**30})
    refused_naming(answer, "body", field)
