"""The data converter: pydantic JSON round trips, AES-GCM on every payload, key rotation."""

from __future__ import annotations

import base64
import json
import stat
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ApplicationError

from schemas.health import PingInput, PingResult, QueueHealth
from schemas.money import AMOUNT_MINOR_MAX, Currency, Money, Rate
from starters.health import ping
from tests.conftest import RunningStack
from workers.converter import (
    ENCODING_ENCRYPTED,
    ENCODING_REFUSED,
    METADATA_KEY_ID,
    UNREADABLE_PAYLOAD_ERROR,
    EncryptionCodec,
    PayloadDecryptionError,
    UnknownEncryptionKeyError,
    build_data_converter,
    ensure_dev_keys,
    generate_key,
    load_keys,
)
from workers.settings import load_settings
from workflows.health import ping_workflow_id


def key(key_id: str) -> tuple[str, bytes]:
    return (key_id, base64.b64decode(generate_key()))


KEYS = [key("k1")]


class Quote(BaseModel):
    """A schema shape with a Decimal rate and nested money, as FX will use."""

    rate: Rate
    sell: Money
    buy: Money
    note: str


money = st.builds(
    Money,
    amount_minor=st.integers(min_value=-AMOUNT_MINOR_MAX, max_value=AMOUNT_MINOR_MAX),
    currency=st.sampled_from(list(Currency)),
)
texts = st.text(max_size=200)
queue_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=40)
queue_health = st.builds(
    QueueHealth,
    task_queue=queue_names,
    answered=st.booleans(),
    worker_identity=st.none() | texts,
    detail=texts,
)
schema_values = st.one_of(
    money,
    st.builds(
        Quote,
        rate=st.decimals(
            min_value=Decimal("0.000001"),
            max_value=Decimal("100000"),
            allow_nan=False,
            allow_infinity=False,
            places=8,
        ),
        sell=money,
        buy=money,
        note=texts,
    ),
    st.builds(
        PingInput,
        ledger_task_queue=queue_names,
        providers_task_queue=queue_names,
        requested_by=st.text(max_size=200),
        probe_timeout_seconds=st.integers(1, 300),
    ),
    st.builds(
        PingResult,
        workflow_task_queue=queue_names,
        requested_by=texts,
        ledger=queue_health,
        providers=queue_health,
    ),
)


@settings(max_examples=200, deadline=None)
@given(value=schema_values)
async def test_schema_types_round_trip_through_the_encrypting_converter(value: BaseModel) -> None:
    converter = build_data_converter(KEYS)
    payloads = await converter.encode([value])
    assert all(p.metadata["encoding"] == ENCODING_ENCRYPTED for p in payloads)
    [decoded] = await converter.decode(payloads, [type(value)])
    assert decoded == value
    assert type(decoded) is type(value)


async def test_money_travels_as_integers_and_rates_as_strings() -> None:
    plain = build_data_converter(KEYS).payload_converter
    quote = Quote(
        rate=Decimal("1.0825"),
        sell=Money(amount_minor=1000, currency=Currency.USD),
        buy=Money(amount_minor=923, currency=Currency.EUR),
        note="",
    )
    [payload] = plain.to_payloads([quote])
    document = json.loads(payload.data)
    assert document["rate"] == "1.0825"
    assert document["sell"] == {"amount_minor": 1000, "currency": "USD"}


async def test_encrypted_payload_hides_the_plaintext() -> None:
    converter = build_data_converter(KEYS)
    [payload] = await converter.encode(
        [PingInput(ledger_task_queue="a", providers_task_queue="b", requested_by="Jane Customer")]
    )
    assert b"Jane Customer" not in payload.SerializeToString()
    assert payload.metadata[METADATA_KEY_ID] == b"k1"


async def test_rotation_newest_key_encrypts_and_older_keys_still_decrypt() -> None:
    retiring = key("2025")
    old_payloads = await EncryptionCodec([retiring]).encode(
        [Payload(metadata={"encoding": b"json/plain"}, data=b"1")]
    )
    rotated = EncryptionCodec([key("2026"), retiring])
    assert (await rotated.decode(old_payloads))[0].data == b"1"
    [fresh] = await rotated.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"2")])
    assert fresh.metadata[METADATA_KEY_ID] == b"2026"


async def test_unknown_key_id_is_refused_with_its_name() -> None:
    payloads = await EncryptionCodec([key("retired")]).encode([Payload(data=b"x")])
    with pytest.raises(UnknownEncryptionKeyError, match="'retired'"):
        await EncryptionCodec([key("current")]).decode(payloads)


async def test_tampered_ciphertext_or_relabelled_key_id_does_not_decrypt() -> None:
    shared = key("a")
    codec = EncryptionCodec([shared, ("b", shared[1])])
    [payload] = await codec.encode([Payload(data=b"secret")])
    tampered = Payload()
    tampered.CopyFrom(payload)
    tampered.data = payload.data[:-1] + bytes([payload.data[-1] ^ 1])
    # Same key bytes under another id: the key id is authenticated data.
    relabelled = Payload()
    relabelled.CopyFrom(payload)
    relabelled.metadata[METADATA_KEY_ID] = b"b"
    converter = build_data_converter([shared, ("b", shared[1])])
    for forged in (tampered, relabelled):
        with pytest.raises(PayloadDecryptionError):
            codec.decrypt(forged)
        # A worker's converter refuses it rather than failing its task.
        with pytest.raises(ApplicationError, match="does not authenticate") as refused:
            await converter.decode([forged])
        assert refused.value.type == UNREADABLE_PAYLOAD_ERROR and refused.value.non_retryable


async def test_unencrypted_payloads_are_refused_unless_accepted_by_setting() -> None:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"')
    [held] = await EncryptionCodec(KEYS).decode([plain])
    assert held.metadata["encoding"] == ENCODING_REFUSED and not held.data
    with pytest.raises(ApplicationError, match="not encrypted") as refused:
        await build_data_converter(KEYS).decode([plain], [str])
    assert refused.value.type == UNREADABLE_PAYLOAD_ERROR
    # The opt-out, for histories written before payloads had to be encrypted.
    assert (await EncryptionCodec(KEYS, accept_unencrypted=True).decode([plain])) == [plain]
    assert await build_data_converter(KEYS, accept_unencrypted=True).decode([plain], [str]) == [
        "hello"
    ]


async def test_nothing_converts_a_value_into_the_refused_encoding() -> None:
    converter = build_data_converter(KEYS)
    for value in (
        None,
        b"raw",
        "text",
        {"a": 1},
        PingInput(ledger_task_queue="a", providers_task_queue="b"),
    ):
        [payload] = converter.payload_converter.to_payloads([value])
        assert payload.metadata["encoding"] != ENCODING_REFUSED


def test_dev_key_is_generated_once_owner_only(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CARDFLOW_ENCRYPTION_KEYS", raising=False)
    settings_ = load_settings(CARDFLOW_HOME=str(tmp_path / "home"))
    path = ensure_dev_keys(settings_)
    first = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_dev_keys(settings_).read_text() == first
    assert load_keys(settings_)[0][0] == first.split(":")[0]


def test_configured_keys_win_over_the_dev_key(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    configured = f"prod-2:{generate_key()},prod-1:{generate_key()}"
    settings_ = load_settings(CARDFLOW_HOME=str(tmp_path), CARDFLOW_ENCRYPTION_KEYS=configured)
    assert [key_id for key_id, _ in load_keys(settings_)] == ["prod-2", "prod-1"]
    assert not (tmp_path / "secrets").exists()


async def test_workflow_history_on_the_server_holds_only_ciphertext(stack: RunningStack) -> None:
    marker = "operator-Ada-Lovelace-7731"
    workflow_id = ping_workflow_id(f"history-{uuid.uuid4().hex}")
    result = await ping(stack.client, stack.queues, requested_by=marker, workflow_id=workflow_id)
    assert result.requested_by == marker
    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    raw = history.to_json().encode() + b"".join(e.SerializeToString() for e in history.events)
    assert marker.encode() not in raw
    assert stack.queues.ledger.encode() in raw  # task queue names are metadata, not payloads
    started = history.events[0].workflow_execution_started_event_attributes
    [input_payload] = started.input.payloads
    assert input_payload.metadata["encoding"] == ENCODING_ENCRYPTED
    [decoded] = await stack.codec.decode([input_payload])
    assert marker in json.loads(decoded.data)["requested_by"]
