"""Parallel branches summed: ``Add`` / ``Sub`` / ``Sum`` of maps of one tensor → one map (§2).

Before → after: ``Add(BN(Conv3x3(x)), BN(Conv1x1(x)))`` and ``x + BN(x)`` and nested sums →
``Conv(x, ΣW_i placed in a common frame, Σb_i)``. Every operand is a candidate region; the
sum exists for each source tensor that all operands can be expressed in. ``Sub`` negates its
second operand. The frame rule, and the refusals (unequal strides, dilations, groups, channel
counts; pads that are not a whole number of dilated taps apart; output sizes that differ) are
in :func:`onnxrep.numerics.add`.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.passes.regions import Candidate, RegionContext, join, rule

FAMILY = "branches"


@rule(FAMILY, "Add", "Sub", "Sum")
def sum_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    if node.attrs or any(not isinstance(t, gs.Variable) for t in node.inputs):
        return []
    if node.op != "Sum" and len(node.inputs) != 2:
        return []
    per_operand = [ctx.operands(node, i, FAMILY) for i in range(len(node.inputs))]
    if not all(per_operand):
        return []
    signs = [1.0, -1.0] if node.op == "Sub" else [1.0] * len(per_operand)
    by_source = [{id(c.source): c for c in cands} for cands in per_operand]
    common = [c.source for c in per_operand[0] if all(id(c.source) in s for s in by_source)]
    if not common:
        linear = [cands for cands in per_operand if len(cands) > 1]
        if len(linear) > 1:
            ctx.note(node, FAMILY, "branches read different tensors: " + ", ".join(
                sorted({repr(c.source.name) for cands in linear for c in cands[1:]})
            ))
        return []
    out = []
    for source in common:
        parts = [s[id(source)] for s in by_source]
        try:
            merged = nx.add([p.map for p in parts], signs)
        except nx.Inexact as e:
            if any(p.nodes for p in parts):
                ctx.note(node, FAMILY, str(e))
            continue
        out.append(join(node, parts, merged, FAMILY))
    return out
