"""Conv followed by Mul / Add / Sub / Div by a scalar or per-channel constant.

The algebra: docs/algebra.md §1.

Before → after: ``Mul(Conv(x, W, b), a)`` → ``Conv(x, W * a, b * a)``; ``Add(.., c)`` adds ``c``
to the bias; ``Sub(c, y)`` is ``-y + c``; ``Div(y, c)`` is ``y * (1/c)``. Either operand order.
Exact for every input. The constant must broadcast along the channel axis only (shape ``[C]``
aligned to axis 1, e.g. ``[1, C, 1, 1]``, or a scalar); anything that would change the output
shape, divide by zero, or divide a constant by the tensor is refused. On a branch this is
PP-YOLOE's ``alpha * conv1x1bn(x)`` and the per-channel ``s`` of a scaled residual.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.graph import SparseInitializer, is_constant
from onnxrep.passes.channelwise import BINARY_OPS, binary_affine, constant_operand
from onnxrep.passes.regions import LAST, NC, Candidate, RegionContext, rule
from onnxrep.refusal import Refused

FAMILY = "conv-affine"


@rule(FAMILY, *BINARY_OPS)
def constant_affine_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    found = constant_operand(node)
    if found is None:
        sparse = [t.name for t in node.inputs if isinstance(t, SparseInitializer)]
        if sparse:
            ctx.note(node, FAMILY, f"{sparse[0]!r} is a sparse initializer (passed through "
                     "as it is, never folded)")
            return []
        if node.op in ("Mul", "Div") and len(node.inputs) == 2:
            for mine, other in ((0, 1), (1, 0)):
                scale = node.inputs[other]
                if id(node.inputs[mine]) in ctx.candidates and not is_constant(scale):
                    ctx.note(node, FAMILY, f"the scale {scale.name!r} is not a constant")
                    break
        return []
    var, _ = found
    rank = ctx.shapes.rank(node.inputs[var].name)
    out = []
    read: dict[tuple[int, int | None, int], tuple[np.ndarray, np.ndarray] | Refused] = {}
    for c in ctx.operands(node, var, FAMILY, layouts=(NC, LAST), suffixed=True):
        channels = c.map.cout if isinstance(c.map, nx.ConvMap) else c.map.channels
        tensor_rank = rank if rank is not None else c.map.rank + 2
        axis = tensor_rank - 1 if c.out_layout == LAST else 1
        key = (tensor_rank, channels, axis)  # the candidates mostly agree: read it once
        if key not in read:
            try:
                read[key] = binary_affine(node, tensor_rank, channels, axis)
            except Refused as e:
                read[key] = e
        found_affine = read[key]
        if isinstance(found_affine, Refused):
            if c.nodes:
                ctx.note(node, FAMILY, str(found_affine))
            continue
        try:
            out.append(c.then(node, nx.affine(c.map, *found_affine), FAMILY))
        except Refused as e:
            if c.nodes:
                ctx.note(node, FAMILY, str(e))
    return out
