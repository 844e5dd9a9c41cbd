"""Branch collapse: every sum of parallel linear branches on one tensor becomes one Conv."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.builders import GraphBuilder, op_counts
from tests.helpers import optimized, reasons

C = 8


def conv_bn(g: GraphBuilder, x: str, k, *, cin: int = C, cout: int = C, **kw) -> str:
    return g.bn(g.conv(x, cin, cout, k, bias=False, **kw), cout)


def end(g: GraphBuilder, y: str):
    return g.model([g.node("Relu", [y])])


@pytest.mark.parametrize("group", [1, 4, C])
@pytest.mark.parametrize("identity", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_repvgg(group: int, identity: bool, stride: int) -> None:
    g = GraphBuilder(seed=group + stride)
    x = g.input([1, C, 10, 10])
    y = g.node("Add", [conv_bn(g, x, 3, group=group, stride=stride),
                       conv_bn(g, x, 1, group=group, stride=stride)])
    if identity and stride == 1:
        y = g.node("Add", [y, g.bn(x, C)])
    r = optimized(end(g, y), {"Conv": 1, "Relu": 1})
    assert r.applied_by_pattern() == {"branches": 1}


def test_repvgg_without_identity_when_channels_change() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 10, 10])
    y = g.node("Add", [conv_bn(g, x, 3, cin=4, cout=12), conv_bn(g, x, 1, cin=4, cout=12)])
    optimized(end(g, y), {"Conv": 1, "Relu": 1})


def test_acnet_and_multiscale() -> None:
    g = GraphBuilder(seed=1)
    x = g.input([1, C, 9, 11])
    ac = g.node("Sum", [conv_bn(g, x, 3), conv_bn(g, x, (1, 3)), conv_bn(g, x, (3, 1))])
    ms = g.node("Sum", [conv_bn(g, ac, 1), conv_bn(g, ac, 3), conv_bn(g, ac, 5)])
    r = optimized(end(g, ms), {"Conv": 2, "Relu": 1})
    assert all(f.pattern == "branches" for f in r.applied)


@pytest.mark.parametrize("depthwise", [True, False])
def test_mobileone(depthwise: bool) -> None:
    g = GraphBuilder(seed=2)
    x = g.input([1, C, 9, 9])
    k, group = (3, C) if depthwise else (1, 1)
    parts = [conv_bn(g, x, k, group=group) for _ in range(3)]
    if depthwise:
        parts.append(conv_bn(g, x, 1, group=group))  # the 1x1 "scale" branch
    parts.append(g.bn(x, C))
    y = parts[0]
    for p in parts[1:]:
        y = g.node("Add", [y, p])
    optimized(end(g, y), {"Conv": 1, "Relu": 1})


@pytest.mark.parametrize("alpha_shape", [(1,), (1, C, 1, 1)])
@pytest.mark.parametrize("alpha_first", [True, False])
def test_ppyoloe_alpha(alpha_shape: tuple[int, ...], alpha_first: bool) -> None:
    g = GraphBuilder(seed=3)
    x = g.input([1, C, 9, 9])
    alpha = g.init(g.rng.uniform(0.2, 2.0, alpha_shape))
    small = conv_bn(g, x, 1)
    scaled = g.node("Mul", [alpha, small] if alpha_first else [small, alpha])
    optimized(end(g, g.node("Add", [conv_bn(g, x, 3), scaled])), {"Conv": 1, "Relu": 1})


def test_residual_forms() -> None:
    g = GraphBuilder(seed=4)
    x = g.input([1, C, 9, 9])
    a = g.node("Add", [x, conv_bn(g, x, 3)])  # x + conv_bn(x)
    s = g.init(g.rng.uniform(0.5, 1.5, (1, C, 1, 1)))
    diff = g.node("Sub", [conv_bn(g, a, 3), g.bn(a, C)])
    b = g.node("Add", [a, g.node("Mul", [s, diff])])  # x + s * (conv_bn(x) - bn(x))
    c = g.node("Add", [conv_bn(g, b, 7), conv_bn(g, b, 3)])  # large + small kernel
    optimized(end(g, c), {"Conv": 3, "Relu": 1})


def test_nested_sums_and_sub_with_constant_shift() -> None:
    g = GraphBuilder(seed=5)
    x = g.input([1, C, 8, 8])
    inner = g.node("Sub", [conv_bn(g, x, 3), conv_bn(g, x, 1)])
    outer = g.node("Sum", [inner, g.node("Add", [g.bn(x, C), conv_bn(g, x, (1, 3))]), x])
    outer = g.node("Sub", [g.init(np.float32(0.25)), outer])
    optimized(end(g, outer), {"Conv": 1, "Relu": 1})


def test_three_dimensional_branches() -> None:
    g = GraphBuilder(seed=6)
    x = g.input([1, 4, 5, 6, 7])
    y = g.node("Add", [g.bn(g.conv(x, 4, 4, 3, rank=3), 4), g.bn(g.conv(x, 4, 4, 1, rank=3), 4)])
    optimized(end(g, g.node("Add", [y, x])), {"Conv": 1, "Relu": 1})


# ----------------------------------------------------------------------------------------------
# what must not collapse


def test_branches_reading_different_tensors() -> None:
    g = GraphBuilder()
    x, z = g.input([1, C, 8, 8]), g.input([1, C, 8, 8])
    y = g.node("Add", [conv_bn(g, x, 3), conv_bn(g, z, 1)])
    r = optimized(end(g, y), {"Conv": 2, "Add": 1, "Relu": 1})
    assert any("different tensors" in s for s in reasons(r))


@pytest.mark.parametrize(
    ("a", "b", "word"),
    [
        (dict(k=3, dilation=2, pads=[2, 2, 2, 2]), dict(k=3, dilation=2, pads=[1, 1, 3, 3]),
         "whole number"),
    ],
)
def test_incompatible_frames_are_refused(a: dict, b: dict, word: str) -> None:
    g = GraphBuilder(seed=7)
    x = g.input([1, C, 12, 12])
    ka, kb = a.pop("k"), b.pop("k")
    left, right = conv_bn(g, x, ka, **a), conv_bn(g, x, kb, **b)
    r = optimized(end(g, g.node("Add", [left, right])), {"Conv": 2, "Add": 1, "Relu": 1})
    assert any(word in s for s in reasons(r)), reasons(r)


def test_unequal_strides_are_refused() -> None:
    g = GraphBuilder(seed=8)
    x = g.input([1, C, 9, 9])
    a = conv_bn(g, x, 3, stride=2)  # 9 -> 5
    b = conv_bn(g, x, 5, stride=1, pads=[0, 0, 0, 0])  # 9 -> 5 as well
    r = optimized(end(g, g.node("Add", [a, b])), {"Conv": 2, "Add": 1, "Relu": 1})
    assert any("strides" in s for s in reasons(r))


def test_branch_that_is_a_graph_output_or_feeds_another_node() -> None:
    g = GraphBuilder(seed=9)
    x = g.input([1, C, 8, 8])
    a, b = conv_bn(g, x, 3), conv_bn(g, x, 1)
    y = g.node("Relu", [g.node("Add", [a, b])])
    r = optimized(g.model([y, a]), {"Conv": 2, "Add": 1, "Relu": 1})
    assert any("graph output" in s for s in reasons(r))

    g = GraphBuilder(seed=9)
    x = g.input([1, C, 8, 8])
    a, b = conv_bn(g, x, 3), conv_bn(g, x, 1)
    y = g.node("Add", [g.node("Add", [a, b]), g.node("Sigmoid", [b])])
    r = optimized(g.model([y]), {"Conv": 2, "Add": 2, "Sigmoid": 1})
    assert any("also feeds" in s for s in reasons(r))


def test_non_constant_scale_is_refused() -> None:
    g = GraphBuilder(seed=10)
    x = g.input([1, C, 8, 8])
    alpha = g.input([1])
    y = g.node("Add", [conv_bn(g, x, 3), g.node("Mul", [alpha, conv_bn(g, x, 1)])])
    r = optimized(end(g, y), {"Conv": 2, "Mul": 1, "Add": 1, "Relu": 1})
    assert any("not a constant" in s for s in reasons(r))


def test_identity_branch_needs_equal_channels() -> None:
    g = GraphBuilder(seed=11)
    x = g.input([1, C, 8, 8])
    y = g.node("Add", [conv_bn(g, x, 3, cout=C), g.bn(x, C)])
    optimized(end(g, y), {"Conv": 1, "Relu": 1})
    g = GraphBuilder(seed=11)
    x = g.input([1, 1, 8, 8])  # a 1-channel input broadcasts against C channels
    y = g.node("Add", [conv_bn(g, x, 3, cin=1, cout=C), x])
    r = optimized(end(g, y), {"Conv": 1, "Add": 1, "Relu": 1})
    assert any("channels" in s for s in reasons(r))


def test_merge_that_would_cost_more_is_refused() -> None:
    """A dense 1x1 and a depthwise 3x3 merge only densely: 9x the work of the 1x1."""
    g = GraphBuilder(seed=12)
    x = g.input([1, C, 8, 8])
    y = g.node("Add", [conv_bn(g, x, 3, group=C), conv_bn(g, x, 1)])
    r = optimized(end(g, y), {"Conv": 2, "Add": 1, "Relu": 1})
    assert any("would cost" in s for s in reasons(r))


DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64],
                                 ids=["fp32", "fp16", "fp64"])


@DTYPES
@pytest.mark.parametrize(("a", "b", "group"), [
    (dict(k=3, group=2), dict(k=1, group=4), 2),
    (dict(k=3), dict(k=3, group=C), 1),  # a dense 3x3 absorbs a depthwise one
    (dict(k=5, group=4), dict(k=3, group=C), 4),
])
def test_mixed_group_counts_merge(a: dict, b: dict, group: int, dtype: type) -> None:
    """A kernel of g groups is block-diagonal in every g' dividing g: the sum has gcd groups."""
    g = GraphBuilder(dtype, seed=13)
    x = g.input([1, C, 9, 9])
    a, b = dict(a), dict(b)
    ka, kb = a.pop("k"), b.pop("k")
    y = g.node("Add", [conv_bn(g, x, ka, **a), conv_bn(g, x, kb, **b)])
    r = optimized(end(g, y), {"Conv": 1, "Relu": 1}, dtype=np.dtype(dtype).name)
    (conv,) = [n for n in r.model.graph.node if n.op_type == "Conv"]
    assert next(at.i for at in conv.attribute if at.name == "group") == group


@DTYPES
def test_qarepvgg_block_collapses(dtype: type) -> None:
    """YOLOv6 v3's QARepVGGBlockV2: BN(dense 3x3-BN + bare 1x1 + x + AvgPool3x3(x)) → 1 Conv."""
    g = GraphBuilder(dtype, seed=14)
    x = g.input([1, C, 10, 10])
    pool = g.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                  count_include_pad=1)
    dense, pointwise = conv_bn(g, x, 3), g.conv(x, C, C, 1, bias=False)
    s = g.node("Add", [g.node("Add", [g.node("Add", [dense, pointwise]), x]), pool])
    r = optimized(end(g, g.bn(s, C)), {"Conv": 1, "Relu": 1}, dtype=np.dtype(dtype).name)
    assert r.applied_by_pattern() == {"branches": 1}


@DTYPES
def test_fan_out_inside_the_region_folds(dtype: type) -> None:
    """``Add(BN(t), t)`` with ``t = Conv(x)``: both readers of ``t`` are absorbed together."""
    g = GraphBuilder(dtype, seed=15)
    x = g.input([1, C, 8, 8])
    t = g.conv(x, C, C, 3)
    r = optimized(end(g, g.node("Add", [g.bn(t, C), t])), {"Conv": 1, "Relu": 1},
                  dtype=np.dtype(dtype).name)
    assert r.applied_by_pattern() == {"branches": 1}
    # deeper: t read three times, through BN, a scale and directly
    g = GraphBuilder(dtype, seed=16)
    x = g.input([1, C, 8, 8])
    t = g.conv(x, C, C, 3)
    scaled = g.node("Mul", [t, g.init(g.rng.uniform(0.5, 1.5, (1, C, 1, 1)))])
    y = g.node("Sum", [g.bn(t, C), scaled, g.node("Sub", [t, g.bn(x, C)])])
    optimized(end(g, y), {"Conv": 1, "Relu": 1}, dtype=np.dtype(dtype).name)


def test_fan_out_to_a_reader_outside_is_refused() -> None:
    g = GraphBuilder(seed=17)
    x = g.input([1, C, 8, 8])
    t = g.conv(x, C, C, 3)
    y = g.node("Add", [g.node("Add", [g.bn(t, C), t]), g.node("Sigmoid", [t])])
    r = optimized(g.model([y]), {"Conv": 1, "BatchNormalization": 1, "Add": 2, "Sigmoid": 1})
    assert r.applied_by_pattern() == {}
    assert any("also feeds" in s and "Sigmoid" in s for s in reasons(r)), reasons(r)


@DTYPES
def test_sum_of_several_sources_collapses_per_source(dtype: type) -> None:
    """``Sum(a(x), c(y), b(x), y, x)`` → ``Conv_abx(x) + Conv_cy(y)``: one Add for the rest."""
    g = GraphBuilder(dtype, seed=18)
    x, y = g.input([1, C, 8, 8]), g.input([1, C, 8, 8])
    s = g.node("Sum", [conv_bn(g, x, 3), conv_bn(g, y, 3), conv_bn(g, x, 1), y, x])
    r = optimized(end(g, s), {"Conv": 2, "Add": 1, "Relu": 1}, dtype=np.dtype(dtype).name)
    assert [f.result for f in r.applied] == ["Conv 3x3, Conv 3x3 and 1 Add/Sub"]


def test_nested_sums_of_two_sources_with_signs() -> None:
    """``(a(x) + c(y)) - (b(x) + BN(y))``: the tree is opened up, signs kept."""
    g = GraphBuilder(seed=19)
    x, y = g.input([1, C, 8, 8]), g.input([1, C, 8, 8])
    left = g.node("Add", [conv_bn(g, x, 3), conv_bn(g, y, 1)])
    s = g.node("Sub", [left, g.node("Add", [conv_bn(g, x, 1), g.bn(y, C)])])
    optimized(end(g, s), {"Conv": 2, "Add": 1, "Relu": 1})


def test_a_source_group_that_would_cost_more_stays_apart() -> None:
    """Depthwise and dense branches of x would merge densely: refused with the cost; the
    branches of y still merge."""
    g = GraphBuilder(seed=20)
    x, y = g.input([1, C, 8, 8]), g.input([1, C, 8, 8])
    s = g.node("Sum", [conv_bn(g, x, 5, group=C), conv_bn(g, x, 1), conv_bn(g, y, 3),
                       conv_bn(g, y, 1)])
    r = optimized(end(g, s), {"Conv": 3, "Add": 2, "Relu": 1})
    assert any("would cost" in s for s in reasons(r)), reasons(r)


# ----------------------------------------------------------------------------------------------
# property: random sums of random branches collapse and agree


@st.composite
def branch_sums(draw: st.DrawFn):
    """A random sum of random branches: of one input or two (several sources), each branch a
    conv of its own group count (mixed groups), sometimes read a second time through a BN or
    a scale inside the same sum (fan-out inside the region)."""
    g = GraphBuilder(seed=draw(st.integers(0, 2**16)))
    channels = draw(st.sampled_from([4, 8]))
    groups = [g_ for g_ in (1, 2, 4, channels) if channels % g_ == 0]
    stride = draw(st.sampled_from([1, 1, 2]))
    dilation = draw(st.sampled_from([1, 1, 2]))
    size = draw(st.integers(7, 12))
    sources = [g.input([1, channels, size, size + 1])]
    if draw(st.booleans()):
        sources.append(g.input([1, channels, size, size + 1]))
    parts: list[str] = []
    with_conv: set[int] = set()
    bn_terms: list[int] = []
    kinds = draw(st.lists(st.sampled_from(["conv", "conv", "conv", "identity", "bn", "fanout"]),
                          min_size=2, max_size=6))
    for kind in kinds:
        src = draw(st.integers(0, len(sources) - 1))
        x = sources[src]
        if kind in ("identity", "bn") and stride == 1:
            parts.append(x if kind == "identity" else g.bn(x, channels))
            bn_terms += [src] if kind == "bn" else []
            continue
        kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
        # "same" padding, the odd tap at a random end: frames stay a whole number of dilated
        # taps apart, so every such sum aligns
        pads = []
        for k in (kh, kw):
            taps = draw(st.sampled_from(sorted({(k - 1) // 2, k - 1 - (k - 1) // 2})))
            pads.append((dilation * taps, dilation * (k - 1 - taps)))
        y = g.conv(x, channels, channels, (kh, kw), stride=stride,
                   group=draw(st.sampled_from(groups)),
                   dilation=dilation if max(kh, kw) > 1 else 1,
                   pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]],
                   bias=draw(st.booleans()))
        with_conv.add(src)
        if kind == "fanout":  # the conv output is a term twice: as it is and through a BN
            parts.append(g.bn(y, channels))
        if draw(st.booleans()):
            y = g.bn(y, channels)
        if draw(st.booleans()):
            shape = draw(st.sampled_from([(1,), (1, channels, 1, 1)]))
            scale = g.init(g.rng.uniform(0.5, 1.5, shape))
            y = g.node("Mul", [scale, y] if draw(st.booleans()) else [y, scale])
        parts.append(y)
    # combine with a random tree of Add / Sub / Sum
    while len(parts) > 1:
        op = draw(st.sampled_from(["Add", "Sub", "Sum"]))
        n = 2 if op != "Sum" else draw(st.integers(2, min(4, len(parts))))
        take, parts = parts[:n], parts[n:]
        parts.append(g.node(op, take))
    loose_bn = sum(1 for src in bn_terms if src not in with_conv)  # no conv to join
    return g.model([g.node("Relu", parts)]), len(with_conv), loose_bn


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(branch_sums())
def test_random_branch_sums_collapse_to_one_conv_per_source(case) -> None:
    model, sources, loose_bn = case
    r = optimized(model)  # parity, checker, input untouched
    counts = op_counts(r.model)
    if not sources:
        return
    collapsed = (counts.get("Conv") == sources and counts.get("BatchNormalization", 0) == loose_bn
                 and not set(counts) - {"Conv", "Relu", "Add", "Sub", "Sum", "BatchNormalization"})
    if not collapsed:
        # the only reason to keep branches apart here: e.g. 1x7 + 7x1 would become a 7x7, or a
        # depthwise and a dense branch a dense conv of more work
        assert any("would cost" in s for s in reasons(r)), (counts, reasons(r))


@pytest.mark.parametrize("stride", [1, 2])
def test_dilated_branches_merge_into_the_large_kernel(stride: int) -> None:
    """UniRepLKNet's dilated reparam block: a 9x9 depthwise kernel and dilated small ones
    (5x5 at 2, 3x3 at 3 and 4), each with BN, summed: one 9x9 depthwise Conv, the small
    kernels' taps spread out with zeros between them."""
    g = GraphBuilder(seed=41)
    x = g.input([2, C, 17, 19])
    branches = [conv_bn(g, x, k, dilation=d, group=C, stride=stride, cin=C)
                for k, d in ((9, 1), (5, 2), (3, 3), (3, 4))]
    y = g.node("Sum", branches)
    r = optimized(g.model([y]), {"Conv": 1})
    assert r.applied_by_pattern() == {"branches": 1}
    (w,) = [t for t in r.model.graph.initializer if len(t.dims) == 4]
    assert list(w.dims) == [C, 1, 9, 9]


def test_dilations_with_a_common_factor_keep_it() -> None:
    """Dilations 2 and 4: one kernel at dilation 2 (the 3x3 at 4 becomes a 5x5 at 2)."""
    g = GraphBuilder(seed=42)
    x = g.input([1, C, 16, 16])
    y = g.node("Add", [conv_bn(g, x, 5, dilation=2, group=C), conv_bn(g, x, 3, dilation=4,
                                                                        group=C)])
    r = optimized(g.model([y]), {"Conv": 1})
    conv = next(n for n in r.model.graph.node if n.op_type == "Conv")
    assert next(a.ints for a in conv.attribute if a.name == "dilations") == [2, 2]


def test_a_dilated_dense_branch_that_would_cost_more_stays() -> None:
    """A dense 3x3 and a 3x3 at dilation 2 would be one 5x5 (25 taps for 18): left apart."""
    g = GraphBuilder(seed=43)
    x = g.input([1, C, 12, 12])
    y = g.node("Add", [conv_bn(g, x, 3), conv_bn(g, x, 3, dilation=2)])
    r = optimized(g.model([y]))
    assert op_counts(r.model)["Conv"] == 2
    assert any("MACs per pixel" in why for why in reasons(r)), reasons(r)
