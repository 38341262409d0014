"""The chaos workload's calls (bench/chaos/workload.py): to the `/v1` API,
the simulators and their admin API, each sent again, the same call, while a
fault or a kill passes; the process status it reads; and the choice of what
an operation acts on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.providers.bank import BankClient
from activities.providers.issuer import IssuerClient
from activities.providers.kyc import KycClient
from activities.providers.tron import TronClient
from bench.chaos.evidence import CustomerRef, Evidence
from bench.chaos.plan import Operation
from schemas.providers import BANK, ISSUER, KYC, TRON
from workers.settings import Settings

T = TypeVar("T")
# A call refused for a reason that passes (a 503 while a process is killed, a
# connection refused while a part restarts) is sent again, the same call,
# until this much time has passed.
CALL_PERSISTENCE_SECONDS = 180.0
CALL_RETRY_PAUSE_SECONDS = 0.5
# Waiting for a process to reach a stage or finish.
PROCESS_WAIT_SECONDS = 300.0
POLL_SECONDS = 0.2
RETRYABLE_PROVIDER_ERRORS = frozenset(
    {"ProviderTimeout", "ProviderUnreachable", "ProviderUnavailable", "ProviderRateLimited"}
)
API_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ADMIN_TIMEOUT_SECONDS = 10.0


class OperationSkipped(Exception):
    """The plan's operation found nothing to act on (no open card, no purchase)."""


def expect(response: httpx.Response, *statuses: int) -> None:
    if response.status_code not in statuses:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:300]}"
        )


class WorkloadCalls:
    """The workload's clients and its calls that persist through faults and
    kills; the operations (bench/chaos/workload_*.py) build on them."""

    def __init__(
        self,
        settings: Settings,
        client: Client,
        api_key: str,
        evidence: Evidence,
        *,
        seed: int,
        run_tag: str,
    ) -> None:
        self.settings = settings
        self.client = client
        self.evidence = evidence
        self.seed = seed
        self.run_tag = run_tag
        base = settings.providers_base_url
        self.api = httpx.AsyncClient(
            base_url=f"http://{settings.bind_host}:{settings.gateway_port}",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        self.issuer = IssuerClient(f"{base}/{ISSUER}")
        self.kyc = KycClient(f"{base}/{KYC}")
        self.bank = BankClient(f"{base}/{BANK}")
        self.tron = TronClient(f"{base}/{TRON}")
        self.locks: dict[int, asyncio.Lock] = {}

    async def close(self) -> None:
        await self.api.aclose()
        for provider in (self.issuer, self.kyc, self.bank, self.tron):
            await provider.aclose()

    def key(self, *parts: object) -> str:
        return "-".join(["chaos", str(self.seed), self.run_tag, *(str(p) for p in parts)])

    # ----- calls that persist through faults and kills ------------------

    async def provider(self, call: Callable[[], Awaitable[T]]) -> T:
        """A simulator call, sent again (same key) while the failure passes."""
        deadline = time.monotonic() + CALL_PERSISTENCE_SECONDS
        while True:
            try:
                return await call()
            except ApplicationError as error:
                if error.type not in RETRYABLE_PROVIDER_ERRORS or time.monotonic() > deadline:
                    raise
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(CALL_RETRY_PAUSE_SECONDS)

    async def call_api(
        self, method: str, path: str, body: Any = None, *, key: str | None = None
    ) -> httpx.Response:
        """A `/v1` request, sent again with the same Idempotency-Key while the
        gateway or a process is away (connection refused, 5xx, 408, 429)."""
        headers = {"Idempotency-Key": key} if key else {}
        deadline = time.monotonic() + CALL_PERSISTENCE_SECONDS
        while True:
            try:
                response = await self.api.request(method, f"/v1{path}", json=body, headers=headers)
                if response.status_code not in API_RETRY_STATUSES:
                    return response
                if time.monotonic() > deadline:
                    return response
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(CALL_RETRY_PAUSE_SECONDS)

    async def process(self, workflow_id: str) -> dict[str, Any]:
        response = await self.call_api("GET", f"/processes/{workflow_id}")
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    async def until_process(
        self, workflow_id: str, done: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + PROCESS_WAIT_SECONDS
        while True:
            status = await self.process(workflow_id)
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workflow_id} did not reach {what}: {status}")
            await asyncio.sleep(POLL_SECONDS)

    async def result(self, workflow_id: str) -> Any:
        """A finished process's result, read as an operator reads it."""
        return await self.client.get_workflow_handle(workflow_id).result()

    async def _admin(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """A call to the simulators' admin API, made again while the run has
        them killed and restarting: a read on any broken connection, a write
        only when it never connected (it may have been applied otherwise)."""
        deadline = time.monotonic() + PROCESS_WAIT_SECONDS
        retried = httpx.TransportError if method == "GET" else httpx.ConnectError
        while True:
            try:
                async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_SECONDS) as admin:
                    return await admin.request(
                        method,
                        f"{self.settings.providers_base_url}/_admin{path}",
                        json=json,
                        params=params,
                    )
            except retried:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(POLL_SECONDS)

    def _pick(self, items: list[str], operation: Operation, what: str) -> str:
        if not items:
            raise OperationSkipped(f"no {what}")
        return items[operation.choice % len(items)]

    def _usable_cards(self, customer: CustomerRef) -> list[str]:
        return [c for c in customer.cards if self.evidence.cards[c].state in ("open", "frozen")]
