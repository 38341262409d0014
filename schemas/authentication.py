"""3-D Secure: the issuer's authentication of a cardholder before an online
purchase, decided by the card and, when challenged, answered by the
cardholder with a one-time code.

The issuer asks cardflow's gateway in real time (`authentication.request`);
the card decides with `authentication_decision`:

- `decline` when the card is not open (frozen, closed) or the request is in
  another currency than the card's;
- `challenge` when the card's policy requires one for every purchase
  (`require_challenge`), when the amount is at or above the policy's
  `challenge_amount_minor`, or when the merchant's country is not among the
  policy's `home_countries` (an empty list: no country rule);
- `frictionless` otherwise: authenticated at once.

A challenge is the process `authentication/{authentication_id}`: a one-time
code goes to the customer on their channels, and the answer (the API or the
bot) must come within the deadline, at most `code_attempts_max` wrong codes.
The card remembers each outcome (the newest `remembered_max`), and an
authorization carrying the id of one that was not authenticated is declined.

Pure: no I/O and no clock of its own (`now` is always passed in).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.edge import EdgeModel
from schemas.issuer import CardState, Merchant
from schemas.money import AMOUNT_MINOR_MAX, Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues

if TYPE_CHECKING:
    from schemas.cards import CardInput

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)

AUTHENTICATION_WORKFLOW = "Authentication"
# The card learns each challenge's outcome through this signal.
AUTHENTICATION_OUTCOME_SIGNAL = "authentication_outcome"
ANSWER_UPDATE = "answer"
# A one-time code is this many digits.
CODE_DIGITS = 6
CODE_PATTERN = rf"^[0-9]{{{CODE_DIGITS}}}$"
# The issuer's ids of authentications and the card's ids: safe in a workflow id.
AUTHENTICATION_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"

AuthenticationDecision = Literal["frictionless", "challenge", "decline"]
# pending: a challenge waiting for the cardholder's code.
AuthenticationOutcome = Literal["authenticated", "failed", "timed_out", "declined", "pending"]
FINISHED_OUTCOMES: frozenset[str] = frozenset({"authenticated", "failed", "timed_out", "declined"})

# The reasons the card gives for its decision.
REASON_FRICTIONLESS = "frictionless"
REASON_REQUIRED = "challenge_required"
REASON_AMOUNT = "amount_at_or_above_challenge_threshold"
REASON_COUNTRY = "merchant_country_not_usual"
REASON_CARD_NOT_OPEN = "card_not_open"
REASON_CURRENCY = "currency_mismatch"


def authentication_workflow_id(authentication_id: str) -> str:
    return f"authentication/{authentication_id}"


class AuthenticationPolicy(EdgeModel):
    """When the card challenges, and how long a challenge may take."""

    model_config = ConfigDict(extra="forbid")

    # Challenge every authentication.
    require_challenge: bool = False
    # Challenge at or above this amount (the card's currency); None: never by amount.
    challenge_amount_minor: int | None = Field(default=50_000, ge=1, le=AMOUNT_MINOR_MAX)
    # The countries the cardholder usually buys in; a merchant elsewhere is
    # challenged. Empty: no country rule.
    home_countries: list[str] = Field(default_factory=list, max_length=250)
    # How long the cardholder has to answer (the issuer's own window may be shorter).
    challenge_seconds: int = Field(default=300, ge=1, le=3_600)
    code_attempts_max: int = Field(default=3, ge=1, le=10)
    # Outcomes the card remembers for the authorizations that follow, newest kept.
    remembered_max: int = Field(default=50, ge=1, le=500)


class AuthenticationRequest(EdgeModel):
    """The issuer's real-time 3-D Secure question, as the gateway hands it to
    the card; amounts in the card's currency."""

    model_config = ConfigDict(extra="ignore")

    authentication_id: str = Field(pattern=AUTHENTICATION_ID_PATTERN)
    card_id: str = Field(min_length=1, max_length=100)
    amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: Currency
    merchant_amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    merchant_currency: Currency
    merchant: Merchant
    # Until when the issuer waits for a challenge's outcome.
    challenge_expires_at: datetime
    # When the issuer asked (its envelope's created_at), set by the gateway.
    requested_at: datetime | None = None


class AuthenticationAnswer(BaseModel):
    """The card's decision, as the gateway answers the issuer."""

    decision: AuthenticationDecision
    reason: str
    # A challenge's deadline: until then the cardholder may answer.
    challenge_expires_at: datetime | None = None


class AuthenticationRecord(BaseModel):
    """One authentication as the card remembers it."""

    authentication_id: str
    decision: AuthenticationDecision
    reason: str
    outcome: AuthenticationOutcome
    amount_minor: int
    merchant_name: str
    decided_at: datetime
    challenge_expires_at: datetime | None = None


class AuthenticationResult(EdgeModel):
    """A challenge's outcome, as its process tells the card."""

    authentication_id: str
    outcome: AuthenticationOutcome
    reason: str = ""


def authentication_decision(
    state: CardInput, request: AuthenticationRequest, now: datetime
) -> tuple[AuthenticationDecision, str]:
    """The card's decision on `request` and its reason (a rules engine may
    answer instead; `now` is there for rules of the time of day)."""
    del now  # no rule of the time of day yet
    policy = state.policy.authentication
    if state.state is not CardState.OPEN:
        return "decline", REASON_CARD_NOT_OPEN
    if request.currency != state.currency:
        return "decline", REASON_CURRENCY
    if policy.require_challenge:
        return "challenge", REASON_REQUIRED
    if (
        policy.challenge_amount_minor is not None
        and request.amount_minor >= policy.challenge_amount_minor
    ):
        return "challenge", REASON_AMOUNT
    if policy.home_countries and request.merchant.country not in policy.home_countries:
        return "challenge", REASON_COUNTRY
    return "frictionless", REASON_FRICTIONLESS


def challenge_deadline(policy: AuthenticationPolicy, request: AuthenticationRequest) -> datetime:
    """Until when a challenge waits: the policy's time from the issuer's own
    time of asking, never past the issuer's window. Durable inputs only."""
    asked_at = request.requested_at or request.challenge_expires_at
    return min(asked_at + timedelta(seconds=policy.challenge_seconds), request.challenge_expires_at)


def remember(records: list[AuthenticationRecord], record: AuthenticationRecord, kept: int) -> None:
    """Keep `record` (replacing its own), the newest `kept` only."""
    records[:] = [r for r in records if r.authentication_id != record.authentication_id]
    records.append(record)
    del records[: max(len(records) - kept, 0)]


def remembered(
    records: list[AuthenticationRecord], authentication_id: str
) -> AuthenticationRecord | None:
    return next((r for r in records if r.authentication_id == authentication_id), None)


# ----- the challenge -----------------------------------------------------------------------


class ChallengeInput(EdgeModel):
    """The process of one challenge, `authentication/{authentication_id}`."""

    authentication_id: str = Field(pattern=AUTHENTICATION_ID_PATTERN)
    card_id: str
    customer_id: str
    amount_minor: int
    currency: Currency
    merchant_name: str
    expires_at: datetime
    code_attempts_max: int = Field(default=3, ge=1, le=10)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers


class ChallengeAnswer(EdgeModel):
    """The cardholder's answer: the code they were sent, for the card the
    challenge is of (an answer naming another card is refused)."""

    model_config = ConfigDict(extra="forbid")

    card_id: str = Field(min_length=1, max_length=100)
    code: str = Field(pattern=CODE_PATTERN)


class ChallengeReply(BaseModel):
    """What an answer did: `outcome` is pending while attempts are left."""

    authentication_id: str
    outcome: AuthenticationOutcome
    correct: bool
    attempts_left: int


class ChallengeStatus(BaseModel):
    authentication_id: str
    card_id: str
    stage: str
    outcome: AuthenticationOutcome
    attempts: int
    attempts_max: int
    expires_at: datetime
    reported: bool


class CodeRequest(BaseModel):
    """Make a challenge's one-time code, keep only its hash, and send it."""

    authentication_id: str
    customer_id: str
    card_id: str
    amount_minor: int
    currency: Currency
    merchant_name: str
    expires_at: datetime
    attempts_max: int


class CodeSent(BaseModel):
    channels: list[str]
    # How many codes were made for this challenge (a retried send makes a new one).
    codes_issued: int


class CodeCheck(BaseModel):
    authentication_id: str
    code: str = Field(pattern=CODE_PATTERN)
    # The answer's number within its challenge: a retried check counts once.
    answer_number: int = Field(ge=1)


class CodeChecked(BaseModel):
    correct: bool
    attempts: int
    outcome: AuthenticationOutcome


class ChallengeClosing(BaseModel):
    """The challenge's end in its table (timed out, say): a late answer is refused."""

    authentication_id: str
    outcome: AuthenticationOutcome


class OutcomeReport(BaseModel):
    """The challenge's outcome, reported to the issuer."""

    key: str
    authentication_id: str
    outcome: AuthenticationOutcome


class PendingChallenge(BaseModel):
    """A challenge waiting for the customer's code (the API's, the bot's view)."""

    authentication_id: str
    card_id: str
    merchant_name: str
    amount_minor: int
    currency: Currency
    attempts: int
    attempts_max: int
    expires_at: datetime
