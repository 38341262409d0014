"""The notification channels simulator: sends per channel, validation naming the field,
dedupe keys, listing, and a channel made to fail."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.simulators.waiting import everything_received

EMAIL = {
    "channel": "email",
    "to": "ada@example.com",
    "subject": "Your card is on its way",
    "body": "It ships today.",
    "template": "card.shipped",
}
PUSH = {"channel": "push", "to": "fcm:APA91bHun4MxP5egoKMwt2KZFBaFUH", "body": "Top-up received"}
TELEGRAM = {"channel": "telegram", "to": "-1001234567890", "body": "Card frozen"}


def send(sim: Any, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(
        f"{sim.provider_url('notify')}/v1/messages", json=body, headers=headers, timeout=5
    )


def listing(sim: Any, **params: Any) -> httpx.Response:
    return httpx.get(f"{sim.provider_url('notify')}/v1/messages", params=params, timeout=5)


async def test_each_channel_sends_and_reports_delivery(sim: Any, webhook_sink: Any) -> None:
    sent = []
    for body in (EMAIL, PUSH, TELEGRAM):
        response = send(sim, body)
        assert response.status_code == 201, response.text
        sent.append(response.json())
    assert [m["status"] for m in sent] == ["sent", "sent", "sent"]
    assert all(m["id"].startswith("msg_") and m["delivered_at"] for m in sent)
    assert sent[0]["subject"] == EMAIL["subject"] and sent[1]["subject"] is None

    receipts = await everything_received(sim, webhook_sink)
    assert [r.event["type"] for r in receipts] == ["message.delivered"] * 3
    assert [r.event["data"]["id"] for r in receipts] == [m["id"] for m in sent]
    for message in sent:
        found = httpx.get(f"{sim.provider_url('notify')}/v1/messages/{message['id']}")
        assert found.status_code == 200 and found.json() == message
    unknown = httpx.get(f"{sim.provider_url('notify')}/v1/messages/msg_none")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "no message msg_none"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**EMAIL, "to": "ada.example.com"}, "to"),
        ({**TELEGRAM, "to": "@ada"}, "to"),
        ({**PUSH, "to": "short"}, "to"),
        ({**EMAIL, "to": "a" * 250 + "@example.com"}, "to"),
        ({key: value for key, value in EMAIL.items() if key != "subject"}, "subject"),
        ({**PUSH, "subject": "Hello"}, "subject"),
        ({**TELEGRAM, "body": "x" * 4_097}, "body"),
        ({**EMAIL, "body": ""}, "body"),
        ({**EMAIL, "channel": "sms"}, "channel"),
    ],
)
def test_a_message_that_does_not_fit_its_channel_gets_a_422_naming_the_field(
    sim: Any, body: dict[str, Any], field: str
) -> None:
    response = send(sim, body)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]
    assert listing(sim).json()["data"] == []


async def test_a_dedupe_key_sends_a_notification_once_under_any_idempotency_key(
    sim: Any, webhook_sink: Any
) -> None:
    first = send(sim, {**TELEGRAM, "dedupe_key": "topup/bank/INV-1/credited"}, key="a")
    # A retry of the same logical notification, re-rendered and under a new key.
    again = send(
        sim, {**TELEGRAM, "body": "Card frozen.", "dedupe_key": "topup/bank/INV-1/credited"}, "b"
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()

    # The simulators' record holds every webhook the two sends will ever cause:
    # one receipt, for the first.
    [receipt] = await everything_received(sim, webhook_sink)
    assert (receipt.event["type"], receipt.event["data"]) == ("message.delivered", first.json())
    assert listing(sim).json()["data"] == [first.json()]


async def test_messages_are_listed_oldest_first_filtered_by_channel_and_recipient(
    sim: Any, webhook_sink: Any
) -> None:
    ada_email = send(sim, EMAIL).json()
    bob_email = send(sim, {**EMAIL, "to": "bob@example.com"}).json()
    push = send(sim, PUSH).json()
    ada_again = send(sim, {**EMAIL, "subject": "Welcome"}).json()

    assert listing(sim).json()["data"] == [ada_email, bob_email, push, ada_again]
    emails = listing(sim, channel="email").json()
    assert emails == {"data": [ada_email, bob_email, ada_again], "has_more": False}
    to_ada = listing(sim, channel="email", to=EMAIL["to"]).json()["data"]
    assert to_ada == [ada_email, ada_again]
    assert listing(sim, channel="telegram").json()["data"] == []

    page = listing(sim, channel="email", limit=2).json()
    assert page == {"data": [ada_email, bob_email], "has_more": True}
    rest = listing(sim, channel="email", limit=2, starting_after=bob_email["id"]).json()
    assert rest == {"data": [ada_again], "has_more": False}

    bad = listing(sim, channel="sms")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "channel"]
    receipts = await everything_received(sim, webhook_sink)
    assert [r.event["data"]["id"] for r in receipts] == [
        m["id"] for m in (ada_email, bob_email, push, ada_again)
    ]


async def test_a_failing_channel_fails_its_messages_and_leaves_the_others(
    sim: Any, webhook_sink: Any
) -> None:
    sim.admin("PUT", "/options/notify", {"failing_channels": ["telegram"]})
    failed = send(sim, {**TELEGRAM, "dedupe_key": "card-frozen/c1"})
    email = send(sim, EMAIL)
    assert failed.status_code == 201 and failed.json()["status"] == "failed"
    assert "telegram" in failed.json()["failure_reason"] and failed.json()["delivered_at"] is None
    assert email.status_code == 201 and email.json()["status"] == "sent"
    receipts = await everything_received(sim, webhook_sink)
    assert [(r.event["type"], r.event["data"]["id"]) for r in receipts] == [
        ("message.failed", failed.json()["id"]),
        ("message.delivered", email.json()["id"]),
    ]

    # A failed send never reached anyone, so its dedupe key is still free.
    sim.admin("PUT", "/options/notify", {"failing_channels": []})
    retried = send(sim, {**TELEGRAM, "dedupe_key": "card-frozen/c1"})
    assert retried.status_code == 201 and retried.json()["status"] == "sent"
    assert retried.json()["id"] != failed.json()["id"]
    deduped = send(sim, {**TELEGRAM, "dedupe_key": "card-frozen/c1"})
    assert deduped.status_code == 200 and deduped.json() == retried.json()
    # The simulators' record holds every webhook these sends will ever cause:
    # the retry's receipt, and nothing for the deduplicated send.
    receipts = await everything_received(sim, webhook_sink)
    assert [(r.event["type"], r.event["data"]["id"]) for r in receipts] == [
        ("message.failed", failed.json()["id"]),
        ("message.delivered", email.json()["id"]),
        ("message.delivered", retried.json()["id"]),
    ]
