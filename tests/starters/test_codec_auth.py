"""The codec server answers only its token, from the Web UI's origins or from no browser,
and no secret of a running stack shows in its logs or in any workflow history."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import WorkflowHistory

from starters.codec_server import UNAUTHORIZED_MESSAGE, create_app
from starters.histories import RECORDING_KEYS_FILENAME
from tests.starters.conftest import DemoStack
from workers.client import connect
from workers.converter import EncryptionCodec, load_keys
from workers.secrets import codec_token, codec_ui_endpoint, new_codec_token, webhook_secrets
from workers.settings import Settings, parse_encryption_keys

UI_ORIGIN = "http://localhost:8233"
TOKEN = new_codec_token()
HISTORIES = Path(__file__).resolve().parent.parent / "histories"


def body(payloads: list[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


@pytest.fixture
def http(codec: EncryptionCodec) -> httpx.AsyncClient:
    app = create_app(codec, [UI_ORIGIN], TOKEN)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec")


async def encrypted(codec: EncryptionCodec) -> str:
    return body(await codec.encode([Payload(data=b'{"customer": "Ada"}')]))


@pytest.mark.parametrize(
    "credential",
    ["none", "wrong bearer", "wrong path token", "basic scheme", "empty bearer", "token prefix"],
)
async def test_a_request_without_the_token_is_refused_with_one_message(
    http: httpx.AsyncClient, codec: EncryptionCodec, credential: str
) -> None:
    path, headers = "/decode", {}
    if credential == "wrong bearer":
        headers = {"Authorization": f"Bearer {new_codec_token()}"}
    elif credential == "wrong path token":
        path = f"/t/{new_codec_token()}/decode"
    elif credential == "basic scheme":
        headers = {"Authorization": f"Basic {base64.b64encode(TOKEN.encode()).decode()}"}
    elif credential == "empty bearer":
        headers = {"Authorization": "Bearer "}
    elif credential == "token prefix":
        headers = {"Authorization": f"Bearer {TOKEN[:-1]}"}
    for operation in ("decode", "encode"):
        response = await http.post(
            path.replace("decode", operation), content=await encrypted(codec), headers=headers
        )
        assert response.status_code == 401, response.text
        assert response.json() == {"error": UNAUTHORIZED_MESSAGE}
        assert "Ada" not in response.text


async def test_the_token_opens_decode_as_a_bearer_header_or_as_a_path_prefix(
    http: httpx.AsyncClient, codec: EncryptionCodec
) -> None:
    by_header = await http.post(
        "/decode", content=await encrypted(codec), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    by_path = await http.post(f"/t/{TOKEN}/decode", content=await encrypted(codec))
    for response in (by_header, by_path):
        assert response.status_code == 200, response.text
        [decoded] = json_format.Parse(response.text, Payloads()).payloads
        assert json.loads(decoded.data) == {"customer": "Ada"}
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')
    encoded = await http.post(f"/t/{TOKEN}/encode", content=body([plain]))
    assert encoded.status_code == 200


async def test_another_origin_is_refused_even_with_the_token(
    http: httpx.AsyncClient, codec: EncryptionCodec
) -> None:
    refused = await http.post(
        f"/t/{TOKEN}/decode",
        content=await encrypted(codec),
        headers={"Origin": "http://evil.example"},
    )
    assert refused.status_code == 403
    assert refused.json() == {"error": "origin http://evil.example may not use this codec server"}
    assert "access-control-allow-origin" not in refused.headers
    assert "Ada" not in refused.text
    allowed = await http.post(
        f"/t/{TOKEN}/decode", content=await encrypted(codec), headers={"Origin": UI_ORIGIN}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN


async def test_the_web_ui_preflight_to_the_token_path_is_admitted(http: httpx.AsyncClient) -> None:
    preflight = await http.options(
        f"/t/{TOKEN}/decode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN


async def test_health_stays_open_and_tells_key_ids_only(
    http: httpx.AsyncClient, codec: EncryptionCodec
) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "key_ids": codec.key_ids}
    assert TOKEN not in response.text


# ----- stored histories -------------------------------------------------------------


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere inside a protobuf message (inputs, results, failures...)."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Message):
            values = [value]
        elif field.message_type.GetOptions().map_entry:
            values = list(value.values())
        else:
            values = list(value)
        for item in values:
            if isinstance(item, Message):
                yield from payloads_in(item)


async def plaintext_of(history: WorkflowHistory, codec: EncryptionCodec) -> str:
    """The history as JSON, followed by every payload decrypted."""
    parts = [json.dumps(history.to_json_dict())]
    for event in history.events:
        # reveal: plaintext payloads (search attributes, markers) as they are.
        for payload in await codec.reveal(list(payloads_in(event))):
            parts.append(payload.SerializeToString().decode(errors="replace"))
    return "\n".join(parts)


CODEC_TOKEN_ROUTE = re.compile(r"/t/[^/\s\"]+/(?:en|de)code")


async def test_no_recorded_history_carries_a_secret_even_decrypted() -> None:
    codec = EncryptionCodec(
        parse_encryption_keys((HISTORIES / RECORDING_KEYS_FILENAME).read_text().strip())
    )
    files = sorted(HISTORIES.glob("*.json"))
    assert files
    decrypted = 0
    for path in files:
        document = json.loads(path.read_text())
        history = WorkflowHistory.from_json(document["workflow_id"], document["history"])
        text = await plaintext_of(history, codec)
        for marker in ("whsec_", "Bearer ", "pepper"):
            assert marker not in text, f"{path.name} carries {marker!r}"
        # The codec's token route, in its real shape: a bare "/t/" turns up by
        # chance in the base64 of any large enough ciphertext.
        assert CODEC_TOKEN_ROUTE.search(text) is None, f"{path.name} carries a codec token URL"
        decrypted += '"customer_id"' in text
    # The scan saw inside the payloads, not only their ciphertext.
    assert decrypted > 0


# ----- the running dev stack ------------------------------------------------------------


def stack_secrets(settings: Settings) -> dict[str, str]:
    """Every secret the dev stack made for itself, by what it is."""
    found = {"codec token": codec_token(settings)}
    for provider, secrets in webhook_secrets(settings).items():
        for index, secret in enumerate(secrets):
            found[f"{provider} webhook secret {index}"] = secret
            # The key material alone, as it might be logged after decoding.
            found[f"{provider} webhook key {index}"] = secret.removeprefix("whsec_")
    for key_id, key in load_keys(settings, create_dev_key=False):
        found[f"encryption key {key_id}"] = base64.b64encode(key).decode()
    pepper = settings.home_path / "secrets" / "api-key-pepper"
    if pepper.exists():
        found["api key pepper"] = pepper.read_text().strip()
    return found


async def test_the_stack_codec_refuses_anonymous_requests_and_the_ui_carries_its_token(
    demo_stack: DemoStack,
) -> None:
    settings = demo_stack.stack.settings()
    async with httpx.AsyncClient(timeout=10) as http:
        ui = await http.get(f"http://127.0.0.1:{settings.temporal_ui_port}/api/v1/settings")
        endpoint = ui.json()["Codec"]["Endpoint"]
        assert endpoint == codec_ui_endpoint(settings)
        sample = body([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
        anonymous = await http.post(f"{settings.codec_url}/decode", content=sample)
        assert anonymous.status_code == 401
        assert anonymous.json() == {"error": UNAUTHORIZED_MESSAGE}
        by_ui_endpoint = await http.post(
            f"{endpoint}/decode",
            content=sample,
            headers={"Origin": f"http://localhost:{settings.temporal_ui_port}"},
        )
        assert by_ui_endpoint.status_code == 200
        foreign = await http.post(
            f"{endpoint}/decode", content=sample, headers={"Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403


async def test_no_secret_of_the_stack_shows_in_its_logs_or_in_any_history(
    demo_stack: DemoStack,
) -> None:
    settings = demo_stack.stack.settings()
    secrets = stack_secrets(settings)
    assert len(secrets) > 3
    logs = sorted((demo_stack.stack.home / "logs").glob("*.log"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        for what, secret in secrets.items():
            assert secret not in text, f"{log.name} shows the {what}"
    for what, secret in secrets.items():
        assert secret not in demo_stack.demo_output, f"`cardflow demo` printed the {what}"

    client = await connect(settings)
    codec = EncryptionCodec(load_keys(settings, create_dev_key=False))
    histories = 0
    async for execution in client.list_workflows(""):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        text = await plaintext_of(await handle.fetch_history(), codec)
        for what, secret in secrets.items():
            assert secret not in text, f"the history of {execution.id} carries the {what}"
        assert "whsec_" not in text, execution.id
        histories += 1
    assert histories > 10, "the demo should have left its workflows to scan"
