"""The fault lab's Redis Cluster: a run that dies without cleaning up leaves nothing that a
``down`` from another process, knowing only the lab's directory, does not remove."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack.errors import StackError
from devstack.labcluster import LabCluster, checked_proxy_pid
from devstack.netlab import require

ROOT = Path(__file__).resolve().parents[2]
CRASHING_RUN = """
import os, sys
from pathlib import Path
from devstack.labcluster import LabCluster
lab = LabCluster(Path(sys.argv[1]), proxied=[0])
lab.up()
print(" ".join(str(lab.pid(node)) for node in lab.nodes), flush=True)
os._exit(3)  # no down(): as a crash
"""


def test_down_after_a_crash_stops_every_node_and_proxy_and_removes_the_lab(
    tmp_path: Path,
) -> None:
    try:
        require()
    except StackError as exc:
        pytest.fail(f"the fault lab cannot run here: {exc}")
    root = tmp_path / "lab"
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, str(root)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    try:
        assert proc.returncode == 3, proc.stderr[-2000:]
        pids = [int(pid) for pid in proc.stdout.split()]
        assert len(pids) == 6
        proxy = checked_proxy_pid(root / "node-0" / "fault.json")
        assert proxy is not None
        assert all(Path(f"/proc/{pid}").exists() for pid in [*pids, proxy])
        tag = LabCluster(root).lab.record["tag"]
    finally:
        LabCluster(root).down()  # a new process's view: only the directory is known
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not Path(f"/proc/{proxy}").exists()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"cgw{tag}" not in namespaces
    assert not (root / "netlab.json").exists()
