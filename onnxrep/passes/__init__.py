"""Pattern families, the state passes share, and the default pass order.

Every family can be switched off by name (``--skip NAME``). The region families are rules of
one pass (``regions``: everything that becomes a Conv); the dense-layer families are chain
passes of their own. A pass takes the graph and the shared state and returns the folds it
applied and the candidates it skipped; the pipeline repeats the passes until nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from onnxrep.graph import Names, ShapeInfo
from onnxrep.passes import (  # noqa: F401  (importing a family module registers its rules)
    affine,
    border,
    branches,
    concat,
    constants,
    conv_bn,
    conv_transpose,
    gemm,
    padding,
    pooling,
    regions,
    sequential,
)
from onnxrep.result import Fold, Skip

FAMILIES: dict[str, str] = {
    "constants": "constant subgraphs (shape arithmetic) folded to initializers first",
    "conv-bn": "BatchNormalization after a Conv, or on a branch input (identity branch)",
    "conv-affine": "Mul/Add/Sub/Div by a scalar or per-channel constant after a Conv",
    "branches": "Add/Sub/Sum of parallel branches on one tensor",
    "sequential": "a Conv reading another Conv (1x1 then kxk, kxk then 1x1)",
    "concat": "Concat of parallel convolutions on one tensor",
    "avgpool": "AveragePool inside a region, as a depthwise conv",
    "pad": "zero Pad before a Conv, merged into its pads",
    "border-fill": "a border written with per-channel constants (DBB's exported BN-and-pad)",
    "convtranspose-bn": "BatchNormalization / per-channel affine after a ConvTranspose",
    "gemm-bn": "BatchNormalization / per-feature affine after Gemm or a 2-D MatMul",
}
"""Family name → what it folds; the names ``--skip`` accepts."""


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

    def guard(self, node: gs.Node) -> str | None:
        """Why ``node`` may neither absorb nor be absorbed (``None`` when it may)."""
        return self.protected.get(node.outputs[0].name) if node.outputs else None


Pass = Callable[[gs.Graph, PassState], tuple[list[Fold], list[Skip]]]

PASSES: list[tuple[str | None, Pass]] = [
    (None, regions.run),
    ("convtranspose-bn", conv_transpose.run),
    ("gemm-bn", gemm.run),
]
"""(family that switches the pass off, pass) in the default order."""
