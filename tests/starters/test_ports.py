"""The ports a stack picks for its parts, and a part that does not come up."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from starters.devstack.processes import (
    ephemeral_ports,
    free_port,
    free_port_run,
    port_is_free,
)
from starters.devstack.stack import GATEWAY, Stack, StackError
from tests.starters.conftest import DevStack, stack_env

pytestmark = pytest.mark.fast

PICKS = 300


def test_a_picked_port_is_never_one_the_os_hands_out_on_its_own() -> None:
    """A port the OS picked and that was released can go to the next process
    that asks for any port (the Temporal dev server binds five that way as it
    starts) before the part it was picked for binds it: the pick must lie
    outside the OS's range."""
    ephemeral = ephemeral_ports()
    picked = [free_port() for _ in range(PICKS)]
    assert [port for port in picked if port in ephemeral] == []
    assert all(port_is_free("127.0.0.1", port) for port in picked)
    # Picks are spread, so two stacks started side by side rarely try the same port.
    assert len(set(picked)) > PICKS // 2


def test_a_picked_run_of_ports_lies_wholly_outside_the_os_range_and_is_free() -> None:
    ephemeral = ephemeral_ports()
    for _ in range(PICKS // 10):
        first = free_port_run(4)
        run = range(first, first + 4)
        assert [port for port in run if port in ephemeral] == []
        assert all(port_is_free("127.0.0.1", port) for port in run)


def test_a_port_the_os_hands_out_next_is_not_the_one_just_picked() -> None:
    """The way the gateway failed: its port was picked, then another process
    bound ports the OS chose, before the gateway started."""
    picked = {free_port() for _ in range(20)}
    held: list[socket.socket] = []
    try:
        for _ in range(200):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(probe)
            probe.bind(("127.0.0.1", 0))
            assert probe.getsockname()[1] not in picked
    finally:
        for probe in held:
            probe.close()


def test_a_part_that_does_not_come_up_is_reported_with_the_end_of_its_log(
    tmp_path: Path,
) -> None:
    """The error names the part and quotes why it stopped, so a failed start
    can be understood after its directory is gone (a CI run's, a bench's)."""
    stack = Stack(DevStack(tmp_path, stack_env(tmp_path)).settings())
    with pytest.raises(StackError) as raised:
        stack._up_http_part(GATEWAY, ["no-such-part"], free_port(), "/health")
    message = str(raised.value)
    assert message.startswith(f"{GATEWAY} did not become healthy; see {tmp_path}")
    assert "no-such-part" in message, message


def test_a_port_picked_is_not_picked_again_by_any_process_until_its_part_could_bind_it() -> None:
    """The way a demo stack once failed: its Temporal UI port was picked,
    and before `dev up` bound it a test in the worker beside it picked the
    same free port and bound it first. A pick is noted for every process on
    the machine until its part had time to bind it."""
    import subprocess
    import sys

    ours = [free_port() for _ in range(PICKS)]
    theirs = subprocess.run(
        [
            sys.executable,
            "-c",
            "from starters.devstack.processes import free_port\n"
            f"print(' '.join(str(free_port()) for _ in range({PICKS})))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert len(set(ours)) == PICKS
    assert set(ours).isdisjoint(int(port) for port in theirs)
