"""`cardflow dev up | down | status` and `cardflow demo`: the embedded stack
from the command line, each part printed with its address, pid and health."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from starters import console
from workers.settings import Settings

if TYPE_CHECKING:
    from starters.devstack.stack import PartStatus

dev_app = typer.Typer(help="The embedded stack on this machine.", no_args_is_help=True)


def print_status(parts: Sequence[PartStatus], as_json: bool) -> bool:
    """Print each part (a table, or JSON); answers whether all are healthy."""
    healthy = all(part.healthy for part in parts)
    if as_json:
        document = {"healthy": healthy, "parts": [part.as_dict() for part in parts]}
        typer.echo(json.dumps(document, indent=2))
        return healthy
    rows = [("PART", "ADDRESS", "PID", "HEALTH", "DETAIL")]
    for part in parts:
        health = "healthy" if part.healthy else ("unhealthy" if part.running else "stopped")
        rows.append((part.name, part.address, str(part.pid or "-"), health, part.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        columns = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4]))
        typer.echo(f"{columns}  {row[4]}")
    return healthy


def _up(settings: Settings, command: str) -> list[PartStatus]:
    """Start (or reuse) every part; a part that cannot start ends `command` (1)."""
    from starters.devstack.processes import PortTakenError
    from starters.devstack.stack import Stack, StackError

    try:
        return Stack(settings).up()
    except (PortTakenError, StackError) as error:
        typer.echo(f"{command}: {error}", err=True)
        raise typer.Exit(1) from None


@dev_app.command("up")
def dev_up(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Start (or reuse) PostgreSQL, Temporal, the codec server and the workers."""
    settings = console.settings()
    healthy = print_status(_up(settings, "cardflow dev up"), as_json)
    if not as_json:
        typer.echo(
            f"\nTemporal Web UI: {settings.web_ui_url}" if not settings.temporal_is_external else ""
        )
    raise typer.Exit(0 if healthy else 1)


@dev_app.command("down")
def dev_down() -> None:
    """Stop every part `dev up` started; data stays under CARDFLOW_HOME."""
    from starters.devstack.stack import Stack

    stopped = Stack(console.settings()).down()
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@dev_app.command("status")
def dev_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every part with its address, pid and health; workers are proven by Ping."""
    from starters.devstack.stack import Stack

    healthy = print_status(Stack(console.settings()).status(), as_json)
    raise typer.Exit(0 if healthy else 1)


def demo_command() -> None:
    """Bring the stack up, prove every worker answers, and say where the Web UI is."""
    from starters.demo import walk_through
    from workers.client import connect

    settings = console.settings()
    typer.echo(
        "Starting the cardflow stack (PostgreSQL, Temporal, codec, simulators, gateway, workers)..."
    )
    healthy = print_status(_up(settings, "cardflow demo"), as_json=False)
    if not healthy:
        typer.echo(
            "\nThe stack is not healthy; logs are in " + str(settings.home_path / "logs"), err=True
        )
        raise typer.Exit(1)
    typer.echo("\nEvery task queue answered the Ping health check.\n")

    def say(line: str, workflow_id: str | None) -> None:
        typer.echo(
            f"- {line}" + (f"\n    {console.ui_link(settings, workflow_id)}" if workflow_id else "")
        )

    async def run() -> None:
        await walk_through(await connect(settings), settings, say)

    console.run(run())
    typer.echo(
        f"\nTemporal Web UI: {settings.web_ui_url} (payloads decoded by {settings.codec_url})"
        f"\nStop the stack with: .venv/bin/cardflow dev down"
    )
