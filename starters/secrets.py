"""`cardflow secrets ...`: development secrets of the embedded stack.

Production secrets live in their secret store and reach cardflow through
settings (`NAME` or `NAME_FILE`); these commands only touch the dev files
under `CARDFLOW_HOME/secrets/`, and never print a secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from starters import console
from workers import certificates
from workers.secrets import (
    WEBHOOK_OVERLAP_HOURS_DEFAULT,
    WEBHOOK_OVERLAP_HOURS_MAX,
    dev_secrets_dir,
    ensure_dev_secrets,
    rotate_dev_webhook_secret,
)

secrets_app = typer.Typer(help="Development secrets under CARDFLOW_HOME.", no_args_is_help=True)


@secrets_app.command("ensure")
def ensure() -> None:
    """Make the dev secrets the settings do not give (once; existing ones are kept)."""
    settings = console.settings()
    ensure_dev_secrets(settings)
    typer.echo(f"dev secrets in {dev_secrets_dir(settings)} (owner-only)")


@secrets_app.command("rotate-webhook")
def rotate_webhook(
    provider: Annotated[str, typer.Argument(help="issuer, kyc, fx, tron, bank or notify")],
    overlap_hours: Annotated[
        int,
        typer.Option(
            min=0,
            max=WEBHOOK_OVERLAP_HOURS_MAX,
            help="How long the current secret keeps verifying after the new one signs.",
        ),
    ] = WEBHOOK_OVERLAP_HOURS_DEFAULT,
) -> None:
    """Give a provider a new dev webhook secret; the current one verifies for the overlap."""
    settings = console.settings()
    try:
        until = rotate_dev_webhook_secret(settings, provider, overlap_hours)
    except ValueError as error:
        typer.echo(f"cardflow secrets rotate-webhook: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"{provider}: a new secret signs once the simulators and the gateway restart "
        f"(cardflow dev down && cardflow dev up); the previous one verifies until "
        f"{until.isoformat()}"
    )


@secrets_app.command("temporal-certs")
def temporal_certs(
    directory: Annotated[Path, typer.Argument(help="Where to write them, e.g. ./certs")],
    force: Annotated[
        bool, typer.Option(help="Replace them all, the authority too (clients need the new ones).")
    ] = False,
) -> None:
    """Certificates for Temporal's frontend with mTLS (temporal-compose.yml mounts them).

    A private authority, the server's certificate (for the name `temporal`)
    and the client certificates of cardflow, the Web UI and operators; existing
    ones are kept. Only private keys of a private authority: for production,
    bring your PKI's files under the same names.
    """
    issued = certificates.generate(directory, force=force)
    typer.echo(
        f"{directory}: ca.pem and {', '.join(f'{i.name}.pem/.key' for i in issued)} "
        f"(directory {certificates.DIRECTORY_MODE:o}; the authority's key stays here)"
    )
