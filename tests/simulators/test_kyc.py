"""The KYC simulator: applicants, documents, checks, every outcome and its webhook."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests import polling

# Bounds how long a test waits for its webhooks, and for the outbox to empty.
WEBHOOK_WAIT_SECONDS_MAX = 10

APPLICANT = {
    "external_customer_id": "cus_template",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "date_of_birth": "1990-12-10",
    "country": "GBR",
}
PASSPORT = {"type": "passport", "country": "GBR", "file_name": "passport.jpg"}
SELFIE = {"type": "selfie", "file_name": "selfie.jpg"}


@pytest.fixture
async def kyc(sim: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.provider_url("kyc"), timeout=5) as client:
        yield client
        # Let this test's webhooks land before the next test resets the sink.
        await drain_webhooks(client, sim.url)


@pytest.fixture
def applicant_body() -> dict[str, Any]:
    """A customer of the test's own: ids restart at 1 after each reset, so a
    webhook is told apart from an earlier test's by its customer id."""
    return {**APPLICANT, "external_customer_id": f"cus_{uuid.uuid4().hex[:12]}"}


async def drain_webhooks(http: httpx.AsyncClient, sim_url: str) -> None:
    """Wait (asynchronously: the receiver runs on this loop) for an empty outbox."""

    async def outbox_empty() -> bool:
        health = (await http.get(f"{sim_url}/_admin/health")).json()
        return bool(health["webhooks_pending"] == 0)

    await polling.settled(outbox_empty, WEBHOOK_WAIT_SECONDS_MAX)


async def ready_applicant(kyc: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """An applicant with a passport on file, ready for a check."""
    created = await kyc.post("/v1/applicants", json=body)
    assert created.status_code == 201, created.text
    applicant_id: str = created.json()["id"]
    uploaded = await kyc.post(f"/v1/applicants/{applicant_id}/documents", json=PASSPORT)
    assert uploaded.status_code == 201, uploaded.text
    return applicant_id


async def start_check(kyc: httpx.AsyncClient, applicant_id: str) -> httpx.Response:
    return await kyc.post(f"/v1/applicants/{applicant_id}/checks")


async def decide(kyc: httpx.AsyncClient, applicant_id: str, **body: Any) -> httpx.Response:
    return await kyc.post(f"/v1/simulate/applicants/{applicant_id}/decide", json=body)


async def status_of(kyc: httpx.AsyncClient, applicant_id: str) -> str:
    status: str = (await kyc.get(f"/v1/applicants/{applicant_id}")).json()["status"]
    return status


async def events(webhook_sink: Any, body: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The first `count` webhooks about this test's customer, in arrival order."""
    customer_id = body["external_customer_id"]
    deadline = time.monotonic() + WEBHOOK_WAIT_SECONDS_MAX
    while True:
        mine = [
            r.event
            for r in webhook_sink.received
            if r.event["data"].get("external_customer_id") == customer_id
        ]
        if len(mine) >= count or time.monotonic() > deadline:
            break
        await webhook_sink.arrived(len(webhook_sink.received) + 1, seconds=0.1)
    assert len(mine) == count, [event["type"] for event in mine]
    return mine


async def test_an_applicant_is_created_read_back_and_announced(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any], webhook_sink: Any
) -> None:
    created = await kyc.post("/v1/applicants", json=applicant_body)
    assert created.status_code == 201
    applicant = created.json()
    assert applicant["id"] == "app_000001" and applicant["status"] == "created"
    assert (await kyc.get(f"/v1/applicants/{applicant['id']}")).json() == applicant
    [event] = await events(webhook_sink, applicant_body, 1)
    assert event["type"] == "applicant.created" and event["data"] == applicant


async def test_one_applicant_per_external_customer_id(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any]
) -> None:
    first = (await kyc.post("/v1/applicants", json=applicant_body)).json()
    second = await kyc.post("/v1/applicants", json={**applicant_body, "first_name": "Augusta"})
    assert second.status_code == 409 and first["id"] in second.text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"date_of_birth": "2999-01-01"}, "date_of_birth"),
        ({"date_of_birth": "10/12/1990"}, "date_of_birth"),
        ({"country": "gb"}, "country"),
        ({"last_name": ""}, "last_name"),
        ({"external_customer_id": None}, "external_customer_id"),
    ],
)
async def test_a_bad_applicant_gets_a_422_naming_the_field(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    response = await kyc.post("/v1/applicants", json={**applicant_body, **change})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({**PASSPORT, "type": "photo"}, "type"),
        ({"type": "id_card", "file_name": "id.jpg"}, "country"),
        ({**PASSPORT, "file_name": ""}, "file_name"),
    ],
)
async def test_a_bad_document_gets_a_422_naming_the_field(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any], document: dict[str, Any], field: str
) -> None:
    applicant_id = (await kyc.post("/v1/applicants", json=applicant_body)).json()["id"]
    response = await kyc.post(f"/v1/applicants/{applicant_id}/documents", json=document)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


async def test_a_check_needs_an_identity_document(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any]
) -> None:
    applicant_id = (await kyc.post("/v1/applicants", json=applicant_body)).json()["id"]
    await kyc.post(f"/v1/applicants/{applicant_id}/documents", json=SELFIE)
    refused = await start_check(kyc, applicant_id)
    assert refused.status_code == 409 and "identity document" in refused.text
    await kyc.post(f"/v1/applicants/{applicant_id}/documents", json=PASSPORT)
    started = await start_check(kyc, applicant_id)
    assert started.status_code == 201
    assert started.json()["document_ids"] == ["doc_000001", "doc_000002"]


async def test_a_check_starts_pending_and_green_approves_the_applicant(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any], webhook_sink: Any
) -> None:
    applicant_id = await ready_applicant(kyc, applicant_body)
    check = (await start_check(kyc, applicant_id)).json()
    assert check["id"] == "chk_000001" and check["status"] == "pending"
    assert (
        check["result"] is None
        and check["external_customer_id"] == applicant_body["external_customer_id"]
    )
    assert await status_of(kyc, applicant_id) == "pending"

    decided = await decide(kyc, applicant_id, result="GREEN")
    assert decided.status_code == 200
    completed = decided.json()
    assert completed["status"] == "completed" and completed["result"] == "GREEN"
    assert completed["reject_type"] is None and completed["completed_at"]
    assert (await kyc.get(f"/v1/checks/{check['id']}")).json() == completed
    assert await status_of(kyc, applicant_id) == "approved"

    created, pending, done = await events(webhook_sink, applicant_body, 3)
    assert [created["type"], pending["type"], done["type"]] == [
        "applicant.created",
        "check.pending",
        "check.completed",
    ]
    assert pending["data"]["id"] == check["id"] and done["data"] == completed
    again = await start_check(kyc, applicant_id)
    assert again.status_code == 409 and "already approved" in again.text


async def test_on_hold_waits_for_a_manual_review_that_completes_the_check(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any], webhook_sink: Any
) -> None:
    applicant_id = await ready_applicant(kyc, applicant_body)
    await start_check(kyc, applicant_id)
    held = (await decide(kyc, applicant_id, result="ON_HOLD")).json()
    assert held["status"] == "on_hold" and held["result"] is None
    assert await status_of(kyc, applicant_id) == "on_hold"
    twice = await decide(kyc, applicant_id, result="ON_HOLD")
    assert twice.status_code == 409 and "already on hold" in twice.text

    reviewed = await decide(
        kyc, applicant_id, result="RED", reject_type="FINAL", labels=["FORGERY"]
    )
    assert reviewed.json()["status"] == "completed" and reviewed.json()["result"] == "RED"
    assert await status_of(kyc, applicant_id) == "rejected"
    types = [event["type"] for event in await events(webhook_sink, applicant_body, 4)]
    assert types == ["applicant.created", "check.pending", "check.on_hold", "check.completed"]


async def test_red_retry_lets_the_customer_resubmit_with_a_new_check(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any], webhook_sink: Any
) -> None:
    applicant_id = await ready_applicant(kyc, applicant_body)
    first = (await start_check(kyc, applicant_id)).json()
    rejected = (
        await decide(
            kyc, applicant_id, result="RED", reject_type="RETRY", labels=["BAD_SELFIE", "BLURRY"]
        )
    ).json()
    assert rejected["result"] == "RED" and rejected["reject_type"] == "RETRY"
    assert rejected["reject_labels"] == ["BAD_SELFIE", "BLURRY"]
    assert await status_of(kyc, applicant_id) == "resubmission_requested"

    await kyc.post(f"/v1/applicants/{applicant_id}/documents", json=SELFIE)
    second = await start_check(kyc, applicant_id)
    assert second.status_code == 201
    assert second.json()["id"] != first["id"] and second.json()["status"] == "pending"
    assert second.json()["document_ids"] == ["doc_000001", "doc_000002"]
    approved = (await decide(kyc, applicant_id, result="GREEN")).json()
    assert approved["id"] == second.json()["id"] and approved["result"] == "GREEN"

    applicant = (await kyc.get(f"/v1/applicants/{applicant_id}")).json()
    assert applicant["status"] == "approved"
    assert applicant["check_ids"] == [first["id"], second.json()["id"]]
    # The first check keeps its own outcome.
    assert (await kyc.get(f"/v1/checks/{first['id']}")).json() == rejected
    completed = [
        e for e in await events(webhook_sink, applicant_body, 5) if e["type"] == "check.completed"
    ]
    assert [(e["data"]["id"], e["data"]["result"]) for e in completed] == [
        (first["id"], "RED"),
        (second.json()["id"], "GREEN"),
    ]


async def test_red_final_refuses_new_checks_and_documents(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any], webhook_sink: Any
) -> None:
    applicant_id = await ready_applicant(kyc, applicant_body)
    await start_check(kyc, applicant_id)
    final = await decide(kyc, applicant_id, result="RED", reject_type="FINAL", labels=["FORGERY"])
    assert final.json()["reject_type"] == "FINAL"
    [*_, completed] = await events(webhook_sink, applicant_body, 3)
    assert completed["type"] == "check.completed"
    assert completed["data"]["result"] == "RED" and completed["data"]["reject_type"] == "FINAL"

    new_check = await start_check(kyc, applicant_id)
    assert new_check.status_code == 409 and "FINAL" in new_check.text
    new_document = await kyc.post(f"/v1/applicants/{applicant_id}/documents", json=SELFIE)
    assert new_document.status_code == 409 and "FINAL" in new_document.text
    assert await status_of(kyc, applicant_id) == "rejected"


@pytest.mark.parametrize(
    ("decision", "field", "problem"),
    [
        ({"result": "RED", "labels": ["FORGERY"]}, "reject_type", "required when result is RED"),
        ({"result": "RED", "reject_type": "RETRY"}, "labels", "at least one reason"),
        ({"result": "GREEN", "reject_type": "RETRY"}, "reject_type", "null when result is GREEN"),
        ({"result": "GREEN", "labels": ["FORGERY"]}, "labels", "empty when result is GREEN"),
        ({"result": "ON_HOLD", "reject_type": "FINAL"}, "reject_type", "null when result is"),
        ({"result": "YELLOW"}, "result", "GREEN"),
        (
            {"result": "RED", "reject_type": "LATER", "labels": ["X"]},
            "reject_type",
            "RETRY",
        ),
        ({"result": "RED", "reject_type": "RETRY", "labels": ["bad selfie"]}, "labels", "pattern"),
    ],
)
async def test_an_invalid_decision_is_refused_with_422_naming_the_problem(
    kyc: httpx.AsyncClient,
    applicant_body: dict[str, Any],
    decision: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    applicant_id = await ready_applicant(kyc, applicant_body)
    check = (await start_check(kyc, applicant_id)).json()
    response = await decide(kyc, applicant_id, **decision)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"][:2] == ["body", field] and problem in error["msg"]
    # The check is untouched.
    assert (await kyc.get(f"/v1/checks/{check['id']}")).json() == check


async def test_a_decision_without_an_open_check_is_refused_with_409(
    kyc: httpx.AsyncClient,
    applicant_body: dict[str, Any],
) -> None:
    applicant_id = await ready_applicant(kyc, applicant_body)
    before = await decide(kyc, applicant_id, result="GREEN")
    assert before.status_code == 409 and "no check awaiting a decision" in before.text
    await start_check(kyc, applicant_id)
    assert (await decide(kyc, applicant_id, result="GREEN")).status_code == 200
    after = await decide(kyc, applicant_id, result="RED", reject_type="FINAL", labels=["X"])
    assert after.status_code == 409 and "status approved" in after.text


async def test_a_second_check_is_refused_while_one_is_open(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any]
) -> None:
    applicant_id = await ready_applicant(kyc, applicant_body)
    first = (await start_check(kyc, applicant_id)).json()
    second = await start_check(kyc, applicant_id)
    assert second.status_code == 409 and first["id"] in second.text


@pytest.mark.parametrize(
    ("auto_result", "status", "result", "last_event"),
    [
        ("GREEN", "completed", "GREEN", "check.completed"),
        (
            {"result": "RED", "reject_type": "RETRY", "labels": ["BAD_SELFIE"]},
            "completed",
            "RED",
            "check.completed",
        ),
        ("ON_HOLD", "on_hold", None, "check.on_hold"),
    ],
)
async def test_the_auto_result_option_decides_each_check_as_it_starts(
    sim: Any,
    kyc: httpx.AsyncClient,
    applicant_body: dict[str, Any],
    webhook_sink: Any,
    auto_result: Any,
    status: str,
    result: str | None,
    last_event: str,
) -> None:
    sim.admin("PUT", "/options/kyc", {"auto_result": auto_result})
    applicant_id = await ready_applicant(kyc, applicant_body)
    check = (await start_check(kyc, applicant_id)).json()
    assert check["status"] == status and check["result"] == result
    types = [event["type"] for event in await events(webhook_sink, applicant_body, 3)]
    assert types == ["applicant.created", "check.pending", last_event]


async def test_a_misconfigured_auto_result_is_a_server_error_that_changes_nothing(
    sim: Any, kyc: httpx.AsyncClient, applicant_body: dict[str, Any]
) -> None:
    sim.admin("PUT", "/options/kyc", {"auto_result": {"result": "RED"}})
    applicant_id = await ready_applicant(kyc, applicant_body)
    response = await start_check(kyc, applicant_id)
    assert response.status_code == 500 and "kyc.auto_result" in response.text
    assert await status_of(kyc, applicant_id) == "created"


async def test_unknown_ids_are_404(kyc: httpx.AsyncClient) -> None:
    assert (await kyc.get("/v1/applicants/app_999999")).status_code == 404
    assert (await kyc.get("/v1/checks/chk_999999")).status_code == 404
    assert (await start_check(kyc, "app_999999")).status_code == 404
    assert (await decide(kyc, "app_999999", result="GREEN")).status_code == 404


async def test_the_upload_page_refuses_an_unknown_link_a_bad_upload_and_a_decided_applicant(
    kyc: httpx.AsyncClient, applicant_body: dict[str, Any]
) -> None:
    created = await kyc.post("/v1/applicants", json=applicant_body)
    applicant_id = created.json()["id"]
    link = await kyc.post(f"/v1/applicants/{applicant_id}/links", headers={"Idempotency-Key": "l1"})
    assert link.status_code == 201, link.text
    path = "/verify/" + link.json()["url"].rsplit("/verify/", 1)[1]
    photo = {"file": ("passport.jpg", b"\xff\xd8 a photo", "image/jpeg")}
    assert (await kyc.get("/verify/no-such-token")).status_code == 404
    empty = await kyc.post(
        path,
        data={"type": "passport", "country": "GBR"},
        files={"file": ("p.jpg", b"", "image/jpeg")},
    )
    assert empty.status_code == 422, empty.text
    # An identity document names its issuing country.
    stateless = await kyc.post(path, data={"type": "passport"}, files=photo)
    assert stateless.status_code == 422 and "country is required" in stateless.text
    # Nothing was recorded for either refusal.
    assert (await kyc.get(f"/v1/applicants/{applicant_id}")).json()["document_ids"] == []
    uploaded = await kyc.post(path, data={"type": "passport", "country": "GBR"}, files=photo)
    assert uploaded.status_code == 201, uploaded.text
    assert (await decide(kyc, applicant_id, result="GREEN")).status_code == 200
    # Approved: neither the page's upload nor a new link is taken.
    again = await kyc.post(path, data={"type": "passport", "country": "GBR"}, files=photo)
    assert again.status_code == 409
    refused = await kyc.post(
        f"/v1/applicants/{applicant_id}/links", headers={"Idempotency-Key": "l2"}
    )
    assert refused.status_code == 409
