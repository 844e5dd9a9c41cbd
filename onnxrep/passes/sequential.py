"""Sequential convolutions: ``Conv_B(Conv_A(x))`` → one Conv (docs/algebra.md §3).

Before → after: ``Conv3x3(Conv1x1(x))`` → ``Conv3x3'(x)`` with
``W[o, i] = Σ_m W_B[o, m] · W_A[m, i]`` per group and ``b = b_B + Σ_taps W_B · b_A``; and
``Conv1x1(Conv3x3(x))`` likewise. Exact when A is 1x1 with stride 1 and B does not zero-pad a
non-zero bias of A (B has no pads, or ``b_A == 0``, or A's border already holds ``b_A`` as DBB's
"BN and pad" writes it), or when B is 1x1 with stride 1 and no pads (always exact). Group
counts that differ are merged densely only when neither side is diagonal; the region's cost
check then refuses it if it does more work. Everything else is refused with the reason.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.passes.regions import Candidate, RegionContext, conv_macs, conv_map, rule
from onnxrep.refusal import Refused

FAMILY = "sequential"


@rule(FAMILY, "Conv")
def conv_after_region_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    if not isinstance(node.inputs[0], gs.Variable) or id(node.inputs[0]) not in ctx.candidates:
        return []
    try:
        outer = conv_map(node, ctx)
    except Refused:
        return []  # the core rule records why
    out = []
    for c in ctx.operands(node, 0, FAMILY):
        if not c.nodes or ctx.folds_back(c):
            continue  # Conv(x) itself is the core rule's; a BN after a conv folds into that
        try:
            merged = nx.compose(c.map, outer)
        except Refused as e:
            ctx.note(node, FAMILY, str(e))
            continue
        out.append(c.then(node, merged, FAMILY, conv_macs(outer, c.map)))
    return out
