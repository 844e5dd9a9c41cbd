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

if TYPE_CHECKING:
    from onnxrep.bench import BenchResult
    from onnxrep.pipeline import optimize
    from onnxrep.result import Fold, ModelStats, OptimizeResult, Skip
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


LAZY = {
    "optimize": "pipeline", "Fold": "result", "ModelStats": "result",
    "OptimizeResult": "result", "Skip": "result", "CompareResult": "verify",
    "BenchResult": "bench",
}
"""Names imported on first use: importing onnxrep alone loads no onnx (a second, mostly
ml_dtypes), so the command line can start the fusion audit's helper first."""


def __getattr__(name: str) -> Any:
    if name in LAZY:
        import importlib

        value = getattr(importlib.import_module(f"onnxrep.{LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(name)
