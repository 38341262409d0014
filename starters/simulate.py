"""`cardflow simulate ...`: drive the provider simulators as a merchant, the
card network or the chain would, so the processes react as in production
(real-time authorization through the gateway, then signed webhooks).

One client function per action, used by the CLI, the demo and benchmarks.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import httpx
import typer
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from activities.providers.issuer import IssuerClient
from schemas.issuer import Authorization, Merchant, Reversal, Transaction
from schemas.money import AMOUNT_MINOR_MAX, Currency
from schemas.providers import ISSUER
from schemas.units import DAY_SECONDS
from starters import console
from starters.arguments import CustomerIdArgument
from workers.settings import Settings, load_settings

DEFAULT_MERCHANT = Merchant(name="Corner Shop", mcc="5411", country="GB")

simulate_app = typer.Typer(
    help="Drive the simulators: purchases, clearings, refunds, deposits.", no_args_is_help=True
)


def issuer(settings: Settings) -> IssuerClient:
    return IssuerClient(f"{settings.providers_base_url}/{ISSUER}")


def _key(action: str) -> str:
    return f"simulate-{action}-{uuid.uuid4().hex}"


# The simulators' admin API (loopback only) answers within this.
ADMIN_TIMEOUT_SECONDS = 10.0


async def set_issuer_clock_behind(settings: Settings, days: int) -> date:
    """Sandbox: run the simulated issuer's clock `days` behind (0: on time).
    Set before the card activity it stamps, that activity settles on a day
    that has ended, which a reconciliation accepts; returns that day."""
    async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_SECONDS) as http:
        response = await http.put(
            f"{settings.providers_base_url}/_admin/options/{ISSUER}",
            json={"clock_offset_seconds": -days * DAY_SECONDS},
        )
        response.raise_for_status()
    return datetime.now(UTC).date() - timedelta(days=days)


async def authorize(
    settings: Settings,
    card_id: str,
    amount_minor: int,
    currency: Currency = Currency.USD,
    merchant: Merchant = DEFAULT_MERCHANT,
    *,
    partial_approval_capable: bool = False,
    authentication_id: str | None = None,
) -> Authorization:
    """A merchant asks to authorize a purchase (after 3-D Secure, carrying
    its authentication); the issuer asks cardflow in real time."""
    async with issuer(settings) as client:
        return await client.simulate_authorization(
            card_id=card_id,
            amount_minor=amount_minor,
            currency=currency,
            merchant=merchant,
            partial_approval_capable=partial_approval_capable,
            idempotency_key=_key("authorize"),
            authentication_id=authentication_id,
        )


async def increment(settings: Settings, authorization_id: str, amount_minor: int) -> Authorization:
    async with issuer(settings) as client:
        return await client.simulate_increment(
            authorization_id, amount_minor=amount_minor, idempotency_key=_key("increment")
        )


async def clear(
    settings: Settings, authorization_id: str, amount_minor: int | None = None, *, final: bool
) -> Transaction:
    async with issuer(settings) as client:
        return await client.simulate_clearing(
            authorization_id, amount_minor=amount_minor, final=final, idempotency_key=_key("clear")
        )


async def reverse(
    settings: Settings, authorization_id: str, amount_minor: int | None = None
) -> Reversal:
    async with issuer(settings) as client:
        return await client.simulate_reversal(
            authorization_id, amount_minor=amount_minor, idempotency_key=_key("reverse")
        )


async def refund(
    settings: Settings,
    card_id: str,
    amount_minor: int,
    currency: Currency = Currency.USD,
    merchant: Merchant = DEFAULT_MERCHANT,
    *,
    refunded_transaction_id: str | None = None,
) -> Transaction:
    async with issuer(settings) as client:
        return await client.simulate_refund(
            card_id=card_id,
            amount_minor=amount_minor,
            currency=currency,
            merchant=merchant,
            refunded_transaction_id=refunded_transaction_id,
            idempotency_key=_key("refund"),
        )


async def force_post(
    settings: Settings,
    card_id: str,
    amount_minor: int,
    currency: Currency = Currency.USD,
    merchant: Merchant = DEFAULT_MERCHANT,
) -> Transaction:
    async with issuer(settings) as client:
        return await client.simulate_force_post(
            card_id=card_id,
            amount_minor=amount_minor,
            currency=currency,
            merchant=merchant,
            idempotency_key=_key("force-post"),
        )


# ----- the command line -----------------------------------------------------


def _print(coroutine: Any) -> None:
    try:
        result: BaseModel = asyncio.run(coroutine)
    except ApplicationError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(result.model_dump_json(indent=2))


Amount = Annotated[int, typer.Argument(min=1, max=AMOUNT_MINOR_MAX, help="Minor units (cents)")]
CurrencyOption = Annotated[Currency, typer.Option(help="The merchant's currency")]


def _merchant(name: str, mcc: str, country: str) -> Merchant:
    from pydantic import ValidationError

    try:
        return Merchant(name=name, mcc=mcc, country=country)
    except ValidationError as error:
        first = error.errors()[0]
        typer.echo(f"invalid --{first['loc'][0]}: {first['msg']}", err=True)
        raise typer.Exit(2) from None


@simulate_app.command("authorize")
def authorize_command(
    card_id: Annotated[str, typer.Argument()],
    amount_minor: Amount,
    currency: CurrencyOption = Currency.USD,
    merchant: Annotated[str, typer.Option()] = DEFAULT_MERCHANT.name,
    mcc: Annotated[str, typer.Option(help="4-digit merchant category code")] = "5411",
    country: Annotated[str, typer.Option()] = "GB",
    partial: Annotated[bool, typer.Option(help="The merchant takes a partial approval")] = False,
) -> None:
    """A purchase: the issuer asks cardflow in real time; prints the authorization."""
    _print(
        authorize(
            load_settings(),
            card_id,
            amount_minor,
            currency,
            _merchant(merchant, mcc, country),
            partial_approval_capable=partial,
        )
    )


@simulate_app.command("increment")
def increment_command(
    authorization_id: Annotated[str, typer.Argument()], amount_minor: Amount
) -> None:
    """The merchant asks to hold more on a pending authorization."""
    _print(increment(load_settings(), authorization_id, amount_minor))


@simulate_app.command("clear")
def clear_command(
    authorization_id: Annotated[str, typer.Argument()],
    amount_minor: Annotated[
        int | None,
        typer.Option(
            "--amount", min=1, max=AMOUNT_MINOR_MAX, help="Card currency; all held if left out"
        ),
    ] = None,
    final: Annotated[bool, typer.Option(help="Release whatever stays held")] = False,
) -> None:
    """The merchant presents a clearing for an authorization."""
    _print(clear(load_settings(), authorization_id, amount_minor, final=final))


@simulate_app.command("reverse")
def reverse_command(
    authorization_id: Annotated[str, typer.Argument()],
    amount_minor: Annotated[
        int | None,
        typer.Option("--amount", min=1, max=AMOUNT_MINOR_MAX, help="All that is held if left out"),
    ] = None,
) -> None:
    """The merchant gives back all or part of what an authorization holds."""
    _print(reverse(load_settings(), authorization_id, amount_minor))


@simulate_app.command("refund")
def refund_command(
    card_id: Annotated[str, typer.Argument()],
    amount_minor: Amount,
    currency: CurrencyOption = Currency.USD,
    of: Annotated[
        str | None, typer.Option("--of", help="The purchase (transaction id) refunded")
    ] = None,
) -> None:
    """A merchant refund to the card (claws back that purchase's cashback)."""
    _print(refund(load_settings(), card_id, amount_minor, currency, refunded_transaction_id=of))


@simulate_app.command("force-post")
def force_post_command(
    card_id: Annotated[str, typer.Argument()],
    amount_minor: Amount,
    currency: CurrencyOption = Currency.USD,
) -> None:
    """A clearing with no authorization before it."""
    _print(force_post(load_settings(), card_id, amount_minor, currency))


@simulate_app.command("deposit")
def deposit_command(
    customer_id: CustomerIdArgument,
    amount_minor: Annotated[
        int, typer.Argument(min=1, max=AMOUNT_MINOR_MAX, help="Micro-USDT (6 decimals)")
    ],
) -> None:
    """A USDT-TRC20 deposit to the customer's address (then `cardflow topup mine`)."""
    from starters.topup import simulate_deposit

    _print(simulate_deposit(load_settings(), customer_id, amount_minor))


# ----- `cardflow simulators ...`: serve them ----------------------------------

simulators_app = typer.Typer(help="Local stand-ins for the providers.", no_args_is_help=True)


@simulators_app.command("serve")
def simulators_serve() -> None:
    """Serve every provider simulator on CARDFLOW_SIMULATORS_PORT."""
    import uvicorn

    from simulators.server import build
    from starters.gateway.server import listener_config
    from workers.heap import freeze_startup

    settings = console.settings()
    config = listener_config(
        build(settings),
        settings,
        host=settings.bind_host,
        port=settings.simulators_port,
        # The admin API trusts the connection's own peer only, which the
        # listener keeps whatever FORWARDED_ALLOW_IPS says.
        log_level="warning",
    )
    freeze_startup()
    uvicorn.Server(config).run()
