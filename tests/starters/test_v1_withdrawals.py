"""`/v1/withdrawals`: a customer's money paid out through the API, once per
request however often it is sent; malformed requests refused naming the
field; a key bound to customers starts and reads only theirs; an operator's
review through the API, refused when none is pending."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx

from activities.api_keys import SCOPE_PROCESSES_READ, SCOPE_PROCESSES_START
from activities.ledger import Ledger
from activities.ledger.verify import verify
from activities.providers.bank import BankClient
from schemas import accounts
from schemas.bank import Payout
from schemas.money import Currency
from schemas.withdrawals import BankDestination, WithdrawalRequest
from tests import polling
from tests.conftest import Platform
from tests.customers import customer
from workflows.withdrawal import (
    STAGE_COOLING,
    STAGE_REVIEW,
    STAGE_SENT,
    WITHDRAWAL_WORKFLOW,
    month_of,
    withdrawal_workflow_id,
)

ADA = BankDestination(iban="DE89370400440532013000", name="Ada Lovelace")
ADA_IN_LONDON = BankDestination(iban="GB82WEST12345698765432", name="Ada Lovelace")
FEE = 100  # the default policy's 1.00 USD per withdrawal to a bank account
# The default policy's: a new destination above it waits for an operator.
REVIEW_THRESHOLD_MINOR = 50_000
# The default standard tier's largest withdrawal (2,000.00 USD).
STANDARD_PER_WITHDRAWAL_MAX_MINOR = 200_000


def new_request_id() -> str:
    return f"w-{uuid.uuid4().hex[:12]}"


def withdrawal(
    request_id: str, customer_id: str, amount_minor: int, destination: BankDestination = ADA
) -> dict[str, Any]:
    """The request's body, as a client sends it."""
    request = WithdrawalRequest(
        request_id=request_id,
        customer_id=customer_id,
        amount_minor=amount_minor,
        currency=Currency.USD,
        destination=destination,
    )
    return request.model_dump(mode="json")


def keyed(key: str | None = None) -> dict[str, str]:
    return {"Idempotency-Key": key or uuid.uuid4().hex}


@asynccontextmanager
async def api(platform: Platform, headers: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, timeout=60, headers=headers
    ) as http:
        yield http


async def known(platform: Platform, customer_id: str, destination: BankDestination = ADA) -> None:
    """The destination as an earlier paid withdrawal leaves it: known, so a
    withdrawal to it neither cools nor waits for an operator."""
    await platform.stack.pool.execute(
        "INSERT INTO withdrawal_destinations (customer_id, fingerprint, first_request_id)"
        " VALUES ($1, $2, $3)",
        customer_id,
        destination.fingerprint,
        new_request_id(),
    )


async def stage(http: httpx.AsyncClient, request_id: str, wanted: str) -> dict[str, Any]:
    """The withdrawal's status, read through the API once it is at `wanted`."""

    async def read() -> dict[str, Any]:
        answer = await http.get(f"/v1/withdrawals/{request_id}")
        if answer.status_code == 404:  # not started yet: read again
            return {}
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    return await polling.until(read, lambda found: found.get("stage") == wanted, wanted)


async def payouts(platform: Platform, request_id: str) -> list[Payout]:
    async with BankClient(platform.sim.provider_url("bank")) as bank:
        return await bank.payouts_by_reference(request_id)


async def wallet(platform: Platform, customer_id: str) -> tuple[int, int]:
    """The USD wallet's (posted, pending debits)."""
    balance = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    return balance.posted, balance.debits_pending


async def months(platform: Platform, request_id: str) -> list[str]:
    """The months the withdrawal's usage is counted in (one row per withdrawal)."""
    rows = await platform.stack.pool.fetch(
        "SELECT month FROM withdrawal_usage WHERE request_id = $1", request_id
    )
    return [row["month"] for row in rows]


def sent_status(
    request_id: str, customer_id: str, amount_minor: int, payout_id: str, *, new: bool
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "customer_id": customer_id,
        "stage": STAGE_SENT,
        "outcome": None,
        "reason": None,
        "amount_minor": amount_minor,
        "fee_minor": FEE,
        "currency": "USD",
        "new_destination": new,
        "cooling_until": None,
        "payout_id": payout_id,
        "payout_status": "sent",
        "paid": True,
    }


async def test_a_withdrawal_through_the_api_is_paid_to_a_known_account(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: 10_000})
    await known(platform, customer_id)
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    request_id = new_request_id()
    async with api(platform, platform.api_headers) as http:
        before = datetime.now(UTC)
        started = await http.post(
            "/v1/withdrawals", json=withdrawal(request_id, customer_id, 5_000), headers=keyed()
        )
        after = datetime.now(UTC)
        assert started.status_code == 202, started.text
        ref = started.json()
        workflow_id = withdrawal_workflow_id(request_id)
        assert {name: value for name, value in ref.items() if name != "run_id"} == {
            "workflow_id": workflow_id,
            "process": WITHDRAWAL_WORKFLOW,
            "status_url": f"/v1/processes/{workflow_id}",
            "replayed": False,
            "request_id": request_id,
        }
        sent = await stage(http, request_id, STAGE_SENT)
        [payout] = await payouts(platform, request_id)
        assert sent == sent_status(request_id, customer_id, 5_000, payout.id, new=False)
        assert (payout.status, payout.amount_minor, payout.destination_iban) == (
            "sent",
            5_000,
            ADA.iban,
        )
        # The amount and the fee posted, nothing left held.
        assert await wallet(platform, customer_id) == (10_000 - 5_000 - FEE, 0)
        # Counted in the month of the gateway's clock when it started it.
        assert await months(platform, request_id) in ([month_of(before)], [month_of(after)])
        process = (await http.get(ref["status_url"])).json()
        assert (process["status"], process["stage"]) == ("RUNNING", STAGE_SENT)
    assert await verify(platform.stack.pool) == []


async def test_the_same_idempotency_key_starts_one_withdrawal_and_the_bank_pays_once(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: 10_000})
    await known(platform, customer_id)
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    request_id = new_request_id()
    body = withdrawal(request_id, customer_id, 3_000)
    key = keyed(f"withdraw-{uuid.uuid4().hex[:8]}")
    async with api(platform, platform.api_headers) as http:
        # Sent twice at once (a client retrying a request it thinks lost), then again.
        first, second = await asyncio.gather(
            http.post("/v1/withdrawals", json=body, headers=key),
            http.post("/v1/withdrawals", json=body, headers=key),
        )
        again = await http.post("/v1/withdrawals", json=body, headers=key)
        assert sorted([first.status_code, second.status_code]) == [200, 202], first.text
        assert again.status_code == 200, again.text
        answers = [first.json(), second.json(), again.json()]
        assert {answer["run_id"] for answer in answers} == {first.json()["run_id"]}
        assert sorted(answer["replayed"] for answer in answers) == [False, True, True]
        # The same key with another body is not this request.
        reused = await http.post(
            "/v1/withdrawals", json=withdrawal(request_id, customer_id, 2_000), headers=key
        )
        assert (reused.status_code, reused.json()["code"]) == (409, "idempotency_key_reused")
        # Another request naming the same request_id does not get this withdrawal.
        other = await http.post(
            "/v1/withdrawals", json=withdrawal(request_id, customer_id, 2_000), headers=keyed()
        )
        assert (other.status_code, other.json()) == (
            409,
            {
                "code": "process_exists",
                "detail": f"withdrawal/{request_id} already exists and another request started it",
            },
        )
        sent = await stage(http, request_id, STAGE_SENT)
    [payout] = await payouts(platform, request_id)
    assert sent == sent_status(request_id, customer_id, 3_000, payout.id, new=False)
    assert await wallet(platform, customer_id) == (10_000 - 3_000 - FEE, 0)
    assert len(await months(platform, request_id)) == 1
    assert await verify(platform.stack.pool) == []


async def test_a_malformed_withdrawal_is_422_naming_the_field_and_starts_nothing(
    platform: Platform,
) -> None:
    request_id = new_request_id()
    valid = withdrawal(request_id, "c-nobody", 1_000)
    wrong_check_digits = {**valid["destination"], "iban": "DE89370400440532013001"}
    refusals: list[tuple[dict[str, Any], list[Any]]] = [
        (
            {**valid, "destination": wrong_check_digits},
            [
                {
                    "loc": ["body", "destination", "bank", "iban"],
                    "msg": "Value error, the check digits do not match",
                }
            ],
        ),
        (
            {**valid, "amount_minor": -5},
            [{"loc": ["body", "amount_minor"], "msg": "Input should be greater than 0"}],
        ),
        (
            {**valid, "currency": "XXX"},
            [
                {
                    "loc": ["body", "currency"],
                    "msg": "Input should be 'USD', 'EUR', 'GBP', 'JPY' or 'USDT'",
                }
            ],
        ),
    ]
    async with api(platform, platform.api_headers) as http:
        for body, errors in refusals:
            answer = await http.post("/v1/withdrawals", json=body, headers=keyed())
            assert (answer.status_code, answer.json()["code"]) == (422, "invalid_request")
            found = [
                {"loc": error["loc"], "msg": error["msg"]} for error in answer.json()["detail"]
            ]
            assert found == errors
        missing = await http.get(f"/v1/withdrawals/{request_id}")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


async def test_a_key_bound_to_a_customer_starts_and_reads_only_their_withdrawals(
    platform: Platform,
) -> None:
    mine = await customer(platform, {Currency.USD: 10_000})
    theirs = await customer(platform, {Currency.USD: 10_000})
    partner = await platform.key_headers(
        SCOPE_PROCESSES_START, SCOPE_PROCESSES_READ, customers=[mine]
    )
    refused_id, their_id, my_id = new_request_id(), new_request_id(), new_request_id()
    async with api(platform, partner) as http, api(platform, platform.api_headers) as ops:
        refused = await http.post(
            "/v1/withdrawals", json=withdrawal(refused_id, theirs, 1_000), headers=keyed()
        )
        assert (refused.status_code, refused.json()["code"]) == (403, "customer_not_allowed")
        assert (await ops.get(f"/v1/withdrawals/{refused_id}")).status_code == 404
        # Theirs, started by a key of every customer: not readable by the partner's.
        started = await ops.post(
            "/v1/withdrawals", json=withdrawal(their_id, theirs, 1_000), headers=keyed()
        )
        assert started.status_code == 202, started.text
        read = await http.get(f"/v1/withdrawals/{their_id}")
        assert (read.status_code, read.json()) == (
            403,
            {
                "code": "customer_not_allowed",
                "detail": "this API key acts only for its own customers, and withdrawal "
                f"{their_id} is not known as one of theirs",
            },
        )
        # A new destination below the threshold cools; its own customer's key reads it.
        mine_started = await http.post(
            "/v1/withdrawals", json=withdrawal(my_id, mine, 1_000), headers=keyed()
        )
        assert mine_started.status_code == 202, mine_started.text
        cooling = await stage(http, my_id, STAGE_COOLING)
        assert (cooling["customer_id"], cooling["new_destination"]) == (mine, True)
        assert (await stage(ops, their_id, STAGE_COOLING))["customer_id"] == theirs
    assert await payouts(platform, my_id) == []
    assert await wallet(platform, theirs) == (10_000, 0)


async def test_an_operator_approves_a_new_account_above_the_threshold_and_nothing_else(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: 100_000})
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    operator = await platform.key_headers("operations")
    approval = {"decision": "approve", "reason": "called the customer", "operator": "op-1"}
    large, cooling_id, too_large = new_request_id(), new_request_id(), new_request_id()
    amount = REVIEW_THRESHOLD_MINOR + 10_000
    async with api(platform, platform.api_headers) as http, api(platform, operator) as ops:
        nobody = await ops.post(f"/v1/withdrawals/{new_request_id()}/review", json=approval)
        assert (nobody.status_code, nobody.json()["code"]) == (404, "not_found")

        # Below the threshold, a new account cools: no operator is asked.
        started = await http.post(
            "/v1/withdrawals",
            json=withdrawal(cooling_id, customer_id, 1_000, ADA_IN_LONDON),
            headers=keyed(),
        )
        assert started.status_code == 202, started.text
        await stage(http, cooling_id, STAGE_COOLING)
        early = await ops.post(f"/v1/withdrawals/{cooling_id}/review", json=approval)
        assert (early.status_code, early.json()) == (
            409,
            {"code": "wrong_state", "detail": f"no review is pending (stage: {STAGE_COOLING})"},
        )

        # Above it, an operator decides; nothing is held meanwhile.
        started = await http.post(
            "/v1/withdrawals", json=withdrawal(large, customer_id, amount), headers=keyed()
        )
        assert started.status_code == 202, started.text
        waiting = await stage(http, large, STAGE_REVIEW)
        assert waiting["new_destination"] is True
        assert await wallet(platform, customer_id) == (100_000, 0)
        approved = await ops.post(f"/v1/withdrawals/{large}/review", json=approval, headers=keyed())
        assert (approved.status_code, approved.json()) == (200, {"result": "approve recorded"})
        sent = await stage(http, large, STAGE_SENT)
        [payout] = await payouts(platform, large)
        assert sent == sent_status(large, customer_id, amount, payout.id, new=True)
        assert await wallet(platform, customer_id) == (100_000 - amount - FEE, 0)
        again = await ops.post(f"/v1/withdrawals/{large}/review", json=approval)
        assert (again.status_code, again.json()) == (
            409,
            {"code": "wrong_state", "detail": f"no review is pending (stage: {STAGE_SENT})"},
        )

        # Over the tier's limit it is rejected at once; a review after is refused by its end.
        started = await http.post(
            "/v1/withdrawals",
            json=withdrawal(too_large, customer_id, STANDARD_PER_WITHDRAWAL_MAX_MINOR + 1),
            headers=keyed(),
        )
        assert started.status_code == 202, started.text
        rejected = await stage(http, too_large, "rejected")
        assert rejected["reason"] == (
            f"above the standard tier's {STANDARD_PER_WITHDRAWAL_MAX_MINOR} minor units"
            " per withdrawal"
        )
        late = await ops.post(f"/v1/withdrawals/{too_large}/review", json=approval)
        assert (late.status_code, late.json()) == (
            409,
            {"code": "finished", "detail": "withdrawal already finished (rejected)"},
        )
    assert await payouts(platform, too_large) == []
    assert await verify(platform.stack.pool) == []
