"""The fault lab's network: members in network namespaces of their own, joined by a bridge.

Each member (a Redis node, Postgres) gets a namespace ``cgw<tag>-<i>`` with one interface,
``eth0``, one end of a veth pair whose other end is on the lab's bridge ``cgw<tag>br``; the bridge
has the lab's first address (``.1``) in the root namespace, so a process here (the gateway, a
test) reaches every member through it, and the members reach each other across it. The /24 is
drawn from 10.213.0.0/16 among the ones no interface of this machine uses.

Faults are nftables rules inside a member's namespace (table ``inet cgwlab``), so they touch no
packet of any other namespace: ``cut`` drops what goes to or comes from some peers (one
direction or both: a partition, a one-way loss, a black hole for SYNs), ``lose`` drops a random
share (``numgen random``), ``heal`` flushes them.

Every name is recorded in ``<root>/netlab.json`` *before* it is created, so ``down`` (also from
another process, after a crash) removes exactly what this lab made, by name, and nothing else.
Needs root, ``ip`` (iproute2) and ``nft`` (nftables); ``require`` says what is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.errors import StackError

SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
TABLE = "cgwlab"
COMMAND_TIMEOUT_S = 10.0
SUBNET_ATTEMPTS = 64


@dataclass(frozen=True, slots=True)
class Member:
    namespace: str
    address: str  # on the lab's /24
    host_link: str  # the veth end on the bridge


def require() -> None:
    """``StackError`` naming what this machine lacks for the lab."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces and nftables need it)")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (Debian package {package})")
    if not Path("/proc/self/ns/net").exists():
        missing.append("network namespaces in this kernel")
    if missing:
        raise StackError("the fault lab needs " + ", ".join(missing))


def _run(argv: Sequence[str], *, check: bool = True, stdin: str | None = None) -> str:
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    if check and proc.returncode != 0:
        raise StackError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _used_subnets() -> set[ipaddress.IPv4Network]:
    used = set()
    for line in _run(["ip", "-4", "-o", "addr", "show"]).splitlines():
        fields = line.split()
        if "inet" in fields:
            used.add(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    return used


class NetLab:
    """One lab: made by ``up``, removed by ``down``; its record lives under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.record_path = root / "netlab.json"
        self.record: dict[str, object] = {}
        if self.record_path.exists():
            self.record = json.loads(self.record_path.read_text())
        self.members: list[Member] = []

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=1))
        tmp.replace(self.record_path)

    def _names(self, kind: str) -> list[str]:
        names = self.record.get(kind)
        return [str(n) for n in names] if isinstance(names, list) else []

    def _note(self, kind: str, name: str) -> None:
        names = self._names(kind)
        if name not in names:
            self.record[kind] = [*names, name]
        self._save()

    @property
    def gateway_address(self) -> str:
        """The bridge's address: where the members see this machine's processes come from."""
        return str(self.record["bridge_address"])

    def up(self, count: int) -> list[Member]:
        """A bridge and ``count`` members, each reachable from here and from the others."""
        require()
        if self.record.get("bridge"):
            raise StackError(f"a lab is already recorded in {self.record_path}: down() first")
        tag = f"{random.randrange(16**4):04x}"
        subnet = self._free_subnet()
        hosts = list(subnet.hosts())
        bridge = f"cgw{tag}br"
        self.record = {"tag": tag, "subnet": str(subnet), "bridge": "", "namespaces": [],
                       "links": [], "bridge_address": str(hosts[0])}  # fmt: skip
        self._note("links", bridge)
        self.record["bridge"] = bridge
        self._save()
        _run(["ip", "link", "add", bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{hosts[0]}/{subnet.prefixlen}", "dev", bridge])
        _run(["ip", "link", "set", bridge, "up"])
        for i in range(count):
            namespace, host_link, inner = f"cgw{tag}-{i}", f"cgw{tag}h{i}", f"cgw{tag}n{i}"
            address = str(hosts[10 + i])
            self._note("namespaces", namespace)
            _run(["ip", "netns", "add", namespace])
            self._note("links", host_link)
            _run(["ip", "link", "add", host_link, "type", "veth", "peer", "name", inner])
            _run(["ip", "link", "set", inner, "netns", namespace])
            _run(["ip", "link", "set", host_link, "master", bridge, "up"])
            inside = ["ip", "netns", "exec", namespace]
            _run([*inside, "ip", "link", "set", inner, "name", "eth0"])
            _run([*inside, "ip", "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0"])
            _run([*inside, "ip", "link", "set", "eth0", "up"])
            _run([*inside, "ip", "link", "set", "lo", "up"])
            _run([*inside, "ip", "route", "add", "default", "via", str(hosts[0])])
            _run([*inside, "nft", "-f", "-"], stdin=_base_table())
            self.members.append(Member(namespace, address, host_link))
        return list(self.members)

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = _used_subnets()
        candidates = list(SUPERNET.subnets(new_prefix=24))[1:-1]
        for _ in range(SUBNET_ATTEMPTS):
            subnet = random.choice(candidates)
            if not any(subnet.overlaps(other) for other in used):
                return subnet
        raise StackError(f"no free /24 in {SUPERNET} for the fault lab")

    def down(self) -> None:
        """Remove every namespace and link this lab recorded (whatever is left of them), then
        the record. A namespace takes its veth end, its rules and its processes' sockets with
        it; a process still running in one is not signalled here (its owner stops it)."""
        namespaces, links = self._names("namespaces"), self._names("links")
        existing_namespaces = set(_run(["ip", "netns", "list"], check=False).split())
        for namespace in namespaces:
            if namespace in existing_namespaces:
                _run(["ip", "netns", "del", namespace], check=False)
        for link in reversed(links):
            if _run(["ip", "link", "show", link], check=False):
                _run(["ip", "link", "del", link], check=False)
        self.record = {}
        self.members = []
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()

    def exec_argv(self, member: Member, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``member``'s namespace (``ip netns exec`` execs it: same PID)."""
        return ["ip", "netns", "exec", member.namespace, *argv]

    # -- faults ------------------------------------------------------------------------------

    def cut(self, member: Member, peers: Iterable[str], *, direction: str = "both") -> None:
        """Drop ``member``'s packets to (``out``), from (``in``) or both ways with ``peers``
        (addresses: other members, or ``gateway_address`` for this machine's processes)."""
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction must be in, out or both, not {direction!r}")
        rules = []
        for peer in peers:
            ipaddress.ip_address(peer)  # only addresses, never an expression
            if direction in ("in", "both"):
                rules.append(f"add rule inet {TABLE} input ip saddr {peer} drop")
            if direction in ("out", "both"):
                rules.append(f"add rule inet {TABLE} output ip daddr {peer} drop")
        self._nft(member, rules)

    def lose(
        self,
        member: Member,
        percent: int,
        *,
        direction: str = "both",
        peers: Iterable[str] = (),
    ) -> None:
        """Drop ``percent`` of ``member``'s packets at random (``numgen random``): all of them,
        or those to and from ``peers`` (addresses) only."""
        if not 0 < percent <= 100:
            raise ValueError(f"percent must be in 1..100, not {percent}")
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction must be in, out or both, not {direction!r}")
        share = "" if percent == 100 else f"numgen random mod 100 < {percent} "
        matches = {"in": [("input", "iifname", "saddr")], "out": [("output", "oifname", "daddr")]}
        matches["both"] = matches["in"] + matches["out"]
        addresses = [str(ipaddress.ip_address(peer)) for peer in peers]  # never an expression
        rules = []
        for chain, link, side in matches[direction]:
            for only in [f"ip {side} {peer} " for peer in addresses] or [""]:
                rules.append(f'add rule inet {TABLE} {chain} {link} "eth0" {only}{share}drop')
        self._nft(member, rules)

    def heal(self, member: Member) -> None:
        """Every fault rule of ``member`` removed."""
        self._nft(member, [f"flush chain inet {TABLE} input", f"flush chain inet {TABLE} output"])

    def _nft(self, member: Member, commands: list[str]) -> None:
        _run(self.exec_argv(member, ["nft", "-f", "-"]), stdin="\n".join(commands) + "\n")


def _base_table() -> str:
    return (
        f"add table inet {TABLE}\n"
        f"add chain inet {TABLE} input {{ type filter hook input priority 0; policy accept; }}\n"
        f"add chain inet {TABLE} output {{ type filter hook output priority 0; policy accept; }}\n"
    )
