"""Webhook endpoints and their delivery processes: the one way the gateway,
the scenarios and operators register and remove an endpoint
(workflows/event_delivery.py, activities/events.py)."""

from __future__ import annotations

import asyncpg
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from activities.events import (
    CUSTOMER_NOTIFIED_TYPES,
    CUSTOMERS_ENDPOINT_ID,
    CUSTOMERS_SINK_URL,
    create_endpoint,
    new_secret,
    sequence,
)
from schemas.events import DeliveryPolicy, EventDeliveryInput
from schemas.task_queues import TaskQueues
from workers.settings import Settings
from workflows.event_delivery import (
    EventDelivery,
    event_delivery_start_metadata,
    event_delivery_workflow_id,
)


def delivery_policy(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        idle_poll_seconds=settings.events_poll_seconds,
        retry_initial_seconds=settings.events_retry_initial_seconds,
        retry_max_interval_seconds=settings.events_retry_max_interval_seconds,
        give_up_after_seconds=settings.events_give_up_after_seconds,
    )


async def start_delivery(client: Client, queues: TaskQueues, request: EventDeliveryInput) -> None:
    """Start the endpoint's delivery process; one already running is kept."""
    metadata = event_delivery_start_metadata(request)
    await client.start_workflow(
        EventDelivery.run,
        request,
        id=event_delivery_workflow_id(request.endpoint_id),
        task_queue=queues.workflows,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


async def register_endpoint(
    pool: asyncpg.Pool,
    client: Client,
    queues: TaskQueues,
    url: str,
    event_types: list[str],
    settings: Settings,
) -> tuple[asyncpg.Record, str]:
    """A new endpoint (its row and secret) with its delivery process started:
    it is sent the events written from now on."""
    row, secret, after = await create_endpoint(pool, url, event_types)
    await start_delivery(
        client,
        queues,
        EventDeliveryInput(
            endpoint_id=row["endpoint_id"],
            after_seq=after,
            policy=delivery_policy(settings),
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
        ),
    )
    return row, secret


async def wake_delivery(client: Client, endpoint_id: str) -> None:
    """Have the endpoint's process look at once (its endpoint changed)."""
    try:
        await client.get_workflow_handle(event_delivery_workflow_id(endpoint_id)).signal(
            EventDelivery.wake
        )
    except RPCError:
        pass  # a process that ended needs no wake


async def ensure_customer_notifications(
    pool: asyncpg.Pool, client: Client, queues: TaskQueues, settings: Settings
) -> str:
    """The customers' own endpoint and its delivery process: each declined
    purchase (with its reason) and each cleared one is sent to its customer
    on the channels they prefer. Returns "created" or "exists"."""
    async with pool.acquire() as connection, connection.transaction():
        await sequence(connection)
        created = await connection.fetchval(
            "INSERT INTO webhook_endpoints (endpoint_id, url, event_types, secret)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (endpoint_id) DO NOTHING RETURNING true",
            CUSTOMERS_ENDPOINT_ID,
            CUSTOMERS_SINK_URL,
            [t.value for t in CUSTOMER_NOTIFIED_TYPES],
            new_secret(),
        )
        after = await connection.fetchval("SELECT coalesce(max(seq), 0) FROM customer_events")
    await start_delivery(
        client,
        queues,
        EventDeliveryInput(
            endpoint_id=CUSTOMERS_ENDPOINT_ID,
            after_seq=int(after) if created else 0,
            policy=delivery_policy(settings),
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
        ),
    )
    return "created" if created else "exists"
