"""Health-check activities, one per activity task queue."""

from __future__ import annotations

import os
import socket

import asyncpg

from activities.queues import ledger_activity, provider_activity

LEDGER_PING = "ledger_ping"
PROVIDERS_PING = "providers_ping"


def worker_identity() -> str:
    """pid@host of the process that ran the activity."""
    return f"{os.getpid()}@{socket.gethostname()}"


class LedgerHealthActivities:
    """Runs on the ledger queue: proves the worker and its database pool answer."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @ledger_activity(LEDGER_PING)
    async def ping(self) -> str:
        async with self._pool.acquire() as connection:
            applied = await connection.fetchval("SELECT count(*) FROM schema_migrations")
        return f"{worker_identity()} (database answered, {applied} migrations applied)"


@provider_activity(PROVIDERS_PING)
async def providers_ping() -> str:
    """Runs on the providers queue: proves the worker polls and answers."""
    return worker_identity()
