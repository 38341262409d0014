"""What cardflow takes in holds only what every layer inside can store."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from schemas.cards import SpendingLimits
from schemas.disputes import DisputeSubmission
from schemas.edge import DAY_MAX, DAY_MIN, EdgeModel
from schemas.onboarding import OnboardingInput
from schemas.reconciliation import ReconciliationInput
from starters.gateway import api


def test_every_api_body_refuses_what_postgresql_cannot_store() -> None:
    bodies = {
        route.path: param.field_info.annotation
        for route in api.router.routes
        if isinstance(route, APIRoute)
        for param in route.dependant.body_params
    }
    assert bodies, "the API takes bodies"
    refusing = {
        path
        for path, model in bodies.items()
        if isinstance(model, type) and issubclass(model, EdgeModel)
    }
    assert set(bodies) - refusing == set()


@pytest.mark.parametrize(
    ("model", "data", "loc", "where"),
    [
        (
            DisputeSubmission,
            {"evidence": [{"type": "receipt", "description": "paid\x00twice"}]},
            ("evidence", 0, "description"),
            "",
        ),
        (SpendingLimits, {"blocked_mccs": ["5812", "79\x0095"]}, ("blocked_mccs",), "[1]"),
        (
            OnboardingInput,
            {
                "profile": {
                    "customer_id": "c-1",
                    "first_name": "Ada",
                    "last_name": "Love\x00lace",
                    "date_of_birth": "1815-12-10",
                    "country": "GBR",
                    "email": "ada@example.com",
                },
                "documents": [{"type": "passport", "file_name": "p.jpg"}],
            },
            ("profile", "last_name"),
            "",
        ),
    ],
    ids=["nested-list-of-models", "list-of-strings", "nested-model"],
)
def test_a_nul_anywhere_is_refused_naming_the_field(
    model: type[BaseModel], data: dict[str, Any], loc: tuple[Any, ...], where: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(data)
    [error] = refused.value.errors()
    assert error["loc"] == loc
    assert f"{where} must not contain the character U+0000".strip() in error["msg"]


@pytest.mark.parametrize(
    "day", [date(1, 1, 1), date(9999, 12, 31), date(1999, 12, 31), date(2100, 1, 1)]
)
def test_a_reconciliation_day_whose_arithmetic_could_overflow_is_refused(day: date) -> None:
    with pytest.raises(ValidationError) as refused:
        ReconciliationInput(settlement_date=day, reports_dir="/tmp/reports")
    assert refused.value.errors()[0]["loc"] == ("settlement_date",)
    for edge in (DAY_MIN, DAY_MAX):
        assert ReconciliationInput(settlement_date=edge, reports_dir="/tmp/reports")
