"""Renderings of one optimization run: terminal text and JSON.

A :class:`Report` gathers the optimize result with the parity and timing results when they
were asked for; every format renders the same object. Nothing here prints or runs models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxrep.errors import OnnxrepError
from onnxrep.result import OptimizeResult

if TYPE_CHECKING:
    from onnxrep.bench import BenchResult
    from onnxrep.verify import CompareResult

__all__ = ["Report", "render_text", "write"]


@dataclass
class Report:
    input: str
    output: str | None
    result: OptimizeResult
    parity: CompareResult | None = None
    timing: BenchResult | None = None
    written: bool = False

    def to_dict(self) -> dict[str, Any]:
        from onnxrep import __version__

        return {
            "onnxrep": __version__,
            "input": self.input,
            "output": self.output,
            "written": self.written,
            **self.result.to_dict(),
            "parity": self.parity.to_dict() if self.parity else None,
            "timing": self.timing.to_dict() if self.timing else None,
        }


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K" if n >= 1e3 else f"{n:.0f}"


def render_text(report: Report, *, explain: bool = False) -> str:
    r = report.result
    lines = [f"{report.input} -> {report.output or '(not written)'}"]
    b, a = r.before, r.after
    lines.append(f"  nodes      {b.nodes} -> {a.nodes}")
    for op in sorted(set(b.ops) | set(a.ops)):
        x, y = b.ops.get(op, 0), a.ops.get(op, 0)
        if x != y:
            lines.append(f"    {op:<22} {x} -> {y}")
    lines.append(f"  params     {_count(b.params)} -> {_count(a.params)}")
    lines.append(f"  size       {_size(b.bytes)} -> {_size(a.bytes)}")
    by_pattern = ", ".join(f"{k} {v}" for k, v in r.applied_by_pattern().items())
    lines.append(f"  folds      {len(r.applied)}" + (f" ({by_pattern})" if by_pattern else ""))
    if r.skipped:
        hint = "" if explain else " (--explain lists them)"
        lines.append(f"  skipped    {len(r.skipped)} candidate(s){hint}")
        if explain:
            for s in r.skipped:
                lines.append(f"    [{s.pattern}] {s.op} {s.node!r}: {s.reason}")
    if explain and r.applied:
        lines.append("  applied")
        for f in r.applied:
            ops = ", ".join(f"{v} {k}" for k, v in sorted(f.ops.items()))
            lines.append(f"    [{f.pattern}] {f.output!r} <- {ops}: {f.result}")
    if report.parity is not None:
        lines += _parity_lines(report.parity)
    if report.timing is not None:
        lines += timing_lines(report.timing)
    lines.append(f"  time       {r.seconds:.2f} s to optimize")
    return "\n".join(lines)


def _parity_lines(p: CompareResult) -> list[str]:
    verdict = "ok" if p.ok else "MISMATCH"
    lines = [f"  parity     {verdict} over {p.seeds} input set(s), onnxruntime {p.level}"]
    lines += [f"    {line}" for line in parity_table(p)]
    return lines


def parity_table(p: CompareResult) -> list[str]:
    """One line per output: errors, cosine, tolerance and verdict."""
    rows = []
    for o in p.outputs:
        tol = f"atol {o.atol:g} + rtol {o.rtol:g} x {o.ref_max:.3g}"
        rows.append(
            f"{'ok ' if o.ok else 'BAD'} {o.name}: max abs {o.max_abs:.3g}, max rel "
            f"{o.max_rel:.3g}, mean abs {o.mean_abs:.3g}, cosine {o.cosine:.8f} ({tol})"
            + (f" {o.note}" if o.note else "")
        )
    return rows


def timing_lines(t: BenchResult) -> list[str]:
    threads = "default threads" if t.threads == 0 else f"{t.threads} thread(s)"
    lines = [
        f"  latency    onnxruntime {t.level}, {threads}, {t.runs} interleaved runs "
        f"after {t.warmup} warm-up"
    ]
    for x in t.timings:
        lines.append(
            f"    {x.name:<10} p50 {x.p50:.3f} ms  p90 {x.p90:.3f} ms  min {x.min:.3f} ms"
        )
    if t.speedup is not None:
        lines.append(
            f"    speedup    {t.speedup:.2f}x (per-run ratio p10 {t.speedup_p10:.2f}x, "
            f"p90 {t.speedup_p90:.2f}x)"
        )
    return lines


def write(report: Report, path: str | os.PathLike[str]) -> None:
    """Write ``report`` as JSON (the format follows the file name's extension)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix != ".json":
        raise OnnxrepError(f"{p}: unknown report format {suffix!r} (use .json)")
    text = json.dumps(report.to_dict(), indent=2, default=str)
    try:
        p.write_text(text + "\n", encoding="utf-8")
    except OSError as e:
        raise OnnxrepError(f"{p}: cannot write report ({e.strerror or e})") from None
