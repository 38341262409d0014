"""Migrations apply once, in order, atomically, and safely when runners race."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from activities.migrate import MIGRATIONS_DIR, MigrationError, discover, migrate


def write(directory: Path, name: str, sql: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(sql)


async def fetch(url: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


async def test_project_migrations_apply_once_and_are_then_a_no_op(empty_database_url: str) -> None:
    first = await migrate(empty_database_url)
    assert [m.version for m in first] == [m.version for m in discover()]
    assert await migrate(empty_database_url) == []
    recorded = await fetch(empty_database_url, "SELECT version FROM schema_migrations ORDER BY 1")
    assert [r["version"] for r in recorded] == [m.version for m in discover(MIGRATIONS_DIR)]


async def test_concurrent_runners_apply_each_migration_exactly_once(
    empty_database_url: str, tmp_path: Path
) -> None:
    # Neither statement is idempotent: running either twice would fail or
    # leave two rows, so the outcome shows whether the lock held.
    write(tmp_path, "0001_counter.sql", "CREATE TABLE applied (runs integer NOT NULL);")
    write(tmp_path, "0002_count.sql", "SELECT pg_sleep(0.2); INSERT INTO applied VALUES (1);")
    results = await asyncio.gather(*(migrate(empty_database_url, tmp_path) for _ in range(8)))
    applied_versions = sorted(m.version for result in results for m in result)
    assert applied_versions == [1, 2]
    rows = await fetch(empty_database_url, "SELECT runs FROM applied")
    assert [r["runs"] for r in rows] == [1]


async def test_a_failing_migration_leaves_nothing_half_written(
    empty_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_ok.sql", "CREATE TABLE first_table (id integer);")
    write(
        tmp_path,
        "0002_broken.sql",
        "CREATE TABLE second_table (id integer); INSERT INTO no_such_table VALUES (1);",
    )
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(empty_database_url, tmp_path)
    recorded = await fetch(empty_database_url, "SELECT version FROM schema_migrations")
    assert [r["version"] for r in recorded] == [1]
    tables = await fetch(
        empty_database_url, "SELECT tablename FROM pg_tables WHERE tablename = 'second_table'"
    )
    assert tables == []
    # Fixed, it applies on the next run.
    write(tmp_path, "0002_broken.sql", "CREATE TABLE second_table (id integer);")
    assert [m.version for m in await migrate(empty_database_url, tmp_path)] == [2]


async def test_an_applied_migration_that_changed_is_refused(
    empty_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_table.sql", "CREATE TABLE t (id integer);")
    await migrate(empty_database_url, tmp_path)
    write(tmp_path, "0001_table.sql", "CREATE TABLE t (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(empty_database_url, tmp_path)


async def test_a_database_ahead_of_the_code_is_refused(
    empty_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "0002_b.sql", "SELECT 1;")
    await migrate(empty_database_url, tmp_path)
    (tmp_path / "0002_b.sql").unlink()
    with pytest.raises(MigrationError, match=r"does not know: \[2\]"):
        await migrate(empty_database_url, tmp_path)


def test_misnamed_or_duplicate_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "bad", "1_no_padding.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_snake_name"):
        discover(tmp_path / "bad")
    write(tmp_path / "dup", "0001_a.sql", "SELECT 1;")
    write(tmp_path / "dup", "0001_b.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="duplicate"):
        discover(tmp_path / "dup")
