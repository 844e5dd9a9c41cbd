"""The algebra of structural re-parameterization, in float64 numpy.

Every tensor a fold touches is described as an *affine map* of one source tensor ``x``
(layout ``[N, C, *spatial]``):

``ConvMap``        ``y = conv(zero_pad(x, pads), W, strides, dilations, group) + b``
``ChannelAffine``  ``y = scale * zero_pad(x, pads) + shift``  (per channel; the identity is
                   ``scale = 1, shift = 0``; ``Pad`` is the identity with pads)

Maps compose, and each operation below returns a new map or raises :class:`Refused` with a
reason a user can read. Nothing here knows about ONNX graphs; callers cast the float64 result
once to the model's dtype.

Kernel frames (docs/algebra.md §2). Along one spatial axis a conv reads input index
``o*s - p0 + j*d`` for tap ``j``. Placed into a ``K``-tap kernel at offset ``L`` of a conv with
begin pad ``P0`` it reads ``o*s - P0 + (j+L)*d``, so ``L = (P0 - p0)/d`` must be a non-negative
integer. Output lengths ``floor((n + p0 + p1 - d*(k-1) - 1)/s) + 1`` agree for every input
length ``n`` exactly when the strides and the *extents* ``p0 + p1 - d*(k-1)`` agree.

Border values. A pointwise map (1-tap kernel, stride 1) evaluated on its zero padding gives its
bias, so a pointwise map with pads describes "the map, padded with its bias". A conv that zero-
pads such a map therefore merges exactly only when that bias is 0 (docs/algebra.md §3, §5).

Lazy kernels. A map's kernel is a :class:`Lazy` array: its shape, and a recipe that computes
the float64 values from its parents' on demand. Deciding whether maps merge needs only shapes
and biases, so the many candidate maps of a large model cost no memory until the one chosen is
materialized (``ConvMap.weights()``). Each map also carries ``bias_mag``, a bound on the
magnitude of the terms its bias was summed from: it scales the rounding with which an exporter,
computing the same bias in float32, may differ from it (see :func:`pad`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from onnxrep.refusal import Refused

__all__ = [
    "ChannelAffine",
    "ConvMap",
    "Lazy",
    "Map",
    "Refused",
    "add",
    "affine",
    "avg_pool",
    "batch_norm_affine",
    "compose",
    "concat",
    "dense_weights",
    "flatten",
    "gemm",
    "identity_kernel",
    "macs",
    "pad",
    "regroup",
    "regroup_weight",
    "resolve_auto_pad",
    "to_conv",
    "transposed_affine",
]


class Lazy:
    """A float64 array known by its shape, computed by ``make()`` each time it is asked for.

    ``fresh``: every ``value()`` is a new array the caller may overwrite (false only for
    :meth:`of`, which hands out the one array it holds).
    """

    __slots__ = ("_make", "fresh", "shape")

    def __init__(
        self, shape: Sequence[int], make: Callable[[], np.ndarray], fresh: bool = True
    ) -> None:
        self.shape = tuple(int(d) for d in shape)
        self._make = make
        self.fresh = fresh

    @classmethod
    def of(cls, values: np.ndarray) -> Lazy:
        array = np.asarray(values, dtype=np.float64)
        return cls(array.shape, lambda: array, fresh=False)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def value(self) -> np.ndarray:
        out = self._make()
        assert out.shape == self.shape, (out.shape, self.shape)
        return out


@dataclass(frozen=True, eq=False)
class ConvMap:
    """``y = conv(zero_pad(x, pads), weight, strides, dilations, group) + bias``.

    ``weight`` is a float64 ``[Cout, Cin/group, *kernel]`` (a :class:`Lazy`; an ndarray given
    to the constructor is wrapped), ``bias`` float64 ``[Cout]``, ``pads`` in ONNX order (all
    begins, then all ends). ``auto_pad`` is ``"NOTSET"`` unless the padding depends on the input
    size (``SAME_*`` with a stride > 1 and unknown input size); such a map can only be rescaled
    per channel, never re-framed. ``bias_mag`` bounds the terms of the bias (default ``|bias|``).
    """

    weight: Lazy
    bias: np.ndarray
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    group: int = 1
    auto_pad: str = "NOTSET"
    bias_mag: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.weight, Lazy):
            object.__setattr__(self, "weight", Lazy.of(self.weight))
        if self.bias_mag is None:
            object.__setattr__(self, "bias_mag", np.abs(self.bias))

    def weights(self) -> np.ndarray:
        """The kernel's float64 values."""
        return self.weight.value()

    @property
    def rank(self) -> int:
        return self.weight.ndim - 2

    @property
    def cout(self) -> int:
        return self.weight.shape[0]

    @property
    def cin(self) -> int:
        return self.weight.shape[1] * self.group

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def pointwise(self) -> bool:
        """One tap and stride 1 on every axis: the map mixes channels only."""
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides)


@dataclass(frozen=True, eq=False)
class ChannelAffine:
    """``y = scale * zero_pad(x, pads) + shift`` with per-channel (or scalar) scale and shift.

    ``scale`` and ``shift`` are float64 vectors of length ``channels`` or 1. ``channels`` is
    ``None`` while nothing has fixed the channel count (the identity of an unknown tensor).
    ``shift_mag`` bounds the terms of the shift (default ``|shift|``).
    """

    rank: int
    scale: np.ndarray
    shift: np.ndarray
    pads: tuple[int, ...]
    channels: int | None = None
    shift_mag: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.shift_mag is None:
            object.__setattr__(self, "shift_mag", np.abs(self.shift))

    @staticmethod
    def identity(rank: int, channels: int | None = None) -> ChannelAffine:
        return ChannelAffine(rank, np.ones(1), np.zeros(1), (0,) * (2 * rank), channels)

    @property
    def strides(self) -> tuple[int, ...]:
        return (1,) * self.rank

    @property
    def pointwise(self) -> bool:
        return True


Map = ConvMap | ChannelAffine


# --------------------------------------------------------------------------------------------
# small helpers


def _vec(values: np.ndarray | float, channels: int | None, what: str) -> np.ndarray:
    """A float64 vector of length 1 or ``channels``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size != 1 and channels is not None and v.size != channels:
        raise Refused(f"{what} has {v.size} values for {channels} channels")
    return v


def _channels_of(m: Map) -> int | None:
    return m.cout if isinstance(m, ConvMap) else m.channels


def _bias_mag(m: Map) -> np.ndarray:
    mag = m.bias_mag if isinstance(m, ConvMap) else m.shift_mag
    assert mag is not None  # set in __post_init__
    return mag


def _spatial(x: np.ndarray, rank: int) -> tuple[slice | None, ...]:
    """Index that broadcasts a per-output-channel vector over ``[Cout, Cin/g, *kernel]``."""
    del x
    return (slice(None),) + (None,) * (rank + 1)


def macs(m: Map) -> float:
    """Multiply-accumulates per input pixel per image (the cost model of merge decisions)."""
    if isinstance(m, ChannelAffine):
        return 0.0
    return m.cout * m.weight.shape[1] * math.prod(m.kernel) / math.prod(m.strides)


def identity_kernel(channels: int, group: int, rank: int) -> np.ndarray:
    """The group-aware identity: ``W[i, i mod (C/g), centre] = 1``, shape ``[C, C/g, 1...]``."""
    if channels % group:
        raise Refused(f"{channels} channels do not split into {group} groups")
    per_group = channels // group
    w = np.zeros((channels, per_group) + (1,) * rank)
    idx = np.arange(channels)
    w[(idx, idx % per_group) + (0,) * rank] = 1.0
    return w


def to_conv(m: Map, group: int, channels: int | None = None) -> ConvMap:
    """``m`` as a ``ConvMap`` with ``group`` groups (a ChannelAffine becomes a diagonal conv)."""
    if isinstance(m, ConvMap):
        return m
    c = m.channels if m.channels is not None else channels
    if c is None:
        raise Refused("the channel count of an identity branch is unknown")
    if c % group:
        raise Refused(f"{c} channels do not split into {group} groups")
    scale = _vec(m.scale, c, "scale")
    rank = m.rank
    w = Lazy((c, c // group) + (1,) * rank,
             lambda: identity_kernel(c, group, rank) * scale[_spatial(scale, rank)])
    bias = np.broadcast_to(_vec(m.shift, c, "shift"), (c,)).copy()
    mag = np.broadcast_to(_bias_mag(m), (c,)).copy()
    return ConvMap(w, bias, (1,) * rank, (1,) * rank, m.pads, group, bias_mag=mag)


def regroup_weight(weight: np.ndarray, group: int, coarser: int) -> np.ndarray:
    """The ``[Cout, Cin/coarser, *kernel]`` weight of a ``group``-grouped conv's ``weight``
    written as a conv with ``coarser`` groups (``coarser`` divides ``group``;
    docs/algebra.md §7): every fine group's block sits on the diagonal of its coarse group's
    block, zeros elsewhere. ``coarser = 1`` gives the dense weight."""
    if group == coarser:
        return weight
    if group % coarser:
        raise Refused(f"{coarser} groups do not refine into {group}")
    cout, in_g = weight.shape[:2]
    out_g, per = cout // group, group // coarser
    out = np.zeros((cout, in_g * per, *weight.shape[2:]))
    for g in range(group):
        offset = (g % per) * in_g
        out[g * out_g : (g + 1) * out_g, offset : offset + in_g] = weight[
            g * out_g : (g + 1) * out_g
        ]
    return out


def regroup(m: ConvMap, coarser: int) -> ConvMap:
    """``m`` as the same map with ``coarser`` groups (a divisor of ``m.group``)."""
    if m.group == coarser:
        return m
    if m.group % coarser:
        raise Refused(f"{coarser} groups do not refine into {m.group}")
    parent, group = m.weight, m.group
    shape = (m.cout, m.cin // coarser, *m.kernel)
    return replace(m, weight=Lazy(shape, lambda: regroup_weight(parent.value(), group, coarser)),
                   group=coarser)


def _channelwise(m: ConvMap) -> bool:
    """Each output channel reads only the input channel of the same index (depthwise, x1)."""
    return m.group == m.cin == m.cout


def _apply_channels(m: ConvMap, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``Σ_{i, taps} W[o, i, taps] · values[i]``: the conv's response to a constant input.

    With several input channels per group, one matrix product per group through BLAS, each
    value repeated once per tap (numpy sums a short trailing axis of taps ten times slower);
    with one, the taps are summed and scaled (a product per group would be 1 x taps)."""
    g = m.group
    per_group = np.broadcast_to(values, (m.cin,)).reshape(g, -1)
    if per_group.shape[1] == 1:
        taps = weights.reshape(m.cout, -1).sum(axis=1)
        return taps * np.repeat(per_group[:, 0], m.cout // g)
    spread = np.repeat(per_group, math.prod(m.kernel), axis=1)  # [g, Cin/g * taps]
    return np.matmul(weights.reshape(g, m.cout // g, -1), spread[..., None]).reshape(-1)


# --------------------------------------------------------------------------------------------
# per-channel affine after a map (BatchNormalization, Mul/Add/Sub/Div by a constant)


def affine(
    m: Map, scale: np.ndarray | float, shift: np.ndarray | float,
    shift_mag: np.ndarray | None = None,
) -> Map:
    """``scale * m(x) + shift`` per output channel (``shift_mag`` bounds the shift's terms).

    ConvMap: ``W' = W * scale[:, None, ...]``, ``b' = b * scale + shift``; always exact.
    """
    channels = _channels_of(m)
    scale = _vec(scale, channels, "scale")
    shift = _vec(shift, channels, "shift")
    added = np.abs(shift) if shift_mag is None else np.asarray(shift_mag, dtype=np.float64)
    mag = _bias_mag(m) * np.abs(scale) + added
    if isinstance(m, ChannelAffine):
        n = max(m.scale.size, m.shift.size, scale.size, shift.size)
        ch = m.channels if m.channels is not None else (n if n > 1 else None)
        return ChannelAffine(m.rank, m.scale * scale, m.shift * scale + shift, m.pads, ch, mag)
    factor = np.broadcast_to(scale, (m.cout,))[_spatial(scale, m.rank)]
    parent = m.weight
    weight = Lazy(parent.shape, lambda: _scaled(parent, factor))
    bias = np.broadcast_to(m.bias * scale + shift, (m.cout,)).copy()
    return replace(m, weight=weight, bias=bias, bias_mag=np.broadcast_to(mag, (m.cout,)).copy())


def batch_norm_affine(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``BN(y) = t * y + s`` with ``t = gamma / sqrt(var + eps)``, ``s = beta - mean * t``;
    returns ``(t, s, |beta| + |mean * t|)``, the last bounding the terms of ``s``."""
    g, b, mu, v = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (gamma, beta, mean, var))
    t = g / np.sqrt(v + np.float64(eps))
    return t, b - mu * t, np.abs(b) + np.abs(mu * t)


# --------------------------------------------------------------------------------------------
# kernel frames


@dataclass(frozen=True)
class _Axis:
    k: int
    s: int
    d: int
    p0: int
    p1: int


def _axes(m: Map) -> list[_Axis]:
    if isinstance(m, ConvMap) and m.auto_pad != "NOTSET":
        raise Refused(f"auto_pad={m.auto_pad} with stride > 1 depends on the input size")
    r = m.rank
    kernel = m.kernel if isinstance(m, ConvMap) else (1,) * r
    dil = m.dilations if isinstance(m, ConvMap) else (1,) * r
    return [_Axis(kernel[i], m.strides[i], dil[i], m.pads[i], m.pads[r + i]) for i in range(r)]


def _align(maps: Sequence[Map]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...],
                                          list[tuple[int, ...]]]:
    """Common frame of several maps on one input.

    Returns ``(kernel, dilations, pads, offsets)``: the merged kernel shape, dilations, ONNX pads
    and, per map, the offset of its kernel inside the merged one.
    """
    ranks = {m.rank for m in maps}
    if len(ranks) != 1:
        raise Refused(f"branches have different spatial ranks {sorted(ranks)}")
    (r,) = ranks
    per_map = [_axes(m) for m in maps]
    kernel, dilations, begins, ends = [], [], [], []
    offsets: list[list[int]] = [[] for _ in maps]
    for i in range(r):
        axes = [a[i] for a in per_map]
        strides = {a.s for a in axes}
        if len(strides) != 1:
            raise Refused(f"branches have different strides {sorted(strides)} on axis {i}")
        dil = {a.d for a in axes if a.k > 1}
        if len(dil) > 1:
            raise Refused(f"branches have different dilations {sorted(dil)} on axis {i}")
        d = dil.pop() if dil else 1
        extents = {a.p0 + a.p1 - d * (a.k - 1) for a in axes}
        if len(extents) != 1:
            raise Refused(f"branch output sizes differ on axis {i} (pads do not align)")
        p0 = max(a.p0 for a in axes)
        if any((p0 - a.p0) % d for a in axes):
            raise Refused(f"pads are not a whole number of dilated taps apart on axis {i}")
        offs = [(p0 - a.p0) // d for a in axes]
        k = max(o + a.k for o, a in zip(offs, axes, strict=True))
        p1 = extents.pop() + d * (k - 1) - p0
        kernel.append(k)
        dilations.append(d)
        begins.append(p0)
        ends.append(p1)
        for j, o in enumerate(offs):
            offsets[j].append(o)
    return tuple(kernel), tuple(dilations), tuple(begins + ends), [tuple(o) for o in offsets]


def _common_dilation(convs: list[ConvMap]) -> list[ConvMap]:
    """The convs with one dilation per axis: the gcd ``g`` of the dilations of the kernels
    wider than a tap there. A kernel of ``k`` taps ``d`` apart is the kernel of
    ``(k - 1) * d / g + 1`` taps ``g`` apart with zeros between its own (the same products
    at the same input positions, and zero ones between them, as any kernel placed in a
    larger frame has: UniRepLKNet's dilated branches merged into its large kernel). Strides
    and pads stay as they are."""
    r = convs[0].rank
    if any(c.rank != r for c in convs):
        return convs
    common = []
    for i in range(r):
        wide = [c.dilations[i] for c in convs if c.kernel[i] > 1]
        common.append(math.gcd(*wide) if wide else 1)
    out = []
    for c in convs:
        step = tuple(c.dilations[i] // common[i] if c.kernel[i] > 1 else 1 for i in range(r))
        if all(f == 1 for f in step):
            out.append(c)
            continue
        kernel = tuple((k - 1) * f + 1 for k, f in zip(c.kernel, step, strict=True))
        dilations = tuple(common[i] if c.kernel[i] > 1 else c.dilations[i] for i in range(r))
        out.append(replace(c, weight=Lazy(c.weight.shape[:2] + kernel,
                                          functools.partial(_spread, c.weight, step, kernel)),
                           dilations=dilations))
    return out


def _spread(weight: Lazy, step: tuple[int, ...], kernel: tuple[int, ...]) -> np.ndarray:
    """``weight``'s taps ``step`` apart in a zero kernel of shape ``kernel``."""
    values = weight.value()
    out = np.zeros(values.shape[:2] + kernel)
    out[(slice(None), slice(None), *(slice(None, None, f) for f in step))] = values
    return out


def _place(weight: np.ndarray, kernel: tuple[int, ...], offset: tuple[int, ...]) -> np.ndarray:
    """Put ``weight`` into a zero kernel of shape ``kernel`` at ``offset``."""
    out = np.zeros(weight.shape[:2] + kernel)
    taps = (slice(o, o + k) for o, k in zip(offset, weight.shape[2:], strict=True))
    index = (slice(None), slice(None), *taps)
    out[index] = weight
    return out


def _scaled(parent: Lazy, factor: np.ndarray) -> np.ndarray:
    """``parent.value() * factor``, in place when that value is a fresh array."""
    values = parent.value()
    if not parent.fresh:
        return values * factor
    values *= factor
    return values


def _sum_placed(
    shape: tuple[int, ...], parts: Sequence[tuple[float, Lazy, tuple[int, ...]]]
) -> np.ndarray:
    """``Σ sign * _place(kernel, offset)``, accumulated in place in one array, in order (the
    same sums, without a zero-padded copy and a scaled copy of every branch)."""
    first_sign, first, _ = parts[0]
    if first.fresh and first.shape == tuple(shape):  # the widest branch holds the sum
        out = first.value()
        if first_sign != 1:
            out *= first_sign
        rest = parts[1:]
    else:
        out, rest = np.zeros(shape), parts
    for s, w, offset in rest:
        taps = tuple(slice(o, o + k) for o, k in zip(offset, w.shape[2:], strict=True))
        view = out[(slice(None), slice(None), *taps)]
        view += w.value() if s == 1 else s * w.value()
    return out


def _common_group(maps: Sequence[Map]) -> int:
    """The group count all maps can be written with: the gcd of the convs' groups (a
    per-channel map fits any; docs/algebra.md §7)."""
    groups = [m.group for m in maps if isinstance(m, ConvMap)]
    return math.gcd(*groups) if groups else 1


def _channel_count(maps: Sequence[Map], what: str) -> int | None:
    counts = {c for c in map(_channels_of, maps) if c is not None}
    if len(counts) > 1:
        raise Refused(f"{what} have different channel counts {sorted(counts)}")
    return counts.pop() if counts else None


# --------------------------------------------------------------------------------------------
# parallel branches


def add(maps: Sequence[Map], signs: Sequence[float] | None = None) -> Map:
    """``Σ sign_i * m_i(x)``: kernels placed in a common frame and summed; biases summed."""
    signs = list(signs) if signs is not None else [1.0] * len(maps)
    if all(isinstance(m, ChannelAffine) for m in maps):
        pads = {m.pads for m in maps}
        if len(pads) != 1:
            raise Refused("padded identity branches with different pads")
        ch = _channel_count(maps, "branches")
        scale = sum(s * _vec(m.scale, ch, "scale") for s, m in zip(signs, maps, strict=True))
        shift = sum(s * _vec(m.shift, ch, "shift") for s, m in zip(signs, maps, strict=True))
        mag = sum(abs(s) * _bias_mag(m) for s, m in zip(signs, maps, strict=True))
        return ChannelAffine(maps[0].rank, scale, shift, pads.pop(), ch, mag)
    group = _common_group(maps)
    couts = {m.cout for m in maps if isinstance(m, ConvMap)}
    cins = {m.cin for m in maps if isinstance(m, ConvMap)}
    if len(couts) != 1 or len(cins) != 1:
        raise Refused("branches have different channel counts")
    (cout,), (cin,) = couts, cins
    for m in maps:
        if isinstance(m, ChannelAffine):
            if cin != cout:
                raise Refused(f"identity branch needs equal in/out channels ({cin} != {cout})")
            if m.channels is not None and m.channels != cout:
                raise Refused("identity branch has a different channel count")
    convs = _common_dilation([regroup(to_conv(m, group, cout), group) for m in maps])
    kernel, dilations, pads, offsets = _align(convs)
    parents = [(s, m.weight, o) for s, m, o in zip(signs, convs, offsets, strict=True)]
    shape = (cout, convs[0].weight.shape[1], *kernel)
    weight = Lazy(shape, lambda: _sum_placed(shape, parents))
    bias = sum(s * m.bias for s, m in zip(signs, convs, strict=True))
    mag = sum(abs(s) * _bias_mag(m) for s, m in zip(signs, convs, strict=True))
    return ConvMap(weight, bias, convs[0].strides, dilations, pads, group, bias_mag=mag)


def concat(maps: Sequence[Map], channels: int | None = None) -> ConvMap:
    """Maps of one input stacked along the output channels (docs/algebra.md §4).

    The merged conv is dense: with ``g > 1`` groups its first output block would have to read
    only the first input block, but the first map's channels read every block. Grouped maps
    are written densely first (docs/algebra.md §7); the region's cost check decides whether
    that pays."""
    cins = {m.cin for m in maps if isinstance(m, ConvMap)}
    if not cins and channels is None:
        raise Refused("the channel count of an identity branch is unknown")
    if len(cins) > 1:
        raise Refused("concatenated branches read different channel counts")
    cin = cins.pop() if cins else channels
    convs = _common_dilation([regroup(to_conv(m, 1, cin), 1) for m in maps])
    kernel, dilations, pads, offsets = _align(convs)
    parents = [(m.weight, o) for m, o in zip(convs, offsets, strict=True)]
    weight = Lazy(
        (sum(m.cout for m in convs), convs[0].cin, *kernel),
        lambda: np.concatenate([_place(w.value(), kernel, o) for w, o in parents]),
    )
    bias = np.concatenate([m.bias for m in convs])
    mag = np.concatenate([_bias_mag(m) for m in convs])
    return ConvMap(weight, bias, convs[0].strides, dilations, pads, 1, bias_mag=mag)


# --------------------------------------------------------------------------------------------
# sequential maps


def _border_ok(bias: np.ndarray, outer_pads: tuple[int, ...], what: str) -> None:
    if any(outer_pads) and np.any(bias != 0):
        raise Refused(f"{what} zero-pads a tensor whose border value (its bias) is not 0")


def _contract_groups(inner: ConvMap, outer: ConvMap) -> tuple[Lazy, int]:
    """Channel contraction of ``outer ∘ inner`` when one of them has a single tap.

    Returns the composite weight ``[Cout, Cin/g, *kernel]`` and its group count ``g``:
    ``W[o, i, taps] = Σ_m outer[o, m, taps_B] · inner[m, i, taps_A]`` per group. A channelwise
    side (depthwise with one output per input) keeps the other side's groups.
    """
    a_w, b_w = inner.weight, outer.weight
    kernel = tuple(max(p, q) for p, q in zip(inner.kernel, outer.kernel, strict=True))
    if _channelwise(inner):
        g, per_in = outer.group, outer.weight.shape[1]
        m = (np.arange(outer.cout)[:, None] // (outer.cout // g)) * per_in + np.arange(per_in)
        return Lazy((outer.cout, per_in, *kernel), lambda: b_w.value() * a_w.value()[:, 0][m]), g
    if _channelwise(outer):
        return Lazy(
            (inner.cout, inner.weight.shape[1], *kernel),
            lambda: a_w.value() * b_w.value()[:, 0][:, None],
        ), inner.group
    g = inner.group if inner.group == outer.group else 1
    pointwise_inner = all(k == 1 for k in inner.kernel)

    def make() -> np.ndarray:
        a, b = a_w.value(), b_w.value()
        if g != inner.group or g != outer.group:  # different groups: contract densely
            a, b = regroup_weight(a, inner.group, 1), regroup_weight(b, outer.group, 1)
        a = a.reshape((g, a.shape[0] // g, *a.shape[1:]))
        b = b.reshape((g, b.shape[0] // g, *b.shape[1:]))
        # per group, a matrix product through BLAS: [O, M] x [M, I] for every tap
        if pointwise_inner:  # b: [g, O, M, *k], a: [g, M, I]
            taps = b.shape[3:]
            bt = np.moveaxis(b, 2, -1).reshape(g, -1, b.shape[2])  # [g, O*K, M]
            w = np.matmul(bt, a.reshape(a.shape[:3]))  # [g, O*K, I]
            w = np.moveaxis(w.reshape(g, b.shape[1], *taps, -1), -1, 2)
        else:  # b: [g, O, M], a: [g, M, I, *k]
            w = np.matmul(b.reshape(b.shape[:3]), a.reshape(g, a.shape[1], -1))
            w = w.reshape(g, b.shape[1], *a.shape[2:])
        return np.ascontiguousarray(w.reshape((w.shape[0] * w.shape[1], *w.shape[2:])))

    return Lazy((outer.cout, inner.cin // g, *kernel), make), g


def _chain_bias(inner: ConvMap, outer: ConvMap) -> tuple[np.ndarray, np.ndarray]:
    """Bias of ``outer ∘ inner`` (``b_B + Σ_taps W_B · b_A``) and the bound on its terms."""
    weights = outer.weights()  # a single layer's kernel: the outer side is never a composite
    bias = outer.bias + _apply_channels(outer, inner.bias, weights)
    mag = _bias_mag(outer) + _apply_channels(outer, _bias_mag(inner), np.abs(weights))
    return bias, mag


def compose(inner: Map, outer: Map) -> Map:
    """``outer(inner(x))`` as one map (docs/algebra.md §3).

    Exact when ``inner`` is pointwise with stride 1 (then the pads add up, and ``outer`` must not
    zero-pad a non-zero bias), or when ``outer`` is pointwise with stride 1 and no pads
    (``W = W_outer · W_inner``, ``b = W_outer · b_inner + b_outer``; always exact).
    """
    if inner.rank != outer.rank:
        raise Refused("maps of different spatial rank")
    ch_in, ch_out = _channels_of(inner), (
        outer.cin if isinstance(outer, ConvMap) else outer.channels
    )
    if ch_in is not None and ch_out is not None and ch_in != ch_out:
        raise Refused(f"channel counts do not chain ({ch_in} -> {ch_out})")
    if isinstance(outer, ChannelAffine):
        # scale * zero_pad(inner) + shift
        scaled = affine(inner, outer.scale, np.zeros(1))
        if any(outer.pads):
            scaled = pad(scaled, outer.pads, 0.0)
        return affine(scaled, np.ones(1), outer.shift)
    outer_pads = outer.pads if outer.auto_pad == "NOTSET" else (1,)  # SAME pads at run time
    if isinstance(inner, ChannelAffine):
        _border_ok(inner.shift, outer_pads, "the conv")
        inner = to_conv(inner, outer.cin, outer.cin)
    if inner.pointwise and not (isinstance(inner, ConvMap) and inner.auto_pad != "NOTSET"):
        if outer.auto_pad != "NOTSET" and any(inner.pads):
            raise Refused(f"auto_pad={outer.auto_pad} after a padded map")
        _border_ok(inner.bias, outer_pads, "the second conv")
        weight, group = _contract_groups(inner, outer)
        bias, mag = _chain_bias(inner, outer)
        pads = tuple(a + b for a, b in zip(inner.pads, outer.pads, strict=True))
        return ConvMap(
            weight, bias, outer.strides, outer.dilations, pads, group, outer.auto_pad, mag
        )
    if outer.pointwise and not any(outer.pads) and outer.auto_pad == "NOTSET":
        weight, group = _contract_groups(inner, outer)
        bias, mag = _chain_bias(inner, outer)
        return replace(inner, weight=weight, bias=bias, group=group, bias_mag=mag)
    raise Refused("neither convolution is 1x1 with stride 1 (and no pads after)")


def narrowing(values: np.ndarray, dtype: np.dtype,
              channels: Callable[[np.ndarray], np.ndarray] | None = None) -> str | None:
    """Why the float64 ``values`` of a fold, rounded once to the model's float ``dtype``, do
    not hold what the unfolded layers compute (None when they do).

    - A value overflows (W * 1000 in float16 is inf; the unfolded Mul(Conv(x), 1000) is not).
    - A weight's whole output channel falls below the smallest normal number: subnormals keep
      a few bits, or none (W, s ~ 3e-4 in float16: W * s ~ 1e-7; 1e-23 * 1e-23 is 0 in
      float32), so that channel's output is off by percents, where the unfolded layers round
      two normal numbers. A small weight among normal ones in its channel is no harm: its
      rounding error is below the largest one's. ``channels`` arranges a weight as ``[output
      channel, rest]`` (given for weights only: a bias's rounding is that of the output).

    One pass of min and max over the values, by channel: no temporary the size of a kernel.
    Values that are not finite already are the caller's to refuse."""
    if not values.size:
        return None
    info = np.finfo(dtype)
    rows = channels(values) if channels is not None else values.reshape(1, -1)
    low, high = rows.min(axis=1), rows.max(axis=1)
    if not (-float(info.max) <= low.min() and high.max() <= float(info.max)):
        return f"overflow {info.dtype}"
    if channels is not None:
        peak = np.maximum(high, -low)
        if np.any((peak > 0) & (peak < info.tiny)):
            return (f"fall below the smallest normal {info.dtype} in a whole output channel "
                    "(subnormal weights keep only a few bits, or none)")
    return None


def by_first_axis(a: np.ndarray) -> np.ndarray:
    """A Conv's or a dense layer's weight as ``[output channel, rest]``."""
    return a.reshape(a.shape[0], -1)


def pad(
    m: Map, pads: tuple[int, ...], value: np.ndarray | float, tolerance: float = 0.0
) -> Map:
    """``m(x)`` padded on the spatial axes by ``pads`` with (per-channel) ``value``.

    Exact when ``m`` is pointwise and its bias equals ``value`` (its border then *is* its bias);
    the pads join the map's own. ``tolerance`` admits a value that an exporter computed from
    the same parameters in a narrower float type: it is relative to the largest magnitude of
    the terms the biases of the layer were summed from (``bias_mag``: DBB's
    ``beta - mean * t`` can cancel to nearly 0 in one channel while its float32 rounding stays
    at the scale of ``beta``; a bias the exporter already folded is a single term, whose
    rounding is at the scale of its layer's biases). The merged map uses the bias, the float64
    value of the same expression. A map whose bias terms are all zero (an identity, a conv
    without bias) admits only an exact zero.
    """
    if not m.pointwise or (isinstance(m, ConvMap) and m.auto_pad != "NOTSET"):
        raise Refused("padding after a convolution with a kernel larger than 1x1 or a stride")
    bias = m.bias if isinstance(m, ConvMap) else m.shift
    value = np.asarray(value, dtype=np.float64).reshape(-1)
    scale = float(np.max(_bias_mag(m), initial=0.0))
    if not np.all(np.abs(bias - value) <= tolerance * scale):  # NaN: never within
        raise Refused("pad value differs from the padded tensor's value at zero input")
    new_pads = tuple(a + b for a, b in zip(m.pads, pads, strict=True))
    return replace(m, pads=new_pads)


# --------------------------------------------------------------------------------------------
# dense layers: a Linear is the 1x1 case of these maps (rank 0: no spatial axes)


def flatten(m: Map) -> Map:
    """``m`` on a tensor whose spatial axes are gone (1x1, then flattened or averaged away):
    the same map with rank 0. Exact for a pointwise map without pads (per-pixel channel
    mixing commutes with dropping unit axes and with a spatial mean; docs/algebra.md §8)."""
    if m.rank == 0:
        return m
    if not m.pointwise or any(m.pads) or (isinstance(m, ConvMap) and m.auto_pad != "NOTSET"):
        raise Refused("only a per-pixel map (a 1x1 conv or a per-channel affine without pads) "
                      "moves through a spatial mean or flatten")
    if isinstance(m, ChannelAffine):
        return replace(m, rank=0, pads=())
    parent, shape = m.weight, m.weight.shape[:2]
    weight = Lazy(shape, lambda: parent.value().reshape(shape), fresh=parent.fresh)
    return replace(m, weight=weight, strides=(), dilations=(), pads=())


def gemm(b: Lazy | np.ndarray, c: np.ndarray | None, alpha: float, beta: float,
         trans_b: bool) -> ConvMap:
    """``Gemm(A, B, C)`` as a map of A's rows: ``y = alpha * A · op(B) + beta * C``, the
    rank-0 map with weight ``W[n, k] = alpha * op(B)[k, n]`` and bias ``beta * C``. ``C``
    must be a scalar or one value per output feature (a ``[M, N]`` bias is no map of A).
    ``MatMul(A, B)`` is the case ``alpha = 1``, no ``C``."""
    lazy = b if isinstance(b, Lazy) else Lazy.of(b)
    if lazy.ndim != 2:
        raise Refused(f"a weight of shape {list(lazy.shape)} is not a matrix")
    n, k = lazy.shape[::-1] if not trans_b else lazy.shape
    if c is None:
        bias = np.zeros(n)
    else:
        c = np.asarray(c, dtype=np.float64)
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            raise Refused(f"a Gemm bias of shape {list(c.shape)} is not one value per feature")
        bias = np.broadcast_to(beta * c.reshape(-1), (n,)).copy()

    def make() -> np.ndarray:
        values = lazy.value()
        return alpha * (values if trans_b else values.T)

    return ConvMap(Lazy((n, k), make), bias, (), (), ())


def dense_weights(m: ConvMap) -> np.ndarray:
    """The ``[N, K]`` weight of a rank-0 map (its groups written densely)."""
    if m.rank != 0:
        raise Refused("a map with spatial axes is no dense layer")
    return regroup_weight(m.weights(), m.group, 1)


def transposed_affine(
    weight: np.ndarray, bias: np.ndarray | None, group: int, scale: np.ndarray,
    shift: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``scale * ConvTranspose(x) + shift`` per output channel as one ConvTranspose.

    The weight is ``[Cin, Cout/g, *k]`` and output channel ``o = (c // (Cin/g)) · (Cout/g) +
    j`` for ``W[c, j]``, so ``W'[c, j] = W[c, j] · scale[o]`` and ``b' = scale · b + shift``.
    Rescaling output channels commutes with strides, pads, output_padding and dilations, and
    positions only output_padding reaches hold ``scale · b + shift`` as before: exact."""
    w = np.asarray(weight, dtype=np.float64)
    cin, per_group = w.shape[:2]
    cout = per_group * group
    t = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (cout,))
    out_channel = (np.arange(cin)[:, None] // (cin // group)) * per_group + np.arange(per_group)
    factor = t[out_channel].reshape(w.shape[:2] + (1,) * (w.ndim - 2))
    b = np.zeros(cout) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    return w * factor, t * b + np.broadcast_to(np.asarray(shift, dtype=np.float64), (cout,))


def transposed_channels(group: int) -> Callable[[np.ndarray], np.ndarray]:
    """A ConvTranspose weight ``[Cin, Cout/g, *k]`` as ``[output channel, rest]`` (see
    :func:`transposed_affine` for which channel each entry feeds)."""
    def arrange(a: np.ndarray) -> np.ndarray:
        cin, per_group = a.shape[:2]
        grouped = a.reshape(group, cin // group, per_group, -1)
        return grouped.transpose(0, 2, 1, 3).reshape(group * per_group, -1)

    return arrange


def avg_pool(
    channels: int,
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...] | None = None,
) -> ConvMap:
    """``AveragePool`` (count_include_pad=1, or no pads) as a depthwise conv of ``1/prod(k)``."""
    rank = len(kernel)
    shape = (channels, 1, *tuple(kernel))
    w = Lazy(shape, lambda: np.full(shape, 1.0 / math.prod(kernel)))
    return ConvMap(
        w, np.zeros(channels), tuple(strides), tuple(dilations or (1,) * rank), tuple(pads),
        channels,
    )


def resolve_auto_pad(
    auto_pad: str,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    input_size: Sequence[int | None] | None,
) -> tuple[int, ...] | None:
    """Explicit ONNX pads for ``auto_pad``, or ``None`` when they depend on the input size.

    ``SAME_*``: total pad ``max((ceil(n/s) - 1)*s + (k-1)*d + 1 - n, 0)``, which is
    ``(k-1)*d`` whatever ``n`` when ``s == 1``; SAME_UPPER puts the odd pixel at the end.
    """
    r = len(kernel)
    if auto_pad == "VALID":
        return (0,) * (2 * r)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise Refused(f"unknown auto_pad {auto_pad!r}")
    begins, ends = [], []
    for i in range(r):
        k, s, d = kernel[i], strides[i], dilations[i]
        if s == 1:
            total = (k - 1) * d
        else:
            n = input_size[i] if input_size is not None else None
            if n is None:
                return None
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small = total // 2
        if auto_pad == "SAME_UPPER":
            begins.append(small)
            ends.append(total - small)
        else:
            begins.append(total - small)
            ends.append(small)
    return tuple(begins + ends)

