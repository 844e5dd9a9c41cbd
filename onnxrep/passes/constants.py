"""Constant subgraphs folded to initializers, so the patterns behind them become visible.

Exporters compute parts of a block at run time from constants only: the dynamo exporter builds
a zero Conv bias from ``Shape(W)``/``Expand``/``CastLike``, and DBB's "BN and pad" layer
exports (TorchScript) as thousands of Shape/Gather/Range/Where nodes that compute fixed border
indices. This pre-pass does not evaluate anything itself: it lets onnx shape inference (with
data propagation) annotate the graph and onnx-graphsurgeon's ``fold_constants`` replace every
node whose inputs are constants or static shapes by its value, repeating while that exposes
more. The one rewrite of its own is ``CastLike(x, like)`` → ``Cast(x, to=dtype(like))`` where
shape inference knows that dtype, which makes ``CastLike`` of a constant foldable.

Left alone: subgraphs (If/Loop/Scan bodies), nodes outside the default domain, and values over
``SIZE_LIMIT`` bytes (an ``Expand`` to a large shape stays a run-time op instead of bloating
the file). It runs only where something is foldable.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from onnxrep.graph import ShapeInfo, is_constant, is_default_domain

FAMILY = "constants"
SIZE_LIMIT = 1 << 22
MAX_ROUNDS = 4


def _foldable(graph: gs.Graph, shapes: ShapeInfo) -> bool:
    for node in graph.nodes:
        if not is_default_domain(node) or node.op == "Constant" or _has_subgraph(node):
            continue
        if node.op in ("Shape", "Size") and node.inputs:
            shape = shapes.shapes.get(node.inputs[0].name)
            if shape is not None and all(d is not None for d in shape):
                return True
        elif (node.op == "CastLike" and shapes.dtypes.get(node.inputs[1].name)) or (
            node.inputs and all(is_constant(t) or not t.name for t in node.inputs)
        ):
            return True
    return False


def _foldable_left(graph: gs.Graph) -> int:
    """Nodes that read only constants (what a complete fold leaves none of)."""
    return sum(
        1 for n in graph.nodes
        if is_default_domain(n) and not _has_subgraph(n) and n.inputs and n.outputs
        and all(is_constant(t) or not t.name for t in n.inputs)
        and any(t.outputs for t in n.outputs)
    )


def _has_subgraph(node: gs.Node) -> bool:
    return any(isinstance(v, (gs.Graph, list)) and (
        isinstance(v, gs.Graph) or any(isinstance(x, gs.Graph) for x in v)
    ) for v in node.attrs.values())


def _annotate(graph: gs.Graph, shapes: ShapeInfo) -> None:
    """Give gs the inferred shapes and dtypes (its shape folding reads them)."""
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable):
            shape = shapes.shapes.get(t.name)
            if shape is not None:  # the newest inference knows at least as much
                t.shape = [d if d is not None else f"unk_{i}" for i, d in enumerate(shape)]
            if t.dtype is None and t.name in shapes.dtypes:
                t.dtype = onnx.helper.tensor_dtype_to_np_dtype(shapes.dtypes[t.name])


def _castlike_to_cast(graph: gs.Graph, shapes: ShapeInfo) -> None:
    for node in graph.nodes:
        if node.op == "CastLike" and is_default_domain(node) and len(node.inputs) == 2:
            to = shapes.dtypes.get(node.inputs[1].name)
            if to:
                like = node.inputs[1]
                node.op = "Cast"
                node.attrs = {"to": int(to)}
                node.inputs.remove(like)


def fold(graph: gs.Graph, shapes: ShapeInfo) -> int:
    """Fold constant subgraphs of ``graph`` in place; returns the number of nodes removed."""
    if not _foldable(graph, shapes):
        return 0
    before = len(graph.nodes)
    _annotate(graph, shapes)
    _castlike_to_cast(graph, shapes)
    from onnxrep.verify import quiet_runtime_logs  # gs evaluates constants in onnxruntime

    quiet_runtime_logs()
    level = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.CRITICAL + 10  # gs reports fold failures itself; stay quiet
    try:
        # one evaluation of every constant subgraph; only if that fails (an op onnxruntime
        # cannot run), the slower partitioned mode folds what it can around the failure
        for partitioning in (None, "basic"):
            graph.fold_constants(
                fold_shapes=True, recurse_subgraphs=False, flatten_subgraphs=False,
                recurse_functions=False, partitioning=partitioning, error_ok=True,
                size_threshold=SIZE_LIMIT,
                should_exclude_node=lambda n: not is_default_domain(n) or _has_subgraph(n),
            )
            if _foldable_left(graph) == 0:
                break
    finally:
        G_LOGGER.severity = level
    graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=False,
                  recurse_functions=False)
    return before - len(graph.nodes)
