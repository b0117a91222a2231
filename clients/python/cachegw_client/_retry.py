"""When a call is tried again, and after how long: decisions only, no I/O and no sleeping.

A call is repeated only when repeating it is safe. How safe depends on what the call does
(``Safety``), and on what the failed attempt shows about whether anything happened:

- ``READ`` (GET, a batch of gets only) changes nothing, so every 429, 503 and network failure is
  retried.
- ``IDEMPOTENT`` (PUT, DELETE) leaves the same state when repeated. It is retried on 429, on 503
  and when the connection could not be made. It is not retried on 503 ``write-outcome-unknown``
  or when the answer was lost after the request went out: the first attempt may have committed,
  and a repeat would report it wrongly (a conditional put's 412, a delete's 404).
- ``ONCE`` (touch and invalidate, which are POSTs, and a batch that writes) is retried only when
  the gateway shows nothing ran: 429 and 503 ``auth-unavailable`` are answered by its
  authentication middleware before any handler runs, and a failed connect sent nothing.

The wait is ``Retry-After`` when the answer has one (the gateway sends it on every 429 and 503).
Without it the wait is exponential backoff with full jitter. Both are bounded by
``max_retries`` and by ``max_wait_s``, the total sleep for one call. A ``Retry-After`` longer than
what is left of ``max_wait_s`` is not waited for: the error is raised with its ``retry_after_s``.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

import httpx

from cachegw_client._errors import problem_of, problem_slug, retry_after_of

RETRIED_STATUSES = (429, 503)
# Failures before the request was sent: nothing reached the gateway.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures a read may meet on the way (not a misconfiguration, such as an unsupported scheme).
NETWORK = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class Safety(enum.Enum):
    """How far a call may be repeated (see the module's docstring)."""

    READ = "read"
    IDEMPOTENT = "idempotent"
    ONCE = "once"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``max_retries`` more attempts and ``max_wait_s`` of sleep in all, per call;
    without Retry-After, attempt n (from 0) waits a random time up to
    ``min(max_backoff_s, backoff_s * 2**n)``. ``RetryPolicy(max_retries=0)`` never retries."""

    max_retries: int = 2
    max_wait_s: float = 10.0
    backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_retries", "max_wait_s", "backoff_s", "max_backoff_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def attempts(self, safety: Safety) -> Attempts:
        return Attempts(self, safety)


class Attempts:
    """One call's retries so far. Each ``after_*`` answers the seconds to sleep before the next
    attempt, or ``None``: the outcome stands (returned or raised)."""

    def __init__(self, policy: RetryPolicy, safety: Safety) -> None:
        self.policy = policy
        self.safety = safety
        self.retries = 0
        self.waited_s = 0.0

    def after_response(self, response: httpx.Response) -> float | None:
        status = response.status_code
        if status not in RETRIED_STATUSES:
            return None
        slug = problem_slug(problem_of(response))
        if status == 503 and not self._may_repeat_503(slug):
            return None
        return self._next(retry_after_of(response))

    def after_failure(self, exc: httpx.TransportError) -> float | None:
        if isinstance(exc, NOT_SENT) or (self.safety is Safety.READ and isinstance(exc, NETWORK)):
            return self._next(None)
        return None

    def _may_repeat_503(self, slug: str) -> bool:
        if self.safety is Safety.READ:
            return True
        if self.safety is Safety.IDEMPOTENT:
            return slug != "write-outcome-unknown"
        return slug == "auth-unavailable"

    def _next(self, retry_after_s: float | None) -> float | None:
        policy = self.policy
        if self.retries >= policy.max_retries:
            return None
        if retry_after_s is None:
            ceiling = min(policy.max_backoff_s, policy.backoff_s * 2**self.retries)
            retry_after_s = random.uniform(0, ceiling)
        if self.waited_s + retry_after_s > policy.max_wait_s:
            return None
        self.retries += 1
        self.waited_s += retry_after_s
        return retry_after_s
