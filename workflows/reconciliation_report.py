"""The day's reconciliation report (workflows/reconciliation.py writes it):
per currency the records and volume, the differences, the drift, what was
fixed and what is left unexplained, as amounts and as rates of the volume;
the differences by kind and state; the earlier fixes reversed, by kind.
Computed from what the run found, nothing else.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.reconciliation import (
        CurrencySummary,
        DifferenceKind,
        DownloadSummary,
        LatePosting,
        MatchResult,
        ReconciliationInput,
        ReconciliationItem,
        ReconciliationReport,
        ReversalKind,
    )

DRIFT_RATE_PLACES = Decimal("0.000001")


def reconciliation_report(
    workflow_id: str,
    request: ReconciliationInput,
    download: DownloadSummary,
    matched: MatchResult,
    items: list[ReconciliationItem],
    reversals: list[LatePosting],
) -> ReconciliationReport:
    """The report of the run `workflow_id`, from its items (every difference,
    in the state it ended in) and the earlier fixes it reversed."""
    currencies = []
    volumes = {volume.currency: volume for volume in matched.volumes}
    for currency in sorted(
        set(volumes)
        | {item.difference.currency for item in items}
        | {late.fix.difference.currency for late in reversals}
    ):
        mine = [item for item in items if item.difference.currency == currency]
        reversed_here = [late for late in reversals if late.fix.difference.currency == currency]
        drift = sum(abs(item.difference.delta_minor) for item in mine)
        fixed = sum(
            abs(item.difference.delta_minor)
            for item in mine
            if item.state in ("auto_fixed", "adjusted")
        )
        unexplained = sum(
            abs(item.difference.delta_minor) for item in mine if item.state == "undecided"
        )
        volume = volumes.get(currency)
        volume_minor = volume.volume_minor if volume else 0
        currencies.append(
            CurrencySummary(
                currency=currency,
                records=volume.records if volume else 0,
                volume_minor=volume_minor,
                differences=len(mine),
                drift_minor=drift,
                fixed_minor=fixed,
                unexplained_minor=unexplained,
                drift_rate=_rate(drift, volume_minor),
                unexplained_drift_rate=_rate(unexplained, volume_minor),
                reversals=len(reversed_here),
                reversed_minor=sum(abs(late.correction_minor) for late in reversed_here),
            )
        )
    kinds = Counter(item.difference.kind.value for item in items)
    states = Counter(item.state for item in items)
    return ReconciliationReport(
        workflow_id=workflow_id,
        provider=request.provider,
        settlement_date=request.settlement_date,
        download=download,
        records_total=matched.records_total,
        records_matched=matched.records_matched,
        records_not_applicable=matched.records_not_applicable,
        counts={kind.value: kinds.get(kind.value, 0) for kind in DifferenceKind},
        states=dict(sorted(states.items())),
        currencies=currencies,
        items=items,
        reversal_counts={
            kind.value: sum(1 for late in reversals if late.kind is kind) for kind in ReversalKind
        },
        reversals=list(reversals),
    )


def _rate(part_minor: int, whole_minor: int) -> str:
    if whole_minor == 0:
        return "0" if part_minor == 0 else "1"
    return str((Decimal(part_minor) / Decimal(whole_minor)).quantize(DRIFT_RATE_PLACES))
