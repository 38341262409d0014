"""Secrets of a running cardflow: webhook signing secrets, the codec token, dev secrets.

Production gives every secret through settings (`NAME` or `NAME_FILE`, see
`workers.settings.SECRET_FILE_VARIABLES`). The embedded stack makes the
missing ones once under `CARDFLOW_HOME/secrets/` (directory 0700, files 0600)
and reads them from there ever after; `ensure_dev_secrets` makes them all,
the embedded PostgreSQL's password among them.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import secrets as random_secrets
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.providers import PROVIDERS
from workers.settings import (
    CODEC_TOKEN_PATTERN,
    TELEGRAM_BOT_TOKEN_PATTERN,
    Settings,
    WebhookSecret,
    parse_webhook_secret_entries,
)

DEV_SECRETS_DIRNAME = "secrets"
DEV_WEBHOOK_SECRETS_FILENAME = "webhook-secrets.json"
DEV_CODEC_TOKEN_FILENAME = "codec-token"
DEV_TELEGRAM_BOT_TOKEN_FILENAME = "telegram-bot-token"
# The dev bot's id (the part of a token before its colon).
DEV_TELEGRAM_BOT_ID = 7_000_000_001
DEV_POSTGRES_PASSWORD_FILENAME = "postgres-password"
POSTGRES_PASSWORD_BYTES = 32
_POSTGRES_PASSWORD_PATTERN = re.compile(r"^[A-Za-z0-9_-]{32,256}$")
CODEC_TOKEN_BYTES = 32
# The Web UI cannot send a header to the codec server, so its endpoint carries
# the token as a path prefix: {codec_url}/t/{token}/decode.
CODEC_TOKEN_PATH_PREFIX = "/t/"
WEBHOOK_OVERLAP_HOURS_DEFAULT = 24
WEBHOOK_OVERLAP_HOURS_MAX = 24 * 90

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def dev_secrets_dir(settings: Settings) -> Path:
    return settings.home_path / DEV_SECRETS_DIRNAME


def write_secret_once(path: Path, content: str) -> bool:
    """Create `path` owner-only with `content` unless it exists; True when written.

    O_EXCL: two processes starting at once must not write two different secrets.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    return True


# ----- webhook signing secrets ---------------------------------------------------


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(random_secrets.token_bytes(32)).decode()


def dev_webhook_secrets_path(settings: Settings) -> Path:
    return dev_secrets_dir(settings) / DEV_WEBHOOK_SECRETS_FILENAME


class WebhookSecrets(Mapping[str, list[str]]):
    """Per provider, the secrets that verify *now*; the first one signs.

    `secrets[provider]` (and `.get`) is evaluated at each call against the
    clock, so an older secret stops verifying the moment its overlap ends,
    without a restart. The repr names providers only.
    """

    def __init__(self, entries: Mapping[str, list[WebhookSecret]], clock: Clock = _utc_now) -> None:
        self._entries = {provider: list(values) for provider, values in entries.items()}
        self._clock = clock

    def valid(self, provider: str, now: datetime) -> list[str]:
        """The provider's secrets that verify at `now`, current first."""
        return [entry.secret for entry in self._entries[provider] if entry.valid_at(now)]

    def entries(self, provider: str) -> list[WebhookSecret]:
        """Every configured secret of the provider, expired ones included."""
        return list(self._entries.get(provider, []))

    def signing_secret(self, provider: str) -> str:
        return self._entries[provider][0].secret

    def __getitem__(self, provider: str) -> list[str]:
        return self.valid(provider, self._clock())

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"WebhookSecrets(providers={sorted(self._entries)})"


def webhook_secrets(settings: Settings, clock: Clock = _utc_now) -> WebhookSecrets:
    """CARDFLOW_WEBHOOK_SECRETS (or its _FILE), else the dev secrets made once."""
    if settings.webhook_secrets is not None:
        raw = settings.webhook_secrets.get_secret_value()
    else:
        path = dev_webhook_secrets_path(settings)
        document = {provider: new_webhook_secret() for provider in PROVIDERS}
        write_secret_once(path, json.dumps(document))
        raw = path.read_text()
    return WebhookSecrets(parse_webhook_secret_entries(raw), clock)


def rotate_dev_webhook_secret(
    settings: Settings,
    provider: str,
    overlap_hours: int = WEBHOOK_OVERLAP_HOURS_DEFAULT,
    now: datetime | None = None,
) -> datetime:
    """Give a provider a new dev secret; the current one verifies `overlap_hours` more.

    Only for the dev secrets file: production rotates in its secret store.
    Returns when the old secret stops verifying. Expired entries are dropped.
    """
    if settings.webhook_secrets is not None:
        raise ValueError(
            "CARDFLOW_WEBHOOK_SECRETS is set: rotate it where it is stored, not in the dev file"
        )
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider '{provider}' (one of {', '.join(PROVIDERS)})")
    if not 0 <= overlap_hours <= WEBHOOK_OVERLAP_HOURS_MAX:
        raise ValueError(f"overlap hours must be 0 to {WEBHOOK_OVERLAP_HOURS_MAX}")
    now = now or _utc_now()
    current = webhook_secrets(settings)  # makes the file if missing
    path = dev_webhook_secrets_path(settings)
    document: dict[str, object] = json.loads(path.read_text())
    until = now + timedelta(hours=overlap_hours)
    entries = current.entries(provider)
    older = [
        {"secret": entry.secret, "until": entry.until.isoformat()}
        for entry in entries[1:]
        if entry.until is not None and entry.valid_at(now)
    ]
    kept = [{"secret": entries[0].secret, "until": until.isoformat()}] if entries else []
    document[provider] = [new_webhook_secret(), *kept, *older]
    # Validate before replacing; write a sibling and rename so a reader never
    # sees half a file.
    parse_webhook_secret_entries(json.dumps(document))
    staging = path.with_suffix(".rotating")
    staging.unlink(missing_ok=True)
    write_secret_once(staging, json.dumps(document))
    staging.replace(path)
    return until


# ----- the codec server's token -----------------------------------------------------


def dev_codec_token_path(settings: Settings) -> Path:
    return dev_secrets_dir(settings) / DEV_CODEC_TOKEN_FILENAME


def new_codec_token() -> str:
    return random_secrets.token_urlsafe(CODEC_TOKEN_BYTES)


def codec_token(settings: Settings) -> str:
    """CARDFLOW_CODEC_TOKEN (or its _FILE), else the dev token made once."""
    if settings.codec_token is not None:
        return settings.codec_token.get_secret_value()
    path = dev_codec_token_path(settings)
    write_secret_once(path, new_codec_token() + "\n")
    token = path.read_text().strip()
    if not CODEC_TOKEN_PATTERN.match(token):
        raise ValueError(f"the dev codec token in {path} is malformed; delete the file")
    return token


def telegram_bot_token(settings: Settings) -> str:
    """CARDFLOW_TELEGRAM_BOT_TOKEN (or its _FILE), else the dev bot's token
    made once (the Telegram simulator takes any well-formed token)."""
    if settings.telegram_bot_token is not None:
        return settings.telegram_bot_token.get_secret_value()
    path = dev_secrets_dir(settings) / DEV_TELEGRAM_BOT_TOKEN_FILENAME
    write_secret_once(
        path, f"{DEV_TELEGRAM_BOT_ID}:{random_secrets.token_urlsafe(CODEC_TOKEN_BYTES)}\n"
    )
    token = path.read_text().strip()
    if not TELEGRAM_BOT_TOKEN_PATTERN.match(token):
        raise ValueError(f"the dev Telegram bot token in {path} is malformed; delete the file")
    return token


def codec_ui_endpoint(settings: Settings) -> str:
    """The codec endpoint to give the Web UI: the token travels as a path prefix.

    Treat this URL as a secret: anyone holding it can decrypt payloads.
    """
    return f"{settings.codec_url}{CODEC_TOKEN_PATH_PREFIX}{codec_token(settings)}"


# ----- the embedded PostgreSQL's password ------------------------------------------------


def dev_postgres_password_path(settings: Settings) -> Path:
    return dev_secrets_dir(settings) / DEV_POSTGRES_PASSWORD_FILENAME


def dev_postgres_password(settings: Settings) -> str:
    """The embedded PostgreSQL superuser's password, made once (owner-only).

    The embedded server asks every connection for it (SCRAM), so a local
    account that can reach its port is not a superuser for the asking.
    """
    path = dev_postgres_password_path(settings)
    write_secret_once(path, random_secrets.token_urlsafe(POSTGRES_PASSWORD_BYTES) + "\n")
    password = path.read_text().strip()
    if not _POSTGRES_PASSWORD_PATTERN.match(password):
        raise ValueError(
            f"the embedded PostgreSQL password in {path} is malformed; delete the file "
            "(the next `cardflow dev up` makes a new one and gives it to the server)"
        )
    return password


# ----- every dev secret at once ----------------------------------------------------

# The API key pepper's loader lives with the API keys; it is called by name so
# this module does not depend on that one being present.
_PEPPER_LOADERS = (("activities.api_keys", "api_key_pepper"),)


def ensure_dev_secrets(settings: Settings) -> list[Path]:
    """Make every development secret the settings do not give; return the files.

    Existing files are left exactly as they are (same content, same modes).
    """
    from workers.converter import ensure_dev_keys

    made: list[Path] = []
    if settings.encryption_keys is None:
        made.append(ensure_dev_keys(settings))
    if settings.webhook_secrets is None:
        webhook_secrets(settings)
        made.append(dev_webhook_secrets_path(settings))
    if settings.codec_token is None:
        codec_token(settings)
        made.append(dev_codec_token_path(settings))
    if not settings.database_is_external:
        dev_postgres_password(settings)
        made.append(dev_postgres_password_path(settings))
    for module_name, function_name in _PEPPER_LOADERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        loader = getattr(module, function_name, None)
        if callable(loader):
            loader(settings)
            break
    dev_secrets_dir(settings).mkdir(parents=True, exist_ok=True)
    dev_secrets_dir(settings).chmod(0o700)
    return made
