"""Top-ups: start one from a bank transfer or deposit record, review it, read
its status, and drive the bank and chain sandboxes (one client function per
action, shared by the CLI, the gateway, scenarios, tests and the benchmark),
plus `cardflow topup`.

A top-up starts with signal-with-start, exactly as the gateway starts it from
a provider's webhook: a record delivered to a running top-up is one more
snapshot, and one delivered after it finished starts nothing (REJECT_DUPLICATE),
so however the starts and webhooks race, one external reference credits once.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Annotated, Any

import typer
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.providers.bank import BankClient
from activities.providers.tron import TronClient
from schemas.bank import InboundTransfer
from schemas.money import Currency
from schemas.providers import BANK, TRON
from schemas.search import AMOUNT_MINOR, CURRENCY, PROCESS_STATUS, PROVIDER
from schemas.task_queues import TaskQueues
from schemas.topup import (
    SOURCE_PROVIDER,
    TOPUP_SOURCES,
    TopupInput,
    TopupPolicy,
    TopupResult,
    TopupReview,
    TopupSource,
    TopupStatus,
)
from schemas.tron import ChainHead, Deposit, DepositAddress
from starters import console
from starters.arguments import CustomerIdArgument, parse_customer_id
from starters.updates import UPDATE_RPC_TIMEOUT, execute_update
from workers.settings import Settings
from workflows.topup import (
    BANK_TRANSFER_SIGNAL,
    DEPOSIT_SIGNAL,
    TOPUP_WORKFLOW,
    Topup,
    topup_start_metadata,
    topup_workflow_id,
)
from workflows.topup_steps import STATUS_PROCESSING

# The sandbox's paying side of simulated deposits: a well-formed Tron address
# that custody did not make (so it is nobody's deposit address).
SANDBOX_SENDER_ADDRESS = "TTxaiGudVhUKHmM1qk14JzqZvkJFzHRrZy"
SANDBOX_SENDER_NAME = "cardflow sandbox payer"


def with_queues(request: TopupInput, queues: TaskQueues) -> TopupInput:
    return request.model_copy(
        update={
            "ledger_task_queue": queues.ledger,
            "providers_task_queue": queues.providers,
            "workflows_task_queue": queues.workflows,
        }
    )


async def _signal_with_start(
    client: Client,
    queues: TaskQueues,
    request: TopupInput,
    signal: str,
    record: Any,
    searchable: list[SearchAttributePair[Any]],
) -> WorkflowHandle[Any, TopupResult]:
    workflow_id = topup_workflow_id(request.source, request.external_ref)
    metadata = topup_start_metadata(request)
    try:
        return await client.start_workflow(
            TOPUP_WORKFLOW,
            with_queues(request, queues),
            id=workflow_id,
            task_queue=queues.workflows,
            result_type=TopupResult,
            start_signal=signal,
            start_signal_args=[record],
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            # What is known already is searchable from the start (the
            # workflow upserts only what changes).
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(PROVIDER, SOURCE_PROVIDER[request.source]), *searchable]
            ),
            static_summary=metadata.summary,
            static_details=metadata.details,
        )
    except WorkflowAlreadyStartedError:
        # It ran to its end already: the record starts nothing new.
        return client.get_workflow_handle(workflow_id, result_type=TopupResult)


async def start_bank_topup(
    client: Client,
    queues: TaskQueues,
    transfer: InboundTransfer,
    *,
    policy: TopupPolicy | None = None,
) -> WorkflowHandle[Any, TopupResult]:
    """Start (or reach) topup/bank/{transfer id} from the bank's transfer record."""
    request = TopupInput(source="bank", external_ref=transfer.id, policy=policy or TopupPolicy())
    searchable: list[SearchAttributePair[Any]] = [
        SearchAttributePair(AMOUNT_MINOR, transfer.amount_minor),
        SearchAttributePair(CURRENCY, transfer.currency.value),
        SearchAttributePair(PROCESS_STATUS, STATUS_PROCESSING),
    ]
    return await _signal_with_start(
        client, queues, request, BANK_TRANSFER_SIGNAL, transfer, searchable
    )


async def start_usdt_topup(
    client: Client,
    queues: TaskQueues,
    deposit: Deposit,
    *,
    policy: TopupPolicy | None = None,
    wallet_currency: Currency = Currency.USD,
) -> WorkflowHandle[Any, TopupResult]:
    """Start (or reach) topup/usdt/{tx_hash} with a snapshot of the deposit."""
    request = TopupInput(
        source="usdt",
        external_ref=deposit.tx_hash,
        wallet_currency=wallet_currency,
        policy=policy or TopupPolicy(),
    )
    searchable: list[SearchAttributePair[Any]] = [
        SearchAttributePair(AMOUNT_MINOR, deposit.amount_minor),
        SearchAttributePair(CURRENCY, deposit.currency.value),
    ]
    return await _signal_with_start(client, queues, request, DEPOSIT_SIGNAL, deposit, searchable)


def parse_topup_id(text: str) -> tuple[TopupSource, str]:
    """`topup/bank/ibt_000001` or `bank/ibt_000001` -> ("bank", "ibt_000001")."""
    source, _, external_ref = text.removeprefix("topup/").partition("/")
    if source not in TOPUP_SOURCES or not external_ref:
        raise ValueError(
            f"{text!r} is not a top-up id: expected topup/{{bank|usdt}}/{{external_ref}}"
        )
    return source, external_ref


async def review(
    client: Client,
    source: TopupSource,
    external_ref: str,
    decision: TopupReview,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """The operator's decision; the same `update_id` again answers the first one's result."""
    handle = client.get_workflow_handle(topup_workflow_id(source, external_ref))
    return await execute_update(
        handle,
        Topup.review,
        decision,
        id=update_id,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )


async def status(client: Client, source: TopupSource, external_ref: str) -> TopupStatus:
    handle = client.get_workflow_handle(topup_workflow_id(source, external_ref))
    return await handle.query(Topup.status)


# ----- the gateway's routes: a provider event -> its top-up ----------------


def _source_of(provider: str) -> TopupSource:
    sources: dict[str, TopupSource] = {BANK: "bank", TRON: "usdt"}
    return sources[provider]


def external_ref_of(provider: str, data: dict[str, Any]) -> str:
    return str(data.get("tx_hash" if provider == TRON else "id", ""))


def topup_workflow_id_of(provider: str, data: dict[str, Any]) -> str:
    return topup_workflow_id(_source_of(provider), external_ref_of(provider, data))


def topup_input_of(provider: str, data: dict[str, Any], queues: TaskQueues) -> TopupInput:
    """What a webhook starts: the default policy, this deployment's queues."""
    request = TopupInput(source=_source_of(provider), external_ref=external_ref_of(provider, data))
    return with_queues(request, queues)


# ----- the sandboxes: make money arrive, move the chain --------------------


async def simulate_bank_transfer(
    settings: Settings, customer_id: str, amount_minor: int, currency: Currency
) -> InboundTransfer:
    """Sandbox: a transfer with the customer's id as its reference arrives at the bank."""
    async with BankClient(f"{settings.providers_base_url}/{BANK}") as bank:
        return await bank.simulate_inbound_transfer(
            reference=customer_id,
            amount_minor=amount_minor,
            currency=currency,
            sender_name=SANDBOX_SENDER_NAME,
            idempotency_key=f"sandbox-transfer-{uuid.uuid4()}",
        )


async def get_bank_transfer(settings: Settings, transfer_id: str) -> InboundTransfer:
    async with BankClient(f"{settings.providers_base_url}/{BANK}") as bank:
        return await bank.get_inbound_transfer(transfer_id)


async def deposit_address(settings: Settings, customer_id: str) -> DepositAddress:
    """The customer's USDT-TRC20 deposit address (the same one every time)."""
    async with TronClient(f"{settings.providers_base_url}/{TRON}") as tron:
        return await tron.customer_address(customer_id)


async def simulate_deposit(settings: Settings, customer_id: str, amount_minor: int) -> Deposit:
    """Sandbox: `amount_minor` micro-USDT land at the customer's deposit address."""
    address = await deposit_address(settings, customer_id)
    async with TronClient(f"{settings.providers_base_url}/{TRON}") as tron:
        return await tron.simulate_deposit(
            address=address.address,
            amount_minor=amount_minor,
            from_address=SANDBOX_SENDER_ADDRESS,
            idempotency_key=f"sandbox-deposit-{uuid.uuid4()}",
        )


async def mine_blocks(settings: Settings, count: int) -> ChainHead:
    """Sandbox: mine `count` blocks; deposits gain confirmations."""
    async with TronClient(f"{settings.providers_base_url}/{TRON}") as tron:
        return await tron.mine_blocks(count, idempotency_key=f"sandbox-mine-{uuid.uuid4()}")


async def reorg(settings: Settings, tx_hash: str) -> Deposit:
    """Sandbox: a chain reorganization drops a deposit that is not final yet."""
    async with TronClient(f"{settings.providers_base_url}/{TRON}") as tron:
        return await tron.simulate_reorg(tx_hash, idempotency_key=f"sandbox-reorg-{uuid.uuid4()}")


# ----- `cardflow topup` ---------------------------------------------------

topup_app = typer.Typer(
    help="Top-ups by bank transfer and USDT-TRC20: sandbox drivers, status, review.",
    no_args_is_help=True,
)


def _provider_call(coroutine: Any) -> Any:
    """Run a sandbox call; a refused one prints the provider's answer and exits 1."""
    from temporalio.exceptions import ApplicationError

    try:
        return asyncio.run(coroutine)
    except ApplicationError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(1) from None


def _workflow_link(settings: Settings, workflow_id: str) -> str:
    return f"{workflow_id}: {console.ui_link(settings, workflow_id)}"


@topup_app.command("bank")
def bank_command(
    customer_id: Annotated[
        str, typer.Argument(parser=parse_customer_id, help="The customer, used as the reference")
    ],
    amount_minor: Annotated[str, typer.Argument(help="Amount in minor units, e.g. 10000")],
    currency: Annotated[str, typer.Option(help="USD, EUR, GBP or JPY")] = "USD",
) -> None:
    """Sandbox: a bank transfer arrives; its webhook starts the top-up."""
    from pydantic import ValidationError

    from schemas.topup import BankTopupRequest

    try:
        request = BankTopupRequest.model_validate(
            {
                "customer_id": customer_id,
                "amount_minor": _integer(amount_minor),
                "currency": currency,
            }
        )
    except ValidationError as error:
        console.refuse_input(error)
    settings = console.settings()
    transfer = _provider_call(
        simulate_bank_transfer(
            settings, request.customer_id, request.amount_minor, request.currency
        )
    )
    typer.echo(f"bank transfer {transfer.id} received ({transfer.reference})")
    typer.echo("top-up " + _workflow_link(settings, topup_workflow_id("bank", transfer.id)))


@topup_app.command("start")
def start_command(
    transfer_id: Annotated[str, typer.Argument(help="The bank's inbound transfer id")],
) -> None:
    """Start (or reach) the top-up of a bank transfer from the bank's record."""
    from workers.client import connect

    settings = console.settings()
    transfer = _provider_call(get_bank_transfer(settings, transfer_id))

    async def run() -> str:
        client = await connect(settings)
        handle = await start_bank_topup(client, settings.task_queues, transfer)
        return handle.id

    typer.echo("top-up " + _workflow_link(settings, asyncio.run(run())))


@topup_app.command("address")
def address_command(customer_id: CustomerIdArgument) -> None:
    """The customer's USDT-TRC20 deposit address."""

    address = _provider_call(deposit_address(console.settings(), customer_id))
    typer.echo(address.address)


@topup_app.command("deposit")
def deposit_command(
    customer_id: CustomerIdArgument,
    amount_minor: Annotated[str, typer.Argument(help="Micro-USDT, e.g. 25000000 for 25 USDT")],
) -> None:
    """Sandbox: USDT lands at the customer's address; its webhooks start the top-up."""
    from pydantic import ValidationError

    from schemas.topup import DepositRequest

    try:
        request = DepositRequest.model_validate(
            {"customer_id": customer_id, "amount_minor": _integer(amount_minor)}
        )
    except ValidationError as error:
        console.refuse_input(error)
    settings = console.settings()
    deposit = _provider_call(simulate_deposit(settings, request.customer_id, request.amount_minor))
    typer.echo(f"deposit {deposit.tx_hash} detected at {deposit.address}")
    typer.echo("top-up " + _workflow_link(settings, topup_workflow_id("usdt", deposit.tx_hash)))


@topup_app.command("mine")
def mine_command(
    count: Annotated[int, typer.Argument(min=1, max=1_000, help="Blocks to mine")],
) -> None:
    """Sandbox: mine blocks; deposits gain confirmations and finalize."""

    head = _provider_call(mine_blocks(console.settings(), count))
    typer.echo(f"mined {head.blocks_mined}; head block {head.head_block_number}")


@topup_app.command("reorg")
def reorg_command(tx_hash: Annotated[str, typer.Argument()]) -> None:
    """Sandbox: a reorg drops a deposit before finality."""

    deposit = _provider_call(reorg(console.settings(), tx_hash))
    typer.echo(f"deposit {deposit.tx_hash}: {deposit.status}")


@topup_app.command("status")
def status_command(
    topup_id: Annotated[str, typer.Argument(help="topup/{bank|usdt}/{ref} or {bank|usdt}/{ref}")],
) -> None:
    """A top-up's status: stage, amounts, confirmations, pending review."""
    from workers.client import connect

    source, external_ref = _parsed(topup_id)

    async def run() -> TopupStatus:
        return await status(await connect(console.settings()), source, external_ref)

    typer.echo(asyncio.run(run()).model_dump_json(indent=2))


@topup_app.command("review")
def review_command(
    topup_id: Annotated[str, typer.Argument(help="topup/{bank|usdt}/{ref} or {bank|usdt}/{ref}")],
    approve: Annotated[bool, typer.Option("--approve/--reject", help="The decision")],
    reason: Annotated[str, typer.Option(help="Why")],
    operator: Annotated[str, typer.Option(help="Who decides")],
    customer: Annotated[
        str | None,
        typer.Option(
            parser=parse_customer_id, help="Approving an unmatched payment: the customer it is for"
        ),
    ] = None,
) -> None:
    """Decide a top-up in operator review (unmatched payment or over a limit)."""
    from pydantic import ValidationError

    source, external_ref = _parsed(topup_id)
    try:
        decided = TopupReview.model_validate(
            {
                "decision": "approve" if approve else "reject",
                "reason": reason,
                "operator": operator,
                "customer_id": customer,
            }
        )
    except ValidationError as error:
        console.refuse_input(error)
    console.send_update(lambda client: review(client, source, external_ref, decided))


def _parsed(topup_id: str) -> tuple[TopupSource, str]:
    try:
        return parse_topup_id(topup_id)
    except ValueError as error:
        typer.echo(f"topup_id: {error}", err=True)
        raise typer.Exit(2) from None


def _integer(text: str) -> int | str:
    """An integer as typed; anything else is passed on for the model to refuse by name."""
    try:
        return int(text, 10)
    except ValueError:
        return text
