"""Translation of redis-py's exceptions into the gateway's, done once for the cluster package.

The research on redis-py 8.1.0 lists what leaks out of its I/O: ``RedisError`` subclasses,
``RedisClusterException`` and ``SlotNotCoveredError`` (not ``RedisError`` subclasses), builtin
``TimeoutError`` and ``OSError``, and even ``AttributeError`` when a connection is closed under an
in-flight command. Every one of them means "this node cannot answer this request now".
"""

from __future__ import annotations

from redis import exceptions as rex

from app.errors import TierError, TierTimeoutError, TierUnavailableError

# Every exception class redis-py defines, and what it becomes here. A test checks that this table
# names each class in ``redis.exceptions``, so a new one in a redis-py upgrade is not missed.
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (rex.TimeoutError, TimeoutError)
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    rex.RedisError,  # ConnectionError, BusyLoadingError, ClusterDownError, ResponseError, ...
    rex.RedisClusterException,  # SlotNotCoveredError, CrossSlotTransactionError, ...
    OSError,
    AttributeError,  # "'NoneType' object has no attribute 'writelines'"
    EOFError,
)
# Replies that the slot router acts on instead of failing the tier: MOVED, ASK, TRYAGAIN.
REDIRECT_REPLIES: tuple[type[rex.ResponseError], ...] = (rex.AskError, rex.TryAgainError)
# Classes that never reach the I/O path at all (client-side helpers of redis-py we do not use).
NOT_RAISED_HERE: frozenset[str] = frozenset(
    {
        "ChildDeadlockedError",
        "ExceptionType",
        "IncorrectPolicyType",
        "InvalidPipelineStack",
        "LockError",
        "LockNotOwnedError",
        "PubSubError",
        "WatchError",
    }
)


def translate(exc: BaseException, *, route: str) -> TierError:
    """The gateway's error for a failure talking to one node; ``raise translate(e) from e``."""
    if isinstance(exc, TierError):
        return exc
    if isinstance(exc, TIMEOUT_ERRORS):
        return TierTimeoutError(f"{route}: timed out ({type(exc).__name__})", route=route)
    detail = str(exc) or type(exc).__name__
    return TierUnavailableError(f"{route}: {type(exc).__name__}: {detail[:200]}", route=route)
