"""The certificates `cardflow secrets temporal-certs` writes open an mTLS frontend to
cardflow's client (configured by settings alone), and nothing else does.

The frontend here is a TLS endpoint on loopback that demands a client
certificate from the written authority, as Temporal's does with
TEMPORAL_TLS_REQUIRE_CLIENT_AUTH; it records whose handshake completed. It
speaks no gRPC, so the connect itself fails after the handshake: what the
test reads is the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starters.cli import app
from starters.devstack.processes import free_port
from workers import certificates
from workers.client import connect
from workers.converter import generate_key
from workers.settings import load_settings

CONNECT_SECONDS_MAX = 30.0


@contextlib.asynccontextmanager
async def mtls_frontend(certs: Path) -> AsyncIterator[tuple[int, list[str]]]:
    """(port, common names of the clients whose handshake completed)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs / "ca.pem")
    context.load_cert_chain(certs / "temporal.pem", certs / "temporal.key")
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    admitted: list[str] = []

    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        admitted.extend(value for ((key, value),) in peer["subject"] if key == "commonName")
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context)
    try:
        yield port, admitted
    finally:
        server.close()


async def try_connect(tmp_path: Path, port: int, **tls: str) -> None:
    settings = load_settings(
        CARDFLOW_HOME=str(tmp_path / "home"),
        CARDFLOW_ENCRYPTION_KEYS=f"k1:{generate_key()}",
        TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
        **tls,
    )
    # Not a gRPC server: the connect fails either way, after or at the handshake.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CONNECT_SECONDS_MAX):
            await connect(settings)


def client_tls(certs: Path, name: str) -> dict[str, str]:
    return {
        "TEMPORAL_TLS_CERT": str(certs / f"{name}.pem"),
        "TEMPORAL_TLS_KEY": str(certs / f"{name}.key"),
        "TEMPORAL_TLS_CA": str(certs / "ca.pem"),
        "TEMPORAL_TLS_SERVER_NAME": certificates.SERVER_NAME,
    }


def test_the_command_writes_the_authority_and_every_certificate_owner_only(
    tmp_path: Path,
) -> None:
    certs = tmp_path / "certs"
    result = CliRunner().invoke(app, ["secrets", "temporal-certs", str(certs)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert stat.S_IMODE((certs / "ca.key").stat().st_mode) == 0o600
    for name in (certificates.SERVER, *certificates.CLIENTS):
        assert (certs / f"{name}.pem").is_file() and (certs / f"{name}.key").is_file()
    first = (certs / "cardflow.pem").read_bytes()
    # Run again: existing ones are kept.
    assert CliRunner().invoke(app, ["secrets", "temporal-certs", str(certs)]).exit_code == 0
    assert (certs / "cardflow.pem").read_bytes() == first


@pytest.mark.parametrize("client", certificates.CLIENTS)
async def test_each_client_certificate_completes_the_mtls_handshake(
    tmp_path: Path, client: str
) -> None:
    certs = tmp_path / "certs"
    certificates.generate(certs)
    async with mtls_frontend(certs) as (port, admitted):
        await try_connect(tmp_path, port, **client_tls(certs, client))
    assert admitted == [client]


async def test_a_certificate_of_another_authority_or_none_is_turned_away(tmp_path: Path) -> None:
    certs, foreign = tmp_path / "certs", tmp_path / "foreign"
    certificates.generate(certs)
    certificates.generate(foreign)
    async with mtls_frontend(certs) as (port, admitted):
        # A client certificate from another authority.
        foreign_client = client_tls(foreign, "cardflow") | {
            "TEMPORAL_TLS_CA": str(certs / "ca.pem")
        }
        await try_connect(tmp_path, port, **foreign_client)
        # Plaintext.
        await try_connect(tmp_path, port)
    assert admitted == []


async def test_force_makes_a_new_authority_the_old_certificates_no_longer_open(
    tmp_path: Path,
) -> None:
    certs, old = tmp_path / "certs", tmp_path / "old"
    certificates.generate(old)
    certs.mkdir()
    for path in old.iterdir():
        (certs / path.name).write_bytes(path.read_bytes())
    certificates.generate(certs, force=True)
    assert (certs / "ca.pem").read_bytes() != (old / "ca.pem").read_bytes()
    async with mtls_frontend(certs) as (port, admitted):
        await try_connect(tmp_path, port, **client_tls(old, "cardflow"))
        await try_connect(tmp_path, port, **client_tls(certs, "cardflow"))
    assert admitted == ["cardflow"]
