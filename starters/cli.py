"""The `cardflow` command: the dev stack, workers, codec server, migrations, health."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from datetime import date
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from schemas.money import AMOUNT_MINOR_MAX
from starters.apikeys import apikey_app
from starters.arguments import CustomerIdArgument, parse_customer_id
from starters.billing import billing_app, statement_app
from starters.cashback import cashback_app
from starters.chaos import chaos_command
from starters.dispute import dispute_app
from starters.fx import fx_app
from starters.ledger import ledger_app
from starters.reconcile import reconcile_app
from starters.secrets import secrets_app
from starters.simulate import simulate_app
from starters.topup import topup_app
from workers.settings import Settings, SettingsError, load_settings

# sysexits' EX_UNAVAILABLE: a service the command needs cannot be reached.
EXIT_UNAVAILABLE = 69


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
dev_app = typer.Typer(help="The embedded stack on this machine.", no_args_is_help=True)
worker_app = typer.Typer(help="Worker processes.", no_args_is_help=True)
codec_app = typer.Typer(help="The codec server for the Temporal Web UI.", no_args_is_help=True)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
simulators_app = typer.Typer(help="Local stand-ins for the providers.", no_args_is_help=True)
app.add_typer(dev_app, name="dev")
app.add_typer(worker_app, name="worker")
app.add_typer(codec_app, name="codec")
app.add_typer(db_app, name="db")
app.add_typer(ledger_app, name="ledger")
app.add_typer(simulators_app, name="simulators")
app.add_typer(simulate_app, name="simulate")
app.add_typer(topup_app, name="topup")
app.add_typer(fx_app, name="fx")
app.add_typer(cashback_app, name="cashback")
app.add_typer(dispute_app, name="dispute")
app.add_typer(billing_app, name="billing")
app.add_typer(statement_app, name="statement")
app.add_typer(reconcile_app, name="reconcile")
app.add_typer(apikey_app, name="apikey")
app.add_typer(secrets_app, name="secrets")
app.command("chaos")(chaos_command)


def _refuse_input(error: Any) -> NoReturn:
    """Print each field a pydantic ValidationError names, and exit 2."""
    for problem in error.errors():
        typer.echo(f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}", err=True)
    raise typer.Exit(2) from None


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        typer.echo(f"cardflow: {error}", err=True)
        raise typer.Exit(2) from None


def _print_status(parts: list, as_json: bool) -> bool:  # type: ignore[type-arg]
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


@dev_app.command("up")
def dev_up(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Start (or reuse) PostgreSQL, Temporal, the codec server and the workers."""
    from starters.devstack.processes import PortTakenError
    from starters.devstack.stack import Stack, StackError

    settings = _settings()
    try:
        parts = Stack(settings).up()
    except (PortTakenError, StackError) as error:
        typer.echo(f"cardflow dev up: {error}", err=True)
        raise typer.Exit(1) from None
    healthy = _print_status(parts, as_json)
    if not as_json:
        typer.echo(
            f"\nTemporal Web UI: {settings.web_ui_url}" if not settings.temporal_is_external else ""
        )
    raise typer.Exit(0 if healthy else 1)


@dev_app.command("down")
def dev_down() -> None:
    """Stop every part `dev up` started; data stays under CARDFLOW_HOME."""
    from starters.devstack.stack import Stack

    stopped = Stack(_settings()).down()
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@dev_app.command("status")
def dev_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every part with its address, pid and health; workers are proven by Ping."""
    from starters.devstack.stack import Stack

    healthy = _print_status(Stack(_settings()).status(), as_json)
    raise typer.Exit(0 if healthy else 1)


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
    asyncio.run(run_worker(kind, _settings()))


@codec_app.command("serve")
def codec_serve() -> None:
    """Serve /encode and /decode for the Web UI (token required; see README)."""
    from starters.codec_server import serve

    serve(_settings())


@simulators_app.command("serve")
def simulators_serve() -> None:
    """Serve every provider simulator on CARDFLOW_SIMULATORS_PORT."""
    import uvicorn

    from simulators.server import build
    from starters.gateway.server import listener_config

    settings = _settings()
    config = listener_config(
        build(settings),
        settings,
        host=settings.bind_host,
        port=settings.simulators_port,
        # The admin API trusts the connection's own peer only, which the
        # listener keeps whatever FORWARDED_ALLOW_IPS says.
        log_level="warning",
    )
    uvicorn.Server(config).run()


kyc_app = typer.Typer(help="Operator actions on KYC.", no_args_is_help=True)
app.add_typer(kyc_app, name="kyc")


# sysexits' EX_TEMPFAIL: nothing is wrong with the command; try again later.
EXIT_PROCESS_BUSY = 75


def _run(coroutine: Any) -> Any:
    """Run a command's coroutine; a process that does not take an update in
    time is a message and exit code EXIT_PROCESS_BUSY, not a traceback."""
    from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

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


@app.command("onboard")
def onboard_command(
    customer_id: Annotated[str, typer.Option(parser=parse_customer_id, help="Your customer id")],
    first_name: Annotated[str, typer.Option()],
    last_name: Annotated[str, typer.Option()],
    date_of_birth: Annotated[str, typer.Option(help="YYYY-MM-DD")],
    country: Annotated[str, typer.Option(help="ISO 3166-1 alpha-3, e.g. DEU")],
    email: Annotated[str, typer.Option()],
    document: Annotated[
        list[str] | None,
        typer.Option(help="type:country:file, e.g. passport:DEU:passport.jpg (repeatable)"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the outcome")] = False,
) -> None:
    """Start a customer's onboarding (wallets and KYC)."""
    from pydantic import ValidationError

    from schemas.onboarding import DocumentSpec, OnboardingInput
    from starters.onboarding import start_onboarding
    from workers.client import connect

    settings = _settings()
    try:
        documents = [
            DocumentSpec(
                type=d.split(":")[0],  # type: ignore[arg-type]
                country=(d.split(":") + ["", ""])[1] or None,
                file_name=(d.split(":") + ["", "", "document.jpg"])[2],
            )
            for d in (document or [f"passport:{country}:passport.jpg"])
        ]
        request = OnboardingInput.model_validate(
            {
                "profile": {
                    "customer_id": customer_id,
                    "first_name": first_name,
                    "last_name": last_name,
                    "date_of_birth": date_of_birth,
                    "country": country,
                    "email": email,
                },
                "documents": [d.model_dump() for d in documents],
            }
        )
    except ValidationError as error:
        _refuse_input(error)

    async def run() -> None:
        client = await connect(settings)
        handle = await start_onboarding(client, settings.task_queues, request)
        typer.echo(f"started {handle.id}: {_ui_link(settings, handle.id)}")
        if wait:
            typer.echo((await handle.result()).model_dump_json(indent=2))

    _run(run())


@kyc_app.command("review")
def kyc_review_command(
    customer_id: CustomerIdArgument,
    decision: Annotated[str, typer.Option(help="approve or reject")],
    reason: Annotated[str, typer.Option()],
    operator: Annotated[str, typer.Option(help="Who decides")],
) -> None:
    """Decide an onboarding the KYC provider put on hold."""
    from pydantic import ValidationError
    from temporalio.client import WorkflowUpdateFailedError

    from schemas.onboarding import KycReview
    from starters.onboarding import review
    from workers.client import connect

    try:
        decided = KycReview.model_validate(
            {"decision": decision, "reason": reason, "operator": operator}
        )
    except ValidationError as error:
        _refuse_input(error)

    async def run() -> int:
        client = await connect(_settings())
        try:
            typer.echo(await review(client, customer_id, decided))
        except WorkflowUpdateFailedError as error:
            typer.echo(f"refused: {error.cause}", err=True)
            return 1
        return 0

    raise typer.Exit(_run(run()))


@app.command("status")
def status_command(workflow_id: Annotated[str, typer.Argument()]) -> None:
    """A process's state: Temporal's view and the workflow's own status query."""
    from workers.client import connect

    async def run() -> None:
        client = await connect(_settings())
        handle = client.get_workflow_handle(workflow_id)
        description = await handle.describe()
        status = description.status.name if description.status else "UNKNOWN"
        typer.echo(f"{workflow_id} ({description.workflow_type}): {status}")
        try:
            typer.echo(json.dumps(await handle.query("status"), indent=2, default=str))
        except Exception as error:  # noqa: BLE001 - a closed or query-less process
            typer.echo(f"(no status query answer: {error})")

    _run(run())


def _ui_link(settings: Settings, workflow_id: str) -> str:
    from urllib.parse import quote

    return (
        f"{settings.web_ui_url}/namespaces/{settings.temporal_namespace}/workflows/"
        f"{quote(workflow_id, safe='')}"
    )


card_app = typer.Typer(help="Cards: issue and steer.", no_args_is_help=True)
app.add_typer(card_app, name="card")


@card_app.command("issue")
def card_issue_command(
    customer_id: CustomerIdArgument,
    kind: Annotated[str, typer.Option(help="virtual or physical")] = "virtual",
    request_id: Annotated[str | None, typer.Option(help="Your id for this request")] = None,
    line1: Annotated[str, typer.Option(help="Address line")] = "1 Main Street",
    city: Annotated[str, typer.Option()] = "London",
    postal_code: Annotated[str, typer.Option()] = "N1 9GU",
    country: Annotated[str, typer.Option(help="ISO 3166-1 alpha-2")] = "GB",
    wait: Annotated[bool, typer.Option(help="Wait for the outcome")] = False,
) -> None:
    """Issue a card to an approved customer."""
    import uuid

    from pydantic import ValidationError

    from schemas.cards import CardIssueInput
    from starters.cards import issue_card
    from workers.client import connect

    settings = _settings()
    try:
        request = CardIssueInput.model_validate(
            {
                "request_id": request_id or uuid.uuid4().hex[:16],
                "customer_id": customer_id,
                "kind": kind,
                "address": {
                    "line1": line1,
                    "city": city,
                    "postal_code": postal_code,
                    "country": country,
                },
            }
        )
    except ValidationError as error:
        _refuse_input(error)

    async def run() -> None:
        client = await connect(settings)
        handle = await issue_card(client, settings.task_queues, request)
        typer.echo(f"started {handle.id}: {_ui_link(settings, handle.id)}")
        if wait:
            typer.echo((await handle.result()).model_dump_json(indent=2))

    _run(run())


def _send_update(action: Any) -> None:
    """Run `action(client)` (an update on a process), print its answer or refusal."""
    from temporalio.client import WorkflowUpdateFailedError

    from workers.client import connect

    async def run() -> int:
        client = await connect(_settings())
        try:
            typer.echo(await action(client))
        except WorkflowUpdateFailedError as error:
            typer.echo(f"refused: {error.cause}", err=True)
            return 1
        return 0

    raise typer.Exit(_run(run()))


def _card_change(card_id: str, update: str, reason: str) -> None:
    from pydantic import ValidationError

    from schemas.cards import CardStateChange
    from starters.cards import change_card

    try:
        CardStateChange(reason=reason)
    except ValidationError as error:
        _refuse_input(error)

    async def action(client: Any) -> str:
        return f"card {card_id}: {await change_card(client, card_id, update, reason)}"

    _send_update(action)


@card_app.command("freeze")
def card_freeze(card_id: str, reason: str = "customer request") -> None:
    """Pause a card: authorizations are declined until it is unfrozen."""
    _card_change(card_id, "freeze", reason)


@card_app.command("unfreeze")
def card_unfreeze(card_id: str, reason: str = "customer request") -> None:
    """Open a paused card again."""
    _card_change(card_id, "unfreeze", reason)


@card_app.command("close")
def card_close(card_id: str, reason: str = "customer request") -> None:
    """Close a card for good."""
    _card_change(card_id, "close", reason)


@card_app.command("report-lost")
def card_report_lost(card_id: str, reason: str = "reported lost") -> None:
    """Block a lost card and issue its replacement."""
    _card_change(card_id, "report_lost", reason)


@card_app.command("report-stolen")
def card_report_stolen(card_id: str, reason: str = "reported stolen") -> None:
    """Block a stolen card and issue its replacement."""
    _card_change(card_id, "report_stolen", reason)


# A spending limit, as the ledger holds amounts.
LimitOption = typer.Option(min=0, max=AMOUNT_MINOR_MAX, help="minor units")


@card_app.command("limits")
def card_limits(
    card_id: str,
    per_transaction: Annotated[int | None, LimitOption] = None,
    per_day: Annotated[int | None, LimitOption] = None,
    per_month: Annotated[int | None, LimitOption] = None,
    block_mcc: Annotated[list[str] | None, typer.Option(help="MCC to decline (repeatable)")] = None,
) -> None:
    """Set the card's spending limits (replacing the previous ones)."""
    from pydantic import ValidationError
    from temporalio.client import WorkflowUpdateFailedError

    from schemas.cards import SpendingLimits
    from starters.cards import set_limits
    from workers.client import connect

    try:
        limits = SpendingLimits(
            per_transaction_minor=per_transaction,
            per_day_minor=per_day,
            per_month_minor=per_month,
            blocked_mccs=block_mcc or [],
        )
    except ValidationError as error:
        _refuse_input(error)

    async def run() -> int:
        client = await connect(_settings())
        try:
            stored = await set_limits(client, card_id, limits)
        except WorkflowUpdateFailedError as error:
            typer.echo(f"refused: {error.cause}", err=True)
            return 1
        typer.echo(stored.model_dump_json(indent=2))
        return 0

    raise typer.Exit(_run(run()))


@card_app.command("show")
def card_show(card_id: str) -> None:
    """The card's state: limits, open authorizations and holds, exceptions."""
    from starters.cards import card_status
    from workers.client import connect

    async def run() -> None:
        state = await card_status(await connect(_settings()), card_id)
        typer.echo(state.model_dump_json(indent=2, exclude={"seen_events", "recent"}))

    _run(run())


@card_app.command("resolve-exception")
def card_resolve_exception(
    card_id: str,
    exception_id: str,
    action: Annotated[
        str,
        typer.Option(
            help="charge (the wallet), write_off (to suspense), or dismiss"
            " (a ledger_conflict put right by hand)"
        ),
    ],
    reason: Annotated[str, typer.Option()],
) -> None:
    """An operator's decision on money the issuer settled that the card could not post."""
    from pydantic import ValidationError

    from schemas.cards import ExceptionDecision
    from starters.cards import resolve_exception

    try:
        decision = ExceptionDecision(exception_id=exception_id, action=action, reason=reason)  # type: ignore[arg-type]
    except ValidationError as error:
        _refuse_input(error)
    _send_update(lambda client: resolve_exception(client, card_id, decision))


@card_app.command("reschedule")
def card_reschedule(
    request_id: str, delivery_date: Annotated[date, typer.Argument(help="YYYY-MM-DD")]
) -> None:
    """Move a physical card's delivery (YYYY-MM-DD), until it ships."""
    from pydantic import ValidationError

    from schemas.cards import RescheduleDelivery
    from starters.cards import reschedule

    try:
        change = RescheduleDelivery(delivery_date=delivery_date)
    except ValidationError as error:
        _refuse_input(error)
    _send_update(lambda client: reschedule(client, request_id, change))


@card_app.command("activate")
def card_activate(request_id: str) -> None:
    """Activate a delivered physical card (a lost or stolen card's replacement: by its card id)."""
    from starters.cards import activate

    _send_update(lambda client: activate(client, request_id))


schedules_app = typer.Typer(help="cardflow's Temporal Schedules.", no_args_is_help=True)
app.add_typer(schedules_app, name="schedules")


@schedules_app.command("ensure")
def schedules_ensure() -> None:
    """Create every missing schedule (an existing one is left as it is)."""
    from starters.schedules import ensure_schedules
    from workers.client import connect

    async def run() -> dict[str, str]:
        settings = _settings()
        return await ensure_schedules(await connect(settings), settings)

    for schedule_id, outcome in _run(run()).items():
        typer.echo(f"{schedule_id}: {outcome}")


histories_app = typer.Typer(help="Recorded workflow histories.", no_args_is_help=True)
app.add_typer(histories_app, name="histories")


@histories_app.command("record")
def histories_record(
    out: Annotated[str, typer.Option(help="Directory of the histories")] = "tests/histories",
    only: Annotated[list[str] | None, typer.Option(help="Scenario name (repeatable)")] = None,
) -> None:
    """Run the scenarios on a throwaway stack and write their histories."""
    from pathlib import Path

    from starters.histories import record

    for path in record(Path(out), only):
        typer.echo(f"wrote {path}")


@app.command("gateway")
def gateway_serve() -> None:
    """Serve the webhook and HTTP API gateway on CARDFLOW_GATEWAY_PORT."""
    import uvicorn

    from starters.gateway.app import create_app
    from starters.gateway.server import gateway_config
    from workers.telemetry import configure_logging, start_telemetry

    settings = _settings()
    telemetry = start_telemetry(settings, "gateway")
    configure_logging(settings, telemetry.service_name)
    try:
        uvicorn.Server(gateway_config(create_app(settings, telemetry=telemetry), settings)).run()
    finally:
        telemetry.shutdown()


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending SQL migrations to DATABASE_URL (or the embedded database)."""
    from activities.migrate import migrate

    applied = asyncio.run(migrate(_settings().effective_database_url))
    typer.echo("applied: " + (", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none"))


@app.command("ping")
def ping_command() -> None:
    """Run the Ping workflow and print what each task queue answered."""
    from starters.health import WorkflowWorkerSilent, ping
    from workers.client import connect

    settings = _settings()

    async def run() -> int:
        client = await connect(settings)
        try:
            result = await ping(client, settings.task_queues, requested_by="cardflow ping")
        except WorkflowWorkerSilent as error:
            typer.echo(str(error), err=True)
            return 1
        typer.echo(result.model_dump_json(indent=2))
        return 0 if result.healthy else 1

    raise typer.Exit(asyncio.run(run()))


@app.command("demo")
def demo() -> None:
    """Bring the stack up, prove every worker answers, and say where the Web UI is."""
    from starters.devstack.processes import PortTakenError
    from starters.devstack.stack import Stack, StackError

    settings = _settings()
    typer.echo(
        "Starting the cardflow stack (PostgreSQL, Temporal, codec, simulators, gateway, workers)..."
    )
    try:
        parts = Stack(settings).up()
    except (PortTakenError, StackError) as error:
        typer.echo(f"cardflow demo: {error}", err=True)
        raise typer.Exit(1) from None
    healthy = _print_status(parts, as_json=False)
    if not healthy:
        typer.echo(
            "\nThe stack is not healthy; logs are in " + str(settings.home_path / "logs"), err=True
        )
        raise typer.Exit(1)
    typer.echo("\nEvery task queue answered the Ping health check.\n")
    from starters.scenarios import demo as walk_through
    from workers.client import connect

    def say(line: str, workflow_id: str | None) -> None:
        typer.echo(
            f"- {line}" + (f"\n    {_ui_link(settings, workflow_id)}" if workflow_id else "")
        )

    async def run() -> None:
        await walk_through(await connect(settings), settings, say)

    _run(run())
    typer.echo(
        f"\nTemporal Web UI: {settings.web_ui_url} (payloads decoded by {settings.codec_url})"
        f"\nStop the stack with: .venv/bin/cardflow dev down"
    )


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
