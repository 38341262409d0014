"""Waits on the simulators' webhooks. Each fails, naming what did come, when its
signal never comes; and that nothing more is on its way is read from the
simulators' own record of what they sent, never from a quiet pause."""

from __future__ import annotations

from typing import Any

from tests.polling import until
from tests.providers import ReceivedWebhook, SimulatorProcess, WebhookReceiver

# Far longer than any delivery here takes (a few retries at most), so only a
# delivery that never comes reaches it.
DELIVERY_WAIT_SECONDS_MAX = 15.0


def described(received: list[ReceivedWebhook]) -> list[tuple[str, str]]:
    return [(r.provider, r.event["type"]) for r in received]


async def received(
    sink: WebhookReceiver, count: int, seconds: float = DELIVERY_WAIT_SECONDS_MAX
) -> list[ReceivedWebhook]:
    """What the sink has received, once it holds at least `count` webhooks; fails,
    naming those that did arrive, when the rest do not come within `seconds`."""
    arrived = await sink.wait_for(count, seconds)
    assert len(arrived) >= count, (
        f"{len(arrived)} of {count} webhooks arrived within {seconds} s: {described(arrived)}"
    )
    return list(arrived)


async def all_delivered(
    sim: SimulatorProcess, seconds: float = DELIVERY_WAIT_SECONDS_MAX
) -> list[dict[str, Any]]:
    """The simulators' record of every event they have emitted, oldest first, once
    each of them is delivered (its receiver answered 2xx).

    A simulator emits an event while answering the call that causes it (none
    emits from a background task), so once a test's calls have been answered
    this record holds every webhook they will ever send; and the sink records a
    webhook before it answers, so it holds every event recorded as delivered.
    Fails, naming the events still undelivered, when they are not all
    delivered within `seconds`.
    """

    async def undelivered() -> list[dict[str, Any]]:
        return list(sim.admin("GET", "/webhooks?undelivered=true"))

    await until(undelivered, lambda events: not events, "every event delivered", seconds)
    return list(sim.admin("GET", "/webhooks"))


async def everything_received(
    sim: SimulatorProcess, sink: WebhookReceiver
) -> list[ReceivedWebhook]:
    """Every webhook the simulators will send for the calls answered so far, as the
    sink received them: once the simulators record each event they emitted as
    delivered, and delivered once, the sink must hold exactly those events in
    the order they were emitted, and nothing else can still arrive."""
    record = await all_delivered(sim)
    assert [r.event_id for r in sink.received] == [row["event_id"] for row in record], (
        f"received {described(sink.received)}, the simulators sent"
        f" {[(row['simulator'], row['type']) for row in record]}"
    )
    assert [row["deliveries"] for row in record] == [1] * len(record), record
    return list(sink.received)
