"""The customer overview's latency with one source slowed past its budget.

Run: .venv/bin/python -m bench.overview [--customers K] [--requests N]
                                        [--rate R] [--slow-seconds S] [--json]

Brings the whole embedded stack up (as bench/authorizations.py does) and
issues K virtual cards through their real processes; each card's customer
also gets a physical card being shipped (created at the issuer, recorded as
a card issue records it, no process yet). It then asks the gateway, over
HTTP, for the customers' `GET /v1/customers/{id}/overview`, R per second
open-loop, N in all: first with every source healthy, then with the issuer (the shipping
section's source) answering S seconds late. It prints, never asserts, p50
and p99 of each round, the failures (any answer but 200, or a section other
than the slowed one not `ok`), how the slowed section came back, and p99
against the page's budget: the largest section budget (SOURCE_SECONDS)
plus 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import asdict, dataclass

import asyncpg
import httpx

from activities.api_keys import SCOPE_CUSTOMERS_READ, ApiKeyStore, NewApiKey, api_key_pepper
from activities.database import create_pool
from activities.providers.issuer import IssuerClient
from bench.authorizations import stack_with_cards
from schemas.issuer import Address, CardType
from schemas.money import Currency
from starters.gateway.v1.overview import SOURCE_SECONDS

CUSTOMERS = 20
PAGE_MARGIN_MS = 20.0
ADDRESS = Address(line1="1 Main St", city="Berlin", postal_code="10115", country="DE")
SLOWED_SECTION = "shipping"
SECTIONS = tuple(SOURCE_SECONDS)


@dataclass
class Round:
    name: str
    requests: int
    p50_ms: float
    p99_ms: float
    failures: dict[str, int]
    slowed_section_statuses: dict[str, int]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def physical_cards(pool: asyncpg.Pool, providers_url: str, customer_ids: list[str]) -> None:
    async with IssuerClient(f"{providers_url}/issuer") as issuer:
        for customer_id in customer_ids:
            holder = await issuer.create_cardholder(
                first_name="Bench",
                last_name="Customer",
                email=f"{customer_id}@example.com",
                address=ADDRESS,
                idempotency_key=f"holder-{customer_id}",
            )
            card = await issuer.create_card(
                cardholder_id=holder.id,
                card_type=CardType.PHYSICAL,
                currency=Currency.USD,
                idempotency_key=f"card-{customer_id}",
            )
            await pool.execute(
                "INSERT INTO cards (card_id, request_id, customer_id, kind)"
                " VALUES ($1, $2, $3, 'physical')",
                card.id,
                f"bench-{uuid.uuid4().hex[:8]}",
                customer_id,
            )


async def measure(
    http: httpx.AsyncClient,
    headers: dict[str, dict[str, str]],
    customer_ids: list[str],
    name: str,
    requests: int,
    rate: float,
) -> Round:
    """`requests` overviews sent open-loop at `rate` per second (each on its
    own schedule, whatever the earlier ones take), as an app's users ask."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    slowed: dict[str, int] = {}

    begin = time.perf_counter()

    async def one(index: int) -> None:
        customer_id = customer_ids[index % len(customer_ids)]
        await asyncio.sleep(max(0.0, begin + index / rate - time.perf_counter()))
        started = time.perf_counter()
        answer = await http.get(
            f"/v1/customers/{customer_id}/overview", headers=headers[customer_id]
        )
        latencies.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            failures[str(answer.status_code)] = failures.get(str(answer.status_code), 0) + 1
            return
        page = answer.json()
        for section in SECTIONS:
            if section != SLOWED_SECTION and page[section]["status"] != "ok":
                failures[section] = failures.get(section, 0) + 1
        status = page[SLOWED_SECTION]["status"]
        slowed[status] = slowed.get(status, 0) + 1

    await asyncio.gather(*(one(index) for index in range(requests)))
    return Round(
        name,
        requests,
        round(statistics.median(latencies), 1),
        round(quantile(latencies, 0.99), 1),
        failures,
        slowed,
    )


async def run(customers: int, requests: int, rate: float, slow_seconds: float) -> list[Round]:
    async with stack_with_cards(customers) as bench:
        settings = bench.stack.settings
        pool = await create_pool(settings.effective_database_url, size_max=4)
        try:
            rows = await pool.fetch(
                "SELECT customer_id FROM cards WHERE card_id = ANY($1::text[])", bench.cards
            )
            customer_ids = [row["customer_id"] for row in rows]
            await physical_cards(pool, settings.providers_base_url, customer_ids)
            # One key per customer, bound to it, as an app's per-customer session
            # would be: the gateway's per-key rate limit stays out of the figures.
            keys = ApiKeyStore(pool, api_key_pepper(settings))
            headers = {}
            for customer_id in customer_ids:
                issued = await keys.create(
                    NewApiKey(
                        name=f"bench-{customer_id}",
                        scopes=[SCOPE_CUSTOMERS_READ],
                        customers=[customer_id],
                    )
                )
                headers[customer_id] = {"Authorization": f"Bearer {issued.key}"}
        finally:
            await pool.close()
        async with httpx.AsyncClient(base_url=settings.gateway_base_url, timeout=30) as http:
            args = (http, headers, customer_ids)
            # Warm the section caches and the connections.
            await measure(*args, "warm-up", len(customer_ids), rate)
            healthy = await measure(*args, "healthy", requests, rate)
            fault = {"path_prefix": "/issuer/", "kind": "latency", "seconds": slow_seconds}
            await http.post(f"{settings.providers_base_url}/_admin/faults", json=fault)
            slowed = await measure(*args, "issuer slowed", requests, rate)
        return [healthy, slowed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--customers", type=int, default=CUSTOMERS)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="overviews per second")
    parser.add_argument("--slow-seconds", type=float, default=SOURCE_SECONDS[SLOWED_SECTION] + 2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds = asyncio.run(run(args.customers, args.requests, args.rate, args.slow_seconds))
    budget_ms = max(SOURCE_SECONDS.values()) * 1000 + PAGE_MARGIN_MS
    if args.json:
        print(json.dumps({"budget_ms": budget_ms, "rounds": [asdict(r) for r in rounds]}))
        return
    print(
        f"overview: {args.requests} requests per round at {args.rate:g}/s; "
        f"the issuer slowed by {args.slow_seconds:.1f} s in the second round"
    )
    for r in rounds:
        verdict = "within" if r.p99_ms <= budget_ms else "OVER"
        print(
            f"{r.name:<14} p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  failures {r.failures}"
            f"  {SLOWED_SECTION}: {r.slowed_section_statuses}  ({verdict} the budget"
            f" {budget_ms:.0f} ms)"
        )


if __name__ == "__main__":
    main()
