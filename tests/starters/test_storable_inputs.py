"""A value an inner layer cannot hold (a NUL in a name, a lone surrogate, a
day whose arithmetic overflows) is refused where it enters, naming the
field, before any process is started that would retry it forever."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import RunningStack
from tests.starters.inprocess import gateway

OUT_OF_RANGE_DAYS = ["0001-01-01", "9999-12-31", "1999-12-31", "2100-01-01"]


def onboarding(**profile: Any) -> dict[str, Any]:
    return {
        "profile": {
            "customer_id": f"c-{uuid.uuid4().hex[:10]}",
            "first_name": "Grace",
            "last_name": "Hopper",
            "date_of_birth": "1985-12-09",
            "country": "USA",
            "email": "grace@example.com",
            **profile,
        },
        "documents": [{"type": "passport", "country": "USA", "file_name": "passport.jpg"}],
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [("first_name", "Gr\x00ce"), ("last_name", "Hop\ud800per")],
    ids=["nul", "lone-surrogate"],
)
async def test_an_onboarding_with_a_name_postgresql_cannot_store_is_a_422_naming_it(
    stack: RunningStack, tmp_path: Path, field: str, value: str
) -> None:
    async with gateway(stack, tmp_path) as http:
        # As JSON sends them: a lone surrogate as its \ud800 escape.
        answer = await http.post(
            "/v1/onboardings",
            content=json.dumps(onboarding(**{field: value})),
            headers={"Idempotency-Key": uuid.uuid4().hex, "content-type": "application/json"},
        )
    assert answer.status_code == 422, answer.text
    assert [error["loc"] for error in answer.json()["detail"]] == [["body", "profile", field]]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/reconciliations/issuer/{day}", None),
        ("GET", "/v1/reconciliations/issuer/{day}", None),
        (
            "POST",
            "/v1/reconciliations/issuer/{day}/decisions",
            {"item_id": "txn_1", "action": "dismiss", "operator": "op"},
        ),
    ],
    ids=["start", "status", "decide"],
)
@pytest.mark.parametrize("day", OUT_OF_RANGE_DAYS)
async def test_a_reconciliation_day_out_of_range_is_a_422_naming_it(
    stack: RunningStack,
    tmp_path: Path,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    day: str,
) -> None:
    async with gateway(stack, tmp_path) as http:
        answer = await http.request(method, path.format(day=day), json=body)
    assert answer.status_code == 422, answer.text
    assert [error["loc"] for error in answer.json()["detail"]] == [["path", "settlement_date"]]


@pytest.mark.parametrize("day", OUT_OF_RANGE_DAYS)
def test_the_cli_refuses_a_reconciliation_day_out_of_range_naming_it(day: str) -> None:
    from starters.cli import app

    # Nothing listens there: a command that gets as far as Temporal fails otherwise.
    answer = CliRunner().invoke(
        app, ["reconcile", "run", "--date", day], env={"TEMPORAL_ADDRESS": "127.0.0.1:9"}
    )
    assert answer.exit_code == 2, answer.output
    assert "date" in answer.output and "2099-12-31" in answer.output
