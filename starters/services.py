"""`cardflow worker run` and `cardflow gateway`: the long-running processes of
a deployment, each in the foreground until SIGTERM (the embedded stack, the
compose file and a process supervisor all start them this way)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from starters import console

worker_app = typer.Typer(help="Worker processes.", no_args_is_help=True)


@worker_app.command("run")
def worker_run(
    kind: Annotated[str, typer.Argument(help="workflows, ledger or providers")],
) -> None:
    """Run the worker of one task queue until SIGTERM."""
    from schemas.task_queues import QUEUE_KINDS
    from workers.run import run_worker

    if kind not in QUEUE_KINDS:
        typer.echo(f"cardflow worker run: kind must be one of {', '.join(QUEUE_KINDS)}", err=True)
        raise typer.Exit(2)
    asyncio.run(run_worker(kind, console.settings()))


def gateway_serve() -> None:
    """Serve the webhook and HTTP API gateway on CARDFLOW_GATEWAY_PORT."""
    import uvicorn

    from starters.gateway.app import create_app
    from starters.gateway.server import gateway_config
    from workers.heap import freeze_startup
    from workers.telemetry import configure_logging, start_telemetry

    settings = console.settings()
    telemetry = start_telemetry(settings, "gateway")
    configure_logging(settings, telemetry.service_name)
    try:
        config = gateway_config(create_app(settings, telemetry=telemetry), settings)
        freeze_startup()
        uvicorn.Server(config).run()
    finally:
        telemetry.shutdown()
