"""What every `cardflow` command shares on the console: the settings, running
a command's coroutine, refusing what it was given, sending a process an
update and printing the answer, the Web UI's link to a process, and the exit
codes a command ends with."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import typer
from pydantic import BaseModel, ValidationError
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)

from workers.settings import Settings, SettingsError, load_settings

# sysexits' EX_UNAVAILABLE: a service the command needs cannot be reached.
EXIT_UNAVAILABLE = 69
# sysexits' EX_TEMPFAIL: nothing is wrong with the command; try again later.
EXIT_PROCESS_BUSY = 75

T = TypeVar("T")


def settings() -> Settings:
    """The settings of this environment; settings that do not load end the command (2)."""
    try:
        return load_settings()
    except SettingsError as error:
        typer.echo(f"cardflow: {error}", err=True)
        raise typer.Exit(2) from None


def refuse_input(error: ValidationError) -> NoReturn:
    """Print each field a pydantic ValidationError names, and exit 2."""
    for problem in error.errors():
        typer.echo(f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}", err=True)
    raise typer.Exit(2) from None


M = TypeVar("M", bound=BaseModel)


def read_model_file(path: Path, model: type[M], argument: str) -> M:
    """A JSON file read as `model`: one that cannot be read names `argument`,
    one the model refuses names each field; either ends the command (2)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        typer.echo(f"{argument}: cannot read {path} as JSON ({error})", err=True)
        raise typer.Exit(2) from None
    try:
        return model.model_validate(document)
    except ValidationError as error:
        refuse_input(error)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a process that does not take an update in
    time is a message and exit code EXIT_PROCESS_BUSY, not a traceback."""
    try:
        return asyncio.run(coroutine)
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        typer.echo(
            "the process did not answer in time: its workers may be down or far behind. "
            "The request waits in the process and may still take effect; check with "
            "`cardflow status <workflow id>` before sending it again.",
            err=True,
        )
        raise typer.Exit(EXIT_PROCESS_BUSY) from None


def send_update(action: Callable[[Client], Awaitable[str]]) -> NoReturn:
    """Run `action(client)` (an update on a process), print its answer or
    refusal, and exit 0 or 1."""
    from workers.client import connect

    async def answer() -> int:
        client = await connect(settings())
        try:
            typer.echo(await action(client))
        except WorkflowUpdateFailedError as error:
            typer.echo(f"refused: {error.cause}", err=True)
            return 1
        return 0

    raise typer.Exit(run(answer()))


def ui_link(settings: Settings, workflow_id: str) -> str:
    """The Temporal Web UI's page of the process."""
    return (
        f"{settings.web_ui_url}/namespaces/{settings.temporal_namespace}/workflows/"
        f"{quote(workflow_id, safe='')}"
    )
