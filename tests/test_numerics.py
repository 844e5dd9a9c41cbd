"""The float64 algebra against torch.nn.functional in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onnxrep import numerics as nx
from onnxrep.refusal import Refused

RNG = np.random.default_rng(0)
TOL = {"rtol": 1e-10, "atol": 1e-10}


def run(m: nx.Map, x: np.ndarray) -> np.ndarray:
    """Evaluate a map with torch in float64 (the reference semantics of the docstrings)."""
    t = torch.from_numpy(x)
    r = m.rank
    pads: list[int] = []
    for i in reversed(range(r)):  # F.pad wants last axis first, (begin, end) pairs
        pads += [m.pads[i], m.pads[r + i]]
    t = F.pad(t, pads)
    if isinstance(m, nx.ChannelAffine):
        shape = (1, -1) + (1,) * r
        scale = torch.from_numpy(m.scale).reshape(shape)
        shift = torch.from_numpy(m.shift).reshape(shape)
        return (t * scale + shift).numpy()
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[r]
    out = conv(
        t, torch.from_numpy(m.weights()), torch.from_numpy(m.bias),
        stride=m.strides, dilation=m.dilations, groups=m.group,
    )
    return out.numpy()


def conv(cout: int, cin: int, kernel: tuple[int, ...], *, pads=None, strides=None,
         dilations=None, group: int = 1, bias: bool = True) -> nx.ConvMap:
    r = len(kernel)
    w = RNG.standard_normal((cout, cin // group, *kernel))
    b = RNG.standard_normal(cout) if bias else np.zeros(cout)
    return nx.ConvMap(
        w, b, tuple(strides or (1,) * r), tuple(dilations or (1,) * r),
        tuple(pads or (0,) * (2 * r)), group,
    )


def x_of(c: int, *spatial: int) -> np.ndarray:
    return RNG.standard_normal((2, c, *spatial))


@pytest.mark.parametrize("group", [1, 2, 8])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_affine_after_conv(group: int, rank: int) -> None:
    m = conv(8, 8, (3,) * rank, pads=(1,) * 2 * rank, group=group)
    t, s, _ = nx.batch_norm_affine(*(RNG.random((4, 8)) + 0.5), eps=1e-5)
    x = x_of(8, *(7,) * rank)
    want = run(m, x) * t.reshape((1, -1) + (1,) * rank) + s.reshape((1, -1) + (1,) * rank)
    np.testing.assert_allclose(run(nx.affine(m, t, s), x), want, **TOL)


def test_batch_norm_affine_matches_torch() -> None:
    y = torch.from_numpy(x_of(6, 5, 5))
    g, b, mu, v = (RNG.random(6) + 0.1 for _ in range(4))
    want = F.batch_norm(y, *(torch.from_numpy(a) for a in (mu, v, g, b)), eps=1e-3).numpy()
    t, s, _ = nx.batch_norm_affine(g, b, mu, v, 1e-3)
    got = y.numpy() * t[:, None, None] + s[:, None, None]
    np.testing.assert_allclose(got, want, **TOL)


BRANCH_SETS = {
    "repvgg": [dict(kernel=(3, 3), pads=(1, 1, 1, 1)), dict(kernel=(1, 1)), "identity"],
    "acnet": [
        dict(kernel=(3, 3), pads=(1, 1, 1, 1)),
        dict(kernel=(1, 3), pads=(0, 1, 0, 1)),
        dict(kernel=(3, 1), pads=(1, 0, 1, 0)),
    ],
    "multiscale": [
        dict(kernel=(1, 1)), dict(kernel=(3, 3), pads=(1, 1, 1, 1)),
        dict(kernel=(5, 5), pads=(2, 2, 2, 2)),
    ],
    "strided": [
        dict(kernel=(3, 3), pads=(1, 1, 1, 1), strides=(2, 2)),
        dict(kernel=(1, 1), strides=(2, 2)),
    ],
    "dilated": [
        dict(kernel=(3, 3), pads=(2, 2, 2, 2), dilations=(2, 2)),
        dict(kernel=(1, 1)), "identity",
    ],
    "shifted": [dict(kernel=(3, 3), pads=(1, 1, 1, 1)), dict(kernel=(3, 3), pads=(0, 0, 2, 2))],
    "valid": [dict(kernel=(3, 3)), dict(kernel=(1, 1), pads=(-1, -1, -1, -1))],
}


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("name", [n for n in BRANCH_SETS if n != "valid"])
def test_add_branches(name: str, group: int) -> None:
    maps: list[nx.Map] = []
    for spec in BRANCH_SETS[name]:
        if spec == "identity":
            maps.append(nx.affine(nx.ChannelAffine.identity(2), RNG.random(8), RNG.random(8)))
        else:
            maps.append(conv(8, 8, group=group, **spec))
    signs = [1.0, -1.0, 0.5][: len(maps)]
    x = x_of(8, 9, 10)
    merged = nx.add(maps, signs)
    assert isinstance(merged, nx.ConvMap) and merged.group == group
    want = sum(s * run(m, x) for s, m in zip(signs, maps, strict=True))
    np.testing.assert_allclose(run(merged, x), want, **TOL)


def test_add_refuses_unequal_strides_dilations_and_frames() -> None:
    base = conv(8, 8, (3, 3), pads=(1, 1, 1, 1))
    cases = {
        "strides": conv(8, 8, (1, 1), strides=(2, 2)),
        "output sizes": conv(8, 8, (1, 1), pads=(1, 1, 1, 1)),
    }
    for word, other in cases.items():
        with pytest.raises(Refused, match=word):
            nx.add([base, other])
    dil = conv(8, 8, (3, 3), pads=(2, 2, 2, 2), dilations=(2, 2))
    odd = conv(8, 8, (3, 3), pads=(1, 1, 3, 3), dilations=(2, 2))
    with pytest.raises(Refused, match="whole number"):
        nx.add([dil, odd])
    with pytest.raises(Refused, match="in/out channels"):
        nx.add([conv(8, 4, (1, 1)), nx.ChannelAffine.identity(2)])


def test_add_of_different_dilations_spreads_the_taps() -> None:
    """A 3x3 and a 3x3 at dilation 2 (and one at 3 on one axis): a 7x5 kernel at dilation
    1, the same map."""
    maps = [conv(8, 8, (3, 3), pads=(1, 1, 1, 1)),
            conv(8, 8, (3, 3), pads=(2, 2, 2, 2), dilations=(2, 2)),
            conv(8, 8, (3, 3), pads=(3, 2, 3, 2), dilations=(3, 2))]
    merged = nx.add(maps)
    assert isinstance(merged, nx.ConvMap)
    assert merged.kernel == (7, 5) and merged.dilations == (1, 1)
    x = x_of(8, 11, 9)
    np.testing.assert_allclose(run(merged, x), sum(run(m, x) for m in maps), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize(("groups", "want_group"), [
    ((1, 8, 1), 1),    # dense 3x3 + depthwise 3x3 + 1x1: one dense conv
    ((4, 8, 2), 2),    # gcd(4, 8, 2)
    ((8, 8, 8), 8),
])
def test_add_of_mixed_group_counts(groups: tuple[int, ...], want_group: int) -> None:
    """A g-grouped kernel is block-diagonal in any g' dividing g (§7): the sum has gcd groups.
    An identity and an average pool (depthwise) join as well."""
    maps: list[nx.Map] = [
        conv(8, 8, (3, 3), pads=(1, 1, 1, 1), group=groups[0]),
        conv(8, 8, (3, 3), pads=(1, 1, 1, 1), group=groups[1]),
        conv(8, 8, (1, 1), group=groups[2]),
        nx.affine(nx.ChannelAffine.identity(2), RNG.random(8), RNG.random(8)),
        nx.avg_pool(8, (3, 3), (1, 1), (1, 1, 1, 1)),
    ]
    merged = nx.add(maps)
    assert isinstance(merged, nx.ConvMap) and merged.group == want_group
    x = x_of(8, 6, 7)
    np.testing.assert_allclose(run(merged, x), sum(run(m, x) for m in maps), **TOL)


@pytest.mark.parametrize("group", [2, 4])
def test_regroup_is_the_same_map(group: int) -> None:
    m = conv(8, 8, (3, 3), pads=(1, 1, 1, 1), group=group)
    x = x_of(8, 5, 5)
    for coarser in (1, group // 2, group):
        np.testing.assert_allclose(run(nx.regroup(m, coarser), x), run(m, x), **TOL)
    with pytest.raises(Refused, match="do not refine"):
        nx.regroup(m, 3)


def test_concat() -> None:
    maps = [conv(4, 6, (3, 3), pads=(1, 1, 1, 1)), conv(5, 6, (1, 1)), nx.ChannelAffine.identity(2)]
    x = x_of(6, 7, 7)
    merged = nx.concat(maps)
    want = np.concatenate([run(m, x) for m in maps], axis=1)
    np.testing.assert_allclose(run(merged, x), want, **TOL)


@pytest.mark.parametrize(("maps", "want_group"), [
    # two depthwise convs stacked read the wrong blocks as 8 groups: dense
    (lambda: [conv(8, 8, (3, 3), pads=(1,) * 4, group=8), conv(8, 8, (1, 1), group=8)], 1),
    # a grouped conv and a dense one: dense
    (lambda: [conv(4, 6, (1, 1), group=2), conv(4, 6, (1, 1))], 1),
    # two convs of 2 groups each
    (lambda: [conv(4, 8, (1, 1), group=2), conv(4, 8, (3, 3), pads=(1,) * 4, group=2)], 1),
])
def test_concat_of_grouped_maps(maps, want_group: int) -> None:
    ms = maps()
    merged = nx.concat(ms)
    x = x_of(ms[0].cin, 6, 6)
    want = np.concatenate([run(m, x) for m in ms], axis=1)
    np.testing.assert_allclose(run(merged, x), want, **TOL)
    assert merged.group == want_group


@pytest.mark.parametrize(
    ("inner_group", "outer_group"), [(1, 1), (2, 2), (1, 2), (2, 1), (4, 4)]
)
def test_compose_pointwise_then_kxk(inner_group: int, outer_group: int) -> None:
    inner = conv(8, 4, (1, 1), group=inner_group)  # internal channels 8 != 4 input channels
    outer = conv(12, 8, (3, 3), strides=(2, 2), group=outer_group)
    x = x_of(4, 9, 9)
    np.testing.assert_allclose(run(nx.compose(inner, outer), x), run(outer, run(inner, x)), **TOL)


@pytest.mark.parametrize(("cout", "group"), [(6, 1), (6, 2), (8, 8), (16, 8), (8, 4)])
def test_compose_bias_and_its_bound_in_every_layout(cout: int, group: int) -> None:
    """``b = b_B + Σ W_B · b_A`` and ``mag = |b_B| + Σ |W_B| · mag_A`` summed term by term,
    for dense, grouped, depthwise and depthwise-with-multiplier outer convs."""
    inner = conv(8, 8, (1, 1))
    outer = conv(cout, 8, (3, 2), group=group)
    got = nx.compose(inner, outer)
    w = outer.weights()
    per = 8 // group
    want_bias, want_mag = outer.bias.copy(), np.abs(outer.bias)
    for o in range(cout):
        first = (o // (cout // group)) * per
        for i in range(per):
            want_bias[o] += w[o, i].sum() * inner.bias[first + i]
            want_mag[o] += np.abs(w[o, i]).sum() * np.abs(inner.bias[first + i])
    np.testing.assert_allclose(got.bias, want_bias, **TOL)
    np.testing.assert_allclose(got.bias_mag, want_mag, **TOL)
    x = x_of(8, 5, 5)
    np.testing.assert_allclose(run(got, x), run(outer, run(inner, x)), **TOL)


def test_compose_kxk_then_pointwise_and_diagonals() -> None:
    inner = conv(8, 8, (3, 3), pads=(1, 0, 2, 1), strides=(2, 1), group=8)
    outer = conv(6, 8, (1, 1))
    x = x_of(8, 9, 9)
    np.testing.assert_allclose(run(nx.compose(inner, outer), x), run(outer, run(inner, x)), **TOL)
    diag = nx.affine(nx.ChannelAffine.identity(2), RNG.random(8), RNG.random(8))
    for a, b in [(diag, conv(8, 8, (3, 3), group=4)), (conv(8, 8, (3, 3), group=4), diag)]:
        np.testing.assert_allclose(run(nx.compose(a, b), x), run(b, run(a, x)), **TOL)


def test_compose_padded_kxk_after_biased_pointwise_is_refused() -> None:
    inner = conv(8, 4, (1, 1))
    outer = conv(8, 8, (3, 3), pads=(1, 1, 1, 1))
    with pytest.raises(Refused, match="border"):
        nx.compose(inner, outer)
    unbiased = conv(8, 4, (1, 1), bias=False)
    x = x_of(4, 6, 6)
    got = run(nx.compose(unbiased, outer), x)
    np.testing.assert_allclose(got, run(outer, run(unbiased, x)), **TOL)
    with pytest.raises(Refused, match="1x1"):
        nx.compose(conv(8, 8, (3, 3)), conv(8, 8, (3, 3)))


def test_pad_with_bias_value_then_conv_is_exact() -> None:
    """DBB's "BN and pad": the border holds BN(0), which is the pointwise map's bias."""
    inner = conv(8, 4, (1, 1))
    padded = nx.pad(inner, (1, 1, 1, 1), inner.bias)
    outer = conv(8, 8, (3, 3))
    x = x_of(4, 6, 6)
    ref = run(inner, x)
    ref = np.pad(ref, ((0, 0), (0, 0), (1, 1), (1, 1)))
    border = np.ones_like(ref, dtype=bool)
    border[:, :, 1:-1, 1:-1] = False
    ref = np.where(border, inner.bias[None, :, None, None], ref)
    np.testing.assert_allclose(run(nx.compose(padded, outer), x), run(outer, ref), **TOL)
    with pytest.raises(Refused, match="pad value"):
        nx.pad(inner, (1, 1, 1, 1), inner.bias + 1e-3)
    with pytest.raises(Refused, match="kernel larger"):
        nx.pad(conv(8, 8, (3, 3)), (1, 1, 1, 1), 0.0)


def test_avg_pool_matches_torch() -> None:
    x = x_of(5, 8, 9)
    m = nx.avg_pool(5, (3, 3), (2, 2), (1, 1, 1, 1))
    want = F.avg_pool2d(torch.from_numpy(x), 3, 2, 1, count_include_pad=True).numpy()
    np.testing.assert_allclose(run(m, x), want, **TOL)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize(("k", "s", "n"), [(3, 1, 7), (4, 1, 7), (3, 2, 8), (3, 2, 7), (1, 2, 5)])
def test_resolve_auto_pad(mode: str, k: int, s: int, n: int) -> None:
    pads = nx.resolve_auto_pad(mode, (k,), (s,), (1,), (n,))
    assert pads is not None
    out = (n + pads[0] + pads[1] - k) // s + 1
    assert out == -(-n // s)  # SAME keeps ceil(n / s) outputs
    assert pads[1] - pads[0] in ((0, 1) if mode == "SAME_UPPER" else (0, -1))
    assert nx.resolve_auto_pad(mode, (k,), (2,), (1,), None) is None


def test_pad_tolerance_scales_with_the_terms_of_the_bias() -> None:
    """BN(0) = beta - mean * t may cancel to nearly 0; an exporter's float32 value of it is off
    by rounding at the scale of beta, not of the result. A zero bias admits only zero."""
    inner = conv(4, 4, (1, 1), bias=False)
    t, s, mag = nx.batch_norm_affine(
        np.ones(4), np.full(4, 0.3), np.full(4, 0.299), np.ones(4) - 1e-5, 1e-5
    )
    m = nx.affine(inner, t, s, mag)
    tol = 64 * float(np.finfo(np.float32).eps)
    assert np.allclose(m.bias, 1e-3) and np.all(m.bias_mag > 0.5)
    nx.pad(m, (1, 1, 1, 1), m.bias + 1e-7, tolerance=tol)  # float32 rounding of 0.3-scale terms
    with pytest.raises(Refused, match="pad value"):
        nx.pad(m, (1, 1, 1, 1), m.bias + 1e-4, tolerance=tol)
    with pytest.raises(Refused, match="pad value"):
        nx.pad(inner, (1, 1, 1, 1), 0.03, tolerance=64 * float(np.finfo(np.float16).eps))


def test_kernels_are_computed_only_when_asked_for() -> None:
    calls = []
    leaf = nx.Lazy((8, 8, 3, 3), lambda: calls.append(1) or RNG.standard_normal((8, 8, 3, 3)))
    m = nx.ConvMap(leaf, np.zeros(8), (1, 1), (1, 1), (1, 1, 1, 1))
    merged = nx.add([nx.affine(m, RNG.random(8), RNG.random(8)), conv(8, 8, (1, 1))])
    assert calls == [] and merged.kernel == (3, 3)
    assert merged.weights().shape == (8, 8, 3, 3) and calls == [1]


@pytest.mark.parametrize("group", [1, 2, 3])
def test_transposed_channels_rows_are_the_output_channels(group: int) -> None:
    """Row o of the arranged ConvTranspose weight holds exactly the entries that
    ``transposed_affine`` scales by ``scale[o]``: a one-hot scale keeps just that row."""
    w = np.random.default_rng(group).uniform(1, 2, (6, 2, 3, 3))
    rows = nx.transposed_channels(group)(w)
    assert rows.shape == (2 * group, 6 // group * 9)
    for o in range(2 * group):
        one_hot = np.eye(2 * group)[o]
        kept, _ = nx.transposed_affine(w, None, group, one_hot, np.zeros(2 * group))
        np.testing.assert_array_equal(np.sort(kept[kept != 0]), np.sort(rows[o]))


def test_narrowing_judges_whole_output_channels() -> None:
    """One small weight among normal ones in its channel rounds harmlessly to a float16
    subnormal; a channel made only of such weights does not."""
    half = np.dtype(np.float16)
    w = np.array([[1.0, -1e-6], [-1e-6, 2e-6]])
    assert nx.narrowing(w[:1], half, nx.by_first_axis) is None
    why = nx.narrowing(w, half, nx.by_first_axis)
    assert why is not None and "smallest normal float16" in why
    assert nx.narrowing(-w[1:], half, nx.by_first_axis) == why  # by magnitude, either sign
    assert nx.narrowing(np.zeros((2, 2)), half, nx.by_first_axis) is None
    assert nx.narrowing(np.array([1e5]), half) == "overflow float16"
    assert nx.narrowing(np.array([-1e5]), half) == "overflow float16"
    assert nx.narrowing(np.array([1e-6]), half) is None  # a bias: rounds as the output does
