"""Certificates for a Temporal frontend that requires mTLS, for a self-hosted stack.

`cardflow secrets temporal-certs DIR` writes a private certificate authority
and, signed by it, the Temporal server's certificate and one client
certificate per kind of client (temporal-compose.yml mounts each file into the
container that needs it):

    ca.pem, ca.key            the authority (its key signs; never mounted)
    temporal.pem, .key        the server: frontend and internode, for the names
                              clients verify (SERVER_NAMES), client use too (the
                              server's own system worker and health check)
    cardflow.pem, .key        workers, the gateway, `schedules ensure`, starters
    temporal-ui.pem, .key     the Web UI server
    admin.pem, .key           the namespace setup job and operators' `temporal` CLI

The directory is made owner-only (0700). Keys the containers read are 0644:
a container's user is not the host user who made them, and a bind-mounted
file is reached inside the container without its host directory, so the
directory alone keeps other host users out. The authority's key is 0600.
Existing files are kept; `force` replaces them all (a new authority: every
client needs its new certificate).

For production, bring certificates from your own PKI with the same names.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The name the compose network gives the server and clients verify; localhost
# and loopback for operators' CLI through the published port.
SERVER_NAME = "temporal"
SERVER_NAMES = (SERVER_NAME, "localhost")
SERVER_ADDRESSES = ("127.0.0.1", "::1")
CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 825  # the longest leaf lifetime common TLS clients accept
CLIENTS = ("cardflow", "temporal-ui", "admin")
SERVER = "temporal"
CA = "ca"
DIRECTORY_MODE = 0o700
MOUNTED_KEY_MODE = 0o644
CA_KEY_MODE = 0o600
CERTIFICATE_MODE = 0o644


@dataclass(frozen=True)
class Issued:
    """Where one certificate and its key were written."""

    name: str
    certificate: Path
    key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cardflow"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its mode, never readable by others for a moment first.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(mode)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_certificate(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def paths(directory: Path, name: str) -> Issued:
    return Issued(name, directory / f"{name}.pem", directory / f"{name}.key")


Authority = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _existing_authority(directory: Path) -> Authority | None:
    issued = paths(directory, CA)
    if not (issued.certificate.exists() and issued.key.exists()):
        return None
    certificate = x509.load_pem_x509_certificate(issued.certificate.read_bytes())
    key = serialization.load_pem_private_key(issued.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{issued.key} is not the EC key this command writes")
    return certificate, key


def _new_authority(directory: Path, now: datetime.datetime) -> Authority:
    issued = paths(directory, CA)
    key = _key()
    subject = _name("cardflow temporal CA")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(authority=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(issued.key, _pem_key(key), CA_KEY_MODE)
    _write(issued.certificate, _pem_certificate(certificate), CERTIFICATE_MODE)
    return certificate, key


def _key_usage(*, authority: bool) -> x509.KeyUsage:
    """Signatures; an authority's key also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=authority,
        crl_sign=authority,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    directory: Path,
    name: str,
    authority: Authority,
    now: datetime.datetime,
    *,
    server: bool,
    replace: bool,
) -> Issued:
    issued = paths(directory, name)
    if not replace and issued.certificate.exists() and issued.key.exists():
        return issued
    ca_certificate, ca_key = authority
    key = _key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(SERVER_NAME if server else name))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(authority=False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        alternative_names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
        alternative_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_ADDRESSES]
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names), critical=False
        )
    certificate = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False).sign(
        ca_key, hashes.SHA256()
    )
    _write(issued.key, _pem_key(key), MOUNTED_KEY_MODE)
    _write(issued.certificate, _pem_certificate(certificate), CERTIFICATE_MODE)
    return issued


def generate(directory: Path, *, force: bool = False) -> list[Issued]:
    """Write the authority, the server's and each client's certificate (missing ones only).

    A new authority (none yet, or `force`) reissues every certificate: one
    signed by a former authority would no longer be trusted.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(DIRECTORY_MODE)
    now = datetime.datetime.now(datetime.UTC)
    authority = None if force else _existing_authority(directory)
    replace = authority is None
    if authority is None:
        authority = _new_authority(directory, now)
    issued = [_leaf(directory, SERVER, authority, now, server=True, replace=replace)]
    issued += [
        _leaf(directory, name, authority, now, server=False, replace=replace) for name in CLIENTS
    ]
    return issued
