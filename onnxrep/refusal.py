"""The one refusal: a fold that is not exact, or a node form a rule does not handle.

Raised by the float64 algebra (:mod:`onnxrep.numerics`) and by the graph readers alike, caught
by the rules, and shown to the user under ``--explain`` with its message as the reason.
"""

from __future__ import annotations

__all__ = ["Refused"]


class Refused(ValueError):
    """Why a fold is refused, in words a user can read (``str(e)``)."""
