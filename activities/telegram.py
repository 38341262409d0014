"""Telegram users linked to customers (telegram_links): who a Telegram user
acting through the bot or the WebApp is."""

from __future__ import annotations

import asyncpg


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
