"""Operator idioms that runtimes fuse into one kernel, found so that no fold splits them.

Exporters write many activations and normalizations as chains of elementwise ops, and
onnxruntime recognizes the chains and runs each as one kernel. A fold that moves one constant
of such a chain into a neighbouring conv is exact and still makes the model slower: the
runtime no longer sees the idiom and runs every op on its own (and, in a conv network, has to
reorder layouts around each of them). Examples, ``x`` being the idiom's input:

=====================  ==========================================================================
GELU (erf)             ``x * 0.5 * (1 + erf(x / sqrt(2)))`` — in any order of the products, with
                       ``/ sqrt(2)`` or ``* (1 / sqrt(2))``
GELU (tanh)            ``x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``
SiLU / Swish           ``x * sigmoid(x)``, ``x * sigmoid(a * x)`` (QuickGelu: ``a = 1.702``)
HardSwish              ``x * HardSigmoid(x)``, ``x * clip(x + 3, 0, 6) / 6``
HardSigmoid            ``clip(x + 3, 0, 6) / 6``
Mish                   ``x * tanh(softplus(x))``
LayerNormalization     ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma + beta``
                       (ReduceMean / Sub / Pow / Add / Sqrt / Div / Mul / Add, below opset 17)
RMS normalization      ``x / sqrt(mean(x^2) + eps) * gamma``
Q/DQ group             ``DequantizeLinear`` → op → ``QuantizeLinear``, the quantized kernel
=====================  ==========================================================================

:func:`find` matches them structurally (operand order, Div or Mul by the reciprocal, constants
within a relative ``1e-3`` of the textbook value) and returns every node of every idiom; the
region engine and the dense-layer chains leave these nodes alone. The list is the first line of
defence; :mod:`onnxrep.audit` is the second, and catches any fusion this list does not name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.graph import ShapeInfo, constant, is_default_domain

__all__ = ["Idiom", "find"]

ARITHMETIC = ("Add", "Sub", "Mul", "Div", "Pow")
MAX_PATH = 8
"""Nodes an idiom's input chain may have (the tanh form of GELU has four)."""


@dataclass(frozen=True, eq=False)
class Idiom:
    """One occurrence of a fused idiom: its name and its nodes."""

    name: str
    nodes: tuple[gs.Node, ...]

    @property
    def reason(self) -> str:
        return (f"part of a {self.name} idiom that onnxruntime runs as one fused kernel; "
                "folding into it would split the kernel")


def find(graph: gs.Graph, shapes: ShapeInfo | None = None) -> list[Idiom]:
    """Every idiom occurrence in ``graph`` (a node belongs to at most one). ``shapes``, what
    shape inference knows of the graph, tells the ranks that decide whether a reduction is
    over the last axes (without it, only the shapes the model lists)."""
    found: list[Idiom] = []
    taken: set[int] = set()
    for node in graph.nodes:
        if not is_default_domain(node):
            continue
        matcher = _MATCHERS.get(node.op)
        idiom = matcher(node, shapes) if matcher is not None else None
        if idiom is None or any(id(n) in taken for n in idiom.nodes):
            continue
        taken.update(id(n) for n in idiom.nodes)
        found.append(idiom)
    return found


# --------------------------------------------------------------------------------------------
# reading the graph


def _scalar(t: gs.Tensor) -> float | None:
    """The value of a one-element float constant, else None."""
    value = constant(t)
    if value is None or value.size != 1 or np.asarray(value).dtype.kind != "f":
        return None
    return float(np.asarray(value).reshape(-1)[0])


def _near(value: float | None, target: float) -> bool:
    return value is not None and math.isclose(value, target, rel_tol=1e-3)


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if t.inputs else None


def _sole_reader(t: gs.Tensor) -> gs.Node | None:
    readers = list(t.outputs)
    if len(readers) != 1 or not is_default_domain(readers[0]):
        return None
    return readers[0]


def _other(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
    """The operand of a binary ``node`` that is not ``t``."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    return b if a is t else a if b is t else None


def _path(x: gs.Tensor, y: gs.Tensor) -> list[gs.Node] | None:
    """The arithmetic nodes computing ``y`` from ``x`` and constants (``[]`` when ``y is x``);
    None if ``y`` depends on anything else."""
    nodes: dict[int, gs.Node] = {}
    stack = [y]
    while stack:
        t = stack.pop()
        if t is x or isinstance(t, gs.Constant):
            continue
        p = _producer(t)
        if p is None or p.op not in ARITHMETIC or not is_default_domain(p):
            return None
        if id(p) not in nodes:
            nodes[id(p)] = p
            if len(nodes) > MAX_PATH:
                return None
            stack.extend(p.inputs)
    return list(nodes.values())


def _factor(node: gs.Node, t: gs.Tensor) -> float | None:
    """``node(t) = t * factor`` for a Mul by a constant or a Div of ``t`` by one."""
    if node.op not in ("Mul", "Div"):
        return None
    c = _scalar(_other(node, t)) if _other(node, t) is not None else None
    if c is None or (node.op == "Div" and (node.inputs[0] is not t or c == 0)):
        return None
    return c if node.op == "Mul" else 1.0 / c


def _products(a: gs.Tensor) -> Iterator[tuple[gs.Tensor, list[gs.Node], float]]:
    """Ways ``a`` is multiplied by one variable ``x`` and constants in at most three sole-reader
    Mul/Div nodes: yields ``(x, nodes, constant factor)``. Covers ``(x * a) * c``,
    ``(a * c) * x``, ``(x * c) * a`` and ``x * a`` in either operand order."""
    m1 = _sole_reader(a)
    if m1 is None or m1.op not in ("Mul", "Div") or len(m1.outputs) != 1:
        return
    o = _other(m1, a)
    if o is None:
        return
    f = _factor(m1, a)
    if f is not None:  # (a * c) * x
        m2 = _sole_reader(m1.outputs[0])
        if m2 is not None and m2.op == "Mul" and len(m2.outputs) == 1:
            x = _other(m2, m1.outputs[0])
            if x is not None and not isinstance(x, gs.Constant):
                yield x, [m1, m2], f
        return
    if m1.op != "Mul" or isinstance(o, gs.Constant):
        return
    h = _producer(o)
    if h is not None and _sole_reader(o) is m1 and h.op in ("Mul", "Div"):
        for x in h.inputs:  # (x * c) * a
            g = _factor(h, x)
            if g is not None and not isinstance(x, gs.Constant):
                yield x, [h, m1], g
    m2 = _sole_reader(m1.outputs[0])
    if m2 is not None:  # (x * a) * c
        g = _factor(m2, m1.outputs[0])
        if g is not None:
            yield o, [m1, m2], g
    yield o, [m1], 1.0  # x * a


def _plus_one(t: gs.Tensor) -> gs.Node | None:
    """The sole reader of ``t`` if it is ``t + 1``."""
    add = _sole_reader(t)
    if add is None or add.op != "Add" or not _near(_scalar(_other(add, t) or t), 1.0):
        return None
    return add


# --------------------------------------------------------------------------------------------
# matchers, one per anchor op


def _x_times(anchor: gs.Node, head: list[gs.Node], out: gs.Tensor, factor: float,
             name: str, pre_ops: tuple[str, ...] | None = None) -> Idiom | None:
    """``x * out * factor`` where ``anchor`` (then ``head``) computes ``out`` from a function of
    ``x``: the idiom, or None. ``pre_ops`` (when given) are the op types the chain from ``x`` to
    the anchor must consist of."""
    for x, post, f in _products(out):
        if not math.isclose(f, factor, rel_tol=1e-3):
            continue
        pre = _path(x, anchor.inputs[0])
        if pre is None or (pre_ops is not None and sorted(n.op for n in pre) != sorted(pre_ops)):
            continue
        if name.startswith("Gelu") and not any(n.op in ("Pow", "Mul") for n in pre):
            continue  # the tanh form's cube
        return Idiom(name, (*pre, anchor, *head, *post))
    return None


def _erf(node: gs.Node, shapes: ShapeInfo | None = None) -> Idiom | None:
    add = _plus_one(node.outputs[0])
    if add is None:
        return None
    for x, post, f in _products(add.outputs[0]):
        if not math.isclose(f, 0.5, rel_tol=1e-3):
            continue
        scale = _producer(node.inputs[0])
        if scale is None or not any(t is x for t in scale.inputs):
            continue
        if _near(_factor(scale, x), 1 / math.sqrt(2)):
            return Idiom("Gelu", (scale, node, add, *post))
    return None


def _tanh(node: gs.Node, shapes: ShapeInfo | None = None) -> Idiom | None:
    source = _producer(node.inputs[0])
    if source is not None and source.op == "Softplus":  # x * tanh(softplus(x))
        return _x_times(source, [node], node.outputs[0], 1.0, "Mish", ())
    add = _plus_one(node.outputs[0])
    if add is None:
        return None
    return _x_times(node, [add], add.outputs[0], 0.5, "Gelu (tanh approximation)")


def _sigmoid(node: gs.Node, shapes: ShapeInfo | None = None) -> Idiom | None:
    return _x_times(node, [], node.outputs[0], 1.0, "SiLU", ()) or _x_times(
        node, [], node.outputs[0], 1.0, "QuickGelu", ("Mul",)
    )


def _hard_sigmoid(node: gs.Node, shapes: ShapeInfo | None = None) -> Idiom | None:
    return _x_times(node, [], node.outputs[0], 1.0, "HardSwish", ())


def _clip(node: gs.Node, shapes: ShapeInfo | None = None) -> Idiom | None:
    """``clip(x + 3, 0, 6) / 6`` (HardSigmoid), times ``x`` (HardSwish)."""
    if len(node.inputs) >= 3:
        low, high = _scalar(node.inputs[1]), _scalar(node.inputs[2])
    else:
        low, high = node.attrs.get("min"), node.attrs.get("max")
    if not (_near(low, 0.0) or low == 0.0) or not _near(high, 6.0):
        return None
    shift = _producer(node.inputs[0])
    if shift is None or shift.op != "Add":
        return None
    x = next((t for t in shift.inputs if not isinstance(t, gs.Constant)), None)
    if x is None or not _near(_scalar(_other(shift, x) or x), 3.0):
        return None
    swish = _x_times(node, [], node.outputs[0], 1 / 6, "HardSwish", ("Add",))
    if swish is not None:
        return swish
    divide = _sole_reader(node.outputs[0])
    if divide is not None and _near(_factor(divide, node.outputs[0]), 1 / 6):
        return Idiom("HardSigmoid", (shift, node, divide))
    return None


def _trailing(node: gs.Node, shapes: ShapeInfo | None) -> bool:
    """A ReduceMean over the last axes (what a normalization over features reduces; runtimes
    fuse no other), keeping them."""
    axes = node.attrs.get("axes")
    if len(node.inputs) > 1 and node.inputs[1].name:
        axes = constant(node.inputs[1])
    if axes is None or not int(node.attrs.get("keepdims", 1)):
        return False
    rank = shapes.rank(node.inputs[0].name) if shapes is not None else None
    if rank is None and node.inputs[0].shape is not None:
        rank = len(node.inputs[0].shape)
    wanted = sorted(int(a) if int(a) < 0 or rank is None else int(a) - rank
                    for a in np.asarray(axes).reshape(-1))
    return bool(wanted) and wanted == list(range(-len(wanted), 0))


def _reduce_mean(node: gs.Node, shapes: ShapeInfo | None = None) -> Idiom | None:
    """The variance ReduceMean of a LayerNormalization or an RMS normalization."""
    if not _trailing(node, shapes):
        return None
    square = _producer(node.inputs[0])
    if square is None or not (
        (square.op == "Pow" and _near(_scalar(square.inputs[1]), 2.0))
        or (square.op == "Mul" and square.inputs[0] is square.inputs[1])
    ):
        return None
    d = square.inputs[0]
    centre = _producer(d)
    nodes = [square, node]
    name = "RMS normalization"
    if centre is not None and centre.op == "Sub":
        mean = _producer(centre.inputs[1])
        if (mean is not None and mean.op == "ReduceMean" and _trailing(mean, shapes)
                and mean.inputs[0] is centre.inputs[0]):
            nodes = [mean, centre, square, node]
            name = "LayerNormalization"
    eps = _sole_reader(node.outputs[0])
    if eps is None or eps.op != "Add" or _scalar(_other(eps, node.outputs[0]) or d) is None:
        return None
    root = _sole_reader(eps.outputs[0])
    if root is None or root.op != "Sqrt":
        return None
    nodes += [eps, root]
    divide = next((n for n in root.outputs[0].outputs if n.op == "Div" and n.inputs[0] is d), None)
    if divide is None:
        recip = _sole_reader(root.outputs[0])
        if recip is None or recip.op != "Reciprocal":
            return None
        divide = _sole_reader(recip.outputs[0])
        if divide is None or divide.op != "Mul" or _other(divide, recip.outputs[0]) is not d:
            return None
        nodes.append(recip)
    nodes.append(divide)
    t = divide.outputs[0]
    for op in ("Mul", "Add"):  # the affine: * gamma, + beta
        n = _sole_reader(t)
        if n is None or n.op != op or not isinstance(_other(n, t), gs.Constant):
            break
        nodes.append(n)
        t = n.outputs[0]
    return Idiom(name, tuple(nodes))


def _quantize(node: gs.Node, shapes: ShapeInfo | None = None) -> Idiom | None:
    """``DequantizeLinear`` → op → ``QuantizeLinear``: the op and its Q/DQ nodes."""
    source = _producer(node.inputs[0])
    if source is None or source.op in ("DequantizeLinear", "QuantizeLinear"):
        return None
    variables = [t for t in source.inputs if t.name and not isinstance(t, gs.Constant)]
    dequantized = [_producer(t) for t in variables]
    if not dequantized or any(p is None or p.op != "DequantizeLinear" for p in dequantized):
        return None
    if any(r.op != "QuantizeLinear" for t in source.outputs for r in t.outputs):
        return None
    return Idiom("Q/DQ", (*(p for p in dequantized if p is not None), source, node))


_MATCHERS = {
    "Erf": _erf, "Tanh": _tanh, "Sigmoid": _sigmoid, "HardSigmoid": _hard_sigmoid,
    "Clip": _clip, "ReduceMean": _reduce_mean, "QuantizeLinear": _quantize,
}
