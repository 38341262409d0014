"""The issuer's daily settlement file, served as real issuers serve large
files: made once per day and content, kept on disk, read in byte ranges.

    GET /v1/settlement-files/{date}?format=jsonl|csv          its manifest (503 with
        Retry-After and error type settlement_file_preparing while a large
        day is being written)
    GET /v1/settlement-files/{date}/content?format=jsonl|csv  the file, with
        Range (206, Content-Range; 416 when no byte of it is in the file),
        If-Range (a range only from the file with that ETag), Accept-Ranges
  sandbox:
    GET /v1/simulate/settlement-files/{date}/platform-view    what cardflow is
        meant to know of each record (JSON lines), to seed its ledger with

The file holds what the issuer recorded that day (the settlement report's
clearings, force posts, refunds, chargebacks, reversals and fees) plus
synthetic card records up to a volume, then the day's interchange and
processing fee totals (simulators/issuer_settlement_records.py). It is
gzipped JSON lines or CSV in independent gzip members of a fixed number of
records (schemas/settlement.py), written once, streamed to the simulator's
data directory, and made anew only when what the issuer recorded that day,
or its volume, seed or member size, changes: its ETag (its sha256) changes
with it.

Options (PUT /_admin/options/issuer): settlement_file_volume (card records
in the day's file, the issuer's own included; default 0: only its own),
settlement_file_seed (default 0), settlement_file_never_seen_bps and
settlement_file_other_amount_bps (of the synthetic records, the shares
cardflow is meant never to have seen and to have seen with another amount;
defaults 100 and 50), settlement_file_duplicated_bps (of the synthetic
clearings, force posts and refunds, the share the issuer settles twice;
default 0), settlement_file_member_records (records per gzip member;
default 10,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from schemas.settlement import (
    SETTLEMENT_FILE_COLUMNS,
    SETTLEMENT_FILE_MEDIA_TYPE,
    SettlementDirection,
    SettlementFeeType,
    SettlementFileFormat,
    SettlementFileManifest,
    SettlementFileMember,
    SettlementFileRecord,
    SettlementFileRecordType,
    record_csv_row,
    record_json_line,
)
from schemas.units import BASIS_POINTS_PER_UNIT
from simulators import issuer_reports
from simulators.issuer_settlement_records import (
    SYNTHETIC_VOLUME_MAX,
    GeneratedRecord,
    SyntheticShares,
    interchange_minor,
    processing_fee_minor,
    settlement_records,
)
from simulators.issuer_state import FEES, IssuerState

SEED_MAX = 2**63 - 1
MEMBER_RECORDS_DEFAULT = 10_000
MEMBER_RECORDS_MIN = 100
MEMBER_RECORDS_MAX = 1_000_000
# A manifest lists every member: at most this many, whatever the volume
# (a smaller member size is raised to keep within it).
MEMBERS_MAX = 10_000
# Records encoded and handed to the compressor at once: fewer calls, and a
# buffer of a few hundred kilobytes at most.
ENCODE_BATCH_RECORDS = 1_000
GZIP_LEVEL = 6
# Files made for one day and format that are no longer current are removed
# when a new one is made; a download already reading one keeps its handle.
SETTLEMENT_FILES_DIRECTORY = "settlement-files"
PLATFORM_VIEW_BATCH_RECORDS = 1_000
# A request waits this long for a file being written (a small day is written
# well within it), then is told to come back: a client's read timeout is
# longer, and a day of millions of records takes far longer to write.
PREPARING_WAIT_SECONDS_MAX = 2.0
PREPARING_RETRY_AFTER_SECONDS = 2
PREPARING_ERROR_TYPE = "settlement_file_preparing"


@dataclass(frozen=True)
class FileParameters:
    """Everything a day's file is made of, besides what the issuer recorded."""

    day: date
    file_format: SettlementFileFormat
    volume: int
    seed: int
    records_per_member: int
    never_seen_bps: int
    other_amount_bps: int
    duplicated_bps: int = 0

    @property
    def shares(self) -> SyntheticShares:
        return SyntheticShares(self.never_seen_bps, self.other_amount_bps)


def file_parameters(
    state: IssuerState, day: date, file_format: SettlementFileFormat
) -> FileParameters:
    """The day's file as the issuer's options describe it now."""
    volume = state.option_int("settlement_file_volume", 0, 0, SYNTHETIC_VOLUME_MAX)
    per_member = state.option_int(
        "settlement_file_member_records",
        MEMBER_RECORDS_DEFAULT,
        MEMBER_RECORDS_MIN,
        MEMBER_RECORDS_MAX,
    )
    never = state.option_int("settlement_file_never_seen_bps", 100, 0, BASIS_POINTS_PER_UNIT)
    other = state.option_int(
        "settlement_file_other_amount_bps", 50, 0, BASIS_POINTS_PER_UNIT - never
    )
    return FileParameters(
        day=day,
        file_format=file_format,
        volume=volume,
        seed=state.option_int("settlement_file_seed", 0, 0, SEED_MAX),
        records_per_member=max(per_member, -(-volume // MEMBERS_MAX)),
        never_seen_bps=never,
        other_amount_bps=other,
        duplicated_bps=state.option_int(
            "settlement_file_duplicated_bps", 0, 0, BASIS_POINTS_PER_UNIT
        ),
    )


def recorded_records(state: IssuerState, day: date) -> list[SettlementFileRecord]:
    """What the issuer itself recorded for the day, as the settlement report
    lists it, oldest first, with interchange and the processing fee."""
    records = []
    for reported in issuer_reports.settlement_records(state, day):
        record_type = SettlementFileRecordType(reported.record_type)
        fee_type = None
        if record_type == SettlementFileRecordType.FEE:
            fee_type = SettlementFeeType(state.load(FEES, reported.id).type)
        records.append(
            SettlementFileRecord(
                record_id=reported.id,
                record_type=record_type,
                card_id=reported.card_id,
                authorization_id=reported.authorization_id,
                transaction_id=reported.transaction_id,
                amount_minor=reported.amount_minor,
                currency=reported.currency,
                direction=SettlementDirection(reported.direction),
                interchange_minor=interchange_minor(record_type, reported.amount_minor),
                fee_minor=processing_fee_minor(record_type, reported.amount_minor),
                fee_type=fee_type,
                occurred_at=datetime.fromisoformat(reported.created_at),
                settlement_date=day,
            )
        )
    return records


def generated(
    parameters: FileParameters, recorded: list[SettlementFileRecord]
) -> Iterator[GeneratedRecord]:
    return settlement_records(
        parameters.day,
        parameters.volume,
        parameters.seed,
        recorded=recorded,
        shares=parameters.shares,
        duplicated_bps=parameters.duplicated_bps,
    )


# ----- writing the file ---------------------------------------------------------------


class _MemberWriter:
    """Writes gzip members one after another, hashing every byte written."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.offset = 0
        self.members: list[SettlementFileMember] = []
        self._compressor: zlib._Compress | None = None
        self._start = 0
        self._first_record_id: str | None = None

    def begin(self, first_record_id: str | None) -> None:
        # No file name and mtime 0 in the gzip header (zlib's own): the same
        # records give the same bytes on every run.
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        self._start, self._first_record_id = self.offset, first_record_id

    def add(self, data: bytes) -> None:
        assert self._compressor is not None, "a member is begun before it is written"
        self._write(self._compressor.compress(data))

    def end(self, record_count: int) -> None:
        assert self._compressor is not None, "a member is begun before it ends"
        self._write(self._compressor.flush())
        self._compressor = None
        self.members.append(
            SettlementFileMember(
                index=len(self.members),
                offset=self._start,
                length=self.offset - self._start,
                record_count=record_count,
                first_record_id=self._first_record_id,
            )
        )

    def _write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.digest.update(data)
            self.offset += len(data)


def _encoded(records: list[SettlementFileRecord], file_format: SettlementFileFormat) -> bytes:
    if file_format == SettlementFileFormat.JSONL:
        return b"".join(record_json_line(record) for record in records)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerows(record_csv_row(record) for record in records)
    return text.getvalue().encode()


def write_settlement_file(
    out: IO[bytes],
    records: Iterable[SettlementFileRecord],
    file_format: SettlementFileFormat,
    records_per_member: int,
) -> tuple[list[SettlementFileMember], int, str]:
    """Writes `records` to `out` as gzip members of `records_per_member`
    records (a CSV file's header alone in the first); returns the members,
    the records written and the file's sha256. Holds one batch of records
    at a time, never a member, never the file."""
    writer = _MemberWriter(out)
    if file_format == SettlementFileFormat.CSV:
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(SETTLEMENT_FILE_COLUMNS)
        writer.begin(None)
        writer.add(header.getvalue().encode())
        writer.end(0)
    total = in_member = 0
    batch: list[SettlementFileRecord] = []
    for record in records:
        if in_member == 0:
            writer.begin(record.record_id)
        batch.append(record)
        in_member += 1
        if len(batch) == ENCODE_BATCH_RECORDS or in_member == records_per_member:
            writer.add(_encoded(batch, file_format))
            batch = []
        if in_member == records_per_member:
            writer.end(in_member)
            total, in_member = total + in_member, 0
    if in_member:
        writer.add(_encoded(batch, file_format))
        writer.end(in_member)
        total += in_member
    return writer.members, total, writer.digest.hexdigest()


# ----- the file on disk -----------------------------------------------------------------


def settlement_files_directory(state: IssuerState) -> Path:
    """Beside the simulator's state (CARDFLOW_HOME/simulators/settlement-files)."""
    store_path = state.context.store.path
    if store_path == ":memory:":
        return Path(tempfile.gettempdir()) / f"cardflow-simulators-{os.getpid()}"
    return Path(store_path).parent / SETTLEMENT_FILES_DIRECTORY


def file_key(parameters: FileParameters, recorded: list[SettlementFileRecord]) -> str:
    """Names the file's content: its parameters and what the issuer recorded."""
    digest = hashlib.sha256()
    shaping = asdict(parameters)
    # The shares mark what cardflow is meant to have seen; the bytes are the same.
    del shaping["never_seen_bps"], shaping["other_amount_bps"]
    digest.update(json.dumps(shaping, default=str, sort_keys=True).encode())
    for record in recorded:
        digest.update(record_json_line(record))
    return digest.hexdigest()[:24]


def _file_name(parameters: FileParameters, key: str) -> str:
    return f"settlement-{parameters.day.isoformat()}-{key}.{parameters.file_format.value}.gz"


def _manifest_path(file_path: Path) -> Path:
    return file_path.with_name(file_path.name + ".manifest.json")


def materialize(
    directory: Path, parameters: FileParameters, recorded: list[SettlementFileRecord], key: str
) -> tuple[SettlementFileManifest, Path]:
    """The day's file and its manifest, written first if they are not on disk
    yet: streamed to a temporary file, then renamed, so a reader never sees
    half a file. The same inputs write the same bytes, so two writers racing
    leave the same file."""
    path = directory / _file_name(parameters, key)
    manifest_path = _manifest_path(path)
    if path.exists() and manifest_path.exists():
        return SettlementFileManifest.model_validate_json(manifest_path.read_bytes()), path
    directory.mkdir(parents=True, exist_ok=True)
    records = (generated_record.record for generated_record in generated(parameters, recorded))
    with tempfile.NamedTemporaryFile(
        dir=directory, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as out:
        try:
            members, record_count, sha256 = write_settlement_file(
                out, records, parameters.file_format, parameters.records_per_member
            )
        except BaseException:
            # Half a file is never left behind to fill the disk.
            Path(out.name).unlink(missing_ok=True)
            raise
    day, file_format = parameters.day.isoformat(), parameters.file_format.value
    manifest = SettlementFileManifest(
        settlement_date=parameters.day,
        format=parameters.file_format,
        columns=list(SETTLEMENT_FILE_COLUMNS),
        record_count=record_count,
        records_per_member=parameters.records_per_member,
        byte_size=members[-1].end if members else 0,
        sha256=sha256,
        etag=f'"{sha256}"',
        content_path=f"/v1/settlement-files/{day}/content?format={file_format}",
        members=members,
    )
    os.replace(out.name, path)
    with tempfile.NamedTemporaryFile(
        dir=directory, prefix=f".{manifest_path.name}.", suffix=".tmp", delete=False
    ) as manifest_out:
        manifest_out.write(manifest.model_dump_json().encode())
    os.replace(manifest_out.name, manifest_path)
    _remove_superseded(directory, parameters, path)
    return manifest, path


def _remove_superseded(directory: Path, parameters: FileParameters, current: Path) -> None:
    """The day's earlier files in the same format: the disk holds one per day."""
    day, file_format = parameters.day.isoformat(), parameters.file_format.value
    for old in directory.glob(f"settlement-{day}-*.{file_format}.gz"):
        if old != current:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
            with contextlib.suppress(FileNotFoundError):
                _manifest_path(old).unlink()


# ----- the routes -------------------------------------------------------------------------

FormatQuery = Annotated[SettlementFileFormat, Query(alias="format")]


def router(state: IssuerState) -> APIRouter:
    api = state.context.router()
    directory = settlement_files_directory(state)
    # The file being written, per content: one writer, every request waits on it.
    writing: dict[str, asyncio.Task[tuple[SettlementFileManifest, Path]]] = {}

    async def current_file(
        day: date, file_format: SettlementFileFormat
    ) -> tuple[SettlementFileManifest, Path] | JSONResponse:
        """The day's file as it is now, or, when it takes longer to write
        than a request should wait, 503 with Retry-After while it is written."""
        parameters = file_parameters(state, day, file_format)
        recorded = recorded_records(state, day)
        key = file_key(parameters, recorded)
        task = writing.get(key)
        if task is None:
            # Off the event loop: real-time authorizations keep their deadline
            # while a large day is written.
            task = asyncio.create_task(
                asyncio.to_thread(materialize, directory, parameters, recorded, key)
            )
            writing[key] = task
            task.add_done_callback(lambda _: writing.pop(key, None))
        done, _ = await asyncio.wait({task}, timeout=PREPARING_WAIT_SECONDS_MAX)
        if not done:
            return JSONResponse(
                {"error": {"type": PREPARING_ERROR_TYPE, "message": "the file is being written"}},
                status_code=503,
                headers={"retry-after": str(PREPARING_RETRY_AFTER_SECONDS)},
            )
        return task.result()

    @api.get(
        "/v1/settlement-files/{settlement_date}",
        response_model=SettlementFileManifest,
        responses={503: {"description": "The file is being written: ask again after Retry-After"}},
    )
    async def get_settlement_file(
        settlement_date: date,
        file_format: FormatQuery = SettlementFileFormat.JSONL,
    ) -> SettlementFileManifest | JSONResponse:
        """The day's settlement file: its size, sha256 and ETag, and each gzip
        member's byte offset, length, record count and first record."""
        current = await current_file(settlement_date, file_format)
        return current if isinstance(current, JSONResponse) else current[0]

    @api.api_route(
        "/v1/settlement-files/{settlement_date}/content",
        methods=["GET", "HEAD"],
        response_class=FileResponse,
        responses={200: {"content": {SETTLEMENT_FILE_MEDIA_TYPE: {}}}, 206: {}, 416: {}},
    )
    async def get_settlement_file_content(
        settlement_date: date,
        file_format: FormatQuery = SettlementFileFormat.JSONL,
    ) -> Response:
        """The day's settlement file, streamed from disk: whole, or the byte
        range asked (Range: bytes=start-end; 206 with Content-Range; 416 when
        it starts past the end); with If-Range, the range only if the file
        still has that ETag, else the whole current file."""
        current = await current_file(settlement_date, file_format)
        if isinstance(current, JSONResponse):
            return current
        manifest, path = current
        return FileResponse(
            path,
            media_type=SETTLEMENT_FILE_MEDIA_TYPE,
            filename=f"settlement-{settlement_date.isoformat()}.{file_format.value}.gz",
            headers={"etag": manifest.etag},
        )

    @api.get(
        "/v1/simulate/settlement-files/{settlement_date}/platform-view",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    async def get_platform_view(settlement_date: date) -> StreamingResponse:
        """Every record of the day's file, in its order, one JSON line each:
        {"record", "view", "platform_amount_minor"}: what cardflow is meant to
        have seen of it (recorded, seen_exact, seen_other_amount with the
        amount it saw, never_seen, day_total), for a bench to seed its ledger."""
        parameters = file_parameters(state, settlement_date, SettlementFileFormat.JSONL)
        records = generated(parameters, recorded_records(state, settlement_date))
        return StreamingResponse(_view_lines(records), media_type="application/x-ndjson")

    return api


def _view_lines(records: Iterator[GeneratedRecord]) -> Iterator[bytes]:
    batch: list[bytes] = []
    for generated_record in records:
        line = {
            "record": generated_record.record.model_dump(mode="json"),
            "view": generated_record.view.value,
            "platform_amount_minor": generated_record.platform_amount_minor,
        }
        batch.append(json.dumps(line).encode() + b"\n")
        if len(batch) == PLATFORM_VIEW_BATCH_RECORDS:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)
