"""The issuer's daily settlement file, as the issuer writes it and cardflow
reads it: one record per line, and the manifest that describes the file.

A settlement file is what card networks and issuer processors send once a
day (Visa and Mastercard clearing files, Lithic's and Marqeta's settlement
reports): every clearing, force post, refund, reversal, chargeback and fee
of the day, each with the interchange the program earns on it and the
issuer's processing fee, then the day's totals of both per currency.

The file is gzipped JSON lines or CSV, written as a sequence of independent
gzip members of a fixed number of records each. Concatenated, the members
are one valid gzip file; apart, each member decompresses on its own, so a
reader can split the file by the manifest's byte offsets, fetch each part
with an HTTP range request and decode it without the rest. A CSV file's
first member holds only the header line; every other member holds rows in
the manifest's column order.

Money is integer minor units, as everywhere in cardflow.
"""

from __future__ import annotations

import csv
import json
import re
import zlib
from collections.abc import Iterator
from datetime import date
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    model_validator,
)

from schemas.money import AMOUNT_MINOR_MAX, Currency

# ----- the record -------------------------------------------------------------------

# Ids are identifiers: no separator, quote or line break a CSV or JSON line
# would have to escape.
RECORD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
RecordId = Annotated[str, Field(pattern=RECORD_ID_PATTERN)]
RecordAmountMinor = Annotated[StrictInt, Field(ge=0, le=AMOUNT_MINOR_MAX)]
# Interchange comes back on a refund: negative there.
SignedRecordAmountMinor = Annotated[StrictInt, Field(ge=-AMOUNT_MINOR_MAX, le=AMOUNT_MINOR_MAX)]


class SettlementFileRecordType(StrEnum):
    CLEARING = "clearing"
    FORCE_POST = "force_post"
    REFUND = "refund"
    REVERSAL = "reversal"
    CHARGEBACK = "chargeback"
    FEE = "fee"
    # The day's net interchange in one currency, after every transaction.
    INTERCHANGE = "interchange"


class SettlementDirection(StrEnum):
    """Which way the money moves for the program: debit, the program pays
    (a purchase, a fee); credit, the program receives (a refund, a
    chargeback, interchange); none, a hold released (a reversal)."""

    DEBIT = "debit"
    CREDIT = "credit"
    NONE = "none"


class SettlementFeeType(StrEnum):
    CURRENCY_CONVERSION = "currency_conversion"
    CARD_PRODUCTION = "card_production"
    # The day's per-transaction processing fees in one currency, summed.
    PROCESSING = "processing"


# The direction each kind of record moves money in; interchange goes either way.
RECORD_DIRECTIONS: dict[SettlementFileRecordType, frozenset[SettlementDirection]] = {
    SettlementFileRecordType.CLEARING: frozenset({SettlementDirection.DEBIT}),
    SettlementFileRecordType.FORCE_POST: frozenset({SettlementDirection.DEBIT}),
    SettlementFileRecordType.REFUND: frozenset({SettlementDirection.CREDIT}),
    SettlementFileRecordType.REVERSAL: frozenset({SettlementDirection.NONE}),
    SettlementFileRecordType.CHARGEBACK: frozenset({SettlementDirection.CREDIT}),
    SettlementFileRecordType.FEE: frozenset({SettlementDirection.DEBIT}),
    SettlementFileRecordType.INTERCHANGE: frozenset(
        {SettlementDirection.CREDIT, SettlementDirection.DEBIT}
    ),
}
# Records on which interchange and the processing fee are earned or charged.
INTERCHANGE_RECORD_TYPES = frozenset(
    {
        SettlementFileRecordType.CLEARING,
        SettlementFileRecordType.FORCE_POST,
        SettlementFileRecordType.REFUND,
    }
)


class SettlementFileRecord(BaseModel):
    """One line of the settlement file.

    `amount_minor` is what the record moves, in `currency`, the way
    `direction` says. On a clearing, force post or refund,
    `interchange_minor` is the interchange the program earns on it (given
    back on a refund: negative) and `fee_minor` the issuer's processing fee
    on it (None on a refund); both are settled once a day, as the day's
    `interchange` record and its `fee` record of fee_type `processing`.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    record_id: RecordId
    record_type: SettlementFileRecordType
    card_id: RecordId | None
    authorization_id: RecordId | None
    transaction_id: RecordId | None
    amount_minor: RecordAmountMinor
    currency: Currency
    direction: SettlementDirection
    interchange_minor: SignedRecordAmountMinor | None
    fee_minor: RecordAmountMinor | None
    fee_type: SettlementFeeType | None
    occurred_at: AwareDatetime
    settlement_date: date

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # A record that contradicts itself (a refund debiting the program, a
        # fee with no kind) would be posted the wrong way: refuse it here.
        if self.direction not in RECORD_DIRECTIONS[self.record_type]:
            raise ValueError(f"a {self.record_type} record cannot be a {self.direction}")
        if (self.card_id is None) != self.is_day_total:
            raise ValueError("a card's record names its card; a day's total names none")
        if (self.fee_type is None) == (self.record_type == SettlementFileRecordType.FEE):
            raise ValueError("a fee record, and only a fee record, names its fee_type")
        if self.record_type not in INTERCHANGE_RECORD_TYPES and (
            self.interchange_minor is not None or self.fee_minor is not None
        ):
            raise ValueError(f"a {self.record_type} record carries no interchange or fee")
        return self

    @property
    def is_day_total(self) -> bool:
        """The day's interchange or processing fees in one currency, not a card's record."""
        return self.record_type == SettlementFileRecordType.INTERCHANGE or (
            self.fee_type == SettlementFeeType.PROCESSING
        )


# The CSV file's columns, in order; a JSON line carries the same fields.
SETTLEMENT_FILE_COLUMNS: tuple[str, ...] = tuple(SettlementFileRecord.model_fields)
# Columns that are integers in a CSV row (empty: None).
_INTEGER_COLUMNS = frozenset({"amount_minor", "interchange_minor", "fee_minor"})
_INTEGER = re.compile(r"^-?[0-9]{1,16}$")


def record_json_line(record: SettlementFileRecord) -> bytes:
    """The record as one JSON line, newline included."""
    return record.model_dump_json().encode() + b"\n"


def record_csv_row(record: SettlementFileRecord) -> list[str]:
    """The record as a CSV row in SETTLEMENT_FILE_COLUMNS order (None: empty)."""
    values = record.model_dump(mode="json")
    return ["" if values[name] is None else str(values[name]) for name in SETTLEMENT_FILE_COLUMNS]


def record_from_csv_row(row: list[str], columns: tuple[str, ...]) -> SettlementFileRecord:
    """A CSV row read back, each value checked as strictly as a JSON line's:
    an amount is an integer written as one (never 10.5 or 1e3)."""
    if len(row) != len(columns):
        raise ValueError(f"a row of {len(row)} values for {len(columns)} columns")
    values: dict[str, Any] = {}
    for name, text in zip(columns, row, strict=True):
        if text == "":
            values[name] = None
        elif name in _INTEGER_COLUMNS:
            if not _INTEGER.match(text):
                raise ValueError(f"{name} is not an integer")
            values[name] = int(text)
        else:
            values[name] = text
    return SettlementFileRecord.model_validate_json(json.dumps(values))


# ----- the file --------------------------------------------------------------------


class SettlementFileFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


SETTLEMENT_FILE_MEDIA_TYPE = "application/gzip"
# A line longer than this is not a settlement record: the reader stops
# instead of buffering it (a corrupt member never grows a line without end).
RECORD_LINE_BYTES_MAX = 4096
# What one step of decompression may produce: a member is read in pieces of
# at most this size, however well it compresses.
DECOMPRESSED_PIECE_BYTES_MAX = 1024 * 1024


class SettlementFileMember(BaseModel):
    """One gzip member of the file: where it lies, what it holds."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    offset: int = Field(ge=0, description="Its first byte's position in the file")
    length: int = Field(ge=1, description="Its size in bytes")
    record_count: int = Field(ge=0, description="0: a CSV file's header member")
    first_record_id: str | None = None

    @property
    def end(self) -> int:
        """The position just past its last byte."""
        return self.offset + self.length


class SettlementFileManifest(BaseModel):
    """What a settlement file holds and how to read it in parts. The ETag
    changes with the content: a range asked with If-Range set to it is
    answered from this file or not at all."""

    settlement_date: date
    format: SettlementFileFormat
    compression: str = "gzip"
    media_type: str = SETTLEMENT_FILE_MEDIA_TYPE
    columns: list[str]
    record_count: int = Field(ge=0)
    records_per_member: int = Field(ge=1)
    byte_size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    etag: str
    content_path: str = Field(description="Where the file is served, relative to the API")
    members: list[SettlementFileMember]


# JSON lines checked by pydantic in one call: a few hundred kilobytes at most.
JSON_LINES_PER_CALL = 1_000
_RECORDS = TypeAdapter(list[SettlementFileRecord])


class MemberDecoder:
    """Decodes one gzip member of a settlement file as its bytes arrive, in
    any pieces, into records; memory stays bounded by one decompressed piece
    and one line. `finish` checks the member ended exactly where its bytes
    did. A malformed member raises ValueError."""

    def __init__(self, file_format: SettlementFileFormat, columns: tuple[str, ...]) -> None:
        self.format = file_format
        self.columns = columns
        self.records = 0
        self.header_seen = False
        self._inflater = zlib.decompressobj(wbits=31)  # one gzip member, header checked
        self._partial = b""

    def feed(self, compressed: bytes) -> Iterator[SettlementFileRecord]:
        """The records completed by these bytes of the member."""
        if self._inflater.eof and compressed:
            raise ValueError("bytes after the end of the gzip member")
        pending = compressed
        while pending:
            try:
                piece = self._inflater.decompress(pending, DECOMPRESSED_PIECE_BYTES_MAX)
            except zlib.error as error:
                raise ValueError(f"not a gzip member: {error}") from None
            pending = self._inflater.unconsumed_tail
            if self._inflater.eof and self._inflater.unused_data:
                raise ValueError("bytes after the end of the gzip member")
            yield from self._lines(piece)

    def finish(self) -> None:
        """Raises unless the member ended, on a whole line."""
        if not self._inflater.eof:
            raise ValueError("the gzip member is cut short")
        if self._partial:
            raise ValueError("the member's last line has no end")

    def _lines(self, piece: bytes) -> Iterator[SettlementFileRecord]:
        data = self._partial + piece
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > RECORD_LINE_BYTES_MAX:
            raise ValueError(f"a line longer than {RECORD_LINE_BYTES_MAX} bytes")
        if self.format == SettlementFileFormat.JSONL:
            yield from self._json_lines(lines)
            return
        for line in lines:
            record = self._record(line)
            if record is not None:
                self.records += 1
                yield record

    def _json_lines(self, lines: list[bytes]) -> Iterator[SettlementFileRecord]:
        # A piece's lines checked as one JSON array, in slices: one call into
        # pydantic per slice instead of per line (per-line calls were the
        # decode's main cost). A record is a flat object whose strings hold
        # no brace (ids, codes, dates), so a line that is one record holds
        # exactly one "{" and one "}": checked first, it keeps a line from
        # holding two records or half of one once the lines are joined.
        for start in range(0, len(lines), JSON_LINES_PER_CALL):
            part = lines[start : start + JSON_LINES_PER_CALL]
            for line in part:
                if line.count(b"{") != 1 or line.count(b"}") != 1:
                    raise ValueError("a line that is not one record")
            records = _RECORDS.validate_json(b"[" + b",".join(part) + b"]")
            if len(records) != len(part):
                raise ValueError("lines that are not one record each")
            for record in records:
                self.records += 1
                yield record

    def _record(self, line: bytes) -> SettlementFileRecord | None:
        row = next(csv.reader([line.decode()]))
        if tuple(row) == self.columns and not self.header_seen and self.records == 0:
            self.header_seen = True
            return None
        return record_from_csv_row(row, self.columns)
