"""The event delivery's scenario: an upstream app's endpoint is sent a
top-up's credit, signed, and is then deleted."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from temporalio.client import Client

from activities.database import create_pool
from activities.events import delete_endpoint
from schemas.events import EventType
from starters.events import register_endpoint, wake_delivery
from starters.scenario_steps import STAGE_WAIT_SECONDS_MAX
from starters.scenarios_topup import topup_bank
from workers.settings import Settings
from workflows.event_delivery import event_delivery_workflow_id


async def upstream_endpoint(
    client: Client, settings: Settings, receiver: str, event_types: list[str]
) -> str:
    """Register the upstream app simulator's `receiver` as a webhook endpoint
    for `event_types` and give it the endpoint's secret; the endpoint's id."""
    upstream = f"{settings.providers_base_url}/upstream"
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        row, secret = await register_endpoint(
            pool,
            client,
            settings.task_queues,
            f"{upstream}/hooks/{receiver}",
            event_types,
            settings,
        )
    finally:
        await pool.close()
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.put(f"{upstream}/v1/receivers/{receiver}", json={"secret": secret})
        answer.raise_for_status()
    endpoint_id: str = row["endpoint_id"]
    return endpoint_id


async def upstream_deliveries(settings: Settings, receiver: str) -> list[dict[str, Any]]:
    """What the upstream app simulator's `receiver` was sent, oldest first."""
    async with httpx.AsyncClient(timeout=10) as http:
        found = await http.get(
            f"{settings.providers_base_url}/upstream/v1/receivers/{receiver}/deliveries"
        )
    found.raise_for_status()
    deliveries: list[dict[str, Any]] = found.json()["data"]
    return deliveries


async def events_delivered(client: Client, settings: Settings) -> str:
    """An upstream app (the simulator's) registers an endpoint for credited
    top-ups; a bank top-up's credit is delivered to it and verified there;
    the endpoint is deleted and its delivery process ends."""
    receiver = f"scenario-{uuid.uuid4().hex[:8]}"
    endpoint_id = await upstream_endpoint(
        client, settings, receiver, [EventType.TOPUP_CREDITED.value]
    )
    await topup_bank(client, settings)
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        if any(d["outcome"] == "accepted" for d in await upstream_deliveries(settings, receiver)):
            break
        await asyncio.sleep(0.05)
    else:
        raise TimeoutError(f"endpoint {endpoint_id} was never sent the top-up")
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        await delete_endpoint(pool, endpoint_id)
    finally:
        await pool.close()
    await wake_delivery(client, endpoint_id)
    workflow_id = event_delivery_workflow_id(endpoint_id)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id
