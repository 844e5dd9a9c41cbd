"""Reading per-channel affine nodes: BatchNormalization and Mul/Add/Sub/Div by a constant.

Shared by the region rules (conv_bn, affine) and the dense-layer chains (gemm,
conv_transpose): each turns a node into ``y = scale * x + shift`` per channel, or refuses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.graph import attributes, constant, fold_refusal, is_constant, is_float
from onnxrep.refusal import Refused

BN_ATTRS = {
    "epsilon": 1e-5, "momentum": 0.9, "training_mode": 0, "spatial": 1, "is_test": 1,
    "consumed_inputs": None,
}
BINARY_OPS = ("Mul", "Add", "Sub", "Div")


def batch_norm(node: gs.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t, s, |beta| + |mean t|)`` with ``BN(y) = t * y + s``, inference mode only."""
    attrs = attributes(node, BN_ATTRS)
    if int(attrs["training_mode"]) != 0 or len([o for o in node.outputs if o.name]) > 1:
        raise Refused(f"BatchNormalization {node.name!r} is in training mode")
    if int(attrs["spatial"]) != 1:
        raise Refused(f"BatchNormalization {node.name!r} has spatial=0")
    params = [constant(t) for t in node.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        raise Refused(f"BatchNormalization {node.name!r} has parameters that are not constants")
    return nx.batch_norm_affine(*params, eps=float(attrs["epsilon"]))  # type: ignore[misc]


def constant_operand(node: gs.Node) -> tuple[int, gs.Constant] | None:
    """``(index of the variable input, the constant input)`` for a binary op with exactly one
    constant input (its values are not read here)."""
    if node.op not in BINARY_OPS or len(node.inputs) != 2 or node.attrs:
        return None
    first, second = (is_constant(t) for t in node.inputs)
    if first == second:
        return None
    var = 1 if first else 0
    return var, node.inputs[1 - var]


def per_channel(tensor: gs.Constant, rank: int, channels: int | None,
                axis: int = 1) -> np.ndarray:
    """A constant that broadcasts over a tensor of ``rank`` dims along ``axis`` only (the
    channel axis 1 of ``[N, C, *spatial]``, or the last, of token features), as a float64
    vector of length 1 or C. The shape is checked before any value is read."""
    shape = tuple(tensor.shape)
    if len(shape) > rank:
        raise Refused(f"a constant of shape {list(shape)} raises the tensor's rank")
    full = (1,) * (rank - len(shape)) + shape
    if any(d != 1 for i, d in enumerate(full) if i != axis):
        where = "per channel" if axis == 1 else f"per feature of axis {axis}"
        raise Refused(f"a constant of shape {list(shape)} is not {where}")
    if full[axis] != 1 and channels is not None and full[axis] != channels:
        raise Refused(f"a constant of {full[axis]} values for {channels} channels")
    if not is_float(tensor.dtype):
        raise fold_refusal(f"constant {tensor.name!r}", tensor.dtype)
    return np.asarray(constant(tensor), dtype=np.float64).reshape(-1)


def binary_affine(node: gs.Node, rank: int, channels: int | None,
                  axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` of ``Mul/Add/Sub/Div(x, c)`` (either order where that is affine),
    per channel along ``axis`` of the ``rank``-dim tensor."""
    found = constant_operand(node)
    if found is None:
        raise Refused(f"{node.op} {node.name!r} has no single constant operand")
    var, c = found
    v = per_channel(c, rank, channels, axis)
    if not np.all(np.isfinite(v)):
        raise Refused(f"{node.op} {node.name!r} uses a constant that is not finite")
    one, zero = np.ones(1), np.zeros(1)
    if node.op == "Mul":
        return v, zero
    if node.op == "Add":
        return one, v
    if node.op == "Sub":
        return (one, -v) if var == 0 else (-one, v)
    if var == 1:
        raise Refused(f"Div {node.name!r} divides a constant by the tensor")
    if np.any(v == 0):
        raise Refused(f"Div {node.name!r} divides by zero")
    return 1.0 / v, zero


def affine_chain(
    t: gs.Tensor, rank: int, channels: int | None, shared: Callable[[gs.Tensor], str | None]
) -> tuple[list[gs.Node], np.ndarray, np.ndarray, str | None]:
    """Follow ``t`` through sole-reader BN / Mul / Add / Sub / Div-by-constant nodes.

    ``shared(t)`` says why the chain may not continue into the reader of ``t`` (``None`` when
    it may). Returns the nodes, the accumulated ``(scale, shift)`` with
    ``chain(y) = scale * y + shift`` per channel, and why the chain stopped at an affine node
    (``None`` if it did not).
    """
    nodes: list[gs.Node] = []
    scale, shift = np.ones(1), np.zeros(1)
    while len(t.outputs) >= 1:
        reader = t.outputs[0]
        if not is_affine(reader, t):
            return nodes, scale, shift, None
        why = shared(t)
        if why is not None:
            return nodes, scale, shift, why
        try:
            if reader.op == "BatchNormalization":
                s, b, _ = batch_norm(reader)
            else:
                s, b = binary_affine(reader, rank, channels)
        except Refused as e:
            return nodes, scale, shift, str(e)
        scale, shift = scale * s, shift * s + b
        nodes.append(reader)
        t = reader.outputs[0]
    return nodes, scale, shift, None


def is_affine(reader: gs.Node, t: gs.Tensor) -> bool:
    """``reader`` is a BN of ``t`` or a binary op of ``t`` with a constant: a chain link."""
    if reader.op == "BatchNormalization":
        return bool(reader.inputs) and reader.inputs[0] is t
    return constant_operand(reader) is not None
