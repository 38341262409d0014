"""Curated mutations of the ledger's SQL functions, each run against the
ledger tests: `python -m bench.sql_mutation` prints which tests killed each.

A mutation is a text replacement in one migration. It is applied to the SQL
the migration runner reads (this module is also a pytest plugin, loaded with
`-p bench.sql_mutation`, that wraps `activities.migrate.discover`), so the
tests' template database is built from the mutated functions and no file in
the tree changes. Each mutant runs the ledger tests until the first failure.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

from activities import migrate

MUTANT_ENV = "CARDFLOW_SQL_MUTANT"
LEDGER_TESTS = "tests/activities/ledger"
# The random model test is left out: it is long, and the directed tests
# name the rule they prove.
DESELECT = "tests/activities/ledger/test_model.py"

# name: (migration version, original text, mutated text, what it breaks)
MUTATIONS: dict[str, tuple[int, str, str, str]] = {
    "available_ignores_pending": (
        14,
        "AND a > b_cp[di] - b_dp[di] - b_dpend[di] THEN",
        "AND a > b_cp[di] - b_dp[di] THEN",
        "a wallet's available balance leaves out its pending debits (holds)",
    ),
    "available_boundary": (
        14,
        "AND a > b_cp[di] - b_dp[di] - b_dpend[di] THEN",
        "AND a >= b_cp[di] - b_dp[di] - b_dpend[di] THEN",
        "spending exactly the available balance is refused",
    ),
    "credits_exceed_debits_off": (
        14,
        "ELSIF acc_cmned[ci] AND a > b_dp[ci] - b_cp[ci] - b_cpend[ci] THEN",
        "ELSIF false AND a > b_dp[ci] - b_cp[ci] - b_cpend[ci] THEN",
        "the credits_must_not_exceed_debits guard is off",
    ),
    "zero_amount_accepted": (
        14,
        "IF a IS NULL OR a <= 0 THEN",
        "IF a IS NULL OR a < 0 THEN",
        "a transfer of zero is accepted",
    ),
    "same_account_accepted": (
        14,
        "ELSIF di = ci AND di > 0 THEN",
        "ELSIF false THEN",
        "an account may pay itself",
    ),
    "atomic_batch_partial": (
        14,
        "IF rejected_at > 0 THEN\n        -- All or nothing",
        "IF false THEN\n        -- All or nothing",
        "an atomic batch keeps the items before the one rejected",
    ),
    # ledger_transfer_one (a lone transfer or hold) repeats ledger_submit's
    # rules for one item, so each rule has a mutant there too. The
    # ledger_submit mutants above are still killed: by the batch tests and
    # by the test that runs the two functions side by side.
    "one_available_ignores_pending": (
        20,
        "ELSIF d_dmnec AND a > d_cp - d_dp - d_dpend THEN",
        "ELSIF d_dmnec AND a > d_cp - d_dp THEN",
        "a lone transfer: a wallet's available balance leaves out its holds",
    ),
    "one_available_boundary": (
        20,
        "ELSIF d_dmnec AND a > d_cp - d_dp - d_dpend THEN",
        "ELSIF d_dmnec AND a >= d_cp - d_dp - d_dpend THEN",
        "a lone transfer: spending exactly the available balance is refused",
    ),
    "one_credits_exceed_debits_off": (
        20,
        "ELSIF c_cmned AND a > c_dp - c_cp - c_cpend THEN",
        "ELSIF false AND a > c_dp - c_cp - c_cpend THEN",
        "a lone transfer: the credits_must_not_exceed_debits guard is off",
    ),
    "one_zero_amount_accepted": (
        20,
        "IF a IS NULL OR a <= 0 THEN",
        "IF a IS NULL OR a < 0 THEN",
        "a lone transfer of zero is accepted",
    ),
    "one_same_account_accepted": (
        20,
        "ELSIF c_id = d_id THEN",
        "ELSIF false THEN",
        "a lone transfer: an account may pay itself",
    ),
    "one_closed_credit_accepted": (
        20,
        "ELSIF d_closed OR c_closed THEN",
        "ELSIF d_closed THEN",
        "a lone transfer: a closed account may be credited",
    ),
    "one_expired_hold_accepted": (
        20,
        "ELSIF p_pending AND p_expires <= now_ts THEN",
        "ELSIF false THEN",
        "a lone hold may expire in the past",
    ),
    "one_debit_overflow_unchecked": (
        20,
        "ELSIF a > total_max - d_dp - d_dpend THEN",
        "ELSIF false THEN",
        "a lone transfer overflowing the debit's totals is not refused as balance_overflow",
    ),
    "one_credit_overflow_unchecked": (
        20,
        "ELSIF a > total_max - c_cp - c_cpend THEN",
        "ELSIF false THEN",
        "a lone transfer overflowing the credit's totals is not refused as balance_overflow",
    ),
    "one_key_reuse_replays": (
        20,
        "IF prior_hash = p_hash THEN",
        "IF true THEN",
        "a lone transfer's key reused with another payload replays the first outcome",
    ),
    "one_hold_posted": (
        20,
        "IF p_pending THEN\n        d_dpend := d_dpend + a;",
        "IF false THEN\n        d_dpend := d_dpend + a;",
        "a lone hold moves posted balances instead of pending ones",
    ),
    "post_after_expiry": (
        1,
        "ELSIF p_action = 'post' AND now_ts > hold.expires_at THEN",
        "ELSIF p_action = 'post' AND false THEN",
        "a hold is posted after it expired",
    ),
    "post_more_than_held": (
        1,
        "AND (p_amount <= 0 OR p_amount > hold.amount_minor) THEN",
        "AND (p_amount <= 0) THEN",
        "a hold is posted for more than it holds",
    ),
    "resolution_key_reuse_replays": (
        1,
        "IF prior.payload_hash <> p_hash THEN",
        "IF false THEN",
        "a resolution key reused with another payload replays the first outcome",
    ),
    "partial_rest_released": (
        8,
        "IF rest > 0 THEN",
        "IF rest > 0 AND false THEN",
        "the rest of a partly resolved hold is released instead of held again",
    ),
}


def mutated(migrations: list[migrate.Migration], name: str) -> list[migrate.Migration]:
    version, original, replacement, _ = MUTATIONS[name]
    out = []
    for migration in migrations:
        if migration.version == version:
            # A mutation that no longer matches exactly once is stale, not a pass.
            assert migration.sql.count(original) == 1, f"{name}: text not found once"
            migration = dataclasses.replace(
                migration, sql=migration.sql.replace(original, replacement)
            )
        out.append(migration)
    return out


_active = os.environ.get(MUTANT_ENV)
if _active:
    _discover = migrate.discover

    def _mutated_discover(directory: Path = migrate.MIGRATIONS_DIR) -> list[migrate.Migration]:
        return mutated(_discover(directory), str(_active))

    migrate.discover = _mutated_discover


def run(name: str) -> tuple[bool, str]:
    """Whether the ledger tests killed the mutant, and the first test that failed."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "bench.sql_mutation",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "--deselect",
            DESELECT,
            LEDGER_TESTS,
        ],
        env={**os.environ, MUTANT_ENV: name},
        capture_output=True,
        text=True,
    )
    failed = re.search(r"^FAILED (\S+)", done.stdout, re.MULTILINE)
    return done.returncode != 0, failed.group(1) if failed else done.stdout[-200:].strip()


def main() -> int:
    names = sys.argv[1:] or list(MUTATIONS)
    killed = 0
    for name in names:
        dead, by = run(name)
        killed += dead
        print(f"{name:<30} {'killed' if dead else 'SURVIVED':<9} {by if dead else ''}")
        print(f"{'':<30} {MUTATIONS[name][3]}")
    print(f"\nSQL mutants killed: {killed}/{len(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
