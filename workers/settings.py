"""Settings from the environment, validated once at start.

Variable names are the ones operators already know from Temporal and
PostgreSQL tooling (`TEMPORAL_ADDRESS`, `DATABASE_URL`); everything that is
cardflow's own starts with `CARDFLOW_`. A bad value stops the process at start
with a message that names the variable, never later in the middle of a
transfer.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TASK_QUEUE_PREFIX_PATTERN, TaskQueues

ENCRYPTION_KEY_BYTES = 32  # AES-256-GCM
_KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HOST_PORT_PATTERN = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")

Port = Annotated[int, Field(ge=1, le=65535)]


class SettingsError(Exception):
    """A setting has a bad value; the message names the environment variable."""


def parse_encryption_keys(raw: str) -> list[tuple[str, bytes]]:
    """Parse `kid:base64key[,kid:base64key...]`; the first key is the one that encrypts.

    Error messages name the key id but never echo key material.
    """
    keys: list[tuple[str, bytes]] = []
    for index, entry in enumerate(part.strip() for part in raw.split(",")):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        if not sep or not _KEY_ID_PATTERN.match(key_id):
            raise ValueError(
                f"entry {index + 1} must look like 'key-id:base64-key' with a key id of "
                "letters, digits, '.', '_' or '-'"
            )
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"key '{key_id}' is not valid base64") from None
        if len(key) != ENCRYPTION_KEY_BYTES:
            raise ValueError(
                f"key '{key_id}' must decode to {ENCRYPTION_KEY_BYTES} bytes, got {len(key)}"
            )
        if any(existing_id == key_id for existing_id, _ in keys):
            raise ValueError(f"key id '{key_id}' appears twice")
        keys.append((key_id, key))
    if not keys:
        raise ValueError("no key given")
    return keys


def parse_webhook_secrets(raw: str) -> dict[str, list[str]]:
    """{"provider": "whsec_..." | [newest, older...]} -> {"provider": [secrets]}."""
    import json

    try:
        document = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError("must be a JSON object of provider to secret(s)") from None
    if not isinstance(document, dict):
        raise ValueError("must be a JSON object of provider to secret(s)")
    secrets: dict[str, list[str]] = {}
    for provider, value in document.items():
        values = [value] if isinstance(value, str) else value
        if (
            not isinstance(values, list)
            or not values
            or not all(
                isinstance(v, str) and v.startswith("whsec_") and len(v) > 12 for v in values
            )
        ):
            raise ValueError(f"secrets of provider '{provider}' must be whsec_... strings")
        secrets[str(provider)] = values
    return secrets


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", populate_by_name=False, frozen=True
    )

    # Temporal: when TEMPORAL_ADDRESS is set, no local dev server is started.
    temporal_address: str | None = Field(default=None, validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(
        default="default", validation_alias="TEMPORAL_NAMESPACE", pattern=r"^[A-Za-z0-9._-]{1,255}$"
    )
    temporal_tls_cert: Path | None = Field(default=None, validation_alias="TEMPORAL_TLS_CERT")
    temporal_tls_key: Path | None = Field(default=None, validation_alias="TEMPORAL_TLS_KEY")
    temporal_tls_ca: Path | None = Field(default=None, validation_alias="TEMPORAL_TLS_CA")
    temporal_tls_server_name: str | None = Field(
        default=None, validation_alias="TEMPORAL_TLS_SERVER_NAME"
    )
    temporal_api_key: SecretStr | None = Field(default=None, validation_alias="TEMPORAL_API_KEY")

    # PostgreSQL: when DATABASE_URL is set, no embedded PostgreSQL is started.
    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    database_pool_size_max: int = Field(
        default=10, ge=1, le=200, validation_alias="CARDFLOW_DATABASE_POOL_SIZE_MAX"
    )

    # Payload encryption: `kid:base64key,...`, first encrypts. Unset: a dev key
    # is generated once under CARDFLOW_HOME.
    encryption_keys: SecretStr | None = Field(
        default=None, validation_alias="CARDFLOW_ENCRYPTION_KEYS"
    )

    # The embedded stack.
    home: Path = Field(default=Path(".cardflow"), validation_alias="CARDFLOW_HOME")
    bind_host: str = Field(default="127.0.0.1", validation_alias="CARDFLOW_BIND_HOST")
    temporal_port: Port = Field(default=7233, validation_alias="CARDFLOW_TEMPORAL_PORT")
    temporal_ui_port: Port = Field(default=8233, validation_alias="CARDFLOW_TEMPORAL_UI_PORT")
    postgres_port: Port = Field(default=55432, validation_alias="CARDFLOW_POSTGRES_PORT")
    codec_port: Port = Field(default=8234, validation_alias="CARDFLOW_CODEC_PORT")
    # Web UI origins allowed to call the codec server; empty means the local UI.
    # Comma-separated in the environment (NoDecode: not JSON).
    codec_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="CARDFLOW_CODEC_CORS_ORIGINS"
    )
    # Address the Web UI uses to reach the codec server (the browser calls it).
    codec_public_url: str | None = Field(default=None, validation_alias="CARDFLOW_CODEC_URL")

    # Provider simulators (one process, one port) and the gateway.
    simulators_port: Port = Field(default=8240, validation_alias="CARDFLOW_SIMULATORS_PORT")
    gateway_port: Port = Field(default=8235, validation_alias="CARDFLOW_GATEWAY_PORT")
    # Simulators number their ids from here (test stacks take separate ranges).
    simulator_id_offset: int = Field(
        default=0, ge=0, le=10**12, validation_alias="CARDFLOW_SIMULATOR_ID_OFFSET"
    )
    # Base URL of the providers; each provider is at {providers_url}/{name}.
    providers_url: str | None = Field(default=None, validation_alias="CARDFLOW_PROVIDERS_URL")
    # Where providers deliver webhooks and real-time requests: the gateway.
    gateway_url: str | None = Field(default=None, validation_alias="CARDFLOW_GATEWAY_URL")
    # JSON {"provider": "whsec_..." or ["whsec_new", "whsec_old"]}. Unset: dev
    # secrets generated once under CARDFLOW_HOME.
    webhook_secrets: SecretStr | None = Field(
        default=None, validation_alias="CARDFLOW_WEBHOOK_SECRETS"
    )

    # Real-time card authorizations: the gateway answers the issuer within
    # this budget (the issuer waits 2,000 ms), else with the stand-in decision.
    authorization_budget_ms: int = Field(
        default=1_500, ge=1, le=30_000, validation_alias="CARDFLOW_AUTHORIZATION_BUDGET_MS"
    )
    authorization_stand_in: Literal["approve", "decline"] = Field(
        default="decline", validation_alias="CARDFLOW_AUTHORIZATION_STAND_IN"
    )
    # Observability. Each long-running process (worker, gateway) serves
    # Prometheus metrics on this port when set; `cardflow dev up` gives each
    # part its own port from CARDFLOW_METRICS_PORT_BASE.
    metrics_port: Port | None = Field(default=None, validation_alias="CARDFLOW_METRICS_PORT")
    metrics_port_base: Port = Field(default=9460, validation_alias="CARDFLOW_METRICS_PORT_BASE")
    # Traces are exported by OTLP/HTTP when an endpoint is set (the standard
    # OpenTelemetry variables; the exporter also reads OTEL_EXPORTER_OTLP_HEADERS).
    otlp_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    service_name: str | None = Field(default=None, validation_alias="OTEL_SERVICE_NAME")
    log_format: Literal["json", "text"] = Field(
        default="json", validation_alias="CARDFLOW_LOG_FORMAT"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias="CARDFLOW_LOG_LEVEL"
    )

    task_queue_prefix: str = Field(
        default=DEFAULT_TASK_QUEUE_PREFIX,
        validation_alias="CARDFLOW_TASK_QUEUE_PREFIX",
        pattern=TASK_QUEUE_PREFIX_PATTERN,
    )

    @field_validator("temporal_address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _HOST_PORT_PATTERN.match(value.strip())
        if not match or not 1 <= int(match.group("port")) <= 65535:
            raise ValueError("must be host:port, for example temporal.example.com:7233")
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value().strip()
        if not re.match(r"^postgres(ql)?://", url):
            raise ValueError("must be a postgresql:// URL")
        return SecretStr(url)

    @field_validator("encryption_keys")
    @classmethod
    def _check_encryption_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_encryption_keys(value.get_secret_value())
        return value

    @field_validator("temporal_tls_cert", "temporal_tls_key", "temporal_tls_ca")
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY must be set together")
        return self

    @field_validator("webhook_secrets")
    @classmethod
    def _check_webhook_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_webhook_secrets(value.get_secret_value())
        return value

    @field_validator("otlp_endpoint", "service_name", "metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose files pass `${VAR:-}`: an empty value means "not configured".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_otlp_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value.strip()):
            raise ValueError("must be an http(s):// URL, for example http://otel-collector:4318")
        return value.strip() if value is not None else None

    @field_validator("codec_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    # ----- derived values -------------------------------------------------

    @cached_property
    def home_path(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def task_queues(self) -> TaskQueues:
        return TaskQueues(prefix=self.task_queue_prefix)

    @property
    def temporal_is_external(self) -> bool:
        return self.temporal_address is not None

    @property
    def database_is_external(self) -> bool:
        return self.database_url is not None

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"{self.bind_host}:{self.temporal_port}"

    @property
    def embedded_database_url(self) -> str:
        return f"postgresql://postgres@{self.bind_host}:{self.postgres_port}/cardflow"

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return self.embedded_database_url

    @property
    def providers_base_url(self) -> str:
        return (self.providers_url or f"http://{self.bind_host}:{self.simulators_port}").rstrip("/")

    @property
    def gateway_base_url(self) -> str:
        return (self.gateway_url or f"http://{self.bind_host}:{self.gateway_port}").rstrip("/")

    @property
    def web_ui_url(self) -> str:
        return f"http://localhost:{self.temporal_ui_port}"

    @property
    def codec_url(self) -> str:
        return self.codec_public_url or f"http://{self.bind_host}:{self.codec_port}"

    @property
    def allowed_codec_origins(self) -> list[str]:
        if self.codec_cors_origins:
            return self.codec_cors_origins
        return [
            f"http://localhost:{self.temporal_ui_port}",
            f"http://127.0.0.1:{self.temporal_ui_port}",
        ]


_ENV_NAMES = {
    name: (field.validation_alias if isinstance(field.validation_alias, str) else name)
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; raise SettingsError naming the variable at fault."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for item in error.errors():
            location = str(item["loc"][0]) if item["loc"] else "settings"
            variable = _ENV_NAMES.get(location, location)
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{variable}: {message}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
