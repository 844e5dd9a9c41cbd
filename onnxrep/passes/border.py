"""A border filled with per-channel constants: DBB's "BN and pad" in its exported forms.

The algebra: docs/algebra.md §5.

Before → after: ``ScatterND(ScatterND(Pad(BN(Conv1x1(x)))))`` (TorchScript) or the
``Pad → Transpose → ScatterND … → Transpose`` chain (dynamo) → part of one Conv.

The DBB layer pads ``y = BN(..)`` and then writes ``BN(0)`` per channel into the border by slice
assignment, which exporters turn into chains of data-movement ops with constant indices. Such a
chain is a *routing*: every output element is a copy of one input element or one constant
element, whatever the values. The rule proves what the routing is without evaluating the model:
it runs the chain in onnx's reference evaluator on int64 *tags* — the input's own element
indices, and a unique negative id for every constant element — so the output says, element by
element, where it came from. If that is "the input, offset by ``p0`` on each spatial axis, and a
border of one constant value per channel ``c``", the chain is ``pad(y, pads, c)``. When ``y``
is a pointwise map whose bias equals ``c`` (the value at zero input, as DBB writes it), that is
exactly the map with larger pads (numerics.pad), and a following Conv or AveragePool merges as
in docs/algebra.md §3 and §5. Only chains of the ops in ``ROUTING`` with constant side inputs,
on static shapes, qualify; anything else keeps its nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from onnxrep import interpret
from onnxrep import numerics as nx
from onnxrep.graph import constant, is_constant, is_float
from onnxrep.passes.regions import Candidate, RegionContext, rule
from onnxrep.refusal import Refused

FAMILY = "border-fill"

ROUTING: dict[str, tuple[int, ...]] = {
    # op → input slots whose values flow into the output (the rest are indices or shapes)
    "Pad": (0, 2), "ScatterND": (0, 2), "ScatterElements": (0, 2), "Transpose": (0,),
    "Identity": (0,), "Slice": (0,), "Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
    "Flatten": (0,), "Expand": (0,), "Gather": (0,), "Tile": (0,), "Where": (1, 2),
    "Concat": (),  # every input
}
MAX_ELEMENTS = 1 << 22
MAX_CHAIN = 64


def _data_slots(node: gs.Node) -> tuple[int, ...]:
    return tuple(range(len(node.inputs))) if node.op == "Concat" else ROUTING[node.op]


def _variable_slot(node: gs.Node) -> int | None:
    """The one input of ``node`` that is not a constant, if it is a data slot."""
    slots = [i for i, t in enumerate(node.inputs) if t.name and not is_constant(t)]
    if len(slots) != 1 or slots[0] not in _data_slots(node):
        return None
    if node.op in ("ScatterND", "ScatterElements") and node.attrs.get("reduction", "none") not in (
        "none", b"none"
    ):
        return None
    if node.op == "Pad" and (node.attrs.get("mode", "constant") not in ("constant", b"constant")
                             or len(node.inputs) < 2):
        return None
    return slots[0]


def _chain(end: gs.Node, ctx: RegionContext) -> tuple[list[gs.Node], int] | None:
    """The routing nodes ending at ``end`` (first to last) and the data slot of the first."""
    nodes = [end]
    slot = _variable_slot(end)
    while slot is not None and len(nodes) <= MAX_CHAIN:
        t = nodes[0].inputs[slot]
        producer = t.inputs[0] if t.inputs else None
        if (
            producer is None or producer.op not in ROUTING or len(producer.outputs) != 1
            or ctx.shared_reason(t, nodes[0]) is not None
        ):
            return nodes, slot
        prev_slot = _variable_slot(producer)
        if prev_slot is None:
            return nodes, slot
        nodes.insert(0, producer)
        slot = prev_slot
    return None


def _routing(nodes: list[gs.Node], slot: int, shape: tuple[int, ...], opset: int,
             proofs: dict[object, object]) -> tuple[Layout, np.ndarray] | None:
    """The chain's border layout (:func:`layout`) and the constants it reads, where tag
    ``-1 - i`` holds ``constants[i]`` (ids are handed out in that order, one per element);
    None when the chain is not such a fill.

    Each node runs in :mod:`onnxrep.interpret` (numpy, onnx's reference evaluator for what it
    does not implement) on int64 tags in place of its values. The tags depend only on the
    chain's ops, attributes, index inputs and the shapes of its data inputs, not on the
    constants' values: a chain like one proven before (``proofs``) reuses its layout."""
    values: list[np.ndarray] = []
    plans: list[list[np.ndarray | str | None]] = []
    key: list[object] = ["routing", shape, slot, opset]
    next_id = -1
    for k, node in enumerate(nodes):
        routed = slot if k == 0 else _variable_slot(node)
        plan: list[np.ndarray | str | None] = []
        key += [node.op, _attributes(node)]
        for i, t in enumerate(node.inputs):
            value = constant(t)
            if i == routed:
                plan.append("routed")
                key.append("routed")
            elif not t.name or value is None:
                plan.append(None)  # an omitted optional input
                key.append(None)
            elif i in _data_slots(node):
                v = np.asarray(value, dtype=np.float64)
                tags = np.arange(next_id, next_id - v.size, -1, dtype=np.int64)
                values.append(v.reshape(-1))
                next_id -= v.size
                plan.append(tags.reshape(v.shape))
                key.append(("tags", v.shape))
            else:
                v = np.asarray(value)
                plan.append(v)
                key.append((v.dtype.str, v.shape, v.tobytes()))
        if node.op == "Pad" and (len(plan) < 3 or plan[2] is None):
            values.append(np.zeros(1))  # the default pad value, made visible as a tag
            plan = [*plan[:2], np.array(next_id, dtype=np.int64), *plan[3:]]
            next_id -= 1
            key.append("default pad value")
        plans.append(plan)
    memo = tuple(key)
    if memo not in proofs:
        out = _run_chain(nodes, plans, shape, opset)
        proofs[memo] = layout(out, shape) if out is not None else None
    found = proofs[memo]
    if found is None:
        return None
    assert isinstance(found, Layout)
    return found, np.concatenate(values) if values else np.zeros(0)


def _run_chain(nodes: list[gs.Node], plans: list[list[np.ndarray | str | None]],
               shape: tuple[int, ...], opset: int) -> np.ndarray | None:
    """The chain's output on the input's own element indices (None if a node cannot run)."""
    current = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    for node, plan in zip(nodes, plans, strict=True):
        inputs = [current if isinstance(x, str) else x for x in plan]  # x: "routed"
        proto = helper.make_node(node.op, [f"i{i}" for i in range(len(inputs))], ["y"],
                                 **dict(node.attrs))
        try:
            (current,) = interpret.run(proto, inputs, opset)[:1]
        except Exception:  # a form nothing here runs: not provably a routing
            return None
    return current


def _attributes(node: gs.Node) -> tuple[object, ...]:
    """The node's attributes as a key (arrays by their bytes: their repr elides)."""
    return tuple(sorted(
        (name, (v.dtype.str, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else repr(v))
        for name, v in node.attrs.items()))


@dataclass(frozen=True)
class Layout:
    """A routing that is a border fill: the input sits at an offset inside a border (``pads``,
    ONNX order) whose cells in channel ``c`` hold the constants tagged ``cells[c]``."""

    pads: tuple[int, ...]
    cells: np.ndarray
    """int64 ``[channels, border cells]``: the tags (all negative) of the border, by channel."""

    def values(self, constants: np.ndarray) -> np.ndarray | None:
        """The one value per channel the border holds, or None if a channel holds several."""
        held = constants[-1 - self.cells]
        if not np.all(held == held[:, :1]):  # NaN never equals itself
            return None
        return held[:, 0].copy()


def layout(out: np.ndarray, shape: tuple[int, ...]) -> Layout | None:
    """The :class:`Layout` of the tags ``out`` of a routing from an input of ``shape``, if
    ``out`` is that input placed at an offset inside a border of constants only, the same
    cells in every channel; else ``None``."""
    if out.ndim != len(shape) or out.shape[:2] != shape[:2]:
        return None
    r = len(shape) - 2
    where = np.argwhere(out == 0)
    if len(where) != 1:
        return None
    begin = tuple(int(v) for v in where[0][2:])
    ends = tuple(out.shape[2 + i] - shape[2 + i] - begin[i] for i in range(r))
    if any(e < 0 for e in ends):
        return None
    spans = (slice(b, b + n) for b, n in zip(begin, shape[2:], strict=True))
    interior = (slice(None), slice(None), *spans)
    if not np.array_equal(out[interior], np.arange(np.prod(shape)).reshape(shape)):
        return None
    border = np.ones(out.shape, dtype=bool)
    border[interior] = False
    if not border.any() or np.any(out[border] >= 0):
        return None
    by_channel = np.moveaxis(out, 1, 0).reshape(shape[1], -1)
    ring = np.moveaxis(border, 1, 0).reshape(shape[1], -1)[0]  # the same for every channel
    return Layout(begin + ends, np.ascontiguousarray(by_channel[:, ring]))


@rule(FAMILY, *ROUTING)
def border_fill_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    if len(node.outputs) != 1:
        return []
    out = node.outputs[0]
    readers = out.outputs
    if len(readers) == 1 and readers[0].op in ROUTING and not ctx.shared_reason(out, readers[0]):
        return []  # not the end of a chain
    found = _chain(node, ctx)
    if found is None:
        return []
    nodes, slot = found
    start = nodes[0].inputs[slot]
    writers = ("Pad", "ScatterND", "ScatterElements", "Where", "Concat")
    if not ctx.candidates.get(id(start)) or not any(n.op in writers for n in nodes):
        return []
    shape = ctx.shapes.shapes.get(start.name)
    if shape is None or len(shape) < 3 or any(d is None for d in shape):
        ctx.note(node, FAMILY, f"border fill of {start.name!r} needs a static input shape")
        return []
    if int(np.prod(shape)) > MAX_ELEMENTS:
        return []
    routed = _routing(nodes, slot, tuple(shape), ctx.opset, ctx.proofs)
    values = routed[0].values(routed[1]) if routed is not None else None
    if routed is None or values is None:
        return []
    pads = routed[0].pads
    elem = ctx.shapes.dtypes.get(start.name, onnx.TensorProto.FLOAT)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    out_candidates = []
    reasons = []
    for c in ctx.operands(nodes[0], slot, FAMILY):
        try:
            padded = nx.pad(c.map, pads, values, tolerance=_tolerance(dtype))
        except Refused as e:
            reasons.append(str(e))
            continue
        out_candidates.append(c.extend(nodes, padded, FAMILY))
    if not out_candidates and reasons:
        ctx.note(node, FAMILY, reasons[-1])
    return out_candidates


def _tolerance(dtype: np.dtype) -> float:
    """How close a fill value must be to the map's bias: the exporter computed it in ``dtype``."""
    return 64 * float(np.finfo(dtype).eps) if is_float(dtype) else 0.0
