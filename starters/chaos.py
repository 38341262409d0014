"""`cardflow chaos`: the seeded chaos run (bench/chaos), as a command.

Random traffic through the public entry points, provider faults, webhooks
twice and out of order, workers killed; then every money invariant checked.
Exit status 0: no violation; 1: violations (each printed, with the command
that replays the run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# Every number the command takes is bounded.
SEED_MAX = 2**62
OPERATIONS_MAX = 1_000_000
MINUTES_MAX = 24 * 60.0
KILL_EVERY_SECONDS_MAX = 3_600.0
CUSTOMERS_MAX = 10_000


def chaos_command(
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=SEED_MAX, help="Draws the operations and the faults")
    ] = 1,
    ops: Annotated[
        int, typer.Option("--ops", min=1, max=OPERATIONS_MAX, help="Operations to do")
    ] = 1_000,
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes", min=0.1, max=MINUTES_MAX, help="Stop starting operations after this long"
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=256, help="Operations in flight")
    ] = 16,
    kill_every: Annotated[
        float,
        typer.Option(
            "--kill-every",
            min=1.0,
            max=KILL_EVERY_SECONDS_MAX,
            help="Seconds between two worker kills",
        ),
    ] = 20.0,
    fault_rate: Annotated[
        float,
        typer.Option("--fault-rate", min=0.0, max=1.0, help="Provider faults per operation"),
    ] = 0.05,
    customers: Annotated[
        int | None,
        typer.Option(
            "--customers", min=1, max=CUSTOMERS_MAX, help="Default: 2 per operation in flight"
        ),
    ] = None,
    existing: Annotated[
        bool, typer.Option("--existing", help="Use the running stack (cardflow dev up)")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Where the JSON report goes")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No live line")] = False,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="After violations, leave the run's stack up to investigate"),
    ] = False,
) -> None:
    """Seeded chaos: traffic, faults and kills, then every money invariant checked."""
    from bench.chaos.options import Options
    from bench.chaos.run import main as run_chaos

    options = Options(
        seed=seed,
        operations=ops,
        minutes=minutes,
        concurrency=concurrency,
        kill_every_seconds=kill_every,
        fault_rate=fault_rate,
        customers=customers,
        existing=existing,
        report_path=report,
        live=not quiet,
        keep_on_violation=keep,
    )
    raise typer.Exit(run_chaos(options))


def main() -> None:
    typer.run(chaos_command)
