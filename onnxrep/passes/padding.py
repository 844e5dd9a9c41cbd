"""Zero padding that belongs to a conv: ``Conv(Pad(x))`` → ``Conv(x)`` with the pads.

The algebra: docs/algebra.md §5.

Before → after: ``Conv(Pad(x, pads, 0), pads=0)`` → ``Conv(x, pads)``. ``Pad`` is the identity
map with pads; the conv reading it composes (see sequential), and the pads add up. Exact for
``mode="constant"`` when the padded tensor's value at zero input equals the pad value (0 for a
plain input; see numerics.pad). Refused: other modes (reflect, edge, wrap), negative pads
(cropping), pads on the batch or channel axis, a pad value that is not a constant.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.graph import attributes, constant
from onnxrep.passes.regions import Candidate, RegionContext, rule
from onnxrep.refusal import Refused

FAMILY = "pad"
PAD_ATTRS = {"mode": "constant", "pads": None, "value": 0.0, "paddings": None}


def pad_spec(node: gs.Node, rank: int) -> tuple[tuple[int, ...], float]:
    """Spatial ONNX pads and the pad value of a constant-mode Pad on a rank-``rank`` tensor."""
    attrs = attributes(node, PAD_ATTRS)
    mode = attrs["mode"]
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        raise Refused(f"Pad mode {mode!r} is not a constant pad")
    pads = attrs["pads"] if attrs["pads"] is not None else attrs["paddings"]
    value: object = attrs["value"]
    if len(node.inputs) > 1:
        pads = constant(node.inputs[1])
        if pads is None:
            raise Refused(f"Pad {node.name!r} has pads that are not a constant")
        if len(node.inputs) > 2 and node.inputs[2].name:
            value = constant(node.inputs[2])
            if value is None:
                raise Refused(f"Pad {node.name!r} has a pad value that is not a constant")
        if len(node.inputs) > 3 and node.inputs[3].name:
            axes = constant(node.inputs[3])
            if axes is None:
                raise Refused(f"Pad {node.name!r} has axes that are not a constant")
            full = np.zeros(2 * rank, dtype=np.int64)
            n = len(axes)
            for j, a in enumerate(int(a) % rank for a in axes):
                full[a], full[rank + a] = pads[j], pads[n + j]
            pads = full
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if len(pads) != 2 * rank:
        raise Refused(f"Pad {node.name!r} has {len(pads)} pads for rank {rank}")
    if any(p < 0 for p in pads):
        raise Refused("negative pads crop the tensor")
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        raise Refused("pads on the batch or channel axis")
    spatial = tuple(pads[2:rank] + pads[rank + 2 :])
    value_array = np.asarray(value, dtype=np.float64).reshape(-1)
    if value_array.size != 1:
        raise Refused(f"Pad {node.name!r} has a pad value that is not a scalar")
    return spatial, float(value_array[0])


@rule(FAMILY, "Pad")
def pad_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    if not isinstance(node.inputs[0], gs.Variable):
        return []
    candidates = ctx.operands(node, 0, FAMILY)
    if not candidates:
        return []
    try:
        spatial, value = pad_spec(node, candidates[0].map.rank + 2)
    except Refused as e:
        ctx.note(node, FAMILY, str(e))
        return []
    out, reasons = [], []
    for c in candidates:
        try:
            out.append(c.then(node, nx.pad(c.map, spatial, value), FAMILY))
        except Refused as e:
            reasons.append(str(e))
    if not out and reasons:
        ctx.note(node, FAMILY, reasons[-1])
    return out
