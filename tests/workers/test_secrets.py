"""Secrets come from settings or files named in settings, rotate with an overlap, and
the dev stack makes its own once, owner-only; no error or repr ever shows one."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError

from activities.database import create_pool
from starters.gateway.app import create_app
from starters.gateway.webhooks import verify
from tests.conftest import RunningStack, free_port
from workers.converter import dev_keys_path, generate_key, load_keys
from workers.secrets import (
    WebhookSecrets,
    codec_token,
    codec_ui_endpoint,
    dev_codec_token_path,
    dev_secrets_dir,
    dev_webhook_secrets_path,
    ensure_dev_secrets,
    new_codec_token,
    new_webhook_secret,
    rotate_dev_webhook_secret,
    webhook_secrets,
)
from workers.settings import SettingsError, load_settings, parse_webhook_secret_entries

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def secret_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


# ----- NAME_FILE -------------------------------------------------------------------


def test_each_secret_setting_is_read_from_the_file_its_file_variable_names(
    tmp_path: Path,
) -> None:
    key = "k1:" + generate_key()
    hooks = json.dumps({"issuer": new_webhook_secret()})
    token = new_codec_token()
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        # Docker and Kubernetes write secrets with a trailing newline.
        CARDFLOW_ENCRYPTION_KEYS_FILE=str(secret_file(tmp_path, "keys", key + "\n")),
        CARDFLOW_WEBHOOK_SECRETS_FILE=str(secret_file(tmp_path, "hooks", hooks)),
        CARDFLOW_CODEC_TOKEN_FILE=str(secret_file(tmp_path, "token", token + "\n")),
        DATABASE_URL_FILE=str(secret_file(tmp_path, "db", "postgresql://u:p@db:5432/cardflow\n")),
        TEMPORAL_API_KEY_FILE=str(secret_file(tmp_path, "temporal", "tk-123\n")),
        CARDFLOW_API_KEY_PEPPER_FILE=str(secret_file(tmp_path, "pepper", "pepper-" * 8)),
    )
    assert settings.api_key_pepper is not None
    assert settings.api_key_pepper.get_secret_value() == "pepper-" * 8
    assert settings.encryption_keys is not None
    assert settings.encryption_keys.get_secret_value() == key
    assert load_keys(settings)[0][0] == "k1"
    assert webhook_secrets(settings)["issuer"] == [json.loads(hooks)["issuer"]]
    assert codec_token(settings) == token
    assert settings.effective_database_url == "postgresql://u:p@db:5432/cardflow"
    assert settings.temporal_api_key is not None
    assert settings.temporal_api_key.get_secret_value() == "tk-123"
    # Nothing secret shows when settings are printed.
    shown = repr(settings) + str(settings)
    for secret in (key.split(":")[1], token, "u:p@", "tk-123", json.loads(hooks)["issuer"]):
        assert secret not in shown


def test_a_value_and_its_file_together_are_refused_naming_both(tmp_path: Path) -> None:
    token = new_codec_token()
    with pytest.raises(SettingsError) as refused:
        load_settings(
            CARDFLOW_CODEC_TOKEN=token,
            CARDFLOW_CODEC_TOKEN_FILE=str(secret_file(tmp_path, "token", token)),
        )
    message = str(refused.value)
    assert "CARDFLOW_CODEC_TOKEN and CARDFLOW_CODEC_TOKEN_FILE are both set" in message
    assert token not in message


def test_a_missing_file_is_refused_naming_the_variable_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "keys"
    with pytest.raises(SettingsError) as refused:
        load_settings(CARDFLOW_ENCRYPTION_KEYS_FILE=str(missing))
    assert f"CARDFLOW_ENCRYPTION_KEYS_FILE: cannot read {missing}" in str(refused.value)


def test_a_bad_value_read_from_a_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    bad = "whsec_short-but-not-json"
    with pytest.raises(SettingsError) as refused:
        load_settings(CARDFLOW_WEBHOOK_SECRETS_FILE=str(secret_file(tmp_path, "hooks", bad)))
    assert "CARDFLOW_WEBHOOK_SECRETS" in str(refused.value) and bad not in str(refused.value)


def test_the_database_password_file_is_put_into_database_url(tmp_path: Path) -> None:
    password = "p@ss/word:with?odd#chars"
    settings = load_settings(
        DATABASE_URL="postgresql://cardflow@db:5432/cardflow?sslmode=require",
        DATABASE_PASSWORD_FILE=str(secret_file(tmp_path, "pw", password + "\n")),
    )
    assert settings.effective_database_url == (
        "postgresql://cardflow:p%40ss%2Fword%3Awith%3Fodd%23chars@db:5432/cardflow?sslmode=require"
    )
    with pytest.raises(SettingsError) as refused:
        load_settings(
            DATABASE_URL="postgresql://cardflow:inline@db:5432/cardflow",
            DATABASE_PASSWORD_FILE=str(secret_file(tmp_path, "pw", password)),
        )
    assert "DATABASE_URL carries a password too" in str(refused.value)
    assert "inline" not in str(refused.value) and password not in str(refused.value)


def test_a_codec_token_that_cannot_travel_in_a_url_path_is_refused() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(CARDFLOW_CODEC_TOKEN="has/slash-and-is-long-enough-0123456789")
    assert "CARDFLOW_CODEC_TOKEN" in str(refused.value) and "slash" not in str(refused.value)


# ----- webhook secret rotation ---------------------------------------------------------


def rotated(current: str, old: str, until: datetime) -> str:
    return json.dumps({"bank": [current, {"secret": old, "until": until.isoformat()}]})


def signed(secret: str, at: datetime) -> tuple[bytes, dict[str, str]]:
    body = b'{"id": "evt_1"}'
    signature = Webhook(secret).sign("evt_1", at, body.decode())
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
    return body, headers


def test_an_old_secret_verifies_during_its_overlap_and_never_after() -> None:
    current, old = new_webhook_secret(), new_webhook_secret()
    clock = [NOW]
    secrets = WebhookSecrets(
        parse_webhook_secret_entries(rotated(current, old, NOW + timedelta(hours=24))),
        clock=lambda: clock[0],
    )
    # Within the overlap both verify (signed now, as a provider would).
    clock[0] = NOW + timedelta(hours=23, minutes=59)
    for secret in (current, old):
        body, headers = signed(secret, datetime.now(UTC))
        verify(body, headers, secrets["bank"])
    # After it, only the current one; the same lookup, no restart.
    clock[0] = NOW + timedelta(hours=24)
    assert secrets["bank"] == [current]
    body, headers = signed(old, datetime.now(UTC))
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, secrets["bank"])
    assert secrets.signing_secret("bank") == current
    assert current not in repr(secrets) and old not in repr(secrets)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"kyc": ["whsec_current-0123", "whsec_older-0123456"]}, "an older secret needs 'until'"),
        (
            {"kyc": [{"secret": "whsec_current-0123", "until": "2026-12-01T00:00:00Z"}]},
            "the current (first) secret has no 'until'",
        ),
        (
            {"kyc": ["whsec_current-0123", {"secret": "whsec_o-0123456", "until": "2026-12-01"}]},
            "'until' must carry a time zone",
        ),
        (
            {"kyc": ["whsec_current-0123", {"secret": "whsec_o-0123456", "until": "soon"}]},
            "'until' must be an ISO 8601 time",
        ),
        ({"kyc": ["not-a-whsec-secret"]}, "must be a whsec_... string"),
    ],
)
def test_a_bad_rotation_entry_is_refused_naming_the_provider_not_the_secret(
    document: dict[str, object], expected: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(CARDFLOW_WEBHOOK_SECRETS=json.dumps(document))
    message = str(refused.value)
    assert message.startswith("invalid settings: CARDFLOW_WEBHOOK_SECRETS: provider 'kyc'")
    assert expected in message
    assert "whsec_current" not in message and "whsec_o" not in message
    assert "not-a-whsec-secret" not in message


def test_rotating_a_dev_secret_keeps_the_old_one_for_the_overlap_only(tmp_path: Path) -> None:
    settings = load_settings(CARDFLOW_HOME=str(tmp_path))
    before = webhook_secrets(settings).signing_secret("issuer")
    until = rotate_dev_webhook_secret(settings, "issuer", overlap_hours=2, now=NOW)
    assert until == NOW + timedelta(hours=2)
    after = webhook_secrets(settings)
    new = after.signing_secret("issuer")
    assert new != before
    assert after.valid("issuer", NOW + timedelta(hours=1)) == [new, before]
    assert after.valid("issuer", NOW + timedelta(hours=2)) == [new]
    # Other providers are untouched; the file stays owner-only.
    assert after.valid("kyc", NOW) == webhook_secrets(settings).valid("kyc", NOW)
    assert stat.S_IMODE(dev_webhook_secrets_path(settings).stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="unknown provider"):
        rotate_dev_webhook_secret(settings, "nobody")


def test_rotating_configured_secrets_is_left_to_their_store(tmp_path: Path) -> None:
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_WEBHOOK_SECRETS=json.dumps({"issuer": new_webhook_secret()}),
    )
    with pytest.raises(ValueError, match="rotate it where it is stored"):
        rotate_dev_webhook_secret(settings, "issuer")


# ----- dev secrets ---------------------------------------------------------------------


def modes(paths: list[Path]) -> dict[Path, int]:
    return {path: stat.S_IMODE(path.stat().st_mode) for path in paths}


def test_dev_secrets_are_made_once_owner_only_and_kept_as_they_are(tmp_path: Path) -> None:
    settings = load_settings(CARDFLOW_HOME=str(tmp_path / "home"))
    made = ensure_dev_secrets(settings)
    directory = dev_secrets_dir(settings)
    files = sorted(directory.iterdir())
    assert set(made) <= set(files)
    assert {dev_keys_path(settings), dev_webhook_secrets_path(settings)} <= set(files)
    assert dev_codec_token_path(settings) in files
    assert directory / "api-key-pepper" in files  # made by the API keys' own loader
    assert directory / "postgres-password" in files
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert set(modes(files).values()) == {0o600}
    contents = {path: path.read_bytes() for path in files}

    ensure_dev_secrets(settings)
    assert sorted(directory.iterdir()) == files
    assert {path: path.read_bytes() for path in files} == contents
    assert set(modes(files).values()) == {0o600}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # Every reader of the home gets the same token; the Web UI's endpoint carries it.
    token = codec_token(settings)
    assert codec_ui_endpoint(settings) == f"{settings.codec_url}/t/{token}"


def test_configured_secrets_leave_no_dev_file_behind(tmp_path: Path) -> None:
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_ENCRYPTION_KEYS="k:" + generate_key(),
        CARDFLOW_WEBHOOK_SECRETS=json.dumps({"issuer": new_webhook_secret()}),
        CARDFLOW_CODEC_TOKEN=new_codec_token(),
        DATABASE_URL="postgresql://cardflow@db:5432/cardflow",
    )
    ensure_dev_secrets(settings)
    left = {path.name for path in dev_secrets_dir(settings).iterdir()}
    assert not left & {
        "encryption-keys",
        "webhook-secrets.json",
        "codec-token",
        "postgres-password",
    }


def test_the_embedded_database_url_carries_the_dev_password_and_database_url_overrides_it(
    tmp_path: Path,
) -> None:
    embedded = load_settings(CARDFLOW_HOME=str(tmp_path), CARDFLOW_POSTGRES_PORT="55999")
    password_file = dev_secrets_dir(embedded) / "postgres-password"
    assert not password_file.exists()  # made when first needed, not when settings load
    url = urlsplit(embedded.effective_database_url)
    password = password_file.read_text().strip()
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert (url.username, url.password, url.port, url.path) == (
        "postgres",
        password,
        55999,
        "/cardflow",
    )
    assert len(password) >= 32
    # Read again, the same password: it is made once.
    assert urlsplit(embedded.effective_database_url).password == password
    external = load_settings(
        CARDFLOW_HOME=str(tmp_path), DATABASE_URL="postgresql://u:p@db.example.com:5432/ledger"
    )
    assert external.effective_database_url == "postgresql://u:p@db.example.com:5432/ledger"


# ----- the gateway, end to end -------------------------------------------------------


def unrouted_event() -> dict[str, object]:
    # No process waits for it: the gateway answers 200 "ignored" once verified.
    return {
        "id": f"evt_{uuid.uuid4().hex[:16]}",
        "type": "card.updated",
        "created_at": datetime.now(UTC).isoformat(),
        "data": {},
    }


async def test_the_gateway_refuses_the_old_secret_once_its_overlap_ends_without_a_restart(
    stack: RunningStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    current, old = new_webhook_secret(), new_webhook_secret()
    overlap_end = datetime.now(UTC) + timedelta(seconds=3)
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path),
        CARDFLOW_TASK_QUEUE_PREFIX=stack.queues.prefix,
        CARDFLOW_WEBHOOK_SECRETS=json.dumps(
            {"issuer": [current, {"secret": old, "until": overlap_end.isoformat()}]}
        ),
        DATABASE_URL=stack.database_url,
    )
    pool = await create_pool(stack.database_url, size_max=2)
    app = create_app(settings, client=stack.client, pool=pool)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info"))
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)

    async def post(http: httpx.AsyncClient, secret: str) -> httpx.Response:
        event = unrouted_event()
        content = json.dumps(event)
        at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": str(event["id"]),
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(str(event["id"]), at, content),
        }
        return await http.post("/webhooks/issuer", content=content, headers=headers)

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            during = [await post(http, secret) for secret in (current, old)]
            assert [r.status_code for r in during] == [200, 200], [r.text for r in during]
            await asyncio.sleep((overlap_end - datetime.now(UTC)).total_seconds() + 0.2)
            refused = await post(http, old)
            assert refused.status_code == 401, refused.text
            assert (await post(http, current)).status_code == 200
            stranger = await post(http, new_webhook_secret())
            assert stranger.status_code == 401
    finally:
        server.should_exit = True
        await task
        await pool.close()
    for secret in (current, old):
        assert secret not in caplog.text and secret.removeprefix("whsec_") not in caplog.text
        assert secret not in refused.text
    assert "refused issuer webhook" in caplog.text  # the refusal was logged, without secrets
