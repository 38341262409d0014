"""The chaos run's traffic: each planned operation, done through a public entry point.

Actions go where a real party would send them: the `/v1` API with an API key
(onboardings, cards, card actions, FX, disputes, billing runs,
reconciliations), the issuer simulator as the card network (authorizations
asked in real time through the gateway, increments, clearings, reversals,
refunds, force posts, shipping, dispute decisions), the bank and the Tron
simulators as the money arriving, the KYC simulator as the verifier. Every
call carries a key derived from the seed and the operation number, so a call
repeated after a dropped connection or a killed process is the same call.

What the system answered is kept in `Evidence`: the authorizations and
transactions the issuer made, and the ids of every process whose result moves
a customer's money; the money model reads them at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import httpx
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.providers.bank import BankClient
from activities.providers.issuer import IssuerClient
from activities.providers.kyc import KycClient
from activities.providers.tron import TronClient
from bench.chaos.plan import Operation
from schemas.issuer import (
    Address,
    Authorization,
    AuthorizationStatus,
    DecidedBy,
    DisputeOutcome,
    Merchant,
    ShippingStatus,
    Transaction,
)
from schemas.kyc import KycDecision
from schemas.money import Currency
from schemas.providers import BANK, ISSUER, KYC, TRON
from workers.settings import Settings
from workflows.card_issue import card_issue_workflow_id
from workflows.cards import card_workflow_id, replacement_request_id
from workflows.topup import topup_workflow_id

T = TypeVar("T")

MERCHANTS = (
    Merchant(name="Corner Shop", mcc="5411", country="GB"),
    Merchant(name="Cafe Lumiere", mcc="5814", country="FR"),
    Merchant(name="Autobahn Fuel", mcc="5541", country="DE"),
    Merchant(name="Grand Hotel", mcc="7011", country="GB"),
    Merchant(name="Book Nook", mcc="5942", country="GB"),
)
ADDRESS = Address(line1="1 Chaos Lane", city="London", postal_code="N1 9GU", country="GB")
# Every customer starts with this in USD (a bank transfer), so purchases,
# fees and conversions never meet an empty wallet.
OPENING_FUNDS_MINOR = 500_000
# A call refused for a reason that passes (a 503 while a process is killed, a
# connection refused while a part restarts) is sent again, the same call,
# until this much time has passed.
CALL_PERSISTENCE_SECONDS = 180.0
CALL_RETRY_PAUSE_SECONDS = 0.5
# Waiting for a process to reach a stage or finish.
PROCESS_WAIT_SECONDS = 300.0
POLL_SECONDS = 0.2
RETRYABLE_PROVIDER_ERRORS = frozenset(
    {"ProviderTimeout", "ProviderUnreachable", "ProviderUnavailable", "ProviderRateLimited"}
)
API_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
DISPUTE_REASON = "fraudulent"
BURST_POST_MINOR = 1
# A fleet card's batch arrives together, not one at a time.
BURST_IN_FLIGHT = 8
ADMIN_TIMEOUT_SECONDS = 10.0
# The onboarding's stage once the KYC check is submitted and can be decided.
ONBOARDING_WAITS_FOR_KYC = "waiting for the KYC result"


class OperationSkipped(Exception):
    """The plan's operation found nothing to act on (no open card, no purchase)."""


@dataclass
class CardRef:
    card_id: str
    customer: int
    kind: str
    state: str = "open"  # open, frozen, lost


@dataclass
class AuthorizationRef:
    authorization_id: str
    card_id: str
    customer: int
    operation: int
    # Of the issuer's answer: who decided (the card, or the issuer's stand-in).
    stand_in: bool = False


@dataclass
class TransactionRef:
    transaction_id: str
    card_id: str
    customer: int
    operation: int
    type: str
    amount_minor: int
    refunded_minor: int = 0
    disputed: bool = False


@dataclass
class CustomerRef:
    index: int
    customer_id: str
    cards: list[str] = field(default_factory=list)
    open_authorizations: list[str] = field(default_factory=list)
    purchases: list[str] = field(default_factory=list)


@dataclass
class Evidence:
    """What the system answered, for the model and the report."""

    customers: list[CustomerRef] = field(default_factory=list)
    cards: dict[str, CardRef] = field(default_factory=dict)
    authorizations: dict[str, AuthorizationRef] = field(default_factory=dict)
    transactions: dict[str, TransactionRef] = field(default_factory=dict)
    # workflow id -> customer index, per process whose result moves money.
    topups: dict[str, int] = field(default_factory=dict)
    conversions: dict[str, int] = field(default_factory=dict)
    card_issues: dict[str, int] = field(default_factory=dict)
    disputes: dict[str, int] = field(default_factory=dict)
    # workflow id -> the operation that started it, for a violation's report.
    started_by: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    stand_ins: int = 0
    # Events the issuer sent again: (operation, what they are about, event id).
    resent: list[tuple[int, str, str]] = field(default_factory=list)

    def count(self, kind: str, outcome: str) -> None:
        per_kind = self.outcomes.setdefault(kind, {})
        per_kind[outcome] = per_kind.get(outcome, 0) + 1


class Workload:
    """Does the plan's operations; one instance per run."""

    def __init__(
        self,
        settings: Settings,
        client: Client,
        api_key: str,
        evidence: Evidence,
        *,
        seed: int,
        run_tag: str,
    ) -> None:
        self.settings = settings
        self.client = client
        self.evidence = evidence
        self.seed = seed
        self.run_tag = run_tag
        base = settings.providers_base_url
        self.api = httpx.AsyncClient(
            base_url=f"http://{settings.bind_host}:{settings.gateway_port}",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        self.issuer = IssuerClient(f"{base}/{ISSUER}")
        self.kyc = KycClient(f"{base}/{KYC}")
        self.bank = BankClient(f"{base}/{BANK}")
        self.tron = TronClient(f"{base}/{TRON}")
        self.locks: dict[int, asyncio.Lock] = {}

    async def close(self) -> None:
        await self.api.aclose()
        for provider in (self.issuer, self.kyc, self.bank, self.tron):
            await provider.aclose()

    def key(self, *parts: object) -> str:
        return "-".join(["chaos", str(self.seed), self.run_tag, *(str(p) for p in parts)])

    # ----- calls that persist through faults and kills ------------------

    async def provider(self, call: Callable[[], Awaitable[T]]) -> T:
        """A simulator call, sent again (same key) while the failure passes."""
        deadline = time.monotonic() + CALL_PERSISTENCE_SECONDS
        while True:
            try:
                return await call()
            except ApplicationError as error:
                if error.type not in RETRYABLE_PROVIDER_ERRORS or time.monotonic() > deadline:
                    raise
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(CALL_RETRY_PAUSE_SECONDS)

    async def call_api(
        self, method: str, path: str, body: Any = None, *, key: str | None = None
    ) -> httpx.Response:
        """A `/v1` request, sent again with the same Idempotency-Key while the
        gateway or a process is away (connection refused, 5xx, 408, 429)."""
        headers = {"Idempotency-Key": key} if key else {}
        deadline = time.monotonic() + CALL_PERSISTENCE_SECONDS
        while True:
            try:
                response = await self.api.request(method, f"/v1{path}", json=body, headers=headers)
                if response.status_code not in API_RETRY_STATUSES:
                    return response
                if time.monotonic() > deadline:
                    return response
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(CALL_RETRY_PAUSE_SECONDS)

    async def process(self, workflow_id: str) -> dict[str, Any]:
        response = await self.call_api("GET", f"/processes/{workflow_id}")
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    async def until_process(
        self, workflow_id: str, done: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + PROCESS_WAIT_SECONDS
        while True:
            status = await self.process(workflow_id)
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workflow_id} did not reach {what}: {status}")
            await asyncio.sleep(POLL_SECONDS)

    async def result(self, workflow_id: str) -> Any:
        """A finished process's result, read as an operator reads it."""
        return await self.client.get_workflow_handle(workflow_id).result()

    # ----- set-up: customers onboarded, funded, with a card --------------

    def customer_id(self, index: int) -> str:
        return f"chaos-{self.seed}-{self.run_tag}-{index:03d}"

    async def set_up_customer(self, index: int) -> CustomerRef:
        customer = CustomerRef(index=index, customer_id=self.customer_id(index))
        cid = customer.customer_id
        profile = {
            "customer_id": cid,
            "first_name": "Chaos",
            "last_name": f"Customer{index}",
            "date_of_birth": "1990-01-01",
            "country": "GBR",
            "email": f"{cid}@example.com",
        }
        document = {"type": "passport", "country": "GBR", "file_name": "passport.jpg"}
        started = await self.call_api(
            "POST",
            "/onboardings",
            {"profile": profile, "documents": [document]},
            key=self.key("onboard", index),
        )
        _expect(started, 202, 200)
        workflow_id = started.json()["workflow_id"]
        status = await self.until_process(
            workflow_id,
            lambda s: (s.get("details") or {}).get("stage") == ONBOARDING_WAITS_FOR_KYC,
            "a KYC applicant's check",
        )
        applicant_id = status["details"]["applicant_id"]
        await self.provider(
            lambda: self.kyc.simulate_decision(
                applicant_id, result=KycDecision.GREEN, idempotency_key=self.key("kyc", index)
            )
        )
        await self.until_process(workflow_id, lambda s: s["status"] == "COMPLETED", "approval")
        await self.topup_bank(customer, OPENING_FUNDS_MINOR, self.key("opening", index))
        card_id = await self.issue_card(customer, "virtual", self.key("first-card", index), -1)
        customer.cards.append(card_id)
        return customer

    # ----- the operations ------------------------------------------------

    async def run(self, operation: Operation) -> str:
        customer = self.evidence.customers[operation.customer]
        lock = self.locks.setdefault(operation.customer, asyncio.Lock())
        async with lock:
            handler = getattr(self, f"op_{operation.kind}")
            outcome: str = await handler(customer, operation)
            return outcome

    def _pick(self, items: list[str], operation: Operation, what: str) -> str:
        if not items:
            raise OperationSkipped(f"no {what}")
        return items[operation.choice % len(items)]

    async def _open_authorization(
        self, customer: CustomerRef, operation: Operation
    ) -> Authorization:
        """One of the customer's authorizations the issuer still holds, as it
        stands now; one the issuer has finished since is dropped and skipped."""
        authorization_id = self._pick(customer.open_authorizations, operation, "open authorization")
        current = await self.provider(lambda: self.issuer.get_authorization(authorization_id))
        if current.status is not AuthorizationStatus.PENDING:
            customer.open_authorizations.remove(authorization_id)
            raise OperationSkipped(f"authorization {current.status.value}")
        return current

    def _usable_cards(self, customer: CustomerRef) -> list[str]:
        return [c for c in customer.cards if self.evidence.cards[c].state in ("open", "frozen")]

    async def op_authorize(self, customer: CustomerRef, operation: Operation) -> str:
        card_id = self._pick(self._usable_cards(customer), operation, "card")
        merchant = MERCHANTS[operation.choice % len(MERCHANTS)]
        authorization = await self.provider(
            lambda: self.issuer.simulate_authorization(
                card_id=card_id,
                amount_minor=operation.amount_minor,
                currency=Currency.USD,
                merchant=merchant,
                partial_approval_capable=operation.choice % 7 == 0,
                idempotency_key=self.key("op", operation.number),
            )
        )
        return self._authorized(customer, card_id, operation, authorization)

    def _authorized(
        self, customer: CustomerRef, card_id: str, operation: Operation, answer: Authorization
    ) -> str:
        stand_in = any(d.decided_by is DecidedBy.STAND_IN for d in answer.decisions)
        if answer.id not in self.evidence.authorizations:
            self.evidence.authorizations[answer.id] = AuthorizationRef(
                answer.id, card_id, customer.index, operation.number, stand_in
            )
            if stand_in:
                self.evidence.stand_ins += 1
        if answer.status is AuthorizationStatus.PENDING:
            if answer.id not in customer.open_authorizations:
                customer.open_authorizations.append(answer.id)
            return "approved (stand-in)" if stand_in else "approved"
        return "declined (stand-in)" if stand_in else "declined"

    async def op_increment(self, customer: CustomerRef, operation: Operation) -> str:
        authorization_id = self._pick(customer.open_authorizations, operation, "open authorization")
        card_id = self.evidence.authorizations[authorization_id].card_id
        answer = await self.provider(
            lambda: self.issuer.simulate_increment(
                authorization_id,
                amount_minor=max(1, operation.amount_minor // 4),
                idempotency_key=self.key("op", operation.number),
            )
        )
        before = self.evidence.stand_ins
        self._authorized(customer, card_id, operation, answer)
        stand_in = any(
            d.decided_by is DecidedBy.STAND_IN and d.kind == "increment" for d in answer.decisions
        )
        if stand_in and self.evidence.stand_ins == before:
            self.evidence.stand_ins += 1
        last = answer.decisions[-1]
        return "approved" if last.approved_amount_minor > 0 else "declined"

    def _transaction(
        self, customer: CustomerRef, card_id: str, operation: Operation, tx: Transaction
    ) -> None:
        if tx.id in self.evidence.transactions:
            return
        self.evidence.transactions[tx.id] = TransactionRef(
            tx.id, card_id, customer.index, operation.number, tx.type.value, tx.amount_minor
        )
        if tx.type.value in ("clearing", "force_post"):
            customer.purchases.append(tx.id)

    async def op_clear(self, customer: CustomerRef, operation: Operation) -> str:
        current = await self._open_authorization(customer, operation)
        authorization_id = current.id
        card_id = self.evidence.authorizations[authorization_id].card_id
        held = current.pending_amount_minor
        variant = operation.choice % 100
        if variant < 50:
            amount, final, label = None, True, "cleared equal"
        elif variant < 80:
            amount, final, label = max(1, held * (50 + variant % 40) // 100), True, "cleared lower"
        else:
            amount, final, label = held + max(1, held * (variant % 10) // 100), True, "higher"
            label = "cleared higher"
        tx = await self.provider(
            lambda: self.issuer.simulate_clearing(
                authorization_id,
                amount_minor=amount,
                final=final,
                idempotency_key=self.key("op", operation.number),
            )
        )
        self._transaction(customer, card_id, operation, tx)
        if authorization_id in customer.open_authorizations:
            customer.open_authorizations.remove(authorization_id)
        return label

    async def op_reverse(self, customer: CustomerRef, operation: Operation) -> str:
        current = await self._open_authorization(customer, operation)
        authorization_id = current.id
        partial = operation.choice % 2 == 0 and current.pending_amount_minor > 1
        amount = current.pending_amount_minor // 2 if partial else None
        reversal = await self.provider(
            lambda: self.issuer.simulate_reversal(
                authorization_id,
                amount_minor=amount,
                idempotency_key=self.key("op", operation.number),
            )
        )
        if reversal.authorization_status is not AuthorizationStatus.PENDING:
            customer.open_authorizations.remove(authorization_id)
        return "reversed partly" if partial else "reversed"

    async def op_refund(self, customer: CustomerRef, operation: Operation) -> str:
        refundable = [
            t
            for t in customer.purchases
            if self.evidence.transactions[t].amount_minor
            > self.evidence.transactions[t].refunded_minor
            and not self.evidence.transactions[t].disputed
        ]
        transaction_id = self._pick(refundable, operation, "refundable purchase")
        purchase = self.evidence.transactions[transaction_id]
        left = purchase.amount_minor - purchase.refunded_minor
        amount = left if operation.choice % 3 == 0 else max(1, min(left, operation.amount_minor))
        merchant = MERCHANTS[operation.choice % len(MERCHANTS)]
        tx = await self.provider(
            lambda: self.issuer.simulate_refund(
                card_id=purchase.card_id,
                amount_minor=amount,
                currency=Currency.USD,
                merchant=merchant,
                refunded_transaction_id=transaction_id,
                idempotency_key=self.key("op", operation.number),
            )
        )
        purchase.refunded_minor += amount
        self._transaction(customer, purchase.card_id, operation, tx)
        state = self.evidence.cards[purchase.card_id].state
        return "refunded" if state in ("open", "frozen") else f"refunded to a {state} card"

    async def op_force_post(self, customer: CustomerRef, operation: Operation) -> str:
        card_id = self._pick(self._usable_cards(customer), operation, "card")
        merchant = MERCHANTS[operation.choice % len(MERCHANTS)]
        tx = await self.provider(
            lambda: self.issuer.simulate_force_post(
                card_id=card_id,
                amount_minor=operation.amount_minor,
                currency=Currency.USD,
                merchant=merchant,
                idempotency_key=self.key("op", operation.number),
            )
        )
        self._transaction(customer, card_id, operation, tx)
        return "force posted"

    async def topup_bank(self, customer: CustomerRef, amount_minor: int, key: str) -> str:
        transfer = await self.provider(
            lambda: self.bank.simulate_inbound_transfer(
                reference=customer.customer_id,
                amount_minor=amount_minor,
                currency=Currency.USD,
                sender_name="Chaos Sender",
                idempotency_key=key,
            )
        )
        workflow_id = topup_workflow_id("bank", transfer.id)
        self.evidence.topups[workflow_id] = customer.index
        return workflow_id

    async def op_topup_bank(self, customer: CustomerRef, operation: Operation) -> str:
        workflow_id = await self.topup_bank(
            customer, operation.amount_minor, self.key("op", operation.number)
        )
        self.evidence.started_by[workflow_id] = operation.number
        return "bank transfer sent"

    async def op_topup_usdt(self, customer: CustomerRef, operation: Operation) -> str:
        address = await self.provider(
            lambda: self.tron.get_or_create_address(
                customer.customer_id, idempotency_key=f"deposit-address/{customer.customer_id}"
            )
        )
        deposit = await self.provider(
            lambda: self.tron.simulate_deposit(
                address=address.address,
                amount_minor=operation.amount_minor,
                from_address="TChaosSenderAddressXXXXXXXXXXXXXXX",
                idempotency_key=self.key("op", operation.number),
            )
        )
        workflow_id = topup_workflow_id("usdt", deposit.tx_hash)
        self.evidence.topups[workflow_id] = customer.index
        self.evidence.started_by[workflow_id] = operation.number
        return "usdt deposited"

    async def op_fx(self, customer: CustomerRef, operation: Operation) -> str:
        body = {
            "customer_id": customer.customer_id,
            "sell_currency": "USD",
            "buy_currency": "EUR",
            "sell_amount_minor": operation.amount_minor,
        }
        started = await self.call_api(
            "POST", "/fx/quotes", body, key=self.key("op", operation.number)
        )
        if started.status_code not in (200, 202):
            return f"quote refused {started.status_code}"
        answer = started.json()
        workflow_id = answer["workflow_id"]
        request_id = answer.get("request_id") or workflow_id.removeprefix("fx/")
        self.evidence.conversions[workflow_id] = customer.index
        self.evidence.started_by[workflow_id] = operation.number
        late = operation.choice % 100 >= 80
        if late:
            expires_at = datetime.fromisoformat(answer["offer"]["expires_at"])
            await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds() + 0.5))
        confirmed = await self.call_api(
            "POST", f"/fx/{request_id}/confirm", key=self.key("op", operation.number, "confirm")
        )
        if confirmed.status_code == 200:
            return "converted after expiry" if late else "converted"
        return f"confirm refused {confirmed.status_code}" + (" (expired)" if late else "")

    async def issue_card(self, customer: CustomerRef, kind: str, key: str, number: int) -> str:
        body = {"customer_id": customer.customer_id, "kind": kind, "address": ADDRESS.model_dump()}
        started = await self.call_api("POST", "/cards", body, key=key)
        _expect(started, 202, 200)
        workflow_id = started.json()["workflow_id"]
        self.evidence.card_issues[workflow_id] = customer.index
        self.evidence.started_by[workflow_id] = number
        request_id = workflow_id.removeprefix("card-issue/")
        if kind == "physical":
            status = await self.until_process(
                workflow_id,
                lambda s: (
                    s["status"] != "RUNNING" or (s.get("details") or {}).get("stage") == "shipping"
                ),
                "shipping",
            )
            if status["status"] != "RUNNING":
                raise RuntimeError(f"{workflow_id} ended before shipping: {status['status']}")
            card_id = str(status["details"]["card_id"])
            await self.ship_and_activate(card_id, request_id, key)
        result = await asyncio.wait_for(self.result(workflow_id), PROCESS_WAIT_SECONDS)
        card_id = str(result.get("card_id") if isinstance(result, dict) else result.card_id)
        if not card_id or card_id == "None":
            raise RuntimeError(f"{workflow_id} issued no card: {result}")
        self.evidence.cards[card_id] = CardRef(card_id, customer.index, kind)
        return card_id

    async def ship_and_activate(self, card_id: str, request_id: str, key: str) -> None:
        """The carrier delivers a physical card and its holder activates it."""
        for step in (
            ShippingStatus.SUBMITTED,
            ShippingStatus.SHIPPED,
            ShippingStatus.DELIVERED,
        ):
            await self.provider(
                lambda step=step: self.issuer.simulate_shipping(  # type: ignore[misc]
                    card_id, status=step, idempotency_key=f"{key}-{step.value}"
                )
            )
        # Activation is refused until the delivery has reached the process.
        deadline = time.monotonic() + PROCESS_WAIT_SECONDS
        for attempt in itertools.count():
            # A refused activation is remembered under its key: each ask has
            # its own (a key that grew with every ask passed the API's bound).
            activated = await self.call_api(
                "POST", f"/card-issues/{request_id}/activate", key=f"{key}-activate-{attempt}"
            )
            if activated.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"card-issue/{request_id} refused activation until the end: "
                    f"{activated.status_code} {activated.text[:200]}"
                )
            await asyncio.sleep(POLL_SECONDS)

    async def op_card_virtual(self, customer: CustomerRef, operation: Operation) -> str:
        card_id = await self.issue_card(
            customer, "virtual", self.key("op", operation.number), operation.number
        )
        customer.cards.append(card_id)
        return "issued"

    async def op_card_physical(self, customer: CustomerRef, operation: Operation) -> str:
        card_id = await self.issue_card(
            customer, "physical", self.key("op", operation.number), operation.number
        )
        customer.cards.append(card_id)
        return "issued and activated"

    async def card_action(self, card_id: str, action: str, key: str) -> httpx.Response:
        return await self.call_api(
            "POST", f"/cards/{card_id}/actions", {"action": action, "reason": "chaos"}, key=key
        )

    async def op_freeze(self, customer: CustomerRef, operation: Operation) -> str:
        # A frozen card is unfrozen first: customers freeze a card for a while.
        frozen = [c for c in customer.cards if self.evidence.cards[c].state == "frozen"]
        card_id = self._pick(frozen or self._usable_cards(customer), operation, "card")
        card = self.evidence.cards[card_id]
        action = "unfreeze" if card.state == "frozen" else "freeze"
        answer = await self.card_action(card_id, action, self.key("op", operation.number))
        if answer.status_code != 200:
            return f"{action} refused {answer.status_code}"
        card.state = "open" if action == "unfreeze" else "frozen"
        return "frozen" if action == "freeze" else "unfrozen"

    async def op_replace(self, customer: CustomerRef, operation: Operation) -> str:
        # The customer keeps one card open at least, so the run goes on.
        usable = self._usable_cards(customer)
        if len(usable) < 2:
            raise OperationSkipped("only one card")
        card_id = self._pick(usable, operation, "card")
        answer = await self.card_action(card_id, "report_lost", self.key("op", operation.number))
        if answer.status_code != 200:
            return f"report refused {answer.status_code}"
        lost = self.evidence.cards[card_id]
        lost.state = "lost"
        # The replacement: found on the old card, issued (and for a physical
        # card shipped and activated) like any card.
        deadline = time.monotonic() + PROCESS_WAIT_SECONDS
        while True:
            seen = await self.call_api("GET", f"/cards/{card_id}")
            replacement = seen.json().get("replaced_by") if seen.status_code == 200 else None
            if replacement or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
        if not replacement:
            raise RuntimeError(f"card {card_id} was reported lost but names no replacement")
        if lost.kind == "physical":
            # A physical replacement has an issuing process of its own.
            request_id = replacement_request_id(replacement)
            workflow_id = card_issue_workflow_id(request_id)
            self.evidence.card_issues[workflow_id] = customer.index
            self.evidence.started_by[workflow_id] = operation.number
            await self.ship_and_activate(
                replacement, request_id, self.key("op", operation.number, "replacement")
            )
            await asyncio.wait_for(self.result(workflow_id), PROCESS_WAIT_SECONDS)
        self.evidence.cards[replacement] = CardRef(replacement, customer.index, lost.kind)
        customer.cards.append(replacement)
        return "reported lost, replaced"

    async def op_dispute(self, customer: CustomerRef, operation: Operation) -> str:
        candidates = [
            t
            for t in customer.purchases
            if not self.evidence.transactions[t].disputed
            and self.evidence.transactions[t].refunded_minor == 0
        ]
        transaction_id = self._pick(candidates, operation, "purchase to dispute")
        purchase = self.evidence.transactions[transaction_id]
        purchase.disputed = True
        body = {
            "transaction_id": transaction_id,
            "customer_id": customer.customer_id,
            "reason": DISPUTE_REASON,
            "evidence": [
                {"type": "cardholder_statement", "description": "I did not make this purchase."}
            ],
        }
        started = await self.call_api(
            "POST", "/disputes", body, key=self.key("op", operation.number)
        )
        if started.status_code not in (200, 202):
            return f"dispute refused {started.status_code}"
        workflow_id = started.json()["workflow_id"]
        self.evidence.disputes[workflow_id] = customer.index
        self.evidence.started_by[workflow_id] = operation.number
        submitted = await self.call_api(
            "POST",
            f"/disputes/{transaction_id}/submit",
            {},
            key=self.key("op", operation.number, "submit"),
        )
        if submitted.status_code != 200:
            return f"submit refused {submitted.status_code}"
        status = await self.until_process(
            workflow_id,
            lambda s: (
                s["status"] != "RUNNING" or bool((s.get("details") or {}).get("issuer_dispute_id"))
            ),
            "the issuer's dispute",
        )
        dispute_id = (status.get("details") or {}).get("issuer_dispute_id")
        if not dispute_id:
            return f"dispute ended {status['status']}"
        outcome = DisputeOutcome.WON if operation.choice % 2 == 0 else DisputeOutcome.LOST
        await self.provider(
            lambda: self.issuer.simulate_dispute_decision(
                dispute_id, outcome=outcome, idempotency_key=self.key("op", operation.number, "d")
            )
        )
        return f"dispute {outcome.value}"

    async def op_represent(self, customer: CustomerRef, operation: Operation) -> str:
        """The issuer announces a clearing it announced before: the very event
        again (its dashboard's resend), or the same clearing under a new event
        id (a replay after the issuer's own incident). The card must not move
        its money again, however long ago it saw the first."""
        cleared = [
            t for t in customer.purchases if self.evidence.transactions[t].type == "clearing"
        ]
        transaction_id = self._pick(cleared, operation, "clearing")
        if operation.choice % 2 == 0:
            return await self._resend_event_about(transaction_id, operation)
        return await self._reannounce(transaction_id)

    async def _reannounce(self, transaction_id: str) -> str:
        """The issuer's event about a transaction it settled long ago, under a
        new event id (past the gateway's memory of event ids)."""
        transaction = await self.provider(lambda: self.issuer.get_transaction(transaction_id))
        event_type = {
            "clearing": "transaction.cleared",
            "force_post": "transaction.force_posted",
            "refund": "transaction.refunded",
        }[transaction.type.value]
        emitted = await self._admin(
            "POST",
            "/webhooks/emit",
            json={
                "simulator": ISSUER,
                "type": event_type,
                "data": transaction.model_dump(mode="json"),
            },
        )
        _expect(emitted, 201)
        return "re-presented under a new event id"

    async def op_resend_oldest(self, customer: CustomerRef, operation: Operation) -> str:
        """The issuer announces again, under a new event id, the first clearing
        of the customer's busiest card (after the burst, hundreds of that
        card's events ago): the card must not move its money again,
        whatever it still remembers. (The very event again is stopped by the
        gateway's own record of event ids.)"""
        per_card: dict[str, list[TransactionRef]] = {}
        for transaction in self.evidence.transactions.values():
            if transaction.customer == customer.index:
                per_card.setdefault(transaction.card_id, []).append(transaction)
        if not per_card:
            raise OperationSkipped("no transaction")
        busiest = max(per_card.values(), key=len)
        # After the card has been sent every one of them: the announcement
        # must come hundreds of the card's events after the first.
        await self._until_delivered({t.transaction_id for t in busiest})
        # A clearing of a purchase, if the card has one: its money came from a
        # hold, so applying it again would take it a second time from the
        # wallet (a force post is posted under its own id either way).
        oldest = next((t for t in busiest if t.type == "clearing"), busiest[0])
        self.evidence.resent.append((operation.number, oldest.transaction_id, "new event id"))
        return await self._reannounce(oldest.transaction_id)

    def _clearings(self, card_id: str) -> int:
        return sum(
            1
            for t in self.evidence.transactions.values()
            if t.card_id == card_id and t.type == "clearing"
        )

    async def _until_delivered(self, object_ids: set[str]) -> None:
        deadline = time.monotonic() + PROCESS_WAIT_SECONDS
        while time.monotonic() < deadline:
            answer = await self._admin("GET", "/webhooks", params={"undelivered": "true"})
            _expect(answer, 200)
            if not any(row.get("about") in object_ids for row in answer.json()):
                return
            await asyncio.sleep(POLL_SECONDS)

    async def _admin(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """A call to the simulators' admin API, made again while the run has
        them killed and restarting: a read on any broken connection, a write
        only when it never connected (it may have been applied otherwise)."""
        deadline = time.monotonic() + PROCESS_WAIT_SECONDS
        retried = httpx.TransportError if method == "GET" else httpx.ConnectError
        while True:
            try:
                async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_SECONDS) as admin:
                    return await admin.request(
                        method,
                        f"{self.settings.providers_base_url}/_admin{path}",
                        json=json,
                        params=params,
                    )
            except retried:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(POLL_SECONDS)

    async def _resend_event_about(self, object_id: str, operation: Operation) -> str:
        answer = await self._admin(
            "POST", "/webhooks/resend", json={"simulator": ISSUER, "about": object_id}
        )
        _expect(answer, 200)
        event_id = answer.json().get("resent")
        if event_id is None:
            raise OperationSkipped(f"no event about {object_id} delivered yet")
        self.evidence.resent.append((operation.number, object_id, str(event_id)))
        return "the same event resent"

    async def op_burst(self, customer: CustomerRef, operation: Operation) -> str:
        """`amount_minor` small force posts on one card, BURST_IN_FLIGHT at once:
        the card with the most cleared purchases (the one re-announced after)."""
        usable = self._usable_cards(customer)
        card_id = self._pick(usable, operation, "card")
        cleared = {card: self._clearings(card) for card in usable}
        if any(cleared.values()):
            card_id = max(usable, key=lambda card: cleared[card])
        merchant = MERCHANTS[operation.choice % len(MERCHANTS)]
        gate = asyncio.Semaphore(BURST_IN_FLIGHT)

        async def post(index: int) -> None:
            async with gate:
                tx = await self.provider(
                    lambda: self.issuer.simulate_force_post(
                        card_id=card_id,
                        amount_minor=BURST_POST_MINOR,
                        currency=Currency.USD,
                        merchant=merchant,
                        idempotency_key=self.key("op", operation.number, index),
                    )
                )
            self._transaction(customer, card_id, operation, tx)

        await asyncio.gather(*(post(index) for index in range(operation.amount_minor)))
        return "burst"

    # ----- the day's end -------------------------------------------------

    async def reconcile(self, settlement_day: date) -> str:
        answer = await self.call_api("POST", f"/reconciliations/issuer/{settlement_day}")
        _expect(answer, 202, 200)
        return str(answer.json()["workflow_id"])

    async def bill(self, period: str) -> str:
        answer = await self.call_api("POST", f"/billing-runs/{period}")
        _expect(answer, 202, 200)
        return str(answer.json()["workflow_id"])


def _expect(response: httpx.Response, *statuses: int) -> None:
    if response.status_code not in statuses:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:300]}"
        )


__all__ = [
    "OPENING_FUNDS_MINOR",
    "AuthorizationRef",
    "CardRef",
    "CustomerRef",
    "Evidence",
    "OperationSkipped",
    "TransactionRef",
    "Workload",
    "card_workflow_id",
]
