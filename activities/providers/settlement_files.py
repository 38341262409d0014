"""Client of the issuer's daily settlement file (schemas/settlement.py): its
manifest, any byte range of it, one gzip member decoded record by record,
and the whole file downloaded to disk, resumably.

A large file is read in parts and survives cuts: a byte range whose
connection drops mid-body is asked again from the first byte not yet
received (with If-Range, so only from the same file), as many times as it
keeps making progress; a download to disk starts from the bytes the file
on disk already holds, so a worker killed mid-download resumes instead of
starting from zero. Memory stays bounded: bytes are handed on as they
arrive and a member is decoded as it streams.

Errors are classified as every provider call's are (activities/providers/
http.py): a range that cannot be had after the retries is ProviderUnreachable
or ProviderTimeout (retryable); a file changed since its manifest is
ProviderConflict; bytes that do not decode as the manifest says, or a
member of the wrong length or record count, ProviderContractError.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import anyio
import httpx
from temporalio.exceptions import ApplicationError
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from activities.metrics import record_provider_call
from activities.providers.http import IN_CALL_ATTEMPTS_MAX, ProviderClient, _in_call_retryable
from schemas.providers import ISSUER
from schemas.settlement import (
    MemberDecoder,
    SettlementFileFormat,
    SettlementFileManifest,
    SettlementFileMember,
    SettlementFileRecord,
)

# A range cut this many times in a row without a byte received is given up
# (Temporal's retry policy takes over); a range that keeps progressing is
# asked again up to RANGE_RESUMES_MAX times in all.
RANGE_STALLS_MAX = 3
RANGE_RESUMES_MAX = 50
RESUME_WAIT_SECONDS_MAX = 2.0
# A file still being written is asked for again this often, this long at most.
PREPARING_POLL_SECONDS = 1.0
PREPARING_WAIT_SECONDS_MAX = 120.0
# The issuer's error type for a file it is still writing.
PREPARING_ERROR_TYPE = "settlement_file_preparing"
# Bytes read from disk at a time to check a downloaded file's sha256.
HASH_READ_BYTES = 1024 * 1024


class SettlementFileClient(ProviderClient):
    provider = ISSUER

    async def manifest(
        self,
        settlement_date: date,
        file_format: SettlementFileFormat = SettlementFileFormat.JSONL,
        *,
        preparing_wait_seconds_max: float = PREPARING_WAIT_SECONDS_MAX,
    ) -> SettlementFileManifest:
        """The day's file: size, sha256, ETag and each gzip member's place.
        While the issuer is still writing it (a large day takes a while),
        asked again for up to `preparing_wait_seconds_max` (an activity
        heartbeats around this call), then ProviderUnavailable."""
        deadline = time.monotonic() + preparing_wait_seconds_max
        while True:
            try:
                return await self.call(
                    "GET",
                    f"/v1/settlement-files/{settlement_date.isoformat()}",
                    SettlementFileManifest,
                    params={"format": file_format.value},
                )
            except ApplicationError as error:
                if not _preparing(error) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(PREPARING_POLL_SECONDS)

    async def byte_range(
        self, manifest: SettlementFileManifest, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """The file's bytes from `start` up to `end` (exclusive), as they
        arrive, exactly end - start of them, from the file the manifest
        describes; a connection cut mid-body is resumed from the next byte."""
        if not 0 <= start <= end <= manifest.byte_size:
            raise ValueError(f"bytes {start}-{end} are not within the file's {manifest.byte_size}")
        position, stalls, resumes = start, 0, 0
        while position < end:
            began = position
            try:
                async for chunk in self._range_once(manifest, position, end):
                    position += len(chunk)
                    if position > end:
                        raise self._contract_error(manifest, f"more than bytes {start}-{end - 1}")
                    yield chunk
            except httpx.TransportError as error:
                stalls = 0 if position > began else stalls + 1
                resumes += 1
                if stalls >= RANGE_STALLS_MAX or resumes > RANGE_RESUMES_MAX:
                    kind = (
                        "ProviderTimeout"
                        if isinstance(error, httpx.ReadTimeout)
                        else "ProviderUnreachable"
                    )
                    raise self._error(
                        kind, "GET", manifest.content_path, detail=repr(error)
                    ) from error
                await asyncio.sleep(min(RESUME_WAIT_SECONDS_MAX, 0.1 * 2**stalls))

    async def member_records(
        self,
        manifest: SettlementFileManifest,
        member: SettlementFileMember,
        *,
        skip_records: int = 0,
    ) -> AsyncIterator[SettlementFileRecord]:
        """One gzip member's records, in order, decoded as its bytes stream
        in, after the first `skip_records` (those a checkpoint already
        holds). Checks the member is exactly its manifest's length and
        record count."""
        decoder = MemberDecoder(manifest.format, tuple(manifest.columns))
        received = 0
        try:
            async for chunk in self.byte_range(manifest, member.offset, member.end):
                received += len(chunk)
                for record in decoder.feed(chunk):
                    if decoder.records > skip_records:
                        yield record
            decoder.finish()
        except ValueError as error:
            raise self._contract_error(manifest, f"member {member.index}: {error}") from None
        if received != member.length or decoder.records != member.record_count:
            raise self._contract_error(
                manifest,
                f"member {member.index}: {received} bytes and {decoder.records} records,"
                f" the manifest says {member.length} and {member.record_count}",
            )

    async def download(
        self,
        manifest: SettlementFileManifest,
        path: Path,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """The whole file at `path`, resuming from the bytes already there
        (a download cut or killed earlier), checked against the manifest's
        sha256. `on_progress` is told the bytes on disk after each piece
        (e.g. to heartbeat them). A file on disk that turns out not to be
        this one is removed and a ProviderContractError raised."""
        on_disk = anyio.Path(path)
        held = (await on_disk.stat()).st_size if await on_disk.exists() else 0
        if held > manifest.byte_size:
            await on_disk.unlink()
            held = 0
        async with await anyio.open_file(path, "ab") as file:
            async for chunk in self.byte_range(manifest, held, manifest.byte_size):
                await file.write(chunk)
                held += len(chunk)
                if on_progress is not None:
                    on_progress(held)
        if await asyncio.to_thread(file_sha256, path) != manifest.sha256:
            await on_disk.unlink()
            raise self._contract_error(manifest, "the downloaded file's sha256 differs")

    async def _range_once(
        self, manifest: SettlementFileManifest, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """One request for bytes start..end-1; yields what arrives until the
        body ends or the connection fails."""
        headers = {"Range": f"bytes={start}-{end - 1}", "If-Range": manifest.etag}
        request = self._http.build_request("GET", manifest.content_path, headers=headers)
        started = time.perf_counter()
        # Opening the response is retried as every call's is (a connection
        # refused, a short 429); what fails mid-body is byte_range's to resume.
        response: httpx.Response | None = None
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(IN_CALL_ATTEMPTS_MAX),
            retry=_in_call_retryable("GET", keyed=False),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            reraise=True,
        ):
            with attempt:
                response = await self._http.send(request, stream=True)
        assert response is not None
        outcome = "ok"
        try:
            await self._check_range(manifest, response, start, end)
            async for chunk in response.aiter_raw():
                yield chunk
        except ApplicationError as error:
            outcome = error.type or "error"
            raise
        except httpx.TransportError:
            outcome = "cut"  # resumed by byte_range
            raise
        finally:
            await response.aclose()
            elapsed = timedelta(seconds=time.perf_counter() - started)
            record_provider_call(self.provider, outcome, elapsed, self.meter)

    async def _check_range(
        self, manifest: SettlementFileManifest, response: httpx.Response, start: int, end: int
    ) -> None:
        path = manifest.content_path
        if response.status_code == 200:
            # If-Range did not match: the file is no longer the manifest's.
            raise self._error(
                "ProviderConflict",
                "GET",
                path,
                200,
                code="settlement file changed since its manifest",
            )
        if response.status_code != 206:
            # Classified as any call's answer is (416: ProviderRejectedRequest).
            await response.aread()
            raise self._error_of(response, path)
        expected = f"bytes {start}-{end - 1}/{manifest.byte_size}"
        if response.headers.get("content-range") != expected:
            raise self._contract_error(manifest, f"asked {expected}, got another range")

    def _error_of(self, response: httpx.Response, path: str) -> ApplicationError:
        try:
            self._parse("GET", path, response, object)
        except ApplicationError as error:
            return error
        return self._error("ProviderContractError", "GET", path, response.status_code)

    def _contract_error(self, manifest: SettlementFileManifest, detail: str) -> ApplicationError:
        return self._error("ProviderContractError", "GET", manifest.content_path, detail=detail)


def _preparing(error: ApplicationError) -> bool:
    details = error.details[0] if error.details else None
    return (
        error.type == "ProviderUnavailable"
        and isinstance(details, dict)
        and details.get("code") == PREPARING_ERROR_TYPE
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(HASH_READ_BYTES):
            digest.update(piece)
    return digest.hexdigest()


def member_records_in_file(
    path: Path, manifest: SettlementFileManifest, member: SettlementFileMember
) -> Iterator[SettlementFileRecord]:
    """One member's records from a downloaded file, read piece by piece;
    raises ValueError when the member is not what the manifest says."""
    decoder = MemberDecoder(manifest.format, tuple(manifest.columns))
    with path.open("rb") as file:
        file.seek(member.offset)
        remaining = member.length
        while remaining:
            piece = file.read(min(HASH_READ_BYTES, remaining))
            if not piece:
                raise ValueError(f"the file ends inside member {member.index}")
            remaining -= len(piece)
            yield from decoder.feed(piece)
    decoder.finish()
    if decoder.records != member.record_count:
        raise ValueError(
            f"member {member.index} holds {decoder.records} records,"
            f" the manifest says {member.record_count}"
        )
