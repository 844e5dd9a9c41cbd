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

import math
from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
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
    fold_refusal,
    is_constant,
    is_default_domain,
    is_float,
    shared_reason,
    splice,
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


NC, LAST, TRANSPOSED = "nc", "last", "transposed"
"""Where a tensor holds its channels: axis 1 (``[N, C, *spatial]``, and a 2-D ``[N, C]`` for
rank-0 maps), the last axis of a tensor of rank 3 or more (token features, ``[B, T, C]``), or
axis 0 of a 2-D tensor (what a Gemm with ``transA=1`` reads)."""

LAYERS = ("Conv", "Gemm", "MatMul")
"""The ops a region is rewritten around (a region without one stays as it is)."""


@dataclass(frozen=True, eq=False)
class Candidate:
    """``map(prefix(source))``, computed by ``nodes``; ``costs[i]`` is the multiply-accumulates
    of ``nodes[i]`` per source pixel (a node reached along two paths is counted once).

    ``prefix``: data-movement nodes (a spatial mean, a flatten) the map was moved through; they
    are absorbed like the rest and replayed on the source before the rewritten layer.
    ``density``: the share of source pixels left after the prefix (``1 / (H * W)`` after a
    global average pool), which scales the cost of what follows. ``suffix``: data movement
    after the map (a reshape after a dense layer), replayed after the rewritten layer; only
    per-channel maps (BN, affine) and more data movement follow a suffix. The candidate
    computes ``suffix(map(prefix(source)))``. ``layout``: where the map's input holds its
    channels; ``out_layout``: where the candidate's output does."""

    source: gs.Variable
    map: nx.Map
    nodes: tuple[gs.Node, ...] = ()
    costs: tuple[float, ...] = ()
    families: frozenset[str] = frozenset()
    layout: str = NC
    prefix: tuple[gs.Node, ...] = ()
    density: float = 1.0
    out_layout: str = NC
    suffix: tuple[gs.Node, ...] = ()

    @property
    def macs(self) -> float:
        return sum(self.costs)

    @property
    def key(self) -> tuple[int, str, tuple[int, ...]]:
        """Candidates combine (in a sum, a concat) only when they agree on this."""
        return id(self.source), self.layout, tuple(id(n) for n in (*self.prefix, *self.suffix))

    def then(self, node: gs.Node, new_map: nx.Map, family: str, macs: float = 0.0,
             out_layout: str | None = None) -> Candidate:
        """This candidate extended by ``node``, whose output is ``new_map(source)`` (with its
        channels where ``out_layout`` says, if ``node`` moves them)."""
        return self.extend([node], new_map, family, macs, out_layout)

    def extend(
        self, nodes: list[gs.Node], new_map: nx.Map, family: str, macs: float = 0.0,
        out_layout: str | None = None,
    ) -> Candidate:
        """This candidate extended by a chain of ``nodes`` whose last output is ``new_map``
        (``macs``: the cost of the last, per pixel it runs on)."""
        costs = (0.0,) * (len(nodes) - 1) + (macs * self.density,)
        return replace(self, map=new_map, nodes=(*self.nodes, *nodes),
                       costs=(*self.costs, *costs), families=self.families | {family},
                       out_layout=out_layout or self.out_layout)

    def moved_through(self, node: gs.Node, new_map: nx.Map, family: str,
                      density: float = 1.0, layout: str | None = None) -> Candidate:
        """This candidate with ``node`` added to its prefix: ``node(map(x)) = new_map(node(x))``
        (``density``: the share of pixels ``node`` keeps; ``layout``: where ``node``'s output
        holds the channels, if it moves them)."""
        layout = layout or self.layout
        return replace(self, map=new_map, nodes=(*self.nodes, node), costs=(*self.costs, 0.0),
                       families=self.families | {family}, prefix=(*self.prefix, node),
                       density=self.density * density, layout=layout, out_layout=layout)

    def followed_by(self, node: gs.Node, family: str, layout: str | None = None) -> Candidate:
        """This candidate with ``node`` (data movement that keeps every channel whole) added to
        its suffix (``layout``: where ``node``'s output holds the channels)."""
        return replace(self, nodes=(*self.nodes, node), costs=(*self.costs, 0.0),
                       families=self.families | {family}, suffix=(*self.suffix, node),
                       out_layout=layout or self.out_layout)


def join(
    node: gs.Node, parts: list[Candidate], new_map: nx.Map, family: str
) -> Candidate:
    """The candidate of ``node`` combining one candidate per input (sums, concats); nodes the
    parts share (``Add(t, BN(t))``) are counted once. The parts agree on ``key``."""
    nodes: dict[int, tuple[gs.Node, float]] = {}
    for p in parts:
        nodes.update((id(n), (n, cost)) for n, cost in zip(p.nodes, p.costs, strict=True))
    return replace(
        parts[0], map=new_map, nodes=(*(n for n, _ in nodes.values()), node),
        costs=(*(cost for _, cost in nodes.values()), 0.0),
        families=frozenset().union(*(p.families for p in parts)) | {family},
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


PartialRule = Callable[[gs.Node, "RegionContext", AbstractSet[int]], "Partial | None"]
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
    proofs: dict[object, object] = field(default_factory=dict)
    """What a rule proved, by a key of everything the proof depends on, for a rule that meets
    the same question again in this pass (DBB's border fills repeat per layer)."""

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

    def regions_of(self, t: gs.Tensor, layouts: tuple[str, ...] = (NC,)) -> list[Candidate]:
        """``t`` itself and, unless it is pinned, the regions that compute it."""
        own = [c for c in (self.identity(t, layout) for layout in layouts) if c is not None]
        upstream = self.candidates.get(id(t), []) if self.pinned_reason(t) is None else []
        return own + [c for c in upstream if c.out_layout in layouts]

    def folds_back(self, c: Candidate) -> bool:
        """``c`` is a per-channel chain (BN, affine; no layer) whose source a layer computes
        for it alone: the chain folds into that layer (as its deploy form does), not into the
        layer after it, which would be as exact but round differently."""
        if any(n.op in LAYERS for n in c.nodes) or not c.nodes or c.prefix:
            return False
        producer = c.source.inputs[0] if c.source.inputs else None
        return (producer is not None and producer.op in LAYERS and len(c.source.outputs) == 1
                and self.pinned_reason(c.source) is None and self.guard(producer) is None
                and id(c.source) in self.candidates)

    def pinned_reason(self, t: gs.Tensor) -> str | None:
        """Why no region may absorb the computation of ``t`` whatever reads it (a graph output,
        or read inside a subgraph); other readers are checked when a region is chosen."""
        return shared_reason(t, None, self.graph, self.pinned)

    def identity(self, t: gs.Tensor, layout: str = NC) -> Candidate | None:
        """``t`` as the identity map of itself, channels where ``layout`` says (None when
        its rank does not allow that layout or is unknown)."""
        rank = self.shapes.rank(t.name)
        if rank is None or rank < 2 or (layout == LAST and rank < 3) or (
            layout == TRANSPOSED and rank != 2
        ):
            return None
        axis = {NC: 1, LAST: rank - 1, TRANSPOSED: 0}[layout]
        spatial = rank - 2 if layout == NC else 0
        channels = self.shapes.dim(t.name, axis)
        return Candidate(t, nx.ChannelAffine.identity(spatial, channels), layout=layout,
                         out_layout=layout)

    def operands(self, node: gs.Node, index: int, family: str,
                 layouts: tuple[str, ...] = (NC,), suffixed: bool = False) -> list[Candidate]:
        """Candidates ``node`` may use for its input ``index`` with channels where ``layouts``
        allow: its identity, and the regions that compute it unless it is pinned (those with a
        suffix only if ``node`` is per channel: ``suffixed``). A region whose inside is read
        from outside is weeded out when roots choose (every reader of an absorbed tensor must
        be absorbed by the same rewrite)."""
        t = node.inputs[index]
        if not isinstance(t, gs.Variable):
            return []
        own = [c for c in (self.identity(t, layout) for layout in layouts) if c is not None]
        upstream = [c for c in self.candidates.get(id(t), [])
                    if c.out_layout in layouts and (suffixed or not c.suffix)]
        if upstream:
            pinned = self.pinned_reason(t)
            if pinned is None:
                return own + upstream
            self.note(node, family, f"cannot fold through {pinned}")
        elif id(t) in self.opaque:
            self.note(node, family, f"cannot fold: {self.opaque[id(t)]}")
        if not own and upstream:
            return [_unknown_rank(t, upstream)]
        return own


def _unknown_rank(t: gs.Variable, upstream: list[Candidate]) -> Candidate:
    """The identity of a tensor whose rank is only known from the maps that compute it."""
    m, layout = upstream[0].map, upstream[0].out_layout
    channels = m.cout if isinstance(m, nx.ConvMap) else m.channels
    return Candidate(t, nx.ChannelAffine.identity(m.rank, channels), layout=layout,
                     out_layout=layout)


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
    if not is_float(weight.dtype):
        raise fold_refusal(f"the weight of Conv {node.name!r}", weight.dtype)
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
    if bias.size != shape[0]:  # onnxruntime refuses it too; not a bias of this conv
        raise Refused(f"Conv {node.name!r} has a bias of {bias.size} values for {shape[0]} "
                      "output channels")
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
    """Run the rules over ``graph`` and rewrite every profitable, exact region as one Conv.

    Another run over the result can find more only where this one could not see everything,
    and then it sets ``state.unsettled``: a tensor had more candidates than it keeps (a chain
    longer than ``MAX_CANDIDATES`` folds part of the way), a root was rebuilt in parts (new
    Convs and sums), or a rewritten region reads a tensor that a region computes, which this
    run did not extend through the whole region (the new Conv meets rules that a node of the
    old region stopped: a Pad after a conv takes its pads but passes no longer regions on;
    see ``_settled``). Otherwise a second run would find nothing: each rewritten
    region is one Conv computing a candidate this run had, from a source no rule extends, so
    the nodes downstream see no maps they did not see, at no higher cost (no merge found
    unprofitable becomes profitable), and every tensor left keeps its readers.
    """
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
            kept = _dedupe(found)
            if len(kept) > MAX_CANDIDATES:
                state.unsettled = True  # a source left out may be in reach next round
            ctx.candidates[id(node.outputs[0])] = kept[:MAX_CANDIDATES]

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
            partial = _partial(node, ctx, absorbed.keys())
            if partial is not None:
                news = _emit_partial(t, partial, names, ctx)
                if news is not None:
                    replacements[id(node)] = (news, t)
                    folds.append(_partial_record(t, partial))
                    state.unsettled = True  # new Convs and sums: regions nobody has seen
                    for n in (*partial.tree, *(n for c in partial.groups for n in c.nodes)):
                        absorbed[id(n)] = n
                    needed.update(id(c.source) for c in partial.groups)
                    needed.update(id(x) for _, x in partial.rest)
            continue
        assert isinstance(best.map, nx.ConvMap)
        weights = _weights(best, node, ctx)
        if weights is None:
            continue
        news = _emit(t, best, weights, names)
        folds.append(_fold_record(t, best))
        if not _settled(best, t, ctx):
            state.unsettled = True
        for n in best.nodes:
            absorbed[id(n)] = n
        replacements[id(node)] = (news, t)
        needed.add(id(best.source))

    if replacements:
        splice(graph, absorbed, replacements)
    folds.reverse()  # roots were found last to first
    _explain_the_rest(graph, ctx, absorbed)
    skips = [
        Skip(family, n.name, n.op, reason)
        for n, family, reason in ctx.notes
        if id(n) not in absorbed
    ]
    return folds, skips


def _settled(best: Candidate, t: gs.Tensor, ctx: RegionContext) -> bool:
    """The Conv that replaces ``best`` (written to ``t``) can merge, in another run, with no
    region it could not merge with in this one. A region computing its source that a Conv
    after it may extend (the sequential rule's test) was either extended through all of
    ``best`` here already (one of ``t``'s candidates; not chosen, so not chosen again: the
    new Conv costs less than what it replaced), or does not compose with it exactly. A new
    composition counts even if it alone would cost more than the two apart: a larger region
    downstream (a sum with a parallel conv of the same source) may still pay for it."""
    upstream = [c for c in ctx.candidates.get(id(best.source), ())
                if c.nodes and not ctx.folds_back(c)]
    if not upstream:
        return True
    if best.prefix or best.suffix:  # the new Conv reads a replayed node, not the source
        return False
    seen = {(id(c.source), frozenset(map(id, c.nodes))) for c in ctx.candidates.get(id(t), ())}
    mine = frozenset(map(id, best.nodes))
    for c in upstream:
        if (id(c.source), mine | frozenset(map(id, c.nodes))) in seen:
            continue
        try:
            nx.compose(c.map, best.map)
        except Refused:
            continue
        return False
    return True


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


def _partial(
    node: gs.Node, ctx: RegionContext, absorbed: AbstractSet[int]
) -> Partial | None:
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
    weights = c.map.weights() if c.map.rank else nx.dense_weights(c.map)
    dtype = _dtype(c)
    why = nx.narrowing(weights, dtype, nx.by_first_axis) or nx.narrowing(c.map.bias, dtype)
    if why is not None:
        ctx.note(root, _label(c), f"the folded weights of {len(c.nodes)} nodes {why}")
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
        emitted = _emit(t, c, weights, names)
        out = gs.Variable(names.fresh(f"{emitted[-1].name or t.name}.out"), dtype=weights.dtype)
        emitted[-1].outputs.append(out)
        nodes += emitted
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
    seen: set[tuple[int, str, tuple[int, ...]]] = set()
    out = []
    for c in found:
        if c.key not in seen:
            seen.add(c.key)
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
        if not isinstance(c.map, nx.ConvMap) or not _gains(c):
            continue  # nothing to gain: the rewrite would do as much as what it replaces
        if not any(n.op in LAYERS for n in c.nodes) or any(id(n) in absorbed for n in c.nodes):
            continue
        why = escape(c, root, ctx)
        if why is not None:
            escaping = escaping or (c, why)
            continue
        if _cost(c) > c.macs * (1 + 1e-9):
            costly = costly or c
            continue
        if best is None or len(c.nodes) > len(best.nodes):
            best = c
    if escaping is not None and (best is None or len(best.nodes) < len(escaping[0].nodes)):
        ctx.note(root, _label(escaping[0]), f"cannot fold through {escaping[1]}")
    if best is None and costly is not None:
        ctx.note(
            root, _label(costly),
            f"one {_layer_op(costly)} for {len(costly.nodes)} nodes would cost "
            f"{_cost(costly):.4g} MACs per pixel instead of {costly.macs:.4g}",
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


def _cost(c: Candidate) -> float:
    """Multiply-accumulates per source pixel of the layer ``c`` becomes."""
    return nx.macs(c.map) * c.density


def _layer_op(c: Candidate) -> str:
    """What ``c`` is rewritten as: a Conv, a Gemm on a 2-D tensor, or MatMul (+ Add) on a
    tensor of features on its last axis."""
    if c.map.rank > 0:
        return "Conv"
    return "MatMul" if c.layout == LAST else "Gemm"


def _gains(c: Candidate) -> bool:
    """The rewrite of ``c`` does less than the nodes it replaces: counting the replayed data
    movement on neither side, a BatchNormalization as two ops (a scale and a shift) and every
    other node as one, against the layer and the Add of a MatMul's bias."""
    replayed = {id(n) for n in (*c.prefix, *c.suffix)}
    work = sum(2 if n.op == "BatchNormalization" else 1 for n in c.nodes
               if id(n) not in replayed)
    return work > _emitted(c) - len(replayed)


def _emitted(c: Candidate) -> int:
    """Nodes the rewrite of ``c`` makes: its prefix and suffix replayed, and the layer (MatMul
    with a bias is two)."""
    assert isinstance(c.map, nx.ConvMap)
    layer = 2 if _layer_op(c) == "MatMul" and np.any(c.map.bias != 0) else 1
    return len(c.prefix) + layer + len(c.suffix)


def _main_layer(c: Candidate) -> gs.Node:
    """The layer whose name and dtype the rewritten one takes: the largest weight."""
    return max((n for n in c.nodes if n.op in LAYERS),
               key=lambda n: math.prod(n.inputs[1].shape or ()))


def _dtype(c: Candidate) -> np.dtype:
    return np.dtype(_main_layer(c).inputs[1].dtype)


def _label(c: Candidate) -> str:
    return next((f for f in LABEL_ORDER if f in c.families), "conv-bn")


def _emit(t: gs.Tensor, c: Candidate, weights: np.ndarray, names: Names) -> list[gs.Node]:
    """The nodes computing ``c.map(c.prefix(c.source))`` with ``weights`` (the kernel, already
    cast to the model's dtype): the prefix replayed on the source, then a Conv, a Gemm, or a
    MatMul and the Add of its bias. The last node's output ``t`` is attached once the nodes
    it replaces are detached."""
    m = c.map
    assert isinstance(m, nx.ConvMap)
    main = _main_layer(c)
    base = main.name or t.name
    nodes: list[gs.Node] = []
    x: gs.Tensor = c.source
    for p in c.prefix:
        x = _replay(p, x, names, nodes)
    bias = gs.Constant(names.fresh(f"{base}.bias"), m.bias.astype(weights.dtype))
    op = _layer_op(c)
    if op == "Conv":
        attrs: dict[str, object] = {
            "dilations": list(m.dilations), "group": m.group, "kernel_shape": list(m.kernel),
        }
        if m.auto_pad == "NOTSET":
            attrs["pads"] = list(m.pads)
        else:
            attrs["auto_pad"] = m.auto_pad
        attrs["strides"] = list(m.strides)
        weight = gs.Constant(names.fresh(f"{base}.weight"), np.ascontiguousarray(weights))
        nodes.append(gs.Node("Conv", main.name, attrs, inputs=[x, weight, bias]))
    elif op == "Gemm":
        weight = gs.Constant(names.fresh(f"{base}.weight"), np.ascontiguousarray(weights))
        attrs = {"transB": 1, **({"transA": 1} if c.layout == TRANSPOSED else {})}
        nodes.append(gs.Node("Gemm", main.name, attrs, inputs=[x, weight, bias]))
    else:
        weight = gs.Constant(names.fresh(f"{base}.weight"), np.ascontiguousarray(weights.T))
        nodes.append(gs.Node("MatMul", main.name, inputs=[x, weight]))
        if _emitted(c) > len(c.prefix) + 1 + len(c.suffix):
            product = gs.Variable(names.fresh(f"{base}.product"), dtype=weights.dtype)
            nodes[-1].outputs.append(product)
            nodes.append(gs.Node("Add", names.fresh(f"{base}.bias_add"),
                                 inputs=[product, bias]))
    for p in c.suffix:
        y = gs.Variable(names.fresh(f"{base}.out"), dtype=weights.dtype)
        nodes[-1].outputs.append(y)
        _replay(p, y, names, nodes)
        nodes[-1].outputs.clear()  # the caller attaches the output
    return nodes


def _replay(node: gs.Node, x: gs.Tensor, names: Names, nodes: list[gs.Node]) -> gs.Variable:
    """A copy of data-movement ``node`` reading ``x`` (its other inputs as they were), appended
    to ``nodes``; returns its output."""
    out = gs.Variable(names.fresh(f"{node.name or node.op}.out"), dtype=x.dtype)
    nodes.append(gs.Node(node.op, names.fresh(node.name or node.op), dict(node.attrs),
                         inputs=[x, *node.inputs[1:]], outputs=[out]))
    return out


def _partial_record(t: gs.Tensor, p: Partial) -> Fold:
    nodes = {id(n): n for c in p.groups for n in c.nodes}
    nodes.update((id(n), n) for n in p.tree)
    convs = ", ".join(f"Conv {'x'.join(map(str, c.map.kernel))}" if c.map.rank else _layer_op(c)
                      for c in p.groups)
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
        result=(f"Conv {'x'.join(map(str, m.kernel))}" if m.rank else _layer_op(c))
        + (f" group={m.group}" if m.group > 1 and m.rank else ""),
    )
