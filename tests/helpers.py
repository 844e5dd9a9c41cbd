"""Checks every optimized test model goes through: the checker, op counts, and ORT parity."""

from __future__ import annotations

import numpy as np
import onnx

import onnxrep
from onnxrep.result import OptimizeResult
from tests.builders import op_counts

TOLERANCES = {
    # dtype of the model → (atol, rtol x max|reference|) for parity at ORT_DISABLE_ALL
    "float32": (1e-5, 1e-5),
    "float64": (1e-12, 1e-12),
    "float16": (2e-3, 5e-3),
    "bfloat16": (1e-2, 5e-2),  # the reference evaluator rounds every op of the input to bf16
}


def optimized(
    model: onnx.ModelProto,
    ops: dict[str, int] | None = None,
    *,
    skip: tuple[str, ...] = (),
    dtype: str = "float32",
    shapes: dict[str, list[int]] | None = None,
    audit: bool = True,
) -> OptimizeResult:
    """Optimize ``model`` and assert: full checker, exact op counts, parity, input untouched."""
    before = model.SerializeToString()
    result = onnxrep.optimize(model, skip=skip, audit=audit)
    assert model.SerializeToString() == before, "the input model was modified"
    onnx.checker.check_model(result.model, full_check=True)
    if ops is not None:
        assert op_counts(result.model) == ops
    assert_equivalent(model, result.model, dtype=dtype, shapes=shapes)
    return result


def assert_equivalent(
    a: onnx.ModelProto, b: onnx.ModelProto, *, dtype: str = "float32",
    shapes: dict[str, list[int]] | None = None,
) -> None:
    atol, rtol = TOLERANCES[dtype]
    cmp = onnxrep.compare(a, b, atol=atol, rtol=rtol, seeds=2, shapes=shapes)
    bad = [o for o in cmp.outputs if not o.ok]
    assert not bad, f"outputs differ: {bad}"


def reasons(result: OptimizeResult) -> list[str]:
    return [s.reason for s in result.skipped]


def perturbed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer scaled by 1.01: what a wrong fold looks like."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        values = onnx.numpy_helper.to_array(t) * 1.01
        t.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), t.name))
    return out
