"""The embedded stack as a user runs it: `cardflow dev up` in a home of the test's own.

`DevStack` drives it only through the `cardflow` command. `demo_stack` is one
such stack, shared by the package's operator-facing tests, on which
`cardflow demo` has run once, so every process has left workflows, metrics
and logs behind to look at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from starters.devstack.processes import free_port_run
from tests.conftest import free_port, scratch_directory
from workers.settings import Settings, load_settings
from workers.telemetry import METRICS_PARTS

STACK_ENV_DROPPED = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "CARDFLOW_ENCRYPTION_KEYS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


@dataclass
class DevStack:
    home: Path
    env: dict[str, str]

    def cardflow(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "starters.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> tuple[int, dict[str, Any]]:
        completed = self.cardflow("dev", "status", "--json")
        return completed.returncode, json.loads(completed.stdout)

    def settings(self) -> Settings:
        overrides = {
            k: v for k, v in self.env.items() if k.startswith("CARDFLOW_") or k in ("DATABASE_URL",)
        }
        return load_settings(**overrides)

    def record_pid(self, part: str) -> int:
        return int(json.loads((self.home / "run" / f"{part}.json").read_text())["pid"])


def stack_env(home: Path, **ports: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STACK_ENV_DROPPED}
    env.update(
        CARDFLOW_HOME=str(home),
        CARDFLOW_TEMPORAL_PORT=str(ports.get("temporal", free_port())),
        CARDFLOW_TEMPORAL_UI_PORT=str(ports.get("ui", free_port())),
        CARDFLOW_POSTGRES_PORT=str(ports.get("postgres", free_port())),
        CARDFLOW_CODEC_PORT=str(ports.get("codec", free_port())),
        CARDFLOW_SIMULATORS_PORT=str(ports.get("simulators", free_port())),
        CARDFLOW_GATEWAY_PORT=str(ports.get("gateway", free_port())),
        CARDFLOW_METRICS_PORT_BASE=str(ports.get("metrics", free_port_run(len(METRICS_PARTS)))),
        CARDFLOW_TASK_QUEUE_PREFIX=f"devstack-{uuid.uuid4().hex[:8]}",
    )
    return env


@dataclass
class DemoStack:
    """A running dev stack after one `cardflow demo`, with what the demo printed."""

    stack: DevStack
    demo_output: str


@pytest.fixture(scope="package")
def demo_stack() -> Iterator[DemoStack]:
    with scratch_directory("cardflow-test-demo-") as home:
        stack = DevStack(home, stack_env(home))
        up = stack.cardflow("dev", "up", "--json")
        try:
            assert up.returncode == 0, f"dev up failed:\n{up.stdout}\n{up.stderr}"
            demo = stack.cardflow("demo", timeout=420)
            assert demo.returncode == 0, f"demo failed:\n{demo.stdout}\n{demo.stderr}"
            yield DemoStack(stack, demo.stdout)
        finally:
            stack.cardflow("dev", "down")
