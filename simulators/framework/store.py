"""A small document store on SQLite, so a simulator restart loses nothing.

Documents are JSON objects addressed by (kind, id). Calls are synchronous and
short; simulators are test doubles serving one machine, not a database.

A provider's call changes its state all at once or not at all: what a call
writes between two of its awaits (a transaction saved with the webhook that
announces it) is one SQLite transaction (`atomic`, used by
simulators/framework/atomic.py), so a simulator killed halfway leaves either
both or neither, as a real provider does.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS idempotency (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    request    TEXT NOT NULL,
    status     INTEGER NOT NULL,
    response   TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    simulator       TEXT NOT NULL,
    event_id        TEXT NOT NULL UNIQUE,
    body            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    delivered_at    TEXT,
    deliveries      INTEGER NOT NULL DEFAULT 0,
    last_status     TEXT
);
-- What the delivery loop asks for on each round: the events due, oldest first
-- (without it, every round read the whole outbox, every event ever sent).
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at, seq)
    WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


# The exit status of a simulator killed by an injected crash (as SIGKILL's 128 + 9).
CRASH_EXIT_STATUS = 137
# The writes a request may still make before its process dies (a `crash`
# fault, simulators/framework/faults.py); unset: no crash armed.
_WRITES_BEFORE_CRASH: ContextVar[list[int] | None] = ContextVar("writes_before_crash", default=None)


def crash_after_writes(writes: int) -> None:
    """Kill this process, as SIGKILL would (nothing flushed, nothing
    committed), right after the current request's `writes`-th write: 0 kills
    it before the first."""
    if writes == 0:
        os._exit(CRASH_EXIT_STATUS)
    _WRITES_BEFORE_CRASH.set([writes])


def _counted_write(sql: str) -> None:
    """Counts `sql` against an armed crash when it writes (nothing to do,
    and no look at the statement, when none is armed)."""
    remaining = _WRITES_BEFORE_CRASH.get()
    if remaining is None or sql.lstrip()[:6].upper() == "SELECT":
        return
    remaining[0] -= 1
    if remaining[0] == 0:
        os._exit(CRASH_EXIT_STATUS)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Store:
    def __init__(self, path: Path | str, *, id_offset: int = 0) -> None:
        # Where readable ids start: 0 gives 1, 2, 3...; a test stack that
        # shares a Temporal server with others takes its own range.
        self.id_offset = id_offset
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._atomic_depth = 0

    def execute(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._connection.execute(sql, args)
            rows = cursor.fetchall()
        _counted_write(sql)
        return rows

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Everything written inside is committed together, or rolled back
        when the block raises (or never reaches disk when the process dies).
        Nested blocks join the outermost. The block must not await: the
        connection is shared by every request of the process."""
        with self._lock:
            if self._atomic_depth:
                self._atomic_depth += 1
                try:
                    yield
                finally:
                    self._atomic_depth -= 1
                return
            self._connection.execute("BEGIN IMMEDIATE")
            self._atomic_depth = 1
            try:
                yield
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            else:
                self._connection.execute("COMMIT")
            finally:
                self._atomic_depth = 0

    # ----- documents ----------------------------------------------------

    def put(self, kind: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        stamp = now_iso()
        self.execute(
            "INSERT INTO documents (kind, id, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body,"
            " updated_at = excluded.updated_at",
            kind,
            doc_id,
            json.dumps(body),
            stamp,
            stamp,
        )
        return body

    def get(self, kind: str, doc_id: str) -> dict[str, Any] | None:
        rows = self.execute("SELECT body FROM documents WHERE kind = ? AND id = ?", kind, doc_id)
        return json.loads(rows[0][0]) if rows else None

    def list(self, kind: str) -> list[dict[str, Any]]:
        rows = self.execute(
            "SELECT body FROM documents WHERE kind = ? ORDER BY created_at, id", kind
        )
        return [json.loads(row[0]) for row in rows]

    def next_number(self, name: str) -> int:
        """1, 2, 3... per name: readable, stable ids that survive restarts."""
        with self._lock:
            rows = self.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
                name,
                self.id_offset + 1,
            )
            return int(rows[0][0])

    def reset(self) -> None:
        with self._lock:
            for table in ("documents", "idempotency", "outbox", "counters"):
                self._connection.execute(f"DELETE FROM {table}")

    # ----- idempotency ----------------------------------------------------

    def remembered(self, scope: str, key: str) -> tuple[str, int, str] | None:
        rows = self.execute(
            "SELECT request, status, response FROM idempotency WHERE scope = ? AND key = ?",
            scope,
            key,
        )
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def remember(self, scope: str, key: str, request: str, status: int, response: str) -> None:
        self.execute(
            "INSERT OR IGNORE INTO idempotency (scope, key, request, status, response)"
            " VALUES (?, ?, ?, ?, ?)",
            scope,
            key,
            request,
            status,
            response,
        )
