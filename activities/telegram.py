"""Telegram users linked to customers (telegram_links): who a Telegram user
acting through the bot or the WebApp is, and the single-use codes that link
them (telegram_link_codes)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg

# A code is a Telegram deep link's start parameter: [A-Za-z0-9_-], at most 64.
LINK_CODE_BYTES = 24
LINK_CODE_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
LINK_CODE_SECONDS = 10 * 60


class LinkCodeInvalid(Exception):
    """No such code, or it expired, or another user redeemed it."""


class AlreadyLinked(Exception):
    """The Telegram user, or the customer, is linked to another already."""


class TelegramLinks:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def link(self, telegram_user_id: int, customer_id: str) -> None:
        """Link the user to the customer; linking the same pair again is a no-op."""
        row = await self._pool.fetchrow(
            "WITH linked AS (INSERT INTO telegram_links (telegram_user_id, customer_id)"
            " VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING customer_id)"
            " SELECT customer_id FROM linked"
            " UNION ALL SELECT customer_id FROM telegram_links WHERE telegram_user_id = $1"
            " LIMIT 1",
            telegram_user_id,
            customer_id,
        )
        if row is None or row["customer_id"] != customer_id:
            raise AlreadyLinked(
                f"Telegram user {telegram_user_id} or customer {customer_id} is linked already"
            )

    async def customer_of(self, telegram_user_id: int) -> str | None:
        found: str | None = await self._pool.fetchval(
            "SELECT customer_id FROM telegram_links WHERE telegram_user_id = $1", telegram_user_id
        )
        return found

    async def issue_code(self, customer_id: str) -> tuple[str, datetime]:
        """A new single-use code linking whoever redeems it to the customer."""
        code = secrets.token_urlsafe(LINK_CODE_BYTES)
        expires_at = datetime.now(UTC) + timedelta(seconds=LINK_CODE_SECONDS)
        await self._pool.execute(
            "INSERT INTO telegram_link_codes (code_sha256, customer_id, expires_at)"
            " VALUES ($1, $2, $3)",
            _digest(code),
            customer_id,
            expires_at,
        )
        return code, expires_at

    async def redeem(self, code: str, telegram_user_id: int) -> str:
        """Link the user to the code's customer and return it. The same user
        redeeming again gets the same answer; anyone else, LinkCodeInvalid."""
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "SELECT customer_id, expires_at, redeemed_by FROM telegram_link_codes"
                " WHERE code_sha256 = $1 FOR UPDATE",
                _digest(code),
            )
            if row is None:
                raise LinkCodeInvalid("no such link code")
            if row["redeemed_by"] is not None:
                if row["redeemed_by"] != telegram_user_id:
                    raise LinkCodeInvalid("this link code was used by another Telegram user")
                return str(row["customer_id"])
            if row["expires_at"] <= datetime.now(UTC):
                raise LinkCodeInvalid("this link code expired: ask for a new one")
            await connection.execute(
                "UPDATE telegram_link_codes SET redeemed_by = $2, redeemed_at = now()"
                " WHERE code_sha256 = $1",
                _digest(code),
                telegram_user_id,
            )
            linked = await connection.fetchval(
                "INSERT INTO telegram_links (telegram_user_id, customer_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING true",
                telegram_user_id,
                row["customer_id"],
            )
            if not linked:
                existing = await connection.fetchval(
                    "SELECT customer_id FROM telegram_links WHERE telegram_user_id = $1",
                    telegram_user_id,
                )
                if existing != row["customer_id"]:
                    raise AlreadyLinked(
                        f"Telegram user {telegram_user_id} or customer {row['customer_id']}"
                        " is linked already"
                    )
            # The user's private chat with the bot has the user's id: the
            # address the customer's Telegram notifications go to, if chosen.
            await connection.execute(
                "UPDATE customers SET telegram_chat_id = $2, updated_at = now()"
                " WHERE customer_id = $1",
                row["customer_id"],
                str(telegram_user_id),
            )
            return str(row["customer_id"])


def _digest(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()
