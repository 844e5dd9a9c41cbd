"""Small helpers over onnx-graphsurgeon: reading the graph, and the one canonicalization.

gs nodes and tensors are unhashable and compare by name, so identity is ``is`` and sets/dicts
are keyed by ``id()`` throughout.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxrep.errors import OnnxrepError, one_line
from onnxrep.io import light_copy, node_subgraphs
from onnxrep.refusal import Refused

__all__ = [
    "Names",
    "ShapeInfo",
    "SparseInitializer",
    "attributes",
    "canonicalize",
    "constant",
    "fold_refusal",
    "is_constant",
    "is_default_domain",
    "is_float",
    "numpy_dtypes",
    "release_overridable",
    "release_sparse",
    "replace_uses",
    "shared_reason",
    "splice",
    "subgraph_references",
]

FLOATS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16))


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """onnx-graphsurgeon's import of ``model``, without the main graph's ``value_info``.

    What value_info gives gs is each intermediate Variable's dtype and shape, and gs builds a
    Variable per entry: a third of the import's time on a dynamo export, which lists every
    tensor. The passes take shapes and types from :class:`ShapeInfo` instead (which knows
    what value_info says and what inference adds): :func:`numpy_dtypes` types the variables
    from it, :func:`onnxrep.idioms.find` reads ranks from it, and the export carries the
    original value_info over. The model is read through a view that shows an empty
    value_info, never copied nor changed."""
    return gs.import_onnx(_View(model, graph=_View(model.graph, value_info=())))


class _View:
    """``message`` read through attribute access, some fields shown as ``shown`` says."""

    def __init__(self, message: object, **shown: object) -> None:
        self._message, self._shown = message, shown

    def __getattr__(self, name: str) -> object:
        shown = self.__dict__["_shown"]
        return shown[name] if name in shown else getattr(self.__dict__["_message"], name)


def is_default_domain(node: gs.Node) -> bool:
    return node.domain in ("", "ai.onnx", None)


def is_constant(tensor: gs.Tensor | None) -> bool:
    """An initializer (checked without reading its values)."""
    return isinstance(tensor, gs.Constant)


SMALL_CONSTANT = 1 << 14
"""Constants of at most this many bytes are decoded once per import (see ``constant``)."""
_DECODED = "_onnxrep_decoded"


def constant(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The values of a constant tensor (an initializer), else ``None``.

    Large weights are read from the model each time: gs's ``Constant.values`` would keep a
    decoded copy of every weight that was ever looked at, and export it re-encoded instead of
    the original tensor. Small ones (BN statistics, scales, biases, shapes: read once per
    candidate that passes them) are decoded once and kept, read-only, beside the lazy tensor.
    """
    if not isinstance(tensor, gs.Constant):
        return None
    raw = tensor._values  # gs has no public read that leaves a lazily loaded tensor lazy
    if not isinstance(raw, LazyValues):
        return raw
    kept = raw.__dict__.get(_DECODED)
    if kept is not None:
        return kept
    try:
        values = numpy_helper.to_array(raw.tensor)  # one copy of the bytes (gs's load makes two)
    except ValueError as e:  # raw bytes of another length than the shape (checker-approved)
        raise OnnxrepError(f"initializer {tensor.name!r} does not hold the data its shape and "
                           f"type say, which onnxruntime refuses too ({one_line(e)})") from None
    if values.nbytes <= SMALL_CONSTANT:
        values.flags.writeable = False
        raw.__dict__[_DECODED] = values
    return values


def is_float(dtype: object) -> bool:
    """float16, float32, float64 and bfloat16: the types a fold computes in float64 and rounds
    to once (numpy has no bfloat16; ml_dtypes gives it one)."""
    return np.dtype(dtype) in FLOATS  # type: ignore[call-overload]


def fold_refusal(what: str, dtype: object) -> Refused:
    """Why ``what`` of ``dtype`` (not :func:`is_float`) is not folded, naming the dtype."""
    d = np.dtype(dtype)  # type: ignore[call-overload]
    if d.name.startswith("float") and d.itemsize == 1:  # ml_dtypes' float8 and float4 types
        return Refused(f"{what} is {d.name}: weights in floats of 8 bits or fewer are not "
                       f"folded (a fold rounded to them is rarely exact)")
    return Refused(f"{what} is {d.name}, not a float")


def numpy_dtypes(graph: gs.Graph, shapes: ShapeInfo | None = None) -> None:
    """Give every tensor of ``graph`` a numpy dtype: onnx-graphsurgeon keeps ONNX's type number
    for the types numpy lacks (bfloat16, the float8 types), which ml_dtypes provides, and a
    variable it has no type for (:func:`import_graph` shows it no value_info) gets the type
    shape inference found (``shapes``)."""
    for t in graph.tensors().values():
        elem = t.dtype
        if elem is None and shapes is not None and isinstance(t, gs.Variable):
            elem = shapes.dtypes.get(t.name)
        if not isinstance(elem, int) or isinstance(elem, bool):
            continue
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        except (KeyError, TypeError, ValueError):
            continue  # strings, types this onnx does not know: no rule reads them
        if isinstance(t, gs.Constant):
            if isinstance(t._values, LazyValues):
                t._values.dtype = dtype
        else:
            t.dtype = dtype


def attributes(node: gs.Node, known: dict[str, object]) -> dict[str, object]:
    """The node's attributes over ``known`` defaults; any other attribute is refused."""
    unknown = sorted(set(node.attrs) - set(known))
    if unknown:
        raise Refused(f"{node.op} {node.name!r} has unhandled attribute(s) {unknown}")
    values = dict(known)
    values.update(node.attrs)
    return values


def shared_reason(
    t: gs.Tensor, reader: gs.Node | None, graph: gs.Graph, pinned: set[str]
) -> str | None:
    """Why ``reader`` may not absorb the computation of ``t`` (``None`` when it may): ``t``
    is a graph output, is read inside a subgraph, or has other readers (not checked when
    ``reader`` is None)."""
    if any(o is t for o in graph.outputs):
        return f"{t.name!r} is a graph output"
    if t.name in pinned:
        return f"{t.name!r} is read inside a subgraph"
    others = {id(n): n for n in t.outputs if n is not reader}
    if reader is not None and others:
        return f"{t.name!r} also feeds " + ", ".join(repr(n.name or n.op) for n in others.values())
    return None


def subgraph_references(graph: gs.Graph) -> set[str]:
    """Names of outer-scope tensors that subgraphs (If/Loop/Scan bodies) read implicitly."""
    names: set[str] = set()
    for node in graph.nodes:
        for sub in _subgraphs(node):
            local = {t.name for t in sub.inputs} | {
                t.name for n in sub.nodes for t in n.outputs
            }
            for n in sub.nodes:
                names.update(t.name for t in n.inputs if t.name and t.name not in local)
            names.update(t.name for t in sub.outputs if t.name not in local)
            names.update(subgraph_references(sub) - local)
    return names


def _subgraphs(node: gs.Node) -> Iterator[gs.Graph]:
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, gs.Graph))


class Names:
    """Fresh, unique, deterministic names for new tensors and nodes."""

    def __init__(self, taken: Iterable[str]) -> None:
        self._taken = set(taken)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> Names:
        return cls(_all_names(model.graph))

    def fresh(self, hint: str) -> str:
        base = re.sub(r"[^0-9A-Za-z_./:-]", "_", hint) or "onnxrep"
        for i in itertools.count():
            name = base if i == 0 else f"{base}_{i}"
            if name not in self._taken:
                self._taken.add(name)
                return name
        raise AssertionError("unreachable")


def _all_names(g: onnx.GraphProto) -> set[str]:
    names = {t.name for t in g.initializer} | {v.name for v in g.input} | {
        v.name for v in g.output
    } | {v.name for v in g.value_info} | {s.values.name for s in g.sparse_initializer}
    for node in g.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for sub in node_subgraphs(node):
            names |= _all_names(sub)
    return names


@dataclass
class ShapeInfo:
    """Element type and shape (ints, or ``None`` for unknown dims) of each tensor, by name."""

    shapes: dict[str, tuple[int | None, ...] | None] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def infer(cls, model: onnx.ModelProto, light: onnx.ModelProto | None = None) -> ShapeInfo:
        """Run ONNX shape inference on a copy of the model without its large weights
        (``light``, if the caller has made it already)."""
        skeleton = light if light is not None else light_copy(model)
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
        except Exception:  # inference is advisory: without it only fewer folds are proven
            inferred = skeleton
        info = cls()
        g = inferred.graph
        for vi in itertools.chain(g.input, g.value_info, g.output):
            info._add(vi)
        info.add_initializers(model)
        return info

    def add_initializers(self, model: onnx.ModelProto) -> None:
        """Record the shapes and types ``model``'s initializers (sparse ones too) have, but for
        defaults a caller may override: their shape is what their input declares."""
        defaults = overridable(model)
        for t in model.graph.initializer:
            if t.name not in defaults:
                self.shapes[t.name] = tuple(t.dims)
                self.dtypes[t.name] = t.data_type
        for s in model.graph.sparse_initializer:
            self.shapes[s.values.name] = tuple(s.dims)
            self.dtypes[s.values.name] = s.values.data_type

    def _add(self, vi: onnx.ValueInfoProto) -> None:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            return
        if tt.elem_type:  # 0: inference could not tell (an op reading a sparse initializer)
            self.dtypes[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            self.shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim
            )

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def dim(self, name: str, axis: int) -> int | None:
        shape = self.shapes.get(name)
        if shape is None or axis >= len(shape):
            return None
        return shape[axis]


# --------------------------------------------------------------------------------------------
# canonicalization


def canonicalize(graph: gs.Graph, pinned: set[str]) -> int:
    """Identity nodes and Constant nodes become plain initializers; nothing else changes.

    ``Constant`` → an initializer of the same name; ``Identity(t)`` → its consumers read ``t``.
    Tensors in ``pinned`` (graph outputs, names subgraphs read) keep their producers.
    Returns the number of nodes removed.
    """
    removed: dict[int, gs.Node] = {}
    outputs = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        if not is_default_domain(node) or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if out.name in pinned or id(out) in outputs:
            continue
        if node.op == "Constant":
            values = _constant_node_value(node)
            if values is None:
                continue
            replacement: gs.Tensor = gs.Constant(out.name, values)
        elif node.op == "Identity" and node.inputs and not node.attrs:
            replacement = node.inputs[0]
        else:
            continue
        replace_uses(out, replacement)
        removed[id(node)] = node
    splice(graph, removed)
    return len(removed)


def overridable(model: onnx.ModelProto) -> set[str]:
    """Names of the initializers that are also graph inputs: defaults a caller may override
    (with a tensor of another shape, too). Before IR 4 every initializer had to be listed as
    an input, so there the listing means nothing."""
    if model.ir_version < 4:
        return set()
    inputs = {v.name for v in model.graph.input}
    return {t.name for t in model.graph.initializer if t.name in inputs}


def release_overridable(graph: gs.Graph, model: onnx.ModelProto) -> set[str]:
    """Initializers that are also graph inputs are defaults a caller may override: make them
    graph-input variables so no rule treats them as constants. Returns their names (the
    exporter puts the original initializers back; see :func:`overridable`)."""
    names = overridable(model)
    order = [v.name for v in model.graph.input]
    if not names:
        return names
    tensors = graph.tensors()
    by_name = {t.name: t for t in graph.inputs}
    for name in names:
        t = tensors.get(name)
        if isinstance(t, gs.Constant):
            var = gs.Variable(name, dtype=t.dtype, shape=list(t.shape))
            replace_uses(t, var)
            by_name[name] = var
    graph.inputs = [by_name[n] for n in order if n in by_name]
    return names


class SparseInitializer(gs.Variable):
    """A sparse initializer as the rules see it: a variable, never read as a constant."""


def release_sparse(graph: gs.Graph) -> None:
    """Sparse initializers pass through untouched: onnx-graphsurgeon imports them as constants,
    make them variables so no rule reads them (the exporter keeps the model's
    ``sparse_initializer`` list as it was)."""
    for t in list(graph.tensors().values()):
        if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues) and isinstance(
            t._values.tensor, onnx.SparseTensorProto
        ):
            replace_uses(t, SparseInitializer(t.name, dtype=t.dtype, shape=list(t.shape)))


def splice(
    graph: gs.Graph, removed: Mapping[int, gs.Node],
    replacements: Mapping[int, tuple[list[gs.Node], gs.Tensor]] | None = None,
) -> None:
    """Take the ``removed`` nodes (by ``id``) out of ``graph``, detached from their tensors,
    and put in the place of each node in ``replacements`` its new nodes, the last of which
    then writes the tensor given with them (the one the old node or chain wrote). The one
    graph edit every rewrite makes."""
    replacements = replacements or {}
    if not removed and not replacements:
        return
    _detach(removed)
    graph.nodes = [
        new for n in graph.nodes
        if id(n) not in removed or id(n) in replacements
        for new in (replacements[id(n)][0] if id(n) in replacements else [n])
    ]
    for news, t in replacements.values():
        news[-1].outputs.append(t)


def _detach(nodes: Mapping[int, gs.Node]) -> None:
    """Cut ``nodes`` (by ``id``) from their tensors, on both sides of each edge.

    What ``node.inputs.clear()`` does, but by identity and once per tensor: gs removes a node
    from a tensor's readers with ``list.remove``, which compares it with every reader before it
    by gs's ``Node.__eq__`` (names, attributes, inputs, outputs): on a tensor read by many
    nodes, most of a large rewrite's time."""
    tensors = {id(t): t for n in nodes.values() for t in (*n.inputs, *n.outputs)}
    for t in tensors.values():
        for side in (t.inputs, t.outputs):  # list's own methods: no syncing back to the nodes
            kept = [n for n in side if id(n) not in nodes]
            if len(kept) != len(side):
                list.clear(side)
                list.extend(side, kept)
    for n in nodes.values():
        list.clear(n.inputs)
        list.clear(n.outputs)


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node that reads ``old`` reads ``new`` instead."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return value.values if isinstance(value, gs.Constant) else None
    scalar = {"value_float": np.float32, "value_int": np.int64}
    for key, dtype in scalar.items():
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    vector = {"value_floats": np.float32, "value_ints": np.int64}
    for key, dtype in vector.items():
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    return None  # strings and sparse values stay as they are


