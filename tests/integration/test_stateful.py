"""A Hypothesis state machine drives the HTTP API against a dictionary model.

Rules: put, create-only put, compare-and-set (with the current or a stale ETag), get, delete and
invalidate, on a few keys per run. Each run uses fresh key names, so runs do not see each other.
Part-way through, the primary owning some of the keys is SIGKILLed (its replica is promoted); later
it is restarted and rejoins as a replica. Every answer must match the model: a read returns the
last acknowledged write (a ``fwd=stale`` answer may be an older one of the same key, as the
consistency contract allows), versions only go forward, and conditional writes succeed exactly
when the model says they should.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from devstack import Stack
from devstack.cluster_ops import primaries
from tests.integration.conftest import auth_headers
from tests.integration.harness import gateway_process

RUNS = 80
STEPS_PER_RUN = 40
KILL_AT_CALL = 400  # HTTP calls into the whole test
RESTART_AT_CALL = 1600


@dataclass
class Chaos:
    """Kills a primary at one call count and restarts it at a later one."""

    stack: Stack
    calls: int = 0
    victim: int | None = None
    events: list[str] = field(default_factory=list)

    restarted: bool = False

    def tick(self) -> None:
        self.calls += 1
        if self.calls == KILL_AT_CALL:
            self.victim = int(primaries(self.stack)[0]["port"])  # type: ignore[call-overload]
            self.stack.kill_node(self.victim)
            self.events.append(f"killed {self.victim} at call {self.calls}")
        elif self.victim is not None and not self.restarted and self.calls >= RESTART_AT_CALL:
            promoted = all(n["port"] != self.victim for n in primaries(self.stack))
            if promoted or self.calls >= RESTART_AT_CALL * 2:
                self.stack.start_node(self.victim)
                self.restarted = True
                self.events.append(
                    f"restarted {self.victim} at call {self.calls}"
                    + (" after its replica's promotion" if promoted else " before any promotion")
                )


@dataclass
class Run:
    client: httpx.Client
    chaos: Chaos
    runs: int = 0
    checked: dict[str, int] = field(default_factory=dict)


VALUES = st.binary(max_size=64)
KEY_INDEX = st.integers(min_value=0, max_value=3)


def make_machine(run: Run) -> type[RuleBasedStateMachine]:
    class Gateway(RuleBasedStateMachine):
        """The API against ``model``: key -> (value, version), plus every value a key has had."""

        def __init__(self) -> None:
            super().__init__()
            prefix = f"sm:{uuid.uuid4().hex[:8]}"
            self.keys = [f"{prefix}:{i}" for i in range(4)]
            self.model: dict[str, tuple[bytes, int]] = {}
            self.history: dict[str, set[bytes]] = {k: set() for k in self.keys}
            self.last_version = 0

        @initialize()
        def count(self) -> None:
            run.runs += 1

        def call(self, method: str, key: str, suffix: str = "", **kwargs: object) -> httpx.Response:
            run.chaos.tick()
            run.checked[method + suffix] = run.checked.get(method + suffix, 0) + 1
            url = f"/v1/keys/{quote(key, safe='')}{suffix}"
            return run.client.request(method, url, **kwargs)  # type: ignore[arg-type]

        def wrote(self, key: str, value: bytes, response: httpx.Response) -> None:
            version = int(response.headers["etag"].strip('"'))
            assert version > self.last_version, (version, self.last_version)
            self.last_version = version
            self.model[key] = (value, version)
            self.history[key].add(value)

        def put_with(self, key: str, value: bytes, headers: dict[str, str]) -> httpx.Response:
            headers = {"content-type": "application/octet-stream", **headers}
            return self.call("PUT", key, content=value, headers=headers)

        @rule(index=KEY_INDEX, value=VALUES)
        def put(self, index: int, value: bytes) -> None:
            key = self.keys[index]
            response = self.put_with(key, value, {})
            assert response.status_code == (200 if key in self.model else 201), response.text
            self.wrote(key, value, response)

        @rule(index=KEY_INDEX, value=VALUES)
        def create_only(self, index: int, value: bytes) -> None:
            key = self.keys[index]
            response = self.put_with(key, value, {"if-none-match": "*"})
            if key in self.model:
                assert response.status_code == 412, response.text
            else:
                assert response.status_code == 201, response.text
                self.wrote(key, value, response)

        @rule(index=KEY_INDEX, value=VALUES, current=st.booleans())
        def compare_and_set(self, index: int, value: bytes, current: bool) -> None:
            key = self.keys[index]
            known = self.model.get(key)
            version = known[1] if known is not None and current else self.last_version + 1000
            response = self.put_with(key, value, {"if-match": f'"{version}"'})
            if known is not None and current:
                assert response.status_code == 200, response.text
                self.wrote(key, value, response)
            else:
                assert response.status_code == 412, response.text

        @rule()
        def get(self) -> None:
            for key in self.keys:
                response = self.call("GET", key)
                known = self.model.get(key)
                if known is None:
                    assert response.status_code == 404, response.text
                    continue
                assert response.status_code == 200, response.text
                if "fwd=stale" in response.headers.get("cache-status", ""):
                    assert response.content in self.history[key]
                    continue
                answered = (response.content, response.headers["etag"])
                assert answered == (known[0], f'"{known[1]}"'), response.headers

        def batch(self, ops: list[dict[str, object]]) -> list[dict[str, Any]]:
            run.chaos.tick()
            run.checked["batch"] = run.checked.get("batch", 0) + 1
            response = run.client.post("/v1/batch", json={"ops": ops})
            assert response.status_code == 200, response.text
            results: list[dict[str, Any]] = response.json()["results"]
            assert len(results) == len(ops)
            return results

        @rule()
        def batch_get(self) -> None:
            """Every key in one batch: each answer as the single-key GET's."""
            results = self.batch([{"op": "get", "key": key} for key in self.keys])
            for key, result in zip(self.keys, results, strict=True):
                known = self.model.get(key)
                if known is None:
                    assert result["status"] == 404, result
                    continue
                assert result["status"] == 200, result
                value = base64.b64decode(result["value"])
                if "fwd=stale" in result["cache_status"]:
                    assert value in self.history[key]
                    continue
                assert (value, result["etag"]) == (known[0], f'"{known[1]}"'), result

        @rule(index=KEY_INDEX, value=VALUES, other=KEY_INDEX)
        def batch_put_then_get(self, index: int, value: bytes, other: int) -> None:
            """A put and a get of the same key in one batch (in order), and a delete of
            another: the get reads the put."""
            key, gone = self.keys[index], self.keys[other]
            ops: list[dict[str, object]] = [
                {"op": "put", "key": key, "value": base64.b64encode(value).decode()},
                {"op": "get", "key": key},
            ]
            if gone != key:
                ops.append({"op": "delete", "key": gone})
            results = self.batch(ops)
            assert results[0]["status"] == (200 if key in self.model else 201), results[0]
            version = int(results[0]["etag"].strip('"'))
            assert version > self.last_version, (version, self.last_version)
            self.last_version = version
            self.model[key] = (value, version)
            self.history[key].add(value)
            assert results[1]["status"] == 200, results[1]
            assert (base64.b64decode(results[1]["value"]), results[1]["etag"]) == (
                value, f'"{version}"'
            ), results[1]  # fmt: skip
            if gone != key:
                assert results[2]["status"] == (204 if gone in self.model else 404), results[2]
                self.model.pop(gone, None)

        @rule(index=KEY_INDEX)
        def delete(self, index: int) -> None:
            key = self.keys[index]
            response = self.call("DELETE", key)
            assert response.status_code == (204 if key in self.model else 404), response.text
            self.model.pop(key, None)

        @rule(index=KEY_INDEX)
        def invalidate(self, index: int) -> None:
            key = self.keys[index]
            response = self.call("POST", key, "/invalidate")
            assert response.status_code == (204 if key in self.model else 404), response.text

    return Gateway


@pytest.fixture
def client(healthy_stack: Stack, tmp_path: Path) -> Iterator[httpx.Client]:
    with (
        gateway_process(healthy_stack, tmp_path) as base,
        httpx.Client(base_url=base, headers=auth_headers(), timeout=10) as client,
    ):
        yield client


def test_the_api_matches_a_dictionary_through_a_primary_kill_and_restart(
    healthy_stack: Stack, client: httpx.Client
) -> None:
    run = Run(client, Chaos(healthy_stack))
    machine = make_machine(run)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=RUNS, stateful_step_count=STEPS_PER_RUN, derandomize=True,
            deadline=None, database=None, phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        ),
    )  # fmt: skip
    print(f"{run.runs} runs, calls {run.checked}, {run.chaos.events}")
    killed, restarted = run.chaos.events
    assert killed == f"killed {run.chaos.victim} at call {KILL_AT_CALL}"
    assert restarted.endswith("after its replica's promotion"), restarted
    assert run.chaos.calls > int(restarted.split()[4]) + 500, run.chaos.calls
