"""Configuration that explains itself: one line per bad value, typos warned about, the targets
logged with their secrets masked, and the reference (``docs/configuration.md``) generated from
the settings model, so the two cannot drift apart.

``load`` is how the gateway and its commands build ``Settings``; ``cachegw config check``,
``show`` and ``reference`` (``app/cli.py``) print what this module finds.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from app.settings import Settings

PREFIX = "CACHEGW_"
DELIMITER = "__"
MASK = "***"
# CACHEGW_ variables that are not settings of the gateway: the dev stack's own, the clients'
# and the tests'. Everything else with the prefix that names no setting is warned about.
NOT_SETTINGS = frozenset({"CACHEGW_API_KEY", "CACHEGW_URL", "CACHEGW_UPDATE_SNAPSHOT"})
NOT_SETTINGS_PREFIXES = ("CACHEGW_DEVSTACK_",)
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
_LENGTHS = (("min_length", "length >="), ("max_length", "length <="))
_PASSWORD_WORD = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Option:
    """One setting: where it lives in ``Settings`` and what the reference says of it."""

    path: tuple[str, ...]
    field: FieldInfo
    section: str

    @property
    def variable(self) -> str:
        return PREFIX + DELIMITER.join(self.path).upper()

    @property
    def secret(self) -> bool:
        return _mentions(self.field.annotation, SecretStr)

    @property
    def type_text(self) -> str:
        return _type_text(self.field.annotation)

    @property
    def default_text(self) -> str:
        return _shown(self.field.get_default(call_default_factory=True), secret=self.secret)

    @property
    def bounds_text(self) -> str:
        rules: list[str] = []
        for item in self.field.metadata:
            for attr, sign in (*_BOUNDS, *_LENGTHS):
                value = getattr(item, attr, None)
                if value is not None:
                    rules.append(f"{sign} {value}")
            pattern = getattr(item, "pattern", None)
            if pattern is not None:
                rules.append(f"matches `{pattern}`")
        return ", ".join(rules)


def options(model: type[BaseModel] = Settings) -> list[Option]:
    """Every leaf setting of ``model``, in declaration order, sections walked into."""
    return list(_walk(model, (), ""))


def _walk(model: type[BaseModel], path: tuple[str, ...], section: str) -> Iterator[Option]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _walk(annotation, (*path, name), name)
        else:
            yield Option((*path, name), field, section)


def sections(model: type[BaseModel] = Settings) -> dict[str, str]:
    """Section name → the first line of its model's docstring."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out[name] = (annotation.__doc__ or "").strip().splitlines()[0]
    return out


def load() -> Settings:
    """``Settings()`` from the environment, or ``ConfigError`` with one line per bad value."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(explain(exc)) from None


def explain(exc: ValidationError) -> list[str]:
    """One line per error: the variable, the value given (masked if secret) and the rule."""
    by_path = {option.path: option for option in options()}
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        path = tuple(str(part) for part in error["loc"])
        rule = error["msg"].removeprefix("Value error, ")
        option = by_path.get(path)
        if option is None:  # a rule across settings (a section's or the whole model's)
            where = (
                PREFIX + DELIMITER.join(path).upper() + DELIMITER + "*" if path else PREFIX + "*"
            )
            lines.append(f"{where}: {rule}")
            continue
        value = _shown(error.get("input"), secret=option.secret)
        lines.append(f"{option.variable}={value}: {rule}")
    return lines


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning per ``CACHEGW_*`` variable that names no setting (a typo), with the nearest
    setting's name when one is close."""
    environ = os.environ if environ is None else environ
    known = {option.variable for option in options()}
    known |= {PREFIX + name.upper() for name in sections()}  # a section as one JSON object
    warnings: list[str] = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIX) or upper in known or upper in NOT_SETTINGS:
            continue
        if upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        bare = [variable.removeprefix(PREFIX) for variable in known]  # the prefix is no likeness
        near = difflib.get_close_matches(upper.removeprefix(PREFIX), bare, n=1, cutoff=0.75)
        hint = f"; did you mean {PREFIX}{near[0]}?" if near else ""
        warnings.append(f"{name} is not a setting of cachegw and is ignored{hint}")
    return warnings


def mask_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***`` (URL or key=value form)."""
    if "://" not in dsn:
        return _PASSWORD_WORD.sub(lambda m: m.group(1) + MASK, dsn)
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return "<unparsable DSN>"
    if password is None:
        return dsn
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def targets(settings: Settings) -> dict[str, str]:
    """What the gateway will connect to, safe to log."""
    redis = settings.redis
    nodes = ",".join(f"{host}:{port}" for host, port in redis.startup_nodes)
    return {
        "redis_nodes": nodes,
        "redis_tls": str(redis.tls).lower(),
        "redis_user": redis.username or "(default)",
        "postgres": mask_dsn(settings.pg.dsn.get_secret_value()),
        "postgres_ssl_mode": settings.pg.ssl_mode,
        "feed_mode": settings.feed.mode,
    }


def show(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """(variable, value in force, where it came from) for every setting, secrets masked."""
    environ = os.environ if environ is None else environ
    given = {name.upper() for name in environ}
    rows: list[tuple[str, str, str]] = []
    for option in options():
        value: Any = settings
        for part in option.path:
            value = getattr(value, part)
        if option.variable in given:
            source = "environment"
        elif option.section and PREFIX + option.section.upper() in given:
            source = f"environment ({PREFIX}{option.section.upper()})"
        else:
            source = "default"
        rows.append((option.variable, _shown(value, secret=option.secret), source))
    return rows


def reference() -> str:
    """The configuration reference, in Markdown (``docs/configuration.md``)."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from app/settings.py by `cachegw config reference`; do not edit. -->",
        "",
        "Every setting is an environment variable with the prefix `CACHEGW_`; a section's",
        "settings are joined to it with `__` (`CACHEGW_REDIS__NODES`), and a whole section may",
        'also be given as one JSON object (`CACHEGW_REDIS=\'{"nodes": "10.0.0.5:6379"}\'`).',
        "`cachegw serve` and `cachegw migrate` also read a dotenv file (`--env-file`, by default",
        "`.devstack/env` when it exists); the environment wins over the file.",
        "`cachegw config check` says whether the configuration is usable and what it will",
        "connect to; `cachegw config show` prints every value in force and where it came from.",
        "",
    ]
    titles = sections()
    current: str | None = None
    for option in options():
        if option.section != current:
            current = option.section
            heading = current or "general"
            out += [f"## {heading}", ""]
            if current:
                out += [titles[current], ""]
            out += [
                "| Variable | Type | Default | Bounds | What it does |",
                "| --- | --- | --- | --- | --- |",
            ]
        description = (option.field.description or "").replace("|", "\\|")
        default = option.default_text.replace("|", "\\|")
        bounds = option.bounds_text.replace("|", "\\|")
        out.append(
            f"| `{option.variable}` | {option.type_text} | `{default}` | {bounds} | {description} |"
        )
    out.append("")
    return _tables_closed(out)


def _tables_closed(lines: list[str]) -> str:
    """Join, with a blank line after each table (before the next heading)."""
    text: list[str] = []
    for line in lines:
        if line.startswith("## ") and text and text[-1] != "":
            text.append("")
        text.append(line)
    return "\n".join(text)


def _mentions(annotation: Any, kind: type) -> bool:
    if annotation is kind:
        return True
    return any(_mentions(arg, kind) for arg in typing.get_args(annotation))


def _type_text(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " \\| ".join(f"`{arg}`" for arg in typing.get_args(annotation))
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        parts = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        text = " \\| ".join(_type_text(arg) for arg in parts)
        return f"{text} (optional)" if len(parts) < len(typing.get_args(annotation)) else text
    if annotation is SecretStr:
        return "secret string"
    return getattr(annotation, "__name__", str(annotation))


def _shown(value: object, *, secret: bool) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        value, secret = value.get_secret_value(), True
    if secret:  # a DSN keeps all but its password: the target is worth seeing
        return mask_dsn(value) if isinstance(value, str) and "://" in value else MASK
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
