"""Plain result records: what was folded, what was left and why, and what it bought.

These are what the API returns and what every report (terminal, JSON, Markdown, HTML) renders.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import onnx

from onnxrep.io import serialized_size

if TYPE_CHECKING:
    from onnxrep.audit import AuditResult

__all__ = ["Fold", "ModelStats", "OptimizeResult", "Skip"]


@dataclass(frozen=True)
class Fold:
    """One rewrite: ``nodes`` (with op counts ``ops``) now compute ``output`` as ``result``."""

    pattern: str
    output: str
    nodes: list[str]
    ops: dict[str, int]
    result: str


@dataclass(frozen=True)
class Skip:
    """A candidate pattern left alone, and why."""

    pattern: str
    node: str
    op: str
    reason: str


@dataclass(frozen=True)
class ModelStats:
    """Size of a model: nodes per op type, parameters in initializers, serialized bytes."""

    ops: dict[str, int]
    params: int
    bytes: int

    @property
    def nodes(self) -> int:
        return sum(self.ops.values())

    @classmethod
    def of(cls, model: onnx.ModelProto) -> ModelStats:
        ops = Counter(n.op_type for n in model.graph.node)
        params = 0
        for t in model.graph.initializer:
            count = 1
            for d in t.dims:
                count *= d
            params += count
        return cls(dict(sorted(ops.items())), params, _serialized_size(model))


def _serialized_size(model: onnx.ModelProto) -> int:
    size = serialized_size(model)
    for t in model.graph.initializer:  # external data lives beside the model
        for entry in t.external_data:
            if entry.key == "length":
                size += int(entry.value)
    return size


@dataclass
class OptimizeResult:
    """What :func:`onnxrep.optimize` returns. ``model`` is a new ModelProto."""

    model: onnx.ModelProto
    applied: list[Fold]
    skipped: list[Skip]
    before: ModelStats
    after: ModelStats
    seconds: float = 0.0
    rounds: int = 0
    notes: list[str] = field(default_factory=list)
    audit: AuditResult | None = None
    """The fusion audit's findings (``None`` when it was not run)."""
    warnings: list[str] = field(default_factory=list)
    """What the user should know about the model written (each names the tensor)."""
    library_warnings: list[str] = field(default_factory=list)
    """Warnings of the libraries optimize called (numpy, onnx-graphsurgeon), one line each:
    recorded, never printed by the library; the command line counts them, ``-v`` lists them."""

    @property
    def changed(self) -> bool:
        return bool(self.applied) or self.before.ops != self.after.ops

    def applied_by_pattern(self) -> dict[str, int]:
        return dict(sorted(Counter(f.pattern for f in self.applied).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": [asdict(f) for f in self.applied],
            "applied_by_pattern": self.applied_by_pattern(),
            "skipped": [asdict(s) for s in self.skipped],
            "before": {**asdict(self.before), "nodes": self.before.nodes},
            "after": {**asdict(self.after), "nodes": self.after.nodes},
            "seconds": self.seconds,
            "rounds": self.rounds,
            "notes": list(self.notes),
            "audit": self.audit.to_dict() if self.audit is not None else None,
            "warnings": list(self.warnings),
            "library_warnings": list(self.library_warnings),
        }
