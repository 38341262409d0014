"""The asyncpg connection pool every ledger activity shares."""

from __future__ import annotations

import asyncpg

# A statement that runs longer than this is a bug or a lock pile-up; fail it
# rather than let it hold a pool connection and a ledger lock indefinitely.
STATEMENT_TIMEOUT_MS = 15_000
CONNECT_TIMEOUT_SECONDS = 10


async def create_pool(database_url: str, *, size_max: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=size_max,
        timeout=CONNECT_TIMEOUT_SECONDS,
        server_settings={
            "application_name": "cardflow",
            "statement_timeout": str(STATEMENT_TIMEOUT_MS),
        },
    )
    assert pool is not None
    return pool
