"""Named end-to-end scenarios against a running stack, by name: `cardflow
histories record` records their workflow histories for replay tests, and the
demo's walk-through (starters/demo.py) takes its steps from them. Each
process's scenarios live in starters/scenarios_<process>.py, the steps they
share in starters/scenario_steps.py."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from temporalio.client import Client

from starters.health import ping
from starters.scenarios_authentication import authentication_challenged
from starters.scenarios_billing import billing_period
from starters.scenarios_cards import card_exception, card_purchase, card_replaced, card_virtual
from starters.scenarios_cashback import cashback_clawback
from starters.scenarios_controls import card_controls
from starters.scenarios_dispute import dispute_lost, dispute_won
from starters.scenarios_events import events_delivered
from starters.scenarios_fraud import fraud_case_cleared
from starters.scenarios_fx import fx_confirmed, fx_expired
from starters.scenarios_onboarding import (
    onboarding_approved,
    onboarding_expired,
    onboarding_rejected,
    onboarding_resubmitted,
    onboarding_reviewed,
    onboarding_uploaded,
)
from starters.scenarios_program_funding import program_funding_funded
from starters.scenarios_reconciliation import reconciliation_clean
from starters.scenarios_settlement import settlement_ingested
from starters.scenarios_topup import topup_bank, topup_collects_debt, topup_unmatched, topup_usdt
from starters.scenarios_withdrawals import closure_closed, withdrawal_paid, withdrawal_usdt
from workers.settings import Settings
from workflows.health import ping_workflow_id

# A scenario returns the ids of the workflows it ran (recorded in that order).
Scenario = Callable[[Client, Settings], Awaitable[str | list[str]]]


async def ping_scenario(client: Client, settings: Settings) -> str:
    workflow_id = ping_workflow_id(f"scenario-{uuid.uuid4().hex[:8]}")
    await ping(client, settings.task_queues, requested_by="scenario", workflow_id=workflow_id)
    return workflow_id


SCENARIOS: dict[str, Scenario] = {
    "ping": ping_scenario,
    "onboarding-approved": onboarding_approved,
    "onboarding-resubmitted": onboarding_resubmitted,
    "onboarding-rejected": onboarding_rejected,
    "onboarding-reviewed": onboarding_reviewed,
    "onboarding-uploaded": onboarding_uploaded,
    "onboarding-expired": onboarding_expired,
    "card-virtual": card_virtual,
    "card-purchase": card_purchase,
    "card-replaced": card_replaced,
    "fx-confirmed": fx_confirmed,
    "fx-expired": fx_expired,
    "cashback-clawback": cashback_clawback,
    "topup-bank": topup_bank,
    "topup-usdt": topup_usdt,
    "topup-unmatched": topup_unmatched,
    "topup-collects-debt": topup_collects_debt,
    "billing-period": billing_period,
    "dispute-won": dispute_won,
    "dispute-lost": dispute_lost,
    "reconciliation-clean": reconciliation_clean,
    # After the reconciliation: a card exception is not (yet) one of the
    # card's postings, so its force post stays off the day reconciled.
    "card-exception": card_exception,
    "events-delivered": events_delivered,
    "withdrawal-paid": withdrawal_paid,
    "withdrawal-usdt": withdrawal_usdt,
    "closure-closed": closure_closed,
    # Last: with the issuer already used, its run finds the program covered.
    "program-funding": program_funding_funded,
    "card-controls": card_controls,
    "fraud-case": fraud_case_cleared,
    "authentication-challenged": authentication_challenged,
    "settlement-ingested": settlement_ingested,
}
