"""The chaos run's options (seed, operations, duration, concurrency, kills,
faults) and the command that replays a run with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_SEED = 1
DEFAULT_OPERATIONS = 1_000
DEFAULT_CONCURRENCY = 16
DEFAULT_KILL_EVERY_SECONDS = 20.0
DEFAULT_FAULT_RATE = 0.05
# Customers per operation in flight: enough that concurrent operations rarely
# wait for one another's customer.
CUSTOMERS_PER_SLOT = 2


@dataclass(frozen=True)
class Options:
    seed: int = DEFAULT_SEED
    operations: int = DEFAULT_OPERATIONS
    minutes: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    kill_every_seconds: float = DEFAULT_KILL_EVERY_SECONDS
    fault_rate: float = DEFAULT_FAULT_RATE
    customers: int | None = None
    existing: bool = False
    report_path: Path | None = None
    live: bool = True
    # Leave a fresh stack running after a run with violations, to investigate.
    keep_on_violation: bool = False

    @property
    def customer_count(self) -> int:
        return self.customers or max(2, self.concurrency * CUSTOMERS_PER_SLOT)

    def replay_command(self) -> str:
        parts = [
            "cardflow chaos",
            f"--seed {self.seed}",
            f"--ops {self.operations}",
            f"--concurrency {self.concurrency}",
            f"--kill-every {self.kill_every_seconds:g}",
            f"--fault-rate {self.fault_rate:g}",
            f"--customers {self.customer_count}",
        ]
        if self.minutes is not None:
            parts.append(f"--minutes {self.minutes:g}")
        return " ".join(parts)
