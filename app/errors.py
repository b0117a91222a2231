"""The gateway's exceptions, drawn once.

Library errors (redis-py, asyncpg, builtin ``TimeoutError`` from deadlines) are translated into
these at the edge, in ``app/cluster/``, ``app/tiers/`` and ``app/store.py``; nothing else catches
driver exceptions. ``app/api/problems.py`` is the one place that maps them to HTTP. Every class
takes its message alone; what else it carries is keyword-only, with a default.

    CachegwError
     ├─ TierError                  a cache tier could not answer this request; the router moves on
     │   ├─ TierUnavailableError   refused, reset, CLUSTERDOWN, LOADING, no slot owner, driver fault
     │   │   └─ NodeGoneError      the node left the slot map: its client was closed
     │   ├─ TierTimeoutError       no answer within the tier's share of the request deadline
     │   ├─ RedirectLoopError      MOVED/ASK/TRYAGAIN did not settle within the redirect budget
     │   ├─ NodeBusyError          this process has too many commands queued for one node (local)
     │   └─ BreakerOpenError       the route's circuit breaker is open: not even tried
     ├─ StoreError
     │   ├─ StoreUnavailableError  Postgres unreachable, timed out, or could not commit
     │   ├─ WriteOutcomeUnknownError a write was sent and no reply came: it may have committed
     │   └─ StoreConflictError     a precondition (If-Match / If-None-Match) did not hold
     ├─ KeyNotFoundError           the authoritative store says the key is absent (or expired)
     ├─ NoAnswerError              no tier could answer within policy (deadline spent)
     │   ├─ CoalescingOverflowError too many requests already wait for this key's load
     │   └─ OverloadedError        this process sheds load: a node's local queue is full
     ├─ NotCachedError             only-if-cached, and no cache tier holds the key within policy
     ├─ VersionUnavailableError    the store's entry is older than the Cachegw-Min-Version asked for
     ├─ AuthUnavailableError       the key table cannot be read from the store: no verdict
     ├─ AccessError                the caller may not do this; nothing was read or written
     │   ├─ UnauthenticatedError   no valid API key
     │   ├─ ForbiddenError         the key lacks the scope the operation needs
     │   └─ RateLimitedError       the key is over its request rate
     └─ RequestError               the request itself is invalid; nothing was read or written
         ├─ InvalidKeyError
         ├─ InvalidTtlError
         ├─ InvalidPreconditionError
         ├─ InvalidCacheControlError
         ├─ InvalidMinVersionError
         ├─ InvalidBatchError
         ├─ HeadersTooLargeError
         ├─ TargetTooLongError
         ├─ UnsupportedMediaTypeError
         └─ ValueTooLargeError
"""

from __future__ import annotations


class CachegwError(Exception):
    """Base of every error the gateway raises on purpose."""


class TierError(CachegwError):
    """A cache tier could not answer; the caller should try the next tier."""

    def __init__(self, message: str, *, route: str = "") -> None:
        super().__init__(message)
        self.route = route


class TierUnavailableError(TierError):
    """Raised when a node refuses, resets, reports CLUSTERDOWN/LOADING, or the driver faults."""


class NodeGoneError(TierUnavailableError):
    """Raised for commands to (or in flight on) a node client that was closed because the node
    left the slot map: the request fails over, and the node's breaker records nothing."""


class TierTimeoutError(TierError):
    """Raised when a tier does not answer within its share of the request deadline."""


class RedirectLoopError(TierError):
    """Raised when MOVED/ASK/TRYAGAIN redirections do not settle within the redirect budget."""


class NodeBusyError(TierError):
    """Raised when this process already queues too many commands for one node.

    Local saturation: it is not evidence that the node is unhealthy.
    """


class BreakerOpenError(TierError):
    """Raised instead of calling a route whose circuit breaker is open."""


class StoreError(CachegwError):
    """The authoritative store could not do what was asked."""


class StoreUnavailableError(StoreError):
    """Raised when Postgres is unreachable, times out, or cannot commit."""


class WriteOutcomeUnknownError(StoreError):
    """Raised when a write reached Postgres but its reply did not come in time (or the
    connection broke): it may have committed. Never reported as "nothing was changed"."""


class StoreConflictError(StoreError):
    """Raised when a write's precondition does not hold; carries the current version if any."""

    def __init__(self, message: str, *, current_version: int | None = None) -> None:
        super().__init__(message)
        self.current_version = current_version


class KeyNotFoundError(CachegwError):
    """Raised only when the authoritative store says the key is absent or expired."""


class NoAnswerError(CachegwError):
    """Raised when no tier can answer within policy before the deadline."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CoalescingOverflowError(NoAnswerError):
    """Raised when a key's load already has its maximum of waiters."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=1)


class OverloadedError(NoAnswerError):
    """Raised when this process sheds a request because a node's local queue is full."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=1)


class NotCachedError(CachegwError):
    """Raised for ``Cache-Control: only-if-cached`` when no cache tier can answer."""


class VersionUnavailableError(CachegwError):
    """Raised when even the store's entry is older than the version the read asked for."""

    def __init__(self, message: str, *, current_version: int | None = None) -> None:
        super().__init__(message)
        self.current_version = current_version


class AuthUnavailableError(CachegwError):
    """Raised when an API key cannot be checked because the key table cannot be loaded from
    the store (nor the key looked up): not the caller's fault, so 503, never 401."""


class AccessError(CachegwError):
    """The caller may not do this; nothing was read or written."""


class UnauthenticatedError(AccessError):
    """Raised when a request carries no valid API key."""


class ForbiddenError(AccessError):
    """Raised when the API key lacks the scope the operation needs."""


class RateLimitedError(AccessError):
    """Raised when the API key is over its request rate; carries the seconds to wait."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestError(CachegwError):
    """The request is invalid; nothing was read or written."""


class InvalidKeyError(RequestError):
    """Raised for an empty key, one over the byte limit, or one with control characters."""


class InvalidTtlError(RequestError):
    """Raised for a ttl outside the allowed range."""


class InvalidPreconditionError(RequestError):
    """Raised for an If-Match / If-None-Match header that is not a valid entity-tag list."""


class InvalidMinVersionError(RequestError):
    """Raised for a Cachegw-Min-Version that is not a version number."""


class InvalidBatchError(RequestError):
    """Raised for a batch body that is not JSON, not of the batch's shape, or over its limits."""


class InvalidCacheControlError(RequestError):
    """Raised for a Cache-Control request directive the gateway uses whose value is malformed."""


class HeadersTooLargeError(RequestError):
    """Raised when the request's headers together exceed the limit."""


class TargetTooLongError(RequestError):
    """Raised when the request's path and query string exceed the limit."""


class UnsupportedMediaTypeError(RequestError):
    """Raised for a Content-Type that is not a valid media type."""


class ValueTooLargeError(RequestError):
    """Raised when a value exceeds the size limit (checked before the body is read whole)."""

    def __init__(self, message: str, *, limit_bytes: int | None = None) -> None:
        super().__init__(message)
        self.limit_bytes = limit_bytes
