"""The `cardflow` command: each process's and part's commands, from the
module that runs it, under one root; what a command meets that its user can
act on ends it with one line on stderr and an exit code."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

from starters.apikeys import apikey_app
from starters.billing import billing_app, statement_app
from starters.bot.run import bot_app
from starters.cards import card_app
from starters.cashback import cashback_app
from starters.chaos import chaos_command
from starters.closure import closure_app
from starters.codec_server import codec_app
from starters.console import EXIT_UNAVAILABLE
from starters.controls import controls_app
from starters.devstack.commands import demo_command, dev_app
from starters.dispute import dispute_app
from starters.fraud import fraud_app
from starters.fx import fx_app
from starters.health import ping_command
from starters.histories import histories_app
from starters.ledger import db_app, ledger_app
from starters.onboarding import kyc_app, onboard_command
from starters.program_funding import funding_app
from starters.reconcile import reconcile_app
from starters.rules import rules_app
from starters.schedules import schedules_app
from starters.secrets import secrets_app
from starters.services import gateway_serve, worker_app
from starters.settlement import settlement_app
from starters.simulate import simulate_app, simulators_app
from starters.status import status_command
from starters.topup import topup_app
from starters.withdrawal import withdrawal_app
from workers.settings import SettingsError


class Commands(TyperGroup):
    """cardflow's command tree. What any command meets that its user can act
    on is one line on stderr and an exit code, never a traceback: a process
    that does not exist (1), Temporal or another service out of reach
    (EXIT_UNAVAILABLE). Values are refused before that, as they are parsed
    (starters/arguments.py)."""

    def invoke(self, ctx: Any) -> Any:
        from temporalio.service import RPCError, RPCStatusCode

        from workers.client import TemporalUnreachable

        try:
            return super().invoke(ctx)
        except RPCError as error:
            if error.status is not RPCStatusCode.NOT_FOUND:
                raise
            typer.echo(f"cardflow: no such process: {error.message}", err=True)
            raise typer.Exit(1) from None
        except TemporalUnreachable as error:
            typer.echo(f"cardflow: {_first_line(error)}", err=True)
            raise typer.Exit(EXIT_UNAVAILABLE) from None
        except ConnectionError as error:  # e.g. the database refusing connections
            typer.echo(f"cardflow: cannot connect: {_first_line(error)}", err=True)
            raise typer.Exit(EXIT_UNAVAILABLE) from None


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


app = typer.Typer(
    cls=Commands,
    help="cardflow: a prepaid card program on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# `cardflow --help` lists the commands, then the groups, each in this order.
app.command("chaos")(chaos_command)
app.command("onboard")(onboard_command)
app.command("status")(status_command)
app.command("gateway")(gateway_serve)
app.command("ping")(ping_command)
app.command("demo")(demo_command)
app.add_typer(dev_app, name="dev")
app.add_typer(worker_app, name="worker")
app.add_typer(codec_app, name="codec")
app.add_typer(db_app, name="db")
app.add_typer(ledger_app, name="ledger")
app.add_typer(simulators_app, name="simulators")
app.add_typer(simulate_app, name="simulate")
app.add_typer(topup_app, name="topup")
app.add_typer(fx_app, name="fx")
app.add_typer(withdrawal_app, name="withdrawal")
app.add_typer(closure_app, name="closure")
app.add_typer(controls_app, name="controls")
app.add_typer(rules_app, name="rules")
app.add_typer(cashback_app, name="cashback")
app.add_typer(dispute_app, name="dispute")
app.add_typer(billing_app, name="billing")
app.add_typer(statement_app, name="statement")
app.add_typer(reconcile_app, name="reconcile")
app.add_typer(settlement_app, name="settlement")
app.add_typer(funding_app, name="funding")
app.add_typer(fraud_app, name="fraud")
app.add_typer(apikey_app, name="apikey")
app.add_typer(secrets_app, name="secrets")
app.add_typer(kyc_app, name="kyc")
app.add_typer(card_app, name="card")
app.add_typer(schedules_app, name="schedules")
app.add_typer(histories_app, name="histories")
app.add_typer(bot_app, name="bot")


def main() -> None:
    """Run one command, then leave without interpreter teardown.

    The Temporal SDK's native threads may still call into Python while the
    interpreter finalizes, which aborts a short-lived client process after its
    work is done. Every command has finished and flushed by the time we get
    here, so the process exits directly with the command's code.
    """
    code = 0
    try:
        # Standalone mode reports usage errors itself and ends in SystemExit.
        app()
    except SettingsError as error:
        typer.echo(f"cardflow: {error}", err=True)
        code = 2
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
    except BaseException:  # noqa: BLE001 - report and exit non-zero like Python would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
