"""Per-channel affine chains after dense layers: ``BN(Layer(x))`` → ``Layer'(x)``.

The driver behind the gemm and conv_transpose families: from each layer with constant
weights, follow its output through sole-reader BatchNormalization / Mul / Add / Sub / Div by a
per-channel constant (``channelwise.affine_chain``), then replace layer and chain by one node
whose weights a family-specific ``Layer.rewrite`` rescales in float64.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.graph import ShapeInfo, is_default_domain, shared_reason, splice
from onnxrep.passes.channelwise import affine_chain, is_affine
from onnxrep.refusal import Refused
from onnxrep.result import Fold, Skip

if TYPE_CHECKING:
    from onnxrep.passes import PassState


@dataclass
class Layer:
    """A parsed dense layer: output rank, output channels, and how to rescale it.

    ``rewrite(scale, shift)`` returns ``(op_type, [weight arrays by input slot], attrs)`` of a
    node computing ``scale * layer(x) + shift`` per output channel; arrays are float64.
    """

    rank: int
    channels: int
    dtype: np.dtype
    rewrite: Callable[[np.ndarray, np.ndarray], tuple[str, list[np.ndarray | None], dict]]
    by_channel: Callable[[np.ndarray], np.ndarray]
    """The weight (slot 1) as ``[output channel, rest]`` (``numerics.narrowing``)."""


Parser = Callable[[gs.Node, ShapeInfo], Layer]


def fold_chains(
    graph: gs.Graph, state: PassState, family: str, ops: tuple[str, ...], parse: Parser,
) -> tuple[list[Fold], list[Skip]]:
    """Replace every ``ops`` node and its affine chain by one node (see the module doc)."""
    shapes, names = state.shapes, state.names

    def shared(t: gs.Tensor) -> str | None:
        guard = state.guard(t.outputs[0])
        if guard is not None:
            return guard
        why = shared_reason(t, t.outputs[0], graph, state.pinned)
        return None if why is None else f"cannot fold through {why}"

    folds: list[Fold] = []
    skips: list[Skip] = []
    removed: dict[int, gs.Node] = {}
    replacements: dict[int, tuple[list[gs.Node], gs.Tensor]] = {}
    for node in graph.nodes:
        if node.op not in ops or not is_default_domain(node) or id(node) in removed:
            continue
        out = node.outputs[0] if len(node.outputs) == 1 else None
        if out is None or not out.outputs or not is_affine(out.outputs[0], out):
            continue  # nothing to fold into this layer: do not even read it
        guard = state.guard(node)
        if guard is not None:
            skips.append(Skip(family, node.name, node.op, guard))
            continue
        try:
            layer = parse(node, shapes)
        except Refused as e:
            if out.outputs[0].op == "BatchNormalization":  # a MatMul + bias Add is no candidate
                skips.append(Skip(family, node.name, node.op, str(e)))
            continue
        chain, scale, shift, why = affine_chain(node.outputs[0], layer.rank, layer.channels,
                                                shared)
        if why is not None:
            where = chain[-1] if chain else node
            skips.append(Skip(family, where.name, where.op, why))
        if not chain:
            continue
        op, arrays, attrs = layer.rewrite(scale, shift)
        why = None
        for slot, values in enumerate(arrays, start=1):
            if values is not None and why is None:  # rounded once to the model's type
                why = nx.narrowing(values, layer.dtype, layer.by_channel if slot == 1 else None)
        if why is not None:
            skips.append(Skip(family, node.name, node.op,
                              f"the folded weights of {1 + len(chain)} nodes {why}"))
            continue
        inputs: list[gs.Tensor] = [node.inputs[0]]
        for slot, values in enumerate(arrays, start=1):
            if values is None:
                inputs.append(gs.Variable.empty())
                continue
            hint = f"{node.name or node.op}.{'weight' if slot == 1 else 'bias'}"
            inputs.append(gs.Constant(names.fresh(hint), np.ascontiguousarray(values, layer.dtype)))
        last = chain[-1].outputs[0]
        removed.update((id(n), n) for n in (node, *chain))
        replacements[id(node)] = ([gs.Node(op, node.name, attrs, inputs=inputs)], last)
        ops_count = Counter(n.op for n in (node, *chain))
        folds.append(Fold(family, last.name, [n.name for n in (node, *chain)],
                          dict(ops_count), op))
    splice(graph, removed, replacements)
    return folds, skips
