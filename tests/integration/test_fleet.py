"""Three gateway instances (separate processes, separate ports) over one stack, behind a real
HAProxy (``devstack/haproxy.py``: health checks of ``/readyz``, GET and HEAD sent again to another
instance when theirs failed). Every answer is checked as in the fault tests (``harness.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devstack import Stack
from devstack.cluster_ops import primaries
from devstack.haproxy import Balancer, balancer
from devstack.ports import find_free_port
from devstack.serving import Served, spawn_gateway
from tests.integration.harness import Workload, spread_keys

SIZE = 3
DRAIN_PAUSE_S = 2.5  # HAProxy marks a server down after 2 failed checks 0.5 s apart
ENV = {
    "CACHEGW_SERVER__DRAIN_PAUSE_S": str(DRAIN_PAUSE_S),
    "CACHEGW_OUTBOX__GRACE_S": "0.5",
}


@dataclass
class Instances:
    """The gateways, each on a port of its own that a restart keeps."""

    stack: Stack
    work_dir: Path
    ports: list[int]
    served: dict[int, Served] = field(default_factory=dict)
    _exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start(self, i: int) -> None:
        self.served[i] = self._exits.enter_context(
            spawn_gateway(self.stack, self.work_dir, port=self.ports[i], env=ENV, log_name=f"g{i}")
        )

    def signal(self, i: int, sig: int) -> None:
        self.served[i].proc.send_signal(sig)

    def wait_stopped(self, i: int, timeout_s: float = 20.0) -> int:
        return self.served[i].proc.wait(timeout=timeout_s)

    def close(self) -> None:
        self._exits.close()  # each one by PID, SIGKILL if it does not stop


@contextlib.contextmanager
def fleet_of_three(
    stack: Stack, work_dir: Path, *, retry: bool = True
) -> Iterator[tuple[Instances, Balancer]]:
    instances = Instances(stack, work_dir, [find_free_port() for _ in range(SIZE)])
    with contextlib.ExitStack() as exits:
        exits.callback(instances.close)
        for i in range(SIZE):
            instances.start(i)
        servers = [f"127.0.0.1:{port}" for port in instances.ports]
        yield instances, exits.enter_context(balancer(servers, work_dir, retry=retry))


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize("retry", [True, False], ids=["lb-retries", "no-lb-retries"])
async def test_sigterm_to_one_instance_under_load_fails_no_request(
    stack: Stack, logs: Path, retry: bool
) -> None:
    """The drain pause alone keeps every request whole: HAProxy's checks take the instance out
    before it stops accepting, with or without the balancer's retries of failed connections."""
    with fleet_of_three(stack, logs, retry=retry) as (fleet, lb):
        work = Workload(lb.url, spread_keys("fleet-term", 200))
        await work.seed()
        down_after: list[float] = []

        async def terminate() -> None:
            fleet.signal(1, signal.SIGTERM)
            down_after.append(await asyncio.to_thread(lb.wait_for, "g1", "DOWN"))

        await work.run(8.0, readers=20, events=[(2.0, terminate)])
        exit_code = await asyncio.to_thread(fleet.wait_stopped, 1)
        await work.verify_final()
    assert work.problems == [], work.problems[:10]
    assert work.write_failures == [], work.write_failures[:5]
    assert len(down_after) == 1
    assert down_after[0] < DRAIN_PAUSE_S, down_after  # out before it stops accepting
    assert exit_code in (0, -signal.SIGTERM)
    assert len(work.observations) > 500


async def test_sigkill_of_one_instance_fails_no_read_and_writes_only_until_marked_down(
    stack: Stack, logs: Path
) -> None:
    with fleet_of_three(stack, logs) as (fleet, lb):
        work = Workload(lb.url, spread_keys("fleet-kill", 200))
        await work.seed()
        killed: list[float] = []

        async def kill() -> None:
            fleet.signal(0, signal.SIGKILL)
            killed.append(time.monotonic() - work.started)
            killed.append(killed[0] + await asyncio.to_thread(lb.wait_for, "g0", "DOWN"))

        await work.run(8.0, readers=20, events=[(2.0, kill)])
        await work.verify_final()  # no acknowledged write lost
    # Reads that met the dead instance were sent again to another one; only a reply that was
    # already on its way when the process died (HAProxy cannot send a read again once it has
    # passed on part of the answer) may be cut, and none once HAProxy has marked it down.
    assert all(o.status == 200 for o in work.observations)
    assert len(work.problems) == len(work.read_failed_at), work.problems[:10]  # no wrong answer
    assert [at for at in work.read_failed_at if at > killed[1]] == [], (killed, work.problems)
    assert len(work.read_failed_at) <= 20, work.problems[:10]
    # A write in flight to it has an unknown outcome (its caller decides whether to send it
    # again); once HAProxy has marked the instance down, no write fails.
    late = [at for at in work.write_failed_at if at > killed[1]]
    assert late == [], (killed, work.write_failures[:5])


async def test_rolling_restart_of_all_three_fails_no_request(stack: Stack, logs: Path) -> None:
    with fleet_of_three(stack, logs) as (fleet, lb):
        work = Workload(lb.url, spread_keys("fleet-roll", 200))
        await work.seed()
        restarted: list[int] = []

        async def roll() -> None:
            for i in range(SIZE):
                fleet.signal(i, signal.SIGTERM)
                await asyncio.to_thread(fleet.wait_stopped, i)
                await asyncio.to_thread(fleet.start, i)
                await asyncio.to_thread(lb.wait_for, f"g{i}", "UP")
                restarted.append(i)

        await work.run(30.0, readers=20, events=[(1.0, roll)])
        await work.verify_final()
    assert restarted == [0, 1, 2]  # the whole roll happened while the load ran
    assert work.problems == [], work.problems[:10]
    assert work.write_failures == [], work.write_failures[:5]


async def test_a_primary_killed_behind_the_balancer(healthy_stack: Stack, logs: Path) -> None:
    stack = healthy_stack
    with fleet_of_three(stack, logs) as (_, lb):
        work = Workload(lb.url, spread_keys("fleet-primary", 200))
        await work.seed()
        port = int(primaries(stack)[0]["port"])  # type: ignore[call-overload]

        async def kill() -> None:
            await asyncio.to_thread(stack.kill_node, port)

        await work.run(12.0, readers=20, events=[(2.0, kill)])
        await work.verify_final(timeout_s=20.0)  # every acknowledged write, on every instance
    assert work.problems == [], work.problems[:10]
    assert work.write_failures == [], work.write_failures[:5]
    assert all(o.status == 200 for o in work.observations)


async def test_postgres_restarted_behind_the_balancer(healthy_stack: Stack, logs: Path) -> None:
    """Hits are served while Postgres is down (every instance stays ready: Redis answers), writes
    get 503 and change nothing; after the restart writes succeed again, with no restart of
    any instance."""
    stack = healthy_stack
    with fleet_of_three(stack, logs) as (_, lb):
        work = Workload(lb.url, spread_keys("fleet-pg", 200))
        await work.seed()
        states: list[dict[str, str]] = []

        async def restart() -> None:
            await asyncio.to_thread(stack.stop_postgres)
            await asyncio.sleep(2.0)
            states.append(await asyncio.to_thread(lb.states))
            await asyncio.to_thread(stack.start_postgres)

        await work.run(6.0, readers=20, writers=0, events=[(1.0, restart)])
        assert work.problems == [], work.problems[:10]
        assert states == [{f"g{i}": "UP" for i in range(SIZE)}], states
        after = Workload(lb.url, work.keys, written=work.written, acked=work.acked)
        await after.run(4.0, readers=10)  # writes go through again, through every instance
        await after.verify_final()
    assert after.problems == [], after.problems[:10]
    assert after.write_failures == [], after.write_failures[:5]
