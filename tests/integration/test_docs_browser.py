"""/docs in a real browser, offline: Debian's headless Chromium run by ``tests/browser/docs.mjs``.

The gateway runs in its own process against the real local stack; the script blocks every request
to a host other than this machine, lists the operations, runs "Try it out" on putKey and getKey,
checks /redoc, and saves ``tests/artifacts/docs.png``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from devstack import Stack
from tests.integration.harness import ROOT, gateway_process

BROWSER_DIR = ROOT / "tests" / "browser"
ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "docs.png"
CHROMIUM = Path("/usr/bin/chromium")
SCRIPT_TIMEOUT_S = 55  # the script gives up by itself after 45 s


def _require(ok: bool, what: str) -> None:
    """Missing tools fail as root (``make test`` installs them), and skip otherwise."""
    if ok:
        return
    if os.geteuid() == 0:
        pytest.fail(f"{what} is missing: run `make test`, which installs it", pytrace=False)
    pytest.skip(f"{what} is missing (as root, `make test` installs it)")


def _run(command: list[str], *, timeout_s: float, env: dict[str, str]) -> tuple[int, str]:
    """Run in its own process group, which is killed whole (browser included) on timeout."""
    proc = subprocess.Popen(
        command, cwd=BROWSER_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(command)} did not finish in {timeout_s} s:\n{output[-4000:]}")
    return proc.returncode, output


@pytest.mark.timeout(180)  # npm ci (first run only) + the stack + the browser run
def test_docs_page_works_offline_in_a_browser(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _require(CHROMIUM.exists(), f"Debian's chromium ({CHROMIUM})")
    node, npm = shutil.which("node"), shutil.which("npm")
    _require(node is not None and npm is not None, "Node.js (node and npm)")
    assert node
    assert npm
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1", "CHROMIUM": str(CHROMIUM)}
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        code, output = _run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout_s=90, env=env
        )
        assert code == 0, f"npm ci in tests/browser failed:\n{output[-4000:]}"

    stack: Stack = request.getfixturevalue("stack")  # only once the tools are there
    SCREENSHOT.unlink(missing_ok=True)
    (ARTIFACTS / "docs-failure.png").unlink(missing_ok=True)
    started = time.monotonic()
    # Auth off: this checks the page and "Try it out", not API keys.
    with gateway_process(stack, tmp_path, CACHEGW_AUTH__ENABLED="false") as base:
        code, output = _run(
            [node, "docs.mjs", base, str(SCREENSHOT)], timeout_s=SCRIPT_TIMEOUT_S, env=env
        )
    print(output)
    print(f"browser run: {time.monotonic() - started:.1f} s")
    assert code == 0, f"the docs page failed in the browser (exit {code}):\n{output[-4000:]}"
    assert SCREENSHOT.is_file(), f"no screenshot at {SCREENSHOT}"
    assert SCREENSHOT.stat().st_size > 10_000, "the screenshot is suspiciously small"
