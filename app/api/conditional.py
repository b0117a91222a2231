"""Entity-tags and the conditional request headers (RFC 9110 section 8.8.3 and 13.1).

The gateway's ETag is the entry's version, quoted: ``"42"``. Tags of other shapes are valid
syntax but never match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import InvalidPreconditionError

# entity-tag = [ W/ ] DQUOTE *etagc DQUOTE ; etagc = %x21 / %x23-7E / obs-text
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


@dataclass(frozen=True, slots=True)
class TagList:
    """A parsed If-Match / If-None-Match value: ``*``, or strong and weak opaque tags."""

    any: bool = False
    strong: tuple[str, ...] = ()
    weak: tuple[str, ...] = ()

    def versions(self, *, strong_only: bool) -> list[int]:
        """The versions the tags name (tags that are not ours cannot match and are dropped)."""
        tags = self.strong if strong_only else self.strong + self.weak
        return [int(tag) for tag in tags if tag.isascii() and tag.isdigit() and len(tag) < 19]


def etag(version: int) -> str:
    return f'"{version}"'


def parse_tag_list(header: str, *, name: str) -> TagList:
    value = header.strip()
    if value == "*":
        return TagList(any=True)
    if not value:
        raise InvalidPreconditionError(f"{name} is empty")
    strong: list[str] = []
    weak: list[str] = []
    position = 0
    while position < len(value):
        match = _TAG.match(value, position)
        if match is None or match.end() == position:
            raise InvalidPreconditionError(
                f'{name} must be * or a comma-separated list of entity-tags like "42"'
            )
        (weak if match.group(1) else strong).append(match.group(2))
        position = match.end()
    if value.rstrip().endswith(","):
        raise InvalidPreconditionError(f"{name} ends with a comma")
    return TagList(strong=tuple(strong), weak=tuple(weak))


def none_match(tags: TagList, version: int) -> bool:
    """If-None-Match on GET/HEAD (weak comparison): True when the client's copy is current."""
    return tags.any or version in tags.versions(strong_only=False)
