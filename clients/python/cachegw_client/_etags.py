"""Entity-tags as the gateway makes them: the entry's version, quoted (``"41"``)."""

from __future__ import annotations

ETag = str | int
"""An entity-tag as the gateway sends it (``'"41"'``, or ``"*"``), or a version (``41``)."""


def tag(value: ETag) -> str:
    """A precondition's value: an entity-tag as given, or a version quoted."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a version is not negative")
        return f'"{value}"'
    return value


def version_of(etag: str) -> int | None:
    """The version a gateway ETag names (``'"41"'`` is 41); None for a tag of another shape."""
    text = etag.strip()
    digits = text[1:-1]
    if len(text) >= 2 and text[0] == text[-1] == '"' and digits.isascii() and digits.isdigit():
        return int(digits)
    return None
