"""Concat of parallel convolutions on one tensor → one Conv (docs/algebra.md §4).

Before → after: ``Concat(Conv_1(x), Conv_2(x), axis=1)`` → ``Conv(x, [W_1; W_2], [b_1; b_2])``
with the kernels placed in a common frame first (as for branch sums). Exact when the strides
and dilations agree and no operand is a grouped conv; an operand that is ``x`` itself (or a
per-channel map of it) becomes an identity kernel. The cost check of the region keeps a Concat
whose merged conv would do more multiply-accumulates than its branches.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.graph import attributes
from onnxrep.passes.regions import Candidate, RegionContext, join, rule
from onnxrep.refusal import Refused

FAMILY = "concat"


@rule(FAMILY, "Concat")
def concat_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    if len(node.inputs) < 2 or any(not isinstance(t, gs.Variable) for t in node.inputs):
        return []
    try:
        axis = int(attributes(node, {"axis": None})["axis"])
    except Refused as e:
        ctx.note(node, FAMILY, str(e))
        return []
    per_operand = [ctx.operands(node, i, FAMILY) for i in range(len(node.inputs))]
    if not all(per_operand):
        return []
    rank = per_operand[0][0].map.rank + 2
    if axis % rank != 1:
        return []
    by_source = [{c.key: c for c in cands} for cands in per_operand]
    out = []
    for first in per_operand[0]:
        if not all(first.key in s for s in by_source):
            continue
        parts = [s[first.key] for s in by_source]
        if not any(p.nodes for p in parts):
            continue
        try:
            merged = nx.concat([p.map for p in parts], ctx.shapes.dim(first.source.name, 1))
        except Refused as e:
            ctx.note(node, FAMILY, str(e))
            continue
        out.append(join(node, parts, merged, FAMILY))
    return out
