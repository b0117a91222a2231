"""A graceful stop on SIGTERM: go unready, keep serving for a pause, then let uvicorn stop.

A load balancer sends requests to an instance until its health check fails or it learns that the
instance is gone; a socket closed at the moment SIGTERM arrives fails those requests. So on SIGTERM
``/readyz`` answers 503 at once while requests are still served for ``drain_pause_s``, long enough
for the balancer's checks to take the instance out. Only then does uvicorn see the signal: it stops
accepting, closes idle keep-alive connections, waits up to ``graceful_timeout_s`` for the requests
in flight, and runs the lifespan's shutdown (background tasks, then pools).

uvicorn installs its own handlers before it runs the lifespan (``Server.capture_signals``), so the
lifespan's start wraps the SIGTERM one. SIGINT (Ctrl-C) is left to uvicorn: a person at a terminal
wants the process gone now. A second SIGTERM during the pause stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any]


class Drain:
    """Whether this process is on its way out (read by ``/readyz``)."""

    def __init__(self) -> None:
        self.draining = False
        self._installed: tuple[Handler, Handler] | None = None  # (ours, the one it wraps)

    def install(self, pause_s: float) -> None:
        """Wrap the running server's SIGTERM handler (a no-op where there is none to wrap)."""
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return  # not under a server that handles SIGTERM: the default action stays
        loop = asyncio.get_running_loop()

        def on_term(sig: int, frame: FrameType | None) -> None:
            if self.draining:
                previous(sig, frame)  # asked twice: stop now
                return
            self.draining = True
            log.info("SIGTERM: unready now, serving for %.1f s more, then stopping", pause_s)
            loop.call_soon_threadsafe(loop.call_later, pause_s, self._stop, previous, sig)

        signal.signal(signal.SIGTERM, on_term)
        self._installed = (on_term, previous)

    @staticmethod
    def _stop(previous: Handler, sig: int) -> None:
        log.info("drain pause over: no new connections; finishing requests in flight")
        previous(sig, None)

    def uninstall(self) -> None:
        """Put the wrapped handler back, if ours is still the one installed."""
        if self._installed is None:
            return
        ours, previous = self._installed
        self._installed = None
        if signal.getsignal(signal.SIGTERM) is ours:
            signal.signal(signal.SIGTERM, previous)
