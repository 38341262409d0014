"""`cardflow rules ...`: the program's authorization rules (schemas/auth_rules.py).

- `load RULES_FILE`: a new version of the program's controls with these
  rules (its other controls kept), sent to every card;
- `backtest RULES_FILE --days N`: what the rules would have done to the
  cards' authorizations of the last N days, read from their histories
  (starters/rules_backtest.py): a progress bar while it reads, then a table,
  and the figures as JSON with `--json FILE` (or `--json -`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.auth_rules import RuleSet
from schemas.card_controls import Controls, ControlsChange
from starters import console
from starters.rules_backtest import Report, backtest

rules_app = typer.Typer(help="The program's authorization rules: load and backtest.")

RulesFile = Annotated[Path, typer.Argument(help='A JSON file: {"rules": [...]}')]


def read_rules(path: Path) -> RuleSet:
    """The rules file, checked; what is wrong with it ends the command (2)."""
    return console.read_model_file(path, RuleSet, "RULES_FILE")


@rules_app.command("load")
def load_command(
    file: RulesFile,
    request_id: Annotated[str, typer.Option(help="Names the change; the same id is one change")],
    reason: Annotated[str, typer.Option()],
    operator: Annotated[str, typer.Option(help="Who loads them")],
) -> None:
    """Load the program's rules: a new version, sent to every card."""
    rules = read_rules(file)
    try:
        change = ControlsChange(
            request_id=request_id,
            controls=Controls(rules=rules.rules),
            reason=reason,
            changed_by=f"operator:{operator}",
            only_fields=["rules"],
        )
    except ValidationError as error:
        console.refuse_input(error)
    from starters.controls import start_controls_change
    from workers.client import connect

    async def run() -> None:
        settings = console.settings()
        client = await connect(settings)
        handle = await start_controls_change(client, change, settings.task_queues)
        typer.echo(f"started {handle.id}: {console.ui_link(settings, handle.id)}")
        typer.echo((await handle.result()).model_dump_json(indent=2))

    console.run(run())


def _money(amounts: dict[str, int]) -> str:
    return ", ".join(f"{minor} {currency}" for currency, minor in sorted(amounts.items())) or "-"


def report_table(report: Report) -> Table:
    table = Table(
        title=(
            f"Backtest of {len(report.rules)} rules over {report.days} days:"
            f" {report.authorizations} authorizations on {report.cards} cards"
        )
    )
    for column in ("rule", "mode", "matched", "approved → declined", "declined → approved"):
        table.add_column(column)
    for figures in report.rules.values():
        table.add_row(
            figures.rule_id,
            figures.mode,
            f"{figures.matched} ({_money(figures.matched_minor)})",
            f"{figures.approvals_to_declines} ({_money(figures.approvals_to_declines_minor)})",
            f"{figures.declines_to_approvals} ({_money(figures.declines_to_approvals_minor)})",
        )
    return table


@rules_app.command("backtest")
def backtest_command(
    file: RulesFile,
    days: Annotated[int, typer.Option(min=1, max=366, help="How far back to look")] = 30,
    json_path: Annotated[
        str | None, typer.Option("--json", help="Write the figures as JSON here ('-': stdout)")
    ] = None,
    card: Annotated[list[str] | None, typer.Option(help="Only this card (repeat for more)")] = None,
) -> None:
    """What candidate rules would have done to the last N days of authorizations."""
    rules = read_rules(file)
    from workers.client import connect

    async def run() -> Report:
        client = await connect(console.settings())
        with Progress(
            TextColumn("reading card histories"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task("histories", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            only = set(card) if card else None
            return await backtest(client, rules, days, cards=only, progress=advance)

    report = console.run(run())
    document = json.dumps(report.as_json(), indent=2)
    if json_path == "-":
        typer.echo(document)
        return
    Console().print(report_table(report))
    for figures in report.rules.values():
        for affected in figures.sample:
            typer.echo(
                f"  {figures.rule_id}: {affected['authorization_id']} on {affected['card_id']}"
                f" {affected['amount_minor']} {affected['currency']} at {affected['merchant']}"
                f" ({affected['before']} → {affected['after']})"
            )
    if json_path is not None:
        Path(json_path).write_text(document + "\n")
        typer.echo(f"figures written to {json_path}")
