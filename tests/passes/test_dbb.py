"""Diverse Branch Block transforms: sequential, concat, average pool, padding, BN before a
conv, and the border fill of the exported "BN and pad" layer."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from tests.builders import GraphBuilder
from tests.helpers import optimized, reasons

C = 6


def conv_bn(g: GraphBuilder, x: str, k, *, cin: int = C, cout: int = C, **kw) -> str:
    return g.bn(g.conv(x, cin, cout, k, bias=False, **kw), cout)


# ----------------------------------------------------------------------------------------------
# sequential


@pytest.mark.parametrize(("g1", "g2"), [(1, 1), (2, 2), (C, C), (1, 2)])
@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_then_kxk_without_pads(g1: int, g2: int, stride: int) -> None:
    g = GraphBuilder(seed=g1 * g2 + stride)
    x = g.input([1, C, 9, 9])
    inner = g.bn(g.conv(x, C, 12 if g1 == g2 != C else C, 1, group=g1), 12 if g1 == g2 != C else C)
    mid = 12 if g1 == g2 != C else C
    y = g.bn(g.conv(inner, mid, C, 3, pads=[0, 0, 0, 0], stride=stride, group=g2), C)
    r = optimized(g.model([y]), {"Conv": 1} if (g1, g2) != (1, 2) else None)
    if (g1, g2) == (1, 2):  # a dense 1x1 then a grouped 3x3 merge densely: only if cheaper
        assert r.applied or any("cost" in s for s in reasons(r))


def test_kxk_then_pointwise_is_always_exact() -> None:
    g = GraphBuilder(seed=3)
    x = g.input([1, C, 9, 9])
    inner = conv_bn(g, x, 3, stride=2, pads=[1, 0, 1, 2])
    y = conv_bn(g, inner, 1, cout=4)
    optimized(g.model([y]), {"Conv": 1})


def test_padded_kxk_after_biased_pointwise_is_refused() -> None:
    g = GraphBuilder(seed=4)
    x = g.input([1, C, 9, 9])
    inner = conv_bn(g, x, 1)  # BN gives it a non-zero bias
    y = g.conv(inner, C, C, 3, pads=[1, 1, 1, 1])
    r = optimized(g.model([y]), {"Conv": 2})
    assert any("border value" in s for s in reasons(r))


def test_padded_kxk_after_unbiased_pointwise_merges() -> None:
    g = GraphBuilder(seed=5)
    x = g.input([1, C, 9, 9])
    inner = g.conv(x, C, C, 1, bias=False)
    optimized(g.model([g.conv(inner, C, C, 3, pads=[1, 1, 1, 1])]), {"Conv": 1})


def test_two_kxk_convs_are_refused() -> None:
    g = GraphBuilder(seed=6)
    x = g.input([1, C, 9, 9])
    y = g.conv(g.conv(x, C, C, 3, pads=[0, 0, 0, 0]), C, C, 3, pads=[0, 0, 0, 0])
    r = optimized(g.model([y]), {"Conv": 2})
    assert any("1x1" in s for s in reasons(r))


def test_bottleneck_that_would_cost_more_is_refused() -> None:
    g = GraphBuilder(seed=7)
    x = g.input([1, 16, 9, 9])
    inner = g.conv(x, 16, 2, 1, bias=False)  # squeeze to 2 channels
    y = g.conv(inner, 2, 16, 3, pads=[0, 0, 0, 0])
    r = optimized(g.model([y]), {"Conv": 2})
    assert any("would cost" in s for s in reasons(r))


# ----------------------------------------------------------------------------------------------
# concat, average pool, pad, BN before a conv


def test_concat_of_parallel_convs() -> None:
    g = GraphBuilder(seed=8)
    x = g.input([1, C, 9, 9])
    y = g.node("Concat", [conv_bn(g, x, 3, cout=4), conv_bn(g, x, 3, cout=5),
                          g.conv(x, C, 3, 3)], axis=1)
    optimized(g.model([g.node("Relu", [y])]), {"Conv": 1, "Relu": 1})


def test_concat_in_different_frames_is_exact_but_kept_when_it_costs_more() -> None:
    """1x1 and 1x3 branches could become 3x3 kernels of one conv: more than twice the MACs."""
    g = GraphBuilder(seed=8)
    x = g.input([1, C, 9, 9])
    y = g.node("Concat", [conv_bn(g, x, 3, cout=4), conv_bn(g, x, 1, cout=5),
                          conv_bn(g, x, (1, 3), cout=3)], axis=1)
    r = optimized(g.model([g.node("Relu", [y])]), {"Conv": 3, "Concat": 1, "Relu": 1})
    assert any("648 MACs per pixel instead of 300" in s for s in reasons(r))


def test_concat_of_grouped_convs_that_would_cost_more_is_refused() -> None:
    """Stacked convs are one dense conv (§7): a grouped 3x3 would double its work."""
    g = GraphBuilder(seed=9)
    x = g.input([1, C, 9, 9])
    y = g.node("Concat", [conv_bn(g, x, 3, group=2), conv_bn(g, x, 1)], axis=1)
    r = optimized(g.model([y]), {"Conv": 2, "Concat": 1})
    assert any("would cost" in s for s in reasons(r))


@pytest.mark.parametrize(
    "pool", [dict(kernel_shape=[3, 3]), dict(kernel_shape=[2, 2], strides=[2, 2]),
             dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
)
def test_average_pool_branch(pool: dict) -> None:
    g = GraphBuilder(seed=10)
    x = g.input([1, C, 10, 10])
    stride = pool.get("strides", [1])[0]
    pads = [0, 0, 0, 0] if "pads" not in pool else [1, 1, 1, 1]
    k = pool["kernel_shape"][0]
    # a padded pool sees zeros at the border: exact only after a map that is 0 at zero input
    before = g.conv(x, C, C, 1, bias=False) if "pads" in pool else conv_bn(g, x, 1)
    avg = g.bn(g.node("AveragePool", [before], **pool), C)
    main = conv_bn(g, x, k, stride=stride, pads=pads)
    optimized(g.model([g.node("Add", [main, avg])]), {"Conv": 1})


def test_average_pool_with_pads_not_counted_is_refused() -> None:
    g = GraphBuilder(seed=11)
    x = g.input([1, C, 10, 10])
    avg = g.node("AveragePool", [conv_bn(g, x, 1)], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                 count_include_pad=0)
    r = optimized(g.model([g.node("Add", [conv_bn(g, x, 3), avg])]),
                  {"Conv": 2, "AveragePool": 1, "Add": 1})
    assert any("count_include_pad=0" in s for s in reasons(r))


@pytest.mark.parametrize(("size", "ok"), [(9, True), (10, False)])
def test_average_pool_ceil_mode(size: int, ok: bool) -> None:
    g = GraphBuilder(seed=12)
    x = g.input([1, C, size, size])
    avg = g.node("AveragePool", [conv_bn(g, x, 1)], kernel_shape=[3, 3], strides=[2, 2],
                 ceil_mode=1)
    if ok:  # (9 - 3) % 2 == 0: ceil and floor agree
        main = conv_bn(g, x, 3, stride=2, pads=[0, 0, 0, 0])
        optimized(g.model([g.node("Add", [main, avg])]), {"Conv": 1})
    else:
        r = optimized(g.model([avg]), {"Conv": 1, "AveragePool": 1})
        assert any("ceil_mode" in s for s in reasons(r))


@pytest.mark.parametrize("opset", [11, 18])
def test_zero_pad_merges_into_the_conv(opset: int) -> None:
    g = GraphBuilder(seed=13, opset=opset)
    x = g.input([1, C, 8, 8])
    pads = g.init(np.array([0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64), cast=False)
    y = g.conv(g.node("Pad", [x, pads], mode="constant"), C, C, 3, pads=[0, 0, 0, 0])
    optimized(g.model([y]), {"Conv": 1})


@pytest.mark.parametrize(("mode", "value"), [("reflect", 0.0), ("edge", 0.0), ("constant", 1.5)])
def test_other_pads_are_refused(mode: str, value: float) -> None:
    g = GraphBuilder(seed=14)
    x = g.input([1, C, 8, 8])
    pads = g.init(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), cast=False)
    inputs = [x, pads] + ([g.init(np.float32(value))] if value else [])
    y = g.conv(g.node("Pad", inputs, mode=mode), C, C, 3, pads=[0, 0, 0, 0])
    r = optimized(g.model([y]), {"Conv": 1, "Pad": 1})
    assert reasons(r)


def test_bn_before_a_conv() -> None:
    g = GraphBuilder(seed=15)
    x = g.input([1, C, 8, 8])
    y = g.conv(g.bn(x, C), C, C, 3, pads=[0, 0, 0, 0])
    optimized(g.model([y]), {"Conv": 1})
    g = GraphBuilder(seed=15)
    x = g.input([1, C, 8, 8])
    y = g.conv(g.bn(x, C), C, C, 3, pads=[1, 1, 1, 1])  # BN(0) != 0 would enter the border
    r = optimized(g.model([y]), {"Conv": 1, "BatchNormalization": 1})
    assert any("border value" in s for s in reasons(r))


# ----------------------------------------------------------------------------------------------
# the exported border fill


def _border_fill(g: GraphBuilder, y: str, values: np.ndarray, size: int, pad: int = 1) -> str:
    """``y`` padded with 0, then each border overwritten with ``values`` per channel by
    ScatterND, as the TorchScript exporter writes DBB's slice assignments."""
    pads = g.init(np.array([0, 0, pad, pad, 0, 0, pad, pad], dtype=np.int64), cast=False)
    out = g.node("Pad", [y, pads], mode="constant")
    n = size + 2 * pad
    c = len(values)
    rows = [range(pad), range(n - pad, n)]
    for axis in (2, 3):
        for band in rows:
            idx = np.array([[[0, ch, i, j] if axis == 2 else [0, ch, j, i] for j in range(n)]
                            for ch in range(c) for i in band], dtype=np.int64)
            idx = idx.reshape(1, c, len(band), n, 4) if axis == 2 else \
                idx.reshape(1, c, len(band), n, 4).transpose(0, 1, 3, 2, 4)
            upd = np.broadcast_to(values.reshape(1, c, 1, 1), idx.shape[:-1])
            out = g.node("ScatterND", [out, g.init(idx, cast=False),
                                       g.init(np.ascontiguousarray(upd))])
    return out


def _bn_zero(model, bn_name: str) -> np.ndarray:
    node = next(n for n in model.graph.node if n.output[0] == bn_name)
    p = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    gamma, beta, mean, var = (p[i] for i in node.input[1:5])
    eps = next(a.f for a in node.attribute if a.name == "epsilon")
    return beta - mean * gamma / np.sqrt(var + eps)


def test_border_fill_chain_becomes_part_of_the_conv() -> None:
    g = GraphBuilder(seed=16)
    x = g.input([1, C, 8, 8])
    y = conv_bn(g, x, 1, cout=4)
    probe = g.model([y])
    fill = _bn_zero(probe, y).astype(np.float32)
    filled = _border_fill(g, y, fill, 8)
    out = g.bn(g.conv(filled, 4, C, 3, pads=[0, 0, 0, 0], bias=False), C)
    main = conv_bn(g, x, 3)
    r = optimized(g.model([g.node("Add", [main, out])]), {"Conv": 1})
    assert [f.pattern for f in r.applied] == ["branches"]
    assert r.applied[0].ops["ScatterND"] == 4


def test_border_fill_with_a_value_that_does_not_match_is_refused() -> None:
    g = GraphBuilder(seed=17)
    x = g.input([1, C, 8, 8])
    y = conv_bn(g, x, 1, cout=4)
    probe = g.model([y])
    fill = (_bn_zero(probe, y) + 0.5).astype(np.float32)
    out = g.conv(_border_fill(g, y, fill, 8), 4, C, 3, pads=[0, 0, 0, 0])
    r = optimized(g.model([out]), {"Conv": 2, "Pad": 1, "ScatterND": 4})
    assert any("pad value differs" in s for s in reasons(r))


def test_a_repeated_border_fill_is_proven_once_and_judged_on_its_own_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two fills with the same routing (one per layer, as in DBB networks): the chain runs on
    tags once, and each fill is judged by its own constants: the one whose value is its BN's
    value at zero folds, the other is refused."""
    from onnxrep.passes import border

    runs: list[str] = []

    def counted(name: str):  # type: ignore[no-untyped-def]
        real = getattr(border, name)

        def call(*args):  # type: ignore[no-untyped-def]
            runs.append(name)
            return real(*args)

        monkeypatch.setattr(border, name, call)

    counted("_run_chain")
    counted("layout")
    g = GraphBuilder(seed=18)
    x = g.input([1, C, 8, 8])
    outs = []
    for shift in (0.0, 0.5):
        y = conv_bn(g, x, 1, cout=4)
        fill = (_bn_zero(g.model([y]), y) + shift).astype(np.float32)
        outs.append(g.conv(_border_fill(g, y, fill, 8), 4, C, 3, pads=[0, 0, 0, 0]))
    r = optimized(g.model(outs), {"Conv": 4, "Pad": 1, "ScatterND": 4})
    assert sum(f.ops.get("ScatterND", 0) for f in r.applied) == 4
    assert any("pad value differs" in s for s in reasons(r))
    assert runs == ["_run_chain", "layout"]


def test_border_layout_reads_one_value_per_channel_or_none() -> None:
    """The layout of a routing is where the input sits and which constant fills each border
    cell; a border is a fill only when every cell of a channel holds the same value."""
    from onnxrep.passes import border

    shape = (1, 2, 2, 2)
    out = np.full((1, 2, 4, 5), -1, dtype=np.int64)
    out[:, 1] = -2  # channel 1's border reads constant 1
    out[:, :, 1:3, 2:4] = np.arange(8).reshape(shape)
    found = border.layout(out, shape)
    assert found is not None and found.pads == (1, 2, 1, 1)
    assert found.cells.shape == (2, 20 - 4)
    np.testing.assert_array_equal(found.values(np.array([0.5, -3.0])), [0.5, -3.0])
    out[0, 0, 0, 0] = -3  # one cell of channel 0 reads another constant
    mixed = border.layout(out, shape)
    assert mixed is not None and mixed.values(np.array([0.5, -3.0, 0.5])) is not None
    assert mixed.values(np.array([0.5, -3.0, 0.25])) is None
    out[0, 0, 0, 1] = 0  # an input element in the border: not a fill
    assert border.layout(out, shape) is None
