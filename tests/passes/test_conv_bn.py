"""Conv → BatchNormalization, and the per-channel affine ops after a Conv."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.builders import GraphBuilder, op_counts
from tests.helpers import optimized, reasons


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("group", [1, 2, 8])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds(rank: int, group: int, bias: bool) -> None:
    g = GraphBuilder(seed=rank * 10 + group)
    x = g.input([2, 8, *(9,) * rank])
    y = g.bn(g.conv(x, 8, 8, 3, rank=rank, group=group, bias=bias), 8)
    r = optimized(g.model([g.node("Relu", [y])]), {"Conv": 1, "Relu": 1})
    assert r.applied_by_pattern() == {"conv-bn": 1}


@pytest.mark.parametrize(
    "conv",
    [
        dict(kernel=3, stride=2, pads=[1, 0, 2, 1]),
        dict(kernel=3, dilation=2, pads=[2, 2, 2, 2]),
        dict(kernel=(1, 5), stride=(1, 3), pads=[0, 2, 0, 1]),
        dict(kernel=3, auto_pad="SAME_UPPER"),
        dict(kernel=4, auto_pad="SAME_LOWER"),
        dict(kernel=3, stride=2, auto_pad="SAME_UPPER"),
        dict(kernel=3, auto_pad="VALID"),
        dict(kernel=3, group=8, stride=2),  # depthwise
        dict(kernel=1, group=4),
    ],
)
def test_conv_bn_attributes(conv: dict) -> None:
    g = GraphBuilder(seed=3)
    x = g.input([1, 8, 11, 12])
    y = g.bn(g.conv(x, 8, 8, **conv), 8, eps=1e-3)
    optimized(g.model([y]), {"Conv": 1})


def test_conv_bn_same_with_stride_and_dynamic_size_keeps_auto_pad() -> None:
    g = GraphBuilder(seed=4)
    x = g.input([1, 8, "h", "w"])
    y = g.bn(g.conv(x, 8, 8, 3, stride=2, auto_pad="SAME_UPPER"), 8)
    r = optimized(g.model([y]), {"Conv": 1}, shapes={x: [1, 8, 13, 10]})
    conv = r.model.graph.node[0]
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "auto_pad")) \
        == b"SAME_UPPER"


@pytest.mark.parametrize(("dtype", "name"), [(np.float16, "float16"), (np.float64, "float64")])
def test_conv_bn_dtypes(dtype: type, name: str) -> None:
    g = GraphBuilder(dtype=dtype, seed=5)
    x = g.input([1, 4, 8, 8])
    y = g.bn(g.conv(x, 4, 6, 3), 6)
    r = optimized(g.model([y]), {"Conv": 1}, dtype=name)
    assert all(t.data_type == g.elem for t in r.model.graph.initializer)


def test_conv_transpose_of_folds_chain_of_bn_then_affine() -> None:
    g = GraphBuilder(seed=6)
    x = g.input([1, 8, 8, 8])
    y = g.bn(g.conv(x, 8, 8, 3), 8)
    y = g.node("Mul", [y, g.init(np.random.default_rng(0).random((1, 8, 1, 1)))])
    y = g.node("Add", [g.init(np.float32(0.5)), y])
    optimized(g.model([y]), {"Conv": 1})


# ----------------------------------------------------------------------------------------------
# refusals


def test_training_mode_bn_is_left_alone() -> None:
    g = GraphBuilder(opset=15)
    x = g.input([1, 4, 6, 6])
    c = g.conv(x, 4, 4, 3)
    y = g.node("BatchNormalization", [c, *g.bn_params(4)], outputs=3, training_mode=1)
    r = optimized(g.model([y]), {"Conv": 1, "BatchNormalization": 1})
    assert any("training mode" in s for s in reasons(r))


def test_bn_with_parameters_from_graph_inputs_is_left_alone() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    gamma = g.input([4])
    y = g.node("BatchNormalization", [g.conv(x, 4, 4, 3), gamma, *g.bn_params(4)[1:]])
    r = optimized(g.model([y]), {"Conv": 1, "BatchNormalization": 1})
    assert any("not constants" in s for s in reasons(r))


def test_conv_with_weight_from_graph_input_is_left_alone() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    w = g.input([4, 4, 3, 3])
    y = g.bn(g.conv(x, 4, 4, 3, weight=w), 4)
    r = optimized(g.model([y]), {"Conv": 1, "BatchNormalization": 1})
    assert any("weight that is not a constant" in s for s in reasons(r))


def test_conv_output_that_is_a_graph_output_is_not_folded_away() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    c = g.conv(x, 4, 4, 3)
    y = g.bn(c, 4)
    r = optimized(g.model([c, y]), {"Conv": 1, "BatchNormalization": 1})
    assert any("graph output" in s for s in reasons(r))
    assert [o.name for o in r.model.graph.output] == [c, y]


def test_conv_output_with_another_reader_is_not_folded_away() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    c = g.conv(x, 4, 4, 3)
    y = g.node("Add", [g.bn(c, 4), g.node("Relu", [c])])
    r = optimized(g.model([y]), {"Conv": 1, "BatchNormalization": 1, "Relu": 1, "Add": 1})
    assert any("also feeds" in s for s in reasons(r))


def test_shared_weight_is_never_edited() -> None:
    """Two convs read one weight; only one is followed by a BN."""
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    w = g.init(np.random.default_rng(1).standard_normal((4, 4, 3, 3)))
    a = g.bn(g.conv(x, 4, 4, 3, weight=w), 4)
    b = g.conv(x, 4, 4, 3, weight=w)
    model = g.model([a, b])
    r = optimized(model, {"Conv": 2})
    old = next(t for t in model.graph.initializer if t.name == w)
    new = {t.name: t for t in r.model.graph.initializer}
    assert new[w] == old  # the untouched conv still reads the original, unchanged
    names = [t.name for t in r.model.graph.initializer]
    assert len(names) == len(set(names))


def test_per_channel_constants_that_are_not_per_channel_are_refused() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    c = g.conv(x, 4, 4, 3)
    y = g.node("Mul", [c, g.init(np.ones((1, 1, 6, 6)))])  # per pixel, not per channel
    r = optimized(g.model([y]), {"Conv": 1, "Mul": 1})
    assert any("not per channel" in s for s in reasons(r))


@pytest.mark.parametrize("op", ["Mul", "Add", "Sub", "Div"])
@pytest.mark.parametrize("order", ["tensor-first", "constant-first"])
@pytest.mark.parametrize("shape", [(), (1,), (4, 1, 1), (1, 4, 1, 1)])
def test_binary_affine_after_conv(op: str, order: str, shape: tuple[int, ...]) -> None:
    g = GraphBuilder(seed=7)
    x = g.input([1, 4, 6, 6])
    c = g.conv(x, 4, 4, 3)
    k = g.init(np.random.default_rng(2).uniform(0.5, 1.5, shape))
    inputs = [c, k] if order == "tensor-first" else [k, c]
    y = g.node(op, inputs)
    model = g.model([y])
    if op == "Div" and order == "constant-first":
        r = optimized(model, {"Conv": 1, "Div": 1})
        assert any("divides a constant" in s for s in reasons(r))
    else:
        optimized(model, {"Conv": 1})


def test_divide_by_zero_is_refused() -> None:
    g = GraphBuilder()
    x = g.input([1, 2, 6, 6])
    y = g.node("Div", [g.conv(x, 2, 2, 3), g.init(np.array([1.0, 0.0]).reshape(1, 2, 1, 1))])
    r = optimized(g.model([y]), {"Conv": 1, "Div": 1})
    assert any("divides by zero" in s for s in reasons(r))


def test_skip_switches_a_family_off() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    y = g.bn(g.conv(x, 4, 4, 3), 4)
    model = g.model([y])
    r = optimized(model, {"Conv": 1, "BatchNormalization": 1}, skip=("conv-bn",))
    assert not r.applied
    assert op_counts(r.model) == op_counts(model)


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_a_bias_of_another_size_than_the_output_channels_is_refused(op: str) -> None:
    """torch's dynamo exporter writes a Conv3d's missing bias as ``Expand(0, [Cout, 2])``;
    onnxruntime refuses such a model, and a fold refuses it in a sentence (it was a bare
    numpy broadcasting error)."""
    import onnxrep

    g = GraphBuilder(seed=40)
    x = g.input([1, 4, 5, 5])
    w = g.init(g.rng.standard_normal((4, 4, 3, 3)) * 0.1)
    b = g.init(np.zeros(8))
    y = g.bn(g.node(op, [x, w, b], kernel_shape=[3, 3]), 4)
    r = onnxrep.optimize(g.model([y]), audit=False)
    assert not r.applied
    assert any("bias" in why and "output channels" in why for why in reasons(r)), reasons(r)
