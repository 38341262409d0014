"""The one data converter of cardflow: pydantic JSON, then AES-GCM encryption.

Client, workers, the history replayer and the codec server all build their
converter here, so a payload written by any of them is readable by the others.

Wire format of an encrypted payload:
    metadata["encoding"]          = b"binary/encrypted"
    metadata["encryption-key-id"] = key id (ASCII)
    data                          = 12-byte nonce || AES-GCM(serialized Payload)
The key id is also the associated data, so a payload cannot be made to decrypt
under another id's key by editing its metadata.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from workers.settings import ENCRYPTION_KEY_BYTES, Settings, parse_encryption_keys

ENCODING_ENCRYPTED = b"binary/encrypted"
METADATA_ENCODING = "encoding"
METADATA_KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
DEV_KEYS_FILENAME = "encryption-keys"


class UnknownEncryptionKeyError(ValueError):
    """A payload names a key id this process does not hold."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"payload was encrypted with unknown key id '{key_id}'")
        self.key_id = key_id


class PayloadDecryptionError(ValueError):
    """The key id is known but the ciphertext does not authenticate."""


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads; the first key encrypts, every key decrypts."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        # An empty key set would silently write plaintext histories.
        assert keys, "at least one encryption key is required"
        for key_id, key in keys:
            assert len(key) == ENCRYPTION_KEY_BYTES, f"key '{key_id}' has the wrong length"
        self._active_key_id = keys[0][0]
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}

    @property
    def active_key_id(self) -> str:
        return self._active_key_id

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

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
        # Payloads that were never encrypted (for example written by a tool
        # without the codec) pass through unchanged.
        if payload.metadata.get(METADATA_ENCODING) != ENCODING_ENCRYPTED:
            return payload
        key_id = payload.metadata.get(METADATA_KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownEncryptionKeyError(key_id)
        data = payload.data
        try:
            plaintext = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload does not authenticate under key id '{key_id}'"
            ) from None
        return Payload.FromString(plaintext)


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


def build_data_converter(keys: Sequence[tuple[str, bytes]]) -> DataConverter:
    """Pydantic JSON payloads, encrypted; failure messages and traces encrypted too."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def data_converter_from_settings(settings: Settings) -> DataConverter:
    return build_data_converter(load_keys(settings))
