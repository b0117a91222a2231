"""``cachegw keys create|list|revoke|dev``: API keys, managed in the store."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import re
from pathlib import Path

from app.auth import SCOPES, hash_secret, make_key, split_token
from app.settings import Settings
from app.store import ApiKeyRow, Store

NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEV_KEY_FILE = Path(".devstack/dev-api-key")
TIMEOUT_S = 10.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The ``keys`` subcommand and its actions; the caller sets its handler."""
    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys.add_argument("--env-file", help="dotenv file to load (default .devstack/env if present)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", help="make a key and print it (the only time it is shown)"
    )
    create.add_argument("--namespace", required=True)
    create.add_argument("--scopes", default="read,write", help="comma-separated: read,write,admin")
    create.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests/s (for the whole fleet; per process with rate_scope=process)",
    )
    create.add_argument("--burst", type=int, default=None)
    create.add_argument("--description", default=None)
    actions.add_parser("list", help="prefix, namespace, scopes, rate, created, revoked")
    revoke = actions.add_parser("revoke", help="revoke a key by its prefix (or the whole key)")
    revoke.add_argument("key")
    actions.add_parser("dev", help="the development key of make run (made once, kept in .devstack)")
    return keys


async def _with_store(settings: Settings) -> Store:
    store = Store(settings.pg)
    await store.start()
    return store


def _deadline() -> float:
    return asyncio.get_running_loop().time() + TIMEOUT_S


async def create(settings: Settings, args: argparse.Namespace) -> int:
    scopes = sorted({s.strip() for s in args.scopes.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise SystemExit(f"cachegw: scopes must be among {', '.join(SCOPES)}; got {args.scopes!r}")
    if not NAMESPACE.match(args.namespace):
        raise SystemExit("cachegw: a namespace is 1 to 64 of A-Z a-z 0-9 _ . -")
    token = await _create(settings, args.namespace, scopes, args.rate, args.burst, args.description)
    print(token)
    return 0


async def _create(
    settings: Settings,
    namespace: str,
    scopes: list[str],
    rate: float | None,
    burst: int | None,
    description: str | None,
) -> str:
    store = await _with_store(settings)
    try:
        key = make_key()
        await store.create_api_key(
            prefix=key.prefix, secret_hash=key.secret_hash, namespace=namespace, scopes=scopes,
            rate_per_s=rate, burst=burst, description=description, deadline=_deadline(),
        )  # fmt: skip
        return key.token
    finally:
        await store.aclose()


async def list_keys(settings: Settings) -> int:
    store = await _with_store(settings)
    try:
        rows = await store.api_keys(deadline=_deadline())
    finally:
        await store.aclose()
    print(f"{'prefix':<10} {'namespace':<16} {'scopes':<18} {'rate/s':>8} {'created':<20} revoked")
    for row in rows:
        rate = "-" if row.rate_per_s is None else f"{row.rate_per_s:g}"
        revoked = "" if row.revoked_at is None else row.revoked_at.strftime("%Y-%m-%d %H:%M")
        created = row.created_at.strftime("%Y-%m-%d %H:%M")
        scopes = ",".join(row.scopes)
        print(
            f"{row.prefix:<10} {row.namespace:<16} {scopes:<18} {rate:>8} {created:<20} {revoked}"
        )
    return 0


async def revoke(settings: Settings, args: argparse.Namespace) -> int:
    parts = split_token(args.key)
    prefix = parts[0] if parts else args.key
    store = await _with_store(settings)
    try:
        revoked = await store.revoke_api_key(prefix, deadline=_deadline())
    finally:
        await store.aclose()
    if not revoked:
        raise SystemExit(f"cachegw: no live key with prefix {prefix!r}")
    print(
        f"revoked {prefix}; every gateway process refuses it within {settings.auth.refresh_s:g} s"
    )
    return 0


async def dev(settings: Settings, saved: str | None) -> int:
    """Print the development key, making it on first use (kept, mode 0600, in .devstack)."""
    if saved is not None:
        token = saved.strip()
        parts = split_token(token)
        store = await _with_store(settings)
        try:
            rows = await store.api_keys(deadline=_deadline())
        finally:
            await store.aclose()
        if parts and any(_matches(row, parts) for row in rows):
            print(token)
            return 0
    token = await _create(
        settings, "default", list(SCOPES), None, None, "development key (make run)"
    )
    await asyncio.to_thread(_save, token)
    print(token)
    return 0


def _save(token: str) -> None:
    DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(DEV_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")


def _matches(row: ApiKeyRow, parts: tuple[str, str]) -> bool:
    return (
        row.revoked_at is None
        and row.prefix == parts[0]
        and hmac.compare_digest(row.secret_hash, hash_secret(parts[1]))
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "create":
        return asyncio.run(create(settings, args))
    if args.action == "list":
        return asyncio.run(list_keys(settings))
    if args.action == "revoke":
        return asyncio.run(revoke(settings, args))
    saved = DEV_KEY_FILE.read_text() if DEV_KEY_FILE.is_file() else None
    return asyncio.run(dev(settings, saved))
