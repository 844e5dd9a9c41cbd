"""ConvTranspose → BN and Gemm / MatMul → BN (BatchNorm1d after Linear)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.builders import GraphBuilder
from tests.helpers import optimized, reasons


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "attrs",
    [
        dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        dict(strides=[2, 1], dilations=[1, 2]),
        dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    ],
)
def test_conv_transpose_bn(group: int, bias: bool, attrs: dict) -> None:
    g = GraphBuilder(seed=group)
    x = g.input([1, 8, 5, 6])
    w = g.init(g.rng.standard_normal((8, 12 // group, 3, 3)))
    inputs = [x, w] + ([g.init(g.rng.standard_normal(12))] if bias else [])
    y = g.node("ConvTranspose", inputs, group=group, kernel_shape=[3, 3], **attrs)
    y = g.bn(y, 12)
    y = g.node("Mul", [y, g.init(g.rng.random((12, 1, 1)))])
    r = optimized(g.model([y]), {"ConvTranspose": 1})
    assert r.applied_by_pattern() == {"convtranspose-bn": 1}


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (), (6,), (1, 6), (3, 6), (3, 1)])
def test_gemm_bn(trans_a: int, trans_b: int, c_shape: tuple[int, ...] | None) -> None:
    g = GraphBuilder(seed=trans_a + 2 * trans_b)
    x = g.input([4, 3] if trans_a else [3, 4])
    b = g.init(g.rng.standard_normal((6, 4) if trans_b else (4, 6)))
    inputs = [x, b] + ([] if c_shape is None else [g.init(g.rng.standard_normal(c_shape))])
    y = g.node("Gemm", inputs, alpha=0.7, beta=1.3, transA=trans_a, transB=trans_b)
    y = g.bn(y, 6)
    optimized(g.model([y]), {"Gemm": 1})


def test_matmul_add_bn_becomes_one_gemm() -> None:
    g = GraphBuilder()
    x = g.input([5, 4])
    y = g.node("MatMul", [x, g.init(g.rng.standard_normal((4, 6)))])
    y = g.node("Add", [y, g.init(g.rng.standard_normal(6))])
    y = g.bn(y, 6)
    r = optimized(g.model([g.node("Relu", [y])]), {"Gemm": 1, "Relu": 1})
    assert r.applied_by_pattern() == {"gemm-bn": 1}


def test_matmul_on_3d_activations_is_refused() -> None:
    g = GraphBuilder()
    x = g.input([2, 6, 4])
    y = g.node("MatMul", [x, g.init(g.rng.standard_normal((4, 6)))])
    r = optimized(g.model([g.bn(y, 6)]), {"MatMul": 1, "BatchNormalization": 1})
    assert any("not a 2-D activation" in s for s in reasons(r))


def test_gemm_with_weight_from_input_is_refused() -> None:
    g = GraphBuilder()
    x = g.input([3, 4])
    w = g.input([4, 6])
    r = optimized(g.model([g.bn(g.node("Gemm", [x, w]), 6)]),
                  {"Gemm": 1, "BatchNormalization": 1})
    assert any("not constants" in s for s in reasons(r))


def test_gemm_output_read_twice_is_refused() -> None:
    g = GraphBuilder()
    x = g.input([3, 4])
    y = g.node("Gemm", [x, g.init(np.ones((4, 6)))])
    out = g.node("Add", [g.bn(y, 6), g.node("Relu", [y])])
    r = optimized(g.model([out]), {"Gemm": 1, "BatchNormalization": 1, "Relu": 1, "Add": 1})
    assert any("also feeds" in s for s in reasons(r))
