"""What the chaos run reports: its tally of operations, faults and kills,
what each lane is doing, the live status line and the stall file while it
runs, and at the end the report (JSON) and its table."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activities.database import create_pool
from bench.chaos import invariants
from bench.chaos.evidence import Evidence
from bench.chaos.invariants import Violation
from bench.chaos.options import Options
from schemas.reconciliation import ReconciliationItem
from workers.settings import Settings

LIVE_LINE_EVERY_SECONDS = 1.0
LEDGER_PROBE_EVERY_SECONDS = 30.0
# No operation finished for this long: what every lane is doing, with the
# stack of every task, goes to the stall file, once per stall.
STALL_REPORT_SECONDS = 90.0


@dataclass
class Tally:
    started_at: float = field(default_factory=time.monotonic)
    done: int = 0
    skipped: int = 0
    errors: int = 0
    faults: int = 0
    webhook_windows: int = 0
    resends: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    violations_seen: int = 0
    restart_failures: int = 0
    check_rounds: int = 0
    last_done_at: float = field(default_factory=time.monotonic)
    stalls: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "setting up customers"
    error_samples: list[str] = field(default_factory=list)

    def killed(self, part: str) -> None:
        self.kills[part] = self.kills.get(part, 0) + 1


ERROR_SAMPLES_MAX = 20


@dataclass(frozen=True)
class InFlight:
    """What one lane is doing."""

    number: int
    kind: str
    customer: int
    since: float = field(default_factory=time.monotonic)

    def line(self, now: float) -> str:
        age = now - self.since
        return f"op {self.number} {self.kind} (customer {self.customer}) for {age:.0f} s"


def summary(report: dict[str, Any]) -> str:
    """The end-of-run table."""
    lines = [f"chaos run, seed {report['seed']}: {len(report['violations'])} violations"]
    lines.append(f"{'operation':<14} " + "outcomes")
    for kind, outcomes in sorted(report["operations_by_kind"].items()):
        shown = ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items()))
        lines.append(f"{kind:<14} {shown}")
    kills = ", ".join(f"{part} {count}" for part, count in sorted(report["kills"].items()))
    lines += [
        f"operations     {report['operations_done']}/{report['operations_planned']} "
        f"(skipped {report['skipped']}, errors {report['errors']})",
        f"customers      {report['customers']}, cards {report['cards']}, "
        f"authorizations {report['authorizations']}, transactions {report['transactions']}",
        f"faults         provider {report['provider_faults']}, "
        f"webhook windows {report['webhook_windows']}, resends {report['webhook_resends']}",
        f"kills          {kills or 'none'}",
        f"stand-ins      {report['stand_ins']}",
        f"time           set-up {report['set_up_seconds']} s, operations "
        f"{report['operating_seconds']} s, wall {report['wall_seconds']} s",
    ]
    for violation in report["violations"]:
        lines.append(f"VIOLATION {violation}")
    if report["violations"]:
        lines.append(f"replay: {report['replay']}")
    if "kept_stack" in report:
        lines.append(f"stack kept running for investigation: {report['kept_stack']}")
    return "\n".join(lines)


# Differences of the day's reconciliation shown in the report, each whole.
RECONCILIATION_EXAMPLES = 12


def reconciliation_findings(items: list[ReconciliationItem]) -> dict[str, Any]:
    """What the day's reconciliation found: its items per state and per kind
    of difference, and the first few differences (enough to investigate)."""
    return {
        "states": dict(Counter(str(item.state) for item in items)),
        "kinds": dict(Counter(str(item.difference.kind) for item in items)),
        "examples": [
            item.difference.model_dump(mode="json") for item in items[:RECONCILIATION_EXAMPLES]
        ],
    }


class Reporting:
    """The run's reporting, mixed into the run (bench/chaos/run.py): the live
    line, the stall watch and the end-of-run report."""

    options: Options
    settings: Settings
    tally: Tally
    evidence: Evidence
    lanes: dict[int, InFlight]
    stall_path: Path
    quiesced: str

    async def live_line(self) -> None:
        pool = await create_pool(self.settings.effective_database_url, size_max=1)
        last_probe = 0.0
        try:
            while True:
                if time.monotonic() - last_probe > LEDGER_PROBE_EVERY_SECONDS:
                    last_probe = time.monotonic()
                    with contextlib.suppress(Exception):
                        found = await invariants.ledger_violations(pool)
                        self.tally.violations_seen = max(self.tally.violations_seen, len(found))
                self.watch_for_stall()
                if self.options.live:
                    sys.stderr.write("\r" + self.status_line() + "\033[K")
                    sys.stderr.flush()
                await asyncio.sleep(LIVE_LINE_EVERY_SECONDS)
        finally:
            await pool.close()

    def watch_for_stall(self) -> None:
        t = self.tally
        now = time.monotonic()
        if t.phase != "operating" or not self.lanes:
            return
        stalled_since = max(t.last_done_at, t.stalls[-1]["at_monotonic"] if t.stalls else 0.0)
        if now - stalled_since < STALL_REPORT_SECONDS:
            return
        lanes = [flight.line(now) for flight in sorted(self.lanes.values(), key=lambda f: f.since)]
        t.stalls.append(
            {
                "at_monotonic": now,
                "at_seconds": round(now - t.started_at),
                "done": t.done,
                "lanes": lanes,
            }
        )
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=stacks)
        with self.stall_path.open("a") as out:
            out.write(f"== no operation finished for {now - t.last_done_at:.0f} s ")
            out.write(f"at {now - t.started_at:.0f} s, {t.done} done\n")
            out.write("\n".join(lanes) + "\n" + stacks.getvalue() + "\n")

    def status_line(self) -> str:
        t = self.tally
        elapsed = time.monotonic() - t.started_at
        kills = sum(t.kills.values())
        now = time.monotonic()
        oldest = min(self.lanes.values(), key=lambda f: f.since, default=None)
        slowest = f" | oldest {oldest.line(now)}" if oldest and now - oldest.since > 30 else ""
        return (
            f"[{elapsed:6.0f}s] {t.phase}: ops {t.done}/{self.options.operations} "
            f"(skipped {t.skipped}, errors {t.errors}) | faults {t.faults} "
            f"webhook windows {t.webhook_windows} resends {t.resends} | kills {kills} | "
            f"stand-ins {self.evidence.stand_ins} | ledger violations {t.violations_seen}"
            f"{slowest}"
        )

    def report(
        self,
        violations: list[Violation],
        figures: dict[str, Any],
        set_up_seconds: float,
        operating_seconds: float,
        billing: str,
    ) -> dict[str, Any]:
        t = self.tally
        return {
            "seed": self.options.seed,
            "replay": self.options.replay_command(),
            "operations_planned": self.options.operations,
            "operations_done": t.done,
            "skipped": t.skipped,
            "errors": t.errors,
            "error_samples": t.error_samples,
            "operations_by_kind": self.evidence.outcomes,
            "customers": len(self.evidence.customers),
            "cards": len(self.evidence.cards),
            "authorizations": len(self.evidence.authorizations),
            "transactions": len(self.evidence.transactions),
            "stand_ins": self.evidence.stand_ins,
            "resent_events": self.evidence.resent,
            "provider_faults": t.faults,
            "webhook_windows": t.webhook_windows,
            "webhook_resends": t.resends,
            "kills": t.kills,
            "restart_failures": t.restart_failures,
            "stalls": [{k: v for k, v in s.items() if k != "at_monotonic"} for s in t.stalls],
            "quiesced": self.quiesced,
            "set_up_seconds": round(set_up_seconds, 1),
            "operating_seconds": round(operating_seconds, 1),
            "wall_seconds": round(time.monotonic() - t.started_at, 1),
            "billing_run": billing,
            "check_rounds": t.check_rounds,
            "violations": [v.line() for v in violations],
            **figures,
        }
