"""The chaos workload's card issuing and card actions through the `/v1` API:
virtual and physical cards issued (a physical one shipped and activated),
frozen and unfrozen, reported lost and replaced."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from bench.chaos.evidence import CardRef, CustomerRef
from bench.chaos.plan import Operation
from bench.chaos.workload_calls import (
    POLL_SECONDS,
    PROCESS_WAIT_SECONDS,
    OperationSkipped,
    WorkloadCalls,
    expect,
)
from schemas.issuer import Address, ShippingStatus
from workflows.card_issue import card_issue_workflow_id
from workflows.cards import replacement_request_id

ADDRESS = Address(line1="1 Chaos Lane", city="London", postal_code="N1 9GU", country="GB")


class CardIssuing(WorkloadCalls):
    """Cards issued, and the customer's actions on them."""

    async def issue_card(self, customer: CustomerRef, kind: str, key: str, number: int) -> str:
        body = {"customer_id": customer.customer_id, "kind": kind, "address": ADDRESS.model_dump()}
        started = await self.call_api("POST", "/cards", body, key=key)
        expect(started, 202, 200)
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
