"""The model zoo of ``models.nets`` through onnxrep and its baselines: latency, size, error.

    python benchmarks/zoo.py [--nets a,b] [--forms x,y] [--runs 300] [--budget 60] [--warmup 30]
                             [--threads 1,0] [--opt-repeats 3] [--quick] [--out DIR]
                             [--json FILE] [--markdown FILE] [--runtime openvino]

For every network of ``models.nets.NETWORKS`` and every export form of ``models.export.FORMS``
the training form and the hand-written deploy form (``switch_to_deploy``, same weights, same
exporter settings) are exported into a work dir (a temporary one unless ``--out``). From the
training form, five more variants are made:

========  ===================================================================================
train     the training form as exported
ort       onnxruntime's own optimizations only: the model onnxruntime itself writes
          (``SessionOptions.optimized_model_filepath``) after optimizing the training form at
          level ``all`` on this machine (its fusions and NCHWc layout included)
onnxsim   ``onnxsim.simplify(train)`` (defaults; ``check_n=0``)
onnxslim  ``onnxslim.slim(train)`` (defaults)
onnxrep   ``onnxrep.optimize(train).model``
deploy    the hand-written deploy form
========  ===================================================================================

All six run in ONE interleaved ``onnxrep.benchmark`` per model and thread count (every
round's order rotated by one; first round ``TIMING_ORDER``), at onnxruntime level ``all`` — as
deployed, so ``train`` too gets onnxruntime's run-time fusions —, once with 1 intra-op thread
and once with onnxruntime's default (``0``: all cores). Every variant gets the same input:
``N(0, 1)`` from ``numpy.random.default_rng(0)`` in the network's input shape.

The rotation gives every model every position, but not every predecessor: model ``j`` nearly
always runs right after model ``j - 1``. On these sub-millisecond models, a run that follows a
large training-form variant is a few percent slower (its caches were evicted), so the
acceptance ratio comes from a second, paired run of just ``deploy`` and ``onnxrep`` (ABBA:
each follows the other as often as itself), with the spread of its per-round ratios. In the
six-way run both of them follow a training-form variant, so its ratios are close.

Also recorded per variant: node and Conv count (any domain), max abs error against torch (the
float32 forward of the training form in eval mode on that same input; the ONNX model run in
onnxruntime at ``disable_all``), and for onnxsim, onnxslim and onnxrep the optimizer's wall time
on the in-memory ModelProto (best of ``--opt-repeats``; loading and saving excluded).

Acceptance, from two more paired runs at 1 thread (ABBA: ``deploy`` against ``onnxrep`` and
``train`` against ``onnxrep``): ``p50(onnxrep) / p50(deploy)`` at most ``--max-ratio`` (1.02)
and ``p50(onnxrep) / p50(train)`` at most ``--max-input-ratio`` (1.00) on every network and
form — onnxrep's output is never slower than the deploy form (beyond 2 %) nor than its input.
The second bar is also met when it lies inside the 95 % interval of the ratio (a bootstrap over
the rounds): a model onnxrep changes in ways the runtime makes itself (BN into the conv) runs
at 1.00 plus or minus noise. A row whose optimized model runs the input's very operators
(nothing folded but Constant nodes into initializers) is exempt from it. Rows
above a bar are flagged with ``!``. Exit code 0 when every row meets both, 1 otherwise, 2 on
a usage error.

With ``--runtime openvino`` (``pip install "onnxrep[openvino]"``) only ``train`` (the input),
``onnxrep`` (the optimized model) and ``deploy`` are made, and they are timed in OpenVINO's CPU
plugin (one stream, the LATENCY hint, ``--threads`` as ``INFERENCE_NUM_THREADS``, its default
inference precision, as deployed): one three-way interleaved run, then two paired runs (ABBA),
``deploy`` against ``onnxrep`` and ``train`` against ``onnxrep``. Errors against torch are
those of OpenVINO at f32 inference precision. The bars are the same. The record goes to
``zoo-openvino.json`` unless ``--json``; its Markdown is the OpenVINO table of RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common  # puts the repository root on sys.path

VARIANTS = ("train", "ort", "onnxsim", "onnxslim", "onnxrep", "deploy")
OPTIMIZERS = ("onnxsim", "onnxslim", "onnxrep")
TIMING_ORDER = ("onnxrep", "train", "ort", "deploy", "onnxsim", "onnxslim")
"""The order of the first round: both onnxrep and deploy follow a training-form variant."""
OPENVINO_VARIANTS = ("train", "onnxrep", "deploy")
"""What ``--runtime openvino`` makes and times: the input, the optimized model, the deploy form."""
MAX_RATIO = 1.02
MAX_INPUT_RATIO = 1.00
MIN_RUNS = 30


def ort_optimized(src: Path, dst: Path) -> None:
    """Let onnxruntime optimize ``src`` at level ``all`` and write what it runs to ``dst``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(dst)
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def max_error(path: Path, x: Any, reference: Any, runtime: str = "onnxruntime") -> float:
    """Max abs difference between ``path`` run in ``runtime`` (onnxruntime at ``disable_all``,
    OpenVINO at f32 inference precision) and torch."""
    import numpy as np

    from onnxrep.verify import PARITY_PRECISION, session

    sess = session(path, runtime=runtime, level="disable_all", threads=1,
                   precision=PARITY_PRECISION)
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return float(np.abs(out.astype(np.float64) - reference.astype(np.float64)).max())


def run_model(
    name: str, form: str, net: Any, shape: tuple[int, ...], x: Any, reference: Any,
    folder: Path, args: argparse.Namespace,
) -> dict[str, Any]:
    """Export, optimize, measure and time one network in one form."""
    import onnx

    import onnxrep
    from models.export import export

    openvino = args.runtime == "openvino"
    variants = OPENVINO_VARIANTS if openvino else VARIANTS
    row: dict[str, Any] = {"net": name, "form": form, "variants": {}, "errors": {}}
    paths: dict[str, Path] = {}
    paths["train"] = export(net, shape, folder / f"{name}.{form}.onnx", form)
    paths["deploy"] = export(net, shape, folder / f"{name}.deploy.{form}.onnx", form, deploy=True)
    train = onnx.load(str(paths["train"]))

    if "ort" in variants:
        try:
            paths["ort"] = folder / f"{name}.{form}.ort.onnx"
            ort_optimized(paths["train"], paths["ort"])
        except Exception as e:
            row["errors"]["ort"] = _one_line(e)
            paths.pop("ort", None)

    seconds: dict[str, float] = {}
    for label, optimize in _common.optimizers([v for v in OPTIMIZERS if v in variants]).items():
        try:
            best, result = float("inf"), None
            for _ in range(args.opt_repeats):
                copy = onnx.ModelProto()
                copy.CopyFrom(train)
                start = time.perf_counter()
                result = _common.silent(lambda m=copy, f=optimize: f(m))
                best = min(best, time.perf_counter() - start)
            seconds[label] = best
            paths[label] = folder / f"{name}.{form}.{label}.onnx"
            onnx.save(result, str(paths[label]))
        except Exception as e:
            row["errors"][label] = _one_line(e)
            paths.pop(label, None)
            if args.verbose:
                traceback.print_exc()

    for label in VARIANTS:
        if label not in paths:
            continue
        info: dict[str, Any] = _common.counts(onnx.load(str(paths[label])))
        try:
            info["max_abs_err"] = max_error(paths[label], x, reference, args.runtime)
        except Exception as e:
            info["max_abs_err"] = None
            row["errors"][f"{label} (run)"] = _one_line(e)
        if label in seconds:
            info["optimize_s"] = seconds[label]
        row["variants"][label] = info

    timed = [v for v in TIMING_ORDER
             if v in paths and row["variants"][v]["max_abs_err"] is not None]
    row["timed"] = timed
    row["latency"], row["paired"] = {}, {}
    row["paired_input"] = {}
    for threads in args.threads:
        runs = _runs(paths, timed, threads, x, args)
        row.setdefault("runs", {})[str(threads)] = runs
        bench = onnxrep.benchmark(
            *[paths[v] for v in timed], names=timed, threads=threads,
            warmup=args.warmup, runs=runs, inputs={"input": x}, runtime=args.runtime,
        )
        if bench.runtime is not None:
            row.setdefault("runtime", {})[str(threads)] = bench.runtime.to_dict()
        row["latency"][str(threads)] = {
            t.name: {"p50_ms": t.p50, "p90_ms": t.p90, "min_ms": t.min, "mean_ms": t.mean}
            for t in bench.timings
        }
        pairs = [("deploy", "paired"), ("train", "paired_input")]
        for base, key in pairs:
            if "onnxrep" not in timed or base not in timed:
                continue
            pair = onnxrep.benchmark(
                paths[base], paths["onnxrep"], names=[base, "onnxrep"], threads=threads,
                warmup=args.warmup, runs=runs, inputs={"input": x}, runtime=args.runtime,
            )
            first, rep = pair.timings
            row[key][str(threads)] = {
                f"{base}_p50_ms": first.p50, "onnxrep_p50_ms": rep.p50,
                "ratio": rep.p50 / first.p50,
                # per-round ratios base/onnxrep, inverted: onnxrep/base p10..p90
                "ratio_p10": 1 / pair.speedup_p90, "ratio_p90": 1 / pair.speedup_p10,
                # the 95 % interval of the ratio itself (bootstrap over the rounds)
                "ratio_low": 1 / pair.speedup_high, "ratio_high": 1 / pair.speedup_low,
            }
    row["ratios"] = {}
    for threads, lat in row["latency"].items():
        if "onnxrep" not in lat:
            continue
        rep = lat["onnxrep"]["p50_ms"]
        row["ratios"][threads] = {
            f"onnxrep/{base}": rep / lat[base]["p50_ms"] for base in lat if base != "onnxrep"
        }
    ratio = row["paired"].get("1", {}).get("ratio")
    row["acceptance"] = {
        "ratio": ratio,
        "max": args.max_ratio,
        "ok": ratio is not None and ratio <= args.max_ratio,
    }
    # A model onnxrep leaves as it is runs as fast as itself: its ratio to the input is noise.
    unchanged = "onnxrep" in paths and _ops(onnx.load(str(paths["onnxrep"]))) == _ops(train)
    pair = row["paired_input"].get("1", {})
    input_ratio = pair.get("ratio")
    # not slower than the input beyond the measured noise: the bar lies in the interval
    within_noise = input_ratio is not None and pair["ratio_low"] <= args.max_input_ratio
    row["acceptance"].update(input_ratio=input_ratio, max_input=args.max_input_ratio,
                             unchanged=unchanged, input_within_noise=within_noise)
    row["acceptance"]["ok"] &= unchanged or (input_ratio is not None and (
        input_ratio <= args.max_input_ratio or within_noise))
    return row


def _runs(paths: dict[str, Path], timed: list[str], threads: int, x: Any,
          args: argparse.Namespace) -> int:
    """``--runs``, fewer where one round of ``timed`` would take the timed runs past
    ``--budget`` seconds (never under ``MIN_RUNS``): DBB ResNet-18's training form takes a
    second a run."""
    import onnxrep

    probe = onnxrep.benchmark(*[paths[v] for v in timed], names=timed, threads=threads,
                              warmup=1, runs=2, inputs={"input": x}, runtime=args.runtime)
    round_s = sum(t.p50 for t in probe.timings) / 1e3
    return max(MIN_RUNS, min(args.runs, int(args.budget / max(round_s, 1e-9))))


def _ops(model: Any) -> list[str]:
    """The operators a model runs (a Constant or Identity node costs nothing at run time)."""
    return [n.op_type for n in model.graph.node if n.op_type not in ("Constant", "Identity")]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


def torch_reference(net: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """The shared input (``default_rng(0)``, N(0, 1), float32) and torch's eval-mode output."""
    import numpy as np
    import torch

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    net.eval()
    with torch.no_grad():
        reference = net(torch.from_numpy(x.copy())).numpy()
    return x, reference


# ---------------------------------------------------------------------------------- reports


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown(record: dict[str, Any]) -> str:
    """The summary per network, then latency, structure/error and optimizer-time tables."""
    rows = record["rows"]
    threads = record["config"]["threads"]
    lines: list[str] = []
    lines += acceptance_table(record, "Acceptance")
    lines += [
        "#### Paired runs (deploy and onnxrep alone, ABBA): p50 in ms, onnxrep/deploy with the "
        "p10..p90 of its per-round ratios",
        "",
        "| network | form | " + " | ".join(
            f"deploy {_tlabel(t)} | onnxrep {_tlabel(t)} | ratio {_tlabel(t)}" for t in threads)
        + " |",
        "|---|---|" + "---:|" * (3 * len(threads)),
    ]
    for r in rows:
        cells = []
        for t in threads:
            p = r["paired"].get(str(t))
            cells += ([_ms(p["deploy_p50_ms"]), _ms(p["onnxrep_p50_ms"]),
                       f"{p['ratio']:.3f} ({p['ratio_p10']:.2f}..{p['ratio_p90']:.2f})"]
                      if p else ["—"] * 3)
        lines.append(f"| {r['net']} | {r['form']} | " + " | ".join(cells) + " |")
    lines.append("")

    for t in threads:
        lines += [
            f"#### Latency p50 in ms, {_tlabel(t)}, one six-way interleaved run",
            "",
            "| network | form | " + " | ".join(VARIANTS)
            + " | rep/train | rep/ort | rep/deploy |",
            "|---|---|" + "---:|" * (len(VARIANTS) + 3),
        ]
        for r in rows:
            lat = r["latency"].get(str(t), {})
            ratios = r["ratios"].get(str(t), {})
            lines.append(
                f"| {r['net']} | {r['form']} | "
                + " | ".join(_ms(lat.get(v, {}).get("p50_ms")) for v in VARIANTS)
                + f" | {_x(ratios.get('onnxrep/train'))} | {_x(ratios.get('onnxrep/ort'))}"
                f" | {_x3(ratios.get('onnxrep/deploy'))} |"
            )
        lines.append("")

    lines += [
        "#### Nodes / Convs, and max abs error against torch (float32, eval mode)",
        "",
        "| network | form | " + " | ".join(VARIANTS) + " | err onnxrep | err deploy | err train |",
        "|---|---|" + "---:|" * (len(VARIANTS) + 3),
    ]
    for r in rows:
        v = r["variants"]
        lines.append(
            f"| {r['net']} | {r['form']} | "
            + " | ".join(f"{v[k]['nodes']} / {v[k]['convs']}" if k in v else "—"
                         for k in VARIANTS)
            + " | " + " | ".join(_err(v.get(k, {}).get("max_abs_err"))
                                 for k in ("onnxrep", "deploy", "train")) + " |"
        )
    lines.append("")

    lines += [
        "#### Optimizer wall time in ms (in memory, best of "
        f"{record['config']['opt_repeats']}), and max abs error of the baselines",
        "",
        "| network | form | onnxsim | onnxslim | onnxrep | err ort | err onnxsim | err onnxslim |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        v = r["variants"]
        lines.append(
            f"| {r['net']} | {r['form']} | "
            + " | ".join(_ms(1e3 * v[k]["optimize_s"]) if "optimize_s" in v.get(k, {}) else "—"
                         for k in OPTIMIZERS)
            + " | " + " | ".join(_err(v.get(k, {}).get("max_abs_err"))
                                 for k in ("ort", "onnxsim", "onnxslim")) + " |"
        )
    errors = [(r["net"], r["form"], k, e) for r in rows for k, e in r["errors"].items()]
    if errors:
        lines += ["", "#### Failures", ""]
        lines += [f"- {n} / {f} / {k}: {e}" for n, f, k, e in errors]
    return "\n".join(lines) + "\n"


def acceptance_table(record: dict[str, Any], title: str) -> list[str]:
    """Both paired ratios per network and export form at 1 thread, with the bars."""
    rows, config = record["rows"], record["config"]
    forms = config["forms"]
    lines = [
        f"#### {title}: p50(onnxrep) / p50(deploy) and p50(onnxrep) / p50(input), paired runs, "
        f"1 thread; goals <= {config['max_ratio']} and <= {config['max_input_ratio']} "
        "(`=`: nothing to fold, the output is the input; `~`: above the bar by less than the "
        "noise, the bar inside the ratio's 95 % interval; `!`: above the bar)",
        "",
        "| network | " + " | ".join(f"{f} /deploy | {f} /input" for f in forms) + " | ok |",
        "|---|" + "---:|" * (2 * len(forms)) + ":-:|",
    ]
    for net in dict.fromkeys(r["net"] for r in rows):
        cells, ok = [], True
        for form in forms:
            row = next((r for r in rows if r["net"] == net and r["form"] == form), None)
            acc = row["acceptance"] if row else {}
            for key, bar in (("ratio", config["max_ratio"]),
                             ("input_ratio", config["max_input_ratio"])):
                value = acc.get(key)
                if key == "input_ratio" and acc.get("unchanged"):
                    cells.append("=")
                    continue
                above = value is not None and value > bar
                noise = key == "input_ratio" and above and acc.get("input_within_noise")
                cells.append(_x3(value) + (" ~" if noise else " !" if above else ""))
            ok = ok and bool(acc.get("ok"))
        lines.append(f"| {net} | " + " | ".join(cells) + f" | {'yes' if ok else '**no**'} |")
    lines.append("")
    return lines


def markdown_openvino(record: dict[str, Any]) -> str:
    """The OpenVINO table (both paired ratios per network and export form, 1 thread), then the
    paired and three-way latencies per thread count and the errors against torch."""
    rows = record["rows"]
    config = record["config"]
    threads = config["threads"]
    runtime = next((r["runtime"][str(t)]["label"] for r in rows for t in threads
                    if str(t) in r.get("runtime", {})), "openvino")
    lines = acceptance_table(record, f"OpenVINO ({runtime})")
    lines += [
        "#### Paired runs in OpenVINO (ABBA): p50 in ms, onnxrep/base with the p10..p90 of its "
        "per-round ratios",
        "",
        "| network | form | threads | deploy | onnxrep | onnxrep/deploy | input | onnxrep "
        "| onnxrep/input |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for t in threads:
            cells = []
            for base, key in (("deploy", "paired"), ("train", "paired_input")):
                p = r.get(key, {}).get(str(t))
                cells += ([_ms(p[f"{base}_p50_ms"]), _ms(p["onnxrep_p50_ms"]),
                           f"{p['ratio']:.3f} ({p['ratio_p10']:.2f}..{p['ratio_p90']:.2f})"]
                          if p else ["—"] * 3)
            lines.append(f"| {r['net']} | {r['form']} | {_tlabel(t)} | " + " | ".join(cells)
                         + " |")
    lines.append("")

    lines += [
        "#### Latency p50 in ms in OpenVINO, one three-way interleaved run; nodes / Convs; max "
        "abs error against torch (OpenVINO at f32)",
        "",
        "| network | form | " + " | ".join(
            f"{v} {_tlabel(t)}" for t in threads for v in OPENVINO_VARIANTS)
        + " | " + " | ".join(f"{v} nodes" for v in OPENVINO_VARIANTS)
        + " | err onnxrep | err deploy | err train |",
        "|---|---|" + "---:|" * (len(threads) * len(OPENVINO_VARIANTS)
                                 + len(OPENVINO_VARIANTS) + 3),
    ]
    for r in rows:
        v = r["variants"]
        lat = r["latency"]
        lines.append(
            f"| {r['net']} | {r['form']} | "
            + " | ".join(_ms(lat.get(str(t), {}).get(k, {}).get("p50_ms"))
                         for t in threads for k in OPENVINO_VARIANTS)
            + " | " + " | ".join(f"{v[k]['nodes']} / {v[k]['convs']}" if k in v else "—"
                                 for k in OPENVINO_VARIANTS)
            + " | " + " | ".join(_err(v.get(k, {}).get("max_abs_err"))
                                 for k in ("onnxrep", "deploy", "train")) + " |"
        )
    errors = [(r["net"], r["form"], k, e) for r in rows for k, e in r["errors"].items()]
    if errors:
        lines += ["", "#### Failures", ""]
        lines += [f"- {n} / {f} / {k}: {e}" for n, f, k, e in errors]
    return "\n".join(lines) + "\n"


def _tlabel(threads: int) -> str:
    return "1 thread" if threads == 1 else ("all threads" if threads == 0
                                            else f"{threads} threads")


def _x3(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _err(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def _markdown(record: dict[str, Any]) -> str:
    """The tables of ``record``, for the runtime it was timed in."""
    if record["config"].get("runtime") == "openvino":
        return markdown_openvino(record)
    return markdown(record)


# ------------------------------------------------------------------------------------- main


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    _common.use_root(argv)
    from models.export import FORMS
    from models.nets import NETWORKS

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nets", type=_csv, default=list(NETWORKS),
                        help="comma-separated networks (default: all)")
    parser.add_argument("--forms", type=_csv, default=list(FORMS),
                        help="comma-separated export forms (default: all)")
    parser.add_argument("--runs", type=int, default=300, help="timed rounds per benchmark")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up rounds per benchmark")
    parser.add_argument("--threads", type=lambda s: [int(t) for t in _csv(s)], default=[1, 0],
                        help="thread counts to time (0: the runtime's default)")
    parser.add_argument("--opt-repeats", type=int, default=3,
                        help="optimizer runs per model; the best wall time is kept")
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
                        help="time in this runtime; openvino times train, onnxrep and deploy "
                        "only (pip install \"onnxrep[openvino]\")")
    parser.add_argument("--max-ratio", type=float, default=MAX_RATIO,
                        help=f"bar for p50(onnxrep) / p50(deploy) (default {MAX_RATIO})")
    parser.add_argument("--max-input-ratio", type=float, default=MAX_INPUT_RATIO,
                        help=f"bar for p50(onnxrep) / p50(train) (default {MAX_INPUT_RATIO})")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of timed runs per benchmark: fewer than --runs where a "
                        f"round is slow (never under {MIN_RUNS})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 20 runs, 3 warm-up, 1 optimizer run")
    parser.add_argument("--out", help="keep the exported and optimized models in this folder")
    parser.add_argument("--json", help="write the record here (default zoo.json, "
                        "zoo-openvino.json with --runtime openvino)")
    parser.add_argument("--markdown", help="also write the Markdown tables here")
    parser.add_argument("--verbose", action="store_true", help="tracebacks of failures")
    parser.add_argument("--root", metavar="DIR",
                        help="import onnxrep and models from DIR (a snapshot or patched copy "
                        "of this checkout) instead of this checkout")
    parser.add_argument("--from-json", metavar="FILE",
                        help="print the tables of an earlier record; nothing is run")
    args = parser.parse_args(argv)
    if args.from_json:
        print(_markdown(json.loads(Path(args.from_json).read_text())))
        return 0
    openvino = args.runtime == "openvino"
    if args.json is None:
        args.json = "zoo-openvino.json" if openvino else "zoo.json"
    if args.quick:
        args.runs, args.warmup, args.opt_repeats = 20, 3, 1
    unknown = [n for n in args.nets if n not in NETWORKS] + [f for f in args.forms
                                                              if f not in FORMS]
    if unknown:
        parser.error(f"unknown network(s)/form(s) {unknown}; networks {list(NETWORKS)}, "
                     f"forms {list(FORMS)}")
    if args.runs < 1 or args.warmup < 0 or args.opt_repeats < 1:
        parser.error("--runs and --opt-repeats must be >= 1, --warmup >= 0")

    import onnxrep
    from onnxrep.errors import OnnxrepError
    from onnxrep.verify import quiet_runtime_logs, require

    try:
        require(args.runtime)
    except OnnxrepError as e:
        parser.error(str(e))
    quiet_runtime_logs()
    record: dict[str, Any] = {
        "machine": _common.machine(),
        "versions": _common.versions(),
        "command": "python benchmarks/zoo.py " + " ".join(sys.argv[1:] if argv is None
                                                          else argv),
        "package": str(Path(onnxrep.__file__).parent),
        "config": {
            "nets": args.nets, "forms": args.forms, "runs": args.runs, "budget_s": args.budget,
            "warmup": args.warmup,
            "threads": args.threads, "opt_repeats": args.opt_repeats,
            "max_ratio": args.max_ratio, "max_input_ratio": args.max_input_ratio,
            "runtime": args.runtime,
            **({"level": None,
                "error_precision": "f32"} if openvino
               else {"level": "all", "error_level": "disable_all"}),
        },
        "rows": [],
    }
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = _common.work_dir(stack, args.out, "onnxrep-zoo-")
        for name in args.nets:
            spec = NETWORKS[name]
            net = spec.factory()
            x, reference = torch_reference(net, spec.input_shape)
            for form in args.forms:
                t0 = time.perf_counter()
                row = run_model(name, form, net, spec.input_shape, x, reference, root, args)
                row["seconds"] = time.perf_counter() - t0
                record["rows"].append(row)
                acc = row["acceptance"]
                print(f"{name:>15} {form:<12} onnxrep/deploy {_x3(acc['ratio'])}, "
                      f"onnxrep/input {_x3(acc['input_ratio'])}"
                      f"{'' if acc['ok'] else ' !'}  ({row['seconds']:.0f} s"
                      f"{'; failures: ' + ', '.join(row['errors']) if row['errors'] else ''})",
                      file=sys.stderr, flush=True)
    record["seconds"] = time.perf_counter() - start
    ratios = [r["acceptance"]["ratio"] for r in record["rows"]
              if r["acceptance"]["ratio"] is not None]
    record["summary"] = {
        "worst_ratio": max(ratios) if ratios else None,
        "above": [f"{r['net']}/{r['form']}" for r in record["rows"]
                  if not r["acceptance"]["ok"]],
    }
    summary = record["summary"]
    inputs = [r["acceptance"]["input_ratio"] for r in record["rows"]
              if r["acceptance"]["input_ratio"] is not None
              and not r["acceptance"].get("unchanged")]
    summary["worst_input_ratio"] = max(inputs) if inputs else None
    worst_input = (f"; worst onnxrep/input {_x3(summary['worst_input_ratio'])} "
                   f"(bar {args.max_input_ratio})")
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    text = _markdown(record)
    if args.markdown:
        Path(args.markdown).write_text(text)
    print(text)
    print(f"worst onnxrep/deploy (1 thread): {_x3(summary['worst_ratio'])}; above "
          f"{args.max_ratio}{worst_input}: {', '.join(summary['above']) or 'none'}; "
          f"{record['seconds']:.0f} s; record in {args.json}")
    return 0 if not summary["above"] else 1


if __name__ == "__main__":
    sys.exit(main())
