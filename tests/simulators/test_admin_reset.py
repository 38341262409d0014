"""A reset leaves the simulators as if started afresh, optionally towards
another gateway and with readable ids from another range: what lets one
simulator process serve many stacks one after another."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.polling import eventually
from tests.providers import WebhookReceiver, running, simulator_process, webhook_receiver

CARDHOLDER = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "address": {
        "line1": "1 Main St",
        "city": "Springfield",
        "postal_code": "12345",
        "country": "US",
    },
}
DELIVERY_SECONDS_MAX = 10


def types(receiver: WebhookReceiver) -> list[str]:
    return [hook.event["type"] for hook in receiver.received]


async def delivered(receiver: WebhookReceiver, event_type: str) -> None:
    async def arrived() -> bool:
        return event_type in types(receiver)

    await eventually(arrived, f"{event_type} delivered", DELIVERY_SECONDS_MAX)


ID_OFFSET = 7_000


async def test_a_reset_sends_webhooks_to_the_new_gateway_and_numbers_ids_from_the_new_range(
    tmp_path: Path,
) -> None:
    async with (
        webhook_receiver(free_port()) as first,
        webhook_receiver(free_port()) as second,
    ):
        sim = simulator_process(tmp_path, free_port(), first.url)
        first.secrets.update(sim.secrets)
        second.secrets.update(sim.secrets)
        with running(sim):
            async with httpx.AsyncClient(base_url=sim.provider_url("issuer")) as issuer:
                created = await issuer.post("/v1/cardholders", json=CARDHOLDER)
                assert created.status_code == 201, created.text
                assert created.json()["id"] == "ch_000001"
                sim.admin("POST", "/webhooks/emit", {"simulator": "bank", "type": "t.one"})
                await delivered(first, "t.one")

                sim.fault(kind="error", path_prefix="/issuer/v1/cards", status=503)
                sim.reset(gateway_url=second.url, id_offset=ID_OFFSET)

                assert sim.admin("GET", "/faults") == []
                # The state is gone, and ids start from the new range.
                gone = await issuer.get("/v1/cardholders/ch_000001")
                assert gone.status_code == 404
                again = await issuer.post("/v1/cardholders", json=CARDHOLDER)
                assert again.json()["id"] == f"ch_{ID_OFFSET + 1:06d}"
                sim.admin("POST", "/webhooks/emit", {"simulator": "bank", "type": "t.two"})
                await delivered(second, "t.two")
                assert "t.one" not in types(second)
                assert "t.two" not in types(first)
                assert first.rejected == second.rejected == 0

            # A restart keeps the new gateway (the process's settings follow a reset).
            sim.stop()
            sim.start()
            sim.admin("POST", "/webhooks/emit", {"simulator": "bank", "type": "t.three"})
            await delivered(second, "t.three")
            assert "t.three" not in types(first)
