"""The money controls an audit broke by hand, each broken again and run
against the tests that should notice: `python -m bench.audit_changes [name...]`
prints, per change, every test that failed (at least two must).

A change to Python code is applied to a fresh `git worktree` of HEAD, and the
tests run from there (its modules come before the installed tree on the
path); a change to the ledger's SQL is one of bench/sql_mutation's, applied
to the SQL the migration runner reads. Nothing in this tree changes.
A change whose text no longer matches exactly once is reported as stale.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.sql_mutation import MUTANT_ENV, MUTATIONS

REPOSITORY = Path(__file__).resolve().parent.parent
KILLED_BY_AT_LEAST = 2


@dataclass(frozen=True)
class Change:
    what: str
    tests: tuple[str, ...]
    # A replacement in one file (path, original, mutated) ...
    path: str = ""
    original: str = ""
    mutated: str = ""
    # ... or one of bench/sql_mutation's mutations of the ledger's SQL.
    sql_mutation: str = ""


LEDGER_TESTS = ("tests/activities/ledger",)
CARD_LIMIT_TESTS = ("tests/schemas/test_card_rules.py", "tests/workflows/test_card_limits.py")
CHANGES: dict[str, Change] = {
    "per_transaction_ignores_increments": Change(
        "the card's per-transaction limit ignores earlier increments",
        CARD_LIMIT_TESTS,
        path="schemas/card_rules.py",
        original="and authorized_minor + amount > limits.per_transaction_minor",
        mutated="and amount > limits.per_transaction_minor",
    ),
    "daily_ignores_spent_today": Change(
        "the card's daily limit ignores what was already spent today",
        CARD_LIMIT_TESTS,
        path="schemas/card_rules.py",
        original="card.spent_day_minor + amount > limits.per_day_minor",
        mutated="amount > limits.per_day_minor",
    ),
    "available_ignores_pending": Change(
        "the ledger's available-balance check ignores pending holds",
        LEDGER_TESTS,
        sql_mutation="available_ignores_pending",
    ),
    "debt_collected_from_gross": Change(
        "the top-up's debt collection taken from the gross credit, not net of fee",
        ("tests/workflows/test_debt_collection.py", "tests/workflows/test_topup_risks.py"),
        path="workflows/topup.py",
        original="net = self._credited_minor - self._fee_minor",
        mutated="net = self._credited_minor",
    ),
    "debt_guard_off": Change(
        "the debt account's guard (credits never exceed debits) turned off",
        (*LEDGER_TESTS, "tests/workflows/test_debt_collection.py"),
        sql_mutation="credits_exceed_debits_off",
    ),
    "fee_rounded_up": Change(
        "the top-up fee rounded up instead of down",
        ("tests/schemas", "tests/workflows/test_topup.py"),
        path="schemas/topup.py",
        original="credited_minor * self.bps // BASIS_POINTS_PER_UNIT",
        mutated="-(-credited_minor * self.bps // BASIS_POINTS_PER_UNIT)",
    ),
}


def failing_tests(change: Change, tree: Path) -> list[str]:
    env = dict(os.environ)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    if change.sql_mutation:
        assert change.sql_mutation in MUTATIONS, change.sql_mutation
        env[MUTANT_ENV] = change.sql_mutation
        command += ["-p", "bench.sql_mutation"]
    else:
        source = tree / change.path
        text = source.read_text()
        if text.count(change.original) != 1:
            raise LookupError(f"{change.path}: {change.original!r} not found exactly once")
        source.write_text(text.replace(change.original, change.mutated))
    done = subprocess.run(
        [*command, "--tb=no", "-rf", *change.tests],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if not change.sql_mutation:
        subprocess.run(["git", "checkout", "--", change.path], cwd=tree, check=True)
    failed = re.findall(r"^FAILED (\S+)", done.stdout, re.MULTILINE)
    if done.returncode not in (0, 1):
        failed.append(f"(pytest exited {done.returncode}: {done.stdout[-300:].strip()})")
    return failed


def main() -> int:
    names = sys.argv[1:] or list(CHANGES)
    weak = 0
    with tempfile.TemporaryDirectory(prefix="cardflow-audit-") as directory:
        tree = Path(directory) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(tree), "HEAD"],
            cwd=REPOSITORY,
            check=True,
        )
        try:
            for name in names:
                change = CHANGES[name]
                try:
                    failed = failing_tests(change, tree)
                except LookupError as stale:
                    print(f"{name}: STALE ({stale})")
                    weak += 1
                    continue
                verdict = "caught" if len(failed) >= KILLED_BY_AT_LEAST else "NOT CAUGHT ENOUGH"
                weak += len(failed) < KILLED_BY_AT_LEAST
                print(f"{name}: {verdict} by {len(failed)} test(s) — {change.what}")
                for test in failed:
                    print(f"    {test}")
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=REPOSITORY, check=True
            )
    caught = len(names) - weak
    print(f"\n{caught}/{len(names)} changes caught by at least {KILLED_BY_AT_LEAST} tests")
    return 1 if weak else 0


if __name__ == "__main__":
    raise SystemExit(main())
