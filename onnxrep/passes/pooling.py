"""AveragePool as a convolution, so an average-pool branch joins a region (docs/algebra.md §5).

Before → after: ``AveragePool(k, s)(Conv1x1(x))`` inside a branch sum → part of one Conv.
``AveragePool`` is the depthwise conv with weight ``1/prod(k)``. Exact when it has no pads or
``count_include_pad=1`` (otherwise border windows divide by fewer taps), and when ``ceil_mode``
does not change the output (only provable for a known input size where the windows tile it
exactly). A lone AveragePool is left as it is: only regions with a Conv are rewritten.
"""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.graph import attributes
from onnxrep.passes.regions import Candidate, RegionContext, rule
from onnxrep.refusal import Refused

FAMILY = "avgpool"
POOL_ATTRS = {
    "auto_pad": "NOTSET", "ceil_mode": 0, "count_include_pad": 0, "dilations": None,
    "kernel_shape": None, "pads": None, "strides": None,
}


def pool_frame(node: gs.Node, ctx: RegionContext) -> tuple[tuple[int, ...], ...]:
    """``(kernel, strides, pads, dilations)`` of an AveragePool that is a conv, else raise."""
    attrs = attributes(node, POOL_ATTRS)
    kernel = tuple(int(k) for k in attrs["kernel_shape"] or ())
    r = len(kernel)
    if not r:
        raise Refused(f"AveragePool {node.name!r} has no kernel_shape")
    strides = tuple(int(s) for s in attrs["strides"] or (1,) * r)
    dilations = tuple(int(d) for d in attrs["dilations"] or (1,) * r)
    shape = ctx.shapes.shapes.get(node.inputs[0].name)
    size = shape[2:] if shape and len(shape) == r + 2 else None
    if attrs["auto_pad"] == "NOTSET":
        pads: tuple[int, ...] | None = tuple(int(p) for p in attrs["pads"] or (0,) * (2 * r))
    else:
        pads = nx.resolve_auto_pad(str(attrs["auto_pad"]), kernel, strides, dilations, size)
        if pads is None:
            raise Refused(f"auto_pad={attrs['auto_pad']} with stride > 1 depends on input size")
    if any(pads) and not int(attrs["count_include_pad"]):
        raise Refused("count_include_pad=0 with pads divides border windows by fewer taps")
    if int(attrs["ceil_mode"]):
        tiles = size is not None and all(
            n is not None
            and (n + pads[i] + pads[r + i] - (kernel[i] - 1) * dilations[i] - 1) % strides[i] == 0
            for i, n in enumerate(size)
        )
        if not tiles:
            raise Refused("ceil_mode=1 changes the output size for some input sizes")
    return kernel, strides, pads, dilations


@rule(FAMILY, "AveragePool")
def average_pool_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    try:
        kernel, strides, pads, dilations = pool_frame(node, ctx)
    except Refused as e:
        if id(node.inputs[0]) in ctx.candidates:
            ctx.note(node, FAMILY, str(e))
        return []
    out = []
    for c in ctx.operands(node, 0, FAMILY):
        channels = c.map.cout if isinstance(c.map, nx.ConvMap) else c.map.channels
        if channels is None or c.map.rank != len(kernel):
            continue
        pool = nx.avg_pool(channels, kernel, strides, pads, dilations)
        macs = channels * math.prod(kernel) / math.prod(strides) / math.prod(c.map.strides)
        try:
            merged = pool if not c.nodes else nx.compose(c.map, pool)
        except Refused as e:
            ctx.note(node, FAMILY, str(e))
            continue
        out.append(c.then(node, merged, FAMILY, macs))
    return out
