"""Dense layers as maps: Gemm and MatMul with constant weights fold like 1x1 convs.

The algebra: docs/algebra.md §8.

A Linear is a 1x1 conv on an image without spatial axes: ``Gemm(A, B, C)`` is the rank-0 map
``W[n, k] = alpha * op(B)[k, n]``, ``b = beta * C`` of A's rows (:func:`onnxrep.numerics.gemm`),
and ``MatMul(X, B)`` the same with ``alpha = 1`` and no bias, of a 2-D ``X`` or of the last
axis of an N-D one (token features, ``[B, T, C] @ W``). So every fold of the region engine
applies to them:

- after: ``BN(Gemm(x))``, ``Gemm(x) * s + t`` per output feature → ``Gemm'(x)``
  (``W' = diag(s) W``, ``b' = s * b + t``);
- before: ``Gemm(BN(x))``, ``MatMul(x * s + t, B)`` on the contracted features →
  ``W' = W diag(s)``, ``b' = b + W t`` (always exact: a Linear pads nothing);
- sums: ``(Linear_a(x) + Linear_b(x)) / 2`` (a distillation head) → one Gemm.

The result is a Gemm (``transB=1``) on a 2-D input, and a MatMul plus the Add of its bias on
an N-D one. ``transA=1`` (A holds its features along axis 0) folds what comes after, never
what computes A. Refused: weights or a bias that are not constants, a Gemm bias of shape
``[M, N]``, a MatMul whose constant is its first operand, non-float weights.

The ``commute`` family moves a per-pixel map (a per-channel affine or a 1x1 conv, no pads)
through the ops between it and such a layer, which keep the channels where they are:
``GlobalAveragePool`` and ``ReduceMean`` over all spatial axes (a mean of a per-pixel linear
map is the map of the mean), and ``Flatten``, ``Reshape`` and ``Squeeze`` that drop unit
spatial axes or regroup the leading axes of token features. So
``Gemm(Flatten(GAP(BN(x))))`` → ``Gemm'(Flatten(GAP(x)))``: the data movement is replayed on
``x``, the BN goes into the Gemm. A Reshape that moves the feature axis is refused. Token
features transposed to axis 1 and back (``[B, T, C] → [B, C, T]``, a BatchNorm1d over tokens)
carry a dense map's output features with them: ``T(BN(T(Linear(x))))`` →
``T(T(Linear'(x)))``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import numerics as nx
from onnxrep.graph import attributes, constant, fold_refusal, is_constant, is_float
from onnxrep.passes.regions import LAST, NC, TRANSPOSED, Candidate, RegionContext, rule
from onnxrep.refusal import Refused

FAMILY = "dense"
COMMUTE = "commute"
GEMM_ATTRS = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}


def _lazy(t: gs.Tensor) -> nx.Lazy:
    return nx.Lazy(tuple(t.shape), lambda: constant(t).astype(np.float64))


def _float_constant(t: gs.Tensor | None, node: gs.Node, what: str) -> None:
    if not is_constant(t):
        raise Refused(f"{node.op} {node.name!r} has a {what} that is not a constant")
    if not is_float(t.dtype):
        raise fold_refusal(f"the {what} of {node.op} {node.name!r}", t.dtype)


def gemm_map(node: gs.Node) -> tuple[nx.ConvMap, str]:
    """The map of a Gemm with constant weights, and the layout of A it reads."""
    attrs = attributes(node, GEMM_ATTRS)
    _float_constant(node.inputs[1], node, "weight")
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if c is not None:
        _float_constant(c, node, "bias")
    m = nx.gemm(_lazy(node.inputs[1]), constant(c) if c is not None else None,
                float(attrs["alpha"]), float(attrs["beta"]), bool(attrs["transB"]))
    return m, TRANSPOSED if int(attrs["transA"]) else NC


def _layer(node: gs.Node, ctx: RegionContext, m: nx.ConvMap, layout: str) -> list[Candidate]:
    """``node`` as the map ``m`` of its input, and after every region computing that input
    (with channels where ``layout`` says) that it can take in."""
    cost = nx.macs(m)
    if layout == TRANSPOSED:
        if ctx.candidates.get(id(node.inputs[0])):
            ctx.note(node, FAMILY, f"{node.op} {node.name!r} has transA=1 (A holds its "
                     "features along axis 0): what computes A cannot fold into it")
        own = ctx.identity(node.inputs[0], TRANSPOSED)
        return [own.then(node, m, FAMILY, cost, out_layout=NC)] if own is not None else []
    out = []
    for c in ctx.operands(node, 0, FAMILY, layouts=(layout,)):
        if c.map.rank != 0 or ctx.folds_back(c):
            continue
        if not c.nodes:
            out.append(c.then(node, m, FAMILY, cost))
            continue
        try:
            out.append(c.then(node, nx.compose(c.map, m), FAMILY, cost))
        except Refused as e:
            ctx.note(node, FAMILY, str(e))
    return out


@rule(FAMILY, "Gemm")
def gemm_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    try:
        m, layout = gemm_map(node)
    except Refused as e:
        ctx.opaque[id(node.outputs[0])] = str(e)
        ctx.note(node, FAMILY, str(e))
        return []
    return _layer(node, ctx, m, layout)


@rule(FAMILY, "MatMul")
def matmul_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    x, w = node.inputs
    rank = ctx.shapes.rank(x.name)
    try:
        if is_constant(x):
            raise Refused(f"MatMul {node.name!r} has its constant as the first operand")
        _float_constant(w, node, "weight")
        if len(w.shape) != 2:
            raise Refused(f"MatMul {node.name!r} has a weight of rank {len(w.shape)}")
        if rank is None or rank < 2:
            raise Refused(f"MatMul {node.name!r} reads a tensor of unknown rank")
        m = nx.gemm(_lazy(w), None, 1.0, 1.0, False)
    except Refused as e:
        ctx.opaque[id(node.outputs[0])] = str(e)
        if ctx.candidates.get(id(x)) or any(r.op == "BatchNormalization" or is_constant(
                r.inputs[-1]) for r in node.outputs[0].outputs):
            ctx.note(node, FAMILY, str(e))
        return []
    return _layer(node, ctx, m, NC if rank == 2 else LAST)


# --------------------------------------------------------------------------------------------
# commute: a per-pixel map moved through the data movement before a dense layer


def _moved(node: gs.Node, ctx: RegionContext, flatten: bool, density: float,
           layout: str = NC, into: str | None = None,
           fixed_shape: bool = False) -> list[Candidate]:
    """Every region computing ``node``'s input, moved through ``node``: a per-pixel map goes
    after it (``node`` joins the prefix, replayed on the source); any other map stays before
    it (``node`` joins the suffix, replayed after the rewritten layer; only per-channel maps
    follow). ``flatten`` when ``node`` drops the spatial axes; ``fixed_shape`` when it is a
    Reshape to a shape that names the channel count (a map that changes it stays before)."""
    out = []
    for c in ctx.operands(node, 0, COMMUTE, layouts=(layout,), suffixed=True):
        if not c.nodes:
            continue  # nothing to move
        m = c.map
        ahead = not c.suffix and m.pointwise and not any(m.pads) and not (
            fixed_shape and isinstance(m, nx.ConvMap) and m.cin != m.cout
        ) and not (isinstance(m, nx.ConvMap) and m.auto_pad != "NOTSET")
        if ahead:
            out.append(c.moved_through(node, nx.flatten(m) if flatten else m, COMMUTE, density,
                                       into))
        else:
            out.append(c.followed_by(node, COMMUTE, into))
    return out


def _spatial_share(t: gs.Tensor, ctx: RegionContext) -> float:
    """The share of pixels a spatial mean of ``t`` keeps (0 when its size is unknown)."""
    shape = ctx.shapes.shapes.get(t.name)
    if not shape or any(d is None for d in shape[2:]):
        return 0.0
    return 1.0 / max(1, math.prod(shape[2:]))  # type: ignore[arg-type]


@rule(COMMUTE, "GlobalAveragePool")
def global_pool_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    return _moved(node, ctx, False, _spatial_share(node.inputs[0], ctx))


@rule(COMMUTE, "ReduceMean")
def reduce_mean_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    rank = ctx.shapes.rank(node.inputs[0].name)
    axes = node.attrs.get("axes")
    if len(node.inputs) > 1 and node.inputs[1].name:
        axes = constant(node.inputs[1])
    if rank is None or rank < 3 or axes is None:
        return []
    if sorted(int(a) % rank for a in np.asarray(axes).reshape(-1)) != list(range(2, rank)):
        return []  # not a mean over exactly the spatial axes
    keep = int(node.attrs.get("keepdims", 1))
    return _moved(node, ctx, not keep, _spatial_share(node.inputs[0], ctx))


def _unit_spatial(t: gs.Tensor, ctx: RegionContext) -> bool:
    shape = ctx.shapes.shapes.get(t.name)
    return bool(shape) and len(shape) >= 3 and all(d == 1 for d in shape[2:])


@rule(COMMUTE, "Flatten", "Squeeze")
def flatten_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    """``[N, C, 1, ...] → [N, C]``."""
    out_rank = ctx.shapes.rank(node.outputs[0].name)
    axis = int(node.attrs.get("axis", 1)) if node.op == "Flatten" else 1
    if out_rank != 2 or axis != 1 or not _unit_spatial(node.inputs[0], ctx):
        return []
    return _moved(node, ctx, True, 1.0)


@rule(COMMUTE, "Transpose")
def transpose_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    """``[B, T, C] ↔ [B, C, T]``: token features moved to axis 1 and back, as a BatchNorm1d
    over them is exported (``Linear → Transpose → BN → Transpose``). A dense map stays before
    the transposes (they join its suffix, replayed after the rewritten layer); the BN between
    them scales the same features. Any other permutation is left alone."""
    rank = ctx.shapes.rank(node.inputs[0].name)
    perm = [int(p) for p in node.attrs.get("perm", ())]
    if rank != 3 or perm != [0, 2, 1] or not ctx.candidates.get(id(node.inputs[0])):
        return []
    out = []
    for layout, into in ((LAST, NC), (NC, LAST)):
        for c in ctx.operands(node, 0, COMMUTE, layouts=(layout,), suffixed=True):
            if c.nodes and c.map.rank == 0:  # features, not a Conv1d's channels
                # after the layer, always: replayed before it, the transpose would hand a
                # dense layer a tensor whose features are not on its last axis
                out.append(c.followed_by(node, COMMUTE, into))
    return out


@rule(COMMUTE, "Reshape")
def reshape_rule(node: gs.Node, ctx: RegionContext) -> list[Candidate]:
    """``[N, C, 1, ...] → [N, C]``, and token features regrouped along their leading axes
    (``[B, T, C] ↔ [B*T, C]``); any other reshape moves the channels and is refused."""
    before = ctx.shapes.shapes.get(node.inputs[0].name)
    after = ctx.shapes.shapes.get(node.outputs[0].name)
    if not before or not after or not ctx.candidates.get(id(node.inputs[0])):
        return []
    if len(before) >= 3 and _unit_spatial(node.inputs[0], ctx) and len(after) == 2 and (
        after[1] == before[1] and after[1] is not None
    ):
        return _moved(node, ctx, True, 1.0, fixed_shape=True)
    if before[-1] is not None and before[-1] == after[-1] and len(before) >= 2 and (
        max(len(before), len(after)) >= 3
    ):  # token features regrouped: [B, T, C] <-> [B*T, C]
        return _moved(node, ctx, True, 1.0, layout=LAST if len(before) >= 3 else NC,
                      into=LAST if len(after) >= 3 else NC, fixed_shape=True)
    ctx.note(node, COMMUTE, f"Reshape {node.name!r} from {list(before)} to {list(after)} moves "
             "the channel axis")
    return []
