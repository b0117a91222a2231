"""A typed client of the cachegw cache gateway, blocking (``Client``) and asyncio
(``AsyncClient``), on httpx.

Both share one implementation of what is sent and how answers are read (``_calls``, no I/O)
and of when a call is retried (``_retry``); each client only sends and sleeps.
"""

from cachegw_client._async import AsyncClient
from cachegw_client._batch import (
    BatchOp,
    DeleteOp,
    GetOp,
    InvalidateOp,
    OpResult,
    PutOp,
    TouchOp,
)
from cachegw_client._calls import VERSION as __version__
from cachegw_client._errors import (
    BadRequestError,
    CachegwError,
    ForbiddenError,
    MinVersionUnavailableError,
    NotCachedError,
    NotFoundError,
    PreconditionFailedError,
    RateLimitedError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    UnexpectedResponseError,
    WriteOutcomeUnknownError,
)
from cachegw_client._etags import ETag
from cachegw_client._models import CacheStatus, Entry, WriteResult
from cachegw_client._retry import RetryPolicy, Safety
from cachegw_client._sync import Client

__all__ = [
    "AsyncClient",
    "BadRequestError",
    "BatchOp",
    "CacheStatus",
    "CachegwError",
    "Client",
    "DeleteOp",
    "ETag",
    "Entry",
    "ForbiddenError",
    "GetOp",
    "InvalidateOp",
    "MinVersionUnavailableError",
    "NotCachedError",
    "NotFoundError",
    "OpResult",
    "PreconditionFailedError",
    "PutOp",
    "RateLimitedError",
    "RetryPolicy",
    "Safety",
    "TouchOp",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "UnexpectedResponseError",
    "WriteOutcomeUnknownError",
    "WriteResult",
    "__version__",
]
