"""Schemathesis over the live OpenAPI schema, authenticated, with a fixed seed and a bounded
number of examples: no 5xx, and every answer conforms to the schema (status codes, headers,
content types, bodies).

Schemathesis's pytest plugin does not run under pytest 9 here, so each operation's Hypothesis
strategy is driven directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from devstack import Stack
from tests.integration.conftest import auth_headers
from tests.integration.harness import gateway_process

EXAMPLES_PER_OPERATION = 40
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Operation]


@schemathesis.check
def valid_requests_are_not_rejected(ctx: Any, response: Any, case: Case) -> None:
    """Schema-valid data is never refused as malformed (400, 415, 422).

    Stands in for schemathesis's own check, which also counts 412 as a rejection, though a
    failed If-Match on a well-formed request is the contract's answer, not a refusal.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    assert response.status_code not in (400, 415, 422), (
        f"schema-valid request rejected with {response.status_code}: {response.text[:300]}"
    )


@pytest.fixture(scope="module")
def base_url(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway_process(stack, tmp_path_factory.mktemp("fuzz")) as base:
        yield base


@schemathesis.check
def errors_are_problems(ctx: Any, response: Any, case: Case) -> None:
    """Every 4xx and 5xx answer (but HEAD's) carries an RFC 9457 problem body."""
    if response.status_code >= 400 and case.method != "HEAD":
        media_type = response.headers.get("content-type", [""])[0]
        assert media_type.startswith("application/problem+json"), (
            f"{response.status_code} answered as {media_type!r}: {response.text[:300]}"
        )
        assert response.json()["status"] == response.status_code


def _mutations(case: Case) -> tuple[Any, ...]:
    if case.meta is None:
        return ()
    return tuple(getattr(case.meta.phase.data, "mutations", ()))


def fuzz(operation: Operation, mode: GenerationMode, base_url: str, ran: dict[str, int]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def check(case: Case) -> None:
        key = (case.path_parameters or {}).get("key", "")
        # The schema says 512 characters; the limit is 512 bytes of UTF-8, which it cannot say.
        assume(len(str(key).encode()) <= 512)
        # Every call carries a valid key (auth failures have their own tests), so a case whose
        # only fault was a missing or broken Authorization header is no longer invalid.
        assume(not any(m.parameter == "Authorization" for m in _mutations(case)))
        ran[f"{mode.value} {operation.label}"] += 1
        case.call_and_validate(
            base_url=base_url,
            headers=auth_headers(),
            timeout=10,
            excluded_checks=[positive_data_acceptance],
            additional_checks=[valid_requests_are_not_rejected, errors_are_problems],
        )

    check()


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_the_api_keeps_its_contract(base_url: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: dict[str, str] = {}
    ran: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err raises here, as meant
        ran[f"{mode.value} {operation.label}"] = 0
        try:
            fuzz(operation, mode, base_url, ran)
        except Unsatisfiable:
            # No invalid input exists once a valid key is sent: /livez, /readyz and the admin
            # reads take no parameters.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collected per operation, reported together
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    print("schemathesis examples per operation:", ran)
    assert len(ran) >= 10, ran
    assert all(ran[f"{mode.value} {op} /v1/keys/{{key}}"] > 0 for op in ("GET", "PUT", "DELETE")), (
        ran
    )
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
