"""Program funding's activities (workflows/program_funding.py).

Ledger queue: the ledger's position (every customer wallet's posted balance,
the cards' spend over the window, the fundings wired lately) and the run's
gauges. Providers queue: the issuer's balances and what it knows of those
fundings, the wire, the funding announced to the issuer, the bank
statement's and custody's reconciliation, the operators' e-mail. The two
reconciliations read the provider, then the ledger right after it, in the
same activity, so that both sides are read as close together as they can be.

Each is idempotent: reads are reads; the wire and the announcement ask the
provider for one with the funding's reference before they make one, and make
it with the funding's key, so a lost answer, a retry or a run started again
under its id makes one wire and one funding.

How a statement line is matched (`check_statement`): the processes that move
the bank account's money post under keys this module names (their own
modules derive them the same way; tests/workflows/test_program_funding.py
checks both agree):

- an inbound transfer is a top-up's credit, `topup/bank/{transfer id}/credit/principal`
  (debit bank:inbound), undone if its `/reversal` exists;
- a payout is a withdrawal's `withdrawal/{reference}/post/amount` (the payout's
  reference is the request id; while its hold `withdrawal/{reference}/hold/amount`
  is open the bank has not yet sent it: in flight), or a funding's wire
  `{reference}/wire`; a failed payout's money is back, so the pair nets to 0;
- a returned payout is a withdrawal's credit back,
  `withdrawal/{reference}/return/{payout id}`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from temporalio.exceptions import ApplicationError

from activities.metrics import record_program_funding
from activities.providers.activities import ProviderClients
from activities.queues import ledger_activity, provider_activity
from schemas import accounts
from schemas.bank import StatementLine
from schemas.money import Currency
from schemas.notify import Channel
from schemas.program_funding import (
    DRIFT_ITEMS_MAX,
    PENDING_FUNDINGS_CHECKED_MAX,
    WIRE_POSTING_SUFFIX,
    Announced,
    BankCheck,
    BankCheckRequest,
    BankDrift,
    BankDriftKind,
    CurrencyLedgerPosition,
    CustodyCheck,
    CustodyCheckRequest,
    FundingAnnouncement,
    FundingRecord,
    IssuerFunding,
    IssuerPosition,
    IssuerPositionRequest,
    LedgerPosition,
    LedgerPositionRequest,
    OperatorNotice,
    Wire,
    WiredFunding,
    WireRequest,
    wire_posting_key,
)

LEDGER_POSITION = "program_funding.ledger_position"
RECORD_RUN = "program_funding.record"
ISSUER_POSITION = "program_funding.issuer_position"
SEND_WIRE = "program_funding.send_wire"
ANNOUNCE_FUNDING = "program_funding.announce"
RECONCILE_BANK = "program_funding.reconcile_bank"
RECONCILE_CUSTODY = "program_funding.reconcile_custody"
NOTIFY_OPERATORS = "program_funding.notify_operators"

# Ledger keys looked up per query while matching a statement.
KEYS_PER_QUERY_MAX = 5_000

# ----- the keys of the bank account's money --------------------------------------


def topup_credit_key(transfer_id: str) -> str:
    """workflows/topup.py: `topup/bank/{transfer id}` steps `credit/principal`."""
    return f"topup/bank/{transfer_id}/credit/principal"


def reversal_key(key: str) -> str:
    """workflows/topup_steps.py: a credit's leg undone by a reversing transfer."""
    return f"{key}/reversal"


def withdrawal_key(request_id: str, step: str) -> str:
    """workflows/withdrawal.py: `withdrawal/{request id}` steps."""
    return f"withdrawal/{request_id}/{step}"


def withdrawal_post_key(request_id: str) -> str:
    return withdrawal_key(request_id, "post/amount")


def withdrawal_hold_key(request_id: str) -> str:
    return withdrawal_key(request_id, "hold/amount")


def withdrawal_return_key(request_id: str, payout_id: str) -> str:
    return withdrawal_key(request_id, f"return/{payout_id}")


# ----- matching a statement (pure) -----------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """A transfer as the statement's matching reads it."""

    kind: str
    amount_minor: int
    # A hold not yet posted, voided or past its expiry.
    open: bool = False

    @property
    def moved(self) -> bool:
        return self.kind in ("posted", "post_pending")


def statement_keys(lines: Iterable[StatementLine]) -> list[str]:
    """Every ledger key a statement's lines may be posted under, once each."""
    keys: dict[str, None] = {}
    for line in lines:
        if line.kind == "inbound_transfer":
            credit = topup_credit_key(line.source_id)
            keys.update(dict.fromkeys([credit, reversal_key(credit)]))
        elif line.kind in ("payout", "payout_failed"):
            reference = line.reference
            keys.update(
                dict.fromkeys(
                    [
                        withdrawal_post_key(reference),
                        withdrawal_hold_key(reference),
                        wire_posting_key(reference),
                    ]
                )
            )
        else:
            keys[withdrawal_return_key(line.reference, line.source_id)] = None
    return list(keys)


def check_statement(
    currency: Currency,
    lines: Sequence[StatementLine],
    ledger: Mapping[str, LedgerEntry],
    in_flight_after: datetime,
) -> BankCheck:
    """Each line of a currency's statement against the ledger's transfers
    (`ledger`: key -> entry, for the keys of statement_keys). A line that
    differs is drift unless it is younger than `in_flight_after` or is a
    payout whose withdrawal's hold is still open (the bank has not sent it)."""
    check = BankCheck(currency=currency, lines=len(lines))

    def moved(key: str) -> int:
        entry = ledger.get(key)
        return entry.amount_minor if entry is not None and entry.moved else 0

    def young(line: StatementLine) -> bool:
        at = datetime.fromisoformat(line.at)
        # A bank that writes its times without a zone writes them in UTC.
        return (at if at.tzinfo else at.replace(tzinfo=UTC)) > in_flight_after

    def judge(
        judged: list[StatementLine],
        bank_minor: int,
        ledger_minor: int,
        in_flight: bool,
        missing: BankDriftKind,
        differs: BankDriftKind,
    ) -> None:
        count = len(judged)
        if bank_minor == ledger_minor:
            check.matched += count
            return
        if in_flight:
            check.in_flight += count
            return
        kind = missing if ledger_minor == 0 else differs
        check.drift_counts[kind] = check.drift_counts.get(kind, 0) + count
        if len(check.drift) < DRIFT_ITEMS_MAX:
            head = judged[0]
            check.drift.append(
                BankDrift(
                    kind=kind,
                    line_id=head.id,
                    line_kind=head.kind,
                    source_id=head.source_id,
                    reference=head.reference,
                    bank_minor=bank_minor,
                    ledger_minor=ledger_minor,
                    at=head.at,
                )
            )

    # A payout and its failure are one movement, judged together after the rest.
    payouts: dict[str, list[StatementLine]] = {}
    for line in lines:
        if line.kind == "inbound_transfer":
            credit = topup_credit_key(line.source_id)
            credited = 0 if reversal_key(credit) in ledger else moved(credit)
            judge(
                [line],
                line.amount_minor,
                credited,
                young(line),
                BankDriftKind.INBOUND_NOT_CREDITED,
                BankDriftKind.INBOUND_AMOUNT_DIFFERS,
            )
        elif line.kind == "payout_returned":
            judge(
                [line],
                line.amount_minor,
                moved(withdrawal_return_key(line.reference, line.source_id)),
                young(line),
                BankDriftKind.RETURN_NOT_CREDITED,
                BankDriftKind.RETURN_AMOUNT_DIFFERS,
            )
        else:
            payouts.setdefault(line.source_id, []).append(line)
    for judged in payouts.values():
        reference = judged[0].reference
        out_minor = moved(withdrawal_post_key(reference)) + moved(wire_posting_key(reference))
        hold = ledger.get(withdrawal_hold_key(reference))
        failed = any(part.kind == "payout_failed" for part in judged)
        # A withdrawal holds the amount until the bank sends it, then posts it.
        waiting = out_minor == 0 and not failed and hold is not None and hold.open
        judge(
            judged,
            sum(part.amount_minor for part in judged),
            -out_minor,
            waiting or young(judged[0]),
            BankDriftKind.PAYOUT_NOT_POSTED,
            BankDriftKind.PAYOUT_AMOUNT_DIFFERS,
        )
    return check


# ----- the ledger's side -------------------------------------------------------------

# Every customer wallet's posted balance: holds are pending debits, so what
# card holds reserve is still in it.
_CUSTOMERS_SQL = """
SELECT a.currency, coalesce(sum(b.credits_posted - b.debits_posted), 0)::bigint AS posted
FROM ledger_accounts a
JOIN ledger_balances b ON b.account_id = a.id
WHERE a.code LIKE 'customer:%:wallet:%' AND a.currency = ANY($1::text[])
GROUP BY a.currency
"""

# The cards' spend: what they posted from customer wallets to issuer:settlement.
_SPEND_SQL = """
SELECT t.currency, coalesce(sum(t.amount_minor), 0)::bigint AS spent
FROM ledger_transfers t
WHERE t.credit_account_id IN (SELECT id FROM ledger_accounts
                              WHERE code LIKE 'issuer:settlement:%')
  AND t.debit_account_id IN (SELECT id FROM ledger_accounts
                             WHERE code LIKE 'customer:%:wallet:%')
  AND t.kind IN ('posted', 'post_pending')
  AND t.created_at >= $2 AND t.created_at < $3
  AND t.currency = ANY($1::text[])
GROUP BY t.currency
"""

_FUNDINGS_SQL = """
SELECT t.idempotency_key, t.currency, t.amount_minor
FROM ledger_transfers t
WHERE t.debit_account_id IN (SELECT id FROM ledger_accounts
                             WHERE code LIKE 'issuer:prefunding:%')
  AND t.kind = 'posted' AND t.created_at >= $1
  AND t.idempotency_key LIKE '%' || $2
ORDER BY t.id DESC
LIMIT $3
"""

# crypto:custody:USDT is debited by deposits: what it holds is debits - credits.
_CUSTODY_SQL = """
SELECT coalesce(sum(b.debits_posted - b.credits_posted), 0)::bigint
FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id
WHERE a.code = $1
"""

_ENTRIES_SQL = """
SELECT t.idempotency_key, t.kind, t.amount_minor,
       (t.kind = 'pending' AND t.expires_at > now()
        AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = t.id)) AS open
FROM ledger_transfers t
WHERE t.idempotency_key = ANY($1::text[])
"""


async def ledger_entries(pool: asyncpg.Pool, keys: Sequence[str]) -> dict[str, LedgerEntry]:
    """The transfers of these keys (those that exist), by key."""
    found: dict[str, LedgerEntry] = {}
    for start in range(0, len(keys), KEYS_PER_QUERY_MAX):
        rows = await pool.fetch(_ENTRIES_SQL, list(keys[start : start + KEYS_PER_QUERY_MAX]))
        for row in rows:
            found[row["idempotency_key"]] = LedgerEntry(
                kind=row["kind"], amount_minor=int(row["amount_minor"]), open=bool(row["open"])
            )
    return found


class ProgramFundingLedgerActivities:
    """Ledger-queue activities: they share the ledger worker's database pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @ledger_activity(LEDGER_POSITION)
    async def ledger_position(self, request: LedgerPositionRequest) -> LedgerPosition:
        """The customers' money and the cards' spend per currency, and the
        fundings wired since `fundings_since` (newest first), read in one
        snapshot."""
        codes = [currency.value for currency in request.currencies]
        async with (
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            customers = {
                row["currency"]: int(row["posted"])
                for row in await connection.fetch(_CUSTOMERS_SQL, codes)
            }
            spend = {
                row["currency"]: int(row["spent"])
                for row in await connection.fetch(
                    _SPEND_SQL, codes, request.spend_since, request.as_of
                )
            }
            wired = await connection.fetch(
                _FUNDINGS_SQL,
                request.fundings_since,
                WIRE_POSTING_SUFFIX,
                PENDING_FUNDINGS_CHECKED_MAX,
            )
        return LedgerPosition(
            currencies=[
                CurrencyLedgerPosition(
                    currency=currency,
                    customers_minor=customers.get(currency.value, 0),
                    spend_minor=spend.get(currency.value, 0),
                )
                for currency in request.currencies
            ],
            fundings=[
                WiredFunding(
                    reference=row["idempotency_key"].removesuffix(WIRE_POSTING_SUFFIX),
                    currency=Currency(row["currency"]),
                    amount_minor=int(row["amount_minor"]),
                )
                for row in wired
            ],
        )

    @ledger_activity(RECORD_RUN)
    async def record(self, record: FundingRecord) -> None:
        """The run's gauges, for the alert rules (a retry sets the same values)."""
        report = record.report
        assert report.as_of is not None, "a run reports once it has read its positions"
        record_program_funding(
            int(report.as_of.timestamp()),
            [
                (currency.currency.value, currency.coverage_bps, record.coverage_alert_bps)
                for currency in report.currencies
            ],
            [
                (
                    check.currency.value,
                    {kind.value: check.drift_counts.get(kind, 0) for kind in BankDriftKind},
                )
                for check in report.bank
            ],
            (
                (report.custody.currency.value, report.custody.missing_minor)
                if report.custody is not None
                else None
            ),
        )

    def all(self) -> list[object]:
        return [self.ledger_position, self.record]


# ----- the providers' side -----------------------------------------------------------


class ProgramFundingProviderActivities:
    """Providers-queue activities; the reconciliations read the ledger too."""

    def __init__(self, clients: ProviderClients, pool: asyncpg.Pool) -> None:
        self._clients = clients
        self._pool = pool

    @provider_activity(ISSUER_POSITION)
    async def issuer_position(self, request: IssuerPositionRequest) -> IssuerPosition:
        """The program's balance at the issuer per currency, and what the
        issuer knows of each funding reference: pending, credited, or not
        announced at all (its run stopped between the wire and the issuer)."""
        issuer = self._clients.issuer
        wanted = set(request.currencies)
        balances = {currency: 0 for currency in request.currencies}
        for balance in await issuer.program_balances():
            if balance.currency in wanted:
                balances[balance.currency] = balance.available_minor
        fundings: list[IssuerFunding] = []
        for reference in request.references:
            found = await issuer.program_fundings_by_reference(reference)
            if not found:
                fundings.append(IssuerFunding(reference=reference, state="not_announced"))
                continue
            pending = [funding for funding in found if funding.status.value == "pending"]
            fundings.append(
                IssuerFunding(
                    reference=reference,
                    state="pending" if pending else "credited",
                    funding_id=found[0].id,
                    amount_minor=sum(funding.amount_minor for funding in pending or found),
                )
            )
        return IssuerPosition(balances=balances, fundings=fundings)

    @provider_activity(SEND_WIRE)
    async def send_wire(self, request: WireRequest) -> Wire:
        """The funding's wire: the payout the bank already holds under its
        reference, else one made now with its key. The bank's refusal
        (insufficient_funds, a bad IBAN) is non-retryable and makes nothing."""
        payout = await self._clients.bank.payout_once(
            amount_minor=request.amount_minor,
            currency=request.currency,
            iban=request.iban,
            name=request.name,
            reference=request.reference,
            idempotency_key=request.key,
        )
        return Wire(payout_id=payout.id, amount_minor=payout.amount_minor, status=payout.status)

    @provider_activity(ANNOUNCE_FUNDING)
    async def announce(self, request: FundingAnnouncement) -> Announced:
        """The issuer's funding of this reference: the one it already holds,
        else one announced now with the funding's key."""
        issuer = self._clients.issuer
        found = await issuer.program_fundings_by_reference(request.reference)
        if len(found) > 1:
            raise ApplicationError(
                f"the issuer holds {len(found)} fundings with reference {request.reference}",
                type="FundingDuplicated",
                non_retryable=True,
            )
        funding = found[0] if found else None
        if funding is None:
            funding = await issuer.fund_program(
                amount_minor=request.amount_minor,
                currency=request.currency,
                reference=request.reference,
                idempotency_key=request.key,
            )
        return Announced(
            funding_id=funding.id,
            status="pending" if funding.status.value == "pending" else "credited",
            amount_minor=funding.amount_minor,
        )

    @provider_activity(RECONCILE_BANK)
    async def reconcile_bank(self, request: BankCheckRequest) -> list[BankCheck]:
        """Each currency's statement, line by line, against the ledger."""
        in_flight_after = request.as_of - timedelta(seconds=request.grace_seconds)
        checks: list[BankCheck] = []
        for currency in request.currencies:
            lines = await self._clients.bank.statement(currency)
            entries = await ledger_entries(self._pool, statement_keys(lines))
            checks.append(check_statement(currency, lines, entries, in_flight_after))
        return checks

    @provider_activity(RECONCILE_CUSTODY)
    async def reconcile_custody(self, request: CustodyCheckRequest) -> CustodyCheck:
        """What the custodian holds (less the program's own opening float)
        against what the ledger says custody holds."""
        held = await self._clients.tron.custody_balance()
        ledger_minor = int(await self._pool.fetchval(_CUSTODY_SQL, accounts.crypto_custody()))
        return CustodyCheck(
            currency=held.currency,
            custodian_minor=held.balance_minor,
            opening_minor=request.opening_minor,
            ledger_minor=ledger_minor,
            missing_minor=ledger_minor - (held.balance_minor - request.opening_minor),
        )

    @provider_activity(NOTIFY_OPERATORS)
    async def notify_operators(self, notice: OperatorNotice) -> str:
        """E-mail the operations mailbox once per notice key; returns the message id."""
        message = await self._clients.notify.send_message(
            channel=Channel.EMAIL,
            to=notice.to,
            subject=notice.subject,
            body=notice.body,
            idempotency_key=notice.key,
            dedupe_key=notice.key,
        )
        return message.id

    def all(self) -> list[object]:
        return [
            self.issuer_position,
            self.send_wire,
            self.announce,
            self.reconcile_bank,
            self.reconcile_custody,
            self.notify_operators,
        ]
