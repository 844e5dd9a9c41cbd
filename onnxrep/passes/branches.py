"""Parallel branches summed: ``Add`` / ``Sub`` / ``Sum`` of maps of one tensor → one map.

The algebra: docs/algebra.md §2 and §7.

Before → after: ``Add(BN(Conv3x3(x)), BN(Conv1x1(x)))`` and ``x + BN(x)`` and nested sums →
``Conv(x, ΣW_i placed in a common frame, Σb_i)``. Every operand is a candidate region; the
sum exists for each source tensor that all operands can be expressed in. ``Sub`` negates its
second operand. Branches of different group counts merge with the gcd of their groups.
The frame rule, and the refusals (unequal strides or dilations, channel counts; pads that are
not a whole number of dilated taps apart; output sizes that differ) are in
:func:`onnxrep.numerics.add`.

Sums of several sources: ``Conv_a(x) + Conv_b(x) + Conv_c(y)`` (a ``Sum``, or a tree of
``Add``/``Sub`` whose inner nodes only feed it) → ``Conv_ab(x) + Conv_c(y)``: the terms are
grouped by a source they share, each group of two or more (with a Conv among them) becomes
one Conv when exact and no costlier, and one Add per remaining term rebuilds the sum.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import replace

import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.graph import is_default_domain
from onnxrep.passes.regions import (
    LAST,
    LAYERS,
    NC,
    Candidate,
    Partial,
    RegionContext,
    escape,
    join,
    partial_rule,
    rule,
)
from onnxrep.refusal import Refused

FAMILY = "branches"


@rule(FAMILY, "Add", "Sub", "Sum")
def sum_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    if node.attrs or any(not isinstance(t, gs.Variable) for t in node.inputs):
        return []
    if node.op != "Sum" and len(node.inputs) != 2:
        return []
    per_operand = [ctx.operands(node, i, FAMILY, layouts=(NC, LAST))
                   for i in range(len(node.inputs))]
    if not all(per_operand):
        return []
    signs = [1.0, -1.0] if node.op == "Sub" else [1.0] * len(per_operand)
    by_source = [{c.key: c for c in cands} for cands in per_operand]
    common = [c.key for c in per_operand[0] if all(c.key in s for s in by_source)]
    if not common:
        linear = [cands for cands in per_operand if len(cands) > 1]
        if len(linear) > 1:
            ctx.note(node, FAMILY, "branches read different tensors: " + ", ".join(
                sorted({repr(c.source.name) for cands in linear for c in cands[1:]})
            ))
        return []
    out = []
    for key in common:
        parts = [s[key] for s in by_source]
        try:
            merged = nx.add([p.map for p in parts], signs)
        except Refused as e:
            if any(p.nodes for p in parts):
                ctx.note(node, FAMILY, str(e))
            continue
        out.append(join(node, parts, merged, FAMILY))
    return out


SUMS = ("Add", "Sub", "Sum")


@partial_rule(FAMILY, *SUMS)
def partial_sum_rule(
    node: gs.Node, ctx: RegionContext, absorbed: AbstractSet[int]
) -> Partial | None:
    """Merge the terms of a sum that share a source, keeping one Add per other term."""
    if not _plain_sum(node):
        return None
    terms: list[tuple[float, gs.Tensor]] = []
    tree: list[gs.Node] = []
    _flatten(node, 1.0, ctx, absorbed, terms, tree)
    if len(terms) < 3:
        return None  # two terms of different sources, or one the full merge already judged
    options = [{c.key: c for c in ctx.regions_of(t, (NC, LAST))} for _, t in terms]
    left = set(range(len(terms)))
    groups: list[Candidate] = []
    while True:
        group = _best_group(node, terms, options, left, tuple(tree), ctx)
        if group is None:
            break
        members, merged = group
        groups.append(merged)
        left -= members
    if not groups:
        return None
    rest = tuple(terms[i] for i in sorted(left))
    return Partial(tuple(groups), rest, tuple(tree))


def _plain_sum(node: gs.Node) -> bool:
    return (node.op in SUMS and is_default_domain(node) and not node.attrs
            and (node.op == "Sum" or len(node.inputs) == 2)
            and all(isinstance(t, gs.Variable) for t in node.inputs))


def _flatten(node: gs.Node, sign: float, ctx: RegionContext, absorbed: AbstractSet[int],
             terms: list[tuple[float, gs.Tensor]], tree: list[gs.Node]) -> None:
    """The signed terms of the sum tree under ``node``: inner sums that only feed it are
    opened up (and listed in ``tree``)."""
    tree.append(node)
    signs = [1.0, -1.0] if node.op == "Sub" else [1.0] * len(node.inputs)
    for t, s in zip(node.inputs, signs, strict=True):
        inner = t.inputs[0] if t.inputs else None
        if (inner is not None and _plain_sum(inner) and id(inner) not in absorbed
                and len(t.outputs) == 1 and ctx.pinned_reason(t) is None
                and ctx.guard(inner) is None and len(inner.outputs) == 1):
            _flatten(inner, sign * s, ctx, absorbed, terms, tree)
        else:
            terms.append((sign * s, t))


def _best_group(
    root: gs.Node, terms: list[tuple[float, gs.Tensor]],
    options: list[dict[tuple[int, str, tuple[int, ...]], Candidate]],
    left: set[int], tree: tuple[gs.Node, ...], ctx: RegionContext,
) -> tuple[set[int], Candidate] | None:
    """The largest set of remaining terms that share a source and merge into one Conv."""
    by_source: dict[tuple[int, str, tuple[int, ...]], list[int]] = {}
    for i in sorted(left):
        for key in options[i]:
            by_source.setdefault(key, []).append(i)
    for key, members in sorted(by_source.items(), key=lambda kv: len(kv[1]), reverse=True):
        if len(members) < 2:
            break
        parts = [options[i][key] for i in members]
        if not any(n.op in LAYERS for p in parts for n in p.nodes):
            continue
        try:
            merged = nx.add([p.map for p in parts], [terms[i][0] for i in members])
        except Refused as e:
            ctx.note(root, FAMILY, str(e))
            continue
        if not isinstance(merged, nx.ConvMap):
            continue
        group = _union(parts, merged)
        if nx.macs(merged) * group.density > group.macs * (1 + 1e-9):
            ctx.note(root, FAMILY, f"merging {len(members)} terms would cost "
                     f"{nx.macs(merged):.4g} MACs per pixel instead of {group.macs:.4g}")
            continue
        why = escape(group, root, ctx, also=tree)
        if why is not None:
            ctx.note(root, FAMILY, f"cannot fold through {why}")
            continue
        return set(members), group
    return None


def _union(parts: list[Candidate], merged: nx.Map) -> Candidate:
    """One candidate computing ``merged`` from the nodes of ``parts`` (shared ones once)."""
    nodes: dict[int, tuple[gs.Node, float]] = {}
    for p in parts:
        nodes.update((id(n), (n, cost)) for n, cost in zip(p.nodes, p.costs, strict=True))
    return replace(
        parts[0], map=merged, nodes=tuple(n for n, _ in nodes.values()),
        costs=tuple(cost for _, cost in nodes.values()),
        families=frozenset().union(*(p.families for p in parts)) | {FAMILY},
    )
