"""Cashback: start the process and send it refunds (one client function per
action, shared by the CLI, scenarios and tests), and `cardflow cashback`:
campaigns as data and customer segments, for operators."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import typer
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from activities.cashback import CampaignConflict, CashbackStore, CustomerNotFound
from activities.database import create_pool
from schemas.cashback import (
    CampaignFile,
    CampaignLoad,
    CashbackInput,
    CashbackRefund,
    CashbackResult,
    CashbackStatus,
    SegmentAssignment,
)
from schemas.money import AMOUNT_MINOR_MAX
from schemas.search import AMOUNT_MINOR, CARD_ID, CURRENCY, CUSTOMER_ID
from schemas.task_queues import TaskQueues
from starters import console
from starters.arguments import CustomerIdArgument
from workflows.cashback import CASHBACK_WORKFLOW, Cashback, cashback_workflow_id

SAMPLE_CAMPAIGNS_FILE = Path(__file__).parent / "data" / "cashback-campaigns.json"
# A campaigns file larger than this is not a campaigns file.
CAMPAIGN_FILE_BYTES_MAX = 1_000_000


async def start_cashback(
    client: Client, queues: TaskQueues, request: CashbackInput
) -> WorkflowHandle[Any, CashbackResult]:
    """Start cashback/{transaction_id}. One process per purchase, ever: a second
    start is refused (the card process starts it as a child with the same policy)."""
    request = request.model_copy(
        update={
            "ledger_task_queue": queues.ledger,
            "providers_task_queue": queues.providers,
            "workflows_task_queue": queues.workflows,
        }
    )
    return await client.start_workflow(
        CASHBACK_WORKFLOW,
        request,
        id=cashback_workflow_id(request.transaction_id),
        task_queue=queues.workflows,
        result_type=CashbackResult,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(CUSTOMER_ID, request.customer_id),
                SearchAttributePair(CARD_ID, request.card_id),
                SearchAttributePair(AMOUNT_MINOR, request.amount_minor),
                SearchAttributePair(CURRENCY, request.currency.value),
            ]
        ),
        static_summary=f"Cashback on purchase {request.transaction_id}",
    )


async def refund(client: Client, transaction_id: str, refunded: CashbackRefund) -> None:
    """Tell the purchase's cashback process about a refund (repeats are ignored)."""
    handle = client.get_workflow_handle(cashback_workflow_id(transaction_id))
    await handle.signal(Cashback.refund, refunded)


async def status(client: Client, transaction_id: str) -> CashbackStatus:
    handle = client.get_workflow_handle(cashback_workflow_id(transaction_id))
    return await handle.query(Cashback.status)


def read_campaign_file(path: Path) -> CampaignFile:
    """The campaigns of a file, validated (pydantic's ValidationError names the field)."""
    if path.stat().st_size > CAMPAIGN_FILE_BYTES_MAX:
        raise ValueError(f"{path} is larger than {CAMPAIGN_FILE_BYTES_MAX} bytes")
    return CampaignFile.model_validate_json(path.read_bytes())


async def load_campaigns(pool: asyncpg.Pool, campaigns: CampaignFile) -> CampaignLoad:
    return await CashbackStore(pool).load_campaigns(campaigns.campaigns)


# ----- `cardflow cashback` ------------------------------------------------------

cashback_app = typer.Typer(help="Cashback: campaigns, segments, refunds.", no_args_is_help=True)
campaigns_app = typer.Typer(help="Campaigns as data.", no_args_is_help=True)
cashback_app.add_typer(campaigns_app, name="campaigns")


async def _with_store(action: Any) -> Any:

    pool = await create_pool(console.settings().effective_database_url, size_max=2)
    try:
        return await action(CashbackStore(pool))
    finally:
        await pool.close()


@campaigns_app.command("load")
def campaigns_load(
    file: Annotated[Path, typer.Argument(help='A JSON file: {"campaigns": [...]}')],
) -> None:
    """Validate a campaigns file and store its versions; loading it again changes nothing."""
    from pydantic import ValidationError

    try:
        document = read_campaign_file(file)
    except ValidationError as error:
        console.refuse_input(error)
    except (OSError, ValueError) as error:
        typer.echo(f"cannot read {file}: {error}", err=True)
        raise typer.Exit(2) from None

    async def run() -> int:
        try:
            done: CampaignLoad = await _with_store(
                lambda store: store.load_campaigns(document.campaigns)
            )
        except CampaignConflict as error:
            typer.echo(f"refused: {error}", err=True)
            return 1
        typer.echo(f"loaded: {', '.join(done.loaded) or 'none'}")
        typer.echo(f"unchanged: {', '.join(done.unchanged) or 'none'}")
        return 0

    raise typer.Exit(asyncio.run(run()))


@campaigns_app.command("list")
def campaigns_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON documents.")] = False,
) -> None:
    """Every stored campaign version; the latest version of each is the one in force."""

    async def run() -> int:
        stored = await _with_store(lambda store: store.list_campaigns())
        if as_json:
            typer.echo(json.dumps([s.model_dump(mode="json") for s in stored], indent=2))
            return 0
        for entry in stored:
            campaign = entry.campaign
            window = f"{campaign.valid_from.isoformat()} .. " + (
                campaign.valid_to.isoformat() if campaign.valid_to else "open"
            )
            mark = "*" if entry.latest else " "
            typer.echo(
                f"{mark} {campaign.id} v{campaign.version}  {campaign.reward.basis_points} bp"
                f"{' stackable' if campaign.reward.stackable else ''}  {window}  {campaign.name}"
            )
        typer.echo(f"{len(stored)} version(s); * marks the version in force")
        return 0

    raise typer.Exit(asyncio.run(run()))


@cashback_app.command("segment")
def segment_command(
    customer_id: CustomerIdArgument,
    segment: Annotated[str, typer.Argument(help="e.g. standard, premium")],
) -> None:
    """Put a customer in a segment (customers without one are 'standard')."""
    from pydantic import ValidationError

    try:
        assignment = SegmentAssignment(customer_id=customer_id, segment=segment)
    except ValidationError as error:
        console.refuse_input(error)

    async def run() -> int:
        try:
            await _with_store(
                lambda store: store.set_segment(assignment.customer_id, assignment.segment)
            )
        except CustomerNotFound as error:
            typer.echo(f"refused: {error}", err=True)
            return 1
        typer.echo(f"customer {assignment.customer_id}: segment {assignment.segment}")
        return 0

    raise typer.Exit(asyncio.run(run()))


@cashback_app.command("refund")
def refund_command(
    transaction_id: Annotated[str, typer.Argument(help="The purchase refunded")],
    refund_id: Annotated[str, typer.Argument(help="The refund's own id")],
    amount_minor: Annotated[
        int, typer.Argument(min=1, max=AMOUNT_MINOR_MAX, help="Refunded amount, minor units")
    ],
) -> None:
    """Send a purchase's cashback process a merchant refund (claws the reward back)."""
    from pydantic import ValidationError

    from workers.client import connect

    try:
        refunded = CashbackRefund(refund_id=refund_id, amount_minor=amount_minor)
    except ValidationError as error:
        console.refuse_input(error)

    async def run() -> None:
        client = await connect(console.settings())
        await refund(client, transaction_id, refunded)
        typer.echo(f"refund {refunded.refund_id} sent to {cashback_workflow_id(transaction_id)}")

    asyncio.run(run())
