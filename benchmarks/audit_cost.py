"""What the fusion audit costs: optimize with and without it, on every network in models/.

    python benchmarks/audit_cost.py [--nets a,b] [--forms x,y] [--rounds 30] [--busy-core 0]
                                    [--cli 0] [--dir DIR] [--json FILE] [--markdown FILE]

For every network of ``models.nets`` in every export form, the training-form export is
optimized in this process ``--rounds`` times with the audit and as often without it,
interleaved ABBA (A = without, B = with), after two warm-up runs of each. Reported: the
medians of both, their ratio with a 95 % bootstrap interval over the rounds (``onnxrep.bench``'s
``ratio_interval``), the time the audit spent on the main thread (waiting for its helper
process included: ``OptimizeResult.audit.seconds``), how many fused kernels of the input it
found (none looked for when nothing was folded), and how many a fold touched (those cost a
second onnxruntime run on the output).

With ``--busy-core N`` each row also measures what any work on the other core costs this
machine: ``N`` ABBA rounds of the optimization without the audit, with the other core idle
(A) and running a busy loop of a second Python process (B; POSIX: the loop is paused and
resumed with SIGSTOP / SIGCONT). The audit's onnxruntime session runs on that core while the
passes run on this one, so this ratio is the share of the audit's cost no change to onnxrep
can remove short of running the audit after the passes (which costs its whole duration).

With ``--cli N`` the same comparison runs ``onnxrep optimize IN -o OUT -q`` and the same with
``--no-audit`` as fresh processes, ``N`` ABBA rounds per network (imports included: what a
user of the command waits for).

Goal (the fusion-audit issue): the audit costs under 10 % of the optimize time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common  # puts the repository root on sys.path

GOAL = 1.10


def _time(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def in_process(path: Path, rounds: int) -> dict[str, Any]:
    import onnx

    import onnxrep
    from onnxrep.bench import ratio_interval

    model = onnx.load(str(path))
    for _ in range(2):
        onnxrep.optimize(model, audit=False)
        onnxrep.optimize(model)
    without: list[float] = []
    with_: list[float] = []
    main: list[float] = []
    result = None
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        for audit in order:
            seconds, result = _time(lambda a=audit: onnxrep.optimize(model, audit=a))
            if audit:
                with_.append(seconds)
                main.append(result.audit.seconds)
            else:
                without.append(seconds)
    assert result is not None
    final = onnxrep.optimize(model)
    low, high = ratio_interval(with_, without)
    return {
        "without_ms": 1e3 * statistics.median(without),
        "with_ms": 1e3 * statistics.median(with_),
        "ratio": statistics.median(with_) / statistics.median(without),
        "ratio_low": low, "ratio_high": high,
        "main_thread_ms": 1e3 * statistics.median(main),
        "kernels": sum(final.audit.before.values()),
        "at_risk": final.audit.at_risk,
        "withdrawn": len(final.audit.withdrawn),
        "unavailable": final.audit.unavailable,
        "not_needed": final.audit.not_needed,
    }


def busy_core(path: Path, rounds: int) -> dict[str, Any]:
    """The optimization without the audit, with the other core idle and busy (``--busy-core``)."""
    import signal

    import onnx

    import onnxrep
    from onnxrep.bench import ratio_interval

    model = onnx.load(str(path))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # started (its interpreter loaded) before the first pause
        spinner.send_signal(signal.SIGSTOP)
        idle: list[float] = []
        busy: list[float] = []
        for i in range(rounds):
            for loaded in ((False, True) if i % 2 == 0 else (True, False)):
                if loaded:
                    spinner.send_signal(signal.SIGCONT)
                seconds, _ = _time(lambda: onnxrep.optimize(model, audit=False))
                if loaded:
                    spinner.send_signal(signal.SIGSTOP)
                (busy if loaded else idle).append(seconds)
    finally:
        spinner.kill()
        spinner.wait()
    low, high = ratio_interval(busy, idle)
    return {"busy_ratio": statistics.median(busy) / statistics.median(idle),
            "busy_ratio_low": low, "busy_ratio_high": high}


def cli(path: Path, out: Path, rounds: int) -> dict[str, Any]:
    from onnxrep.bench import ratio_interval

    def run(extra: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onnxrep", "optimize", str(path), "-o", str(out),
                        "-q", *extra], check=True)
        return time.perf_counter() - start

    without, with_ = [], []
    for i in range(rounds):
        for audit in ((False, True) if i % 2 == 0 else (True, False)):
            (with_ if audit else without).append(run([] if audit else ["--no-audit"]))
    low, high = ratio_interval(with_, without)
    return {"cli_without_s": statistics.median(without), "cli_with_s": statistics.median(with_),
            "cli_ratio": statistics.median(with_) / statistics.median(without),
            "cli_ratio_low": low, "cli_ratio_high": high}


def markdown(record: dict[str, Any]) -> str:
    rows = record["rows"]
    cli = bool(rows) and "cli_ratio" in rows[0]
    busy = bool(rows) and "busy_ratio" in rows[0]
    lines = [
        f"Audit cost, {record['rounds']} interleaved rounds per row, "
        f"{record['machine']['cpu']} ({record['machine']['cores']} cores), "
        f"{record['machine']['date']}, revision {record['machine']['revision']}.",
        "",
        "| network | form | without (ms) | with (ms) | ratio [95 % interval] | main thread (ms) "
        "| kernels | touched |" + (" other core busy [95 %] |" if busy else "")
        + (" CLI ratio [95 %] |" if cli else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if busy else "")
        + ("---:|" if cli else ""),
    ]
    for r in rows:
        line = (f"| {r['net']} | {r['form']} | {r['without_ms']:.1f} | {r['with_ms']:.1f} | "
                f"{r['ratio']:.3f} [{r['ratio_low']:.3f}, {r['ratio_high']:.3f}] | "
                f"{r['main_thread_ms']:.2f} | "
                f"{'- (nothing folded)' if r.get('not_needed') else r['kernels']} | "
                f"{r['at_risk']} |")
        if "busy_ratio" in r:
            line += (f" {r['busy_ratio']:.3f} [{r['busy_ratio_low']:.3f}, "
                     f"{r['busy_ratio_high']:.3f}] |")
        if "cli_ratio" in r:
            line += (f" {r['cli_ratio']:.3f} [{r['cli_ratio_low']:.3f}, "
                     f"{r['cli_ratio_high']:.3f}] |")
        lines.append(line)
    worst = max(rows, key=lambda r: r["ratio"])
    lines += ["", f"Worst in-process ratio: {worst['ratio']:.3f} ({worst['net']}, {worst['form']})"
              f"; goal <= {GOAL:.2f}."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", help="comma-separated networks (default: all)")
    parser.add_argument("--forms", help="comma-separated export forms (default: all)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--busy-core", type=int, default=0, metavar="N",
                        help="also time the optimization with the other core busy, N ABBA "
                        "rounds per network (POSIX)")
    parser.add_argument("--cli", type=int, default=0, metavar="N",
                        help="also time the command line, N ABBA rounds per network")
    parser.add_argument("--dir", help="folder for the exports (default: a temporary one)")
    parser.add_argument("--json", help="write the record as JSON")
    parser.add_argument("--markdown", help="write the table as Markdown")
    args = parser.parse_args(argv)

    from models.export import FORMS, export
    from models.nets import NETWORKS

    nets = args.nets.split(",") if args.nets else list(NETWORKS)
    forms = args.forms.split(",") if args.forms else list(FORMS)
    rows = []
    with contextlib.ExitStack() as stack:
        folder = _common.work_dir(stack, args.dir, "onnxrep-audit-")
        for net in nets:
            spec = NETWORKS[net]
            model = spec.factory()
            for form in forms:
                path = folder / f"{net}.{form}.onnx"
                if not path.exists():
                    export(model, spec.input_shape, path, form, opset=spec.opset)
                row = {"net": net, "form": form, **in_process(path, args.rounds)}
                if args.busy_core:
                    row.update(busy_core(path, args.busy_core))
                if args.cli:
                    row.update(cli(path, folder / "out.onnx", args.cli))
                rows.append(row)
                print(f"{net:14} {form:12} {row['without_ms']:8.1f} ms {row['with_ms']:8.1f} ms"
                      f"  x{row['ratio']:.3f} [{row['ratio_low']:.3f}, {row['ratio_high']:.3f}]"
                      f"  main {row['main_thread_ms']:.2f} ms  kernels {row['kernels']}"
                      f"  touched {row['at_risk']}" + (
                          f"  busy core x{row['busy_ratio']:.3f}" if "busy_ratio" in row else "")
                      + (
                          f"  cli x{row['cli_ratio']:.3f}" if "cli_ratio" in row else ""),
                      flush=True)
    record = {"machine": _common.machine(), "versions": _common.versions(),
              "rounds": args.rounds, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    text = markdown(record)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(text)
    return 0 if all(r["ratio"] <= GOAL for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
