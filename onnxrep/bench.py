"""Latency in onnxruntime: one model, or two interleaved so machine drift hits both alike.

After ``warmup`` runs of each, the models alternate run by run in an ABBA order (A B, B A, …)
with the same inputs; every run is timed with ``perf_counter_ns`` around ``session.run``.
Reported per model: p50, p90, min and mean in milliseconds; for two models the speedup
``p50(A) / p50(B)`` and the spread of the per-pair ratios (their p10 and p90). The session runs
at the stated onnxruntime optimization level (``all`` by default, as deployed) with
``threads`` intra-op threads (0 lets onnxruntime choose).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxrep.errors import OnnxrepError
from onnxrep.verify import load_inputs, make_feeds, session

__all__ = ["BenchResult", "Timing", "benchmark"]

ModelLike = onnx.ModelProto | str | os.PathLike[str]


@dataclass(frozen=True)
class Timing:
    name: str
    p50: float
    p90: float
    min: float
    mean: float
    runs: int


@dataclass
class BenchResult:
    timings: list[Timing]
    threads: int
    level: str
    warmup: int
    runs: int
    inputs: dict[str, list[int]] = field(default_factory=dict)
    speedup: float | None = None
    speedup_p10: float | None = None
    speedup_p90: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _timing(name: str, samples_ns: list[int]) -> Timing:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return Timing(
        name, float(np.percentile(ms, 50)), float(np.percentile(ms, 90)), float(ms.min()),
        float(ms.mean()), len(samples_ns),
    )


def benchmark(
    a: ModelLike,
    b: ModelLike | None = None,
    *,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    level: str = "all",
    shapes: Mapping[str, list[int]] | None = None,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike[str] | None = None,
    names: tuple[str, str] = ("A", "B"),
    progress: Callable[[int, int], None] | None = None,
) -> BenchResult:
    """Time ``a`` (and ``b``, interleaved); ``progress(done, total)`` is called per run."""
    if runs < 1 or warmup < 0 or threads < 0:
        raise OnnxrepError("--runs must be >= 1, --warmup and --threads >= 0")
    sessions = [session(m, level=level, threads=threads) for m in (a, b) if m is not None]
    if inputs is not None:
        feeds = load_inputs(inputs) if isinstance(inputs, (str, os.PathLike)) else dict(inputs)
    else:
        feeds = make_feeds(sessions[0], 0, shapes)
    for s in sessions:
        for _ in range(warmup):
            _run(s, feeds)
    samples: list[list[int]] = [[] for _ in sessions]
    for i in range(runs):
        order = range(len(sessions)) if i % 2 == 0 else reversed(range(len(sessions)))
        for j in order:
            samples[j].append(_run(sessions[j], feeds))
        if progress is not None:
            progress(i + 1, runs)
    result = BenchResult(
        timings=[_timing(n, s) for n, s in zip(names, samples, strict=False)],
        threads=threads, level=level, warmup=warmup, runs=runs,
        inputs={k: list(np.shape(v)) for k, v in feeds.items()},
    )
    if len(sessions) == 2:
        ratios = np.asarray(samples[0], dtype=np.float64) / np.asarray(samples[1])
        result.speedup = result.timings[0].p50 / result.timings[1].p50
        result.speedup_p10 = float(np.percentile(ratios, 10))
        result.speedup_p90 = float(np.percentile(ratios, 90))
    return result


def _run(sess: Any, feeds: dict[str, np.ndarray]) -> int:
    start = time.perf_counter_ns()
    try:
        sess.run(None, feeds)
    except Exception as e:
        raise OnnxrepError(f"onnxruntime failed to run: {str(e).splitlines()[0][:300]}") from None
    return time.perf_counter_ns() - start
