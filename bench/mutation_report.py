"""Kill rate per module, and the surviving mutants, of the last `mutmut run`.

Reads `mutmut results --all true` (one `module.function__mutmut_N: status`
line per mutant) and prints, per mutated module, how many of its mutants the
fast unit tests killed, then every mutant that lived with its diff
(`mutmut show`). A timeout counts as killed: the mutant did not pass.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

MUTMUT = str(Path(sys.executable).with_name("mutmut"))
KILLED = {"killed", "timeout"}
# What the issue asks of each module.
KILL_RATE_TARGET = 0.90


def results() -> list[tuple[str, str]]:
    out = subprocess.run(
        [MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    rows = []
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if "__mutmut_" in name:
            rows.append((name, status))
    return rows


def module_of(name: str) -> str:
    # schemas.topup.x_describe__mutmut_3 -> schemas.topup
    return name.split(".x", 1)[0]


def main() -> int:
    rows = results()
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in rows:
        statuses[module_of(name)][status] += 1
    print(f"{'module':<24} {'killed':>7} {'total':>6} {'rate':>7}  other")
    below = []
    for module in sorted(statuses):
        counts = statuses[module]
        killed, total = sum(counts[s] for s in KILLED), sum(counts.values())
        other = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in KILLED)
        print(f"{module:<24} {killed:>7} {total:>6} {killed / total:>7.1%}  {other}")
        if killed / total < KILL_RATE_TARGET:
            below.append(module)
    lived = [name for name, status in rows if status not in KILLED]
    print(f"\n{len(lived)} mutant(s) not killed:")
    for name in lived:
        print(f"\n--- {name}")
        shown = subprocess.run([MUTMUT, "show", name], capture_output=True, text=True)
        print(shown.stdout.rstrip())
    if below:
        print(f"\nbelow {KILL_RATE_TARGET:.0%}: {', '.join(below)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
