"""Log lines: JSON for machines, the console renderer for people (``log_format``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from app import logs


@pytest.fixture(autouse=True)
def _json_again() -> Iterator[None]:
    yield
    logs.configure("INFO")


def test_json_by_default_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", log_format="auto")  # pytest's captured stderr is no terminal
    logging.getLogger("cachegw.test").warning("breaker %s", "opened")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "breaker opened"
    assert line["level"] == "warning"


def test_console_lines_are_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", log_format="console")
    logging.getLogger("cachegw.test").warning("breaker %s", "opened")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "breaker opened" in line
    assert "warning" in line
    assert not line.startswith("{")
