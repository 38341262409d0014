"""`/v1/closures`: a customer's account closed through the API, once however
often it is asked; malformed requests refused naming the field; a key bound
to customers closes and reads only theirs; an operator's decision through
the API, refused while none is pending and once the closure has ended.

A closure started through the API watches its payout for a bank return as
long as the deployment's withdrawals do (14 days by default) before the
wallets close: most tests follow it until the money has left (the payout
sent, the wallet at zero) and read what the closure shows meanwhile; one
sets that watch to nothing and sees the account closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from activities.api_keys import SCOPE_OPERATIONS, SCOPE_PROCESSES_READ, SCOPE_PROCESSES_START
from activities.ledger import Ledger
from activities.ledger.verify import verify
from activities.providers.bank import BankClient
from schemas import accounts
from schemas.bank import Payout
from schemas.customers import CUSTOMER_ID_PATTERN
from schemas.money import Currency
from schemas.withdrawals import BankDestination
from tests import polling
from tests.conftest import Platform
from tests.customers import customer
from workflows.closure import (
    CLOSURE_WORKFLOW,
    STAGE_OPERATOR,
    STAGE_PAYING,
    closure_workflow_id,
)
from workflows.withdrawal import STAGE_SENT

ADA = BankDestination(iban="DE89370400440532013000", name="Ada Lovelace")
ADA_IN_LONDON = BankDestination(iban="GB82WEST12345698765432", name="Ada Lovelace")
BALANCE_MINOR = 5_000


def closure(customer_id: str, destination: BankDestination = ADA) -> dict[str, Any]:
    """The request's body, as a client sends it: a bank account names no rail."""
    return {
        "customer_id": customer_id,
        "destination": {"iban": destination.iban, "name": destination.name},
        "reason": "moving abroad",
    }


def keyed(key: str | None = None) -> dict[str, str]:
    return {"Idempotency-Key": key or uuid.uuid4().hex}


def payout_request_id(customer_id: str, attempt: int) -> str:
    """The request id of the closure's child withdrawal paying the USD balance."""
    return f"closure-{customer_id}-usd-{attempt}"


@asynccontextmanager
async def api(platform: Platform, headers: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, timeout=60, headers=headers
    ) as http:
        yield http


async def stage(http: httpx.AsyncClient, customer_id: str, wanted: str) -> dict[str, Any]:
    """The closure's status, read through the API once it is at `wanted`."""

    async def read() -> dict[str, Any]:
        answer = await http.get(f"/v1/closures/{customer_id}")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    return await polling.until(read, lambda found: found["stage"] == wanted, wanted)


async def paid(http: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    """The payout's withdrawal, read through the API once the bank sent it
    and it watches for a return."""

    async def read() -> dict[str, Any]:
        answer = await http.get(f"/v1/withdrawals/{request_id}")
        if answer.status_code == 404:  # not started yet: read again
            return {}
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    return await polling.until(
        read, lambda found: found.get("stage") == STAGE_SENT, f"{request_id} sent"
    )


async def payouts(platform: Platform, request_id: str) -> list[Payout]:
    async with BankClient(platform.sim.provider_url("bank")) as bank:
        return await bank.payouts_by_reference(request_id)


async def asked(platform: Platform, request_id: str) -> Payout:
    """The one payout the bank was asked for, once it was."""
    found = await polling.until(
        lambda: payouts(platform, request_id), bool, f"the bank asked to pay {request_id}"
    )
    [payout] = found
    return payout


async def wallet(platform: Platform, customer_id: str) -> tuple[int, int]:
    """The USD wallet's (posted, pending debits)."""
    balance = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    return balance.posted, balance.debits_pending


async def account_status(platform: Platform, customer_id: str) -> str:
    found: str = await platform.stack.pool.fetchval(
        "SELECT account_status FROM customers WHERE customer_id = $1", customer_id
    )
    return found


def closure_status(customer_id: str, stage: str, **differences: Any) -> dict[str, Any]:
    """The status of a closure of a customer with no card and no debt."""
    return {
        "customer_id": customer_id,
        "stage": stage,
        "outcome": None,
        "reason": None,
        "cards_closed": [],
        "cards_open": [],
        "settled_debt": {},
        "payouts": {},
        "waiting_for_operator": None,
        **differences,
    }


def payout_status(
    request_id: str, customer_id: str, payout_id: str, amount_minor: int = BALANCE_MINOR
) -> dict[str, Any]:
    """A closure's payout once the bank sent it: no fee, a destination never
    paid to before, yet neither cooling nor reviewed."""
    return {
        "request_id": request_id,
        "customer_id": customer_id,
        "stage": STAGE_SENT,
        "outcome": None,
        "reason": None,
        "amount_minor": amount_minor,
        "fee_minor": 0,
        "currency": "USD",
        "new_destination": True,
        "cooling_until": None,
        "payout_id": payout_id,
        "payout_status": "sent",
        "paid": True,
    }


async def test_a_closure_through_the_api_pays_the_whole_balance_out_to_the_account(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: BALANCE_MINOR})
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    operator = await platform.key_headers(SCOPE_OPERATIONS)
    request_id = payout_request_id(customer_id, 1)
    async with api(platform, platform.api_headers) as http, api(platform, operator) as ops:
        started = await http.post("/v1/closures", json=closure(customer_id), headers=keyed())
        assert started.status_code == 202, started.text
        ref = started.json()
        workflow_id = closure_workflow_id(customer_id)
        assert {name: value for name, value in ref.items() if name != "run_id"} == {
            "workflow_id": workflow_id,
            "process": CLOSURE_WORKFLOW,
            "status_url": f"/v1/processes/{workflow_id}",
            "replayed": False,
            "request_id": None,
        }
        # The whole balance leaves through one withdrawal, with no fee.
        withdrawal = await paid(http, request_id)
        [payout] = await payouts(platform, request_id)
        assert withdrawal == payout_status(request_id, customer_id, payout.id)
        assert (payout.status, payout.amount_minor, payout.destination_iban) == (
            "sent",
            BALANCE_MINOR,
            ADA.iban,
        )
        assert await wallet(platform, customer_id) == (0, 0)
        # The closure waits out the payout's return watch: the account is
        # closing, and no decision is asked of an operator.
        assert await stage(http, customer_id, STAGE_PAYING) == closure_status(
            customer_id, STAGE_PAYING, payouts={"USD": payout_request_id(customer_id, 1)}
        )
        assert await account_status(platform, customer_id) == "closing"
        refused = await ops.post(
            f"/v1/closures/{customer_id}/decide",
            json={"action": "abandon", "reason": "the customer stays", "operator": "op-1"},
        )
        assert (refused.status_code, refused.json()) == (
            409,
            {"code": "wrong_state", "detail": f"no decision is pending (stage: {STAGE_PAYING})"},
        )
        process = (await http.get(ref["status_url"])).json()
        assert (process["status"], process["stage"]) == ("RUNNING", STAGE_PAYING)
    assert await verify(platform.stack.pool) == []


async def test_with_the_return_watch_set_short_a_closure_through_the_api_ends_closed(
    platform: Platform,
) -> None:
    # CARDFLOW_WITHDRAWAL_RETURN_WATCH_SECONDS=0, as this gateway reads it.
    platform.app.state.settings = platform.settings.model_copy(
        update={"withdrawal_return_watch_seconds": 0}
    )
    customer_id = await customer(platform, {Currency.USD: BALANCE_MINOR})
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    request_id = payout_request_id(customer_id, 1)
    async with api(platform, platform.api_headers) as http:
        started = await http.post("/v1/closures", json=closure(customer_id), headers=keyed())
        assert started.status_code == 202, started.text
        closed = await stage(http, customer_id, "closed")
        assert closed == closure_status(
            customer_id,
            "closed",
            outcome="closed",
            reason="moving abroad",
            payouts={"USD": request_id},
        )
        withdrawal = (await http.get(f"/v1/withdrawals/{request_id}")).json()
        assert (withdrawal["outcome"], withdrawal["amount_minor"], withdrawal["fee_minor"]) == (
            "paid",
            BALANCE_MINOR,
            0,
        )
    [payout] = await payouts(platform, request_id)
    assert (payout.status, payout.amount_minor, payout.destination_iban) == (
        "sent",
        BALANCE_MINOR,
        ADA.iban,
    )
    assert await wallet(platform, customer_id) == (0, 0)
    wallets = await platform.stack.pool.fetch(
        "SELECT code, status FROM ledger_accounts WHERE code LIKE $1 ORDER BY code",
        f"customer:{customer_id}:wallet:%",
    )
    assert [(row["code"], row["status"]) for row in wallets] == [
        (accounts.wallet(customer_id, Currency.USD), "closed")
    ]
    assert await account_status(platform, customer_id) == "closed"
    assert await verify(platform.stack.pool) == []


async def test_the_same_idempotency_key_starts_one_closure_and_another_request_gets_409(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: BALANCE_MINOR})
    body = closure(customer_id)
    key = keyed(f"close-{uuid.uuid4().hex[:8]}")
    async with api(platform, platform.api_headers) as http:
        # Sent twice at once (a client retrying a request it thinks lost), then again.
        first, second = await asyncio.gather(
            http.post("/v1/closures", json=body, headers=key),
            http.post("/v1/closures", json=body, headers=key),
        )
        again = await http.post("/v1/closures", json=body, headers=key)
        assert sorted([first.status_code, second.status_code]) == [200, 202], first.text
        assert again.status_code == 200, again.text
        answers = [first.json(), second.json(), again.json()]
        assert {answer["run_id"] for answer in answers} == {first.json()["run_id"]}
        assert sorted(answer["replayed"] for answer in answers) == [False, True, True]
        # The same key with another body is not this request.
        reused = await http.post(
            "/v1/closures", json=closure(customer_id, ADA_IN_LONDON), headers=key
        )
        assert (reused.status_code, reused.json()["code"]) == (409, "idempotency_key_reused")
        # Another request closing the same customer does not get this closure.
        other = await http.post("/v1/closures", json=body, headers=keyed())
        assert (other.status_code, other.json()) == (
            409,
            {
                "code": "process_exists",
                "detail": f"closure/{customer_id} already exists and another request started it",
            },
        )
        # One payout is asked of the bank (it has not sent it yet).
        payout = await asked(platform, payout_request_id(customer_id, 1))
        assert (payout.status, payout.amount_minor, payout.destination_iban) == (
            "accepted",
            BALANCE_MINOR,
            ADA.iban,
        )
        assert await stage(http, customer_id, STAGE_PAYING) == closure_status(
            customer_id, STAGE_PAYING, payouts={"USD": payout_request_id(customer_id, 1)}
        )
    assert await payouts(platform, payout_request_id(customer_id, 2)) == []
    assert await wallet(platform, customer_id) == (BALANCE_MINOR, BALANCE_MINOR)


async def test_a_malformed_closure_is_422_naming_the_field_and_starts_nothing(
    platform: Platform,
) -> None:
    customer_id = f"c-{uuid.uuid4().hex[:10]}"
    valid = closure(customer_id)
    refusals: list[tuple[dict[str, Any], list[Any]]] = [
        (
            {**valid, "destination": {**valid["destination"], "iban": "DE89370400440532013001"}},
            [
                {
                    "loc": ["body", "destination", "bank", "iban"],
                    "msg": "Value error, the check digits do not match",
                }
            ],
        ),
        (
            {**valid, "destination": {"rail": "usdt", "address": "T-not-an-address"}},
            [
                {
                    "loc": ["body", "destination", "usdt", "address"],
                    "msg": "Value error, a Tron address is 34 Base58 characters",
                }
            ],
        ),
        (
            {"customer_id": customer_id},
            [{"loc": ["body", "destination"], "msg": "Field required"}],
        ),
        (
            {**valid, "customer_id": "has space"},
            [
                {
                    "loc": ["body", "customer_id"],
                    "msg": f"String should match pattern '{CUSTOMER_ID_PATTERN}'",
                }
            ],
        ),
        (
            {**valid, "reason": ""},
            [{"loc": ["body", "reason"], "msg": "String should have at least 1 character"}],
        ),
    ]
    async with api(platform, platform.api_headers) as http:
        for body, errors in refusals:
            answer = await http.post("/v1/closures", json=body, headers=keyed())
            assert (answer.status_code, answer.json()["code"]) == (422, "invalid_request")
            found = [
                {"loc": error["loc"], "msg": error["msg"]} for error in answer.json()["detail"]
            ]
            assert found == errors
        missing = await http.get(f"/v1/closures/{customer_id}")
    assert (missing.status_code, missing.json()) == (
        404,
        {"code": "not_found", "detail": f"no running process for closure of {customer_id}"},
    )


async def test_a_key_bound_to_a_customer_closes_and_reads_only_their_account(
    platform: Platform,
) -> None:
    mine = await customer(platform, {Currency.USD: BALANCE_MINOR})
    theirs = await customer(platform, {Currency.USD: BALANCE_MINOR})
    partner = await platform.key_headers(
        SCOPE_PROCESSES_START, SCOPE_PROCESSES_READ, SCOPE_OPERATIONS, customers=[mine]
    )
    async with api(platform, partner) as http, api(platform, platform.api_headers) as ops:
        refused = await http.post("/v1/closures", json=closure(theirs), headers=keyed())
        assert (refused.status_code, refused.json()) == (
            403,
            {
                "code": "customer_not_allowed",
                "detail": "this API key acts only for its own customers, and customer "
                f"{theirs} is not known as one of theirs",
            },
        )
        assert (await ops.get(f"/v1/closures/{theirs}")).status_code == 404
        # Theirs, closed by a key of every customer: not readable by the partner's.
        started = await ops.post("/v1/closures", json=closure(theirs), headers=keyed())
        assert started.status_code == 202, started.text
        read = await http.get(f"/v1/closures/{theirs}")
        assert (read.status_code, read.json()["code"]) == (403, "customer_not_allowed")
        # Its own customer's: started and read; an operator's decision is not
        # the partner's to make, whatever its scopes.
        mine_started = await http.post("/v1/closures", json=closure(mine), headers=keyed())
        assert mine_started.status_code == 202, mine_started.text
        assert await stage(http, mine, STAGE_PAYING) == closure_status(
            mine, STAGE_PAYING, payouts={"USD": payout_request_id(mine, 1)}
        )
        decided = await http.post(
            f"/v1/closures/{mine}/decide",
            json={"action": "abandon", "reason": "the customer stays", "operator": "op-1"},
        )
        assert (decided.status_code, decided.json()["code"]) == (403, "program_wide_route")
        assert await stage(ops, theirs, STAGE_PAYING) == closure_status(
            theirs, STAGE_PAYING, payouts={"USD": payout_request_id(theirs, 1)}
        )
    assert await account_status(platform, mine) == "closing"


async def test_an_operator_retries_a_failed_payout_to_another_account_through_the_api(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: BALANCE_MINOR})
    operator = await platform.key_headers(SCOPE_OPERATIONS)
    retry = {
        "action": "retry",
        "destination": {"iban": ADA_IN_LONDON.iban, "name": ADA_IN_LONDON.name},
        "reason": "the customer gave another account",
        "operator": "op-1",
    }
    first_id, second_id = payout_request_id(customer_id, 1), payout_request_id(customer_id, 2)
    async with api(platform, platform.api_headers) as http, api(platform, operator) as ops:
        nobody = await ops.post(f"/v1/closures/c-{uuid.uuid4().hex[:10]}/decide", json=retry)
        assert (nobody.status_code, nobody.json()["code"]) == (404, "not_found")
        started = await http.post("/v1/closures", json=closure(customer_id), headers=keyed())
        assert started.status_code == 202, started.text
        first = await asked(platform, first_id)
        # While the bank has the payout, nothing is for an operator to decide.
        early = await ops.post(f"/v1/closures/{customer_id}/decide", json=retry)
        assert (early.status_code, early.json()) == (
            409,
            {"code": "wrong_state", "detail": f"no decision is pending (stage: {STAGE_PAYING})"},
        )
        async with BankClient(platform.sim.provider_url("bank")) as bank:
            await bank.simulate_payout_failed(
                first.id, "account_closed", idempotency_key=f"fail-{first.id}"
            )
        waiting = await stage(http, customer_id, STAGE_OPERATOR)
        assert waiting == closure_status(
            customer_id,
            STAGE_OPERATOR,
            payouts={"USD": first_id},
            waiting_for_operator="the USD payout ended failed: the bank could not pay:"
            " account_closed",
        )
        # Nothing left the wallet.
        assert await wallet(platform, customer_id) == (BALANCE_MINOR, 0)
        malformed = await ops.post(
            f"/v1/closures/{customer_id}/decide",
            json={**retry, "destination": {"iban": "GB82WEST12345698765433", "name": "Ada"}},
        )
        assert (malformed.status_code, malformed.json()["detail"][0]["loc"]) == (
            422,
            ["body", "destination", "bank", "iban"],
        )
        platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
        key = keyed(f"decide-{uuid.uuid4().hex[:8]}")
        decided = await ops.post(f"/v1/closures/{customer_id}/decide", json=retry, headers=key)
        assert (decided.status_code, decided.json()) == (200, {"result": "retry recorded"})
        # Sent again with its key, it answers the first sending's result.
        again = await ops.post(f"/v1/closures/{customer_id}/decide", json=retry, headers=key)
        assert (again.status_code, again.json()) == (200, {"result": "retry recorded"})
        withdrawal = await paid(http, second_id)
        [second] = await payouts(platform, second_id)
        assert withdrawal == payout_status(second_id, customer_id, second.id)
        assert (second.status, second.amount_minor, second.destination_iban) == (
            "sent",
            BALANCE_MINOR,
            ADA_IN_LONDON.iban,
        )
        assert [payout.status for payout in await payouts(platform, first_id)] == ["failed"]
        assert await wallet(platform, customer_id) == (0, 0)
        assert await stage(http, customer_id, STAGE_PAYING) == closure_status(
            customer_id, STAGE_PAYING, payouts={"USD": payout_request_id(customer_id, 2)}
        )
    assert await verify(platform.stack.pool) == []


async def test_an_abandoned_closure_refuses_a_later_decision_as_finished(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: BALANCE_MINOR})
    operator = await platform.key_headers(SCOPE_OPERATIONS)
    abandon = {"action": "abandon", "reason": "the customer stays", "operator": "op-2"}
    first_id = payout_request_id(customer_id, 1)
    async with api(platform, platform.api_headers) as http, api(platform, operator) as ops:
        started = await http.post("/v1/closures", json=closure(customer_id), headers=keyed())
        assert started.status_code == 202, started.text
        first = await asked(platform, first_id)
        async with BankClient(platform.sim.provider_url("bank")) as bank:
            await bank.simulate_payout_failed(
                first.id, "account_closed", idempotency_key=f"fail-{first.id}"
            )
        await stage(http, customer_id, STAGE_OPERATOR)
        decided = await ops.post(f"/v1/closures/{customer_id}/decide", json=abandon)
        assert (decided.status_code, decided.json()) == (200, {"result": "abandon recorded"})
        ended = await stage(http, customer_id, "abandoned")
        assert ended == closure_status(
            customer_id,
            "abandoned",
            outcome="abandoned",
            reason="operator op-2: the customer stays",
            payouts={"USD": first_id},
        )
        late = await ops.post(f"/v1/closures/{customer_id}/decide", json=abandon)
        assert (late.status_code, late.json()) == (
            409,
            {"code": "finished", "detail": "closure already finished (abandoned)"},
        )
    # The account is open again, the money still in it.
    assert await account_status(platform, customer_id) == "open"
    assert await wallet(platform, customer_id) == (BALANCE_MINOR, 0)
    assert await verify(platform.stack.pool) == []
