"""Telegram's side of a WebApp, for tests: initData as Telegram signs it for
a user who opens the bot's WebApp (HMAC-SHA256 keyed by the bot's token,
https://core.telegram.org/bots/webapps#validating-data-received-via-the-web-app)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import urlencode


def signed_init_data(bot_token: str, user_id: int, *, auth_date: int | None = None) -> str:
    """initData for `user_id`, signed with `bot_token`, issued at `auth_date` (now)."""
    fields = {
        "query_id": f"q{user_id}",
        "user": json.dumps({"id": user_id, "first_name": "Ada"}, separators=(",", ":")),
        "auth_date": str(int(time.time()) if auth_date is None else auth_date),
    }
    check = "\n".join(f"{key}={value}" for key, value in sorted(fields.items()))
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    fields["hash"] = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    return urlencode(fields)
