"""Constant subgraphs folded to initializers, first, so the patterns behind them become visible.

Exporters compute parts of a block at run time from constants only: the dynamo exporter builds
a zero Conv bias from ``Shape(W)``/``Expand``/``CastLike``, DBB's "BN and pad" layer exports
(TorchScript) as thousands of Shape/Gather/Range/Where nodes that compute fixed border
indices, and OREPA-style blocks compute their kernels from parameters (Einsum, Pad, scaled
sums). This step runs on the ModelProto, before the graph is built for the passes (which
then see a graph of the size that matters): in topological order, every node whose inputs are
all constants is evaluated in numpy (:mod:`onnxrep.interpret`), and a ``Shape`` or ``Size``
of a tensor whose shape onnx shape inference knows is that shape. The values the rest of the
graph reads become initializers and the nodes that computed them go. Folding exposes shapes
(a Pad whose pads were computed now has a known output shape), so shape inference and the
scan repeat while anything folds.

Size rule: a fold must not grow the model. A node whose result is larger than ``SIZE_LIMIT``
and larger than all it reads (an ``Expand``, ``Tile`` or ``ConstantOfShape`` to a large shape,
a broadcasting product) stays a run-time op instead of bloating the file, unless its result is
a layer's weight: everything that computes a Conv, ConvTranspose or Gemm weight or bias, a
MatMul operand or a normalization's parameters is folded whatever its size, since the model
stores that weight anyway and its generating graph goes.

Left alone: nodes outside the default domain, nodes that read or write bfloat16, float8 or
4-bit tensors (numpy has no arithmetic of its own for them), nodes with subgraphs
(If/Loop/Scan) and what they read, random draws, ``DequantizeLinear`` (what onnxruntime
makes its quantized kernels of; its own folding keeps it too), graph outputs (they keep their
nodes), initializers that are also graph inputs (a caller may override them), and nodes the
evaluator cannot run (they run at run time).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from onnxrep import interpret, io
from onnxrep.graph import ShapeInfo, overridable

FAMILY = "constants"
SIZE_LIMIT = 1 << 22
MAX_ROUNDS = 4
WEIGHT_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2, 3, 4), "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
}
"""Inputs of layers that hold weights (when they are constants)."""
WIDENED = frozenset({
    "Add", "Sub", "Mul", "Div", "Sum", "Mean", "Neg", "Sqrt", "Reciprocal", "Einsum", "MatMul",
    "Gemm", "Pad", "Reshape", "Transpose", "Concat", "Unsqueeze", "Squeeze", "Expand", "Tile",
    "Slice", "Gather", "Identity", "Flatten", "ReduceSum", "ReduceMean", "Split",
})
"""Arithmetic and data movement that a weight's generating graph computes in float64 (its
result is rounded once to the declared dtype, as every fold's is)."""
RANDOM = frozenset({"RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
                    "Dropout"})
"""Ops that draw random numbers (Dropout does when training): a new draw at every run."""
KEPT = frozenset({"DequantizeLinear"})
"""Ops kept even on constants, as onnxruntime's own constant folding keeps them: a
``DequantizeLinear`` of a constant is how a quantized model stores a weight, and the
quantized kernels (QLinearConv, QLinearMatMul, ...) are made from it; its float result in
its place would leave the runtime a float op between Q/DQ pairs (slower, and re-quantized
by the runtime with other scales)."""
SHAPE_READERS = ("Shape", "Size", "CastLike")
"""Ops that fold from what shape inference knows of a variable (its shape, its type)."""
BOUNDED = frozenset({
    "Constant", "Shape", "Size", "Cast", "CastLike", "Reshape", "Transpose", "Squeeze",
    "Unsqueeze", "Flatten", "Identity", "Slice", "Concat", "Split", "Neg", "Abs", "Not",
    "Floor", "Ceil", "Sqrt", "Reciprocal",
})
"""Ops whose result is never larger than what they read (no size pre-check needed)."""
PLAIN = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BOOL, onnx.TensorProto.STRING, onnx.TensorProto.INT8, onnx.TensorProto.INT16,
    onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
})
"""Element types constant folding computes in numpy."""


class _Row(NamedTuple):
    """A node's fields, read out of its protobuf once per scan (each read of a protobuf
    field builds new Python objects; the scan looks at every field several times)."""

    op: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    proto: onnx.NodeProto


@dataclass
class Folded:
    """The result of :func:`prepare`: the model to optimize and what became of it."""

    model: onnx.ModelProto
    shapes: ShapeInfo
    light: onnx.ModelProto
    removed: int = 0
    notes: list[str] = field(default_factory=list)


def prepare(model: onnx.ModelProto, light: onnx.ModelProto, shapes: ShapeInfo,
            in_place: bool) -> Folded:
    """Fold the constant subgraphs of ``model`` until nothing more folds. ``light`` and
    ``shapes`` are its light copy and what shape inference knows of it; ``in_place`` lets
    the model itself be edited (else a copy is, if anything folds)."""
    out = Folded(model, shapes, light)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    for _ in range(MAX_ROUNDS):
        step = _Round(out.model, out.shapes, opset)
        if not step.folded:
            break
        if out.model is model and not in_place:
            out.model = io.model_without(model, "node", "initializer")
            step.write(out.model, fresh=True)
        else:
            step.write(out.model, fresh=False)
        out.removed += len(step.folded)
        out.light = io.light_copy(out.model, node_metadata=False)
        out.shapes = step.settled(out.model) or ShapeInfo.infer(out.model, out.light)
        if not any(n.op_type in SHAPE_READERS for n in step.kept):
            break  # every node of constants folded in this scan: only shapes add more
    return out


class _Round:
    """One scan of the graph: which nodes fold, and the values the rest reads."""

    def __init__(self, model: onnx.ModelProto, shapes: ShapeInfo, opset: int) -> None:
        g = model.graph
        self.source = g
        self.defaults = overridable(model)
        """Initializers a caller may override: their values are no constants."""
        self.initializers = {t.name: t for t in g.initializer if t.name not in self.defaults}
        self.values: dict[str, np.ndarray] = {}
        self.wide: dict[str, np.ndarray] = {}
        """float64 values of float32/float16 ones that a weight's generating graph computed."""
        self.folded: list[int] = []
        self._memo: dict[tuple[object, ...], list[np.ndarray] | None] = {}
        """Results by what determines them (see :meth:`_evaluate`)."""
        self._inference: dict[tuple[object, ...], list[tuple[int, ...] | None]] = {}
        """Output shapes by what determines them (see :meth:`_infer`)."""
        self.inferred = shapes
        """What shape inference knew of the graph before the scan."""
        self.shapes = shapes.shapes
        """Static shapes: what inference knew, and what this scan learns (copied on write)."""
        self._learned = False
        outputs = {v.name for v in g.output}
        rows = [_Row(n.op_type, n.domain, tuple(n.input), tuple(n.output), n) for n in g.node]
        with np.errstate(all="ignore"):  # run time would compute the same Inf or NaN
            self._scan(rows, shapes, opset, outputs)
        dead = _dead(rows, set(self.folded), outputs)  # what only folded shapes read
        self.folded = sorted(set(self.folded) | dead)
        folded = set(self.folded)
        kept = [r for i, r in enumerate(rows) if i not in folded]
        self.kept = [r.proto for r in kept]
        self.read = {x for r in kept for x in r.inputs} | outputs | _subgraph_reads(
            self.kept)
        self.frontier = {name: v for name, v in self.values.items()
                         if name in self.read and name not in self.initializers}

    def _scan(self, rows: list[_Row], shapes: ShapeInfo, opset: int,
              outputs: set[str]) -> None:
        makers = _weight_makers(rows, self.source)
        exotic = {name for name, elem in shapes.dtypes.items() if elem not in PLAIN}
        for i, row in enumerate(rows):
            if row.domain not in ("", "ai.onnx") or not outputs.isdisjoint(row.outputs):
                continue
            if row.op in KEPT:
                self._infer(row, shapes, opset)
                continue
            if exotic and not (exotic.isdisjoint(row.inputs)
                               and exotic.isdisjoint(row.outputs)):
                continue
            weight = bool(makers) and not makers.isdisjoint(row.outputs)
            if not weight and row.op not in BOUNDED and _huge(row.outputs, shapes):
                continue
            result = self._widened(row, opset) if weight else None
            if result is None:
                result = self._evaluate(row, shapes, opset)
            if result is None or (not weight and self._grows(row, result)):
                self._infer(row, shapes, opset)
                continue
            for name, value in zip(row.outputs, result, strict=False):
                if name:
                    self.values[name] = value
            self.folded.append(i)

    def _constant(self, name: str) -> np.ndarray | None:
        if name in self.values:
            return self.values[name]
        tensor = self.initializers.get(name)
        if tensor is None:
            return None
        value = numpy_helper.to_array(tensor)
        self.values[name] = value
        return value

    def _evaluate(self, row: _Row, shapes: ShapeInfo,
                  opset: int) -> list[np.ndarray] | None:
        """The node's outputs if they are constants, else None.

        A node that computes what an earlier node of the scan computed (the same op,
        attributes and outputs asked for, on the very same input arrays; a Constant of the
        same value; the Shape of a tensor of the same shape) gets that node's result, the
        same arrays: exported border fills repeat one index computation per layer, so most of
        their nodes are such repeats. Results are never written into, so sharing them is safe."""
        op, node, read = row.op, row.proto, row.inputs
        if op in ("Shape", "Size") and read and read[0] not in self.values and (
            read[0] not in self.initializers
        ):
            shape = self.shapes.get(read[0])
            if shape is None or any(d is None for d in shape):
                return None
            key: tuple[object, ...] = ("shape of", op, _attributes(node), shape)
            if key not in self._memo:
                probe = np.lib.stride_tricks.as_strided(  # its shape, and no memory behind it
                    np.zeros(1, dtype=np.uint8), tuple(int(d) for d in shape),
                    (0,) * len(shape))
                self._memo[key] = interpret.run(node, [probe], opset)
            return self._memo[key]
        if op == "CastLike" and len(read) == 2:
            value, elem = self._constant(read[0]), shapes.dtypes.get(read[1])
            if value is None or not elem:
                return None
            key = ("like", op, _attributes(node), id(value), elem)
            if key not in self._memo:
                like = np.empty(0, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))
                self._memo[key] = self._run(node, [value, like], opset)
            return self._memo[key]
        if op == "Constant":
            key = ("constant", op, _attributes(node))
            if key not in self._memo:
                value = _constant_attribute(node)
                self._memo[key] = None if value is None else [value]
            if self._memo[key] is not None:
                return self._memo[key]
        elif not read or op in RANDOM:
            return None  # a generator or a random draw is no constant
        inputs: list[np.ndarray | None] = []
        for name in read:
            value = self._constant(name) if name else None
            if name and value is None:
                return None
            inputs.append(value)
        # the ids are those of arrays self.values holds: none is freed while the scan runs
        key = ("run", op, row.domain, _attributes(node), _present(row.outputs),
               *(id(v) for v in inputs))
        if key not in self._memo:
            self._memo[key] = self._run(node, inputs, opset)
        return self._memo[key]

    def _infer(self, row: _Row, shapes: ShapeInfo, opset: int) -> None:
        """Learn the static shapes of a node that stays, where inference did not know them
        but can now: a Pad whose pads were computed, a Reshape of a folded shape. Shapes
        read downstream (a Shape of its output) then fold in this same scan. What inference
        says depends only on the op, its attributes, the outputs asked for, its inputs'
        types and shapes and the values of its small integer inputs: a node like an earlier
        one reuses its answer."""
        if all(_static(self.shapes.get(o)) for o in row.outputs if o):
            return
        known = []
        for name in row.inputs:
            if not name:
                known.append(None)
                continue
            value = self.values.get(name)
            shape = value.shape if value is not None else self.shapes.get(name)
            elem = shapes.dtypes.get(name)
            if not _static(shape) or not elem:
                return
            small = value is not None and value.dtype.kind in "iu" and value.size <= 64
            known.append((elem, tuple(shape), (value.dtype.str, value.tobytes()) if small
                          else None))
        key = ("infer", row.op, row.domain, _attributes(row.proto), _present(row.outputs),
               *known)
        if key not in self._inference:
            self._inference[key] = self._inferred(row.proto, shapes, opset)
        for name, shape in zip(row.outputs, self._inference[key], strict=False):
            if name and shape is not None:
                if not self._learned:
                    self.shapes, self._learned = dict(self.shapes), True
                self.shapes[name] = shape

    def _inferred(self, node: onnx.NodeProto, shapes: ShapeInfo,
                  opset: int) -> list[tuple[int, ...] | None]:
        """The static output shapes onnx infers for ``node`` (None where it cannot tell)
        from what this scan knows of its inputs."""
        types, data = {}, {}
        for name in node.input:
            if not name:
                continue
            value = self.values.get(name)
            shape = value.shape if value is not None else self.shapes[name]
            types[name] = onnx.helper.make_tensor_type_proto(shapes.dtypes[name], shape)
            if value is not None and value.dtype.kind in "iu" and value.size <= 64:
                data[name] = numpy_helper.from_array(value, name)
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
            inferred = onnx.shape_inference.infer_node_outputs(
                schema, node, types, data,
                opset_imports=[onnx.helper.make_opsetid("", opset)])
        except Exception:  # inference is advisory: without it the Shape stays
            return []
        out: list[tuple[int, ...] | None] = []
        for name in node.output:
            tt = inferred[name].tensor_type if name in inferred else None
            static = tt is not None and tt.HasField("shape") and all(
                d.HasField("dim_value") for d in tt.shape.dim)
            out.append(tuple(d.dim_value for d in tt.shape.dim) if static else None)
        return out

    def _widened(self, row: _Row, opset: int) -> list[np.ndarray] | None:
        """The outputs of a node that computes a float32 or float16 weight, computed in
        float64 and rounded once (None if it is not such a node or not a constant)."""
        if row.op not in WIDENED:
            return None
        declared, wide = [], []
        for name in row.inputs:
            value = self._constant(name) if name else None
            if name and value is None:
                return None
            declared.append(value)
            wide.append(self.wide.get(name, value))
        floats = {v.dtype for v in declared if v is not None and v.dtype.kind == "f"}
        if len(floats) != 1 or not floats <= {np.dtype(np.float32), np.dtype(np.float16)}:
            return None
        (dtype,) = floats
        wide = [v.astype(np.float64) if v is not None and v.dtype.kind == "f" else v
                for v in wide]
        result = self._run(row.proto, wide, opset)
        if result is None:
            return None
        out = []
        for name, value in zip(row.outputs, result, strict=False):
            if value.dtype == np.float64:
                self.wide[name] = value
                value = value.astype(dtype)
            out.append(value)
        return out

    @staticmethod
    def _run(node: onnx.NodeProto, values: list[np.ndarray | None],
             opset: int) -> list[np.ndarray] | None:
        try:
            return interpret.run(node, values, opset)
        except (interpret.Unevaluable, ValueError, TypeError, IndexError, OverflowError):
            return None  # left to run time

    def _grows(self, row: _Row, result: list[np.ndarray]) -> bool:
        """The result exceeds ``SIZE_LIMIT`` and everything the node reads."""
        made = sum(v.nbytes for v in result)
        if made <= SIZE_LIMIT:
            return False
        read = sum(v.nbytes for v in (self._constant(x) for x in row.inputs if x)
                   if v is not None)
        return made > read

    def settled(self, model: onnx.ModelProto) -> ShapeInfo | None:
        """What shape inference would say of ``model`` (the folded graph), when it cannot say
        more than it said before the scan: inference had a static shape and a type for every
        tensor the kept nodes read or write (a fold changes the value of no tensor that stays,
        and the new initializers' shapes are their values'). None when it may learn more."""
        before = self.inferred
        g = model.graph
        names = {x for n in self.kept for x in (*n.input, *n.output) if x}
        names.update(v.name for v in (*g.input, *g.output))
        defaults = self.defaults  # folding neither adds graph inputs nor makes defaults
        names.difference_update(t.name for t in g.initializer if t.name not in defaults)
        if any(not _static(before.shapes.get(x)) or x not in before.dtypes for x in names):
            return None
        info = ShapeInfo({x: before.shapes[x] for x in names}, {x: before.dtypes[x] for x in names})
        info.add_initializers(model)  # as ShapeInfo.infer does
        return info

    def write(self, model: onnx.ModelProto, fresh: bool) -> None:
        """Make ``model`` (the source edited in place, or a fresh copy without nodes and
        initializers) the folded model."""
        g = model.graph
        keep = self.read
        if fresh:
            g.node.extend(self.kept)
            g.initializer.extend(t for t in self.source.initializer if t.name in keep)
        else:
            for i in reversed(self.folded):
                del g.node[i]
            for i in reversed(range(len(g.initializer))):
                if g.initializer[i].name not in keep:
                    del g.initializer[i]
        inputs = {v.name for v in g.input}
        for name, value in self.frontier.items():
            g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        if model.ir_version < 4:  # every initializer is also a graph input there
            present = {t.name for t in g.initializer}
            stale = [i for i, v in enumerate(g.input)
                     if v.name not in present and v.name in self.initializers]
            for i in reversed(stale):
                del g.input[i]
            for name, value in self.frontier.items():
                if name not in inputs:
                    g.input.append(onnx.helper.make_tensor_value_info(
                        name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype),
                        np.shape(value)))
        live = {o for n in self.kept for o in n.output} | inputs
        kept_info = [v for v in g.value_info if v.name in live]
        del g.value_info[:]
        g.value_info.extend(kept_info)


def _dead(rows: list[_Row], folded: set[int], outputs: set[str]) -> set[int]:
    """Indices of the nodes no kept node, graph output or subgraph reads any more (a Slice
    whose output only a folded Shape read): ONNX ops have no side effects, so they go."""
    readers: dict[str, int] = {}
    for i, r in enumerate(rows):
        if i not in folded:
            for x in r.inputs:
                readers[x] = readers.get(x, 0) + 1
    pinned = outputs | _subgraph_reads(
        [r.proto for i, r in enumerate(rows) if i not in folded])
    dead: set[int] = set()
    for i in reversed(range(len(rows))):
        r = rows[i]
        if i in folded or r.domain not in ("", "ai.onnx"):
            continue
        if any(readers.get(o, 0) or o in pinned for o in r.outputs if o):
            continue
        dead.add(i)
        for x in r.inputs:
            readers[x] -= 1
    return dead


def _weight_makers(rows: list[_Row], g: onnx.GraphProto) -> set[str]:
    """The tensors computed from constants only on the way to a layer's weight slot (a
    MatMul's or Gemm's activation operand is no weight, so what computes it is none)."""
    producer: dict[str, _Row] = {}
    derived = {"", *(t.name for t in g.initializer)}  # "": an omitted optional input
    stack = []
    for r in rows:  # topological: constants, and shapes of anything
        for o in r.outputs:
            producer[o] = r
        if r.op in ("Shape", "Size") or derived.issuperset(r.inputs):
            derived.update(r.outputs)
        slots = WEIGHT_SLOTS.get(r.op)
        if slots:
            stack.extend(r.inputs[i] for i in slots if i < len(r.inputs))
    derived.discard("")
    makers: set[str] = set()
    while stack:
        name = stack.pop()
        if name in makers or name not in derived or name not in producer:
            continue
        makers.add(name)
        stack.extend(producer[name].inputs)
    return makers


def _subgraph_reads(nodes: list[onnx.NodeProto]) -> set[str]:
    """Names the subgraphs of ``nodes`` read (they must stay computable)."""
    names: set[str] = set()
    for n in nodes:
        for sub in io.node_subgraphs(n):
            names.update(x for s in sub.node for x in s.input)
            names.update(_subgraph_reads(list(sub.node)))
    return names


def _present(outputs: tuple[str, ...]) -> tuple[bool, ...]:
    """Which outputs a node asks for: how many there are decides some results (an equal
    Split's parts), and an omitted one is not computed."""
    return tuple(bool(o) for o in outputs)


def _attributes(node: onnx.NodeProto) -> tuple[bytes, ...]:
    """The node's attributes, serialized: with its op and inputs, what its result depends on."""
    return tuple(a.SerializeToString() for a in node.attribute)


def _constant_attribute(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor of a Constant given as ``value`` (the usual form; None for the others)."""
    if len(node.attribute) == 1 and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _static(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _huge(outputs: tuple[str, ...], shapes: ShapeInfo) -> bool:
    """Shape inference says a node's ``outputs`` are far over the size limit (not even worth
    computing to look at)."""
    total = 0
    for name in outputs:
        shape, elem = shapes.shapes.get(name), shapes.dtypes.get(name)
        if shape is None or elem is None or None in shape:
            return False
        total += math.prod(shape) * _itemsize(elem)
    return total > 16 * SIZE_LIMIT


@functools.cache
def _itemsize(elem: int) -> int:
    return onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize
