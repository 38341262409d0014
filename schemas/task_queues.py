"""The three task queues of cardflow, derived from one prefix.

Production uses the default prefix; tests give every test its own prefix so
its workers never pick up another test's tasks.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TASK_QUEUE_PREFIX = "cardflow"
TASK_QUEUE_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$"


class TaskQueues(BaseModel):
    model_config = ConfigDict(frozen=True)

    prefix: str = Field(default=DEFAULT_TASK_QUEUE_PREFIX, pattern=TASK_QUEUE_PREFIX_PATTERN)

    @property
    def workflows(self) -> str:
        """Workflow tasks of every process."""
        return f"{self.prefix}-workflows"

    @property
    def ledger(self) -> str:
        """Ledger activities, bounded by the database pool."""
        return f"{self.prefix}-ledger"

    @property
    def providers(self) -> str:
        """Calls to outside providers, rate limited per worker."""
        return f"{self.prefix}-providers"

    def by_kind(self) -> dict[str, str]:
        return {"workflows": self.workflows, "ledger": self.ledger, "providers": self.providers}


QUEUE_KINDS: tuple[str, ...] = ("workflows", "ledger", "providers")
