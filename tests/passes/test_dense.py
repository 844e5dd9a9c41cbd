"""Dense layers (Gemm, MatMul) as maps: folds after and before them, sums of them, and the
data movement a per-channel map moves through to reach them; ConvTranspose → BN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.builders import GraphBuilder, op_counts
from tests.helpers import optimized, reasons

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64],
                                 ids=["fp32", "fp16", "fp64"])


def _name(dtype: type) -> str:
    return np.dtype(dtype).name


def _scale(g: GraphBuilder, shape: tuple[int, ...]) -> str:
    return g.init(g.rng.uniform(0.5, 1.5, shape))


def _mul(g: GraphBuilder, x: str, c: str, constant_first: bool) -> str:
    return g.node("Mul", [c, x] if constant_first else [x, c])


# -- ConvTranspose ------------------------------------------------------------------------------


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


@pytest.mark.parametrize(("dtype", "weight", "scale", "why"), [
    (np.float16, 100.0, 1000.0, "overflow float16"),
    (np.float16, 3e-4, 3e-4, "fall below the smallest normal float16"),
    (np.float32, 1e-23, 1e-23, "fall below the smallest normal float32"),
])
def test_conv_transpose_weights_that_do_not_round_once_are_not_folded(
        dtype: type, weight: float, scale: float, why: str) -> None:
    """W * s, computed in float64, must round to the model's type within half an ulp: not
    inf (1e5 in float16) nor a subnormal or 0 (a float16 3e-4 * 3e-4; 1e-23 * 1e-23 in
    float32), which the unfolded Mul(ConvTranspose(x), s) never holds."""
    g = GraphBuilder(dtype=dtype, seed=0)
    x = g.input([1, 2, 4, 4])
    y = g.node("ConvTranspose", [x, g.init(np.full((2, 2, 3, 3), weight))], kernel_shape=[3, 3])
    model = g.model([g.node("Mul", [y, g.init(np.full((2, 1, 1), scale))])])
    r = optimized(model, {"ConvTranspose": 1, "Mul": 1})
    assert any(why in reason for reason in reasons(r)), reasons(r)


# -- after a dense layer ------------------------------------------------------------------------


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (), (6,), (1, 6)])
def test_bn_after_gemm(trans_a: int, trans_b: int, c_shape: tuple[int, ...] | None) -> None:
    g = GraphBuilder(seed=trans_a + 2 * trans_b)
    x = g.input([4, 3] if trans_a else [3, 4])
    b = g.init(g.rng.standard_normal((6, 4) if trans_b else (4, 6)))
    inputs = [x, b] + ([] if c_shape is None else [g.init(g.rng.standard_normal(c_shape))])
    y = g.node("Gemm", inputs, alpha=0.7, beta=1.3, transA=trans_a, transB=trans_b)
    r = optimized(g.model([g.bn(y, 6)]), {"Gemm": 1})
    assert r.applied_by_pattern() == {"dense": 1}


def test_a_gemm_bias_per_row_is_no_map() -> None:
    g = GraphBuilder(seed=3)
    x = g.input([3, 4])
    y = g.node("Gemm", [x, g.init(g.rng.standard_normal((4, 6))),
                        g.init(g.rng.standard_normal((3, 6)))])
    r = optimized(g.model([g.bn(y, 6)]), {"Gemm": 1, "BatchNormalization": 1})
    assert any("bias of shape [3, 6] is not one value per feature" in s for s in reasons(r))


@DTYPES
@pytest.mark.parametrize("constant_first", [False, True])
def test_matmul_add_bn_becomes_one_gemm(dtype: type, constant_first: bool) -> None:
    g = GraphBuilder(dtype, seed=4)
    x = g.input([5, 4])
    y = g.node("MatMul", [x, g.init(g.rng.standard_normal((4, 6)))])
    y = g.node("Add", [g.init(g.rng.standard_normal(6)), y] if constant_first else
               [y, g.init(g.rng.standard_normal(6))])
    y = _mul(g, g.bn(y, 6), _scale(g, (6,)), constant_first)
    r = optimized(g.model([g.node("Relu", [y])]), {"Gemm": 1, "Relu": 1}, dtype=_name(dtype))
    assert r.applied_by_pattern() == {"dense": 1}


# -- before a dense layer -----------------------------------------------------------------------


@DTYPES
def test_batchnorm1d_before_linear(dtype: type) -> None:
    """RepViT's head: ``Linear(BN1d(x))`` → one Gemm (``W' = W diag(t)``, ``b' = b + W s``)."""
    g = GraphBuilder(dtype, seed=5)
    x = g.input([2, 8])
    y = g.node("Gemm", [g.bn(x, 8), g.init(g.rng.standard_normal((10, 8))),
                        g.init(g.rng.standard_normal(10))], transB=1)
    r = optimized(g.model([y]), {"Gemm": 1}, dtype=_name(dtype))
    assert r.applied_by_pattern() == {"dense": 1}


@DTYPES
@pytest.mark.parametrize("constant_first", [False, True])
def test_affine_before_and_after_a_token_matmul(dtype: type, constant_first: bool) -> None:
    """``[B, T, C] @ W`` with a per-feature scale and shift on both sides: MatMul and Add."""
    g = GraphBuilder(dtype, seed=6)
    x = g.input([2, 5, 4])
    h = g.node("Add", [_mul(g, x, _scale(g, (4,)), constant_first),
                       g.init(g.rng.standard_normal((1, 1, 4)))])
    y = g.node("MatMul", [h, g.init(g.rng.standard_normal((4, 6)))])
    y = g.node("Add", [y, g.init(g.rng.standard_normal(6))])
    y = g.node("Div", [y, g.init(g.rng.uniform(1, 2, (6,)))])
    r = optimized(g.model([g.node("Relu", [y])]), {"MatMul": 1, "Add": 1, "Relu": 1},
                  dtype=_name(dtype))
    assert r.applied_by_pattern() == {"dense": 1}


# -- sums of dense layers -----------------------------------------------------------------------


@DTYPES
@pytest.mark.parametrize("average", ["Div", "Mul"])
def test_distillation_head_becomes_one_gemm(dtype: type, average: str) -> None:
    """RepViT's classifier: ``(Linear_a(BN_a(x)) + Linear_b(BN_b(x))) / 2`` → one Gemm."""
    g = GraphBuilder(dtype, seed=7)
    x = g.input([2, 8])
    heads = [g.node("Gemm", [g.bn(x, 8), g.init(g.rng.standard_normal((10, 8))),
                             g.init(g.rng.standard_normal(10))], transB=1) for _ in range(2)]
    two = g.init(np.array(2.0 if average == "Div" else 0.5))
    y = g.node(average, [g.node("Add", heads), two])
    r = optimized(g.model([y]), {"Gemm": 1}, dtype=_name(dtype))
    assert r.applied_by_pattern() == {"branches": 1}


def test_sum_of_token_matmuls() -> None:
    g = GraphBuilder(seed=8)
    x = g.input([2, 5, 4])
    parts = [g.node("MatMul", [x, g.init(g.rng.standard_normal((4, 6)))]) for _ in range(3)]
    y = g.node("Sum", [*parts[:2], g.node("Mul", [parts[2], _scale(g, (6,))])])
    optimized(g.model([y]), {"MatMul": 1})


# -- through data movement ----------------------------------------------------------------------


def _head(g: GraphBuilder, pooled: str) -> str:
    return g.node("Gemm", [pooled, g.init(g.rng.standard_normal((10, 8))),
                           g.init(g.rng.standard_normal(10))], transB=1)


@DTYPES
@pytest.mark.parametrize("pooling", ["gap-flatten", "reducemean", "gap-reshape", "gap-squeeze"])
def test_bn_then_pool_then_linear(dtype: type, pooling: str) -> None:
    """RepLKNet's head: ``Linear(Flatten(GAP(BN(x))))`` → ``Linear'(Flatten(GAP(x)))``."""
    g = GraphBuilder(dtype, seed=9)
    x = g.input([2, 8, 4, 5])
    y = g.bn(x, 8)
    if pooling == "reducemean":
        pooled = g.node("ReduceMean", [y], axes=[2, 3], keepdims=0)
        ops = {"ReduceMean": 1}
    else:
        gap = g.node("GlobalAveragePool", [y])
        if pooling == "gap-flatten":
            pooled, ops = g.node("Flatten", [gap], axis=1), {"Flatten": 1}
        elif pooling == "gap-reshape":
            pooled, ops = g.node("Reshape", [gap, g.init(np.array([2, 8]))]), {"Reshape": 1}
        else:
            pooled = g.node("Squeeze", [gap, g.init(np.array([2, 3]))])
            ops = {"Squeeze": 1}
        ops["GlobalAveragePool"] = 1
    r = optimized(g.model([_head(g, pooled)]), {**ops, "Gemm": 1}, dtype=_name(dtype))
    assert r.applied_by_pattern() == {"dense": 1}


def test_a_1x1_conv_before_pool_and_linear_joins_the_linear() -> None:
    g = GraphBuilder(seed=10)
    x = g.input([1, 6, 4, 4])
    y = g.node("GlobalAveragePool", [g.conv(x, 6, 8, 1)])
    optimized(g.model([_head(g, g.node("Flatten", [y], axis=1))]),
              {"GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1})


def test_token_features_through_a_reshape() -> None:
    """LeViT's Linear-BN: ``Reshape(BN(Reshape(x @ W, [B*T, C])), [B, T, C])``."""
    g = GraphBuilder(seed=11)
    x = g.input([2, 5, 4])
    y = g.node("MatMul", [x, g.init(g.rng.standard_normal((4, 6)))])
    flat = g.node("Reshape", [y, g.init(np.array([10, 6]))])
    y = g.node("Reshape", [g.bn(flat, 6), g.init(np.array([2, 5, 6]))])
    r = optimized(g.model([g.node("Relu", [y])]),
                  {"MatMul": 1, "Add": 1, "Reshape": 2, "Relu": 1})
    assert r.applied_by_pattern() == {"dense": 1}


# -- refusals -----------------------------------------------------------------------------------


def test_affine_on_the_wrong_axis_is_refused() -> None:
    """A scale per token (axis 1 of ``[B, T, C]``) is no map of the features."""
    g = GraphBuilder(seed=12)
    x = g.input([2, 5, 4])
    y = g.node("MatMul", [x, g.init(g.rng.standard_normal((4, 6)))])
    y = g.node("Mul", [y, _scale(g, (5, 1))])
    r = optimized(g.model([y]), {"MatMul": 1, "Mul": 1})
    assert any("not per feature" in s for s in reasons(r)), reasons(r)


def test_bn_on_token_tensors_normalizes_the_wrong_axis() -> None:
    """BatchNormalization on ``[B, T, C]`` normalizes axis 1 (tokens), not the features."""
    g = GraphBuilder(seed=13)
    x = g.input([2, 6, 4])
    y = g.node("MatMul", [x, g.init(g.rng.standard_normal((4, 6)))])
    r = optimized(g.model([g.bn(y, 6)]), {"MatMul": 1, "BatchNormalization": 1})
    assert any("last axis" in s for s in reasons(r)), reasons(r)


def test_trans_a_takes_nothing_before_it() -> None:
    g = GraphBuilder(seed=14)
    x = g.input([4, 3])
    y = g.node("Gemm", [g.bn(x, 3), g.init(g.rng.standard_normal((4, 6)))], transA=1)
    r = optimized(g.model([y]), {"Gemm": 1, "BatchNormalization": 1})
    assert any("transA=1" in s for s in reasons(r)), reasons(r)


def test_a_shared_weight_is_never_edited() -> None:
    g = GraphBuilder(seed=15)
    x = g.input([3, 4])
    w = g.init(g.rng.standard_normal((4, 6)))
    a, b = g.node("Gemm", [x, w]), g.node("Gemm", [g.node("Relu", [x]), w])
    model = g.model([g.bn(a, 6), b])
    r = optimized(model, {"Gemm": 2, "Relu": 1})
    original = next(t for t in model.graph.initializer if t.name == w)
    kept = next(t for t in r.model.graph.initializer if t.name == w)
    assert kept.SerializeToString() == original.SerializeToString()
    assert sum(w in n.input for n in r.model.graph.node) == 1


def test_a_non_constant_scale_is_refused() -> None:
    g = GraphBuilder(seed=16)
    x, s = g.input([3, 4]), g.input([3, 6])
    y = g.node("Mul", [g.node("Gemm", [x, g.init(g.rng.standard_normal((4, 6)))]), s])
    r = optimized(g.model([y]), {"Gemm": 1, "Mul": 1})
    assert any("is not a constant" in s for s in reasons(r)), reasons(r)


def test_a_reshape_that_moves_the_features_is_refused() -> None:
    g = GraphBuilder(seed=17)
    x = g.input([2, 8])
    y = g.node("Reshape", [g.bn(x, 8), g.init(np.array([2, 2, 4]))])
    y = g.node("MatMul", [y, g.init(g.rng.standard_normal((4, 3)))])
    r = optimized(g.model([y]), {"BatchNormalization": 1, "Reshape": 1, "MatMul": 1})
    assert any("moves the channel axis" in s for s in reasons(r)), reasons(r)


def test_gemm_with_weight_from_input_is_refused() -> None:
    g = GraphBuilder()
    x = g.input([3, 4])
    w = g.input([4, 6])
    r = optimized(g.model([g.bn(g.node("Gemm", [x, w]), 6)]),
                  {"Gemm": 1, "BatchNormalization": 1})
    assert any("not a constant" in s for s in reasons(r))


def test_gemm_output_read_twice_is_refused() -> None:
    g = GraphBuilder()
    x = g.input([3, 4])
    y = g.node("Gemm", [x, g.init(np.ones((4, 6)))])
    out = g.node("Add", [g.bn(y, 6), g.node("Relu", [y])])
    r = optimized(g.model([out]), {"Gemm": 1, "BatchNormalization": 1, "Relu": 1, "Add": 1})
    assert any("also feeds" in s for s in reasons(r))


def test_untouched_dense_layers_come_back_byte_identical() -> None:
    """A MatMul with its bias Add and nothing to fold is no rewrite."""
    g = GraphBuilder(seed=18)
    x = g.input([2, 5, 4])
    y = g.node("Add", [g.node("MatMul", [x, g.init(g.rng.standard_normal((4, 6)))]),
                       g.init(g.rng.standard_normal(6))])
    model = g.model([g.node("Relu", [y])])
    r = optimized(model, op_counts(model))
    assert r.model.SerializeToString() == model.SerializeToString()
    assert onnx.checker.check_model(r.model) is None


def test_batchnorm1d_over_token_features_folds_into_the_linear_before_it() -> None:
    """``Linear → Transpose(0, 2, 1) → BatchNorm1d → Transpose(0, 2, 1)`` on ``[B, T, C]``
    (BatchNorm1d over tokens, as torch exports it): the BN goes into the MatMul's weights and
    bias; the transposes stay (data movement, replayed)."""
    g = GraphBuilder(seed=44)
    x = g.input([2, 10, 16])
    m = g.node("Add", [g.node("MatMul", [x, g.init(g.rng.standard_normal((16, 24)) * 0.3)]),
                       g.init(g.rng.standard_normal(24) * 0.3)])
    y = g.node("Transpose", [g.bn(g.node("Transpose", [m], perm=[0, 2, 1]), 24)],
               perm=[0, 2, 1])
    r = optimized(g.model([g.node("Relu", [y])]),
                  {"MatMul": 1, "Add": 1, "Transpose": 2, "Relu": 1})
    assert r.applied_by_pattern() == {"dense": 1}


def test_a_transpose_that_is_no_token_swap_moves_nothing() -> None:
    """A Transpose with another permutation keeps the BN after it."""
    g = GraphBuilder(seed=45)
    x = g.input([2, 10, 16])
    m = g.node("MatMul", [x, g.init(g.rng.standard_normal((16, 16)) * 0.3)])
    y = g.bn(g.node("Transpose", [m], perm=[1, 2, 0]), 16)
    r = optimized(g.model([y]), {"MatMul": 1, "Transpose": 1, "BatchNormalization": 1})
    assert not r.applied


@pytest.mark.parametrize("after", ["Relu", "BatchNormalization", "MatMul"])
def test_a_linear_transposed_once_stays_a_matmul_on_its_own_features(after: str) -> None:
    """``Linear → Transpose(0, 2, 1) → ...`` with no transpose back (MLP-Mixer's token
    mixing): the transpose stays after the layer. Replayed before it, it handed a Gemm a
    rank-3 tensor, which onnxruntime refuses."""
    g = GraphBuilder(seed=46)
    x = g.input([2, 10, 16])
    m = g.node("Add", [g.node("MatMul", [x, g.init(g.rng.standard_normal((16, 12)) * 0.3)]),
                       g.init(g.rng.standard_normal(12) * 0.3)])
    t = g.node("Transpose", [m], perm=[0, 2, 1])  # [2, 12, 10]
    if after == "Relu":
        y, ops = g.node("Relu", [t]), {"MatMul": 1, "Add": 1, "Transpose": 1, "Relu": 1}
    elif after == "BatchNormalization":
        y, ops = g.bn(t, 12), {"MatMul": 1, "Add": 1, "Transpose": 1}
    else:
        y = g.node("MatMul", [g.bn(t, 12), g.init(g.rng.standard_normal((10, 4)) * 0.3)])
        ops = {"MatMul": 2, "Add": 1, "Transpose": 1}
    optimized(g.model([y]), ops)
