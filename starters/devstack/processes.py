"""Background processes: start, find again, health of ports, stop."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

STOP_GRACE_SECONDS = 15


class PortTakenError(Exception):
    """A port the stack needs is held by another process."""


@dataclass(frozen=True)
class ProcessRecord:
    """What `dev up` wrote down about a process it started."""

    name: str
    pid: int
    create_time: float
    address: str
    argv: list[str]

    def is_alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            # The create time guards against a recycled pid.
            return bool(
                abs(process.create_time() - self.create_time) < 1.0
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


class RunDirectory:
    """One JSON record per running part under CARDFLOW_HOME/run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _file(self, name: str) -> Path:
        return self.path / f"{name}.json"

    def read(self, name: str) -> ProcessRecord | None:
        try:
            data = json.loads(self._file(name).read_text())
            return ProcessRecord(**data)
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def write(self, record: ProcessRecord) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        temporary = self._file(record.name).with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(record)))
        temporary.replace(self._file(record.name))

    def remove(self, name: str) -> None:
        self._file(name).unlink(missing_ok=True)

    def alive(self, name: str) -> ProcessRecord | None:
        record = self.read(name)
        return record if record is not None and record.is_alive() else None


PICKED_PORTS_FLOOR = 20_000
"""Ports picked for a stack lie above this (the usual fixed ports of common
services lie below it)."""
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DYNAMIC_PORTS = range(49_152, 65_536)
"""The IANA dynamic range: what other systems hand out when Linux's range is unknown."""
PORT_PICK_ATTEMPTS_MAX = 200
PICKED_PORTS_DIR = Path(tempfile.gettempdir()) / "cardflow-picked-ports"
"""Where a picked port is noted, so no other process on the machine picks it
until its part had time to bind it (a free port is free until bound)."""
PICK_HELD_SECONDS = 600


def ephemeral_ports() -> range:
    """The ports the OS hands out on its own: to a socket bound to port 0, and
    to the local end of a connection."""
    try:
        low, high = (int(bound) for bound in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return DYNAMIC_PORTS
    return range(low, high + 1)


def _pickable_ports() -> list[int]:
    ephemeral = ephemeral_ports()
    return [port for port in range(PICKED_PORTS_FLOOR, 65_536) if port not in ephemeral]


def free_port() -> int:
    """A loopback port nothing listens on now, for a part about to be started.

    It is picked outside the ports the OS hands out on its own: a port the OS
    picked (bind to port 0) and that was released can go to the next process
    that asks for any port before the part binds it. The Temporal dev server
    binds five internal ports that way as it starts, and a gateway picked
    such a port before it did not come up."""
    return free_port_run(1)


def free_port_run(length: int) -> int:
    """The first of `length` consecutive free loopback ports, picked as
    `free_port` picks one (the dev stack's metrics ports follow
    CARDFLOW_METRICS_PORT_BASE)."""
    pickable = _pickable_ports()
    pickable_set = set(pickable)
    if pickable:
        for _ in range(PORT_PICK_ATTEMPTS_MAX):
            first = random.choice(pickable)
            run = range(first, first + length)
            if all(
                port in pickable_set and port_is_free("127.0.0.1", port) for port in run
            ) and _note_picked(run):
                return first
    for _ in range(PORT_PICK_ATTEMPTS_MAX):
        # Every port is the OS's to hand out: take what it picks.
        first = _port_the_os_picks()
        run = range(first, first + length)
        if run[-1] <= 65_535 and all(port_is_free("127.0.0.1", port) for port in run):
            return first
    raise RuntimeError(f"no {length} consecutive free ports found")


def _note_picked(run: range) -> bool:
    """Note every port of `run` as picked, unless another process (a test
    worker beside this one, a stack starting) picked one of them within
    PICK_HELD_SECONDS; only then is the run this caller's."""
    PICKED_PORTS_DIR.mkdir(parents=True, exist_ok=True)
    noted: list[Path] = []
    for port in run:
        path = PICKED_PORTS_DIR / str(port)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > PICK_HELD_SECONDS:
                path.unlink(missing_ok=True)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            for taken in noted:
                taken.unlink(missing_ok=True)
            return False
        noted.append(path)
    return True


def _port_the_os_picks() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str | None:
    """'pid 1234 (postgres)' for the process listening on the port, if visible."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for connection in connections:
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.pid is not None
        ):
            try:
                name = psutil.Process(connection.pid).name()
            except psutil.Error:
                name = "unknown"
            return f"pid {connection.pid} ({name})"
    return None


def ensure_port_free(part: str, variable: str, host: str, port: int) -> None:
    if port_is_free(host, port):
        return
    owner = port_owner(port)
    held_by = f"held by {owner}" if owner else "held by another process"
    raise PortTakenError(
        f"{part} needs port {port} on {host}, but it is {held_by}; "
        f"stop that process or choose another port with {variable}"
    )


def wait_for_port(host: str, port: int, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.2)
    return False


def spawn(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    address: str,
    cwd: Path | None = None,
) -> ProcessRecord:
    """Start a detached process (own session) with output appended to its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return ProcessRecord(
        name=name,
        pid=process.pid,
        create_time=psutil.Process(process.pid).create_time(),
        address=address,
        argv=argv,
    )


def terminate(pid: int, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM, then SIGKILL after the grace period; children included."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = [process, *process.children(recursive=True)]
    for member in family:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still_alive = psutil.wait_procs(family, timeout=grace_seconds)
    for member in still_alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(still_alive, timeout=5)


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env
