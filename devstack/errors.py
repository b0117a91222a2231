"""The error every part of the local stack raises when it cannot do what was asked."""

from __future__ import annotations


class StackError(Exception):
    """The local stack could not be brought to (or checked in) the requested state."""
