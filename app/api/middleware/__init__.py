"""The HTTP edge: pure ASGI middleware, one concern each, composed once in ``app/main.py``.

Outermost first: ``RequestIdMiddleware`` (every answer carries the request id),
``SizeLimitMiddleware`` (header and target limits, before anything is parsed),
``AuthenticationMiddleware`` (API key, scope, rate limit), then ``KeyOperations``
(``app/api/dispatch.py``), which answers ``/v1/keys/`` and hands everything else to FastAPI.
"""

from app.api.middleware.authentication import AuthenticationMiddleware
from app.api.middleware.limits import SizeLimitMiddleware
from app.api.middleware.request_id import RequestIdMiddleware
from app.api.middleware.sampling import HeadSampledTracing

__all__ = [
    "AuthenticationMiddleware",
    "HeadSampledTracing",
    "RequestIdMiddleware",
    "SizeLimitMiddleware",
]
