"""Starting and steering onboardings: one function per action, shared by the
CLI (`cardflow onboard`, `cardflow kyc ...` below), the gateway and the demo."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from schemas.customers import TierChange
from schemas.onboarding import (
    DocumentSpec,
    KycReview,
    OnboardingInput,
    OnboardingResult,
    OnboardingStatus,
    Resubmission,
)
from schemas.search import CUSTOMER_ID
from schemas.task_queues import TaskQueues
from starters import console
from starters.arguments import CustomerIdArgument, parse_customer_id
from starters.updates import UPDATE_RPC_TIMEOUT, execute_update
from workflows.onboarding import (
    ONBOARDING_WORKFLOW,
    Onboarding,
    onboarding_start_metadata,
    onboarding_workflow_id,
)


def with_queues(request: OnboardingInput, queues: TaskQueues) -> OnboardingInput:
    return request.model_copy(
        update={"ledger_task_queue": queues.ledger, "providers_task_queue": queues.providers}
    )


async def start_onboarding(
    client: Client, queues: TaskQueues, request: OnboardingInput
) -> WorkflowHandle[Any, OnboardingResult]:
    """Start onboarding/{customer_id}; one onboarding per customer."""
    customer_id = request.profile.customer_id
    metadata = onboarding_start_metadata(request)
    return await client.start_workflow(
        ONBOARDING_WORKFLOW,
        with_queues(request, queues),
        id=onboarding_workflow_id(customer_id),
        task_queue=queues.workflows,
        result_type=OnboardingResult,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes([SearchAttributePair(CUSTOMER_ID, customer_id)]),
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


async def review(
    client: Client,
    customer_id: str,
    decision: KycReview,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """The operator's decision; the same `update_id` again answers the first one's result."""
    handle = client.get_workflow_handle(onboarding_workflow_id(customer_id))
    return await execute_update(
        handle,
        Onboarding.review,
        decision,
        id=update_id,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )


async def resubmit(client: Client, customer_id: str, documents: Resubmission) -> None:
    handle = client.get_workflow_handle(onboarding_workflow_id(customer_id))
    await handle.signal(Onboarding.resubmit_documents, documents)


async def status(client: Client, customer_id: str) -> OnboardingStatus:
    handle = client.get_workflow_handle(onboarding_workflow_id(customer_id))
    return await handle.query(Onboarding.status)


# ----- `cardflow onboard` and `cardflow kyc ...` ----------------------------

kyc_app = typer.Typer(help="Operator actions on KYC.", no_args_is_help=True)


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
    from workers.client import connect

    settings = console.settings()
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
        console.refuse_input(error)

    async def run() -> None:
        client = await connect(settings)
        handle = await start_onboarding(client, settings.task_queues, request)
        typer.echo(f"started {handle.id}: {console.ui_link(settings, handle.id)}")
        if wait:
            typer.echo((await handle.result()).model_dump_json(indent=2))

    console.run(run())


@kyc_app.command("review")
def kyc_review_command(
    customer_id: CustomerIdArgument,
    decision: Annotated[str, typer.Option(help="approve or reject")],
    reason: Annotated[str, typer.Option()],
    operator: Annotated[str, typer.Option(help="Who decides")],
) -> None:
    """Decide an onboarding the KYC provider put on hold."""
    try:
        decided = KycReview.model_validate(
            {"decision": decision, "reason": reason, "operator": operator}
        )
    except ValidationError as error:
        console.refuse_input(error)
    console.send_update(lambda client: review(client, customer_id, decided))


@kyc_app.command("tier")
def kyc_tier_command(
    customer_id: CustomerIdArgument,
    tier: Annotated[str, typer.Argument(help="basic, standard or enhanced")],
    reason: Annotated[str, typer.Option(help="Why (recorded with the change)")],
    operator: Annotated[str, typer.Option(help="Who decides (recorded with the change)")],
) -> None:
    """Move a customer to another KYC tier: its limits apply to their next
    top-up, withdrawal and card decision."""
    import asyncpg

    from activities.customers import CustomerNotFound, CustomerStore

    try:
        change = TierChange.model_validate({"tier": tier, "reason": reason})
    except ValidationError as error:
        console.refuse_input(error)

    async def run() -> int:
        pool = await asyncpg.create_pool(
            console.settings().effective_database_url, min_size=1, max_size=1
        )
        try:
            previous = await CustomerStore(pool).set_tier(
                customer_id, change, changed_by=f"operator:{operator}"
            )
        except CustomerNotFound as error:
            typer.echo(str(error), err=True)
            return 1
        finally:
            await pool.close()
        moved = "unchanged" if previous is change.tier else f"was {previous.value}"
        typer.echo(f"{customer_id}: {change.tier.value} ({moved})")
        return 0

    raise typer.Exit(console.run(run()))
