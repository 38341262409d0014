"""The settlement file client against the real issuer simulator: members
stream and decode on their own, a download cut by an injected fault resumes
from the byte it reached and yields the same records, a download killed
midway resumes from what is on disk, and errors are classified."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError

from activities.providers.settlement_files import (
    SettlementFileClient,
    file_sha256,
    member_records_in_file,
)
from schemas.settlement import SettlementFileFormat, SettlementFileRecord

DAY = date(2025, 3, 14)
VOLUME = 4_000
MEMBER_RECORDS = 1_000


@pytest_asyncio.fixture
async def files(sim: Any) -> AsyncIterator[SettlementFileClient]:
    sim.admin(
        "PUT",
        "/options/issuer",
        {
            "settlement_file_volume": VOLUME,
            "settlement_file_seed": 5,
            "settlement_file_member_records": MEMBER_RECORDS,
        },
    )
    timeout = httpx.Timeout(connect=1.0, read=10.0, write=1.0, pool=1.0)
    async with SettlementFileClient(sim.provider_url("issuer"), timeout=timeout) as client:
        yield client


def ranges_asked(client: SettlementFileClient) -> list[str]:
    """The Range header of every request the client sends from now on."""
    asked: list[str] = []

    async def note(request: httpx.Request) -> None:
        if "range" in request.headers:
            asked.append(request.headers["range"])

    client._http.event_hooks["request"].append(note)
    return asked


def whole_file_records(content: bytes) -> list[SettlementFileRecord]:
    return [
        SettlementFileRecord.model_validate_json(line)
        for line in gzip.decompress(content).splitlines()
    ]


async def test_every_member_streams_its_records_and_together_they_are_the_file(
    sim: Any, files: SettlementFileClient
) -> None:
    streamed: dict[SettlementFileFormat, list[SettlementFileRecord]] = {}
    for file_format in SettlementFileFormat:
        manifest = await files.manifest(DAY, file_format)
        streamed[file_format] = [
            record
            for member in manifest.members
            async for record in files.member_records(manifest, member)
        ]
        assert len(streamed[file_format]) == manifest.record_count == VOLUME + 8
    jsonl = streamed[SettlementFileFormat.JSONL]
    assert streamed[SettlementFileFormat.CSV] == jsonl
    assert len({record.record_id for record in jsonl}) == len(jsonl)
    manifest = await files.manifest(DAY)
    whole = [chunk async for chunk in files.byte_range(manifest, 0, manifest.byte_size)]
    assert jsonl == whole_file_records(b"".join(whole))

    csv_manifest = await files.manifest(DAY, SettlementFileFormat.CSV)
    member = csv_manifest.members[2]
    from_csv = [record async for record in files.member_records(csv_manifest, member)]
    assert from_csv == jsonl[MEMBER_RECORDS : 2 * MEMBER_RECORDS]
    skipped = [
        record async for record in files.member_records(csv_manifest, member, skip_records=990)
    ]
    assert skipped == from_csv[990:]


async def test_a_member_cut_midway_by_a_fault_resumes_from_its_offset_with_the_same_records(
    sim: Any, files: SettlementFileClient
) -> None:
    manifest = await files.manifest(DAY)
    member = manifest.members[1]
    clean = [record async for record in files.member_records(manifest, member)]
    asked = ranges_asked(files)
    cut_after = member.length // 2
    sim.fault(
        kind="drop",
        path_prefix=f"/issuer/v1/settlement-files/{DAY.isoformat()}/content",
        times=1,
        after_bytes=cut_after,
    )
    resumed = [record async for record in files.member_records(manifest, member)]
    assert resumed == clean
    # Asked again from the first byte it had not received, never from zero.
    assert asked == [
        f"bytes={member.offset}-{member.end - 1}",
        f"bytes={member.offset + cut_after}-{member.end - 1}",
    ]


async def test_a_download_killed_midway_resumes_from_the_bytes_on_disk(
    sim: Any, files: SettlementFileClient, tmp_path: Path
) -> None:
    manifest = await files.manifest(DAY)
    path = tmp_path / "settlement.jsonl.gz"
    held = manifest.byte_size // 3
    # What a worker killed a third of the way through left on disk.
    partial = b"".join([chunk async for chunk in files.byte_range(manifest, 0, held)])
    path.write_bytes(partial)
    asked = ranges_asked(files)
    progress: list[int] = []
    # And the connection is cut once more on the way.
    sim.fault(
        kind="drop",
        path_prefix=f"/issuer/v1/settlement-files/{DAY.isoformat()}/content",
        times=1,
        after_bytes=1_000,
    )
    await files.download(manifest, path, on_progress=progress.append)
    assert file_sha256(path) == manifest.sha256
    end = manifest.byte_size - 1
    assert asked == [f"bytes={held}-{end}", f"bytes={held + 1_000}-{end}"]
    assert progress[0] > held and progress[-1] == manifest.byte_size
    from_disk = [
        record
        for member in manifest.members
        for record in member_records_in_file(path, manifest, member)
    ]
    assert from_disk == whole_file_records(path.read_bytes())
    assert len(from_disk) == manifest.record_count


async def test_a_file_changed_since_its_manifest_is_a_conflict_never_a_mix(
    sim: Any, files: SettlementFileClient
) -> None:
    manifest = await files.manifest(DAY)
    sim.admin("PUT", "/options/issuer", {"settlement_file_seed": 6})
    await files.manifest(DAY)  # the new file is made
    with pytest.raises(ApplicationError) as refused:
        [record async for record in files.member_records(manifest, manifest.members[0])]
    assert refused.value.type == "ProviderConflict" and refused.value.non_retryable


async def test_faults_are_classified_and_a_range_cut_every_time_gives_up(
    sim: Any, files: SettlementFileClient
) -> None:
    sim.fault(kind="error", status=503, path_prefix="/issuer/v1/settlement-files", times=1)
    with pytest.raises(ApplicationError) as unavailable:
        await files.manifest(DAY)
    assert unavailable.value.type == "ProviderUnavailable" and not unavailable.value.non_retryable

    manifest = await files.manifest(DAY)
    sim.fault(
        kind="drop",
        path_prefix=f"/issuer/v1/settlement-files/{DAY.isoformat()}/content",
        after_bytes=0,
    )
    with pytest.raises(ApplicationError) as unreachable:
        [record async for record in files.member_records(manifest, manifest.members[0])]
    assert unreachable.value.type == "ProviderUnreachable"
    assert not unreachable.value.non_retryable


async def test_a_large_day_is_waited_for_while_the_issuer_writes_it(
    sim: Any, files: SettlementFileClient
) -> None:
    """A quarter of a million records take the issuer longer to write than
    it keeps a request waiting: it answers 503 with Retry-After meanwhile,
    and the client asks again until the manifest is there."""
    volume = 250_000
    sim.admin("PUT", "/options/issuer", {"settlement_file_volume": volume})
    first = await files._http.get(f"/v1/settlement-files/{DAY.isoformat()}")
    assert first.status_code == 503 and int(first.headers["retry-after"]) >= 1
    assert first.json()["error"]["type"] == "settlement_file_preparing"
    manifest = await files.manifest(DAY)
    assert manifest.record_count == volume + 8
    assert len(manifest.members) == volume // MEMBER_RECORDS + 1
