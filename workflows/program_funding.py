"""Program funding `program-funding`: one run keeps the card program funded
at its issuer and reconciles the program's bank account and the Tron custody
wallet against the ledger. The Temporal Schedule `program-funding` starts a
run every interval (starters/program_funding.py), skipping one while a run
is going; `cardflow funding run` starts one by hand.

Each run:

1. Coverage, per currency of the policy: what the issuer holds for the
   program (its prefunded balance, which the cards' clearings draw down)
   against the customers' money (every wallet's posted balance: what card
   holds reserve is still in it) and the cards' spend per day over the
   policy's window. Target = customers' money + spend per day x the wire's
   lead days x the safety factor. Fundings wired before and not yet credited
   at the issuer count toward its balance, so two runs in a row fund once.
   Below the target the run funds the shortfall, rounded up to the policy's
   step: the bank wires it from the program's account to the issuer's IBAN,
   the ledger posts it, and the issuer is told (`fund_program`), in that
   order, each asked by the funding's reference first.
2. The coverage ratio (the issuer's balance, with what this run's funding
   credited at once, over the customers' money, in basis points) under the
   policy's threshold ends the run `coverage low`.
3. The bank statement, line by line, against the ledger
   (activities/program_funding.py says how each line is matched); a line the
   ledger lacks or has with another amount is drift, counted by kind. No fix
   is posted: an operator follows each one up.
4. Custody: the custodian's balance (less the program's own opening float)
   against crypto:custody:USDT; a difference is drift (custody holding less
   than the ledger says is money missing).

Ids and keys. A funding's id is `{workflow id}/{CCY}` (schemas/program_funding.py):
the reference of the bank's payout and of the issuer's funding; the payout's
key is `{id}/payout`, the issuer's `{id}/issuer`, the ledger's `{id}/wire`.
A run started again under its id finds its wire and funding by reference and
repeats its keys, so it never wires twice. A later run (another id) that
finds a wire posted in the ledger but unknown to the issuer (its run stopped
between the two) tells the issuer itself, under that funding's own key, and
counts it as pending: the money is on its way.

Accounts. The wire posts once, when the bank has taken it: debit
`issuer:prefunding:{CCY}` (the program's money sent to its issuer, an asset
held there as custody's is held at the custodian), credit `bank:outbound:{CCY}`
(money that left the program's bank account; withdrawals paid out credit it
too), keyed `{id}/wire`. It is posted before the issuer is told, so the ledger
knows of every wire the bank has taken and a later run can find it; the
issuer's crediting it later moves nothing in the ledger. Both are
unconstrained system accounts: the posting cannot be refused.

How a run ends (its ProcessStatus, searchable), most urgent first:
`coverage low`, `funding refused` (the bank refused or failed the wire),
`drift` (bank or custody), `funded`, `covered`. The details and the report
say every finding; a run that ends with one of the first three e-mails the
operations mailbox once; every run sets its gauges for the alert rules.

Nothing is compensated: a wire the bank has taken is money sent, posted as
such; whatever a run stops short of, the next run completes or reports.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ledger.activities import LedgerActivities
    from activities.program_funding import (
        ProgramFundingLedgerActivities,
        ProgramFundingProviderActivities,
    )
    from schemas import accounts
    from schemas.ledger import TransferRequest
    from schemas.money import Currency, Money
    from schemas.program_funding import (
        STATUS_COVERAGE_LOW,
        STATUS_DRIFT,
        STATUS_FUNDING_REFUSED,
        Announced,
        BankCheckRequest,
        CurrencyFunding,
        CustodyCheckRequest,
        FundingAnnouncement,
        FundingRecord,
        IssuerFunding,
        IssuerPositionRequest,
        LedgerPositionRequest,
        OperatorNotice,
        ProgramFundingInput,
        ProgramFundingReport,
        WireRequest,
        announcement_key,
        coverage_bps,
        funding_minor,
        funding_reference,
        spend_per_day_minor,
        target_minor,
        wire_payout_key,
        wire_posting_key,
    )
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.steps import step, step_key

PROGRAM_FUNDING_WORKFLOW = "ProgramFunding"
# The schedule's runs get this id and the time Temporal appends to it.
PROGRAM_FUNDING_WORKFLOW_ID = "program-funding"

STAGE_READING = "reading positions"
STAGE_FUNDING = "funding"
STAGE_RECONCILING_BANK = "reconciling the bank"
STAGE_RECONCILING_CUSTODY = "reconciling custody"
STAGE_REPORTING = "reporting"
# Outcomes an operator is e-mailed about.
ALERTING_OUTCOMES = (STATUS_COVERAGE_LOW, STATUS_FUNDING_REFUSED, STATUS_DRIFT)


def program_funding_start_metadata(request: ProgramFundingInput) -> StartMetadata:
    policy = request.policy
    return start_metadata(
        "Program funding: coverage at the issuer; the bank account and custody reconciled",
        {
            "currencies": ", ".join(currency.value for currency in policy.currencies),
            "bank currencies": ", ".join(currency.value for currency in policy.bank_currencies),
            "coverage alert under": f"{policy.coverage_alert_bps} bps",
        },
        "nothing: it reads the issuer, the bank, custody and the ledger, and wires what is short",
    )


def _money(amount_minor: int, currency: Currency) -> str:
    return str(Money(amount_minor=amount_minor, currency=currency))


@workflow.defn(name=PROGRAM_FUNDING_WORKFLOW)
class ProgramFunding:
    @workflow.init
    def __init__(self, request: ProgramFundingInput) -> None:
        self._input = request
        self._report = ProgramFundingReport(
            workflow_id=workflow.info().workflow_id, stage=STAGE_READING
        )
        self.progress = ProcessStage(STAGE_READING, self._details)

    # ----- platform -----------------------------------------------------------

    @workflow.run
    async def run(self, request: ProgramFundingInput) -> ProgramFundingReport:
        self.progress.enter(STAGE_READING)
        await self._cover(request)
        await self._reconcile(request)
        outcome = self._report.outcome()
        self.progress.enter(STAGE_REPORTING)
        if outcome in ALERTING_OUTCOMES:
            await self._tell_operators(request, outcome)
        await step(
            request,
            ProgramFundingLedgerActivities.record,
            FundingRecord(
                report=self.status(), coverage_alert_bps=request.policy.coverage_alert_bps
            ),
        )
        self.progress.enter(outcome)
        return self.status()

    # ----- coverage and funding -----------------------------------------------

    async def _cover(self, request: ProgramFundingInput) -> None:
        policy = request.policy
        currencies = list(dict.fromkeys(policy.currencies))
        now = workflow.now()
        self._report.as_of = now
        position = await step(
            request,
            ProgramFundingLedgerActivities.ledger_position,
            LedgerPositionRequest(
                currencies=currencies,
                as_of=now,
                spend_since=now - timedelta(days=policy.spend_window_days),
                fundings_since=now - timedelta(days=policy.pending_lookback_days),
            ),
        )
        issuer = await step(
            request,
            ProgramFundingProviderActivities.issuer_position,
            IssuerPositionRequest(
                currencies=currencies,
                references=[funding.reference for funding in position.fundings],
            ),
        )
        wired = {funding.reference: funding for funding in position.fundings}
        # Money on its way to the issuer; and what reached it during this run.
        pending: dict[Currency, int] = defaultdict(int)
        credited_now: dict[Currency, int] = defaultdict(int)
        for known in issuer.fundings:
            wire = wired[known.reference]
            if known.state == "pending":
                pending[wire.currency] += known.amount_minor
            elif known.state == "not_announced":
                # An earlier run wired and posted it, then stopped: tell the issuer now.
                announced = await self._announce(
                    request, wire.reference, wire.currency, wire.amount_minor
                )
                pending[wire.currency] += wire.amount_minor
                if announced.status == "credited":
                    credited_now[wire.currency] += announced.amount_minor
                self._report.recovered.append(
                    IssuerFunding(
                        reference=wire.reference,
                        state=announced.status,
                        funding_id=announced.funding_id,
                        amount_minor=announced.amount_minor,
                    )
                )
        for ledger in position.currencies:
            currency = ledger.currency
            balance = issuer.balances.get(currency, 0)
            per_day = spend_per_day_minor(ledger.spend_minor, policy.spend_window_days)
            target = target_minor(ledger.customers_minor, per_day, policy)
            funding = CurrencyFunding(
                currency=currency,
                issuer_balance_minor=balance,
                pending_minor=pending[currency],
                customers_minor=ledger.customers_minor,
                spend_window_minor=ledger.spend_minor,
                spend_per_day_minor=per_day,
                target_minor=target,
                shortfall_minor=target - (balance + pending[currency]),
                coverage_bps=coverage_bps(balance, ledger.customers_minor),
                coverage_low=False,
            )
            self._report.currencies.append(funding)
            amount = funding_minor(
                funding.shortfall_minor,
                policy.step_minor(currency),
                policy.funding_cap_minor(currency),
            )
            if amount:
                await self._wire(request, funding, amount)
            if funding.funding_status == "credited":
                credited_now[currency] += funding.funded_minor
            funding.coverage_bps = coverage_bps(
                balance + credited_now[currency], ledger.customers_minor
            )
            funding.coverage_low = funding.coverage_bps < policy.coverage_alert_bps
            self.progress.show()

    async def _wire(
        self, request: ProgramFundingInput, funding: CurrencyFunding, amount: int
    ) -> None:
        """Wire `amount` to the issuer, post it, tell the issuer."""
        self.progress.enter(STAGE_FUNDING)
        currency = funding.currency
        reference = funding_reference(workflow.info().workflow_id, currency)
        funding.funding_id = reference
        prefunding = accounts.issuer_prefunding(currency)
        outbound = accounts.bank_outbound(currency)
        await step(
            request,
            LedgerActivities.open_accounts,
            [accounts.system_account(prefunding), accounts.system_account(outbound)],
        )
        issuer_account = request.policy.issuer_account
        try:
            wire = await step(
                request,
                ProgramFundingProviderActivities.send_wire,
                WireRequest(
                    reference=reference,
                    key=wire_payout_key(reference),
                    amount_minor=amount,
                    currency=currency,
                    iban=issuer_account.iban,
                    name=issuer_account.name,
                ),
            )
        except ActivityError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.non_retryable:
                # The bank refused the payout itself: nothing was sent.
                funding.refused = f"the bank refused the wire: {cause.message}"
                return
            raise
        funding.payout_id = wire.payout_id
        if wire.status in ("failed", "returned"):
            # Found by its reference, from an attempt before: the money came back.
            funding.refused = f"the bank's wire {wire.payout_id} is {wire.status}"
            return
        # The money has left the bank account: posted before the issuer is
        # told, so every later run knows of it, pending, even if this one stops.
        posted = await step(
            request,
            LedgerActivities.transfer,
            TransferRequest(
                key=wire_posting_key(reference),
                debit=prefunding,
                credit=outbound,
                amount_minor=wire.amount_minor,
                currency=currency,
            ),
        )
        # Both accounts are unconstrained system accounts: nothing can refuse it.
        assert posted.accepted, posted.detail
        funding.funded_minor = wire.amount_minor
        announced = await self._announce(request, reference, currency, wire.amount_minor)
        funding.issuer_funding_id = announced.funding_id
        funding.funding_status = announced.status

    async def _announce(
        self, request: ProgramFundingInput, reference: str, currency: Currency, amount: int
    ) -> Announced:
        return await step(
            request,
            ProgramFundingProviderActivities.announce,
            FundingAnnouncement(
                reference=reference,
                key=announcement_key(reference),
                amount_minor=amount,
                currency=currency,
            ),
        )

    # ----- reconciliation -----------------------------------------------------

    async def _reconcile(self, request: ProgramFundingInput) -> None:
        policy = request.policy
        assert self._report.as_of is not None
        bank_currencies = list(dict.fromkeys(policy.bank_currencies))
        if bank_currencies:
            self.progress.enter(STAGE_RECONCILING_BANK)
            self._report.bank = await step(
                request,
                ProgramFundingProviderActivities.reconcile_bank,
                BankCheckRequest(
                    currencies=bank_currencies,
                    as_of=self._report.as_of,
                    grace_seconds=policy.statement_grace_seconds,
                ),
            )
        self.progress.enter(STAGE_RECONCILING_CUSTODY)
        self._report.custody = await step(
            request,
            ProgramFundingProviderActivities.reconcile_custody,
            CustodyCheckRequest(opening_minor=policy.custody_opening_minor),
        )

    async def _tell_operators(self, request: ProgramFundingInput, outcome: str) -> None:
        workflow_id = workflow.info().workflow_id
        await step(
            request,
            ProgramFundingProviderActivities.notify_operators,
            OperatorNotice(
                key=step_key("notify-operators"),
                to=request.operators_email,
                subject=f"{workflow_id}: {outcome}",
                body=(
                    f"Program funding {workflow_id} ended {outcome}:\n\n"
                    + "\n".join(self._findings())
                    + f"\n\ncardflow funding status --id {workflow_id}"
                ),
            ),
        )
        self._report.operators_notified = True

    # ----- status and current details -------------------------------------------

    @workflow.query
    def status(self) -> ProgramFundingReport:
        return self._report.model_copy(update={"stage": self.progress.stage})

    def _findings(self) -> list[str]:
        """One line per currency, bank currency and custody."""
        policy = self._input.policy
        lines: list[str] = []
        for funding in self._report.currencies:
            currency = funding.currency
            line = (
                f"- {currency.value}: the issuer holds"
                f" {_money(funding.issuer_balance_minor, currency)}"
                f" (+ {_money(funding.pending_minor, currency)} pending) for the customers'"
                f" {_money(funding.customers_minor, currency)}; spend"
                f" {_money(funding.spend_per_day_minor, currency)}/day; target"
                f" {_money(funding.target_minor, currency)}"
            )
            if funding.refused:
                line += f"; NOT funded: {funding.refused}"
            elif funding.funded_minor:
                line += (
                    f"; funded {_money(funding.funded_minor, currency)} as `{funding.funding_id}`"
                    f" ({funding.funding_status})"
                )
            line += f"; coverage {funding.coverage_bps} bps"
            if funding.coverage_low:
                line += (
                    f", **{policy.coverage_alert_bps - funding.coverage_bps} bps under the"
                    f" {policy.coverage_alert_bps} bps alert**"
                )
            lines.append(line)
        for recovered in self._report.recovered:
            lines.append(
                f"- told the issuer of `{recovered.reference}`, wired by an earlier run"
                f" ({recovered.state})"
            )
        for check in self._report.bank:
            drift = ", ".join(
                f"{kind.value} {count}" for kind, count in sorted(check.drift_counts.items())
            )
            lines.append(
                f"- bank {check.currency.value}: {check.lines} lines, {check.matched} matched,"
                f" {check.in_flight} in flight, {check.drift_lines} drift"
                + (f" (**{drift}**)" if drift else "")
            )
        custody = self._report.custody
        if custody is not None:
            lines.append(
                f"- custody {custody.currency.value}: the ledger holds"
                f" {_money(custody.ledger_minor, custody.currency)}, the custodian"
                f" {_money(custody.custodian_minor, custody.currency)} less its opening"
                f" {_money(custody.opening_minor, custody.currency)}" + self._custody_drift()
            )
        return lines

    def _custody_drift(self) -> str:
        custody = self._report.custody
        if custody is None or custody.missing_minor == 0:
            return ""
        if custody.missing_minor > 0:
            return f": **{_money(custody.missing_minor, custody.currency)} missing**"
        surplus = _money(-custody.missing_minor, custody.currency)
        return f": **{surplus} more than the ledger knows of**"

    def _details(self) -> str:
        return "\n".join([f"**{self.progress.stage}**", "", *self._findings()])
