"""A tiny RESP client: enough for CLUSTER/INFO/PING against the stack's own nodes."""

from __future__ import annotations

import socket
from typing import BinaryIO

from devstack.config import HOST

_REDIS_CALL_TIMEOUT_S = 1.0


class RedisReplyError(Exception):
    """Redis answered a command with an error reply."""


def _read_reply(stream: BinaryIO) -> object:
    line = stream.readline(1 << 20)
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode("utf-8", errors="replace")
    if kind == b"-":
        raise RedisReplyError(body.decode("utf-8", errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("connection closed in the middle of a reply")
        return data[:-2].decode("utf-8", errors="replace")
    if kind == b"*":
        size = int(body)
        if size < 0:
            return None
        return [_read_reply(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected reply from Redis: {line[:60]!r}")


def _redis_call(port: int, *args: str, timeout_s: float = _REDIS_CALL_TIMEOUT_S) -> object:
    """One command to the Redis node on 127.0.0.1:port. Raises OSError or RedisReplyError."""
    payload = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        payload.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(b"".join(payload))
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


def redis_text(port: int, *args: str, timeout_s: float = _REDIS_CALL_TIMEOUT_S) -> str:
    reply = _redis_call(port, *args, timeout_s=timeout_s)
    if not isinstance(reply, str):
        raise ConnectionError(f"unexpected reply to {' '.join(args)}: {reply!r}")
    return reply


def ping(port: int, timeout_s: float = _REDIS_CALL_TIMEOUT_S) -> bool:
    try:
        return _redis_call(port, "PING", timeout_s=timeout_s) == "PONG"
    except (OSError, RedisReplyError, ValueError):
        return False
