"""Conv → BatchNormalization (docs/algebra.md §1), and BatchNormalization on a branch input.

Before → after: ``BN(Conv(x, W, b))`` → ``Conv(x, W', b')`` with ``t = gamma / sqrt(var + eps)``,
``W' = W * t[:, None, ...]``, ``b' = beta + (b - mean) * t``. Exact for every input. A BN that
reads a tensor directly is the per-channel map ``t * x + (beta - mean * t)``, which joins a
branch sum as a group-aware identity kernel (RepVGG's identity branch).

Refused: ``training_mode=1`` (or training outputs), ``spatial=0``, parameters that are not
constants; a BN whose input is also read elsewhere keeps that input (see regions).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.passes.channelwise import batch_norm
from onnxrep.passes.regions import LAST, Candidate, RegionContext, rule
from onnxrep.refusal import Refused

FAMILY = "conv-bn"


@rule(FAMILY, "BatchNormalization")
def batch_norm_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    try:
        t, s, s_mag = batch_norm(node)
    except Refused as e:
        ctx.note(node, FAMILY, str(e))
        return []
    upstream = ctx.candidates.get(id(node.inputs[0]), [])
    if any(c.out_layout == LAST for c in upstream):
        ctx.note(node, FAMILY, "BatchNormalization normalizes axis 1; the features of the layer "
                 "before it are on the last axis")
    out = []
    for c in ctx.operands(node, 0, FAMILY, suffixed=True):
        try:
            out.append(c.then(node, nx.affine(c.map, t, s, s_mag), FAMILY))
        except Refused as e:
            ctx.note(node, FAMILY, str(e))
    return out
