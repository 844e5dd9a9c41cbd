"""Assertions for test suites: is a model still the same function, and does onnxrep fold it?

>>> from onnxrep.testing import assert_equivalent, assert_optimizes
>>> result = assert_optimizes("model.onnx", min_folds=1)          # doctest: +SKIP
>>> assert_equivalent("model.onnx", "model.deploy.onnx", atol=1e-5, rtol=1e-4)  # doctest: +SKIP

Both raise ``AssertionError`` with a readable table when the check fails, and
:class:`onnxrep.OnnxrepError` when a model cannot be read or run (a broken input is an error,
not a failed assertion). Parity follows :func:`onnxrep.verify.compare`: onnxruntime at
``ORT_DISABLE_ALL``, random inputs from the declared types (one set per seed), tolerances by
dtype unless given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxrep.result import OptimizeResult

if TYPE_CHECKING:
    from onnxrep.verify import CompareResult

__all__ = ["assert_equivalent", "assert_optimizes"]

ModelLike = onnx.ModelProto | str | os.PathLike[str]


def _label(model: ModelLike, default: str) -> str:
    return default if isinstance(model, onnx.ModelProto) else os.fspath(model)


def assert_equivalent(
    a: ModelLike,
    b: ModelLike,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    shapes: Mapping[str, list[int]] | None = None,
    seeds: int = 3,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike[str] | None = None,
) -> CompareResult:
    """Assert that ``b`` computes what ``a`` (the reference) does, output by output.

    ``a`` and ``b`` are ModelProtos or paths. Returns the :class:`CompareResult` when they
    agree; otherwise raises ``AssertionError`` with one row per output (errors, bound, cosine).
    """
    __tracebackhide__ = True  # pytest: report the caller's line, not this helper's
    from onnxrep.report import parity_grid
    from onnxrep.verify import compare

    result = compare(a, b, atol=atol, rtol=rtol, shapes=shapes, seeds=seeds, inputs=inputs)
    if not result.ok:
        bad = sum(not o.ok for o in result.outputs)
        lines = [
            f"{_label(b, 'b')} differs from {_label(a, 'a')}: {bad} of {len(result.outputs)} "
            f"output(s) beyond tolerance over {result.seeds} input set(s) "
            f"(onnxruntime {result.level}; bound = atol + rtol x max|reference|)",
            *(f"  {line}" for line in parity_grid(result)),
        ]
        raise AssertionError("\n".join(lines))
    return result


def assert_optimizes(
    model: ModelLike,
    *,
    min_folds: int = 1,
    min_speedup: float | None = None,
    skip: Iterable[str] = (),
    atol: float | None = None,
    rtol: float | None = None,
    shapes: Mapping[str, list[int]] | None = None,
    seeds: int = 3,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
) -> OptimizeResult:
    """Optimize ``model`` and assert that it folded at least ``min_folds`` times, that the
    result is equivalent (as :func:`assert_equivalent`) and, when ``min_speedup`` is given,
    that the optimized model's p50 latency is at least ``min_speedup`` times faster.

    Returns the :class:`~onnxrep.OptimizeResult`. Timing assertions are noisy on shared
    machines; keep ``min_speedup`` for dedicated benchmark jobs.
    """
    __tracebackhide__ = True
    from onnxrep import io
    from onnxrep.pipeline import optimize

    original = io.load(model) if not isinstance(model, onnx.ModelProto) else model
    result = optimize(original, skip=skip)
    if len(result.applied) < min_folds:
        lines = [f"{_label(model, 'the model')}: {len(result.applied)} fold(s), expected at "
                 f"least {min_folds}"]
        if result.skipped:
            lines.append("  skipped candidates:")
            lines += [f"    [{s.pattern}] {s.op} {s.node!r}: {s.reason}"
                      for s in result.skipped[:20]]
            if len(result.skipped) > 20:
                lines.append(f"    ... and {len(result.skipped) - 20} more")
        raise AssertionError("\n".join(lines))
    assert_equivalent(original, result.model, atol=atol, rtol=rtol, shapes=shapes, seeds=seeds)
    if min_speedup is not None:
        from onnxrep.bench import benchmark
        from onnxrep.report import timing_lines

        timing = benchmark(original, result.model, threads=threads, warmup=warmup, runs=runs,
                           shapes=shapes, names=("input", "optimized"))
        assert timing.speedup is not None
        if timing.speedup < min_speedup:
            raise AssertionError("\n".join([
                f"{_label(model, 'the model')}: speedup {timing.speedup:.2f}x is below "
                f"{min_speedup:.2f}x",
                *timing_lines(timing),
            ]))
    return result
