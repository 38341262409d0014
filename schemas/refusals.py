"""Why a process (or the API in front of it) refused a request, as a code a
client can act on.

A workflow refuses an update by raising an ApplicationError whose `type` is
one of these codes (`refused` below); the client sees it as the cause of its
WorkflowUpdateFailedError, and the HTTP API answers `{"code", "detail"}` with
the status `REFUSAL_STATUS` gives the code. The detail is for people and may
change; the code is the contract and does not.
"""

from __future__ import annotations

from enum import StrEnum

from temporalio.exceptions import ApplicationError


class Refusal(StrEnum):
    # The request names a process, card or record that does not exist.
    NOT_FOUND = "not_found"
    # A field of the request is malformed or names something it cannot.
    INVALID_REQUEST = "invalid_request"
    # The process is not at a point where this request applies (no review
    # pending, a card not delivered yet, a dispute already decided).
    WRONG_STATE = "wrong_state"
    # The same decision or action was already taken; this one changes nothing.
    ALREADY_DONE = "already_done"
    # The process has ended; its outcome is in the detail.
    FINISHED = "finished"
    # A firm quote passed its expiry before it was confirmed.
    QUOTE_EXPIRED = "quote_expired"
    # The customer cancelled the process.
    CANCELLED = "cancelled"
    # The wallet cannot pay: the ledger refused the money movement.
    INSUFFICIENT_FUNDS = "insufficient_funds"
    # The ledger refused the money movement for another reason (a closed
    # wallet, a limit on the account).
    DECLINED = "declined"
    # The program's policy does not allow it (amount bounds, KYC state).
    NOT_ALLOWED = "not_allowed"
    # A provider gave no answer within the policy.
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    # A card with open authorizations cannot be closed yet.
    OPEN_AUTHORIZATIONS = "open_authorizations"
    # A dispute's submission lacks evidence its reason requires.
    EVIDENCE_MISSING = "evidence_missing"
    # A day or month that has not ended cannot be reconciled or billed yet.
    PERIOD_NOT_ENDED = "period_not_ended"


def refused(code: Refusal, detail: str) -> ApplicationError:
    """The error a workflow raises to refuse an update with `code`.
    Non-retryable: asking again unchanged gets the same answer."""
    return ApplicationError(detail, type=code.value, non_retryable=True)


def refusal_of(error_type: str | None) -> Refusal | None:
    """The refusal an ApplicationError's `type` names, if it names one."""
    try:
        return Refusal(error_type) if error_type is not None else None
    except ValueError:
        return None
