"""What the chaos run does to its stack: a stack of its own (or the running
one), the simulators' admin API, the plan's faults by operation (provider
faults, webhook windows, resends) and the kills and restarts of its parts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.authorizations import bench_settings
from bench.chaos.options import Options
from bench.chaos.plan import WEBHOOK_WINDOW_SECONDS_MAX, Plan, ProviderFault, Resend, WebhookWindow
from bench.chaos.report import Tally
from schemas.providers import ISSUER
from schemas.task_queues import QUEUE_KINDS
from schemas.units import DAY_SECONDS
from starters.devstack.processes import wait_for_port
from starters.devstack.stack import GATEWAY, SIMULATORS, Stack, worker_part
from workers.settings import Settings, load_settings
from workers.telemetry import metrics_port_of

# The simulated issuer's clock runs a day behind: the run's card activity
# settles yesterday, a day that has ended and can be reconciled at the end.
ISSUER_CLOCK_BEHIND_SECONDS = DAY_SECONDS
# A short quote, so a confirmation after expiry costs a few seconds.
FX_QUOTE_TTL_SECONDS = 15
RESTART_PAUSE_SECONDS = 1.0
RESTART_ATTEMPTS_MAX = 30
WORKER_READY_SECONDS_MAX = 120.0
# After the faults stop: how long the stack has to drain, and how long a
# difference may take to converge before it is a violation.
QUIESCE_SECONDS_MAX = 300.0
ADMIN_TIMEOUT_SECONDS = 10.0
CHAOS_WITHDRAWAL_SETTINGS = {
    "CARDFLOW_WITHDRAWAL_COOLING_SECONDS": "0",
    "CARDFLOW_WITHDRAWAL_RETURN_WATCH_SECONDS": "5",
    "CARDFLOW_WITHDRAWAL_OUTCOME_POLL_SECONDS": "5",
}


@contextlib.asynccontextmanager
async def stack_for(options: Options) -> AsyncIterator[Stack]:
    if options.existing:
        yield Stack(load_settings())
        return
    # Withdrawals the run starts wait for nothing but the bank it plays.
    os.environ.update(CHAOS_WITHDRAWAL_SETTINGS)
    home = tempfile.mkdtemp(prefix="cardflow-chaos-")
    os.chmod(home, 0o755)  # the embedded PostgreSQL may run as another user
    # Free ports and a home of its own, as the benchmarks start their stacks.
    stack = Stack(bench_settings(Path(home)))
    kept = False
    try:
        await asyncio.to_thread(stack.up)
        yield stack
    except KeptForInvestigation:
        kept = True
        raise
    finally:
        if not kept:
            await asyncio.to_thread(stack.down)
            shutil.rmtree(home, ignore_errors=True)


class KeptForInvestigation(Exception):
    """The run found violations and its stack is left running (--keep)."""


class StackHandling:
    """The run's hold on its stack, mixed into the run (bench/chaos/run.py):
    the simulators' admin API, the plan's faults and the parts' kills."""

    options: Options
    stack: Stack
    settings: Settings
    plan: Plan
    tally: Tally
    admin_url: str
    webhook_mode: dict[str, bool]
    restarting: asyncio.Lock
    stop_faults: asyncio.Event
    order: asyncio.Lock
    window_open: WebhookWindow | None
    window_timers: list[asyncio.Future[None]]
    part_kills: list[asyncio.Future[None]]

    # ----- the simulators' admin API -----------------------------------

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        deadline = time.monotonic() + QUIESCE_SECONDS_MAX
        while True:
            try:
                async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_SECONDS) as http:
                    response = await http.request(method, f"{self.admin_url}{path}", json=body)
                response.raise_for_status()
                return response.json() if response.content else None
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def sandbox_options(self) -> None:
        """What the run needs of the simulators; set again after they restart."""
        await self.admin(
            "PUT", f"/options/{ISSUER}", {"clock_offset_seconds": -ISSUER_CLOCK_BEHIND_SECONDS}
        )
        await self.admin("PUT", "/options/fx", {"quote_ttl_seconds": FX_QUOTE_TTL_SECONDS})
        await self.admin("POST", "/webhooks", self.webhook_mode)

    # ----- kills ---------------------------------------------------------

    def _kill(self, part: str) -> bool:
        record = self.stack.run.alive(part)
        if record is None:
            return False
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(record.pid)
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            process.kill()
            process.wait(timeout=10)
        self.tally.killed(part)
        return True

    def _start(self, part: str) -> None:
        if part == GATEWAY:
            self.stack._up_http_part(GATEWAY, ["gateway"], self.settings.gateway_port, "/health")
        elif part == SIMULATORS:
            self.stack._up_http_part(
                SIMULATORS, ["simulators", "serve"], self.settings.simulators_port, "/_admin/health"
            )
        else:
            self.stack._up_worker(part.removeprefix("worker-"))

    async def kill_and_restart(self, part: str) -> None:
        async with self.restarting:
            # A part found dead already is started again all the same, as
            # its supervisor would.
            await asyncio.to_thread(self._kill, part)
            await asyncio.sleep(RESTART_PAUSE_SECONDS)
            for _ in range(RESTART_ATTEMPTS_MAX):
                await asyncio.to_thread(self._start, part)
                if part == SIMULATORS:
                    await self.sandbox_options()
                elif part.startswith("worker-"):
                    # The next kill's interval counts from when this worker is
                    # up again (its metrics listen just before it polls): on a
                    # loaded machine a worker takes seconds to start, and kills
                    # faster than that would only keep the stack down.
                    port = metrics_port_of(self.settings, part)
                    await asyncio.to_thread(
                        wait_for_port, self.settings.bind_host, port, WORKER_READY_SECONDS_MAX
                    )
                # The port may answer for another process (another stack on
                # this machine took it while the part was down): the part
                # itself must be alive, or it is started again.
                await asyncio.sleep(RESTART_PAUSE_SECONDS)
                if self.stack.run.alive(part) is not None:
                    return
                self.tally.restart_failures += 1

    async def killer(self) -> None:
        for part in self.plan.kill_order:
            await asyncio.sleep(self.options.kill_every_seconds)
            if self.stop_faults.is_set():
                return
            await self.kill_and_restart(part)

    async def ensure_all_running(self) -> None:
        for part in (
            SIMULATORS,
            GATEWAY,
            *(worker_part(kind) for kind in QUEUE_KINDS),
        ):
            if self.stack.run.alive(part) is None:
                await asyncio.to_thread(self._start, part)
        await self.sandbox_options()

    # ----- faults by operation ------------------------------------------

    async def arm_fault(self, fault: ProviderFault) -> None:
        await self.admin(
            "POST",
            "/faults",
            {
                "kind": fault.kind,
                "path_prefix": fault.path_prefix,
                "times": fault.times,
                "seconds": fault.seconds,
                "status": fault.status,
            },
        )
        self.tally.faults += 1

    async def open_window(self, window: WebhookWindow) -> None:
        if window.kind == "duplicate":
            self.webhook_mode = {"hold": False, "duplicate": True}
        else:
            self.webhook_mode = {"hold": True, "duplicate": False}
        await self.admin("POST", "/webhooks", self.webhook_mode)
        self.window_open = window
        self.tally.webhook_windows += 1
        self.window_timers.append(asyncio.ensure_future(self._close_in_time(window)))

    async def _close_in_time(self, window: WebhookWindow) -> None:
        """Close the window after WEBHOOK_WINDOW_SECONDS_MAX if its operations
        have not: they may be waiting for the very webhooks it holds."""
        await asyncio.sleep(WEBHOOK_WINDOW_SECONDS_MAX)
        async with self.order:
            await self.close_window(window)

    async def close_window(self, window: WebhookWindow) -> None:
        if self.window_open is not window:
            return  # closed already, by time or by the quiescence
        self.window_open = None
        self.webhook_mode = {"hold": False, "duplicate": False}
        await self.admin("POST", "/webhooks", self.webhook_mode)
        if window.kind != "duplicate":
            order = "reverse" if window.kind == "hold_reverse" else "forward"
            await self.admin("POST", "/webhooks/release", {"order": order})

    async def before_operation(self, number: int) -> None:
        """The plan's faults due when operation `number` starts."""
        for fault in self.faults_at.get(number, []):
            await self.arm_fault(fault)
        for resend in self.resends_at.get(number, []):
            answer = await self.admin(
                "POST", "/webhooks/resend", {"back": resend.back, "simulator": ISSUER}
            )
            if answer and answer.get("resent"):
                self.tally.resends += 1
        for window in self.windows_open_at.get(number, []):
            await self.open_window(window)
        for window in self.windows_close_at.get(number, []):
            await self.close_window(window)
        # The gateway and simulators restart beside the traffic: a lane that
        # waited for them would hold up every lane behind the order lock.
        if number == self.plan.gateway_kill_at and number > 0:
            self.part_kills.append(asyncio.ensure_future(self.kill_and_restart(GATEWAY)))
        if number == self.plan.simulators_kill_at and number > 0:
            self.part_kills.append(asyncio.ensure_future(self.kill_and_restart(SIMULATORS)))
        worker = self.plan.worker_kills_at.get(number)
        if worker is not None:
            self.part_kills.append(asyncio.ensure_future(self.kill_and_restart(worker)))

    def index_faults(self) -> None:
        self.faults_at: dict[int, list[ProviderFault]] = {}
        for fault in self.plan.provider_faults:
            self.faults_at.setdefault(fault.at_operation, []).append(fault)
        self.resends_at: dict[int, list[Resend]] = {}
        for resend in self.plan.resends:
            self.resends_at.setdefault(resend.at_operation, []).append(resend)
        self.windows_open_at: dict[int, list[WebhookWindow]] = {}
        self.windows_close_at: dict[int, list[WebhookWindow]] = {}
        # Windows never overlap: one that starts inside another is dropped.
        open_until = -1
        for window in self.plan.webhook_windows:
            if window.at_operation <= open_until:
                continue
            close = min(window.at_operation + window.length_ops, self.options.operations - 1)
            self.windows_open_at.setdefault(window.at_operation, []).append(window)
            self.windows_close_at.setdefault(close, []).append(window)
            open_until = close
