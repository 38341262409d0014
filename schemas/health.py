"""Input and result of the Ping health-check workflow."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PingInput(BaseModel):
    """Which activity task queues to probe, and how long to wait for each."""

    model_config = ConfigDict(extra="forbid")

    ledger_task_queue: str = Field(min_length=1, max_length=200)
    providers_task_queue: str = Field(min_length=1, max_length=200)
    # Who asked: an operator or a tool name. Kept to show that operator data is
    # encrypted in histories like any other payload.
    requested_by: str = Field(default="cardflow", max_length=200)
    # A worker that is down never picks the activity up, and one that is hung
    # never finishes it; this bounds how long the probe waits in both cases
    # before calling that queue unhealthy.
    probe_timeout_seconds: int = Field(default=5, ge=1, le=300)
    # Gateway check: after probing, wait for this many distinct webhook events
    # (signal `webhook_event` or update `record_webhook_event`).
    webhook_events_expected: int = Field(default=0, ge=0, le=1_000)
    webhook_wait_seconds: int = Field(default=60, ge=1, le=3_600)


class WebhookEventNote(BaseModel):
    """A provider event delivered to a workflow by the gateway."""

    event_id: str = Field(min_length=1, max_length=200)
    event_type: str = Field(min_length=1, max_length=200)
    provider: str = Field(min_length=1, max_length=64)
    sequence: int | None = None


class QueueHealth(BaseModel):
    """What one task queue's worker answered, or why it did not."""

    task_queue: str
    answered: bool
    worker_identity: str | None = None
    detail: str = ""


class PingResult(BaseModel):
    """The Ping workflow ran on the workflow worker; its activities report the rest."""

    workflow_task_queue: str
    requested_by: str
    ledger: QueueHealth
    providers: QueueHealth
    # Webhook events in the order they arrived, each once.
    webhook_events: list[WebhookEventNote] = Field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.ledger.answered and self.providers.answered
