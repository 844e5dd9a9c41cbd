"""Linear regions: every tensor that is an affine function of one tensor becomes one Conv.

Before → after: ``Add(BN(Conv3x3(x)), BN(Conv1x1(x)), BN(x))`` → ``Conv3x3'(x)``.

The pass is an abstract interpretation in topological order. Each tensor ``t`` gets a list of
*candidates* ``(source, map, nodes)``: "``t = map(source)``, computed by exactly ``nodes``", where
``map`` is a :mod:`onnxrep.numerics` ``ConvMap`` or ``ChannelAffine``. Family rules (one module
each: conv_bn, affine, branches, sequential, concat, pooling, padding) say how a node turns its
operands' candidates into its own; an operand contributes more than its own identity only when
this node is its sole reader and it is not a graph output, so a region never swallows a tensor
someone else needs. Then, in reverse order, every *root* — a tensor read outside any region — is
rewritten as one Conv from its largest candidate that contains a Conv, is exact (the numerics
raise ``Inexact`` otherwise) and costs no more multiply-accumulates than the nodes it replaces.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import families
from onnxrep import numerics as nx
from onnxrep.families import FAMILIES
from onnxrep.graph import (
    Names,
    ShapeInfo,
    attributes,
    constant,
    is_constant,
    is_default_domain,
    shared_reason,
)
from onnxrep.refusal import Refused
from onnxrep.result import Fold, Skip

if TYPE_CHECKING:
    from onnxrep.passes import PassState

MAX_CANDIDATES = 8
"""Sources remembered per tensor (nearest first); bounds the work on long linear chains."""

LABEL_ORDER = tuple(f.name for f in FAMILIES if f.stage == "regions")
"""A rewritten region is reported under the first region family (in onnxrep.families' order)
that it used."""
CORE = "core"
"""The engine's own rule (a Conv is a map of its input); not a family, never switched off."""


@dataclass(frozen=True, eq=False)
class Candidate:
    """``map(source)``, computed by ``nodes``; ``costs[i]`` is the multiply-accumulates of
    ``nodes[i]`` per source pixel (a node reached along two paths is counted once)."""

    source: gs.Variable
    map: nx.Map
    nodes: tuple[gs.Node, ...] = ()
    costs: tuple[float, ...] = ()
    families: frozenset[str] = frozenset()

    @property
    def macs(self) -> float:
        return sum(self.costs)

    def then(self, node: gs.Node, new_map: nx.Map, family: str, macs: float = 0.0) -> Candidate:
        """This candidate extended by ``node``, whose output is ``new_map(source)``."""
        return self.extend([node], new_map, family, macs)

    def extend(
        self, nodes: list[gs.Node], new_map: nx.Map, family: str, macs: float = 0.0
    ) -> Candidate:
        """This candidate extended by a chain of ``nodes`` whose last output is ``new_map``
        (``macs``: the cost of the last)."""
        costs = (0.0,) * (len(nodes) - 1) + (macs,)
        return Candidate(
            self.source, new_map, (*self.nodes, *nodes), (*self.costs, *costs),
            self.families | {family},
        )


def join(
    node: gs.Node, parts: list[Candidate], new_map: nx.Map, family: str
) -> Candidate:
    """The candidate of ``node`` combining one candidate per input (sums, concats); nodes the
    parts share (``Add(t, BN(t))``) are counted once."""
    nodes: dict[int, tuple[gs.Node, float]] = {}
    for p in parts:
        nodes.update((id(n), (n, cost)) for n, cost in zip(p.nodes, p.costs, strict=True))
    return Candidate(
        parts[0].source, new_map, (*(n for n, _ in nodes.values()), node),
        (*(cost for _, cost in nodes.values()), 0.0),
        frozenset().union(*(p.families for p in parts)) | {family},
    )


Rule = Callable[[gs.Node, "RegionContext"], list[Candidate]]
RULES: dict[str, list[tuple[str, Rule]]] = {}


def rule(family: str, *ops: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the transfer function of ``family`` for ``ops``."""

    if family != CORE:
        families.family(family, "regions")  # an unknown name fails at import

    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES.setdefault(op, []).append((family, fn))
        return fn

    return register


@dataclass(frozen=True, eq=False)
class Partial:
    """A root that stays, rebuilt around merged parts: ``Σ groups + Σ sign * rest``.

    Each group is a candidate (its map already holds the signs of its terms) that becomes one
    Conv; ``rest`` keeps the other terms as they are; ``tree`` are the nodes the rebuilt sum
    replaces (the root among them)."""

    groups: tuple[Candidate, ...]
    rest: tuple[tuple[float, gs.Tensor], ...]
    tree: tuple[gs.Node, ...]


PartialRule = Callable[[gs.Node, "RegionContext", set[int]], "Partial | None"]
PARTIAL_RULES: dict[str, list[tuple[str, PartialRule]]] = {}


def partial_rule(family: str, *ops: str) -> Callable[[PartialRule], PartialRule]:
    """Register ``fn`` to rebuild a root of ``ops`` no single Conv can replace (it receives the
    ids of nodes already absorbed)."""

    families.family(family, "regions")

    def register(fn: PartialRule) -> PartialRule:
        for op in ops:
            PARTIAL_RULES.setdefault(op, []).append((family, fn))
        return fn

    return register


@dataclass
class RegionContext:
    """What rules may ask while the pass walks the graph."""

    graph: gs.Graph
    shapes: ShapeInfo
    pinned: set[str]
    skip: frozenset[str] = frozenset()
    opset: int = 17
    protected: dict[str, str] = field(default_factory=dict)
    candidates: dict[int, list[Candidate]] = field(default_factory=dict)
    opaque: dict[int, str] = field(default_factory=dict)
    notes: list[tuple[gs.Node, str, str]] = field(default_factory=list)

    def enabled(self, family: str) -> bool:
        return family not in self.skip

    def guard(self, node: gs.Node) -> str | None:
        """Why ``node`` must stay as it is (a runtime's fused idiom), or None."""
        return self.protected.get(node.outputs[0].name) if node.outputs else None

    def note(self, node: gs.Node, family: str, reason: str) -> None:
        """Record why ``node`` was not folded (shown under ``--explain`` if it survives)."""
        self.notes.append((node, family, reason))

    def shared_reason(self, t: gs.Tensor, reader: gs.Node) -> str | None:
        """Why ``reader`` may not absorb the computation of ``t`` (None when it may)."""
        return shared_reason(t, reader, self.graph, self.pinned)

    def regions_of(self, t: gs.Tensor) -> list[Candidate]:
        """``t`` itself and, unless it is pinned, the regions that compute it."""
        own = self.identity(t)
        upstream = self.candidates.get(id(t), []) if self.pinned_reason(t) is None else []
        return [own, *upstream] if own else list(upstream)

    def pinned_reason(self, t: gs.Tensor) -> str | None:
        """Why no region may absorb the computation of ``t`` whatever reads it (a graph output,
        or read inside a subgraph); other readers are checked when a region is chosen."""
        return shared_reason(t, None, self.graph, self.pinned)

    def identity(self, t: gs.Tensor) -> Candidate | None:
        rank = self.shapes.rank(t.name)
        if rank is None or rank < 3:
            return None
        channels = self.shapes.dim(t.name, 1)
        return Candidate(t, nx.ChannelAffine.identity(rank - 2, channels))

    def operands(self, node: gs.Node, index: int, family: str) -> list[Candidate]:
        """Candidates ``node`` may use for its input ``index``: its identity, and the regions
        that compute it unless it is pinned. A region whose inside is read from outside is
        weeded out when roots choose (every reader of an absorbed tensor must be absorbed
        by the same rewrite)."""
        t = node.inputs[index]
        if not isinstance(t, gs.Variable):
            return []
        own = self.identity(t)
        upstream = self.candidates.get(id(t), [])
        if upstream:
            pinned = self.pinned_reason(t)
            if pinned is None:
                return [own, *upstream] if own else list(upstream)
            self.note(node, family, f"cannot fold through {pinned}")
        elif id(t) in self.opaque:
            self.note(node, family, f"cannot fold: {self.opaque[id(t)]}")
        if own is None:
            return [Candidate(t, _unknown_rank(upstream))] if upstream else []
        return [own]


def _unknown_rank(upstream: list[Candidate]) -> nx.ChannelAffine:
    """The identity of a tensor whose rank is only known from the maps that compute it."""
    m = upstream[0].map
    channels = m.cout if isinstance(m, nx.ConvMap) else m.channels
    return nx.ChannelAffine.identity(m.rank, channels)


# --------------------------------------------------------------------------------------------
# the base rule: a Conv with constant weights is a ConvMap of its input


CONV_ATTRS = {
    "auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None, "pads": None,
    "strides": None,
}


def conv_map(node: gs.Node, ctx: RegionContext) -> nx.ConvMap:
    """The ConvMap of a Conv node; raises Refused with the reason when it has none.

    The kernel stays in the model until a fold needs its values (``nx.Lazy``)."""
    attrs = attributes(node, CONV_ATTRS)
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if not is_constant(weight):
        raise Refused(f"Conv {node.name!r} has a weight that is not a constant")
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
    if has_bias and not is_constant(node.inputs[2]):
        raise Refused(f"Conv {node.name!r} has a bias that is not a constant")
    if np.dtype(weight.dtype).kind != "f":
        raise Refused(f"Conv {node.name!r} has a {np.dtype(weight.dtype)} weight")
    shape = tuple(int(d) for d in weight.shape)
    r = len(shape) - 2
    kernel = tuple(int(k) for k in (attrs["kernel_shape"] or shape[2:]))
    if kernel != shape[2:]:
        raise Refused(f"Conv {node.name!r}: kernel_shape {kernel} != weight {shape[2:]}")
    strides = tuple(int(s) for s in (attrs["strides"] or (1,) * r))
    dilations = tuple(int(d) for d in (attrs["dilations"] or (1,) * r))
    group = int(attrs["group"])
    auto_pad = str(attrs["auto_pad"])
    pads: tuple[int, ...] | None
    if auto_pad == "NOTSET":
        pads = tuple(int(p) for p in (attrs["pads"] or (0,) * (2 * r)))
    else:
        spatial = ctx.shapes.shapes.get(node.inputs[0].name)
        pads = nx.resolve_auto_pad(
            auto_pad, kernel, strides, dilations, spatial[2:] if spatial else None
        )
    if len(strides) != r or len(dilations) != r or (pads is not None and len(pads) != 2 * r):
        raise Refused(f"Conv {node.name!r} has attributes of the wrong length")
    bias = constant(node.inputs[2]).astype(np.float64).reshape(-1) if has_bias else np.zeros(
        shape[0]
    )
    values = nx.Lazy(shape, lambda: constant(weight).astype(np.float64))
    return nx.ConvMap(
        values, bias, strides, dilations, pads if pads is not None else (0,) * (2 * r), group,
        "NOTSET" if pads is not None else auto_pad,
    )


def conv_macs(m: nx.ConvMap, inner: nx.Map | None = None) -> float:
    """Cost of a conv per pixel of the region's source (its input may be strided already)."""
    stride = 1 if inner is None else float(np.prod(inner.strides))
    return nx.macs(m) / stride


@rule(CORE, "Conv")
def conv_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    """``Conv(x)`` is ``ConvMap(x)``; reading a region is the sequential family's business."""
    if not isinstance(node.inputs[0], gs.Variable):
        return []
    try:
        m = conv_map(node, ctx)
    except Refused as e:
        ctx.opaque[id(node.outputs[0])] = str(e)
        return []
    x = node.inputs[0]
    return [Candidate(x, m, (node,), (conv_macs(m),), frozenset({CORE}))]


# --------------------------------------------------------------------------------------------
# the pass


def run(graph: gs.Graph, state: PassState) -> tuple[list[Fold], list[Skip]]:
    """Run the rules over ``graph`` and rewrite every profitable, exact region as one Conv."""
    ctx = RegionContext(graph, state.shapes, state.pinned, state.skip, state.opset,
                        state.protected)
    names = state.names
    for node in graph.nodes:
        if not is_default_domain(node):
            continue
        found: list[Candidate] = []
        for family, fn in RULES.get(node.op, []):
            if ctx.enabled(family):
                found.extend(fn(node, ctx))
        guard = ctx.guard(node)
        if guard is not None:
            if found:
                ctx.note(node, _label(found[0]), guard)
            continue
        if found and len(node.outputs) == 1:
            ctx.candidates[id(node.outputs[0])] = _dedupe(found)[:MAX_CANDIDATES]

    folds: list[Fold] = []
    absorbed: dict[int, gs.Node] = {}
    needed: set[int] = set()
    replacements: dict[int, tuple[list[gs.Node], gs.Tensor]] = {}
    outputs = {id(t) for t in graph.outputs}
    for node in reversed(graph.nodes):
        if id(node) in absorbed or len(node.outputs) != 1:
            continue
        t = node.outputs[0]
        candidates = ctx.candidates.get(id(t))
        root = (
            t.name in ctx.pinned or id(t) in outputs or id(t) in needed
            or any(id(c) not in absorbed for c in t.outputs)
        )
        if not root or ctx.guard(node) is not None:
            continue
        best = _choose(candidates, absorbed, node, ctx) if candidates else None
        if best is None:
            partial = _partial(node, ctx, set(absorbed))
            if partial is not None:
                news = _emit_partial(t, partial, names, ctx)
                if news is not None:
                    replacements[id(node)] = (news, t)
                    folds.append(_partial_record(t, partial))
                    for n in (*partial.tree, *(n for c in partial.groups for n in c.nodes)):
                        absorbed[id(n)] = n
                    needed.update(id(c.source) for c in partial.groups)
                    needed.update(id(x) for _, x in partial.rest)
            continue
        assert isinstance(best.map, nx.ConvMap)
        weights = _weights(best, node, ctx)
        if weights is None:
            continue
        new = _emit(t, best, weights, names)
        folds.append(_fold_record(t, best))
        for n in best.nodes:
            absorbed[id(n)] = n
        replacements[id(node)] = ([new], t)
        needed.add(id(best.source))

    if replacements:
        for n in absorbed.values():
            n.inputs.clear()
            n.outputs.clear()
        graph.nodes = [
            new for n in graph.nodes
            if id(n) not in absorbed or id(n) in replacements
            for new in (replacements[id(n)][0] if id(n) in replacements else [n])
        ]
        for news, t in replacements.values():
            news[-1].outputs.append(t)
    folds.reverse()  # roots were found last to first
    _explain_the_rest(graph, ctx, absorbed)
    skips = [
        Skip(family, n.name, n.op, reason)
        for n, family, reason in ctx.notes
        if id(n) not in absorbed
    ]
    return folds, skips


CONSIDERED = {
    # op → (family, why a node of it stays when no rule said more)
    "BatchNormalization": ("conv-bn", "no convolution computes its input for it alone or "
                           "reads its output: a BatchNormalization folds only into a conv"),
    "Add": ("branches", "its operands are not maps of one tensor with a Conv among them"),
    "Sub": ("branches", "its operands are not maps of one tensor with a Conv among them"),
    "Sum": ("branches", "its operands are not maps of one tensor with a Conv among them"),
    "Pad": ("pad", "no convolution reads the padded tensor alone"),
    "AveragePool": ("avgpool", "no convolution is in a region with it"),
}
AFFINE_REASON = ("no convolution computes its input for it alone or reads its output: a "
                 "per-channel scale or shift folds only into a conv")


def _explain_the_rest(graph: gs.Graph, ctx: RegionContext, absorbed: dict[int, gs.Node]) -> None:
    """Give every BN, per-channel affine op, sum, Pad and AveragePool that stays a reason, if
    no rule gave one (``--explain`` lists them all)."""
    noted = {id(n) for n, _, _ in ctx.notes}
    for node in graph.nodes:
        if id(node) in noted or id(node) in absorbed or not is_default_domain(node):
            continue
        constants = sum(1 for t in node.inputs if is_constant(t))
        if node.op in ("Mul", "Div", "Add", "Sub") and len(node.inputs) == 2 and constants == 1:
            family, reason = "conv-affine", AFFINE_REASON
        elif node.op in CONSIDERED and not (constants and node.op in ("Add", "Sub", "Sum")):
            family, reason = CONSIDERED[node.op]
        else:
            continue
        ctx.note(node, family, reason if ctx.enabled(family) else f"--skip {family} was given")


def _partial(node: gs.Node, ctx: RegionContext, absorbed: set[int]) -> Partial | None:
    for family, fn in PARTIAL_RULES.get(node.op, []):
        if ctx.enabled(family):
            found = fn(node, ctx, absorbed)
            if found is not None:
                return found
    return None


def _weights(c: Candidate, root: gs.Node, ctx: RegionContext) -> np.ndarray | None:
    """The kernel of ``c`` in the model's dtype (the one time it is materialized), or None
    with a note when it does not fit that dtype."""
    assert isinstance(c.map, nx.ConvMap)
    weights, dtype = c.map.weights(), _dtype(c)
    if not (_fits(weights, dtype) and _fits(c.map.bias, dtype)):
        ctx.note(root, _label(c), f"the folded weights of {len(c.nodes)} nodes overflow {dtype}")
        return None
    return weights.astype(dtype)


def _emit_partial(
    t: gs.Tensor, p: Partial, names: Names, ctx: RegionContext
) -> list[gs.Node] | None:
    """One Conv per group, then the sum of their outputs and the rest, written to ``t``."""
    root = p.tree[0]
    nodes: list[gs.Node] = []
    terms: list[tuple[float, gs.Tensor]] = []
    for c in p.groups:
        weights = _weights(c, root, ctx)
        if weights is None:
            return None
        conv = _emit(t, c, weights, names)
        out = gs.Variable(names.fresh(f"{conv.name or t.name}.out"), dtype=weights.dtype)
        conv.outputs.append(out)
        nodes.append(conv)
        terms.append((1.0, out))
    terms += sorted(p.rest, key=lambda term: term[0] < 0)  # positive terms first
    sign, acc = terms[0]
    if sign < 0:
        acc = _node("Neg", [acc], names, root, nodes)
    for sign, term in terms[1:]:
        acc = _node("Add" if sign > 0 else "Sub", [acc, term], names, root, nodes)
    last = nodes[-1]
    last.outputs.clear()  # the last node writes the root's tensor
    last.name = root.name or last.name
    return nodes


def _node(op: str, inputs: list[gs.Tensor], names: Names, root: gs.Node,
          nodes: list[gs.Node]) -> gs.Variable:
    out = gs.Variable(names.fresh(f"{root.name or op}.{op.lower()}"), dtype=inputs[0].dtype)
    nodes.append(gs.Node(op, names.fresh(f"{root.name or op}.{op}"), inputs=inputs,
                         outputs=[out]))
    return out


def _dedupe(found: list[Candidate]) -> list[Candidate]:
    seen: set[int] = set()
    out = []
    for c in found:
        if id(c.source) not in seen:
            seen.add(id(c.source))
            out.append(c)
    return out


def _choose(
    candidates: list[Candidate], absorbed: dict[int, gs.Node], root: gs.Node,
    ctx: RegionContext,
) -> Candidate | None:
    """The candidate absorbing most nodes that includes a Conv, keeps every tensor it absorbs
    to itself, and costs no more."""
    best: Candidate | None = None
    costly: Candidate | None = None
    escaping: tuple[Candidate, str] | None = None
    for c in candidates:
        if len(c.nodes) < 2 or not isinstance(c.map, nx.ConvMap):
            continue
        if not any(n.op == "Conv" for n in c.nodes) or any(id(n) in absorbed for n in c.nodes):
            continue
        why = escape(c, root, ctx)
        if why is not None:
            escaping = escaping or (c, why)
            continue
        if nx.macs(c.map) > c.macs * (1 + 1e-9):
            costly = costly or c
            continue
        if best is None or len(c.nodes) > len(best.nodes):
            best = c
    if escaping is not None and (best is None or len(best.nodes) < len(escaping[0].nodes)):
        ctx.note(root, _label(escaping[0]), f"cannot fold through {escaping[1]}")
    if best is None and costly is not None:
        ctx.note(
            root, _label(costly),
            f"one Conv for {len(costly.nodes)} nodes would cost {nx.macs(costly.map):.4g} "
            f"MACs per pixel instead of {costly.macs:.4g}",
        )
    return best


def escape(c: Candidate, root: gs.Node, ctx: RegionContext,
            also: tuple[gs.Node, ...] = ()) -> str | None:
    """Why a tensor computed inside ``c`` is needed outside it and ``also`` (None when none
    is)."""
    inside = {id(n) for n in (*c.nodes, *also)}
    for n in c.nodes:
        if n is root:
            continue
        for t in n.outputs:
            pinned = ctx.pinned_reason(t)
            if pinned is not None:
                return pinned
            outside = {id(r): r for r in t.outputs if id(r) not in inside}
            if outside:
                return f"{t.name!r} also feeds " + ", ".join(
                    repr(r.name or r.op) for r in outside.values())
    return None


def _main_conv(c: Candidate) -> gs.Node:
    """The conv whose name and dtype the emitted Conv takes: the largest weight."""
    return max(
        (n for n in c.nodes if n.op == "Conv"), key=lambda n: int(np.prod(n.inputs[1].shape))
    )


def _dtype(c: Candidate) -> np.dtype:
    return np.dtype(_main_conv(c).inputs[1].dtype)


def _fits(values: np.ndarray, dtype: np.dtype) -> bool:
    """The float64 fold stays finite in the model's dtype (a float16 fold can overflow)."""
    limit = float(np.finfo(dtype).max)  # min and max: no temporary the size of the kernel
    return values.size == 0 or bool(-limit <= values.min() and values.max() <= limit)


def _label(c: Candidate) -> str:
    return next((f for f in LABEL_ORDER if f in c.families), "conv-bn")


def _emit(t: gs.Tensor, c: Candidate, weights: np.ndarray, names: Names) -> gs.Node:
    """The Conv computing ``c.map(c.source)`` with ``weights`` (its kernel, already cast to the
    model's dtype); its output ``t`` is attached once the nodes it replaces are detached."""
    m = c.map
    assert isinstance(m, nx.ConvMap)
    main = _main_conv(c)
    base = main.name or t.name
    weight = gs.Constant(names.fresh(f"{base}.weight"), np.ascontiguousarray(weights))
    bias = gs.Constant(names.fresh(f"{base}.bias"), m.bias.astype(weights.dtype))
    attrs: dict[str, object] = {
        "dilations": list(m.dilations), "group": m.group, "kernel_shape": list(m.kernel),
    }
    if m.auto_pad == "NOTSET":
        attrs["pads"] = list(m.pads)
    else:
        attrs["auto_pad"] = m.auto_pad
    attrs["strides"] = list(m.strides)
    return gs.Node("Conv", main.name, attrs, inputs=[c.source, weight, bias])


def _partial_record(t: gs.Tensor, p: Partial) -> Fold:
    nodes = {id(n): n for c in p.groups for n in c.nodes}
    nodes.update((id(n), n) for n in p.tree)
    convs = ", ".join(f"Conv {'x'.join(map(str, c.map.kernel))}" for c in p.groups
                      if isinstance(c.map, nx.ConvMap))
    adds = len(p.groups) + len(p.rest) - 1
    return Fold(
        pattern="branches",
        output=t.name,
        nodes=[n.name for n in nodes.values()],
        ops=dict(Counter(n.op for n in nodes.values())),
        result=f"{convs} and {adds} Add/Sub" if adds else convs,
    )


def _fold_record(t: gs.Tensor, c: Candidate) -> Fold:
    m = c.map
    assert isinstance(m, nx.ConvMap)
    return Fold(
        pattern=_label(c),
        output=t.name,
        nodes=[n.name for n in c.nodes],
        ops=dict(Counter(n.op for n in c.nodes)),
        result=f"Conv {'x'.join(map(str, m.kernel))}"
        + (f" group={m.group}" if m.group > 1 else ""),
    )
