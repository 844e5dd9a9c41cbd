"""The state passes share, and the passes in the order of :mod:`onnxrep.families`.

Importing a family's module registers it: a ``regions`` family's module adds its rules to the
region pass (``regions.run``: everything that becomes one Conv); a ``pass`` family's module
has ``run(graph, state) -> (folds, skips)``; a ``prepare`` family's module has ``prepare``,
which runs on the ModelProto before the graph is built (``constants.prepare``). The pipeline
then repeats the region pass and the other passes until nothing changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import onnx_graphsurgeon as gs

from onnxrep.families import FAMILIES
from onnxrep.graph import Names, ShapeInfo
from onnxrep.passes import regions
from onnxrep.result import Fold, Skip

MODULES: dict[str, ModuleType] = {f.name: importlib.import_module(f.module) for f in FAMILIES}
"""Family name → its module (imported: its rules are registered)."""


@dataclass
class PassState:
    """What the passes of one optimization share."""

    shapes: ShapeInfo
    pinned: set[str]
    names: Names
    skip: frozenset[str]
    opset: int
    protected: dict[str, str] = field(default_factory=dict)
    """Output tensor name → why its producer must stay as it is (a runtime's fused idiom)."""
    unsettled: bool = False
    """Set by a pass whose rewrites this round may let the region pass find more in the next
    (see ``regions.run``); the pipeline clears it before each round."""

    def guard(self, node: gs.Node) -> str | None:
        """Why ``node`` may neither absorb nor be absorbed (``None`` when it may)."""
        return self.protected.get(node.outputs[0].name) if node.outputs else None


Pass = Callable[[gs.Graph, PassState], tuple[list[Fold], list[Skip]]]

PREPARE: list[tuple[str, Callable[..., Any]]] = [
    (f.name, MODULES[f.name].prepare) for f in FAMILIES if f.stage == "prepare"
]
"""(family, step) run on the ModelProto before the graph is built, in order: each takes
``(model, light copy, shapes, in_place)`` and returns a ``constants.Folded``-like record."""

PASSES: list[tuple[str | None, Pass]] = [
    (None, regions.run),
    *((f.name, MODULES[f.name].run) for f in FAMILIES if f.stage == "pass"),
]
"""(family that switches the pass off, pass) in order; the region pass runs every region
family's rules (each switched off by its own name)."""
