"""Property tests over random graphs (tests/fuzzgraphs.py): fold exactly, or refuse cleanly.

For every generated model (float32, float16, float64, bfloat16; opsets 7 to the newest; IR 3
to the newest; sparse initializers; external data) ``onnxrep.optimize`` either raises an
OnnxrepError that is no bug (neither "internal error" nor a quoted Python exception) or
returns a model that passes ``onnx.checker.check_model(full_check=True)``, keeps the inputs,
outputs and every original initializer as they were, agrees with the input in onnxruntime at
ORT_DISABLE_ALL (or onnx's reference evaluator, for float64 and bfloat16) within
``fuzzgraphs.TOLERANCES`` at the generated size and, for dynamic dims, at two other sizes, and
is left byte-identical by a second optimize. benchmarks/fuzz.py runs the same property over
10,000+ examples.

Constructs in ``KNOWN_BUGS`` are left out of the property while their bug is open; each bug
the fuzzer found has a minimal regression test at the end of this file (``xfail(strict=True)``
while it is open).
"""

from __future__ import annotations

from collections import Counter

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

import onnxrep
from onnxrep import numerics
from tests.builders import GraphBuilder, op_counts
from tests.fuzzgraphs import KNOWN_BUGS, FuzzCase, _refusal, check, fuzz_cases

CI = settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@CI
@given(fuzz_cases(exclude=KNOWN_BUGS, max_steps=10))
def test_optimize_is_exact_or_refuses(case: FuzzCase) -> None:
    outcome = check(case)
    assert not outcome.failed, f"{outcome.kind}: {outcome.detail}"


@settings(CI, max_examples=60)
@given(fuzz_cases(max_steps=10))
def test_generated_models_are_valid(case: FuzzCase) -> None:
    """The generator's own contract: checker-valid, shapes as tracked, runnable. (onnx's
    inference cannot type a sparse initializer an op reads: there the plain checker.)"""
    sparse = bool(case.model.graph.sparse_initializer)
    onnx.checker.check_model(case.model, full_check=not sparse)
    inferred = onnx.shape_inference.infer_shapes(case.model, strict_mode=not sparse)
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim]
        if vi.name not in case.shapes:  # a weight from a Constant node
            continue
        if sparse and not vi.type.tensor_type.HasField("shape"):  # after a sparse operand
            continue
        tracked = case.shapes[vi.name]
        assert len(dims) == len(tracked)
        assert all(d is None or d == t for d, t in zip(dims, tracked, strict=True)), vi.name
    cmp = onnxrep.compare(case.model, case.model, inputs=case.feeds)
    for out in cmp.outputs:
        assert tuple(out.shape) == case.shapes[out.name]


def test_the_property_catches_a_wrong_fold(monkeypatch) -> None:
    """With BN folded at a 1 % wrong epsilon (and 1e-6 added), the property must fail."""
    real = numerics.batch_norm_affine
    monkeypatch.setattr(numerics, "batch_norm_affine",
                        lambda *a, eps: real(*a, eps=eps * 1.01 + 1e-6))
    kinds: Counter[str] = Counter()

    @settings(CI, max_examples=150, phases=[Phase.generate])
    @given(fuzz_cases(exclude=KNOWN_BUGS, max_steps=10))
    def run(case: FuzzCase) -> None:
        kinds[check(case).kind] += 1

    run()
    assert kinds["mismatch"] >= 1, kinds


@pytest.mark.parametrize(("message", "bug"), [
    ("internal error: the optimized model fails onnx.checker: w in initializer but not in "
     "graph input", True),
    ("TypeError: Cannot interpret '16' as a data type", True),
    ("m.onnx: cannot read (ValueError: Protocol message SparseTensorProto has no field)", True),
    ("m.onnx: fails onnx.checker: [ShapeInferenceError] (op_type:Conv) bad type", False),
    ("graph output 'odd' has no type and shape inference cannot tell it", False),
])
def test_internal_errors_and_quoted_exceptions_are_failures(message: str, bug: bool) -> None:
    assert (_refusal(message).kind == "internal") is bug
    assert _refusal(message).failed is bug


# --------------------------------------------------------------------------------------------
# regressions: bugs the fuzzer found, minimized


@pytest.mark.parametrize("inner", ["bn", "conv1x1"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_same_padding_with_stride_on_a_dynamic_size_after_a_bias(inner: str,
                                                                 auto_pad: str) -> None:
    """SAME with a stride pads by an amount that depends on the input size; unresolved, it
    must still count as padding: the border of a BN shift or a 1x1 bias is not zero."""
    g = GraphBuilder(seed=0)
    x = g.input([1, 2, "h", "w"], name="x")
    y = g.bn(x, 2) if inner == "bn" else g.conv(x, 2, 2, 1)
    model = g.model([g.conv(y, 2, 2, 3, stride=2, auto_pad=auto_pad)])
    result = onnxrep.optimize(model)
    cmp = onnxrep.compare(model, result.model, shapes={"x": [1, 2, 7, 8]})
    assert cmp.ok, cmp.outputs


def test_a_float16_fold_that_overflows_is_refused() -> None:
    """Exact in float64 is not enough: W * 1000 = 1e5 is inf in float16, while the unfolded
    Mul(Conv(x), 1000) stays finite for small inputs."""
    g = GraphBuilder(dtype=np.float16)
    x = g.input([1, 2, 4, 4], name="x")
    w = g.init(np.full((2, 2, 1, 1), 100.0))
    model = g.model([g.node("Mul", [g.node("Conv", [x, w]), g.init(np.array(1000.0))])])
    result = onnxrep.optimize(model)
    weights = [onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer]
    assert all(np.isfinite(w).all() for w in weights)
    feeds = {"x": np.full((1, 2, 4, 4), 0.001, np.float16)}  # reference output: 200
    assert onnxrep.compare(model, result.model, inputs=feeds).ok
    assert op_counts(result.model) in ({"Conv": 1, "Mul": 1}, {"Conv": 1})


@pytest.mark.parametrize(("dtype", "scale"), [(np.float16, 3e-4), (np.float32, 1e-23)])
def test_a_fold_whose_weights_fall_below_the_smallest_normal_is_refused(
        dtype: type, scale: float) -> None:
    """Exact in float64, rounded once, is exact only down to the smallest normal number: W * s
    for W, s ~ 3e-4 is a float16 subnormal with a few bits left (the unfolded Mul(Conv(x), s)
    rounds two normal numbers), and 1e-23 * 1e-23 is 0 in float32."""
    g = GraphBuilder(dtype=dtype, seed=0)
    x = g.input([1, 2, 4, 4], name="x")
    w = g.init(np.full((2, 2, 3, 3), scale))
    model = g.model([g.node("Mul", [g.node("Conv", [x, w], pads=[1] * 4),
                                    g.init(np.array(scale))])])
    result = onnxrep.optimize(model)
    assert op_counts(result.model) == {"Conv": 1, "Mul": 1}, result.applied
    assert any("smallest normal" in s.reason for s in result.skipped), result.skipped
    big = 1.0 / scale if dtype == np.float32 else 1000.0
    feeds = {"x": np.full((1, 2, 4, 4), big, dtype)}
    assert onnxrep.compare(model, result.model, inputs=feeds).ok


@pytest.mark.parametrize(("dtype", "value"), [(np.float16, 0.03), (np.float32, 5e-6),
                                            (np.float32, float("nan"))])
def test_a_small_nonzero_pad_value_is_not_a_zero_pad(dtype: type, value: float) -> None:
    """Conv1x1 (no bias: its border is 0) → Pad(value=v) → Conv3x3: v != 0, so no fold (a NaN
    border, within no tolerance of anything, least of all)."""
    g = GraphBuilder(dtype=dtype, seed=0)
    x = g.input([1, 4, 6, 6], name="x")
    pads = g.init(np.array([0, 0, 1, 1, 0, 0, 1, 1]), cast=False)
    padded = g.node("Pad", [g.conv(x, 4, 4, 1, bias=False), pads, g.init(np.array(value))])
    model = g.model([g.conv(padded, 4, 4, 3, pads=[0] * 4)])
    result = onnxrep.optimize(model)
    assert op_counts(result.model) == {"Conv": 2, "Pad": 1}, result.applied


def test_an_ir3_fold_behind_folded_constants_happens_in_one_run() -> None:
    """IR 3 (opset 7): a Conv whose weight is computed (Mul by 2) and a Pad-2 before a Conv.
    Once, the skeleton given to shape inference after constant folding left the folded
    constants out of the inputs, inference (IR 3 rules) ignored them, and the Pad merged into
    the Conv only on a second run."""
    g = GraphBuilder(seed=3, opset=7)
    x = g.input([1, 2, 4, 4], name="x")
    half = g.init(g.rng.standard_normal((2, 2, 3, 3)) / 2)
    weight = g.node("Mul", [half, g.init(np.array(2.0))])
    y = g.node("Relu", [g.conv(x, 2, 2, 3, weight=weight)])
    padded = g.node("Pad", [y], pads=[0, 0, 1, 1, 0, 0, 1, 1])
    model = g.model([g.conv(padded, 2, 2, 3, pads=[0] * 4)])
    model.ir_version = 3
    model.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    result = onnxrep.optimize(model)
    assert result.applied_by_pattern() == {"sequential": 1}
    assert onnxrep.optimize(result.model).model.SerializeToString() == \
        result.model.SerializeToString()
    assert onnxrep.compare(model, result.model).ok


def test_a_bfloat16_weight_computed_at_run_time_is_left_quickly() -> None:
    """onnxruntime has no bfloat16 Mul: gs's partitioned constant folding once recursed on the
    failure up to Python's recursion limit. The computed weight now stays, with a reason."""
    g = GraphBuilder(dtype=ml_dtypes.bfloat16, seed=4, opset=22)
    x = g.input([1, 2, 4, 4], name="x")
    weight = g.node("Mul", [g.init(g.rng.standard_normal((2, 2, 3, 3))), g.init(np.array(2.0))])
    model = g.model([g.bn(g.conv(x, 2, 2, 3, weight=weight), 2)])
    result = onnxrep.optimize(model)
    assert op_counts(result.model) == op_counts(model)
    assert any("not a constant" in s.reason for s in result.skipped)
    assert not result.library_warnings or all("Recursion" not in w for w in
                                              result.library_warnings)
    assert onnxrep.compare(model, result.model).ok


def test_a_sparse_operand_before_a_computed_weight() -> None:
    """A Div by a sparse initializer was left without a reason; the constant folding next to it
    still happens. (Where inference leaves a type unknown, 0, behind such an op, constant
    folding once looked 0 up as a numpy type: KeyError. ShapeInfo now records no such type.)"""
    g = GraphBuilder(seed=5)
    x = g.input([1, 4, 5, 5], name="x")
    half = g.init(g.rng.standard_normal((4, 4, 3, 3)) / 2)
    weight = g.node("Mul", [half, g.init(np.array(2.0))])
    divided = g.node("Div", [x, "scale"], name="div")
    model = g.model([g.conv(divided, 4, 4, 3, weight=weight)])
    model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(np.array([2.0, 4.0, 0.5, 1.0], np.float32), "scale"),
        onnx.numpy_helper.from_array(np.arange(4, dtype=np.int64)), [1, 4, 1, 1]))
    result = onnxrep.optimize(model)
    assert result.notes == ["folded 1 constant node(s)"]  # the Mul
    assert any(s.node == "div" and "sparse initializer" in s.reason for s in result.skipped)
    assert onnxrep.compare(model, result.model).ok

    from onnxrep.graph import ShapeInfo

    info = ShapeInfo()
    info._add(onnx.helper.make_tensor_value_info("unknown", 0, [1, 4]))
    assert "unknown" not in info.dtypes and info.shapes["unknown"] == (1, 4)
