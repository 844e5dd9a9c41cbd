"""Constant subgraphs folded to initializers, so the patterns behind them become visible.

Exporters compute parts of a block at run time from constants only: the dynamo exporter builds
a zero Conv bias from ``Shape(W)``/``Expand``/``CastLike``, and DBB's "BN and pad" layer
exports (TorchScript) as thousands of Shape/Gather/Range/Where nodes that compute fixed border
indices. This pre-pass does not evaluate anything itself: it lets onnx shape inference (with
data propagation) annotate the graph and onnx-graphsurgeon's ``fold_constants`` replace every
node whose inputs are constants or static shapes by its value, repeating while that exposes
more. The one rewrite of its own is ``CastLike(x, like)`` → ``Cast(x, to=dtype(like))`` where
shape inference knows that dtype, which makes ``CastLike`` of a constant foldable.

Size rule: a fold must not grow the model. A node whose result is larger than ``SIZE_LIMIT``
and larger than all it reads (an ``Expand``, ``Tile`` or ``ConstantOfShape`` to a large shape,
a broadcasting product) stays a run-time op instead of bloating the file, unless its result is
a layer's weight: everything that computes a Conv, ConvTranspose or Gemm weight or bias, a
MatMul operand or a normalization's parameters (OREPA-style blocks build their kernels from
parameters in ``forward``: Einsum, Pad, convolutions of kernels, scaled sums) is folded
whatever its size, since the model stores that weight anyway and its generating graph goes.
A result whose size shape inference cannot tell is folded only if its op is no generator.

Left alone as well: subgraphs (If/Loop/Scan bodies), nodes outside the default domain, and
nodes that read or write bfloat16 or float8 tensors (onnxruntime's CPU provider, which
evaluates the constants, has few kernels for them). It runs only where something is foldable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from onnxrep.graph import ShapeInfo, is_constant, is_default_domain, is_float

if TYPE_CHECKING:
    from onnxrep.passes import PassState

FAMILY = "constants"
SIZE_LIMIT = 1 << 22
MAX_ROUNDS = 4
GENERATORS = ("Expand", "Tile", "ConstantOfShape", "Range", "Resize", "Upsample", "OneHot")
"""Ops whose result may be far larger than their inputs."""
WEIGHT_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2, 3, 4), "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
}
"""Inputs of layers that hold weights (when they are constants)."""


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


def _foldable_left(graph: gs.Graph, exclude: Callable[[gs.Node], bool]) -> int:
    """Nodes that read only constants (what a complete fold leaves none of)."""
    return sum(
        1 for n in graph.nodes
        if not exclude(n) and n.inputs and n.outputs
        and all(is_constant(t) or not t.name for t in n.inputs)
        and any(t.outputs for t in n.outputs)
    )


def _weight_makers(graph: gs.Graph) -> set[str]:
    """The tensors computed on the way to a layer's weight slot (by name: gs asks about the
    nodes of a copy of the graph)."""
    makers: set[str] = set()
    stack = [node.inputs[i] for node in graph.nodes for i in WEIGHT_SLOTS.get(node.op, ())
             if i < len(node.inputs)]
    while stack:
        t = stack.pop()
        if t.name in makers or not t.inputs:
            continue
        makers.add(t.name)
        stack.extend(t.inputs[0].inputs)
    return makers


def _grows(node: gs.Node, shapes: ShapeInfo) -> bool:
    """``node``'s result exceeds ``SIZE_LIMIT`` and all it reads (or might: a generator of a
    size shape inference does not know)."""
    produced = _bytes((t.name for t in node.outputs), shapes)
    if produced is None:
        return node.op in GENERATORS
    read = _bytes((t.name for t in node.inputs if t.name), shapes)
    return produced > SIZE_LIMIT and (read is None or produced > read)


def _bytes(names: Iterable[str], shapes: ShapeInfo) -> int | None:
    total = 0
    for name in names:
        shape, elem = shapes.shapes.get(name), shapes.dtypes.get(name)
        if shape is None or elem is None or any(d is None for d in shape):
            return None
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize
        total += math.prod(shape) * itemsize
    return total


def _exotic(node: gs.Node) -> bool:
    """The node reads or writes a float type numpy lacks (bfloat16, float8): onnxruntime has
    few kernels for them, and gs's partitioned folding recurses without end on its failures."""
    for t in (*node.inputs, *node.outputs):
        if t.dtype is None or isinstance(t.dtype, int):
            continue
        dtype = np.dtype(t.dtype)
        if dtype.kind == "V" or (dtype.kind == "f" and not is_float(dtype)):
            return True
    return False


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


def prepare(graph: gs.Graph, state: PassState) -> int:
    """The prepare step of the family: fold until nothing more folds (each round can expose
    shapes the next folds with); returns the number of nodes removed."""
    removed = 0
    for _ in range(MAX_ROUNDS):
        count = fold(graph, state.shapes)
        if not count:
            break
        removed += count
        if state.skeleton is not None:
            state.shapes = ShapeInfo.infer(state.skeleton(graph))  # folding exposes shapes
    return removed


def fold(graph: gs.Graph, shapes: ShapeInfo) -> int:
    """Fold constant subgraphs of ``graph`` in place; returns the number of nodes removed."""
    if not _foldable(graph, shapes):
        return 0
    before = len(graph.nodes)
    _annotate(graph, shapes)
    _castlike_to_cast(graph, shapes)
    from onnxrep.verify import quiet_runtime_logs  # gs evaluates constants in onnxruntime

    quiet_runtime_logs()
    makers = _weight_makers(graph)

    def exclude(node: gs.Node) -> bool:
        if not is_default_domain(node) or _has_subgraph(node) or _exotic(node):
            return True
        made = any(t.name in makers for t in node.outputs)
        return not made and _grows(node, shapes)

    level = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.CRITICAL + 10  # gs reports fold failures itself; stay quiet
    try:
        # one evaluation of every constant subgraph; only if that fails (an op onnxruntime
        # cannot run), the slower partitioned mode folds what it can around the failure
        for partitioning in (None, "basic"):
            graph.fold_constants(
                fold_shapes=True, recurse_subgraphs=False, flatten_subgraphs=False,
                recurse_functions=False, partitioning=partitioning, error_ok=True,
                size_threshold=None, should_exclude_node=exclude,
            )
            if _foldable_left(graph, exclude) == 0:
                break
    finally:
        G_LOGGER.severity = level
    graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=False,
                  recurse_functions=False)
    return before - len(graph.nodes)
