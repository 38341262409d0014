"""Reconciliation's report files (activities/reconciliation.py): the day's
report as JSON and as CSV (one row per difference and per earlier fix
corrected), each written whole."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from schemas.reconciliation import ReconciliationReport, ReportPaths, ReversalKind

REPORT_CSV_COLUMNS: tuple[str, ...] = (
    "item_id",
    "kind",
    "state",
    "transaction_id",
    "card_id",
    "currency",
    "record_type",
    "issuer_amount_minor",
    "ledger_amount_minor",
    "delta_minor",
    "ledger_postings",
    "decided_by",
    "reason",
    "transfer_key",
)


def write_report_files(reports_dir: str, report: ReconciliationReport) -> ReportPaths:
    directory = Path(reports_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"reconciliation-{report.provider}-{report.settlement_date.isoformat()}"
    json_path = directory / f"{stem}.json"
    csv_path = directory / f"{stem}.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for item in report.items:
        row = item.difference.model_dump(mode="json")
        row.update(state=item.state, decided_by=item.decided_by or "", reason=item.reason or "")
        row["transfer_key"] = item.transfer_key or ""
        writer.writerow({column: row.get(column, "") for column in REPORT_CSV_COLUMNS})
    for late in report.reversals:
        # One row per earlier fix corrected: its delta is the correction's
        # effect on issuer:settlement, its ledger amount the card's now.
        fixed = late.fix.difference
        writer.writerow(
            {
                "item_id": fixed.item_id,
                "kind": late.kind.value,
                "state": "reversed",
                "transaction_id": fixed.transaction_id,
                "card_id": fixed.card_id or "",
                "currency": fixed.currency.value,
                "record_type": "",
                "issuer_amount_minor": fixed.issuer_amount_minor,
                "ledger_amount_minor": late.ledger_amount_now_minor,
                "delta_minor": late.correction_minor,
                "ledger_postings": "",
                "decided_by": "",
                "reason": (
                    f"settled by the issuer on {report.settlement_date.isoformat()}"
                    f" after fix {late.fix.fix_key}"
                    if late.kind is ReversalKind.LATE_SETTLEMENT_REVERSED
                    else f"late posting after fix {late.fix.fix_key}"
                ),
                "transfer_key": late.transfer_key or "",
            }
        )
    _write_atomically(json_path, report.model_dump_json(indent=2) + "\n")
    _write_atomically(csv_path, buffer.getvalue())
    return ReportPaths(json_path=str(json_path.resolve()), csv_path=str(csv_path.resolve()))


def _write_atomically(path: Path, text: str) -> None:
    # A reader never sees half a report: write aside, then rename over.
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
