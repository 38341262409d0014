"""Settings come from the environment; a bad value fails at start naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.converter import generate_key
from workers.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TEMPORAL_ADDRESS", "no-port-here", "host:port"),
        ("TEMPORAL_ADDRESS", "temporal:99999", "host:port"),
        ("DATABASE_URL", "mysql://db/cardflow", "postgresql://"),
        ("CARDFLOW_ENCRYPTION_KEYS", "k1:not-base64!", "not valid base64"),
        ("CARDFLOW_ENCRYPTION_KEYS", "k1:" + "QUFB", "32 bytes"),
        ("CARDFLOW_ENCRYPTION_KEYS", "missing-colon", "key-id:base64-key"),
        ("CARDFLOW_TEMPORAL_PORT", "70000", "less than or equal to 65535"),
        ("CARDFLOW_POSTGRES_PORT", "fivefourthree", "integer"),
        ("TEMPORAL_TLS_CERT", "/nonexistent/client.pem", "does not exist"),
        ("CARDFLOW_TASK_QUEUE_PREFIX", "has spaces", "pattern"),
        ("CARDFLOW_AUTHORIZATION_IN_FLIGHT_MAX", "0", "greater than or equal to 1"),
        ("CARDFLOW_AUTHORIZATION_IN_FLIGHT_MAX", "many", "integer"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert f"{variable}:" in message
    assert expected in message


def test_a_client_certificate_without_its_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    certificate = tmp_path / "client.pem"
    certificate.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("TEMPORAL_TLS_CERT", str(certificate))
    with pytest.raises(SettingsError, match="TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY"):
        load_settings()


def test_key_material_never_appears_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    good = generate_key()
    monkeypatch.setenv("CARDFLOW_ENCRYPTION_KEYS", f"k1:{good},k1:{good}")
    with pytest.raises(SettingsError, match="appears twice") as error:
        load_settings()
    assert good not in str(error.value)


def test_external_temporal_and_database_are_not_started_locally(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.example.com:7233")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:Pa55-w0rd-zq@db.example.com:5432/cardflow")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "cardflow-prod")
    settings = load_settings()
    assert settings.temporal_is_external and settings.database_is_external
    assert settings.temporal_target == "temporal.example.com:7233"
    assert settings.effective_database_url.endswith("@db.example.com:5432/cardflow")
    assert "Pa55-w0rd-zq" not in repr(settings)


def test_defaults_describe_the_embedded_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TEMPORAL_ADDRESS", "DATABASE_URL", "TEMPORAL_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.temporal_target == "127.0.0.1:7233"
    assert settings.web_ui_url == "http://localhost:8233"
    assert settings.task_queues.by_kind() == {
        "workflows": "cardflow-workflows",
        "ledger": "cardflow-ledger",
        "providers": "cardflow-providers",
    }


def test_the_cli_refuses_to_start_with_a_bad_setting() -> None:
    env = dict(os.environ, TEMPORAL_ADDRESS="nonsense")
    completed = subprocess.run(
        [sys.executable, "-m", "starters.cli", "dev", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "TEMPORAL_ADDRESS" in completed.stderr


def test_codec_origins_are_read_comma_separated_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CARDFLOW_CODEC_CORS_ORIGINS", "http://localhost:8233, https://ui.example")
    assert load_settings().allowed_codec_origins == ["http://localhost:8233", "https://ui.example"]
