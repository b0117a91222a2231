"""The README's examples, run as written against a real server.

README.md holds three examples between markers, each an HTML comment on a line of its own:

* ``<!-- example:curl -->`` ... ``<!-- /example:curl -->``: one ```` ```sh ```` block of curl
  commands using ``$BASE`` (the server) and ``$TOKEN`` (an API key), run with
  ``bash -euo pipefail``;
* ``<!-- example:node -->`` ... ``<!-- /example:node -->``: one ```` ```js ```` block (an ES
  module; it may ``import createClient from "openapi-fetch"``), run by node in ``tests/node``
  with ``BASE`` and ``TOKEN`` set;
* ``<!-- example:python -->`` ... ``<!-- /example:python -->``: one ```` ```python ```` block
  using the repository's client (``clients/python``), run by this venv's Python with ``BASE``
  and ``TOKEN`` set.

Each must exit 0 against ``cachegw serve`` on the test stack. ``README_PATH`` points the test at
another file (a draft of the README, for example).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import Stack
from tests.integration.conftest import ROOT, TEST_KEY
from tests.integration.harness import gateway_process
from tests.integration.test_node_client import NODE_DIR, ensure_node_modules, node

# What the curl walk-through shows (its 412, 304 and 404 steps are run with -i); any case.
CURL_SHOWS: tuple[str, ...] = ("HTTP/1.1 200", "Cache-Status:", "HTTP/1.1 412", "HTTP/1.1 304")
CURL_SHOWS += ("HTTP/1.1 404", "application/problem+json")
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def readme_path() -> Path:
    override = os.environ.get("README_PATH")
    if not override:
        return ROOT / "README.md"
    path = Path(override)
    return path if path.is_absolute() else ROOT / path


def example(name: str, languages: tuple[str, ...]) -> str:
    """The one fenced block (in one of ``languages``) between the ``example:<name>`` markers."""
    path = readme_path()
    text = path.read_text()
    start = re.search(rf"^<!--\s*example:{name}\s*-->[ \t]*$", text, re.MULTILINE)
    end = re.search(rf"^<!--\s*/example:{name}\s*-->[ \t]*$", text, re.MULTILINE)
    if start is None or end is None or end.start() < start.end():
        pytest.fail(
            f"{path}: no example {name!r}: expected a line `<!-- example:{name} -->`, a "
            f"```{languages[0]} block, then a line `<!-- /example:{name} -->` "
            '(see README.md\'s "Using it")'
        )
    blocks = FENCE.findall(text[start.end() : end.start()])
    code = [body for language, body in blocks if language in languages]
    if len(code) != 1 or len(blocks) != 1:
        found = [language or "(no language)" for language, _ in blocks]
        pytest.fail(
            f"{path}: example {name!r} must hold exactly one ```{languages[0]} block; found {found}"
        )
    block: str = code[0]
    return block


@pytest.fixture(scope="module")
def server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway_process(stack, tmp_path_factory.mktemp("readme")) as base:
        yield base


def _run(command: list[str], script: str, *, cwd: Path, base: str, what: str) -> str:
    proc = subprocess.run(
        command, input=script, cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "BASE": base, "TOKEN": TEST_KEY[0]},
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"the README's {what} example exited {proc.returncode}\n"
        f"--- script\n{script}\n--- stdout\n{proc.stdout[-5000:]}\n"
        f"--- stderr\n{proc.stderr[-5000:]}"
    )
    return proc.stdout


def test_curl_walk_through(server: str, tmp_path: Path) -> None:
    script = example("curl", ("sh", "bash", "shell", "console"))
    assert "$BASE" in script or "${BASE}" in script, "the curl example should use $BASE"
    out = _run(["bash", "-euo", "pipefail", "-s"], script, cwd=tmp_path, base=server, what="curl")
    missing = [shown for shown in CURL_SHOWS if shown.lower() not in out.lower()]
    assert not missing, (
        f"the curl walk-through ran, but its output lacks {missing} (it should show a read with "
        f"headers, a 412, a 304 and a 404 problem, each with -i)\n--- stdout\n{out[-5000:]}"
    )


def test_node_example(server: str) -> None:
    script = example("node", ("js", "javascript", "mjs"))
    ensure_node_modules()
    # An ES module from stdin: bare imports resolve from the working directory (tests/node).
    out = _run([node(), "--input-type=module", "-"], script, cwd=NODE_DIR, base=server, what="node")
    assert "cachegw;" in out, f"the Node example should print Cache-Status; it printed:\n{out}"


def test_python_example(server: str, tmp_path: Path) -> None:
    script = example("python", ("python", "py"))
    out = _run([sys.executable, "-"], script, cwd=tmp_path, base=server, what="python")
    assert "primary" in out or "store" in out, f"it should print the tier; it printed:\n{out}"
    assert "compare-and-set refused" in out, out
    assert "404" in out, out
