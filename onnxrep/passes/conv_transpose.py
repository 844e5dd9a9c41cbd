"""ConvTranspose followed by BatchNormalization or a per-channel affine → one ConvTranspose.

The algebra: docs/algebra.md §1.

Before → after: ``BN(ConvTranspose(x, W, b))`` → ``ConvTranspose(x, W', b')``, the algebra in
:func:`onnxrep.numerics.transposed_affine` (grouped layouts included). Every attribute
(strides, pads, output_padding, output_shape, auto_pad, dilations, group) is kept as it is:
rescaling output channels commutes with all of them. Exact.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.graph import ShapeInfo, attributes, constant, fold_refusal, is_constant, is_float
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
    if not is_float(weight.dtype):
        raise fold_refusal(f"the weight of ConvTranspose {node.name!r}", weight.dtype)
    g = int(attrs["group"])
    shape = tuple(weight.shape)
    if has_b and math.prod(node.inputs[2].shape or ()) != shape[1] * g:
        raise Refused(f"ConvTranspose {node.name!r} has a bias of another size than its "
                      f"{shape[1] * g} output channels")
    kept = dict(node.attrs)

    def rewrite(scale: np.ndarray, shift: np.ndarray) -> tuple[str, list, dict]:
        bias = constant(node.inputs[2]) if has_b else None
        w, b = nx.transposed_affine(constant(weight), bias, g, scale, shift)
        return "ConvTranspose", [w, b], kept

    return Layer(len(shape), shape[1] * g, np.dtype(weight.dtype), rewrite,
                 nx.transposed_channels(g))


def run(graph: gs.Graph, state: PassState) -> tuple[list[Fold], list[Skip]]:
    return fold_chains(graph, state, FAMILY, ("ConvTranspose",), parse)
