"""A TypeScript client generated from the live schema, type-checked and run against the server.

``tests/node/`` pins openapi-typescript (types), openapi-fetch (client), typescript (tsc) and tsx
(runs the .ts) in its package-lock.json; ``npm ci`` installs them when node_modules is missing or
older than the lock. The test serves a real gateway (``cachegw serve``), generates
``schema.d.ts`` from its ``/openapi.json`` into a temporary directory, type-checks
``client.test.ts`` against it with ``tsc --noEmit`` (so a renamed operation, parameter, header or
body type fails to compile), then runs it: binary PUT/GET of all 256 byte values, a
compare-and-set that loses with 412, a conditional GET (304), a delete, and a 404 problem body.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from devstack import Stack
from tests.integration.conftest import ROOT, TEST_KEY
from tests.integration.harness import gateway_process

NODE_DIR = ROOT / "tests" / "node"
BIN = NODE_DIR / "node_modules" / ".bin"


def run(
    command: Sequence[str | Path],
    *,
    cwd: Path = NODE_DIR,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    what: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; fail with its output when it exits non-zero."""
    args = [str(part) for part in command]
    proc = subprocess.run(
        args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"{what or args[0]} exited {proc.returncode}: {' '.join(args)}\n"
        f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )
    return proc


def node() -> str:
    found = shutil.which("node")
    assert found, "node (20 or later) is not on PATH"
    return found


def ensure_node_modules() -> Path:
    """``tests/node/node_modules`` as the lock pins it: ``npm ci`` when missing or stale."""
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        npm = shutil.which("npm")
        assert npm, "npm is not on PATH"
        run([npm, "ci", "--no-audit", "--no-fund"], timeout=100, what="npm ci")
    return NODE_DIR / "node_modules"


def generate_types(openapi_url: str, out_dir: Path) -> Path:
    """``schema.d.ts`` from a schema URL (tests/node/generate.mjs, i.e. openapi-typescript)."""
    schema_ts = out_dir / "schema.d.ts"
    run([node(), "generate.mjs", openapi_url, schema_ts], what="openapi-typescript")
    assert "export interface paths" in schema_ts.read_text()
    return schema_ts


def typecheck(schema_ts: Path, out_dir: Path) -> None:
    """``tsc --noEmit`` of client.test.ts with ``cachegw-schema`` pointing at ``schema_ts``."""
    tsconfig = out_dir / "tsconfig.json"
    tsconfig.write_text(
        json.dumps(
            {
                "extends": str(NODE_DIR / "tsconfig.json"),
                "compilerOptions": {
                    "paths": {"cachegw-schema": [str(schema_ts)]},
                    "typeRoots": [str(NODE_DIR / "node_modules" / "@types")],
                },
                "files": [str(NODE_DIR / "client.test.ts")],
            },
            indent=2,
        )
    )
    run([BIN / "tsc", "--noEmit", "--pretty", "false", "-p", tsconfig], what="tsc")


def test_generated_client_typechecks_and_works_against_a_real_server(
    stack: Stack, tmp_path: Path
) -> None:
    ensure_node_modules()
    with gateway_process(stack, tmp_path) as base:
        schema_ts = generate_types(f"{base}/openapi.json", tmp_path)
        typecheck(schema_ts, tmp_path)
        result = run(
            [BIN / "tsx", "client.test.ts"],
            env={"BASE_URL": base, "TOKEN": TEST_KEY[0]},
            what="client.test.ts",
        )
    assert "client.test.ts: ok" in result.stdout, result.stdout
