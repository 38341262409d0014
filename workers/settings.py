"""Settings from the environment, validated once at start.

Variable names are the ones operators already know from Temporal and
PostgreSQL tooling (`TEMPORAL_ADDRESS`, `DATABASE_URL`); everything that is
cardflow's own starts with `CARDFLOW_`. A bad value stops the process at start
with a message that names the variable, never later in the middle of a
transfer.

It stays one module: one pydantic Settings model, its fields commented in
groups where they are declared, and the parsers its validators check the
secret values with (encryption keys, webhook secrets, secret files).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TASK_QUEUE_PREFIX_PATTERN, TaskQueues

ENCRYPTION_KEY_BYTES = 32  # AES-256-GCM
# The embedded PostgreSQL's superuser, the one cardflow connects as.
EMBEDDED_DATABASE_USER = "postgres"
API_KEY_PEPPER_CHARS_MIN = 32
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


@dataclasses.dataclass(frozen=True)
class WebhookSecret:
    """One provider signing secret; an older one verifies until `until` (UTC), then never."""

    secret: str = dataclasses.field(repr=False)
    until: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.until is None or now < self.until


def _webhook_secret_entry(provider: str, position: int, value: object) -> WebhookSecret:
    # Messages name the provider and the position, never the secret.
    where = f"provider '{provider}', secret {position + 1}"
    until: datetime | None = None
    if isinstance(value, dict):
        unknown = set(value) - {"secret", "until"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (use 'secret', 'until')")
        raw_until = value.get("until")
        if raw_until is not None:
            try:
                until = datetime.fromisoformat(str(raw_until))
            except ValueError:
                raise ValueError(f"{where}: 'until' must be an ISO 8601 time") from None
            if until.tzinfo is None:
                raise ValueError(f"{where}: 'until' must carry a time zone, e.g. Z")
            until = until.astimezone(UTC)
        value = value.get("secret")
    if not (isinstance(value, str) and value.startswith("whsec_") and len(value) > 12):
        raise ValueError(f"{where}: must be a whsec_... string")
    if position == 0 and until is not None:
        raise ValueError(f"{where}: the current (first) secret has no 'until'")
    if position > 0 and until is None:
        raise ValueError(
            f"{where}: an older secret needs 'until', the end of its overlap "
            '({"secret": "whsec_...", "until": "2026-12-01T00:00:00Z"})'
        )
    return WebhookSecret(value, until)


def parse_webhook_secret_entries(raw: str) -> dict[str, list[WebhookSecret]]:
    """{"provider": "whsec_..." | [current, {"secret": older, "until": time}, ...]}.

    The first secret of a provider signs and always verifies; each older one
    verifies until its `until` (the end of the rotation overlap).
    """
    import json

    try:
        document = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError("must be a JSON object of provider to secret(s)") from None
    if not isinstance(document, dict):
        raise ValueError("must be a JSON object of provider to secret(s)")
    entries: dict[str, list[WebhookSecret]] = {}
    for provider, value in document.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values:
            raise ValueError(f"provider '{provider}': give a whsec_... string or a list")
        entries[str(provider)] = [
            _webhook_secret_entry(str(provider), position, item)
            for position, item in enumerate(values)
        ]
    return entries


def parse_webhook_secrets(raw: str) -> dict[str, list[str]]:
    """Every configured secret per provider, current first (expired ones included)."""
    return {
        provider: [entry.secret for entry in entries]
        for provider, entries in parse_webhook_secret_entries(raw).items()
    }


# Each secret setting may instead name a file holding its value (Docker and
# Kubernetes secrets): NAME_FILE=/run/secrets/name. The value's variable and
# its file's variable.
SECRET_FILE_VARIABLES: dict[str, str] = {
    "CARDFLOW_ENCRYPTION_KEYS": "CARDFLOW_ENCRYPTION_KEYS_FILE",
    "CARDFLOW_WEBHOOK_SECRETS": "CARDFLOW_WEBHOOK_SECRETS_FILE",
    "CARDFLOW_API_KEY_PEPPER": "CARDFLOW_API_KEY_PEPPER_FILE",
    "CARDFLOW_CODEC_TOKEN": "CARDFLOW_CODEC_TOKEN_FILE",
    "CARDFLOW_TELEGRAM_BOT_TOKEN": "CARDFLOW_TELEGRAM_BOT_TOKEN_FILE",
    "CARDFLOW_BOT_API_KEY": "CARDFLOW_BOT_API_KEY_FILE",
    "DATABASE_URL": "DATABASE_URL_FILE",
    "TEMPORAL_API_KEY": "TEMPORAL_API_KEY_FILE",
}
SECRET_FILE_BYTES_MAX = 64 * 1024
CODEC_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{24,256}$")
TELEGRAM_BOT_TOKEN_PATTERN = re.compile(r"^[0-9]{1,20}:[A-Za-z0-9_-]{20,100}$")


def read_secret_file(variable: str, path: str) -> str:
    """The content of a secret file, trailing newline removed; errors name variable and path."""
    try:
        with open(path, "rb") as handle:
            content = handle.read(SECRET_FILE_BYTES_MAX + 1)
    except OSError as error:
        raise ValueError(f"{variable}: cannot read {path} ({error.strerror})") from None
    if len(content) > SECRET_FILE_BYTES_MAX:
        raise ValueError(f"{variable}: {path} is larger than {SECRET_FILE_BYTES_MAX} bytes")
    try:
        text = content.decode().strip()
    except UnicodeDecodeError:
        raise ValueError(f"{variable}: {path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{variable}: {path} is empty")
    return text


def _with_database_password(variable: str, url: str, password: str) -> str:
    """DATABASE_URL with the password from DATABASE_PASSWORD_FILE put in."""
    parts = urlsplit(url)
    if parts.password is not None:
        raise ValueError(f"{variable} is set and DATABASE_URL carries a password too; keep one")
    if not parts.username or not parts.hostname:
        raise ValueError(f"{variable} needs DATABASE_URL with a user and host, no password")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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

    # Workers refuse inbound payloads that are not encrypted with these keys
    # (a plaintext update, signal or start is not applied). True lets them in
    # again, only to replay histories written before that; every worker and
    # client must agree on it.
    accept_unencrypted_payloads: bool = Field(
        default=False, validation_alias="CARDFLOW_ACCEPT_UNENCRYPTED_PAYLOADS"
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
    # JSON {"provider": "whsec_..." or ["whsec_new", {"secret": "whsec_old",
    # "until": "2026-12-01T00:00:00Z"}]}: an older secret verifies until then. Unset: dev
    # secrets generated once under CARDFLOW_HOME.
    webhook_secrets: SecretStr | None = Field(
        default=None, validation_alias="CARDFLOW_WEBHOOK_SECRETS"
    )

    # The codec server's credential (Bearer header, or /t/<token>/ path prefix
    # for the Web UI). Unset: a dev token generated once under CARDFLOW_HOME.
    codec_token: SecretStr | None = Field(default=None, validation_alias="CARDFLOW_CODEC_TOKEN")
    # The Telegram bot's token from @BotFather; it also signs the WebApp's
    # initData. Unset: a dev token made once under CARDFLOW_HOME, which the
    # Telegram simulator takes.
    telegram_bot_token: SecretStr | None = Field(
        default=None, validation_alias="CARDFLOW_TELEGRAM_BOT_TOKEN"
    )
    # The bot's key to cardflow's API (scopes telegram:link, customers:read,
    # processes:start); `cardflow dev up` issues one for its bot.
    bot_api_key: SecretStr | None = Field(default=None, validation_alias="CARDFLOW_BOT_API_KEY")
    # The Telegram Bot API: https://api.telegram.org in production; unset,
    # the simulators' /telegram.
    telegram_api_url: str | None = Field(default=None, validation_alias="CARDFLOW_TELEGRAM_API_URL")
    # The bot's @username: its deep links (t.me/<username>?start=<code>).
    telegram_bot_username: str = Field(
        default="cardflow_bot",
        pattern=r"^[A-Za-z][A-Za-z0-9_]{3,31}$",
        validation_alias="CARDFLOW_TELEGRAM_BOT_USERNAME",
    )
    # Where Telegram opens the customers' WebApp (the bot's /app button): an
    # https URL Telegram reaches in production; unset, the gateway's /webapp/.
    webapp_url: str | None = Field(
        default=None, max_length=2_000, validation_alias="CARDFLOW_WEBAPP_URL"
    )
    # The WebApp's initData is refused once its auth_date is older than this.
    webapp_init_data_seconds_max: int = Field(
        default=3600, ge=10, le=7 * 86400, validation_alias="CARDFLOW_WEBAPP_INIT_DATA_SECONDS_MAX"
    )

    # Files holding a secret setting's value (SECRET_FILE_VARIABLES); read at
    # start into the setting itself. Setting both a value and its file is an error.
    encryption_keys_file: Path | None = Field(
        default=None, validation_alias="CARDFLOW_ENCRYPTION_KEYS_FILE"
    )
    webhook_secrets_file: Path | None = Field(
        default=None, validation_alias="CARDFLOW_WEBHOOK_SECRETS_FILE"
    )
    api_key_pepper_file: Path | None = Field(
        default=None, validation_alias="CARDFLOW_API_KEY_PEPPER_FILE"
    )
    codec_token_file: Path | None = Field(
        default=None, validation_alias="CARDFLOW_CODEC_TOKEN_FILE"
    )
    telegram_bot_token_file: Path | None = Field(
        default=None, validation_alias="CARDFLOW_TELEGRAM_BOT_TOKEN_FILE"
    )
    bot_api_key_file: Path | None = Field(
        default=None, validation_alias="CARDFLOW_BOT_API_KEY_FILE"
    )
    database_url_file: Path | None = Field(default=None, validation_alias="DATABASE_URL_FILE")
    temporal_api_key_file: Path | None = Field(
        default=None, validation_alias="TEMPORAL_API_KEY_FILE"
    )
    # Only the password of DATABASE_URL (which then has none) in a file.
    database_password_file: Path | None = Field(
        default=None, validation_alias="DATABASE_PASSWORD_FILE"
    )

    # Real-time card authorizations: the gateway answers the issuer within
    # this budget (the issuer waits 2,000 ms), else with the stand-in decision.
    authorization_budget_ms: int = Field(
        default=1_500, ge=1, le=30_000, validation_alias="CARDFLOW_AUTHORIZATION_BUDGET_MS"
    )
    authorization_stand_in: Literal["approve", "decline"] = Field(
        default="decline", validation_alias="CARDFLOW_AUTHORIZATION_STAND_IN"
    )
    # 3-D Secure: the gateway answers the issuer's authentication request
    # within this budget (the issuer waits 3,000 ms), else declines it.
    authentication_budget_ms: int = Field(
        default=2_000, ge=1, le=30_000, validation_alias="CARDFLOW_AUTHENTICATION_BUDGET_MS"
    )
    # Admission: the real-time decisions a gateway process waits on at once.
    # A request beyond it is answered with the stand-in at once (source
    # `shed`) instead of queueing behind decisions the card cannot take in
    # time; the issuer's webhook of that stand-in reconciles the card after.
    authorization_in_flight_max: int = Field(
        default=32, ge=1, le=10_000, validation_alias="CARDFLOW_AUTHORIZATION_IN_FLIGHT_MAX"
    )

    # The upstream API's keys (`cardflow apikey ...`) are stored as
    # HMAC-SHA256(pepper, secret). Unset: a dev pepper generated once under
    # CARDFLOW_HOME/secrets/. Changing it invalidates every key.
    api_key_pepper: SecretStr | None = Field(
        default=None, validation_alias="CARDFLOW_API_KEY_PEPPER"
    )
    # Throttling of `/v1`: a token bucket per API key and route, refilled at
    # this rate, holding at most the burst (per gateway process).
    api_rate_per_second: float = Field(
        default=20.0, gt=0, le=100_000, validation_alias="CARDFLOW_API_RATE_PER_SECOND"
    )
    api_burst: int = Field(default=40, ge=1, le=1_000_000, validation_alias="CARDFLOW_API_BURST")
    # How long a `/v1` call waits for a process to take its update; past it,
    # 503 with Retry-After (a retry with the same Idempotency-Key gets the
    # update's own result once the process has taken it).
    api_update_timeout_seconds: int = Field(
        default=10, ge=1, le=300, validation_alias="CARDFLOW_API_UPDATE_TIMEOUT_SECONDS"
    )
    # What the gateway takes in. A `/v1` body larger than this is a 413 (the
    # Content-Length alone decides when it is sent; a streamed body is cut off
    # there). Webhooks and the issuer's real-time requests have their own,
    # smaller caps.
    api_body_bytes_max: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        validation_alias="CARDFLOW_API_BODY_BYTES_MAX",
    )
    # On every HTTP listener (gateway, codec server, simulators) a request's
    # headers must arrive whole within this many seconds of its first byte (or
    # of the connection), else the connection is closed; at the gateway its
    # body within the second figure of its headers, else 408.
    http_header_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300, validation_alias="CARDFLOW_HTTP_HEADER_TIMEOUT_SECONDS"
    )
    gateway_body_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, validation_alias="CARDFLOW_GATEWAY_BODY_TIMEOUT_SECONDS"
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

    # Event delivery to webhook endpoints (workflows/event_delivery.py): how
    # often an idle endpoint's process looks for new events, how a failing
    # delivery is retried, and after how long the endpoint is disabled.
    events_poll_seconds: float = Field(
        default=2.0, gt=0, le=3600, validation_alias="CARDFLOW_EVENTS_POLL_SECONDS"
    )
    events_retry_initial_seconds: float = Field(
        default=5.0, gt=0, le=3600, validation_alias="CARDFLOW_EVENTS_RETRY_INITIAL_SECONDS"
    )
    events_retry_max_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=86400,
        validation_alias="CARDFLOW_EVENTS_RETRY_MAX_INTERVAL_SECONDS",
    )
    events_give_up_after_seconds: float = Field(
        default=3 * 86400.0, gt=0, le=30 * 86400, validation_alias="CARDFLOW_EVENTS_GIVE_UP_SECONDS"
    )

    # Withdrawals (and an account closure's payouts) the API starts: how long
    # a destination never paid to waits, how long a sent bank payout is
    # watched for a return, and how long the payer's silence lasts before it
    # is asked.
    withdrawal_cooling_seconds: int = Field(
        default=86400, ge=0, le=30 * 86400, validation_alias="CARDFLOW_WITHDRAWAL_COOLING_SECONDS"
    )
    withdrawal_return_watch_seconds: int = Field(
        default=14 * 86400,
        ge=0,
        le=90 * 86400,
        validation_alias="CARDFLOW_WITHDRAWAL_RETURN_WATCH_SECONDS",
    )
    withdrawal_outcome_poll_seconds: int = Field(
        default=3600, ge=1, le=86400, validation_alias="CARDFLOW_WITHDRAWAL_OUTCOME_POLL_SECONDS"
    )

    # The program's funding at the issuer (the program-funding schedule): the
    # issuer's bank account its wires go to, and what the Tron custodian holds
    # of the program's own (its opening float; unset: the simulator's own when
    # this deployment runs the simulators, else none).
    funding_issuer_iban: str | None = Field(
        default=None, max_length=34, validation_alias="CARDFLOW_FUNDING_ISSUER_IBAN"
    )
    funding_issuer_name: str | None = Field(
        default=None, max_length=140, validation_alias="CARDFLOW_FUNDING_ISSUER_NAME"
    )
    funding_custody_opening_minor: int | None = Field(
        default=None, ge=0, le=10**15, validation_alias="CARDFLOW_FUNDING_CUSTODY_OPENING_MINOR"
    )

    task_queue_prefix: str = Field(
        default=DEFAULT_TASK_QUEUE_PREFIX,
        validation_alias="CARDFLOW_TASK_QUEUE_PREFIX",
        pattern=TASK_QUEUE_PREFIX_PATTERN,
    )

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """NAME_FILE -> NAME's value, before validation; never both."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for variable, file_variable in SECRET_FILE_VARIABLES.items():
            path = data.get(file_variable)
            if path is None or not str(path).strip():
                data.pop(file_variable, None)
                continue
            value = data.get(variable)
            if (
                value is not None
                and str(value.get_secret_value() if isinstance(value, SecretStr) else value).strip()
            ):
                raise ValueError(f"{variable} and {file_variable} are both set; keep one")
            data[variable] = read_secret_file(file_variable, str(path))
        password_path = data.get("DATABASE_PASSWORD_FILE")
        if password_path is not None and str(password_path).strip():
            url = data.get("DATABASE_URL")
            if url is None:
                raise ValueError("DATABASE_PASSWORD_FILE needs DATABASE_URL (user and host)")
            raw = url.get_secret_value() if isinstance(url, SecretStr) else str(url)
            password = read_secret_file("DATABASE_PASSWORD_FILE", str(password_path))
            data["DATABASE_URL"] = _with_database_password("DATABASE_PASSWORD_FILE", raw, password)
        else:
            data.pop("DATABASE_PASSWORD_FILE", None)
        return data

    @field_validator("telegram_bot_token")
    @classmethod
    def _check_bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not TELEGRAM_BOT_TOKEN_PATTERN.match(value.get_secret_value()):
            raise ValueError("must be a bot token as @BotFather gives it: <bot id>:<secret>")
        return value

    @field_validator("codec_token")
    @classmethod
    def _check_codec_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not CODEC_TOKEN_PATTERN.match(value.get_secret_value()):
            # It travels in a URL path: URL-safe characters, long enough to guess never.
            raise ValueError("must be 24 to 256 characters of letters, digits, '-' or '_'")
        return value

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

    @field_validator("api_key_pepper")
    @classmethod
    def _check_api_key_pepper(cls, value: SecretStr | None) -> SecretStr | None:
        # Never echo the value: the message names only the rule.
        if value is not None and len(value.get_secret_value().strip()) < API_KEY_PEPPER_CHARS_MIN:
            raise ValueError(f"must be at least {API_KEY_PEPPER_CHARS_MIN} characters")
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
    def embedded_database_url_without_password(self) -> str:
        return (
            f"postgresql://{EMBEDDED_DATABASE_USER}@{self.bind_host}:{self.postgres_port}/cardflow"
        )

    @property
    def embedded_database_url(self) -> str:
        """The embedded PostgreSQL's URL with its password (made once under
        CARDFLOW_HOME/secrets/ when missing): the server asks every connection."""
        from workers.secrets import dev_postgres_password  # it imports this module

        return _with_database_password(
            "the embedded PostgreSQL",
            self.embedded_database_url_without_password,
            dev_postgres_password(self),
        )

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
    def webapp_page_url(self) -> str:
        return self.webapp_url or f"{self.gateway_base_url}/webapp/"

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
