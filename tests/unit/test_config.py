"""Configuration that explains itself (``app/config.py``): one line per bad value naming the
variable, typos warned about, secrets never shown, and a reference generated from the model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import config
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("CACHEGW_")}


def cachegw(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**_clean_env(), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_setting_says_what_it_does() -> None:
    undocumented = [o.variable for o in config.options() if not o.field.description]
    assert undocumented == []


def test_the_reference_is_the_one_generated_from_the_model() -> None:
    """docs/configuration.md must be regenerated (``cachegw config reference``) with the model."""
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == config.reference(), (
        "docs/configuration.md is out of date: .venv/bin/cachegw config reference "
        "> docs/configuration.md"
    )
    for option in config.options():
        assert f"`{option.variable}`" in committed


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "CACHEGW_REDIS__CONNECT_TIMEOUT_S",
            "abc",
            "CACHEGW_REDIS__CONNECT_TIMEOUT_S=abc: Input should be a valid number",
        ),
        (
            "CACHEGW_READ_DEADLINE_MS",
            "0",
            "CACHEGW_READ_DEADLINE_MS=0: Input should be greater than or equal to 1",
        ),
        (
            "CACHEGW_FEED__MODE",
            "fast",
            "CACHEGW_FEED__MODE=fast: Input should be 'relay' or 'notify'",
        ),
        ("CACHEGW_REDIS__NODES", "no-port", "CACHEGW_REDIS__NODES=no-port: expected host:port"),
        ("CACHEGW_PG__POOL_MIN_SIZE", "50", "CACHEGW_PG__*: pool_min_size must not exceed"),
    ],
)
def test_a_bad_value_is_one_line_naming_variable_value_and_rule(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, line: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(config.ConfigError) as caught:
        config.load()
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(line), caught.value.problems


def test_a_bad_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEGW_PG__DSN", f"postgresql://u:{SECRET}@db:5432/x")
    monkeypatch.setenv("CACHEGW_PG__POOL_MIN_SIZE", "x")
    monkeypatch.setenv("CACHEGW_REDIS__PASSWORD", SECRET)
    settings_error = None
    try:
        config.load()
    except config.ConfigError as exc:
        settings_error = str(exc)
    assert settings_error is not None
    assert SECRET not in settings_error
    monkeypatch.delenv("CACHEGW_PG__POOL_MIN_SIZE")
    settings = config.load()
    assert SECRET not in repr(config.targets(settings))
    shown = dict((variable, value) for variable, value, _ in config.show(settings))
    assert shown["CACHEGW_PG__DSN"] == "postgresql://u:***@db:5432/x"
    assert shown["CACHEGW_REDIS__PASSWORD"] == "***"


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://u:pw@h:5/db", "postgresql://u:***@h:5/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u:p@ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        ("host=h user=u password=pw dbname=x", "host=h user=u password=*** dbname=x"),
    ],
)
def test_dsn_masking(dsn: str, masked: str) -> None:
    assert config.mask_dsn(dsn) == masked


def test_a_typo_is_warned_about_with_the_nearest_setting() -> None:
    environ = {
        "CACHEGW_REDIS_NODES": "x",  # one underscore short
        "CACHEGW_BREAKER__WAIT": "1",
        "CACHEGW_REDIS__NODES": "h:1",
        "CACHEGW_REDIS": "{}",  # a whole section as JSON
        "cachegw_log_level": "INFO",  # names are not case-sensitive
        "CACHEGW_DEVSTACK_PG_PORT": "1",  # the dev stack's, not the gateway's
        "CACHEGW_API_KEY": "k",
        "CACHEGW_ZZZ": "1",
        "OTHER": "1",
    }
    warnings = config.unknown_variables(environ)
    assert warnings == [
        "CACHEGW_BREAKER__WAIT is not a setting of cachegw and is ignored; did you mean "
        "CACHEGW_BREAKER__WAIT_S?",
        "CACHEGW_REDIS_NODES is not a setting of cachegw and is ignored; did you mean "
        "CACHEGW_REDIS__NODES?",
        "CACHEGW_ZZZ is not a setting of cachegw and is ignored",
    ]


def test_show_says_where_each_value_came_from() -> None:
    environ = {"CACHEGW_READ_DEADLINE_MS": "100", "CACHEGW_DEGRADED": '{"retries": 1}'}
    settings = Settings(read_deadline_ms=100, degraded={"retries": 1})
    rows = {variable: (value, source) for variable, value, source in config.show(settings, environ)}
    assert rows["CACHEGW_READ_DEADLINE_MS"] == ("100", "environment")
    assert rows["CACHEGW_DEGRADED__RETRIES"] == ("1", "environment (CACHEGW_DEGRADED)")
    assert rows["CACHEGW_WRITE_DEADLINE_MS"] == ("2000", "default")
    assert len(rows) == len(config.options())


def test_serve_with_a_bad_value_exits_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    done = cachegw(
        "serve",
        env={"CACHEGW_REDIS__SOCKET_TIMEOUT_S": "-1", "CACHEGW_REDIS_NODE": "x"},
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "cachegw: warning: CACHEGW_REDIS_NODE is not a setting of cachegw and is ignored; "
        "did you mean CACHEGW_REDIS__NODES?",
        "cachegw: CACHEGW_REDIS__SOCKET_TIMEOUT_S=-1: Input should be greater than 0",
    ]


def test_config_check_and_show(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(
        "# a dotenv file as people write them\n"
        f"export CACHEGW_PG__DSN='postgresql://app:{SECRET}@db.internal:5432/cache'\n"
        'CACHEGW_REDIS__NODES="10.1.0.1:6379,10.1.0.2:6379"  # two of the six\n'
        "CACHEGW_LOG_LEVEL=WARNING\n"
    )
    done = cachegw("config", "check", "--env-file", str(env_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "redis_nodes: 10.1.0.1:6379,10.1.0.2:6379" in done.stdout
    assert "postgres: postgresql://app:***@db.internal:5432/cache" in done.stdout
    assert "cachegw: configuration OK" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    shown = cachegw("config", "show", "--env-file", str(env_file), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert any(
        line.split() == ["CACHEGW_LOG_LEVEL", "WARNING", "(environment)"]
        for line in shown.stdout.splitlines()
    ), shown.stdout
    assert SECRET not in shown.stdout
    bad = cachegw("config", "check", env={"CACHEGW_LIMITS__MAX_TTL_S": "0"}, cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "cachegw: CACHEGW_LIMITS__MAX_TTL_S=0: Input should be greater than or equal to 1"
    )
