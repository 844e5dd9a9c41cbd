"""The one exception users see: a clear, one-line reason (the CLI exits 2 with it)."""

from __future__ import annotations


class OnnxrepError(Exception):
    """Bad input or an impossible request. ``str(e)`` is one line naming the problem."""
