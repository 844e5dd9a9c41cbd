"""onnxrep: structural re-parameterization of exported ONNX models.

Folds BatchNormalization and per-channel affine ops into convolutions and collapses parallel,
sequential and concatenated linear branches into one Conv per block — only where exact —
then checks with onnxruntime that nothing changed and measures what it bought.

>>> import onnxrep
>>> result = onnxrep.optimize("model.onnx")            # doctest: +SKIP
>>> result.applied_by_pattern(), result.skipped          # doctest: +SKIP
>>> onnxrep.compare("model.onnx", result.model).ok      # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onnxrep.errors import OnnxrepError
from onnxrep.pipeline import optimize
from onnxrep.result import Fold, ModelStats, OptimizeResult, Skip

if TYPE_CHECKING:
    from onnxrep.bench import BenchResult
    from onnxrep.verify import CompareResult

__version__ = "0.1.0"

__all__ = [
    "BenchResult",
    "CompareResult",
    "Fold",
    "ModelStats",
    "OnnxrepError",
    "OptimizeResult",
    "Skip",
    "__version__",
    "benchmark",
    "compare",
    "optimize",
]


def compare(a: Any, b: Any, **kwargs: Any) -> CompareResult:
    """Run two models on the same inputs (in onnxruntime, or ``runtime="openvino"``); see
    :func:`onnxrep.verify.compare`."""
    from onnxrep.verify import compare as _compare

    return _compare(a, b, **kwargs)


def benchmark(a: Any, b: Any = None, *more: Any, **kwargs: Any) -> BenchResult:
    """Time one model, or several interleaved; see :func:`onnxrep.bench.benchmark`."""
    from onnxrep.bench import benchmark as _benchmark

    return _benchmark(a, b, *more, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("CompareResult", "BenchResult"):
        module = "verify" if name == "CompareResult" else "bench"
        import importlib

        return getattr(importlib.import_module(f"onnxrep.{module}"), name)
    raise AttributeError(name)
