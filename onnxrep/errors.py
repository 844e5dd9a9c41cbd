"""The one exception users see: a clear, one-line reason (the CLI exits 2 with it)."""

from __future__ import annotations


class OnnxrepError(Exception):
    """Bad input or an impossible request. ``str(e)`` is one line naming the problem."""


def one_line(e: BaseException) -> str:
    """The exception's message on one line (whitespace runs collapsed), at most 300 chars."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
