"""The program's and customers' card controls (schemas/card_controls.py):
each change saved as a new version of its scope, once per request; the
versions in force; and the cards a change is sent to, page by page."""

from __future__ import annotations

import json

import asyncpg

from activities.queues import ledger_activity
from schemas.card_controls import (
    ControlledCardsPage,
    Controls,
    ControlsChange,
    ScopedControls,
)

SAVE_CONTROLS = "controls.save"
CURRENT_CONTROLS = "controls.current"
CONTROLLED_CARDS = "controls.cards"


class ControlsStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def save(self, change: ControlsChange) -> ScopedControls:
        """The change as its scope's next version; the same request again is
        the version it made (no new one)."""
        scope_id = change.customer_id or ""
        async with self._pool.acquire() as connection, connection.transaction():
            # One writer per scope at a time: versions are consecutive.
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"card-controls/{change.scope}/{scope_id}",
            )
            row = await connection.fetchrow(
                "SELECT scope, version, controls FROM card_controls WHERE request_id = $1",
                change.request_id,
            )
            if row is None:
                controls = change.controls
                if change.only_fields is not None:
                    # The version in force, with only these fields changed.
                    previous = await connection.fetchval(
                        "SELECT controls FROM card_controls WHERE scope = $1 AND scope_id = $2"
                        " ORDER BY version DESC LIMIT 1",
                        change.scope,
                        scope_id,
                    )
                    kept = Controls.model_validate(json.loads(previous)) if previous else Controls()
                    controls = kept.model_copy(
                        update={name: getattr(change.controls, name) for name in change.only_fields}
                    )
                row = await connection.fetchrow(
                    """
                    INSERT INTO card_controls
                        (scope, scope_id, version, controls, request_id, reason, changed_by)
                    SELECT $1, $2, coalesce(max(version), 0) + 1, $3::jsonb, $4, $5, $6
                    FROM card_controls WHERE scope = $1 AND scope_id = $2
                    RETURNING scope, version, controls
                    """,
                    change.scope,
                    scope_id,
                    controls.model_dump_json(exclude_none=True),
                    change.request_id,
                    change.reason,
                    change.changed_by,
                )
                assert row is not None
        return _scoped(row)

    async def current(self, customer_id: str | None) -> list[ScopedControls]:
        """The program's controls in force, and the customer's (when given)."""
        rows = await self._pool.fetch(
            """
            SELECT DISTINCT ON (scope) scope, version, controls FROM card_controls
            WHERE (scope = 'program' AND scope_id = '')
               OR (scope = 'customer' AND scope_id = $1)
            ORDER BY scope, version DESC
            """,
            customer_id or "",
        )
        return [_scoped(row) for row in rows]

    async def cards(self, page: ControlledCardsPage) -> list[str]:
        rows = await self._pool.fetch(
            """
            SELECT card_id FROM cards
            WHERE card_id > $1 AND ($2::text IS NULL OR customer_id = $2)
            ORDER BY card_id LIMIT $3
            """,
            page.after_card_id,
            page.customer_id,
            page.limit,
        )
        return [row["card_id"] for row in rows]


def _scoped(row: asyncpg.Record) -> ScopedControls:
    return ScopedControls(
        scope=row["scope"],
        version=row["version"],
        controls=Controls.model_validate(json.loads(row["controls"])),
    )


class CardControlActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.store = ControlsStore(pool)

    @ledger_activity(SAVE_CONTROLS)
    async def save(self, change: ControlsChange) -> ScopedControls:
        return await self.store.save(change)

    @ledger_activity(CURRENT_CONTROLS)
    async def current(self, customer_id: str) -> list[ScopedControls]:
        return await self.store.current(customer_id)

    @ledger_activity(CONTROLLED_CARDS)
    async def cards(self, page: ControlledCardsPage) -> list[str]:
        return await self.store.cards(page)

    def all(self) -> list[object]:
        return [self.save, self.current, self.cards]
