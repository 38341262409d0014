"""An amount beyond what a card program moves is refused where it enters,
naming the field, before any process or the ledger sees it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import Platform

# Near 2**63: it fits a bigint alone, but no running total can take it twice.
HUGE_MINOR = 2**62


def authorization_request(**amounts: int) -> dict[str, Any]:
    data = {
        "authorization_id": f"auth_{uuid.uuid4().hex[:8]}",
        "kind": "initial",
        "card_id": "card_unknown",
        "amount_minor": 1_000,
        "currency": "USD",
        "merchant_amount_minor": 1_000,
        "merchant_currency": "USD",
        "merchant": {"name": "Corner Cafe", "mcc": "5812", "country": "GB"},
        **amounts,
    }
    return {
        "id": f"evt_{uuid.uuid4().hex[:12]}",
        "type": "authorization.request",
        "created_at": datetime.now(UTC).isoformat(),
        "data": data,
    }


async def ask(platform: Platform, event: dict[str, Any]) -> httpx.Response:
    body = json.dumps(event)
    stamp = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": event["id"],
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(platform.sim.secrets["issuer"]).sign(event["id"], stamp, body),
    }
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as http:
        return await http.post("/realtime/issuer/authorization", content=body, headers=headers)


@pytest.mark.parametrize("field", ["amount_minor", "merchant_amount_minor", "pending_amount_minor"])
async def test_a_real_time_question_of_an_impossible_amount_is_a_400_naming_it(
    platform: Platform, field: str
) -> None:
    answer = await ask(platform, authorization_request(**{field: HUGE_MINOR}))
    assert answer.status_code == 400, answer.text
    assert [error["loc"] for error in answer.json()["detail"]] == [["data", field]]
    # A card program's own amounts still reach the card (this one is unknown).
    answer = await ask(platform, authorization_request())
    assert answer.status_code == 200 and "not active" in answer.json()["reason"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/v1/cards/card_unknown/limits", {"per_day_minor": HUGE_MINOR}, "per_day_minor"),
        (
            "POST",
            "/v1/disputes",
            {
                "transaction_id": "txn_unknown",
                "customer_id": "c-unknown",
                "reason": "fraudulent",
                "amount_minor": HUGE_MINOR,
            },
            "amount_minor",
        ),
    ],
)
async def test_the_api_refuses_an_impossible_amount_with_a_422_naming_it(
    platform: Platform, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    headers = {**platform.api_headers, "Idempotency-Key": uuid.uuid4().hex}
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as http:
        answer = await http.request(method, path, json=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert [error["loc"] for error in answer.json()["detail"]] == [["body", field]]


def test_the_cli_refuses_an_impossible_amount_naming_it_before_calling_anyone() -> None:
    from typer.testing import CliRunner

    from starters.cli import app

    answer = CliRunner().invoke(
        app, ["card", "limits", "card_unknown", "--per-day", str(HUGE_MINOR)]
    )
    assert answer.exit_code == 2, answer.output
    assert "--per-day" in answer.output
