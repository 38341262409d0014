"""The card issuer (Lithic / Stripe Issuing style): cardholders, virtual and
physical cards with their lifecycle and shipping, program funding, real-time
authorizations decided by cardflow, clearing and settlement, disputes, and a
daily settlement report. Mounted at /issuer.

    POST  /v1/cardholders                                  register a cardholder
    GET   /v1/cardholders/{id}
    PATCH /v1/cardholders/{id}                             new e-mail, phone or billing address
    POST  /v1/cards                                        issue a virtual or physical card
    GET   /v1/cards/{id}                                   last4 and token, never the number
    POST  /v1/cards/{id}/reveal_tokens                     a single-use token to show the card
    GET   /v1/embed/card?token=                            the holder's device: number, expiry, CVV
    GET   /v1/cards?cardholder_id=&limit=&starting_after=  a cardholder's cards, paged
    PATCH /v1/cards/{id}                                   pause, resume or close
    POST  /v1/cards/{id}/activate                          a physical card, once delivered
    POST  /v1/cards/{id}/reissue                           a new card; the old one closes
    POST  /v1/cards/{id}/shipping/reschedule               a later delivery date, before shipment
    GET   /v1/program/funding                              funded balance per currency
    POST  /v1/program/funding/deposits                     add funding
    GET   /v1/program/balances                             the prefunded balance per currency
    GET   /v1/program/balance_transactions?currency=&limit=&starting_after=
                                                           its movements, paged
    POST  /v1/program/fundings                             the program's wire (Idempotency-Key)
    GET   /v1/program/fundings/{id}                        pending or credited
    GET   /v1/program/fundings?reference=&limit=&starting_after=
    GET   /v1/authentications/{id}                         a 3-D Secure authentication
    POST  /v1/authentications/{id}/challenge_response      the program reports a challenge's outcome
    GET   /v1/authorizations/{id}
    GET   /v1/authorizations?card_id=&limit=&starting_after=   a card's authorizations, paged
    GET   /v1/transactions/{id}
    GET   /v1/transactions?card_id=&limit=&starting_after=     a card's transactions, paged
    POST  /v1/disputes                                     dispute a settled transaction
    GET   /v1/disputes/{id}
    POST  /v1/disputes/{id}/evidence
    POST  /v1/disputes/{id}/withdraw
    GET   /v1/reports/settlement/{date}?format=json|csv    the UTC day's settlement
    GET   /v1/settlement-files/{date}?format=jsonl|csv     the day's settlement file's manifest
    GET   /v1/settlement-files/{date}/content              the file itself, in byte ranges
                                                           (simulators/issuer_settlement_files.py)

  sandbox (what the network, merchants and carriers do):
    POST  /v1/simulate/cards/{id}/shipping                 advance a shipment
    POST  /v1/simulate/authentications                     a checkout's 3-D Secure authentication
    POST  /v1/simulate/authorize                           a merchant authorization (after
                                                           3-D Secure: its authentication_id)
    POST  /v1/simulate/authorizations/{id}/increment       ask to hold more
    POST  /v1/simulate/authorizations/{id}/advice          the held amount changed
    POST  /v1/simulate/authorizations/{id}/clear           a clearing (creates txn_...)
    POST  /v1/simulate/authorizations/{id}/reverse         a full or partial reversal
    POST  /v1/simulate/authorizations/{id}/expire          the hold period ends
    POST  /v1/simulate/refunds                             a credit to a card
    POST  /v1/simulate/force_posts                         a clearing with no authorization
    POST  /v1/simulate/disputes/{id}/decide                representment, pre_arbitration, won, lost
    POST  /v1/simulate/program/fundings/{id}/credit        the program's wire arrives now
    GET   /v1/simulate/settlement-files/{date}/platform-view  what cardflow is meant to
                                                           have seen of each record of the file

Webhooks (data: the resource after the change): cardholder.created,
cardholder.updated, card.created, card.activated, card.paused, card.resumed,
card.closed, card.reissued, card.shipping.updated, authorization.created,
authorization.declined, authorization.incremented,
authorization.increment_declined, authorization.advice,
authorization.reversed, authorization.expired, transaction.cleared,
transaction.force_posted, transaction.refunded, fee.charged,
funding_deposit.created, program.funding.credited, dispute.created,
dispute.evidence_added, dispute.representment, dispute.pre_arbitration,
dispute.won, dispute.lost, dispute.withdrawn.

Options (admin API, PUT /_admin/options/issuer): authorization_deadline_ms
(default 2000), reveal_token_seconds (a reveal token's life, 1 to 60;
default 60), stand_in_decision ("decline" or "approve"; default
"decline"), clock_offset_seconds (moves the issuer's clock forward, or back
when negative, before anything happens; default 0), settlement_delay_days
(transactions made while it is set settle that many days late: they are in
a later day's settlement report than the day they happened; default 0),
die_before_recording_decision (true: the process exits the moment it has
cardflow's answer to an authorization or increment, before recording it, as
a crash at the worst moment does; default false), program_balances (the
program's opening prefunded balance, {currency: minor units}, read once at
the first use after a reset; a currency left out opens at 10**13),
funding_lead_seconds (how long a program funding is pending before it is
credited, 0 to 30 days; default 0: credited at once),
authentication_deadline_ms (3-D Secure's real-time deadline; default 3000),
challenge_window_seconds (how long a 3-D Secure challenge waits for its
outcome; default 600), authentication_stand_in ("decline" or
"frictionless"; default "decline"). See simulators/issuer_authentications.py.
The settlement file's volume, seed, shares cardflow never saw or saw with
another amount, and member size: settlement_file_* (see
simulators/issuer_settlement_files.py).

The program's prefunded balance (simulators/issuer_program.py) is drawn down
by clearings, force posts and fees and added to by refunds, chargebacks and
fundings, each movement a balance transaction. The issuer itself declines,
without asking cardflow, an authorization or increment on a card that is not
open, or one asking for more than the program's balance in the card's
currency: decided_by "issuer", reason "program_underfunded", announced as
authorization.created and .declined (or .increment_declined) like any other.

An issuer that died while cardflow decided a request declines that request
when it starts again (the network had no answer in time) and announces it
(authorization.created and .declined, or .increment_declined), so cardflow
releases what it held for it.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from simulators import (
    issuer_authentications,
    issuer_authorizations,
    issuer_cards,
    issuer_disputes,
    issuer_program,
    issuer_reports,
    issuer_reveal,
    issuer_settlement_files,
    issuer_transactions,
)
from simulators.framework.context import SimulatorContext
from simulators.issuer_state import NAME, IssuerState

__all__ = ["NAME", "create"]


def create(context: SimulatorContext) -> FastAPI:
    state = IssuerState(context)
    # Every settled transaction, fee and deposit moves the program's balance,
    # and every request first credits the program's fundings now due.
    issuer_program.install(state)
    app = context.app(
        title="Card issuer (simulated)",
        dependencies=[Depends(issuer_program.crediting_due_fundings(state))],
    )
    # What an issuer that died mid-decision left unanswered is declined first.
    issuer_authorizations.recover_asks_in_flight(state)
    for module in (
        issuer_cards,
        issuer_authentications,
        issuer_authorizations,
        issuer_transactions,
        issuer_disputes,
        issuer_reports,
        issuer_settlement_files,
        issuer_reveal,
        issuer_program,
    ):
        app.include_router(module.router(state))
    return app
