"""Webhook signing secrets: from CARDFLOW_WEBHOOK_SECRETS, or dev secrets made once."""

from __future__ import annotations

import base64
import json
import os
import secrets as random_secrets
from pathlib import Path

from schemas.providers import PROVIDERS
from workers.settings import Settings, parse_webhook_secrets

DEV_WEBHOOK_SECRETS_FILENAME = "webhook-secrets.json"


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(random_secrets.token_bytes(32)).decode()


def dev_webhook_secrets_path(settings: Settings) -> Path:
    return settings.home_path / "secrets" / DEV_WEBHOOK_SECRETS_FILENAME


def webhook_secrets(settings: Settings) -> dict[str, list[str]]:
    """Per provider, the secrets to accept; the first is the one to sign with."""
    if settings.webhook_secrets is not None:
        return parse_webhook_secrets(settings.webhook_secrets.get_secret_value())
    path = dev_webhook_secrets_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        document = {provider: new_webhook_secret() for provider in PROVIDERS}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle)
        except FileExistsError:
            pass
    return parse_webhook_secrets(path.read_text())
