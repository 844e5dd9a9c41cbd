"""Latency: one model, or several interleaved so machine drift hits all alike.

After ``warmup`` rounds, the models run in rounds of one run each, in the orders of a Williams
design (a Latin square balanced for carry-over; for two models that is ABBA: A B, B A, …), with
the same inputs: each model runs equally often in every position and right after every other
model, so a linear drift adds the same to each, and so does the cache a large model leaves
behind (a sub-millisecond model is several percent slower after a large one; with plain
rotation, model ``j`` nearly always follows model ``j - 1``). Every run is timed with
``perf_counter_ns`` around ``session.run``. Reported per model: p50, p90, min and mean in
milliseconds, and for every model after the first its speedup ``p50(first) / p50(model)``.
``BenchResult.speedup`` is that of the second model (the usual input → optimized pair), with
the spread of its per-round ratios (their p10 and p90) and a 95 % confidence interval of the
speedup itself (a bootstrap over the rounds, each round keeping its pair of runs; none under
``MIN_INTERVAL_RUNS`` rounds): the second model is *faster beyond the noise* only when that
interval lies above 1. The models run in
``runtime`` (any of ``verify.RUNTIMES``) with ``threads`` threads (0 lets the runtime choose):
onnxruntime at the stated optimization level (``all`` by default, as deployed), OpenVINO's CPU
plugin with one stream, the LATENCY hint and its default inference precision unless
``precision`` names one (as deployed; the precision used is in ``BenchResult.runtime``).
"""

from __future__ import annotations

import os
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxrep.errors import OnnxrepError
from onnxrep.verify import (
    RuntimeInfo,
    Session,
    given_inputs,
    make_feeds,
    prepare,
    require,
    run,
    session,
)

__all__ = ["BenchResult", "Timing", "benchmark", "ratio_interval", "round_order"]

ModelLike = onnx.ModelProto | str | os.PathLike[str]


@dataclass(frozen=True)
class Timing:
    """One model's latency in milliseconds; ``speedup`` is relative to the first model."""

    name: str
    p50: float
    p90: float
    min: float
    mean: float
    runs: int
    speedup: float | None = None


@dataclass
class BenchResult:
    timings: list[Timing]
    threads: int
    level: str | None
    """onnxruntime's optimization level; None in another runtime."""
    warmup: int
    runs: int
    inputs: dict[str, list[int]] = field(default_factory=dict)
    speedup: float | None = None
    speedup_p10: float | None = None
    speedup_p90: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    """The 95 % confidence interval of ``speedup``."""
    runtime: RuntimeInfo | None = None
    """The runtime the models ran in, its version and settings."""

    @property
    def faster(self) -> bool | None:
        """The second model is faster than the first beyond the measured noise."""
        return None if self.speedup_low is None else self.speedup_low > 1.0

    def to_dict(self) -> dict[str, Any]:
        runtime = self.runtime.to_dict() if self.runtime is not None else None
        return {**asdict(self), "runtime": runtime, "faster": self.faster}


def ratio_interval(
    a: np.ndarray, b: np.ndarray, level: float = 0.95, resamples: int = 2000
) -> tuple[float, float]:
    """A bootstrap confidence interval of ``median(a) / median(b)`` for paired samples (the
    rounds are resampled, each keeping its pair), with a fixed seed so a result reproduces."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(0)
    rounds = rng.integers(0, len(a), size=(resamples, len(a)))
    ratios = np.median(a[rounds], axis=1) / np.median(b[rounds], axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def _timing(name: str, samples_ns: list[int], baseline_p50: float | None) -> Timing:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50 = float(np.percentile(ms, 50))
    return Timing(
        name, p50, float(np.percentile(ms, 90)), float(ms.min()), float(ms.mean()),
        len(samples_ns), None if baseline_p50 is None else baseline_p50 / p50,
    )


def round_order(i: int, n: int) -> list[int]:
    """The order of the ``n`` models in round ``i``: row ``i`` of a Williams design.

    The first row is ``0, 1, n-1, 2, n-2, …`` and each round adds one to it (mod ``n``); for odd
    ``n`` every other block of ``n`` rounds runs reversed. Over ``n`` rounds (``2n`` for odd
    ``n``) every model takes every position and follows every other model equally often.
    """
    first, low, high = [0], 1, n - 1
    for k in range(1, n):
        if k % 2:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
    order = [(f + i) % n for f in first]
    if n % 2 and (i // n) % 2:
        order.reverse()
    return order


def benchmark(
    a: ModelLike,
    b: ModelLike | None = None,
    *more: ModelLike,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    level: str = "all",
    shapes: Mapping[str, list[int]] | None = None,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike[str] | None = None,
    names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    runtime: str = "onnxruntime",
    precision: str | None = None,
) -> BenchResult:
    """Time ``a`` alone, or ``a``, ``b``, ... interleaved (``a`` is the baseline).

    ``progress(done, total)`` is called after every round (warm-up rounds included).
    """
    if runs < 1 or warmup < 0 or threads < 0:
        raise OnnxrepError("--runs must be >= 1, --warmup and --threads >= 0")
    require(runtime)
    models = [m for m in (a, b, *more) if m is not None]
    labels = list(names or ())[: len(models)]
    labels += [string.ascii_uppercase[i % 26] for i in range(len(labels), len(models))]
    sessions = [session(m, runtime=runtime, level=level, threads=threads, precision=precision)
                for m in models]
    expected = sorted(i.name for i in sessions[0].get_inputs())
    for label, s in zip(labels[1:], sessions[1:], strict=True):
        got = sorted(i.name for i in s.get_inputs())
        if got != expected:
            raise OnnxrepError(
                f"the models have different inputs: {labels[0]} {expected} vs {label} {got}"
            )
    if inputs is not None:
        feeds = given_inputs(inputs, expected)
    else:
        feeds = make_feeds(sessions[0], 0, shapes)
    for label, s in zip(labels, sessions, strict=True):
        # untimed: OpenVINO compiles a model with dynamic inputs for the feeds
        _named(label, prepare, s, feeds)
    n, total = len(sessions), warmup + runs
    samples: list[list[int]] = [[] for _ in sessions]
    for i in range(total):
        for j in round_order(i, n):
            elapsed = _named(labels[j], _run, sessions[j], feeds)
            if i >= warmup:
                samples[j].append(elapsed)
        if progress is not None:
            progress(i + 1, total)
    base = float(np.percentile(np.asarray(samples[0], dtype=np.float64) / 1e6, 50))
    result = BenchResult(
        timings=[
            _timing(name, s, base if j > 0 else None)
            for j, (name, s) in enumerate(zip(labels, samples, strict=True))
        ],
        threads=threads, level=sessions[0].info.level, warmup=warmup, runs=runs,
        inputs={k: list(np.shape(v)) for k, v in feeds.items()}, runtime=sessions[0].info,
    )
    if n >= 2:
        ratios = np.asarray(samples[0], dtype=np.float64) / np.asarray(samples[1])
        result.speedup = result.timings[1].speedup
        result.speedup_p10 = float(np.percentile(ratios, 10))
        result.speedup_p90 = float(np.percentile(ratios, 90))
        if runs >= MIN_INTERVAL_RUNS:
            result.speedup_low, result.speedup_high = ratio_interval(
                np.asarray(samples[0]), np.asarray(samples[1]))
    return result


MIN_INTERVAL_RUNS = 10
"""Rounds a confidence interval of the speedup needs: a bootstrap over fewer says nothing
(over one round its interval has no width at all), so then there is none, and whether the
second model is faster stays open (``BenchResult.faster`` is None)."""


def _run(sess: Session, feeds: dict[str, np.ndarray]) -> int:
    start = time.perf_counter_ns()
    run(sess, feeds)
    return time.perf_counter_ns() - start


def _named(label: str, step: Callable[..., Any], *args: Any) -> Any:
    """``step(*args)``; a failure names the model ``label``."""
    try:
        return step(*args)
    except OnnxrepError as e:
        raise OnnxrepError(f"{label}: {e}") from None
