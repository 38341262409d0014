"""How reconciliation reads the ledger (activities/reconciliation.py): the
card postings on issuer:settlement by issuer transaction, the day's staged
settlement records, the fixes posted before and those that no longer stand,
and a fix's row as the fix it records."""

from __future__ import annotations

import asyncpg

from schemas.money import Currency
from schemas.reconciliation import Difference, DifferenceKind, FixRecord

# The card posts a settled transaction to issuer:settlement under keys that
# name it (workflows/card_money.py): from its holds
# card/{card_id}/auth/{authorization_id}/post-{transaction_id}/{hold digest}
# (before the card-money-durable-keys patch
# card/{card_id}/auth/{authorization_id}/{n}-post-{transaction_id}), beyond them
# card/{card_id}/post/{transaction_id}, a refund card/{card_id}/refund/{transaction_id},
# and an operator's decision on money the card could not post itself
# card/{card_id}/exception/{exception_id}/{charge|write-off}/{transaction_id}
# (a charge after refused ones: {exception_id}~{attempt} in its place).
CARD_POSTINGS_CTE = """
WITH settlement AS (
    SELECT id FROM ledger_accounts WHERE code LIKE 'issuer:settlement:%'
),
postings AS (
    SELECT t.currency, t.created_at,
        CASE WHEN t.credit_account_id IN (SELECT id FROM settlement)
             THEN t.amount_minor ELSE -t.amount_minor END AS effect,
        substring(t.idempotency_key FROM '^card/([^/]+)/') AS card_id,
        coalesce(
            substring(t.idempotency_key FROM '^card/[^/]+/auth/[^/]+/post-([^/]+)/[0-9a-f]+$'),
            substring(t.idempotency_key FROM '^card/[^/]+/auth/[^/]+/[0-9]+-post-(.+)$'),
            substring(t.idempotency_key FROM '^card/[^/]+/(?:post|refund)/(.+)$'),
            substring(t.idempotency_key FROM
                      '^card/[^/]+/exception/[^/]+/(?:charge|write-off)/(.+)$')
        ) AS transaction_id
    FROM ledger_transfers t
    WHERE t.kind IN ('posted', 'post_pending')
      AND t.idempotency_key LIKE 'card/%'
      AND (t.credit_account_id IN (SELECT id FROM settlement)
           OR t.debit_account_id IN (SELECT id FROM settlement))
)
"""

LEDGER_POSTINGS_SQL = (
    CARD_POSTINGS_CTE
    + """
SELECT transaction_id, min(card_id) AS card_id, currency,
       sum(effect)::bigint AS effect, count(*) AS postings
FROM postings
WHERE transaction_id IS NOT NULL
  AND (transaction_id = ANY($1::text[])
       OR transaction_id IN (SELECT transaction_id FROM card_transactions
                             WHERE occurred_at >= $2 AND occurred_at < $3)
       OR (created_at >= $2 AND created_at < $3
           AND transaction_id NOT IN (SELECT transaction_id FROM card_transactions)
           -- settled and fixed on an earlier day: a posting of it since is
           -- that fix's late posting, which the look-back corrects.
           AND transaction_id NOT IN (SELECT transaction_id FROM reconciliation_fixes
                                      WHERE settlement_date < $4)))
GROUP BY transaction_id, currency
"""
)

# Open fixes of the window whose transaction the card's postings on
# issuer:settlement have changed since the fix was posted (only card keys
# count, never reconciliation's own transfers); those in $4 are corrected
# otherwise (their transaction settled since).
LATE_POSTINGS_SQL = (
    CARD_POSTINGS_CTE
    + """,
open_fixes AS (
    SELECT * FROM reconciliation_fixes
    WHERE reversal_key IS NULL AND settlement_date >= $1 AND settlement_date <= $2
      AND NOT (fix_key = ANY($4::text[]))
),
now_posted AS (
    SELECT transaction_id, currency, sum(effect)::bigint AS effect
    FROM postings
    WHERE transaction_id IN (SELECT transaction_id FROM open_fixes)
    GROUP BY transaction_id, currency
)
SELECT f.fix_key, f.run_key, f.settlement_date, f.item_id, f.kind, f.transaction_id,
       f.card_id, f.currency, f.issuer_amount_minor, f.ledger_amount_minor, f.delta_minor,
       coalesce(p.effect, 0) AS ledger_amount_now_minor
FROM open_fixes f
LEFT JOIN now_posted p ON p.transaction_id = f.transaction_id AND p.currency = f.currency
WHERE coalesce(p.effect, 0) <> f.ledger_amount_minor
ORDER BY f.settlement_date, f.fix_key
LIMIT $3
"""
)

# Fixes of days before this run's whose transaction the issuer settles in
# this run's report (it settled late): each with what the fix and its
# corrections (keyed from it) still move on issuer:settlement, which the
# correction takes back, closed fixes included. None left once corrected.
SETTLED_SINCE_SQL = (
    CARD_POSTINGS_CTE
    + """,
settled AS (
    SELECT DISTINCT ON (record_id) record_id AS transaction_id, currency,
        CASE WHEN direction = 'debit' THEN amount_minor ELSE -amount_minor END AS issuer_effect
    FROM reconciliation_records
    WHERE run_key = $1 AND record_type = ANY($3::text[])
    ORDER BY record_id, position
),
earlier AS (
    SELECT f.* FROM reconciliation_fixes f
    JOIN settled s ON s.transaction_id = f.transaction_id AND s.currency = f.currency
    WHERE f.settlement_date < $2
),
nets AS (
    SELECT e.fix_key, sum(
        CASE WHEN t.credit_account_id IN (SELECT id FROM settlement)
             THEN t.amount_minor ELSE -t.amount_minor END)::bigint AS net
    FROM earlier e
    JOIN ledger_transfers t ON t.idempotency_key IN (e.fix_key, e.fix_key || $4, e.fix_key || $5)
    WHERE t.kind = 'posted'
    GROUP BY e.fix_key
),
now_posted AS (
    SELECT transaction_id, currency, sum(effect)::bigint AS effect
    FROM postings
    WHERE transaction_id IN (SELECT transaction_id FROM earlier)
    GROUP BY transaction_id, currency
)
SELECT e.fix_key, e.run_key, e.settlement_date, e.item_id, e.kind, e.transaction_id,
       e.card_id, e.currency, e.issuer_amount_minor, e.ledger_amount_minor, e.delta_minor,
       n.net, s.issuer_effect, coalesce(p.effect, 0) AS ledger_amount_now_minor
FROM earlier e
JOIN nets n ON n.fix_key = e.fix_key
JOIN settled s ON s.transaction_id = e.transaction_id AND s.currency = e.currency
LEFT JOIN now_posted p ON p.transaction_id = e.transaction_id AND p.currency = e.currency
WHERE n.net <> 0
ORDER BY e.settlement_date, e.fix_key
LIMIT $6
"""
)

# What reconciliation's own transfers (fixes, and corrections keyed from
# them) have moved on issuer:settlement per transaction, for the ids in $1.
FIXED_BEFORE_SQL = """
WITH settlement AS (
    SELECT id FROM ledger_accounts WHERE code LIKE 'issuer:settlement:%'
),
fixes AS (
    SELECT t.currency,
        substring(t.idempotency_key FROM '/fix/([^/]+)(?:/.*)?$') AS transaction_id,
        CASE WHEN t.credit_account_id IN (SELECT id FROM settlement)
             THEN t.amount_minor ELSE -t.amount_minor END AS effect
    FROM ledger_transfers t
    WHERE t.kind = 'posted' AND t.idempotency_key LIKE 'reconciliation/%'
      AND (t.credit_account_id IN (SELECT id FROM settlement)
           OR t.debit_account_id IN (SELECT id FROM settlement))
)
SELECT transaction_id, currency, sum(effect)::bigint AS effect
FROM fixes
WHERE transaction_id = ANY($1::text[])
GROUP BY transaction_id, currency
"""

# What the cards posted on issuer:settlement for each issuer transaction in
# $1 (positive: money the program owes the issuer), and in how many postings.
POSTED_FOR_SQL = (
    CARD_POSTINGS_CTE
    + """
SELECT transaction_id, sum(effect)::bigint AS effect, count(*) AS postings
FROM postings
WHERE transaction_id = ANY($1::text[])
GROUP BY transaction_id
"""
)


async def posted_for(pool: asyncpg.Pool, transaction_ids: list[str]) -> dict[str, tuple[int, int]]:
    """What the cards posted on issuer:settlement for each issuer transaction
    (its net effect and its number of postings), read as reconciliation reads
    it; a transaction never posted is absent."""
    rows = await pool.fetch(POSTED_FOR_SQL, transaction_ids)
    return {row["transaction_id"]: (row["effect"], row["postings"]) for row in rows}


ISSUER_RECORDS_SQL = """
SELECT DISTINCT ON (record_id) record_id, record_type, card_id, amount_minor, currency,
       direction
FROM reconciliation_records
WHERE run_key = $1
ORDER BY record_id, position
"""


def fix_record(row: asyncpg.Record) -> FixRecord:
    """A reconciliation_fixes row as the fix it records."""
    return FixRecord(
        fix_key=row["fix_key"],
        run_key=row["run_key"],
        settlement_date=row["settlement_date"],
        difference=Difference(
            item_id=row["item_id"],
            kind=DifferenceKind(row["kind"]),
            transaction_id=row["transaction_id"],
            card_id=row["card_id"],
            currency=Currency(row["currency"]),
            record_type=None,
            issuer_amount_minor=row["issuer_amount_minor"],
            ledger_amount_minor=row["ledger_amount_minor"],
            delta_minor=row["delta_minor"],
            ledger_postings=0,
        ),
    )
