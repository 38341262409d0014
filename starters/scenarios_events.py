"""The event delivery's scenario: an upstream app's endpoint is sent a
top-up's credit, signed, and is then deleted."""

from __future__ import annotations

import asyncio
import uuid

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


async def events_delivered(client: Client, settings: Settings) -> str:
    """An upstream app (the simulator's) registers an endpoint for credited
    top-ups; a bank top-up's credit is delivered to it and verified there;
    the endpoint is deleted and its delivery process ends."""
    upstream = f"{settings.providers_base_url}/upstream"
    receiver = f"scenario-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(settings.effective_database_url, size_max=2)
    try:
        row, secret = await register_endpoint(
            pool,
            client,
            settings.task_queues,
            f"{upstream}/hooks/{receiver}",
            [EventType.TOPUP_CREDITED.value],
            settings,
        )
        endpoint_id = row["endpoint_id"]
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.put(f"{upstream}/v1/receivers/{receiver}", json={"secret": secret})
            answer.raise_for_status()
            await topup_bank(client, settings)
            for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
                found = await http.get(f"{upstream}/v1/receivers/{receiver}/deliveries")
                if any(d["outcome"] == "accepted" for d in found.json()["data"]):
                    break
                await asyncio.sleep(0.05)
            else:
                raise TimeoutError(f"endpoint {endpoint_id} was never sent the top-up")
        await delete_endpoint(pool, endpoint_id)
        await wake_delivery(client, endpoint_id)
    finally:
        await pool.close()
    workflow_id = event_delivery_workflow_id(endpoint_id)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id
