"""Signed webhooks, delivered at least once, in order or not, once or twice.

Every event is written to the store's outbox before delivery, so a restart
resumes it. A delivery is a POST of {"id", "type", "created_at", "data"} with
Standard Webhooks headers (webhook-id = event id, webhook-timestamp,
webhook-signature); anything but a 2xx is retried with exponential backoff.
For tests the outbox can hold events and release them in reverse order,
deliver every event twice, and resend an event delivered long ago (a
provider dashboard's "resend").
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from standardwebhooks import Webhook

from simulators.framework.store import Store, now_iso

log = logging.getLogger("cardflow.simulators.webhooks")

DELIVERY_ATTEMPTS_MAX = 10
BACKOFF_INITIAL_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 30.0
DELIVERY_TIMEOUT_SECONDS = 5.0
POLL_INTERVAL_SECONDS = 0.05
# The events due for delivery, oldest first, a round at a time (the store's
# outbox_due index answers it without reading delivered events).
DUE_EVENTS_QUERY = (
    "SELECT seq, simulator, body, attempts FROM outbox"
    " WHERE delivered_at IS NULL AND next_attempt_at <= ?"
    " ORDER BY next_attempt_at, seq LIMIT 100"
)


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret: str  # whsec_... (Standard Webhooks)


def webhook_url(gateway_url: str, provider: str) -> str:
    """Where cardflow's gateway at `gateway_url` takes a provider's webhooks."""
    return f"{gateway_url}/webhooks/{provider}"


class WebhookOutbox:
    def __init__(self, store: Store, targets: dict[str, WebhookTarget]) -> None:
        self.store = store
        self.targets = targets
        self.hold = False
        self.duplicate = False
        self._wake = asyncio.Event()

    def emit(self, simulator: str, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        """Record an event for delivery; returns the event as it will be sent."""
        event = {
            "id": f"evt_{secrets.token_hex(12)}",
            "type": event_type,
            "created_at": now_iso(),
            "data": data,
        }
        self.store.execute(
            "INSERT INTO outbox (simulator, event_id, body, next_attempt_at) VALUES (?, ?, ?, ?)",
            simulator,
            event["id"],
            json.dumps(event),
            time.time(),
        )
        self._wake.set()
        return event

    def release(self, order: Literal["forward", "reverse"] = "forward") -> int:
        """Stop holding; deliver what was held, oldest or newest first."""
        rows = self.store.execute("SELECT seq FROM outbox WHERE delivered_at IS NULL ORDER BY seq")
        # Reverse order is made by due times one tick apart.
        seqs = [row[0] for row in rows]
        if order == "reverse":
            seqs.reverse()
        start = time.time()
        for offset, seq in enumerate(seqs):
            self.store.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE seq = ?", start + offset * 0.001, seq
            )
        self.hold = False
        self._wake.set()
        return len(seqs)

    def resend(
        self, back: int, simulator: str | None = None, about: str | None = None
    ) -> str | None:
        """A provider's "resend" from its dashboard: the delivered event `back`
        deliveries before the newest is sent again, signed afresh; with
        `about`, the first delivered event about that object (its data's id).
        Returns its id, or None when there is no such event."""
        if about is None:
            rows = self.store.execute(
                "SELECT seq, event_id FROM outbox WHERE delivered_at IS NOT NULL"
                " AND (? IS NULL OR simulator = ?) ORDER BY seq DESC LIMIT 1 OFFSET ?",
                simulator,
                simulator,
                back,
            )
        else:
            rows = self.store.execute(
                "SELECT seq, event_id FROM outbox WHERE delivered_at IS NOT NULL"
                " AND (? IS NULL OR simulator = ?) AND json_extract(body, '$.data.id') = ?"
                " ORDER BY seq LIMIT 1",
                simulator,
                simulator,
                about,
            )
        if not rows:
            return None
        seq, event_id = rows[0]
        self.store.execute(
            "UPDATE outbox SET delivered_at = NULL, next_attempt_at = ? WHERE seq = ?",
            time.time(),
            seq,
        )
        self._wake.set()
        return str(event_id)

    def deliveries(self, *, undelivered: bool = False) -> list[dict[str, Any]]:
        """Every event and how its delivery went (or only those still to deliver)."""
        rows = self.store.execute(
            "SELECT simulator, event_id, body, attempts, deliveries, delivered_at, last_status"
            " FROM outbox WHERE (? = 0 OR delivered_at IS NULL) ORDER BY seq",
            int(undelivered),
        )
        return [
            {
                "simulator": r[0],
                "event_id": r[1],
                "type": json.loads(r[2])["type"],
                "about": json.loads(r[2])["data"].get("id"),
                "attempts": r[3],
                "deliveries": r[4],
                "delivered_at": r[5],
                "last_status": r[6],
            }
            for r in rows
        ]

    def pending(self) -> int:
        return int(
            self.store.execute("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")[0][0]
        )

    async def run(self) -> None:
        """Deliver due events forever (cancel to stop)."""
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_SECONDS) as http:
            while True:
                delivered_any = False
                if not self.hold:
                    rows = self.store.execute(DUE_EVENTS_QUERY, time.time())
                    for seq, simulator, body, attempts in rows:
                        await self._deliver(http, seq, simulator, body, attempts)
                        delivered_any = True
                if not delivered_any:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_SECONDS)
                    except TimeoutError:
                        pass

    async def _deliver(
        self, http: httpx.AsyncClient, seq: int, simulator: str, body: str, attempts: int
    ) -> None:
        target = self.targets.get(simulator)
        if target is None:
            self.store.execute(
                "UPDATE outbox SET last_status = ?, next_attempt_at = ? WHERE seq = ?",
                "no webhook target configured",
                time.time() + 3600,
                seq,
            )
            return
        # The batch was read a moment ago; a reset (or another delivery) since
        # then means this event is no longer ours to send.
        if not self.store.execute(
            "SELECT 1 FROM outbox WHERE seq = ? AND delivered_at IS NULL", seq
        ):
            return
        event_id = json.loads(body)["id"]
        copies = 2 if self.duplicate else 1
        status = ""
        for copy in range(copies):
            # A duplicate is a redelivery: signed afresh, a second later.
            status = await self._post(http, target, event_id, body, delay_seconds=copy)
            if not status.startswith("2"):
                break
        attempts += 1
        if status.startswith("2"):
            self.store.execute(
                "UPDATE outbox SET attempts = ?, deliveries = deliveries + ?, delivered_at = ?,"
                " last_status = ? WHERE seq = ?",
                attempts,
                copies,
                now_iso(),
                status,
                seq,
            )
            return
        delay = min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2 ** (attempts - 1))
        give_up = attempts >= DELIVERY_ATTEMPTS_MAX
        self.store.execute(
            "UPDATE outbox SET attempts = ?, last_status = ?, next_attempt_at = ? WHERE seq = ?",
            attempts,
            status + (" (gave up)" if give_up else ""),
            time.time() + (10**9 if give_up else delay),
            seq,
        )

    async def _post(
        self,
        http: httpx.AsyncClient,
        target: WebhookTarget,
        event_id: str,
        body: str,
        *,
        delay_seconds: int = 0,
    ) -> str:
        stamp = datetime.now(UTC) + timedelta(seconds=delay_seconds)
        headers = {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": Webhook(target.secret).sign(event_id, stamp, body),
        }
        try:
            response = await http.post(target.url, content=body, headers=headers)
        except httpx.HTTPError as error:
            return f"error: {type(error).__name__}"
        return str(response.status_code)
