"""A serving process keeps what it started with out of the collector's view."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.fast

# Imports the gateway's app (as `cardflow gateway` does), then freezes.
PROBE = """
import gc
from starters.gateway.app import create_app
from workers.heap import freeze_startup
assert gc.get_freeze_count() == 0
freeze_startup()
frozen = gc.get_freeze_count()
# Everything alive at the freeze, the app's modules among them, is out of
# every generation a collection walks.
print(frozen, sum(gc.get_count()), len(gc.get_objects(generation=2)))
"""


def test_freezing_at_startup_leaves_a_full_collection_only_what_came_after() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    frozen, young, old = (int(n) for n in completed.stdout.split())
    assert frozen > 100_000
    assert old < 1_000 and young < 1_000
