"""Fixtures of the ledger's tests."""

from __future__ import annotations

import asyncpg
import pytest

from activities.ledger import Ledger


@pytest.fixture
def ledger(ledger_pool: asyncpg.Pool) -> Ledger:
    """The ledger over the test's own database."""
    return Ledger(ledger_pool)
