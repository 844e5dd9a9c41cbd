"""Gemm / MatMul followed by BatchNormalization or a per-feature affine (BatchNorm1d after
Linear) → one Gemm (shared/REPARAM.md §1).

Before → after: ``BN(Gemm(A, B, C))`` → ``Gemm(A, B', C')``. With ``Y = alpha·op(A)·op(B) +
beta·C`` and the chain ``t * Y + s`` per output feature ``n``: ``op(B')[:, n] = op(B)[:, n] ·
t[n]`` (so ``alpha`` and ``transA/transB`` stay), ``C' = t · beta · C + s`` and ``beta' = 1``.
A ``MatMul(A, B)`` with a constant 2-D ``B`` and a 2-D ``A`` becomes ``Gemm(A, B·t, s)``; a
MatMul on higher-rank activations is refused (BatchNormalization's channel axis is not its
feature axis there). Exact for every input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.graph import ShapeInfo, attributes, constant, is_constant
from onnxrep.passes.chains import Layer, fold_chains
from onnxrep.refusal import Refused
from onnxrep.result import Fold, Skip

if TYPE_CHECKING:
    from onnxrep.passes import PassState

FAMILY = "gemm-bn"
GEMM_ATTRS = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}


def parse(node: gs.Node, shapes: ShapeInfo) -> Layer:
    if node.op == "MatMul":
        return _matmul(node, shapes)
    attrs = attributes(node, GEMM_ATTRS)
    weight = node.inputs[1]
    has_c = len(node.inputs) > 2 and bool(node.inputs[2].name)
    if not is_constant(weight) or len(weight.shape) != 2 or (
        has_c and not is_constant(node.inputs[2])
    ):
        raise Refused(f"Gemm {node.name!r} has weights that are not constants")
    if np.dtype(weight.dtype).kind != "f":
        raise Refused(f"Gemm {node.name!r} has {np.dtype(weight.dtype)} weights")
    trans_b = int(attrs["transB"])
    n = weight.shape[0] if trans_b else weight.shape[1]
    alpha, beta = float(attrs["alpha"]), float(attrs["beta"])

    def rewrite(scale: np.ndarray, shift: np.ndarray) -> tuple[str, list, dict]:
        t = np.broadcast_to(scale, (n,))
        w = constant(weight).astype(np.float64) * (t[:, None] if trans_b else t[None, :])
        c = constant(node.inputs[2]).astype(np.float64) if has_c else None
        bias = shift if c is None else t * beta * c + shift
        bias = np.broadcast_to(bias, np.broadcast_shapes(np.shape(bias), (n,)))
        new = {"alpha": alpha, "beta": 1.0, "transA": int(attrs["transA"]), "transB": trans_b}
        return "Gemm", [w, bias], new

    return Layer(2, n, np.dtype(weight.dtype), rewrite)


def _matmul(node: gs.Node, shapes: ShapeInfo) -> Layer:
    weight = node.inputs[1]
    if not is_constant(weight) or is_constant(node.inputs[0]):
        raise Refused(f"MatMul {node.name!r} has a weight that is not a constant")
    if len(weight.shape) != 2 or shapes.rank(node.inputs[0].name) != 2:
        raise Refused(f"MatMul {node.name!r} is not a 2-D activation times a 2-D weight")
    if np.dtype(weight.dtype).kind != "f":
        raise Refused(f"MatMul {node.name!r} has a {np.dtype(weight.dtype)} weight")
    n = weight.shape[1]

    def rewrite(scale: np.ndarray, shift: np.ndarray) -> tuple[str, list, dict]:
        w = constant(weight).astype(np.float64) * np.broadcast_to(scale, (n,))[None, :]
        return "Gemm", [w, np.broadcast_to(shift, (n,))], {}

    return Layer(2, n, np.dtype(weight.dtype), rewrite)


def run(graph: gs.Graph, state: PassState) -> tuple[list[Fold], list[Skip]]:
    return fold_chains(graph, state, FAMILY, ("Gemm", "MatMul"), parse)
