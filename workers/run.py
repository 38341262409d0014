"""Run one worker process for one task queue until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

from activities.database import create_pool
from activities.metrics import sampling_open_holds
from activities.migrate import migrate
from activities.providers.activities import ProviderClients
from workers.build import build_worker
from workers.census import taking_census
from workers.client import connect
from workers.heap import freeze_startup
from workers.secrets import telegram_bot_token
from workers.settings import Settings
from workers.telemetry import configure_logging, start_telemetry

log = logging.getLogger("cardflow.worker")

PROVIDERS_POOL_SIZE_MAX = 4
WORKFLOWS_POOL_SIZE_MAX = 8


async def run_worker(kind: str, settings: Settings) -> None:
    queues = settings.task_queues
    task_queue = queues.by_kind()[kind]
    identity = f"cardflow-{kind}-{os.getpid()}@{socket.gethostname()}"
    telemetry = start_telemetry(settings, f"worker-{kind}")
    configure_logging(settings, telemetry.service_name)
    if telemetry.metrics_address is not None:
        log.info("metrics on http://%s/metrics", telemetry.metrics_address)
    client = await connect(settings, identity=identity, telemetry=telemetry)
    pool = None
    if kind == "ledger":
        database_url = settings.effective_database_url
        # Every ledger worker migrates at start; the advisory lock makes
        # simultaneous starts safe and later ones a no-op.
        applied = await migrate(database_url)
        if applied:
            log.info("applied migrations %s", [m.version for m in applied])
        pool = await create_pool(database_url, size_max=settings.database_pool_size_max)
    if kind == "workflows":
        # Card authorizations hold funds as local activities, from this process.
        pool = await create_pool(settings.effective_database_url, size_max=WORKFLOWS_POOL_SIZE_MAX)
    provider_clients = None
    if kind == "providers":
        # Reads customers' notification preferences; a few connections suffice.
        pool = await create_pool(settings.effective_database_url, size_max=PROVIDERS_POOL_SIZE_MAX)
        provider_clients = ProviderClients(
            settings.providers_base_url,
            telegram_bot_token=telegram_bot_token(settings),
            telegram_api_url=settings.telegram_api_url,
        )
    worker = build_worker(
        kind,
        client,
        queues,
        pool=pool,
        pool_size_max=settings.database_pool_size_max,
        identity=identity,
        provider_clients=provider_clients,
    )
    freeze_startup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("worker %s polling %s on %s", identity, task_queue, settings.temporal_target)
    try:
        async with contextlib.AsyncExitStack() as running:
            if kind == "ledger" and pool is not None:
                await running.enter_async_context(sampling_open_holds(pool, telemetry.meter))
            if kind == "workflows":
                await running.enter_async_context(taking_census(client, telemetry.meter))
            async with worker:
                await stop.wait()
                log.info("shutting down: finishing in-flight tasks")
    finally:
        if pool is not None:
            await pool.close()
        if provider_clients is not None:
            await provider_clients.aclose()
        telemetry.shutdown()
