"""What cardflow takes in holds only what every layer inside can store."""

from __future__ import annotations

import enum
import math
import types
import typing
import unicodedata
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any, Literal

import pytest
from fastapi._compat import ModelField
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from temporalio import workflow

from schemas.cards import SpendingLimits
from schemas.cashback import CampaignFile, SegmentAssignment
from schemas.customers import BIRTH_DATE_MIN, CustomerProfile
from schemas.disputes import DisputeSubmission, EvidenceItem
from schemas.edge import DAY_MAX, DAY_MIN, NAME_CHARS_MAX, EdgeModel, storable
from schemas.onboarding import OnboardingInput
from schemas.reconciliation import ReconciliationInput
from starters.gateway import api, webapp
from workflows.catalog import ALL_WORKFLOWS


def _body_params(dependant: Dependant) -> Iterator[ModelField]:
    """A route's body parameters, its dependencies' (a body checked by a dependency) included."""
    yield from dependant.body_params
    for dependency in dependant.dependencies:
        yield from _body_params(dependency)


def api_bodies() -> Iterator[tuple[str, Any]]:
    """(path, body type) of each API route that takes a body: the upstream
    API's and the Telegram WebApp's."""
    for route in [*api.router.routes, *webapp.router.routes]:
        if isinstance(route, APIRoute):
            for param in _body_params(route.dependant):
                yield route.path, param.field_info.annotation


def test_every_api_body_refuses_what_postgresql_cannot_store() -> None:
    bodies = dict(api_bodies())
    assert "/v1/onboardings" in bodies
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
                    "date_of_birth": "1985-12-10",
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


# Messages a provider sends through the gateway's signed webhooks (and the
# issuer's real-time requests), bounded there as a whole (a body of at most
# WEBHOOK_BODY_BYTES_MAX) and refused whole when they do not fit their type;
# the card entity's own state, which only cardflow's card issuing starts; and
# the replacement a card's process hands to the issuing of its successor.
NOT_TAKEN_IN_FROM_A_CLIENT = {
    "AuthorizationRequest",
    "CardInput",
    "CardNetworkEvent",
    "CardReissue",
    "Deposit",
    "InboundTransfer",
    "IssuerDisputeEvent",
    "KycResult",
    "ShippingUpdate",
    "WebhookEventNote",
}
# Bodies the CLI reads from a file, not from an API route or a process's messages.
CLI_DOCUMENTS: tuple[type[BaseModel], ...] = (CampaignFile, SegmentAssignment)


def input_models() -> dict[type[BaseModel], str]:
    """Every model an API route, a CLI command or a process's start, update
    or signal takes in, with where it is taken in."""
    roots: dict[type[BaseModel], str] = {}
    for path, body in api_bodies():
        assert isinstance(body, type) and issubclass(body, BaseModel), body
        roots.setdefault(body, f"POST {path}")
    for workflow_class in ALL_WORKFLOWS:
        definition = workflow._Definition.must_from_class(workflow_class)
        handlers: list[tuple[str, Any]] = [("start", definition.run_fn)]
        handlers += [(f"signal {n}", s.fn) for n, s in definition.signals.items()]
        handlers += [(f"update {n}", u.fn) for n, u in definition.updates.items()]
        for what, handler in handlers:
            for name, hint in typing.get_type_hints(handler).items():
                if name != "return" and isinstance(hint, type) and issubclass(hint, BaseModel):
                    roots.setdefault(hint, f"{definition.name} {what}")
    for document in CLI_DOCUMENTS:
        roots.setdefault(document, "the CLI")
    return {
        model: where
        for model, where in roots.items()
        if model.__name__ not in NOT_TAKEN_IN_FROM_A_CLIENT
    }


def unbounded_fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> Iterator[str]:
    """Each string (however nested in lists and dicts) and each collection of
    `model` and the models it holds that has no length bound."""
    if model in seen or model.__name__ in NOT_TAKEN_IN_FROM_A_CLIENT:
        return
    seen.add(model)
    # Annotations naming a model defined later are resolved on first use.
    model.model_rebuild()
    config_bound = model.model_config.get("str_max_length") is not None
    for name, field in model.model_fields.items():
        where = f"{model.__name__}.{name}"
        for kind, annotation in _parts(field.annotation, field.metadata):
            if kind == "model":
                yield from unbounded_fields(annotation, seen)
            elif kind == "str" and not (annotation or config_bound):
                yield f"{where} (a string)"
            elif kind == "collection" and not annotation:
                yield f"{where} (a collection)"


def _parts(annotation: Any, metadata: list[Any]) -> Iterator[tuple[str, Any]]:
    """("str", bounded?), ("collection", bounded?) and ("model", model) of an annotation."""
    bounded = any(getattr(m, "max_length", None) is not None for m in metadata)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        inner = [m for a in args[1:] for m in getattr(a, "metadata", [a])]
        yield from _parts(args[0], [*metadata, *inner])
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _parts(arg, metadata)
    elif origin in (list, set, frozenset, tuple):
        yield ("collection", bounded)
        for arg in args:
            if arg is not Ellipsis:
                yield from _parts(arg, [])
    elif origin is dict:
        key, value = args
        # A dict keyed by an enum or a Literal has as many entries at most.
        finite_keys = typing.get_origin(key) is Literal or (
            isinstance(key, type) and issubclass(key, enum.Enum)
        )
        yield ("collection", bounded or finite_keys)
        yield from _parts(key, [])
        yield from _parts(value, [])
    elif annotation is str:
        yield ("str", bounded)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield ("model", annotation)
    else:
        assert not isinstance(annotation, typing.ForwardRef | str), annotation


def test_every_string_and_collection_taken_in_has_a_length_bound() -> None:
    models = input_models()
    assert {"StartOnboarding", "OnboardingInput", "CampaignFile"} <= {m.__name__ for m in models}
    seen: set[type[BaseModel]] = set()
    unbounded = [found for model in models for found in unbounded_fields(model, seen)]
    assert unbounded == []


# Characters that change how the text around them shows, by Unicode's own
# properties: the bidirectional controls (embeddings, overrides, isolates,
# marks), the deprecated format characters, the byte order mark and
# interlinear annotation.
_BIDI_CLASSES = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}
_MARKS_AND_FORMATS = {0x061C, 0x200E, 0x200F, 0xFEFF, *range(0x206A, 0x2070)}
_MARKS_AND_FORMATS |= set(range(0xFFF9, 0xFFFC))


def shows_what_it_says(text: str, *, lines: bool) -> bool:
    allowed_controls = "\t\n" if lines else ""
    return not any(
        (unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") and c not in allowed_controls)
        or unicodedata.bidirectional(c) in _BIDI_CLASSES
        or ord(c) in _MARKS_AND_FORMATS
        for c in text
    )


def profile(**fields: Any) -> dict[str, Any]:
    return {
        "customer_id": "c-1",
        "first_name": "Grace",
        "last_name": "Hopper",
        "date_of_birth": "1985-12-09",
        "country": "USA",
        "email": "grace@example.com",
        **fields,
    }


# Any text, with the characters that matter drawn often.
texts = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from("\x00\t\n\r\x1b\x7f\x85\u061c\u200c\u200d\u200e\u202e\u2028\u2066\ufeff"),
    ),
    max_size=120,
)


@given(text=texts)
def test_a_name_is_taken_exactly_when_it_shows_what_it_says_and_fits(text: str) -> None:
    fits = 1 <= len(text) <= NAME_CHARS_MAX
    try:
        CustomerProfile.model_validate(profile(first_name=text))
    except ValidationError as refused:
        assert [error["loc"] for error in refused.errors()] == [("first_name",)]
        assert not (fits and shows_what_it_says(text, lines=False))
    else:
        assert fits and shows_what_it_says(text, lines=False)


@given(text=texts)
def test_evidence_is_taken_exactly_when_it_shows_what_it_says_on_its_lines(text: str) -> None:
    try:
        EvidenceItem.model_validate({"type": "receipt", "description": text})
    except ValidationError as refused:
        assert [error["loc"] for error in refused.errors()] == [("description",)]
        assert not (text and shows_what_it_says(text, lines=True))
    else:
        assert text and shows_what_it_says(text, lines=True)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf, Decimal("NaN")])
def test_a_number_that_is_not_finite_is_refused_however_deep(number: float | Decimal) -> None:
    with pytest.raises(ValueError, match=r"^policy\['fees'\]\[1\] must be a finite number$"):
        storable({"fees": [1, number]}, "policy")


@pytest.mark.parametrize("born", [date(1899, 12, 31), date(1, 1, 1), date(9999, 12, 31)])
def test_a_birth_date_is_a_past_day_from_1900(born: date) -> None:
    with pytest.raises(ValidationError) as refused:
        CustomerProfile.model_validate(profile(date_of_birth=born))
    assert [error["loc"] for error in refused.value.errors()] == [("date_of_birth",)]
    assert CustomerProfile.model_validate(profile(date_of_birth=BIRTH_DATE_MIN))
