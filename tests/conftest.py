"""Shared test configuration: tests under tests/integration are marked ``integration``; every
run has a temporary directory of its own.

pytest numbers its runs' directories (``/tmp/pytest-of-<user>/pytest-N``) and deletes all but the
last three at each start: a second run on the same machine (a benchmark's, another checkout's)
could take the same number or delete a directory this run's stacks live in. Unless
``--basetemp`` is given, each run gets a fresh directory instead, removed at the end when every
test passed (kept, and named, when some failed).

httpx logs a line at INFO per request: the load generators of the fault tests send tens of
thousands, and formatting them (pytest captures every record once an in-process gateway has set
the root logger to INFO) took CPU from the gateway under test. Only its warnings are kept.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest

_OWN_BASETEMP = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        path = Path(tempfile.mkdtemp(prefix="cachegw-pytest-"))
        config.option.basetemp = str(path)
        config.stash[_OWN_BASETEMP] = path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.stash.get(_OWN_BASETEMP, None)
    if path is None:
        return
    if exitstatus == 0:
        shutil.rmtree(path, ignore_errors=True)
    else:
        session.config.get_terminal_writer().line(f"test files kept in {path}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
