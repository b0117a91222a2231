"""The fault lab's network on this machine: members reachable from here and from each other,
cuts and losses that touch only the packets they name, and nothing left behind by ``down``."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.errors import StackError
from devstack.netlab import Member, NetLab, require

ECHO_PORT = 7700
SERVER = f"""
import socket
s = socket.create_server((ADDRESS, {ECHO_PORT}))
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(64))
    c.close()
"""
CLIENT = f"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], {ECHO_PORT}), timeout=1.0) as c:
        c.sendall(b"ping")
        print(c.recv(64).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture(autouse=True)
def _lab_possible() -> None:
    """This project's machines and CI have root, namespaces and nftables: without them the
    tests fail, saying what is missing (a skip would hide that the faults went untested)."""
    try:
        require()
    except StackError as exc:
        pytest.fail(f"the fault lab cannot run here: {exc}")


@contextlib.contextmanager
def echo_server(lab: NetLab, member: Member) -> Iterator[None]:
    code = SERVER.replace("ADDRESS", repr(member.address))
    proc = subprocess.Popen(
        lab.exec_argv(member, [sys.executable, "-c", code]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def reach(address: str, lab: NetLab | None = None, member: Member | None = None) -> str:
    """``ping`` echoed, or the error's name, connecting from here or from ``member``."""
    argv = [sys.executable, "-c", CLIENT, address]
    if lab is not None and member is not None:
        argv = lab.exec_argv(member, argv)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NetLab]:
    lab = NetLab(tmp_path / "lab")
    try:
        yield lab
    finally:
        lab.down()


def ours(tag: str) -> tuple[list[str], list[str]]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return (
        [n for n in namespaces.split() if n.startswith(f"cgw{tag}")],
        [line for line in links.splitlines() if f"cgw{tag}" in line],
    )


def test_members_reach_each_other_and_a_cut_drops_only_what_it_names(lab: NetLab) -> None:
    a, b, c = lab.up(3)
    with echo_server(lab, a):
        assert reach(a.address) == "ping"  # from this machine, through the bridge
        assert reach(a.address, lab, b) == "ping"
        lab.cut(a, [b.address])  # a partition between a and b
        assert reach(a.address, lab, b) == "TimeoutError"
        assert reach(a.address, lab, c) == "ping"
        assert reach(a.address) == "ping"
        lab.heal(a)
        lab.cut(a, [lab.gateway_address], direction="out")  # one way: a's answers to here
        assert reach(a.address) == "TimeoutError"
        assert reach(a.address, lab, b) == "ping"
        lab.heal(a)
        lab.lose(a, 100)
        assert reach(a.address, lab, c) == "TimeoutError"
        lab.heal(a)
        assert reach(a.address, lab, c) == "ping"
        lab.lose(a, 100, peers=[lab.gateway_address])  # this machine's packets only
        assert reach(a.address) == "TimeoutError"
        assert reach(a.address, lab, c) == "ping"
        lab.heal(a)
        assert reach(a.address) == "ping"


def test_down_removes_everything_recorded_even_from_another_process(tmp_path: Path) -> None:
    first = NetLab(tmp_path / "lab")
    first.up(2)
    tag = str(first.record["tag"])
    assert ours(tag) != ([], [])
    NetLab(tmp_path / "lab").down()  # as after a crash: only the record is known
    assert ours(tag) == ([], [])
    assert not (tmp_path / "lab" / "netlab.json").exists()
