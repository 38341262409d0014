"""The upstream HTTP API (`/v1`), one router per process.

processes.py      pings and any process's status
customers.py      a customer's balances, debt, cards and deposit address
overview.py       a customer's home screen, each section on its own budget
events.py         a customer's feed, the event stream, webhook endpoints
telegram.py       linking a customer's Telegram account, signing up in the bot,
                  a customer's notification channels
rewards.py        a customer's cashback and personal offers
onboarding.py     onboarding/{customer_id}
cards.py          card-issue/{request_id} and card/{card_id}
authentications.py authentication/{authentication_id}: 3-D Secure challenges
                  answered with the customer's code
fx.py             fx/{request_id}
topups.py         topup/{source}/{external_ref}
billing.py        billing/{customer_id}/{period}, billing runs, statements
disputes.py       dispute/{transaction_id}
withdrawals.py    withdrawal/{request_id}
closures.py       closure/{customer_id}
fraud.py          fraud-case/{case_id}: an operator's read and decision
controls.py       card controls: a card's own and temporary ones, and
                  controls-change/{request_id} for the program's or a customer's
reconciliation.py reconciliation/issuer/{date}
settlements.py    settlement/issuer/{date}: the ingest's status, operators' decisions

What they share: shared.py (the router every process's is, how a call on a
process is answered), idempotency.py (Idempotency-Key of starts and
updates), ownership.py (the customers a key acts for); the error contract
is starters/gateway/errors.py, the app's state starters/gateway/state.py.
starters/gateway/api.py assembles the routers.
"""
