"""Cost of the payload codec: pydantic JSON alone vs. JSON + AES-GCM, side by side.

Run: .venv/bin/python -m bench.codec [--payloads N] [--rounds R]

Each round converts the same batch of realistic payloads both ways, once with
the plain pydantic converter and once with cardflow's encrypting converter;
rounds alternate so machine noise hits both alike. Printed: median and p90
microseconds per payload for each, and the median ratio encrypted/plain.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import time
from decimal import Decimal

from pydantic import BaseModel
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from schemas.health import PingInput
from schemas.money import Currency, Money, Rate
from workers.converter import build_data_converter, generate_key


class _Conversion(BaseModel):
    """Shaped like an FX request: the kind of payload a history is full of."""

    request_id: str
    customer_id: str
    sell: Money
    buy: Money
    rate: Rate
    note: str


def sample_payloads(count: int) -> list[BaseModel]:
    values: list[BaseModel] = []
    for index in range(count):
        if index % 2:
            values.append(
                PingInput(
                    ledger_task_queue="cardflow-ledger",
                    providers_task_queue="cardflow-providers",
                    requested_by=f"operator-{index}",
                )
            )
        else:
            values.append(
                _Conversion(
                    request_id=f"fx-{index:08d}",
                    customer_id=f"cus_{index:012d}",
                    sell=Money(amount_minor=100_000 + index, currency=Currency.USD),
                    buy=Money(amount_minor=92_310 + index, currency=Currency.EUR),
                    rate=Decimal("0.923100"),
                    note="monthly savings" * 4,
                )
            )
    return values


async def round_trip_seconds(converter: DataConverter, values: list[BaseModel]) -> float:
    types = [type(value) for value in values]
    started = time.perf_counter()
    payloads = await converter.encode(values)
    decoded = await converter.decode(payloads, types)
    elapsed = time.perf_counter() - started
    assert decoded == values
    return elapsed


async def main_async(payload_count: int, rounds: int) -> None:
    values = sample_payloads(payload_count)
    plain = pydantic_data_converter
    encrypted = build_data_converter([("bench", base64.b64decode(generate_key()))])
    await round_trip_seconds(plain, values)  # warm type-adapter caches
    await round_trip_seconds(encrypted, values)
    plain_us: list[float] = []
    encrypted_us: list[float] = []
    ratios: list[float] = []
    for _ in range(rounds):
        p = await round_trip_seconds(plain, values) / payload_count * 1e6
        e = await round_trip_seconds(encrypted, values) / payload_count * 1e6
        plain_us.append(p)
        encrypted_us.append(e)
        ratios.append(e / p)

    def p90(samples: list[float]) -> float:
        return statistics.quantiles(samples, n=10)[-1]

    print(f"payloads per round: {payload_count}, rounds: {rounds}")
    print(
        f"plain pydantic JSON   median {statistics.median(plain_us):8.2f} us/payload"
        f"   p90 {p90(plain_us):8.2f}"
    )
    print(
        f"JSON + AES-256-GCM    median {statistics.median(encrypted_us):8.2f} us/payload"
        f"   p90 {p90(encrypted_us):8.2f}"
    )
    print(f"encrypted / plain     median ratio {statistics.median(ratios):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=15)
    arguments = parser.parse_args()
    asyncio.run(main_async(arguments.payloads, arguments.rounds))


if __name__ == "__main__":
    main()
