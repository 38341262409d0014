"""A provider webhook or an issuer's real-time request whose signature
headers or body cannot be read is refused as unsigned: 401, counted among
the gateway's rejections for its signature, and never a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from activities.metrics import WEBHOOK_REJECTIONS
from schemas.providers import ISSUER
from starters.gateway.realtime import REALTIME_AUTHORIZATION_PATH
from starters.gateway.webhooks import verify
from tests.conftest import RunningStack
from tests.starters.inprocess import ServedGateway, served_gateway
from workers.secrets import new_webhook_secret

ROUTES = ["/webhooks/issuer", REALTIME_AUTHORIZATION_PATH]
# A body that is not UTF-8 (a lone continuation byte, then Latin-1 text).
NOT_UTF8 = b'{"id": "evt_1", "type": "card.updated", "note": "\x80caf\xe9"}'


def raw_signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks' signature of the raw bytes: what a sender signing
    its body as bytes (not as text) sends."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1,{base64.b64encode(digest.digest()).decode()}"


def signed(secret: str, body: bytes, message_id: str = "evt_1") -> dict[str, str]:
    """The headers of `body` signed now, as the issuer signs it."""
    stamp = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, stamp, body.decode()),
    }


def ping_body() -> bytes:
    event = {
        "id": f"evt_{uuid.uuid4().hex[:16]}",
        "type": "cardflow.ping",
        "created_at": datetime.now(UTC).isoformat(),
        "data": {"ping_id": "sig", "expected": 1, "sequence": 0},
    }
    return json.dumps(event).encode()


def with_signature(value: str) -> Callable[[dict[str, str]], None]:
    def tamper(headers: dict[str, str]) -> None:
        headers["webhook-signature"] = value

    return tamper


def entries_double_spaced(headers: dict[str, str]) -> None:
    valid = headers["webhook-signature"]
    headers["webhook-signature"] = f"{valid}  {valid}"


def fractional_timestamp(headers: dict[str, str]) -> None:
    # The same second the signature is of, with a fraction the signature does not cover.
    headers["webhook-timestamp"] += ".5"


MALFORMED_HEADERS: dict[str, Callable[[dict[str, str]], None]] = {
    "garbage": with_signature("garbage"),
    "three-parts": with_signature("v1,a,b"),
    "not-base64": with_signature("v1,abc"),
    "double-space": entries_double_spaced,
    "fractional-timestamp": fractional_timestamp,
}


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(stack: RunningStack, tmp_path: Path) -> AsyncIterator[ServedGateway]:
    async with served_gateway(stack, tmp_path) as served:
        yield served


def signature_rejections(gateway: ServedGateway) -> float:
    return gateway.metric(f"{WEBHOOK_REJECTIONS}_total", provider=ISSUER, reason="signature")


async def refused_as_unsigned(
    gateway: ServedGateway, path: str, body: bytes, headers: dict[str, str]
) -> None:
    counted = signature_rejections(gateway)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        answer = await http.post(path, content=body, headers=headers)
    assert (answer.status_code, answer.json()["code"]) == (401, "invalid_signature"), answer.text
    assert signature_rejections(gateway) == counted + 1


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("tamper", MALFORMED_HEADERS.values(), ids=MALFORMED_HEADERS.keys())
async def test_malformed_signature_headers_are_refused_as_unsigned_and_counted(
    gateway: ServedGateway, path: str, tamper: Callable[[dict[str, str]], None]
) -> None:
    body = ping_body()
    headers = signed(gateway.secrets[ISSUER], body, json.loads(body)["id"])
    tamper(headers)
    await refused_as_unsigned(gateway, path, body, headers)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("signing", ["raw-bytes", "unsigned"])
async def test_a_body_that_is_not_utf8_is_refused_as_unsigned_and_counted(
    gateway: ServedGateway, path: str, signing: str
) -> None:
    stamp = str(int(datetime.now(UTC).timestamp()))
    headers = {
        "content-type": "application/json",
        "webhook-id": "evt_1",
        "webhook-timestamp": stamp,
    }
    if signing == "raw-bytes":
        headers["webhook-signature"] = raw_signature(
            gateway.secrets[ISSUER], "evt_1", stamp, NOT_UTF8
        )
    await refused_as_unsigned(gateway, path, NOT_UTF8, headers)


# What a header can hold as the gateway reads it: Latin-1 text.
header_text = st.text(st.characters(max_codepoint=0xFF), max_size=120)


@given(
    signature=st.one_of(
        header_text,
        st.lists(
            st.tuples(st.sampled_from(["v1", "v1a", ""]), header_text).map(",".join), max_size=4
        ).map(" ".join),
    ),
    timestamp=st.one_of(header_text, st.integers().map(str), st.floats().map(str)),
    message_id=header_text,
    body=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
)
def test_verify_answers_any_headers_and_body_with_acceptance_or_its_refusal(
    signature: str, timestamp: str, message_id: str, body: bytes
) -> None:
    headers = {"webhook-id": message_id, "webhook-timestamp": timestamp}
    headers["webhook-signature"] = signature
    try:
        verify(body, headers, [new_webhook_secret()])
    except WebhookVerificationError:
        pass
    else:
        pytest.fail("a signature no secret made was accepted")
