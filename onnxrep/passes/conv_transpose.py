"""ConvTranspose followed by BatchNormalization or a per-channel affine → one ConvTranspose (§1).

Before → after: ``BN(ConvTranspose(x, W, b))`` → ``ConvTranspose(x, W', b')``. The weight is
``[Cin, Cout/g, *k]`` and output channel ``o = (c // (Cin/g)) · (Cout/g) + j`` for
``W[c, j]``, so ``W'[c, j] = W[c, j] · t[o]`` (grouped layouts included) and
``b' = t · b + s``. Every attribute (strides, pads, output_padding, output_shape, auto_pad,
dilations, group) is kept as it is: rescaling output channels commutes with all of them, and
positions that only ``output_padding`` reaches hold ``t · b + s = BN(b)`` as before. Exact.
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

FAMILY = "convtranspose-bn"
ATTRS = {
    "auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None,
    "output_padding": None, "output_shape": None, "pads": None, "strides": None,
}


def parse(node: gs.Node, shapes: ShapeInfo) -> Layer:
    attrs = attributes(node, ATTRS)
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    has_b = len(node.inputs) > 2 and bool(node.inputs[2].name)
    if not is_constant(weight) or (has_b and not is_constant(node.inputs[2])):
        raise Refused(f"ConvTranspose {node.name!r} has weights that are not constants")
    if np.dtype(weight.dtype).kind != "f":
        raise Refused(f"ConvTranspose {node.name!r} has a {np.dtype(weight.dtype)} weight")
    g = int(attrs["group"])
    shape = tuple(weight.shape)
    cin, per_group = shape[0], shape[1]
    cout = per_group * g
    out_channel = (np.arange(cin)[:, None] // (cin // g)) * per_group + np.arange(per_group)
    kept = dict(node.attrs)

    def rewrite(scale: np.ndarray, shift: np.ndarray) -> tuple[str, list, dict]:
        t = np.broadcast_to(scale, (cout,))
        factor = t[out_channel].reshape(shape[:2] + (1,) * (len(shape) - 2))
        bias = constant(node.inputs[2]).astype(np.float64) if has_b else np.zeros(cout)
        w = constant(weight).astype(np.float64) * factor
        return "ConvTranspose", [w, t * bias + shift], kept

    return Layer(len(shape), cout, np.dtype(weight.dtype), rewrite)


def run(graph: gs.Graph, state: PassState) -> tuple[list[Fold], list[Skip]]:
    return fold_chains(graph, state, FAMILY, ("ConvTranspose",), parse)
