"""3-D Secure challenges' activities (workflows/authentication.py).

Providers queue: make a challenge's one-time code (cryptographically
random, here and nowhere else), keep only its hash in
`authentication_challenges` and send it through the customer's channels
(notify_customer: e-mail, push, Telegram); report the outcome to the issuer.
Ledger queue: check an answer against the hash, counting wrong ones; close
a challenge that timed out. `pending_challenges` is the gateway's read.

The code's hash is HMAC-SHA-256 of the challenge's id and the code under a
random key of the row's own, compared in constant time. A send retried
after its code may have gone out makes a new code (the row counts them): the
newest code sent is the one that holds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import asyncpg
from temporalio.exceptions import ApplicationError

from activities.providers.activities import ProviderActivities, ProviderClients
from activities.queues import ledger_activity, provider_activity
from schemas.authentication import (
    CODE_DIGITS,
    ChallengeClosing,
    CodeCheck,
    CodeChecked,
    CodeRequest,
    CodeSent,
    OutcomeReport,
    PendingChallenge,
)
from schemas.customers import Notification
from schemas.money import Money

SEND_CODE = "authentication.send_code"
REPORT_OUTCOME = "authentication.report_outcome"
CHECK_CODE = "authentication.check_code"
CLOSE_CHALLENGE = "authentication.close_challenge"
CODE_KEY_BYTES = 32
# A customer has few challenges at once; the API and the bot list this many at most.
PENDING_CHALLENGES_MAX = 20


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_digest(key: bytes, authentication_id: str, code: str) -> bytes:
    return hmac.new(key, f"{authentication_id}\n{code}".encode(), hashlib.sha256).digest()


_ISSUE_SQL = """
INSERT INTO authentication_challenges AS c
    (authentication_id, customer_id, card_id, merchant_name, amount_minor, currency,
     code_key, code_digest, attempts_max, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (authentication_id) DO UPDATE
    SET code_key = EXCLUDED.code_key, code_digest = EXCLUDED.code_digest,
        codes_issued = c.codes_issued + 1, updated_at = now()
    WHERE c.status = 'pending' AND c.answers_checked = 0
RETURNING codes_issued
"""


class AuthenticationProviderActivities:
    """Sending the code, reporting the outcome (providers queue)."""

    def __init__(self, clients: ProviderClients, pool: asyncpg.Pool) -> None:
        self.clients = clients
        self.pool = pool
        self.notifications = ProviderActivities(clients, pool)

    @provider_activity(SEND_CODE)
    async def send_code(self, request: CodeRequest) -> CodeSent:
        """Make the code, keep its hash, send it; a challenge already answered
        or ended gets no new code."""
        code = new_code()
        key = secrets.token_bytes(CODE_KEY_BYTES)
        issued = await self.pool.fetchval(
            _ISSUE_SQL,
            request.authentication_id,
            request.customer_id,
            request.card_id,
            request.merchant_name,
            request.amount_minor,
            request.currency.value,
            key,
            code_digest(key, request.authentication_id, code),
            request.attempts_max,
            request.expires_at,
        )
        if issued is None:
            return CodeSent(channels=[], codes_issued=0)
        amount = Money(amount_minor=request.amount_minor, currency=request.currency)
        until = request.expires_at.strftime("%H:%M UTC")
        receipt = await self.notifications.notify_customer(
            Notification(
                key=f"authentication/{request.authentication_id}/code-{issued}",
                customer_id=request.customer_id,
                subject="Your code to confirm a payment",
                body=(
                    f"{code} is your code to confirm {amount} at {request.merchant_name}"
                    f" with card {request.card_id}. It works until {until}."
                    " Never tell it to anyone: cardflow never asks for it."
                    " Not you? Do not answer, and freeze the card."
                ),
            )
        )
        return CodeSent(channels=[c.value for c in receipt.channels], codes_issued=int(issued))

    @provider_activity(REPORT_OUTCOME)
    async def report_outcome(self, report: OutcomeReport) -> str:
        """Report the outcome to the issuer; the issuer's status of the
        authentication (its own when it ended otherwise, its window passed)."""
        issuer = self.clients.issuer
        try:
            reported = await issuer.report_challenge_outcome(
                report.authentication_id, report.outcome, idempotency_key=report.key
            )
        except ApplicationError as error:
            if error.type == "ProviderNotFound":
                # Not the issuer's (asked of the gateway by hand): nobody to tell.
                return "unknown"
            if error.type != "ProviderConflict":
                raise
            reported = await issuer.get_authentication(report.authentication_id)
        return reported.status

    def all(self) -> list[object]:
        return [self.send_code, self.report_outcome]


_CHECK_SQL = """
SELECT code_key, code_digest, attempts, attempts_max, answers_checked, status,
       expires_at <= now() AS expired
  FROM authentication_challenges WHERE authentication_id = $1 FOR UPDATE
"""
_CHECKED_SQL = """
UPDATE authentication_challenges
   SET attempts = $2, answers_checked = $3, status = $4, updated_at = now()
 WHERE authentication_id = $1
"""


class AuthenticationLedgerActivities:
    """Checking answers against the stored hash (ledger queue: the database)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @ledger_activity(CHECK_CODE)
    async def check_code(self, check: CodeCheck) -> CodeChecked:
        """One answer, counted once however often it is checked: right, the
        challenge is authenticated; wrong, one attempt more, and failed at
        the maximum; past the deadline, timed out."""
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(_CHECK_SQL, check.authentication_id)
            if row is None:
                raise ApplicationError(
                    f"no challenge {check.authentication_id}",
                    type="ChallengeNotFound",
                    non_retryable=True,
                )
            status, attempts = row["status"], row["attempts"]
            if status != "pending" or check.answer_number <= row["answers_checked"]:
                # Ended, or this very answer already checked (a retry).
                return CodeChecked(
                    correct=status == "authenticated", attempts=attempts, outcome=status
                )
            correct = False
            if row["expired"]:
                status = "timed_out"
            else:
                digest = code_digest(row["code_key"], check.authentication_id, check.code)
                correct = hmac.compare_digest(digest, bytes(row["code_digest"]))
                if correct:
                    status = "authenticated"
                else:
                    attempts += 1
                    if attempts >= row["attempts_max"]:
                        status = "failed"
            await connection.execute(
                _CHECKED_SQL, check.authentication_id, attempts, check.answer_number, status
            )
        return CodeChecked(correct=correct, attempts=attempts, outcome=status)

    @ledger_activity(CLOSE_CHALLENGE)
    async def close_challenge(self, closing: ChallengeClosing) -> None:
        """End a challenge still pending (its deadline passed): a late answer is refused."""
        await self.pool.execute(
            "UPDATE authentication_challenges SET status = $2, updated_at = now()"
            " WHERE authentication_id = $1 AND status = 'pending'",
            closing.authentication_id,
            closing.outcome,
        )

    def all(self) -> list[object]:
        return [self.check_code, self.close_challenge]


async def pending_challenges(
    pool: asyncpg.Pool, customer_id: str, card_id: str | None = None
) -> list[PendingChallenge]:
    """The customer's challenges waiting for a code, newest first."""
    rows = await pool.fetch(
        "SELECT authentication_id, card_id, merchant_name, amount_minor, currency, attempts,"
        " attempts_max, expires_at FROM authentication_challenges"
        " WHERE customer_id = $1 AND status = 'pending' AND expires_at > now()"
        " AND ($2::text IS NULL OR card_id = $2)"
        " ORDER BY created_at DESC LIMIT $3",
        customer_id,
        card_id,
        PENDING_CHALLENGES_MAX,
    )
    return [PendingChallenge.model_validate(dict(row)) for row in rows]
