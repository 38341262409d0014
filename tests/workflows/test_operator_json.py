"""The JSON the README tells operators to paste into the Web UI's update form.

Each example must name an update the workflow really has and be accepted by
the model that update validates with, so the README cannot drift from the
code. (The Web UI sends that text as a `json/plain` payload through the codec
server's /encode, which the workers read with the same converter as any
other client's.)
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from pydantic import BaseModel
from temporalio import workflow
from temporalio.api.common.v1 import Payload, Payloads

from schemas.cards import CardStateChange, ExceptionDecision
from schemas.disputes import OperatorAction
from schemas.onboarding import KycReview
from schemas.reconciliation import Decision
from schemas.topup import TopupReview
from starters.codec_server import create_app
from workers.converter import EncryptionCodec, build_data_converter, generate_key
from workers.secrets import new_codec_token
from workflows.catalog import ALL_WORKFLOWS

README = Path(__file__).resolve().parents[2] / "README.md"
OPERATOR_PARAGRAPH_START = "Operators act from the Web UI too"

# (workflow type, update, the model the update validates its argument with),
# in the order the README gives its examples.
DOCUMENTED_UPDATES: list[tuple[str, str, type[BaseModel]]] = [
    ("Onboarding", "review", KycReview),
    ("Card", "freeze", CardStateChange),
    ("Topup", "review", TopupReview),
    ("Card", "resolve_exception", ExceptionDecision),
    ("Reconciliation", "decide", Decision),
    ("Dispute", "operator_action", OperatorAction),
]


def operator_examples() -> list[tuple[str, dict[str, Any]]]:
    """(update name, JSON) pairs from the README's operator paragraph, in order."""
    text = README.read_text()
    start = text.index(OPERATOR_PARAGRAPH_START)
    end = text.index("\n## ", start)
    paragraph = text[start:end]
    examples = []
    # "update `name`:" followed by a ```json block, or "update `name` with `{...}`".
    pattern = re.compile(
        r"update `(?P<name>\w+)`(?: \([^)]*\))?(?::\s*```json\n(?P<block>.*?)\n```|"
        r" with `(?P<inline>\{.*?\})`)",
        re.DOTALL,
    )
    for match in pattern.finditer(paragraph):
        raw = match.group("block") or match.group("inline")
        examples.append((match.group("name"), json.loads(raw)))
    return examples


def update_argument_types(workflow_type: str, update: str) -> list[Any]:
    by_name = {workflow._Definition.must_from_class(cls).name: cls for cls in ALL_WORKFLOWS}
    definition = workflow._Definition.must_from_class(by_name[workflow_type])
    assert update in definition.updates, f"{workflow_type} has no update {update!r}"
    return list(definition.updates[update].arg_types or [])


def test_the_readme_gives_an_example_for_every_documented_operator_update() -> None:
    names = [name for name, _ in operator_examples()]
    assert names == [update for _, update, _ in DOCUMENTED_UPDATES]


@pytest.mark.parametrize(
    ("position", "workflow_type", "update", "model"),
    [(i, *entry) for i, entry in enumerate(DOCUMENTED_UPDATES)],
    ids=[f"{w}.{u}" for w, u, _ in DOCUMENTED_UPDATES],
)
async def test_each_readme_example_is_accepted_as_the_web_ui_sends_it(
    position: int, workflow_type: str, update: str, model: type[BaseModel]
) -> None:
    name, document = operator_examples()[position]
    assert name == update
    argument_types = update_argument_types(workflow_type, update)
    assert len(argument_types) == 1
    # The update takes the model itself, or a dict it validates with the model
    # (so that a bad value is refused by the validator, naming the field).
    assert argument_types[0] in (model, dict[str, Any]), argument_types
    # As the Web UI sends it: the JSON text in a json/plain payload, encrypted
    # by the codec server's /encode (workers refuse it unencrypted).
    ui_payload = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(document).encode())
    keys = [("k", base64.b64decode(generate_key()))]
    token = new_codec_token()
    app = create_app(EncryptionCodec(keys), [], token)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://codec",
        headers={"Authorization": f"Bearer {token}"},
    ) as http:
        encoded = await http.post(
            "/encode", content=json_format.MessageToJson(Payloads(payloads=[ui_payload]))
        )
    assert encoded.status_code == 200, encoded.text
    sent = list(json_format.Parse(encoded.text, Payloads()).payloads)
    [decoded] = await build_data_converter(keys).decode(sent, [argument_types[0]])
    model.model_validate(decoded)
