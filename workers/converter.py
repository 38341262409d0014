"""The one data converter of cardflow: pydantic JSON, then AES-GCM encryption.

Client, workers, the history replayer and the codec server all build their
converter here, so a payload written by any of them is readable by the others.

Wire format of an encrypted payload:
    metadata["encoding"]          = b"binary/encrypted"
    metadata["encryption-key-id"] = key id (ASCII)
    data                          = 12-byte nonce || AES-GCM(serialized Payload)
The key id is also the associated data, so a payload cannot be made to decrypt
under another id's key by editing its metadata.

Inbound payloads must be encrypted. Anyone who reaches the Temporal frontend
can send a workflow a start, signal or update; one that is not encrypted (the
`temporal` CLI without the codec, say) or whose ciphertext does not
authenticate was not written by a holder of the key, so the codec's decode
turns it into a *refused* payload rather than passing it on. Turning it into a
value then raises a non-retryable `ApplicationError` (UNREADABLE_PAYLOAD_ERROR),
and Temporal's SDK does with that what each message needs: an update is
rejected to its caller, a signal is dropped (logged) and the workflow goes on,
a start fails the new workflow at once; none of them applies anything. The
codec does not raise instead: a failed decode fails the whole workflow task,
again at every retry, so one such signal in a history would stop its workflow
for good, and an update would be retried, not rejected. A payload naming a key
id this process does not hold still raises (the task fails and is retried
until the key is deployed): that is how a key rollout out of order shows, and
dropping a real signal then would lose it.

`accept_unencrypted=True` (CARDFLOW_ACCEPT_UNENCRYPTED_PAYLOADS) restores the
old pass-through of unencrypted payloads, for replaying histories written
before payloads were required to be encrypted; every worker must agree on it.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticPayloadConverter, pydantic_data_converter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    EncodingPayloadConverter,
    PayloadCodec,
)
from temporalio.exceptions import ApplicationError

from workers.settings import ENCRYPTION_KEY_BYTES, Settings, parse_encryption_keys

ENCODING_ENCRYPTED = b"binary/encrypted"
METADATA_ENCODING = "encoding"
METADATA_KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
TAG_BYTES = 16  # AES-GCM's authentication tag, at the end of the ciphertext
DEV_KEYS_FILENAME = "encryption-keys"
# What the codec's decode hands on in place of a payload it will not let in;
# the reason travels in METADATA_REFUSAL. No converter writes this encoding.
ENCODING_REFUSED = b"binary/cardflow-refused"
METADATA_REFUSAL = "cardflow-refusal"
UNREADABLE_PAYLOAD_ERROR = "UnreadablePayload"
# The plaintext encodings of Temporal's payload converters: what an encrypted
# payload holds, what /encode takes, and what /decode shows as it is (the
# SDK's own marker details are json/plain).
PLAIN_ENCODINGS = frozenset(
    {b"binary/null", b"binary/plain", b"json/plain", b"json/protobuf", b"binary/protobuf"}
)


class UnknownEncryptionKeyError(ValueError):
    """A payload names a key id this process does not hold."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"payload was encrypted with unknown key id '{key_id}'")
        self.key_id = key_id


class MalformedPayloadError(ValueError):
    """A payload no holder of the keys wrote: unknown encoding, cut-short or forged ciphertext."""


class PayloadDecryptionError(MalformedPayloadError):
    """The key id is known but the ciphertext does not authenticate."""


class UnencryptedPayloadError(MalformedPayloadError):
    """A payload that should have been encrypted is not."""


def _encoding_name(payload: Payload) -> str:
    encoding = payload.metadata.get(METADATA_ENCODING)
    return "none" if encoding is None else repr(encoding.decode(errors="replace"))


def check_plain_encoding(payload: Payload) -> None:
    """Raise MalformedPayloadError unless the payload is in a plaintext encoding."""
    if payload.metadata.get(METADATA_ENCODING) not in PLAIN_ENCODINGS:
        known = ", ".join(sorted(encoding.decode() for encoding in PLAIN_ENCODINGS))
        raise MalformedPayloadError(
            f"payload encoding {_encoding_name(payload)} is not one cardflow reads ({known})"
        )


def refused(reason: str) -> Payload:
    """The payload decode hands on in place of one it will not let in."""
    return Payload(
        metadata={METADATA_ENCODING: ENCODING_REFUSED, METADATA_REFUSAL: reason.encode()}
    )


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads; the first key encrypts, every key decrypts.

    `decode` (the data converter's side) refuses what no key holder wrote;
    `decrypt` and `reveal` raise instead, for the codec server to answer 400.
    """

    def __init__(
        self, keys: Sequence[tuple[str, bytes]], *, accept_unencrypted: bool = False
    ) -> None:
        # An empty key set would silently write plaintext histories.
        assert keys, "at least one encryption key is required"
        for key_id, key in keys:
            assert len(key) == ENCRYPTION_KEY_BYTES, f"key '{key_id}' has the wrong length"
        self._active_key_id = keys[0][0]
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}
        self._accept_unencrypted = accept_unencrypted

    @property
    def active_key_id(self) -> str:
        return self._active_key_id

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    @property
    def accepts_unencrypted(self) -> bool:
        return self._accept_unencrypted

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._admit(payload) for payload in payloads]

    async def reveal(self, payloads: Sequence[Payload]) -> list[Payload]:
        """For reading: encrypted payloads decrypted, plaintext ones as they are.

        Raises MalformedPayloadError (or UnknownEncryptionKeyError) for the
        first payload that is neither.
        """
        revealed = []
        for payload in payloads:
            if payload.metadata.get(METADATA_ENCODING) == ENCODING_ENCRYPTED:
                revealed.append(self.decrypt(payload))
            else:
                check_plain_encoding(payload)
                revealed.append(payload)
        return revealed

    def _admit(self, payload: Payload) -> Payload:
        if payload.metadata.get(METADATA_ENCODING) != ENCODING_ENCRYPTED:
            if self._accept_unencrypted:
                return payload
            return refused(
                f"payload is not encrypted (encoding {_encoding_name(payload)}): cardflow "
                f"takes only payloads encrypted with its key, e.g. through its codec server"
            )
        try:
            return self.decrypt(payload)
        except MalformedPayloadError as error:
            # Deterministic: the same payload is refused on every replay.
            return refused(str(error))

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self._active_key_id
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._ciphers[key_id].encrypt(
            nonce, payload.SerializeToString(), key_id.encode()
        )
        return Payload(
            metadata={METADATA_ENCODING: ENCODING_ENCRYPTED, METADATA_KEY_ID: key_id.encode()},
            data=nonce + ciphertext,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The payload an encrypted one holds; raises on anything else."""
        if payload.metadata.get(METADATA_ENCODING) != ENCODING_ENCRYPTED:
            raise UnencryptedPayloadError(
                f"payload is not encrypted (encoding {_encoding_name(payload)})"
            )
        raw_key_id = payload.metadata.get(METADATA_KEY_ID)
        if not raw_key_id:
            raise MalformedPayloadError(f"encrypted payload names no key id ({METADATA_KEY_ID})")
        key_id = raw_key_id.decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownEncryptionKeyError(key_id)
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise MalformedPayloadError(
                f"encrypted payload is {len(data)} bytes, shorter than its nonce and tag "
                f"({NONCE_BYTES} + {TAG_BYTES})"
            )
        try:
            plaintext = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload does not authenticate under key id '{key_id}'"
            ) from None
        try:
            return Payload.FromString(plaintext)
        except DecodeError:
            raise MalformedPayloadError(
                f"payload under key id '{key_id}' does not hold a payload"
            ) from None


class RefusedPayloadConverter(EncodingPayloadConverter):
    """Reads ENCODING_REFUSED by raising: the message it stood for is not applied.

    Non-retryable, and a failure error: Temporal's SDK rejects an update with
    it, drops a signal with it, and fails a workflow whose start input it is.
    """

    @property
    def encoding(self) -> str:
        return ENCODING_REFUSED.decode()

    def to_payload(self, value: Any) -> Payload | None:
        return None  # never written

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        reason = payload.metadata.get(METADATA_REFUSAL, b"payload refused").decode(errors="replace")
        raise ApplicationError(reason, type=UNREADABLE_PAYLOAD_ERROR, non_retryable=True)


class CardflowPayloadConverter(CompositePayloadConverter):
    """Pydantic JSON, plus the refusal of what the codec would not let in."""

    def __init__(self) -> None:
        super().__init__(*PydanticPayloadConverter().converters.values(), RefusedPayloadConverter())


def generate_key() -> str:
    """A fresh AES-256 key, base64 encoded."""
    return base64.b64encode(secrets.token_bytes(ENCRYPTION_KEY_BYTES)).decode()


def dev_keys_path(settings: Settings) -> Path:
    return settings.home_path / "secrets" / DEV_KEYS_FILENAME


def ensure_dev_keys(settings: Settings) -> Path:
    """Create the development key file once, readable by its owner only."""
    path = dev_keys_path(settings)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    key_id = f"dev-{secrets.token_hex(4)}"
    # O_EXCL: two processes starting at once must not write two different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{key_id}:{generate_key()}\n")
    return path


def load_keys(settings: Settings, *, create_dev_key: bool = True) -> list[tuple[str, bytes]]:
    """Keys from CARDFLOW_ENCRYPTION_KEYS, else the dev key file under CARDFLOW_HOME."""
    if settings.encryption_keys is not None:
        return parse_encryption_keys(settings.encryption_keys.get_secret_value())
    path = ensure_dev_keys(settings) if create_dev_key else dev_keys_path(settings)
    if not path.exists():
        raise FileNotFoundError(
            f"no encryption keys: set CARDFLOW_ENCRYPTION_KEYS or run `cardflow dev up` ({path})"
        )
    return parse_encryption_keys(path.read_text().strip())


def build_data_converter(
    keys: Sequence[tuple[str, bytes]], *, accept_unencrypted: bool = False
) -> DataConverter:
    """Pydantic JSON payloads, encrypted; failure messages and traces encrypted too.

    Inbound payloads that are not encrypted with one of `keys` are refused
    unless `accept_unencrypted` (see the module's docstring).
    """
    return dataclasses.replace(
        pydantic_data_converter,
        payload_converter_class=CardflowPayloadConverter,
        payload_codec=EncryptionCodec(keys, accept_unencrypted=accept_unencrypted),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def data_converter_from_settings(settings: Settings) -> DataConverter:
    return build_data_converter(
        load_keys(settings), accept_unencrypted=settings.accept_unencrypted_payloads
    )
