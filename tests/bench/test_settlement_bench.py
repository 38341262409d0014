"""The settlement bench at a tiny size: it prints its figures as one JSON
object, and the ingest it measured is right (records by class as the
simulator marked them, fixes posted once, the ledger sound). Times are
printed by the bench, never asserted on here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RECORDS = 5_000
MEMBER_RECORDS = 1_000
RUN_SECONDS_MAX = 240
STAGES = ("read", "match", "post")


@pytest.mark.timeout(RUN_SECONDS_MAX + 60)
def test_a_tiny_settlement_bench_prints_its_figures_and_a_correct_ingest() -> None:
    finished = subprocess.run(
        [
            *(sys.executable, "-m", "bench.settlement", "--json"),
            *("--records", str(RECORDS), "--member-records", str(MEMBER_RECORDS)),
            "--compare-workers",
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS_MAX,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads(finished.stdout)

    for name in ("records", "seconds", "records_per_second", "peak_rss_mb"):
        assert isinstance(report[name], int | float), name
    assert report["correct"] and report["problems"] == []
    assert [run["workers"] for run in report["compare_workers"]] == [1, 2]
    for run in report["runs"]:
        # The issuer's card records, those it settled twice, and the day's
        # totals (two per currency at most).
        assert run["counts"]["duplicate"] > 0
        assert RECORDS < run["records"] - run["counts"]["duplicate"] <= RECORDS + 10
        assert run["chunks"] == run["file"]["members"] == RECORDS // MEMBER_RECORDS + 1
        assert sum(run["chunks_by_worker"].values()) == run["chunks"]
        assert len(run["chunks_by_worker"]) <= run["workers"]
        assert set(run["stages"]) == set(STAGES)
        assert sum(run["counts"].values()) == run["records"]
        assert run["counts"]["missing_in_ledger"] and run["counts"]["amount_mismatch"]
        assert run["auto_fixed"] and run["operator_items"]
        assert len(run["balance_digest"]) == 64
        # Every process of the stack was measured: workers, simulators,
        # PostgreSQL, Temporal.
        for part in ("postgres", "temporal", "simulators", "worker-providers"):
            assert run["peak_rss_mb_by_part"][part] > 0, part
        assert run["peak_rss_mb"] == max(run["peak_rss_mb_by_part"].values())
