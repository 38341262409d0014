"""Disputes (chargebacks) the program opens on settled card transactions.

    open -> representment -> pre_arbitration
    open | representment | pre_arbitration -> won | lost | withdrawn

The merchant may contest (representment) and the cardholder answer again
(pre-arbitration: the program escalates with POST .../pre_arbitration, or the
sandbox moves it); the network's decision ends it. A won dispute credits the
program with the disputed amount as a chargeback transaction.
"""

from __future__ import annotations

from fastapi import APIRouter

from simulators.issuer_models import (
    Dispute,
    DisputeDecisionIn,
    DisputeEntry,
    DisputeIn,
    DisputeStatus,
    Evidence,
    EvidenceAddIn,
    EvidenceIn,
    Transaction,
)
from simulators.issuer_state import (
    DISPUTES,
    TRANSACTIONS,
    IssuerState,
    conflict,
    unprocessable,
)

ACTIVE: frozenset[DisputeStatus] = frozenset({"open", "representment", "pre_arbitration"})
# The statuses each decision may follow.
DECISION_FROM: dict[DisputeStatus, frozenset[DisputeStatus]] = {
    "representment": frozenset({"open"}),
    "pre_arbitration": frozenset({"representment"}),
    "won": ACTIVE,
    "lost": ACTIVE,
}
DISPUTABLE_TYPES = frozenset({"clearing", "force_post"})


def _evidence(items: list[EvidenceIn], stamp: str) -> list[Evidence]:
    return [Evidence(**item.model_dump(), submitted_at=stamp) for item in items]


def router(state: IssuerState) -> APIRouter:
    api = state.context.router()

    def active_dispute(dispute_id: str, action: str) -> Dispute:
        dispute = state.load(DISPUTES, dispute_id)
        if dispute.status not in ACTIVE:
            conflict(f"cannot {action} dispute {dispute.id}: it is {dispute.status}")
        return dispute

    @api.post("/v1/disputes", status_code=201)
    async def open_dispute(body: DisputeIn) -> Dispute:
        """Opens a dispute on a settled clearing or force post, for all of it or
        part of it, once per transaction. Announced as dispute.created."""
        transaction = state.load(TRANSACTIONS, body.transaction_id)
        if transaction.type not in DISPUTABLE_TYPES:
            conflict(
                f"cannot dispute transaction {transaction.id}: it is a {transaction.type}; "
                "only clearings and force posts can be disputed"
            )
        for existing in state.all(DISPUTES):
            if existing.transaction_id == transaction.id:
                conflict(
                    f"transaction {transaction.id} is already disputed in {existing.id} "
                    f"({existing.status})"
                )
        amount_minor = transaction.amount_minor if body.amount_minor is None else body.amount_minor
        if amount_minor > transaction.amount_minor:
            unprocessable(
                ["body", "amount_minor"],
                f"exceeds the transaction's {transaction.amount_minor}",
                amount_minor,
            )
        stamp = state.now_iso()
        dispute = Dispute(
            id=state.new_id(DISPUTES),
            transaction_id=transaction.id,
            card_id=transaction.card_id,
            authorization_id=transaction.authorization_id,
            reason=body.reason,
            amount_minor=amount_minor,
            currency=transaction.currency,
            status="open",
            evidence=_evidence(body.evidence, stamp),
            history=[DisputeEntry(status="open", at=stamp)],
            created_at=stamp,
            updated_at=stamp,
        )
        state.save(DISPUTES, dispute)
        state.emit("dispute.created", dispute)
        return dispute

    @api.get("/v1/disputes/{dispute_id}")
    async def get_dispute(dispute_id: str) -> Dispute:
        """The dispute with its evidence and every status it went through."""
        return state.load(DISPUTES, dispute_id)

    @api.post("/v1/disputes/{dispute_id}/evidence")
    async def add_evidence(dispute_id: str, body: EvidenceAddIn) -> Dispute:
        """Adds evidence while the dispute is undecided. Announced as
        dispute.evidence_added."""
        dispute = active_dispute(dispute_id, "add evidence to")
        stamp = state.now_iso()
        dispute.evidence.extend(_evidence(body.evidence, stamp))
        dispute.updated_at = stamp
        state.save(DISPUTES, dispute)
        state.emit("dispute.evidence_added", dispute)
        return dispute

    @api.post("/v1/disputes/{dispute_id}/withdraw")
    async def withdraw_dispute(dispute_id: str) -> Dispute:
        """Withdraws an undecided dispute; nothing is credited. Announced as
        dispute.withdrawn."""
        dispute = active_dispute(dispute_id, "withdraw")
        stamp = state.now_iso()
        dispute.status = "withdrawn"
        dispute.closed_at = stamp
        dispute.updated_at = stamp
        dispute.history.append(DisputeEntry(status="withdrawn", at=stamp))
        state.save(DISPUTES, dispute)
        state.emit("dispute.withdrawn", dispute)
        return dispute

    @api.post("/v1/disputes/{dispute_id}/pre_arbitration")
    async def escalate_dispute(dispute_id: str) -> Dispute:
        """Answers the merchant's representment: the program takes the dispute
        to pre-arbitration. Announced as dispute.pre_arbitration."""
        dispute = state.load(DISPUTES, dispute_id)
        if dispute.status != "representment":
            conflict(f"cannot take dispute {dispute.id} to pre-arbitration: it is {dispute.status}")
        stamp = state.now_iso()
        dispute.status = "pre_arbitration"
        dispute.updated_at = stamp
        dispute.history.append(DisputeEntry(status="pre_arbitration", note="program", at=stamp))
        state.save(DISPUTES, dispute)
        state.emit("dispute.pre_arbitration", dispute)
        return dispute

    @api.post("/v1/simulate/disputes/{dispute_id}/decide")
    async def simulate_decision(dispute_id: str, body: DisputeDecisionIn) -> Dispute:
        """Sandbox: the network moves the dispute: representment (from open),
        pre_arbitration (from representment), or won / lost (from either).
        Won credits the disputed amount as a chargeback transaction. Announced
        as dispute.<outcome>."""
        dispute = state.load(DISPUTES, dispute_id)
        allowed = DECISION_FROM[body.outcome]
        if dispute.status not in allowed:
            conflict(
                f"dispute {dispute.id} is {dispute.status}; {body.outcome} needs it "
                f"{' or '.join(sorted(allowed))}"
            )
        stamp = state.now_iso()
        dispute.status = body.outcome
        dispute.updated_at = stamp
        dispute.history.append(DisputeEntry(status=body.outcome, note=body.note, at=stamp))
        chargeback: Transaction | None = None
        if body.outcome in ("won", "lost"):
            dispute.closed_at = stamp
        if body.outcome == "won":
            disputed = state.load(TRANSACTIONS, dispute.transaction_id)
            chargeback = Transaction(
                id=state.new_id(TRANSACTIONS),
                type="chargeback",
                direction="credit",
                status="settled",
                card_id=dispute.card_id,
                authorization_id=dispute.authorization_id,
                dispute_id=dispute.id,
                amount_minor=dispute.amount_minor,
                currency=dispute.currency,
                merchant=disputed.merchant,
                created_at=stamp,
            )
            dispute.chargeback_transaction_id = chargeback.id
            state.save(TRANSACTIONS, chargeback)
        state.save(DISPUTES, dispute)
        state.emit(f"dispute.{body.outcome}", dispute)
        return dispute

    return api
