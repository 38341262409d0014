"""The chaos run's card controls and rules: a card's own controls and
temporary ones (undone by the card's timer while the run goes on), and
changes of the program's rules sent to every card (`controls-change/...`)
while workers are killed. None of them moves money by itself; the run's
invariants judge the money they let through and the processes they start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bench.chaos.evidence import CustomerRef
from bench.chaos.plan import Operation
from bench.chaos.workload_calls import WorkloadCalls, expect

# A temporary control lasts this long: it undoes itself during the run.
TEMPORARY_SECONDS = 30
# What the program's rules say: a purchase at a gambling merchant is
# declined (the run's merchants are not ones), bigger ones and busy cards
# are watched in shadow.
PROGRAM_RULES: list[dict[str, Any]] = [
    {
        "id": "no-gambling",
        "mode": "active",
        "conditions": [{"kind": "mcc", "any_of": ["group:gambling"]}],
    },
    {
        "id": "watch-big",
        "mode": "shadow",
        "conditions": [{"kind": "amount", "at_least_minor": 4_000}],
    },
    {
        "id": "watch-busy",
        "mode": "shadow",
        "conditions": [{"kind": "velocity", "window_seconds": 600, "count_at_least": 5}],
    },
]


class CardControls(WorkloadCalls):
    async def op_controls(self, customer: CustomerRef, operation: Operation) -> str:
        card_id = self._pick(self._usable_cards(customer), operation, "card")
        key = self.key("op", operation.number)
        variant = operation.choice % 3
        if variant == 0:
            limits = {"limits": [{"window": "day", "amount_max_minor": operation.amount_minor * 4}]}
            answer = await self.call_api("PUT", f"/cards/{card_id}/controls", limits, key=key)
            expect(answer, 200)
            return "daily limit set"
        if variant == 1:
            temporary = {
                "id": f"chaos-{operation.number}",
                "controls": {"mcc_block": ["group:gambling"], "country_block": ["KP"]},
                "until": (datetime.now(UTC) + timedelta(seconds=TEMPORARY_SECONDS)).isoformat(),
            }
            answer = await self.call_api(
                "POST", f"/cards/{card_id}/temporary-controls", temporary, key=key
            )
            expect(answer, 200)
            return "temporary control added"
        answer = await self.call_api("PUT", f"/cards/{card_id}/controls", {}, key=key)
        expect(answer, 200)
        return "controls cleared"

    async def op_program_rules(self, customer: CustomerRef, operation: Operation) -> str:
        request_id = self.key("rules", operation.number)
        body = {"request_id": request_id, "rules": PROGRAM_RULES, "reason": "chaos"}
        answer = await self.call_api("POST", "/rules", body, key=request_id)
        expect(answer, 200, 202)
        workflow_id = answer.json()["workflow_id"]
        self.evidence.started_by[workflow_id] = operation.number
        await self.until_process(
            workflow_id, lambda status: status.get("status") == "COMPLETED", "completed"
        )
        return "program rules sent to every card"
