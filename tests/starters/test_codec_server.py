"""The codec server decodes what workers encoded, for the Web UI, and nothing it cannot."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from starters.codec_server import create_app
from starters.health import ping
from tests.codec import codec_server, payloads_of
from tests.conftest import RunningStack
from workers.converter import EncryptionCodec, generate_key
from workers.secrets import new_codec_token
from workflows.health import ping_workflow_id

UI_ORIGIN = "http://localhost:8233"
TOKEN = new_codec_token()


def client_for(codec: EncryptionCodec) -> httpx.AsyncClient:
    app = create_app(codec, [UI_ORIGIN], TOKEN)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://codec",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def body(payloads: list[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


async def test_decodes_the_input_a_worker_encoded_in_a_real_history(stack: RunningStack) -> None:
    workflow_id = ping_workflow_id(f"codec-{uuid.uuid4().hex}")
    await ping(stack.client, stack.queues, requested_by="operator Grace", workflow_id=workflow_id)
    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    async with client_for(stack.codec) as http:
        response = await http.post(
            "/decode",
            content=body(list(started.input.payloads)),
            headers={"X-Namespace": "default"},
        )
    assert response.status_code == 200
    [decoded] = json_format.Parse(response.text, Payloads()).payloads
    assert decoded.metadata["encoding"] == b"json/plain"
    assert json.loads(decoded.data)["requested_by"] == "operator Grace"


async def test_encode_then_decode_round_trips(codec: EncryptionCodec) -> None:
    original = Payload(metadata={"encoding": b"json/plain"}, data=b'{"customer":"c-1"}')
    async with client_for(codec) as http:
        encoded = await http.post("/encode", content=body([original]))
        [ciphertext] = json_format.Parse(encoded.text, Payloads()).payloads
        assert b"c-1" not in ciphertext.data
        decoded = await http.post("/decode", content=encoded.text)
    assert json_format.Parse(decoded.text, Payloads()).payloads[0] == original


async def test_unknown_key_id_is_refused_with_a_clear_error(codec: EncryptionCodec) -> None:
    foreign = EncryptionCodec([("someone-elses-key", base64.b64decode(generate_key()))])
    [payload] = await foreign.encode([Payload(data=b"x")])
    async with client_for(codec) as http:
        response = await http.post("/decode", content=body([payload]))
    assert response.status_code == 400
    assert response.json() == {
        "error": "payload was encrypted with unknown key id 'someone-elses-key'"
    }


async def test_malformed_body_is_a_400_not_a_crash(codec: EncryptionCodec) -> None:
    async with client_for(codec) as http:
        response = await http.post("/decode", content=b"{not json")
    assert response.status_code == 400
    assert "payloads" in response.json()["error"]


async def test_cors_admits_the_web_ui_origin_only(codec: EncryptionCodec) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    async with client_for(codec) as http:
        allowed = await http.options("/decode", headers={"Origin": UI_ORIGIN, **preflight})
        refused = await http.options(
            "/decode", headers={"Origin": "http://evil.example", **preflight}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


# ----- malformed payloads, over real HTTP -----------------------------------------


def encrypted_shape(data: bytes, key_id: bytes | None = b"test-key-1") -> Payload:
    metadata = {"encoding": b"binary/encrypted"}
    if key_id is not None:
        metadata["encryption-key-id"] = key_id
    return Payload(metadata=metadata, data=data)


async def forged_tag(codec: EncryptionCodec) -> Payload:
    [payload] = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"1")])
    return encrypted_shape(payload.data[:-1] + bytes([payload.data[-1] ^ 1]))


async def not_a_payload(codec: EncryptionCodec) -> Payload:
    # Authenticates under the key, but what it holds is no Payload message.
    key_id = codec.active_key_id
    sealed = codec._ciphers[key_id].encrypt(b"\x00" * 12, b"\xff\xff\xff", key_id.encode())
    return encrypted_shape(b"\x00" * 12 + sealed, key_id.encode())


# (shape, the payload, words the 400's error must carry)
MALFORMED = {
    "empty data": (encrypted_shape(b""), "is 0 bytes, shorter than its nonce and tag"),
    "shorter than the nonce": (encrypted_shape(b"12345"), "is 5 bytes, shorter"),
    "nonce and part of a tag": (encrypted_shape(b"n" * 27), "is 27 bytes, shorter"),
    "no key id": (encrypted_shape(b"n" * 40, key_id=None), "names no key id"),
    "empty key id": (encrypted_shape(b"n" * 40, key_id=b""), "names no key id"),
    "unknown encoding": (
        Payload(metadata={"encoding": b"binary/encrypted-v9"}, data=b"x"),
        "payload encoding 'binary/encrypted-v9' is not one cardflow reads",
    ),
    "no encoding": (Payload(data=b"x"), "payload encoding none is not one cardflow reads"),
}


@pytest.mark.parametrize("shape", [*sorted(MALFORMED), "forged tag", "not a payload"])
async def test_a_malformed_payload_is_answered_400_naming_the_fault_never_500(
    codec: EncryptionCodec, shape: str
) -> None:
    if shape == "forged tag":
        payload, words = await forged_tag(codec), "does not authenticate under key id"
    elif shape == "not a payload":
        payload, words = await not_a_payload(codec), "does not hold a payload"
    else:
        payload, words = MALFORMED[shape]
    good = Payload(metadata={"encoding": b"json/plain"}, data=b'"fine"')
    async with codec_server(codec, TOKEN) as http:
        response = await http.post("/decode", content=body([good, payload]))
        assert response.status_code == 400, response.text
        assert words in response.json()["error"]
        # The server still answers the next request.
        healthy = await http.post("/decode", content=body([good]))
        assert healthy.status_code == 200
        assert payloads_of(healthy) == [good]


@pytest.mark.parametrize(
    "payload",
    [
        Payload(data=b"x"),
        Payload(metadata={"encoding": b"binary/encrypted-v9"}, data=b"x"),
        encrypted_shape(b"n" * 40),
    ],
    ids=["no encoding", "unknown encoding", "already encrypted"],
)
async def test_encode_takes_only_what_a_worker_can_read(
    codec: EncryptionCodec, payload: Payload
) -> None:
    async with codec_server(codec, TOKEN) as http:
        response = await http.post("/encode", content=body([payload]))
    assert response.status_code == 400, response.text
    assert "is not one cardflow reads" in response.json()["error"]
