"""The program funding's scenario: a run that finds the program short at the
issuer, wires what is short and finds the bank account and custody in line."""

from __future__ import annotations

import uuid

import httpx
from temporalio.client import Client

from schemas.money import Currency
from schemas.providers import ISSUER
from starters.scenario_steps import wait_until
from starters.scenarios_cards import funded_virtual_card
from workers.settings import Settings
from workflows.cards import CardEntity, card_workflow_id

# What the sandbox's custodian holds of its own from the start (the Tron
# simulator's custody_opening_balance): no customer's money, so left out.
SANDBOX_CUSTODY_OPENING_MINOR = 10**12
# The program's USD balance at the issuer, on an issuer not used before.
SCENARIO_PROGRAM_BALANCE_MINOR = 10_000
ADMIN_TIMEOUT_SECONDS = 10


async def program_funding_funded(client: Client, settings: Settings) -> str:
    """The issuer's program balance opens at 100.00 USD; a customer holding
    100.00 spends 30.00 by card; the run (by hand, as the hourly schedule's
    would) wires the shortfall in a whole 100.00 step to the issuer. On an
    issuer already used (its balance opened at the sandbox's default) there
    is nothing to fund: the run finds the program covered."""
    from schemas.program_funding import STATUS_COVERED, STATUS_FUNDED, ProgramFundingPolicy
    from starters.program_funding import program_funding_input, run, summary
    from starters.simulate import authorize, clear

    async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_SECONDS) as http:
        answer = await http.put(
            f"{settings.providers_base_url}/_admin/options/{ISSUER}",
            json={
                "program_balances": {Currency.USD.value: SCENARIO_PROGRAM_BALANCE_MINOR},
                "funding_lead_seconds": 0,
            },
        )
        answer.raise_for_status()
    _, _, card_id = await funded_virtual_card(client, settings)
    authorization = await authorize(settings, card_id, 3_000)
    cleared = await clear(settings, authorization.id, 3_000, final=True)
    card = client.get_workflow_handle(card_workflow_id(card_id))

    async def settled() -> bool:
        state = await card.query(CardEntity.status)
        return cleared.id in state.seen_events and not state.authorizations

    await wait_until(settled, f"the card settles {cleared.id}")
    policy = ProgramFundingPolicy(
        currencies=[Currency.USD],
        funding_step_minor={Currency.USD: 10_000},
        bank_currencies=[Currency.USD],
        custody_opening_minor=SANDBOX_CUSTODY_OPENING_MINOR,
    )
    workflow_id = f"program-funding-scenario-{uuid.uuid4().hex[:8]}"
    report = await run(
        client,
        settings.task_queues,
        program_funding_input(settings.task_queues, policy),
        workflow_id,
    )
    if report.stage not in (STATUS_FUNDED, STATUS_COVERED):
        raise RuntimeError(f"the program funding found what it should not:\n{summary(report)}")
    return workflow_id
