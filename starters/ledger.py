"""`cardflow ledger verify | balance | history`: the ledger for operators; and
`cardflow db migrate`, which brings the database's schema up to date."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

import asyncpg
import typer

from activities.ledger import Ledger, LedgerError
from activities.ledger.verify import verify
from starters import console
from starters.arguments import BIGINT_MAX, instant
from workers.settings import load_settings

ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)


async def _pool() -> asyncpg.Pool:
    pool = await asyncpg.create_pool(load_settings().effective_database_url, min_size=1, max_size=2)
    assert pool is not None
    return pool


@ledger_app.command("verify")
def verify_command() -> None:
    """Check every ledger invariant; exit 1 listing each violation."""

    async def run() -> int:
        pool = await _pool()
        try:
            violations = await verify(pool)
        finally:
            await pool.close()
        for violation in violations:
            typer.echo(f"VIOLATION {violation.check}: {violation.subject}: {violation.detail}")
        typer.echo(
            f"{len(violations)} violation(s)" if violations else "ledger verified: no violations"
        )
        return 1 if violations else 0

    raise typer.Exit(asyncio.run(run()))


@ledger_app.command("balance")
def balance_command(
    code: Annotated[str, typer.Argument(help="Account code, e.g. customer:c-1:wallet:USD")],
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of", parser=instant, help="An ISO instant, e.g. 2026-11-01T00:00:00+00:00"
        ),
    ] = None,
) -> None:
    """Posted, pending and available balance, now or as of an instant."""

    async def run() -> int:
        pool = await _pool()
        try:
            balance = await Ledger(pool).balance(code, as_of=as_of)
        except LedgerError as error:
            typer.echo(str(error), err=True)
            return 1
        finally:
            await pool.close()
        typer.echo(balance.model_dump_json(indent=2))
        typer.echo(
            f"posted balance {balance.posted}, available {balance.available} "
            f"({balance.currency.value} minor units)"
        )
        return 0

    raise typer.Exit(asyncio.run(run()))


@ledger_app.command("expire-holds")
def expire_holds_command(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Holds per run")] = 1_000,
) -> None:
    """Release every hold past its expiry that nobody posted or voided."""

    async def run() -> int:
        pool = await _pool()
        try:
            outcomes = await Ledger(pool).expire_due_holds(limit)
        finally:
            await pool.close()
        expired = sum(outcome.accepted for outcome in outcomes)
        typer.echo(f"expired {expired} hold(s)")
        return 0

    raise typer.Exit(asyncio.run(run()))


@ledger_app.command("history")
def history_command(
    code: Annotated[str, typer.Argument(help="Account code")],
    after: Annotated[
        int | None,
        typer.Option(min=0, max=BIGINT_MAX, help="Cursor: the last transfer id seen"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """The account's transfers, oldest first, a page at a time."""

    async def run() -> int:
        pool = await _pool()
        try:
            page = await Ledger(pool).history(code, after=after, limit=limit)
        except LedgerError as error:
            typer.echo(str(error), err=True)
            return 1
        finally:
            await pool.close()
        for entry in page.entries:
            sign = "-" if entry.direction == "debit" else "+"
            typer.echo(
                f"{entry.transfer_id:>10}  {entry.created_at.isoformat()}  {entry.kind:<14} "
                f"{sign}{entry.amount_minor} {entry.currency.value}  {entry.counterparty}  "
                f"{entry.key}"
            )
        if page.next_cursor is not None:
            typer.echo(f"more: --after {page.next_cursor}")
        return 0

    raise typer.Exit(asyncio.run(run()))


# ----- `cardflow db ...` -------------------------------------------------------

db_app = typer.Typer(help="The database.", no_args_is_help=True)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending SQL migrations to DATABASE_URL (or the embedded database)."""
    from activities.migrate import migrate

    applied = asyncio.run(migrate(console.settings().effective_database_url))
    typer.echo("applied: " + (", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none"))
