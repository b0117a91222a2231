"""Translation of redis-py's exceptions into the gateway's, done once for the cluster package.

What leaks out of redis-py 8.1.0's I/O: ``RedisError`` subclasses, ``RedisClusterException`` and
``SlotNotCoveredError`` (not ``RedisError`` subclasses), builtin ``TimeoutError`` and ``OSError``,
and even ``AttributeError`` when a connection is closed under an in-flight command. Every one of
them means "this node cannot answer this request now".

``map_redis_errors`` maps exactly the classes listed below and re-raises anything else unchanged
(as httpx's ``map_httpcore_exceptions`` does): an exception it does not know is a bug of ours, to
be answered as one, not an outage of the node to be served around.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as rex

from app.errors import TierTimeoutError, TierUnavailableError

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


@contextlib.contextmanager
def map_redis_errors(route: str) -> Iterator[None]:
    """The listed exceptions raised inside as ``TierTimeoutError`` or ``TierUnavailableError``
    (``from`` the original); any other exception passes through as it is."""
    try:
        yield
    except TIMEOUT_ERRORS as exc:  # first: both kinds of timeout are also in UNAVAILABLE_ERRORS
        raise TierTimeoutError(f"{route}: timed out ({type(exc).__name__})", route=route) from exc
    except UNAVAILABLE_ERRORS as exc:
        raise _unavailable(exc, route) from exc


def reply_error(reply: rex.ResponseError, *, route: str) -> TierUnavailableError:
    """The error for an error reply the node sent (a value, not raised): ``raise ... from reply``.

    A reply is never a timeout: the node answered, just not with what was asked for.
    """
    return _unavailable(reply, route)


def _unavailable(exc: BaseException, route: str) -> TierUnavailableError:
    detail = str(exc) or type(exc).__name__
    return TierUnavailableError(f"{route}: {type(exc).__name__}: {detail[:200]}", route=route)
