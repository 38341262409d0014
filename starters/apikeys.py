"""`cardflow apikey create | list | revoke | rotate`: keys of the upstream API.

Keys are written straight to the database (`DATABASE_URL`, or the embedded
one), never through the API they guard. The key is printed once, when it is
issued; afterwards only its id, name, scopes and customers are shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
import typer
from pydantic import ValidationError

from activities.api_keys import (
    KEY_CUSTOMERS_MAX,
    KEY_ID_PATTERN,
    ROTATION_OVERLAP_HOURS_MAX,
    SCOPES,
    ApiKeyError,
    ApiKeyInfo,
    ApiKeyStore,
    IssuedKey,
    NewApiKey,
    api_key_pepper,
)
from activities.database import create_pool
from workers.settings import Settings, SettingsError, load_settings

apikey_app = typer.Typer(
    help="API keys of the upstream HTTP API (/v1): create, list, revoke, rotate.",
    no_args_is_help=True,
)

DEFAULT_ROTATION_OVERLAP_HOURS = 24
_POOL_SIZE_MAX = 2
_OPTION_OF_FIELD = {
    "name": "--name",
    "scopes": "--scope",
    "expires_in_days": "--expires-in-days",
    "customers": "--customer",
}

T = TypeVar("T")


# ----- client functions (the CLI's, and tests') --------------------------------


@contextlib.asynccontextmanager
async def key_store(settings: Settings) -> AsyncIterator[ApiKeyStore]:
    """The key store on the settings' database, with the settings' pepper."""
    pool = await create_pool(settings.effective_database_url, size_max=_POOL_SIZE_MAX)
    try:
        yield ApiKeyStore(pool, api_key_pepper(settings))
    finally:
        await pool.close()


async def create_key(settings: Settings, new: NewApiKey) -> IssuedKey:
    async with key_store(settings) as store:
        return await store.create(new)


async def list_keys(settings: Settings) -> list[ApiKeyInfo]:
    async with key_store(settings) as store:
        return await store.list()


async def revoke_key(settings: Settings, key_id: str) -> ApiKeyInfo:
    async with key_store(settings) as store:
        return await store.revoke(key_id)


async def rotate_key(
    settings: Settings, key_id: str, overlap: timedelta
) -> tuple[IssuedKey, ApiKeyInfo]:
    async with key_store(settings) as store:
        return await store.rotate(key_id, overlap)


# ----- the commands -----------------------------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"cardflow apikey: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        _fail(str(error), 2)


def _run(call: Awaitable[T]) -> T:
    """Run a store call; known failures become a message and an exit code."""

    async def run() -> T:
        return await call

    try:
        return asyncio.run(run())
    except ApiKeyError as error:
        _fail(str(error), 1)
    except asyncpg.UndefinedTableError:
        _fail("the database has no api_keys table yet: run `cardflow db migrate`", 1)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
        _fail(
            f"cannot reach the database ({type(error).__name__}): run `cardflow dev up`, "
            "or set DATABASE_URL",
            1,
        )


def _check_key_id(key_id: str) -> None:
    if not KEY_ID_PATTERN.match(key_id):
        _fail("KEY_ID must be the 12-character id `cardflow apikey list` shows", 2)


def _when(moment: datetime | None, never: str = "-") -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else never


def _customers(info: ApiKeyInfo) -> str:
    return "every customer" if info.customers is None else ", ".join(info.customers)


def _info_document(info: ApiKeyInfo, now: datetime) -> dict[str, Any]:
    return {**info.model_dump(mode="json"), "state": info.state(now)}


def _print_issued(issued: IssuedKey, as_json: bool, *, replaces: ApiKeyInfo | None = None) -> None:
    info = issued.info
    if as_json:
        document: dict[str, Any] = {
            "key": issued.key,
            **_info_document(info, datetime.now(UTC)),
        }
        if replaces is not None:
            document["replaces"] = _info_document(replaces, datetime.now(UTC))
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(
            f"API key '{info.name}' (id {info.key_id}; scopes {', '.join(info.scopes)}; "
            f"customers {_customers(info)}; "
            f"expires {_when(info.expires_at, 'never')}):\n\n    {issued.key}\n"
        )
        if replaces is not None:
            typer.echo(
                f"The old key {replaces.key_id} keeps working until "
                f"{_when(replaces.expires_at, 'never')}."
            )
    typer.echo(
        "Store this key now: it cannot be shown again (cardflow keeps only a hash of it). "
        "Send it as 'Authorization: Bearer <key>'.",
        err=True,
    )


@apikey_app.command("create")
def create_command(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", help=f"A scope (repeatable): {', '.join(SCOPES)}"),
    ],
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", help="Lifetime in days; unset: no expiry")
    ] = None,
    customer: Annotated[
        list[str] | None,
        typer.Option(
            "--customer",
            help="Bind the key to this customer (repeatable, at most "
            f"{KEY_CUSTOMERS_MAX}): it acts on their processes, cards and data only, and on "
            "no program-wide route. Unset: every customer.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Issue a key and print it once."""
    try:
        new = NewApiKey(
            name=name,
            scopes=scope,  # type: ignore[arg-type]
            expires_in_days=expires_in_days,
            customers=customer or None,
        )
    except ValidationError as error:
        for problem in error.errors():
            option = _OPTION_OF_FIELD.get(str(problem["loc"][0]), str(problem["loc"][0]))
            message = problem["msg"].removeprefix("Value error, ")
            if option == "--scope":
                message += f" (scopes: {', '.join(SCOPES)})"
            typer.echo(f"cardflow apikey: {option}: {message}", err=True)
        raise typer.Exit(2) from None
    issued = _run(create_key(_settings(), new))
    _print_issued(issued, as_json)


@apikey_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every key: id, name, scopes, customers (* for every one), state, created, expires,
    revoked, last used (never the key)."""
    keys = _run(list_keys(_settings()))
    now = datetime.now(UTC)
    if as_json:
        typer.echo(json.dumps([_info_document(info, now) for info in keys], indent=2))
        return
    rows = [
        (
            "KEY_ID",
            "NAME",
            "SCOPES",
            "CUSTOMERS",
            "STATE",
            "CREATED",
            "EXPIRES",
            "REVOKED",
            "LAST_USED",
        )
    ]
    for info in keys:
        rows.append(
            (
                info.key_id,
                info.name,
                ",".join(info.scopes),
                "*" if info.customers is None else ",".join(info.customers),
                info.state(now),
                _when(info.created_at),
                _when(info.expires_at, "never"),
                _when(info.revoked_at),
                _when(info.last_used_at, "never"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    if not keys:
        typer.echo("no API keys yet: `cardflow apikey create --name NAME --scope SCOPE`")


@apikey_app.command("revoke")
def revoke_command(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `list` shows it")],
) -> None:
    """Revoke a key; gateways refuse it within a few seconds (their cache bound)."""
    _check_key_id(key_id)
    info = _run(revoke_key(_settings(), key_id))
    typer.echo(f"revoked {info.key_id} ('{info.name}') at {_when(info.revoked_at)}")


@apikey_app.command("rotate")
def rotate_command(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `list` shows it")],
    overlap_hours: Annotated[
        float,
        typer.Option(
            "--overlap-hours",
            help="How long the old key keeps working (0: stops now)",
        ),
    ] = DEFAULT_ROTATION_OVERLAP_HOURS,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Issue a new key with the same name, scopes and customers; the old one expires after
    the overlap."""
    _check_key_id(key_id)
    if not 0 <= overlap_hours <= ROTATION_OVERLAP_HOURS_MAX:
        _fail(f"--overlap-hours: must be between 0 and {ROTATION_OVERLAP_HOURS_MAX}", 2)
    issued, old = _run(rotate_key(_settings(), key_id, timedelta(hours=overlap_hours)))
    _print_issued(issued, as_json, replaces=old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(apikey_app())
