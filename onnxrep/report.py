"""Renderings of one optimization run: terminal text, JSON, Markdown and HTML.

A :class:`Report` gathers the optimize result with the parity and timing results when they
were asked for (and the verdict of ``onnxrep check``); every format renders the same object.
``write`` picks the format from the file name — ``.json``, ``.md``/``.markdown`` (a compact
summary for a pull-request comment) or ``.html``/``.htm`` (one self-contained page: inline CSS
and SVG charts, no scripts, nothing fetched) — and writes it atomically. Every piece of text
that comes from the model or the command line is escaped for the format it lands in. Nothing
here prints or runs models.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxrep import io
from onnxrep.errors import OnnxrepError
from onnxrep.families import FAMILIES
from onnxrep.result import ModelStats, OptimizeResult, Skip

if TYPE_CHECKING:
    from onnxrep.bench import BenchResult
    from onnxrep.verify import CompareResult

__all__ = [
    "FORMATS",
    "Report",
    "StagedReport",
    "Verdict",
    "render",
    "render_html",
    "render_markdown",
    "render_text",
    "report_format",
    "write",
]

FORMATS = {
    ".json": "json", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
}
"""File extension → report format."""

COLOURS = ("#94a3b8", "#2563eb", "#0d9488", "#d97706", "#7c3aed", "#db2777")
"""Bar colours of the HTML charts, one per timed model: input, optimized, deploy form, …"""

BEFORE, AFTER = COLOURS[0], COLOURS[1]


@dataclass(frozen=True)
class Verdict:
    """What ``onnxrep check`` concluded: its exit ``code`` and a one-line ``reason``."""

    ok: bool
    code: int
    reason: str
    min_speedup: float | None = None


@dataclass
class Report:
    input: str
    output: str | None
    result: OptimizeResult
    parity: CompareResult | None = None
    timing: BenchResult | None = None
    written: bool = False
    deploy_form: str | None = None
    deploy_stats: ModelStats | None = None
    check: Verdict | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from onnxrep import __version__

        deploy = None
        if self.deploy_form is not None:
            deploy = {"path": self.deploy_form}
            if self.deploy_stats is not None:
                deploy.update(asdict(self.deploy_stats), nodes=self.deploy_stats.nodes)
        return {
            "onnxrep": __version__,
            "input": self.input,
            "output": self.output,
            "written": self.written,
            **self.result.to_dict(),
            "parity": self.parity.to_dict() if self.parity else None,
            "timing": self.timing.to_dict() if self.timing else None,
            "deploy_form": deploy,
            "check": asdict(self.check) if self.check else None,
            "warnings": list(self.warnings),
        }


# -- numbers -------------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K" if n >= 1e3 else f"{n:.0f}"


def _change(before: float, after: float) -> str:
    """``-66.7 %``; ``0 %`` when equal."""
    if before == after:
        return "0 %"
    if before == 0:
        return "new"
    pct = 100.0 * (after - before) / before
    return f"{'+' if pct > 0 else '-'}{abs(pct):.1f} %"


def _ms(x: float) -> str:
    return f"{x:.3f} ms" if x < 100 else f"{x:.1f} ms"


def _md_verdict(t: BenchResult) -> str:
    """What the speedup of ``t`` says, as its interval judges it (a ratio of medians just
    above or below 1 says nothing by itself)."""
    if t.faster:
        return "faster"
    if t.faster is None:
        return "(no interval: too few runs)"
    if t.speedup_high is not None and t.speedup_high < 1:
        return "(slower)"
    return "(within the noise)"


def _interval(t: BenchResult, lead: str = "") -> str:
    """``95 % interval 1.21x .. 1.34x`` of the speedup, if measured."""
    if t.speedup_low is None or t.speedup_high is None:
        return ""
    return f"{lead}95 % interval {t.speedup_low:.2f}x .. {t.speedup_high:.2f}x"


def _threads(t: BenchResult) -> str:
    return "default threads" if t.threads == 0 else f"{t.threads} thread(s)"


def _op_rows(r: OptimizeResult) -> list[tuple[str, int, int]]:
    """(op, before, after) for every op type whose count changed."""
    b, a = r.before.ops, r.after.ops
    return [(op, b.get(op, 0), a.get(op, 0)) for op in sorted(set(b) | set(a))
            if b.get(op, 0) != a.get(op, 0)]


def _skip_groups(skips: Sequence[Skip]) -> list[tuple[str, str, int, list[str]]]:
    """(pattern, reason, count, nodes) per distinct reason, the most frequent first."""
    nodes: dict[tuple[str, str], list[str]] = {}
    for s in skips:
        nodes.setdefault((s.pattern, s.reason), []).append(s.node)
    rows = [(p, reason, len(ns), ns) for (p, reason), ns in nodes.items()]
    return sorted(rows, key=lambda row: (-row[2], row[0], row[1]))


def _verdict_word(v: Verdict) -> str:
    return "passed" if v.ok else "FAILED"


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts.items()) or "none"


def audit_summary(r: OptimizeResult) -> str | None:
    """One line on the fusion audit (None when it did not run)."""
    a = r.audit
    if a is None:
        return None
    if a.unavailable:
        return f"not run: {a.unavailable}"
    if a.not_needed:
        return "not needed: nothing was folded"
    n = sum(a.before.values())
    if not n:
        return "onnxruntime fuses no kernel in the input"
    text = f"onnxruntime fuses {n} kernel(s) in the input ({_kinds(a.before)})"
    if a.withdrawn:
        kinds = Counter(x.kind for x in a.withdrawn)
        text += (f"; folds that split {len(a.withdrawn)} of them were withdrawn "
                 f"({_kinds(dict(sorted(kinds.items())))})")
    if a.remaining:
        kinds = Counter(x.kind for x in a.remaining)
        text += (f"; the output still splits {len(a.remaining)} "
                 f"({_kinds(dict(sorted(kinds.items())))})")
    elif a.at_risk:
        text += f"; {a.at_risk} touched by folds, all still fused in the output"
    else:
        text += "; no fold touches one"
    return text


RUNTIME_DOES_IT = frozenset(f.name for f in FAMILIES if f.runtime_does_it)


def not_faster(t: BenchResult, r: OptimizeResult | None = None,
               splits: Sequence[str] = ()) -> str | None:
    """A warning when the second timed model is not faster than the first beyond the measured
    noise, naming the likely cause (``splits``: fused kernels the second model runs in pieces,
    for models onnxrep did not make); None when it is faster."""
    if t.faster is not False or len(t.timings) < 2:
        return None
    a, b = t.timings[0].name, t.timings[1].name
    text = (f"{b} is not faster than {a} beyond the measured noise (speedup {t.speedup:.3f}x, "
            f"95 % interval {t.speedup_low:.3f}x .. {t.speedup_high:.3f}x)")
    runtime = t.runtime.name if t.runtime is not None else "onnxruntime"
    return f"{text}; likely cause: {_cause(r, splits, runtime)}"


def _cause(r: OptimizeResult | None, splits: Sequence[str], runtime: str) -> str:
    # the fusion audit reads onnxruntime's kernels: another runtime fuses its own way
    audited = runtime == "onnxruntime"
    remaining = list(splits) or ([x.kind for x in r.audit.remaining]
                                 if r is not None and r.audit is not None else [])
    if remaining and audited:
        kinds = dict(sorted(Counter(remaining).items()))
        return (f"onnxruntime fuses fewer kernels: {len(remaining)} fused kernel(s) now run in "
                f"pieces ({_kinds(kinds)})")
    if r is None:
        return ("unknown (onnxruntime fuses the same kernels in both)" if audited
                else "unknown")
    if not r.applied:
        return "nothing was folded (--explain says why each candidate was left)"
    if {f.pattern for f in r.applied} <= RUNTIME_DOES_IT:
        return ("every fold was a BatchNormalization or a constant scale or shift after a layer, "
                f"which {runtime} folds itself when it loads the model")
    return "the folded blocks take a small share of the run time"


def runtime_label(x: CompareResult | BenchResult) -> str:
    """Where parity or timing ran: ``onnxruntime 1.32.0 all``; for parity in another runtime
    than its reference, ``openvino 2026.4.1 CPU, f32 inference precision, against
    onnxruntime 1.32.0 disable_all``."""
    if x.runtime is None:  # a result made without a session (tests, older callers)
        return f"onnxruntime {x.level}"
    reference = getattr(x, "reference", None)
    if reference is None or reference == x.runtime:
        return x.runtime.label
    return f"{x.runtime.label}, against {reference.label}"


# -- text ----------------------------------------------------------------------------------------


def render_text(report: Report, *, explain: bool = False) -> str:
    r = report.result
    if report.check is not None:
        first = f"{report.input}: check {_verdict_word(report.check)}: {report.check.reason}"
    else:
        first = f"{report.input} -> {report.output or '(not written)'}"
    lines = [first]
    b, a = r.before, r.after
    lines.append(f"  nodes      {b.nodes} -> {a.nodes}")
    for op, x, y in _op_rows(r):
        lines.append(f"    {op:<22} {x} -> {y}")
    lines.append(f"  params     {_count(b.params)} -> {_count(a.params)}")
    lines.append(f"  size       {_size(b.bytes)} -> {_size(a.bytes)}")
    by_pattern = ", ".join(f"{k} {v}" for k, v in r.applied_by_pattern().items())
    lines.append(f"  folds      {len(r.applied)}" + (f" ({by_pattern})" if by_pattern else ""))
    audit = audit_summary(r)
    if audit is not None:
        lines.append(f"  fusions    {audit}")
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
    lines += [f"  warning    {w}" for w in report.warnings]
    if r.library_warnings:
        hint = "" if explain else " (-v lists them)"
        lines.append(f"  library    {len(r.library_warnings)} library warning(s){hint}")
        if explain:
            lines += [f"    {w}" for w in r.library_warnings]
    return "\n".join(lines)


def _parity_lines(p: CompareResult) -> list[str]:
    verdict = "ok" if p.ok else "MISMATCH"
    lines = [f"  parity     {verdict} over {p.seeds} input set(s), {runtime_label(p)}"]
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


def parity_grid(p: CompareResult) -> list[str]:
    """The parity result as an aligned text table with a header row, one row per output."""
    header = ("", "output", "dtype", "shape", "max abs", "bound", "max rel", "mean abs",
              "cosine", "note")
    rows = [header]
    for o in p.outputs:
        rows.append((
            "ok" if o.ok else "BAD", o.name, o.dtype, "x".join(map(str, o.shape)) or "scalar",
            f"{o.max_abs:.3g}", f"{o.atol + o.rtol * o.ref_max:.3g}", f"{o.max_rel:.3g}",
            f"{o.mean_abs:.3g}", f"{o.cosine:.8f}", o.note,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def timing_lines(t: BenchResult) -> list[str]:
    lines = [
        f"  latency    {runtime_label(t)}, {_threads(t)}, {t.runs} interleaved runs "
        f"after {t.warmup} warm-up"
    ]
    width = max([10, *(len(x.name) for x in t.timings)])
    many = len(t.timings) > 2
    for x in t.timings:
        vs = f"  {x.speedup:.2f}x" if many and x.speedup is not None else ""
        lines.append(
            f"    {x.name:<{width}} p50 {x.p50:.3f} ms  p90 {x.p90:.3f} ms  min {x.min:.3f} ms"
            + vs
        )
    if t.speedup is not None:
        lines.append(
            f"    {'speedup':<{width}} {t.speedup:.2f}x (per-run ratio p10 {t.speedup_p10:.2f}x, "
            f"p90 {t.speedup_p90:.2f}x{_interval(t, '; ')})"
        )
    return lines


# -- Markdown ------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def _md(text: object) -> str:
    """Text that renders literally in a GitHub Markdown table cell."""
    s = " ".join(str(text).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", s)


def _md_table(header: Sequence[str], align: str, rows: Sequence[Sequence[object]]) -> list[str]:
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[c] for c in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: Report, *, max_rows: int = 50) -> str:
    """A compact summary for a pull-request comment; long lists sit in collapsed sections."""
    from onnxrep import __version__

    r, p, t = report.result, report.parity, report.timing
    b, a = r.before, r.after
    target = _md(report.output) if report.output else "(not written)"
    if report.check is not None:
        target = "checked in memory"
    out = [f"### onnxrep: {_md(report.input)} → {target}", ""]
    if report.check is not None:
        mark = "✅" if report.check.ok else "❌"
        out += [f"{mark} **check {_verdict_word(report.check)}**: {_md(report.check.reason)}", ""]
    out += [f"⚠️ **warning**: {_md(w)}" for w in report.warnings]
    if report.warnings:
        out.append("")

    rows: list[list[object]] = [
        ["nodes", b.nodes, a.nodes, _change(b.nodes, a.nodes)],
        ["parameters", _count(b.params), _count(a.params), _change(b.params, a.params)],
        ["size", _size(b.bytes), _size(a.bytes), _change(b.bytes, a.bytes)],
    ]
    if t is not None and len(t.timings) >= 2:
        rows.append(["latency p50", _ms(t.timings[0].p50), _ms(t.timings[1].p50),
                     f"**{t.speedup:.2f}x** {_md_verdict(t)}"])
    if p is not None:
        rows.append(["parity", "", "ok" if p.ok else "**MISMATCH**",
                     f"{p.seeds} input set(s)"])
    out += _md_table(["", "before", "after", "change"], "lrrr", rows)

    audit = audit_summary(r)
    if audit is not None:
        out += ["", f"**Fusion audit**: {_md(audit)}"]

    ops = _op_rows(r)
    if ops:
        out += ["", "**Operators**", ""]
        out += _md_table(["op", "before", "after", "change"], "lrrr",
                         [[_md(op), x, y, f"{y - x:+d}"] for op, x, y in ops])

    by_pattern = r.applied_by_pattern()
    out += ["", f"**Folds**: {len(r.applied)}"
            + (" (" + ", ".join(f"{_md(k)} {v}" for k, v in by_pattern.items()) + ")"
               if by_pattern else "")]
    if r.applied:
        out += ["", f"<details><summary>Folds applied ({len(r.applied)})</summary>", ""]
        out += _md_table(
            ["pattern", "output", "replaces", "result"], "llll",
            [[_md(f.pattern), _md(f.output),
              _md(", ".join(f"{v} {k}" for k, v in sorted(f.ops.items()))), _md(f.result)]
             for f in r.applied[:max_rows]],
        )
        if len(r.applied) > max_rows:
            out += ["", f"… and {len(r.applied) - max_rows} more (see the JSON report)"]
        out += ["", "</details>"]

    if r.skipped:
        groups = _skip_groups(r.skipped)
        out += ["", f"<details><summary>Skipped candidates ({len(r.skipped)}, "
                f"{len(groups)} reason(s))</summary>", ""]
        out += _md_table(
            ["pattern", "reason", "count", "nodes"], "llrl",
            [[_md(pat), _md(reason), n,
              ", ".join(_md(x) for x in nodes[:3]) + (f", … {n - 3} more" if n > 3 else "")]
             for pat, reason, n, nodes in groups[:max_rows]],
        )
        if len(groups) > max_rows:
            out += ["", f"… and {len(groups) - max_rows} more reason(s) (see the JSON report)"]
        out += ["", "</details>"]

    if p is not None:
        shapes = ", ".join(f"{_md(k)} {'x'.join(map(str, v))}" for k, v in p.inputs.items())
        out += ["", f"**Parity**: {'ok' if p.ok else '**MISMATCH**'} over {p.seeds} input "
                f"set(s), {_md(runtime_label(p))}" + (f"; inputs {shapes}" if shapes else ""),
                ""]
        out += _md_table(
            ["output", "max abs", "bound", "max rel", "mean abs", "cosine", ""], "lrrrrrl",
            [[_md(o.name), f"{o.max_abs:.3g}", f"{o.atol + o.rtol * o.ref_max:.3g}",
              f"{o.max_rel:.3g}", f"{o.mean_abs:.3g}", f"{o.cosine:.8f}",
              ("ok" if o.ok else "**BAD**") + (f" {_md(o.note)}" if o.note else "")]
             for o in p.outputs],
        )

    if t is not None:
        out += ["", f"**Latency**: {_md(runtime_label(t))}, {_threads(t)}, {t.runs} "
                f"interleaved runs after {t.warmup} warm-up", ""]
        out += _md_table(
            ["model", "p50", "p90", "min", "speedup"], "lrrrr",
            [[_md(x.name), _ms(x.p50), _ms(x.p90), _ms(x.min),
              "" if x.speedup is None else f"{x.speedup:.2f}x"] for x in t.timings],
        )
        if t.speedup is not None:
            out += ["", f"Per-run ratio p10 {t.speedup_p10:.2f}x, p90 {t.speedup_p90:.2f}x"
                    f"{_interval(t, '; ')}."]

    out += ["", f"<sub>onnxrep {__version__}, optimized in {r.seconds:.2f} s</sub>", ""]
    return "\n".join(out)


# -- HTML ----------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _nice_step(top: float, ticks: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times 10^k) giving about ``ticks`` intervals up to top."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    base = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * base >= raw:
            return m * base
    return 10 * base


@dataclass(frozen=True)
class _Bar:
    value: float
    colour: str
    text: str
    low: float | None = None
    high: float | None = None


def _svg_bars(
    groups: Sequence[tuple[str, Sequence[_Bar]]],
    *,
    label: str,
    tick: Callable[[float], str],
    width: int = 936,
    bar: int = 22,
    integer: bool = False,
) -> str:
    """A horizontal bar chart: one group of bars per label, an x axis with round ticks (whole
    numbers with ``integer``), and an optional whisker (``low``..``high``) per bar."""
    left, right, top_pad, gap = 170, 110, 8, 14
    plot = width - left - right
    top = max([1e-12, *(max(x.value, x.high or 0.0) for _, bars in groups for x in bars)])
    step = _nice_step(top)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    axis_max = step * math.ceil(top / step - 1e-9)
    height_rows = sum(len(bars) * (bar + 4) - 4 + gap for _, bars in groups)
    height = top_pad + height_rows + 26

    def x_of(v: float) -> float:
        return left + plot * v / axis_max

    parts = [
        f'<svg class="chart" role="img" aria-label="{_e(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{_e(label)}</title>",
    ]
    axis_y = top_pad + height_rows
    n_ticks = round(axis_max / step)
    for i in range(n_ticks + 1):
        v = i * step
        x = x_of(v)
        parts.append(f'<line x1="{x:.1f}" y1="{top_pad}" x2="{x:.1f}" y2="{axis_y}" '
                     f'class="grid"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 16}" class="tick" '
                     f'text-anchor="middle">{_e(tick(v))}</text>')
    y = top_pad + gap / 2
    for name, bars in groups:
        group_h = len(bars) * (bar + 4) - 4
        parts.append(
            f'<text x="{left - 10}" y="{y + group_h / 2 + 4:.1f}" class="label" '
            f'text-anchor="end"><title>{_e(name)}</title>{_e(_short(name, 24))}</text>'
        )
        for b in bars:
            w = max(x_of(b.value) - left, 1.0 if b.value > 0 else 0.0)
            parts.append(
                f'<rect x="{left}" y="{y:.1f}" width="{w:.1f}" height="{bar}" rx="2" '
                f'fill="{b.colour}"><title>{_e(name)}: {_e(b.text)}</title></rect>'
            )
            end = left + w
            if b.low is not None and b.high is not None:
                x1, x2, cy = x_of(b.low), x_of(b.high), y + bar / 2
                parts.append(
                    f'<path d="M{x1:.1f} {cy:.1f}H{x2:.1f}M{x1:.1f} {cy - 5:.1f}V{cy + 5:.1f}'
                    f'M{x2:.1f} {cy - 5:.1f}V{cy + 5:.1f}" class="whisker"/>'
                )
                end = max(end, x2)
            parts.append(f'<text x="{end + 8:.1f}" y="{y + bar / 2 + 4:.1f}" '
                         f'class="value">{_e(b.text)}</text>')
            y += bar + 4
        y += gap - 4
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot}" y2="{axis_y}" '
                 f'class="axis"/>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(items: Sequence[tuple[str, str]]) -> str:
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{_e(t)}</span>' for t, c in items
    ) + "</p>"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], num: str = "") -> str:
    """``rows`` hold escaped HTML; ``num`` marks right-aligned columns with ``r``."""
    def cls(i: int) -> str:
        return ' class="num"' if i < len(num) and num[i] == "r" else ""

    head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
:root{--fg:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--ok:#15803d;--bad:#b91c1c}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1040px;margin:0 auto;padding:28px 32px 40px}
header h1{font-size:22px;margin:0 0 4px;font-weight:650}
.path{margin:0;color:var(--muted);word-break:break-all}
.path b{color:var(--fg);font-weight:600}
.banner{margin:16px 0 0;padding:10px 14px;border-radius:8px;font-weight:600}
.banner.ok{background:#dcfce7;color:var(--ok)}.banner.bad{background:#fee2e2;color:var(--bad)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px;
margin:20px 0 8px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;white-space:nowrap;font-weight:650;margin-top:2px;
font-variant-numeric:tabular-nums}
.card .s{color:var(--muted);font-size:12px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 20px;
margin:16px 0}
h2{font-size:16px;margin:0 0 4px;font-weight:650}
.note{color:var(--muted);margin:0 0 10px;font-size:13px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;margin-top:8px}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--line);vertical-align:top;
overflow-wrap:anywhere}
th{font-size:12px;color:var(--muted);font-weight:600}
td.num,th.num{text-align:right;white-space:nowrap}
.okc{color:var(--ok);font-weight:600}.badc{color:var(--bad);font-weight:600}
.down{color:var(--ok)}.up{color:var(--bad)}
details{margin-top:10px}summary{cursor:pointer;color:var(--muted)}
.legend{margin:4px 0 0;color:var(--muted);font-size:12px}
.legend span{margin-right:16px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;
vertical-align:-1px}
.chart{display:block;width:100%;height:auto;margin-top:6px}
.chart text{font:12px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#334155}
.chart .tick{fill:var(--muted);font-size:11px}
.chart .value{font-variant-numeric:tabular-nums;white-space:pre}
.chart .grid{stroke:#eef2f7}.chart .axis{stroke:#cbd5e1}
.chart .whisker{stroke:#0f172a;stroke-width:1.3;fill:none}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f1f5f9;
padding:1px 4px;border-radius:4px}
footer{color:var(--muted);font-size:12px;margin-top:18px}
"""


def _card(key: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{value}</div>'
            f'<div class="s">{sub}</div></div>')


def _delta(before: float, after: float) -> str:
    cls = "down" if after < before else "up" if after > before else ""
    return f'<span class="{cls}">{_e(_change(before, after)).replace(" ", "&nbsp;")}</span>'


def render_html(report: Report) -> str:
    """One self-contained page: summary cards, latency, operators, folds, skips, parity."""
    from onnxrep import __version__

    r, p, t = report.result, report.parity, report.timing
    b, a = r.before, r.after
    name = Path(report.input).name
    target = (f"<b>{_e(report.output)}</b>" if report.output and report.check is None
              else "checked in memory" if report.check is not None else "(not written)")
    head = [
        "<header>",
        "<h1>onnxrep report</h1>",
        f'<p class="path"><b>{_e(report.input)}</b> → {target}</p>',
    ]
    if report.check is not None:
        cls = "ok" if report.check.ok else "bad"
        head.append(f'<p class="banner {cls}">Check {_e(_verdict_word(report.check))}: '
                    f"{_e(report.check.reason)}</p>")
    head += [f'<p class="banner bad">Warning: {_e(w)}</p>' for w in report.warnings]
    head.append("</header>")

    cards = [
        _card("Nodes", str(a.nodes), f"from {b.nodes}, {_delta(b.nodes, a.nodes)}"),
        _card("Parameters", _e(_count(a.params)),
              f"from {_e(_count(b.params))}, {_delta(b.params, a.params)}"),
        _card("Size", _e(_size(a.bytes)), f"from {_e(_size(b.bytes))}, {_delta(b.bytes, a.bytes)}"),
        _card("Folds", str(len(r.applied)),
              _e(", ".join(f"{k} {v}" for k, v in r.applied_by_pattern().items()) or "none")),
    ]
    if t is not None and t.speedup is not None:
        cards.append(_card("Speedup", f"{t.speedup:.2f}&times;",
                           _e(f"p50 {_ms(t.timings[0].p50)} to {_ms(t.timings[1].p50)}")))
    if p is not None:
        verdict = ('<span class="okc">ok</span>' if p.ok
                   else '<span class="badc">mismatch</span>')
        where = p.runtime.name if p.runtime is not None else p.level
        cards.append(_card("Parity", verdict, _e(f"{p.seeds} input set(s), {where}")))
    body = [*head, '<div class="cards">', *cards, "</div>"]

    # latency
    body.append("<section><h2>Latency</h2>")
    if t is None:
        body.append('<p class="note">Not measured (pass <code>--bench</code>).</p>')
    else:
        body.append(
            f'<p class="note">{_e(runtime_label(t))}, {_e(_threads(t))}, {t.runs} interleaved '
            f"runs after {t.warmup} warm-up. Bars: p50; whiskers: min to p90.</p>"
        )
        bars = []
        for i, x in enumerate(t.timings):
            text = _ms(x.p50) + (f"  \u00b7  {x.speedup:.2f}\u00d7" if x.speedup is not None
                                 else "")
            bars.append((x.name, [_Bar(x.p50, COLOURS[i % len(COLOURS)], text, x.min, x.p90)]))
        body.append(_svg_bars(bars, label="Latency per model, p50 in milliseconds",
                              tick=lambda v: f"{v:g} ms"))
        rows = [[_e(x.name), _e(_ms(x.p50)), _e(_ms(x.p90)), _e(_ms(x.min)), _e(_ms(x.mean)),
                 "" if x.speedup is None else f"{x.speedup:.2f}&times;"] for x in t.timings]
        body.append(_html_table(["model", "p50", "p90", "min", "mean", "speedup"], rows,
                                "lrrrrr"))
        if t.speedup is not None:
            body.append(f'<p class="note">Per-run ratio of the first two models: p10 '
                        f"{t.speedup_p10:.2f}&times;, p90 {t.speedup_p90:.2f}&times;"
                        f"{_interval(t, '; ')}. Inputs: "
                        + _e(", ".join(f"{k} {'x'.join(map(str, v))}"
                                       for k, v in t.inputs.items())) + ".</p>")
    if report.deploy_form is not None:
        extra = ""
        if report.deploy_stats is not None:
            ds = report.deploy_stats
            extra = (f": {ds.nodes} nodes, {_e(_count(ds.params))} parameters, "
                     f"{_e(_size(ds.bytes))}")
        body.append(f'<p class="note">Deploy form: <code>{_e(report.deploy_form)}</code>'
                    f"{extra}.</p>")
    body.append("</section>")

    # operators
    ops = _op_rows(r)
    body.append("<section><h2>Operators</h2>")
    body.append(f'<p class="note">{b.nodes} nodes before, {a.nodes} after; op types whose '
                "count changed.</p>")
    if ops:
        body.append(_legend([("before", BEFORE), ("after", AFTER)]))
        body.append(_svg_bars(
            [(op, [_Bar(x, BEFORE, str(x)), _Bar(y, AFTER, str(y))]) for op, x, y in ops],
            label="Nodes per op type, before and after", tick=lambda v: f"{v:g}", bar=14,
            integer=True,
        ))
        body.append(_html_table(
            ["op", "before", "after", "change"],
            [[_e(op), str(x), str(y), f"{y - x:+d}"] for op, x, y in ops], "lrrr",
        ))
    else:
        body.append('<p class="note">No op count changed.</p>')
    body.append("</section>")

    # folds
    body.append(f"<section><h2>Folds applied ({len(r.applied)})</h2>")
    by_pattern = r.applied_by_pattern()
    if by_pattern:
        body.append(_svg_bars(
            [(k, [_Bar(v, AFTER, str(v))]) for k, v in by_pattern.items()],
            label="Folds per pattern family", tick=lambda v: f"{v:g}", bar=16, integer=True,
        ))
        body.append(f"<details><summary>Every fold ({len(r.applied)})</summary>")
        body.append(_html_table(
            ["pattern", "output", "replaces", "result"],
            [[_e(f.pattern), f"<code>{_e(f.output)}</code>",
              _e(", ".join(f"{v} {k}" for k, v in sorted(f.ops.items()))), _e(f.result)]
             for f in r.applied],
        ))
        body.append("</details>")
    else:
        body.append('<p class="note">Nothing was folded.</p>')
    body.append("</section>")

    audit = audit_summary(r)
    if audit is not None:
        body.append(f'<section><h2>Fusion audit</h2><p class="note">{_e(audit)}.</p>')
        if r.audit is not None and (r.audit.withdrawn or r.audit.remaining):
            rows = [[_e(state), _e(x.kind), f"<code>{_e(', '.join(x.outputs))}</code>",
                     _e(", ".join(x.split))]
                    for state, losses in (("withdrawn", r.audit.withdrawn),
                                          ("remaining", r.audit.remaining)) for x in losses]
            body.append(_html_table(["", "fused kernel", "output", "would run in pieces"],
                                    rows))
        body.append("</section>")

    # skipped
    body.append(f"<section><h2>Skipped candidates ({len(r.skipped)})</h2>")
    if r.skipped:
        groups = _skip_groups(r.skipped)
        body.append('<p class="note">Candidates left alone, grouped by reason.</p>')
        body.append(_html_table(
            ["pattern", "reason", "count", "nodes"],
            [[_e(pat), _e(reason), str(n),
              ", ".join(f"<code>{_e(x)}</code>" for x in nodes[:3])
              + (_e(f", … {n - 3} more") if n > 3 else "")]
             for pat, reason, n, nodes in groups], "llrl",
        ))
        body.append(f"<details><summary>Every skipped candidate ({len(r.skipped)})</summary>")
        body.append(_html_table(
            ["pattern", "op", "node", "reason"],
            [[_e(s.pattern), _e(s.op), f"<code>{_e(s.node)}</code>", _e(s.reason)]
             for s in r.skipped],
        ))
        body.append("</details>")
    else:
        body.append('<p class="note">None.</p>')
    body.append("</section>")

    # parity
    body.append("<section><h2>Parity</h2>")
    if p is None:
        body.append('<p class="note">Not checked (pass <code>--verify</code>).</p>')
    else:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in p.inputs.items())
        body.append(
            f'<p class="note">{"Equivalent" if p.ok else "Outputs differ"} over {p.seeds} input '
            f"set(s), {_e(runtime_label(p))}"
            + (f"; inputs {_e(shapes)}" if shapes else "")
            + ". An output passes when max |a &minus; b| &le; atol + rtol &times; "
            "max |reference|.</p>"
        )
        body.append(_html_table(
            ["output", "dtype", "shape", "max abs", "bound", "max rel", "mean abs", "cosine", ""],
            [[_e(o.name), _e(o.dtype), _e("x".join(map(str, o.shape)) or "scalar"),
              f"{o.max_abs:.3g}", _e(f"{o.atol + o.rtol * o.ref_max:.3g}"),
              f"{o.max_rel:.3g}", f"{o.mean_abs:.3g}", f"{o.cosine:.8f}",
              ('<span class="okc">ok</span>' if o.ok else '<span class="badc">BAD</span>')
              + (f" {_e(o.note)}" if o.note else "")]
             for o in p.outputs], "lllrrrrrl",
        ))
    body.append("</section>")

    notes = "; ".join(r.notes)
    body.append(f"<footer>onnxrep {_e(__version__)}, optimized in {r.seconds:.2f} s over "
                f"{r.rounds} round(s)" + (f"; {_e(notes)}" if notes else "") + ".</footer>")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>onnxrep report: {_e(name)}</title>",
        f"<style>{_CSS}</style></head>",
        "<body><main>",
        *body,
        "</main></body></html>",
        "",
    ])


# -- files ---------------------------------------------------------------------------------------


def report_format(path: str | os.PathLike[str]) -> str:
    """The format ``write`` uses for ``path`` (``json``, ``markdown`` or ``html``); refuses an
    unknown extension or a folder that does not exist, before any work is done."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise OnnxrepError(
            f"{p}: unknown report format {suffix or '(no extension)'!r} "
            "(use .json, .md or .html)"
        )
    if p.is_dir():
        raise OnnxrepError(f"{p}: is a directory")
    if not p.parent.is_dir():
        raise OnnxrepError(f"{p.parent}: no such directory (for the report)")
    return FORMATS[suffix]


def to_json(data: object) -> str:
    """``data`` as strict JSON: a float that is not finite (an infinite difference between
    outputs of different shapes, a NaN) is written ``null``, which every parser reads."""

    def finite(x: object) -> object:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [finite(v) for v in x]
        return x

    return json.dumps(finite(data), indent=2, default=str, allow_nan=False)


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return to_json(report.to_dict()) + "\n"
    if fmt == "markdown":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    raise OnnxrepError(f"unknown report format {fmt!r}")


class StagedReport:
    """A rendered report in a temporary file beside its target: :meth:`commit` renames it into
    place, :meth:`discard` (a no-op after a commit) removes it. Lets a caller write the report
    and another file (the model) all or nothing."""

    def __init__(self, report: Report, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        io.refuse_special(self.path)
        text = render(report, report_format(self.path))
        self._temps: list[str] = []  # recorded as the file is made: nothing escapes discard()
        self._committed = False
        try:
            io.write_temp(self.path.parent, self.path.name, [text.encode("utf-8")],
                          io.mode_for(self.path), self._temps)
        except OSError as e:
            raise OnnxrepError(f"{self.path}: cannot write report ({e.strerror or e})") from None

    def commit(self) -> None:
        if self._committed or not self._temps:
            raise OnnxrepError(f"{self.path}: report already committed or discarded")
        try:
            os.replace(self._temps[-1], self.path)
        except OSError as e:
            raise OnnxrepError(f"{self.path}: cannot write report ({e.strerror or e})") from None
        self._committed = True
        self._temps.clear()

    def discard(self) -> None:
        for temp in self._temps:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        self._temps.clear()


def write(report: Report, path: str | os.PathLike[str]) -> None:
    """Write ``report`` in the format its extension names, atomically (temp file + rename)."""
    staged = StagedReport(report, path)
    try:
        staged.commit()
    finally:
        staged.discard()
