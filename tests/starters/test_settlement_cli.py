"""`cardflow settlement ingest` as an operator runs it, on the embedded
stack `cardflow dev up` starts: a bar per stage while the day's file is
ingested and the items over the threshold wait for decisions (one decided
with `cardflow settlement decide`), then the summary table."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import date

import asyncpg
from temporalio.service import RPCError, RPCStatusCode

from bench.settlement import prepare_file, seed_platform
from schemas.reconciliation import DecisionAction
from schemas.settlement_ingest import (
    SettlementDecision,
    SettlementIngestPolicy,
    SettlementIngestStatus,
)
from starters import settlement
from tests import polling
from tests.starters.conftest import DemoStack
from workers.client import connect
from workflows.reconciliation import STAGE_AWAITING_DECISIONS

# A day of its own on the shared demo stack, long settled.
DAY = date(2025, 2, 3)
RECORDS = 2_000
MEMBER_RECORDS = 500
COMMAND_SECONDS_MAX = 180


async def test_the_ingest_command_shows_a_bar_per_stage_and_ends_with_the_summary(
    demo_stack: DemoStack,
) -> None:
    stack = demo_stack.stack
    settings = stack.settings()
    manifest, _ = await prepare_file(settings, DAY, RECORDS, MEMBER_RECORDS)
    pool = await asyncpg.create_pool(settings.effective_database_url, min_size=1, max_size=2)
    try:
        expected = await seed_platform(settings, pool, DAY, SettlementIngestPolicy())
    finally:
        await pool.close()
    assert expected.operator_items >= 2, expected

    command = [sys.executable, "-m", "starters.cli", "settlement"]
    # Wide enough that no bar or caption wraps.
    env = {**stack.env, "COLUMNS": "200"}
    ingesting = await asyncio.create_subprocess_exec(
        *command,
        "ingest",
        "--date",
        DAY.isoformat(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    client = await connect(settings)

    async def now() -> SettlementIngestStatus | None:
        try:
            return await settlement.status(client, DAY)
        except RPCError as error:
            if error.status is not RPCStatusCode.NOT_FOUND:
                raise
            return None  # the command has not started it yet

    waiting = await polling.until(
        now,
        lambda found: found is not None and found.stage == STAGE_AWAITING_DECISIONS,
        "the ingest waiting for decisions",
        COMMAND_SECONDS_MAX,
    )
    assert waiting is not None and len(waiting.items) == expected.operator_items
    first, *rest = waiting.items
    decided = await asyncio.to_thread(
        subprocess.run,
        [
            *command,
            "decide",
            "--date",
            DAY.isoformat(),
            first.record_id,
            "--dismiss",
            "--reason",
            "disputed with the issuer",
            "--operator",
            "ops",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS_MAX,
    )
    assert decided.returncode == 0, decided.stderr
    assert '"state": "dismissed"' in decided.stdout, decided.stdout
    for item in rest:
        await settlement.decide(
            client,
            DAY,
            SettlementDecision(
                item_id=item.record_id,
                action=DecisionAction.ADJUST,
                operator="ops",
                reason="the issuer is right",
            ),
        )
    stdout_bytes, stderr_bytes = await asyncio.wait_for(
        ingesting.communicate(), COMMAND_SECONDS_MAX
    )
    stdout, stderr = stdout_bytes.decode(), stderr_bytes.decode()
    assert ingesting.returncode == 0, stderr + stdout

    # Each stage's bar, finished.
    members = len(manifest.members)
    items = expected.operator_items
    for label, done in (
        ("manifest", "1/1"),
        ("chunks", f"{members}/{members}"),
        ("records", f"{manifest.record_count}/{manifest.record_count}"),
        ("day totals", "1/1"),
        ("decisions", f"{items}/{items}"),
    ):
        assert re.search(rf"^{label}\s.*\s{done}\s", stdout, re.MULTILINE), (label, stdout)
    # The summary: every class with its count, the fixes and the decisions.
    assert f"{manifest.record_count} records, {members} chunks" in stdout, stdout
    for record_class, count in expected.classes.items():
        assert re.search(rf"│ {record_class}\s+│\s+{count} │", stdout), (record_class, stdout)
    fixes = f"fixes: {expected.auto_fixed} fixed, {items} for operators"
    assert f"{fixes} ({items - 1} adjusted, 1 dismissed, 0 undecided)" in stdout, stdout
    assert re.search(r"^drift: \d+ records, \d+ bps", stdout, re.MULTILINE), stdout
    assert re.search(r"^day totals USD: interchange \d+, fees \d+$", stdout, re.MULTILINE), stdout
