"""The issuer's daily settlement file: the same inputs make the same bytes;
what the issuer recorded is in it beside the synthetic volume; the shares
cardflow never saw or saw with another amount are exact; it is served in
byte ranges as large files are, each gzip member readable on its own; and
it is written with memory bounded whatever its size."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import ValidationError

from schemas.settlement import (
    SETTLEMENT_FILE_COLUMNS,
    SettlementFileFormat,
    SettlementFileRecord,
    SettlementFileRecordType,
    record_from_csv_row,
)
from simulators.issuer_settlement_files import FileParameters, materialize
from simulators.issuer_settlement_records import (
    INTERCHANGE_BPS,
    PlatformView,
    SyntheticShares,
    settlement_records,
)
from tests.simulators.test_issuer import APPROVE, CAFE, Issuer

DAY = date(2025, 3, 14)
SMALL_VOLUME = 3_000
MEMBER_RECORDS = 500


@pytest_asyncio.fixture
async def issuer(sim: Any) -> AsyncIterator[Issuer]:
    async with httpx.AsyncClient(base_url=sim.provider_url("issuer"), timeout=30) as http:
        yield Issuer(http)


def file_options(sim: Any, **options: Any) -> None:
    defaults = {
        "settlement_file_volume": SMALL_VOLUME,
        "settlement_file_seed": 42,
        "settlement_file_member_records": MEMBER_RECORDS,
    }
    sim.admin("PUT", "/options/issuer", {**defaults, **options})


def parameters(**changes: Any) -> FileParameters:
    values: dict[str, Any] = {
        "day": DAY,
        "file_format": SettlementFileFormat.JSONL,
        "volume": SMALL_VOLUME,
        "seed": 42,
        "records_per_member": MEMBER_RECORDS,
        "never_seen_bps": 100,
        "other_amount_bps": 50,
    }
    return FileParameters(**{**values, **changes})


def json_records(content: bytes) -> list[SettlementFileRecord]:
    lines = gzip.decompress(content).splitlines()
    return [SettlementFileRecord.model_validate_json(line) for line in lines]


async def manifest_of(issuer: Issuer, day: date, file_format: str = "jsonl") -> Any:
    response = await issuer.http.get(
        f"/v1/settlement-files/{day.isoformat()}", params={"format": file_format}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def content(issuer: Issuer, day: date, file_format: str = "jsonl", **headers: str) -> Any:
    return await issuer.http.get(
        f"/v1/settlement-files/{day.isoformat()}/content",
        params={"format": file_format},
        headers=headers,
    )


# ----- the records ----------------------------------------------------------------------------


def test_the_same_inputs_make_the_same_bytes_and_another_seed_others(tmp_path: Path) -> None:
    first, _ = materialize(tmp_path / "a", parameters(), [], "key")
    again, _ = materialize(tmp_path / "b", parameters(), [], "key")
    other, _ = materialize(tmp_path / "c", parameters(seed=43), [], "key")
    # The shares only mark what cardflow is meant to have seen: same file.
    shared, _ = materialize(tmp_path / "d", parameters(never_seen_bps=900), [], "key")
    assert first.sha256 == again.sha256 == shared.sha256
    assert first.members == again.members
    assert other.sha256 != first.sha256


def test_the_shares_never_seen_and_seen_with_another_amount_are_exact() -> None:
    volume, shares = 20_000, SyntheticShares(never_seen_bps=250, other_amount_bps=125)
    views: Counter[PlatformView] = Counter()
    interchange_usd = 0
    for generated in settlement_records(DAY, volume, 7, shares=shares):
        record = generated.record
        views[generated.view] += 1
        if generated.view == PlatformView.SEEN_OTHER_AMOUNT:
            assert generated.platform_amount_minor not in (None, record.amount_minor)
            assert generated.platform_amount_minor is not None
            assert generated.platform_amount_minor > 0
        elif generated.view == PlatformView.SEEN_EXACT:
            assert generated.platform_amount_minor == record.amount_minor
        else:
            assert generated.platform_amount_minor is None
        if record.currency == "USD" and record.interchange_minor is not None:
            interchange_usd += record.interchange_minor
        if record.record_id == f"ic_{DAY:%Y%m%d}_USD":
            assert (record.amount_minor, record.direction) == (interchange_usd, "credit")
    assert views[PlatformView.NEVER_SEEN] == 500  # 2.5 % of 20,000
    assert views[PlatformView.SEEN_OTHER_AMOUNT] == 250  # 1.25 %
    assert views[PlatformView.SEEN_EXACT] == volume - 750
    assert views[PlatformView.RECORDED] == 0
    # Interchange and processing fees, once per currency that had purchases.
    assert views[PlatformView.DAY_TOTAL] == 8


def test_a_transaction_settled_twice_follows_its_first_record_under_another_id() -> None:
    """The issuer's mistake on demand: a share of the clearings, force posts
    and refunds settled again, right after, the same in all but the record
    id; the records around them are the file without duplicates."""
    plain = list(settlement_records(DAY, 5_000, 3))
    doubled = list(settlement_records(DAY, 5_000, 3, duplicated_bps=200))
    again = [g for g in doubled if g.view == PlatformView.DUPLICATE]
    settling = [g for g in plain if g.record.record_type in ("clearing", "force_post", "refund")]
    # About 2 % of them (the draw is uniform): well away from none or all.
    assert len(settling) // 100 < len(again) < len(settling) * 4 // 100
    for index, generated in enumerate(doubled):
        if generated.view != PlatformView.DUPLICATE:
            continue
        first = doubled[index - 1].record
        assert generated.record.record_id == f"{first.record_id}_again"
        assert generated.record.model_copy(update={"record_id": first.record_id}) == first
        assert generated.platform_amount_minor is None
    card_records = [g for g in doubled if g.view not in (PlatformView.DUPLICATE,)]
    assert [g.record for g in card_records][:-8] == [g.record for g in plain][:-8]


def test_every_synthetic_record_is_valid_and_the_mix_is_a_card_programs() -> None:
    types: Counter[SettlementFileRecordType] = Counter()
    ids = set()
    for generated in settlement_records(DAY, 10_000, 3):
        record = generated.record
        ids.add(record.record_id)
        types[record.record_type] += 1
        assert record.settlement_date == DAY
        if record.record_type == SettlementFileRecordType.CLEARING:
            assert record.interchange_minor == record.amount_minor * INTERCHANGE_BPS // 10_000
            assert record.fee_minor is not None and record.fee_minor >= 1
        if record.record_type == SettlementFileRecordType.REFUND:
            assert record.interchange_minor is not None and record.interchange_minor <= 0
    assert len(ids) == 10_008
    assert types[SettlementFileRecordType.CLEARING] > 7_500
    for kind in ("force_post", "refund", "reversal", "chargeback", "fee", "interchange"):
        assert types[SettlementFileRecordType(kind)] > 0, kind


def test_a_record_that_contradicts_itself_or_carries_a_fraction_is_refused() -> None:
    record = next(
        generated.record
        for generated in settlement_records(DAY, 100, 1)
        if generated.record.record_type == SettlementFileRecordType.CLEARING
    )
    line = record.model_dump(mode="json")
    assert SettlementFileRecord.model_validate_json(json.dumps(line)) == record
    refused = [
        {**line, "amount_minor": 10.5},
        {**line, "amount_minor": "1050"},
        {**line, "direction": "credit"},  # a clearing never credits the program
        {**line, "card_id": None},
        {**line, "fee_type": "processing"},
        {**line, "record_type": "reversal"},  # a reversal carries no interchange
        {**line, "occurred_at": "2025-03-14T10:00:00"},  # no time zone
        {**line, "record_id": "sr,1"},
    ]
    for bad in refused:
        with pytest.raises(ValidationError):
            SettlementFileRecord.model_validate_json(json.dumps(bad))
    row = ["10.5" if name == "amount_minor" else "" for name in SETTLEMENT_FILE_COLUMNS]
    with pytest.raises(ValueError, match="amount_minor is not an integer"):
        record_from_csv_row(row, SETTLEMENT_FILE_COLUMNS)


def test_a_200_000_record_file_is_written_with_memory_bounded(tmp_path: Path) -> None:
    """Written in a fresh process: its peak resident memory (the kernel's
    high-water mark, VmHWM) over what it held before writing is the
    measure. The file's 76 MB of JSON never sit in memory, nor its 200,000
    records."""
    script = textwrap.dedent(
        f"""
        import json, re, time
        from datetime import date
        from pathlib import Path
        from schemas.settlement import SettlementFileFormat
        from simulators.issuer_settlement_files import FileParameters, materialize

        def kilobytes(field):
            status = Path("/proc/self/status").read_text()
            return int(re.search(field + r":\\s+([0-9]+) kB", status).group(1))

        parameters = FileParameters(
            date(2025, 3, 14), SettlementFileFormat.JSONL, 200_000, 9, 10_000, 100, 50
        )
        before = kilobytes("VmRSS")
        started = time.perf_counter()
        manifest, path = materialize(Path({str(tmp_path)!r}), parameters, [], "big")
        seconds = round(time.perf_counter() - started, 2)
        growth = kilobytes("VmHWM") - before
        print(json.dumps({{"records": manifest.record_count, "bytes": path.stat().st_size,
                          "peak_growth_kb": growth, "seconds": seconds}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, cwd=Path.cwd()
    )
    measured = json.loads(done.stdout)
    print(f"settlement file of 200,000 records: {measured}")
    assert measured["records"] == 200_008
    # Held in memory, the records alone would take hundreds of megabytes;
    # a batch of encoded records and the compressor's window take a few.
    assert measured["peak_growth_kb"] < 20 * 1024


# ----- the file over HTTP ---------------------------------------------------------------------


async def test_what_the_issuer_recorded_is_in_the_file_beside_the_synthetic_volume(
    sim: Any, issuer: Issuer, webhook_sink: Any
) -> None:
    webhook_sink.realtime = APPROVE
    card_id = (await issuer.card())["id"]
    clearing = await issuer.clear((await issuer.authorize(card_id, 2_500))["id"], 2_000)
    money = {"card_id": card_id, "amount_minor": 700, "currency": "USD", "merchant": CAFE}
    refund = await issuer.ok("POST", "/v1/simulate/refunds", money, 201)
    today = datetime.now(UTC).date()
    file_options(sim)

    manifest = await manifest_of(issuer, today)
    assert manifest["record_count"] == SMALL_VOLUME + 8 and manifest["format"] == "jsonl"
    assert manifest["columns"] == list(SETTLEMENT_FILE_COLUMNS)
    whole = await content(issuer, today)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["etag"] == manifest["etag"] == f'"{manifest["sha256"]}"'
    assert len(whole.content) == manifest["byte_size"]
    records = {record.record_id: record for record in json_records(whole.content)}
    assert len(records) == manifest["record_count"]
    cleared = records[clearing["id"]]
    assert (cleared.record_type, cleared.card_id, cleared.amount_minor) == (
        "clearing",
        card_id,
        2_000,
    )
    assert (cleared.direction, cleared.interchange_minor, cleared.fee_minor) == ("debit", 30, 2)
    refunded = records[refund["id"]]
    assert (refunded.record_type, refunded.amount_minor, refunded.direction) == (
        "refund",
        700,
        "credit",
    )
    assert refunded.interchange_minor == -10 and refunded.fee_minor is None

    view = await issuer.http.get(f"/v1/simulate/settlement-files/{today.isoformat()}/platform-view")
    lines = [json.loads(line) for line in view.text.splitlines()]
    assert [line["record"]["record_id"] for line in lines] == list(records)
    marks = {line["record"]["record_id"]: line["view"] for line in lines}
    assert marks[clearing["id"]] == marks[refund["id"]] == "recorded"
    assert Counter(marks.values())["never_seen"] == (SMALL_VOLUME - 2) * 100 // 10_000

    # Something more recorded that day: a new file, a new ETag.
    await issuer.clear((await issuer.authorize(card_id, 300))["id"], 300)
    changed = await manifest_of(issuer, today)
    assert changed["etag"] != manifest["etag"]
    assert changed["record_count"] == manifest["record_count"]  # the volume holds

    csv_manifest = await manifest_of(issuer, today, "csv")
    rows = list(
        csv.reader(
            io.StringIO(gzip.decompress((await content(issuer, today, "csv")).content).decode())
        )
    )
    assert tuple(rows[0]) == SETTLEMENT_FILE_COLUMNS
    from_csv = [record_from_csv_row(row, SETTLEMENT_FILE_COLUMNS) for row in rows[1:]]
    assert len(from_csv) == csv_manifest["record_count"]
    assert next(r for r in from_csv if r.record_id == clearing["id"]) == cleared


async def test_ranges_are_answered_206_416_and_only_from_the_file_if_range_names(
    sim: Any, issuer: Issuer
) -> None:
    file_options(sim)
    manifest = await manifest_of(issuer, DAY)
    size, etag = manifest["byte_size"], manifest["etag"]
    whole = (await content(issuer, DAY)).content

    part = await content(issuer, DAY, Range="bytes=100-1099")
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1099/{size}"
    assert part.content == whole[100:1100]
    tail = await content(issuer, DAY, Range=f"bytes={size - 10}-")
    assert tail.status_code == 206 and tail.content == whole[-10:]

    past = await content(issuer, DAY, Range=f"bytes={size}-{size + 100}")
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"

    same = await content(issuer, DAY, Range="bytes=0-9", **{"If-Range": etag})
    assert same.status_code == 206 and same.content == whole[:10]
    stale = await content(issuer, DAY, Range="bytes=0-9", **{"If-Range": '"an-older-file"'})
    assert stale.status_code == 200 and stale.content == whole

    head = await issuer.http.head(f"/v1/settlement-files/{DAY.isoformat()}/content")
    assert head.status_code == 200 and int(head.headers["content-length"]) == size


async def test_each_member_is_fetched_and_decompressed_on_its_own(sim: Any, issuer: Issuer) -> None:
    file_options(sim)
    for file_format in ("jsonl", "csv"):
        manifest = await manifest_of(issuer, DAY, file_format)
        members = manifest["members"]
        records_in_members = 0
        for member in members:
            start, end = member["offset"], member["offset"] + member["length"] - 1
            part = await content(issuer, DAY, file_format, Range=f"bytes={start}-{end}")
            assert part.status_code == 206
            lines = gzip.decompress(part.content).decode().splitlines()
            if member["record_count"] == 0:
                assert file_format == "csv" and member["index"] == 0
                assert lines == [",".join(SETTLEMENT_FILE_COLUMNS)]
                continue
            assert len(lines) == member["record_count"] <= MEMBER_RECORDS
            first = (
                json.loads(lines[0])["record_id"]
                if file_format == "jsonl"
                else lines[0].split(",")[0]
            )
            assert first == member["first_record_id"]
            records_in_members += len(lines)
        assert records_in_members == manifest["record_count"] == SMALL_VOLUME + 8
        assert members[-1]["offset"] + members[-1]["length"] == manifest["byte_size"]
        # The members, end to end, are the whole file: no gap, no overlap.
        ends = [member["offset"] + member["length"] for member in members[:-1]]
        assert ends == [member["offset"] for member in members[1:]]
