"""Every process cardflow runs, and the query that tells each one's status.

The workers run these workflow types and the replayer replays them; the CLI's
`cardflow status` and the API's process route ask a process its status by
the query method its type defines, so the answer comes back as that type's
model. Imported by starters and workers, never from inside a workflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from schemas.authentication import AUTHENTICATION_WORKFLOW
from schemas.settlement_ingest import SETTLEMENT_INGEST_WORKFLOW
from workflows.authentication import Authentication
from workflows.billing import BILLING_RUN_WORKFLOW, BILLING_WORKFLOW, Billing, BillingRun
from workflows.card_issue import CARD_ISSUE_WORKFLOW, CardIssue
from workflows.cards import CARD_WORKFLOW, CardEntity
from workflows.cashback import CASHBACK_WORKFLOW, Cashback
from workflows.closure import CLOSURE_WORKFLOW, AccountClosure
from workflows.controls_change import CONTROLS_CHANGE_WORKFLOW, ControlsChange
from workflows.dispute import DISPUTE_WORKFLOW, DisputeWorkflow
from workflows.event_delivery import EVENT_DELIVERY_WORKFLOW, EventDelivery
from workflows.fraud import FRAUD_CASE_WORKFLOW, FRAUD_SCAN_WORKFLOW, FraudCase, FraudScan
from workflows.fx import FX_WORKFLOW, FxConversion
from workflows.health import PING_WORKFLOW, Ping
from workflows.onboarding import ONBOARDING_WORKFLOW, Onboarding
from workflows.program_funding import PROGRAM_FUNDING_WORKFLOW, ProgramFunding
from workflows.reconciliation import RECONCILIATION_WORKFLOW, Reconciliation
from workflows.scheduled_reconciliation import (
    SCHEDULED_RECONCILIATION_WORKFLOW,
    ScheduledReconciliation,
)
from workflows.scheduled_settlement import (
    SCHEDULED_SETTLEMENT_WORKFLOW,
    ScheduledSettlementIngest,
)
from workflows.settlement import SettlementIngest
from workflows.topup import TOPUP_WORKFLOW, Topup
from workflows.withdrawal import WITHDRAWAL_WORKFLOW, Withdrawal

# Every workflow type cardflow runs; the replayer uses the same list.
ALL_WORKFLOWS: Sequence[type] = (
    Ping,
    Onboarding,
    CardIssue,
    CardEntity,
    Cashback,
    Topup,
    FxConversion,
    DisputeWorkflow,
    Billing,
    BillingRun,
    Reconciliation,
    ScheduledReconciliation,
    EventDelivery,
    FraudScan,
    FraudCase,
    Withdrawal,
    AccountClosure,
    ProgramFunding,
    ControlsChange,
    Authentication,
    SettlementIngest,
    ScheduledSettlementIngest,
)

# The `status` query of every workflow type, by the type's name.
STATUS_QUERIES: dict[str, Callable[[Any], Any]] = {
    PING_WORKFLOW: Ping.status,
    ONBOARDING_WORKFLOW: Onboarding.status,
    CARD_ISSUE_WORKFLOW: CardIssue.status,
    CARD_WORKFLOW: CardEntity.status,
    CASHBACK_WORKFLOW: Cashback.status,
    TOPUP_WORKFLOW: Topup.status,
    FX_WORKFLOW: FxConversion.status,
    DISPUTE_WORKFLOW: DisputeWorkflow.status,
    BILLING_WORKFLOW: Billing.status,
    BILLING_RUN_WORKFLOW: BillingRun.status,
    RECONCILIATION_WORKFLOW: Reconciliation.status,
    SCHEDULED_RECONCILIATION_WORKFLOW: ScheduledReconciliation.status,
    EVENT_DELIVERY_WORKFLOW: EventDelivery.status,
    FRAUD_SCAN_WORKFLOW: FraudScan.status,
    FRAUD_CASE_WORKFLOW: FraudCase.status,
    WITHDRAWAL_WORKFLOW: Withdrawal.status,
    CLOSURE_WORKFLOW: AccountClosure.status,
    PROGRAM_FUNDING_WORKFLOW: ProgramFunding.status,
    CONTROLS_CHANGE_WORKFLOW: ControlsChange.status,
    AUTHENTICATION_WORKFLOW: Authentication.status,
    SETTLEMENT_INGEST_WORKFLOW: SettlementIngest.status,
    SCHEDULED_SETTLEMENT_WORKFLOW: ScheduledSettlementIngest.status,
}
