"""The ledger's invariants, checked from the database's own rows.

Used by tests after every step, by the chaos run and by operators
(`cardflow ledger verify`). Each query returns the rows that break one rule.
"""

from __future__ import annotations

import asyncpg

from schemas.ledger import Violation

# (check name, SQL returning (subject, detail) rows that violate it)
CHECKS: tuple[tuple[str, str], ...] = (
    (
        "currency_balances",
        """
        SELECT a.currency, format('debits %s <> credits %s, or pending debits %s <> credits %s',
               sum(b.debits_posted), sum(b.credits_posted),
               sum(b.debits_pending), sum(b.credits_pending))
        FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id
        GROUP BY a.currency
        HAVING sum(b.debits_posted) <> sum(b.credits_posted)
            OR sum(b.debits_pending) <> sum(b.credits_pending)
        """,
    ),
    (
        "balance_equals_transfers",
        """
        WITH legs AS (
            SELECT t.debit_account_id AS account_id, t.debit_slot AS slot,
                   CASE WHEN t.kind IN ('posted', 'post_pending') THEN t.amount_minor ELSE 0 END
                       AS dp,
                   0::bigint AS cp,
                   CASE WHEN t.kind = 'pending' AND r.id IS NULL THEN t.amount_minor ELSE 0 END
                       AS dpend,
                   0::bigint AS cpend
            FROM ledger_transfers t
            LEFT JOIN ledger_transfers r ON r.pending_id = t.id
            UNION ALL
            SELECT t.credit_account_id, t.credit_slot, 0,
                   CASE WHEN t.kind IN ('posted', 'post_pending') THEN t.amount_minor ELSE 0 END,
                   0,
                   CASE WHEN t.kind = 'pending' AND r.id IS NULL THEN t.amount_minor ELSE 0 END
            FROM ledger_transfers t
            LEFT JOIN ledger_transfers r ON r.pending_id = t.id
        ), expected AS (
            SELECT account_id, slot, sum(dp) AS dp, sum(cp) AS cp, sum(dpend) AS dpend,
                   sum(cpend) AS cpend
            FROM legs GROUP BY account_id, slot
        )
        SELECT coalesce(a.code, '#' || coalesce(b.account_id, e.account_id)) || ' slot '
                   || coalesce(b.slot, e.slot),
               format('stored %s/%s/%s/%s, transfers say %s/%s/%s/%s '
                      '(debits/credits posted, debits/credits pending)',
                      b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending,
                      coalesce(e.dp, 0), coalesce(e.cp, 0), coalesce(e.dpend, 0),
                      coalesce(e.cpend, 0))
        FROM ledger_balances b
        FULL JOIN expected e ON e.account_id = b.account_id AND e.slot = b.slot
        LEFT JOIN ledger_accounts a ON a.id = coalesce(b.account_id, e.account_id)
        WHERE b.account_id IS NULL
           OR (b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending)
              IS DISTINCT FROM
              (coalesce(e.dp, 0), coalesce(e.cp, 0), coalesce(e.dpend, 0), coalesce(e.cpend, 0))
        """,
    ),
    (
        "constraint_respected",
        """
        SELECT a.code,
               CASE WHEN a.debits_must_not_exceed_credits
                    THEN format('debits %s + pending %s exceed credits %s',
                                sum(b.debits_posted), sum(b.debits_pending), sum(b.credits_posted))
                    ELSE format('credits %s + pending %s exceed debits %s',
                                sum(b.credits_posted), sum(b.credits_pending), sum(b.debits_posted))
               END
        FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id
        GROUP BY a.id
        HAVING (a.debits_must_not_exceed_credits
                AND sum(b.debits_posted) + sum(b.debits_pending) > sum(b.credits_posted))
            OR (a.credits_must_not_exceed_debits
                AND sum(b.credits_posted) + sum(b.credits_pending) > sum(b.debits_posted))
        """,
    ),
    (
        "hold_resolved_once",
        """
        SELECT h.idempotency_key, format('resolved %s times', count(*))
        FROM ledger_transfers h JOIN ledger_transfers r ON r.pending_id = h.id
        GROUP BY h.id HAVING count(*) > 1
        """,
    ),
    (
        "hold_resolution_valid",
        """
        SELECT r.idempotency_key,
               CASE
                   WHEN h.kind <> 'pending' THEN format('resolves %s, which is not a hold', h.kind)
                   WHEN (r.debit_account_id, r.credit_account_id, r.currency)
                        <> (h.debit_account_id, h.credit_account_id, h.currency)
                       THEN 'accounts or currency differ from the hold'
                   WHEN r.kind = 'post_pending' AND r.created_at > h.expires_at
                       THEN format('posted at %s after expiry %s', r.created_at, h.expires_at)
                   WHEN r.kind = 'post_pending' AND r.amount_minor > h.amount_minor
                       THEN format('posted %s of a %s hold', r.amount_minor, h.amount_minor)
                   WHEN r.kind = 'expire_pending' AND r.created_at <= h.expires_at
                       THEN format('expired at %s before expiry %s', r.created_at, h.expires_at)
                   ELSE format('%s of %s releases %s', r.kind, h.amount_minor, r.amount_minor)
               END
        FROM ledger_transfers r JOIN ledger_transfers h ON h.id = r.pending_id
        WHERE h.kind <> 'pending'
           OR (r.debit_account_id, r.credit_account_id, r.currency)
              <> (h.debit_account_id, h.credit_account_id, h.currency)
           OR (r.kind = 'post_pending'
               AND (r.created_at > h.expires_at OR r.amount_minor > h.amount_minor))
           OR (r.kind = 'expire_pending' AND r.created_at <= h.expires_at)
           OR (r.kind IN ('void_pending', 'expire_pending') AND r.amount_minor <> h.amount_minor)
        """,
    ),
    (
        "transfer_currency",
        """
        SELECT t.idempotency_key, format('%s transfer between %s (%s) and %s (%s)', t.currency,
               d.code, d.currency, c.code, c.currency)
        FROM ledger_transfers t
        JOIN ledger_accounts d ON d.id = t.debit_account_id
        JOIN ledger_accounts c ON c.id = t.credit_account_id
        WHERE t.currency <> d.currency OR t.currency <> c.currency
        """,
    ),
    (
        "balance_slots",
        """
        SELECT a.code, format('%s balance rows for %s slots, %s marked closed, status %s',
               count(b.slot), a.balance_slots, count(*) FILTER (WHERE b.closed), a.status)
        FROM ledger_accounts a LEFT JOIN ledger_balances b ON b.account_id = a.id
        GROUP BY a.id
        HAVING count(b.slot) <> a.balance_slots
            OR count(*) FILTER (WHERE b.closed) <> CASE WHEN a.status = 'closed'
                                                        THEN a.balance_slots ELSE 0 END
        """,
    ),
    (
        "closed_account_empty",
        """
        SELECT a.code, format('closed with posted balance %s and pending %s/%s',
               sum(b.credits_posted) - sum(b.debits_posted), sum(b.debits_pending),
               sum(b.credits_pending))
        FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id
        WHERE a.status = 'closed'
        GROUP BY a.id
        HAVING sum(b.credits_posted) <> sum(b.debits_posted)
            OR sum(b.debits_pending) <> 0 OR sum(b.credits_pending) <> 0
        """,
    ),
    (
        "transfer_references",
        """
        SELECT t.idempotency_key, 'refers to a missing account or hold'
        FROM ledger_transfers t
        LEFT JOIN ledger_accounts d ON d.id = t.debit_account_id
        LEFT JOIN ledger_accounts c ON c.id = t.credit_account_id
        LEFT JOIN ledger_transfers h ON h.id = t.pending_id
        WHERE d.id IS NULL OR c.id IS NULL OR (t.pending_id IS NOT NULL AND h.id IS NULL)
        """,
    ),
    (
        "key_has_one_outcome",
        """
        SELECT t.idempotency_key, 'both a transfer and a recorded rejection'
        FROM ledger_transfers t JOIN ledger_rejections r USING (idempotency_key)
        """,
    ),
)


async def verify(connection: asyncpg.Connection | asyncpg.Pool) -> list[Violation]:
    """Every violation of every invariant; an empty list means the ledger is sound."""
    violations: list[Violation] = []
    for check, query in CHECKS:
        for subject, detail in await connection.fetch(query):
            violations.append(Violation(check=check, subject=str(subject), detail=str(detail)))
    return violations
