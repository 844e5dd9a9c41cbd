"""The ``onnxrep`` command: the only module that parses arguments or prints.

Exit codes (a contract for scripts and CI): 0 success; 1 outputs differ beyond tolerance
(``optimize --verify``, ``compare``); 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from onnxrep import __version__, io
from onnxrep.errors import OnnxrepError
from onnxrep.passes import FAMILIES

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxrep",
        description="Structural re-parameterization of ONNX models: fold BatchNorm and collapse "
        "parallel conv branches into one Conv, verified with onnxruntime.",
    )
    parser.add_argument("--version", action="version", version=f"onnxrep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    opt = sub.add_parser("optimize", help="fold a model and write the result")
    opt.add_argument("input", help="input .onnx model")
    opt.add_argument("-o", "--output", help="output .onnx path")
    opt.add_argument("--in-place", action="store_true", help="allow writing over the input")
    opt.add_argument("--verify", action="store_true", help="check parity in onnxruntime")
    opt.add_argument("--keep-on-mismatch", action="store_true",
                     help="write the output even when --verify finds a mismatch")
    opt.add_argument("--bench", action="store_true", help="time input vs output")
    opt.add_argument("--report", metavar="FILE", help="write the result as JSON")
    opt.add_argument("--skip", nargs="+", action="extend", default=[], metavar="NAME",
                     choices=sorted(FAMILIES), help="pattern families to leave alone: "
                     + ", ".join(sorted(FAMILIES)))
    opt.add_argument("--explain", action="store_true",
                     help="list every fold and every skipped candidate with its reason")
    _parity_options(opt)
    _timing_options(opt)

    cmp = sub.add_parser("compare", help="run two models on the same inputs")
    cmp.add_argument("a", help="reference model")
    cmp.add_argument("b", help="model to check")
    _parity_options(cmp)
    cmp.add_argument("--json", action="store_true", help="print JSON")

    bench = sub.add_parser("bench", help="time one model, or two interleaved")
    bench.add_argument("a", help="model (the baseline when two are given)")
    bench.add_argument("b", nargs="?", help="second model")
    _timing_options(bench)
    bench.add_argument("--shape", action="append", metavar="NAME:DIMS",
                       help="size of a dynamic input, e.g. x:1x3x224x224")
    bench.add_argument("--inputs", metavar="FILE.npz", help="inputs to use")
    bench.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _parity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--atol", type=float, help="absolute tolerance (default by dtype)")
    p.add_argument("--rtol", type=float,
                   help="tolerance relative to the output's max |value| (default by dtype)")
    p.add_argument("--inputs", metavar="FILE.npz", help="inputs to use instead of random ones")
    p.add_argument("--shape", action="append", metavar="NAME:DIMS",
                   help="size of a dynamic input, e.g. x:1x3x224x224 (repeatable)")
    p.add_argument("--seeds", type=int, default=3, help="random input sets (default 3)")


def _timing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (0: all; default 1)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per model")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model")
    p.add_argument("--level", choices=("disable_all", "basic", "extended", "all"), default="all",
                   help="onnxruntime optimization level for timing (default all)")


def _optimize(args: argparse.Namespace) -> int:
    from onnxrep.pipeline import optimize
    from onnxrep.report import Report, render_text, write

    src = Path(args.input)
    if args.output is None and not args.in_place:
        raise OnnxrepError("missing -o OUTPUT (or --in-place to overwrite the input)")
    dst = Path(args.output) if args.output else src
    if _same_file(src, dst) and not args.in_place:
        raise OnnxrepError(f"{dst}: output is the input; pass --in-place to overwrite it")
    if args.report and Path(args.report).suffix.lower() != ".json":
        raise OnnxrepError(f"{args.report}: unknown report format (use .json)")

    model = io.load(src)
    result = optimize(model, skip=args.skip)
    report = Report(str(src), str(dst), result)
    code = EXIT_OK
    if args.verify:
        from onnxrep.verify import compare, parse_shapes

        report.parity = compare(
            model, result.model, atol=args.atol, rtol=args.rtol, inputs=args.inputs,
            shapes=parse_shapes(args.shape), seeds=args.seeds,
        )
        if not report.parity.ok:
            code = EXIT_MISMATCH
    if args.bench:
        from onnxrep.bench import benchmark
        from onnxrep.verify import parse_shapes

        report.timing = benchmark(
            model, result.model, threads=args.threads, warmup=args.warmup, runs=args.runs,
            level=args.level, shapes=parse_shapes(args.shape), inputs=args.inputs,
            names=("input", "optimized"),
        )
    if code == EXIT_OK or args.keep_on_mismatch:
        io.save(result.model, dst)
        report.written = True
    else:
        report.output = None
    if args.report:
        write(report, args.report)
    print(render_text(report, explain=args.explain))
    if code == EXIT_MISMATCH:
        kept = "written anyway (--keep-on-mismatch)" if report.written else "not written"
        print(f"onnxrep: outputs differ beyond tolerance; {dst} {kept}", file=sys.stderr)
    return code


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _compare(args: argparse.Namespace) -> int:
    from onnxrep.report import parity_table
    from onnxrep.verify import compare, parse_shapes

    for path in (args.a, args.b):
        io.load(path, check=False)  # a clear error for a bad file before onnxruntime's
    result = compare(
        args.a, args.b, atol=args.atol, rtol=args.rtol, inputs=args.inputs,
        shapes=parse_shapes(args.shape), seeds=args.seeds,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        verdict = "equivalent" if result.ok else "DIFFERENT"
        print(f"{args.a} vs {args.b}: {verdict} over {result.seeds} input set(s), "
              f"onnxruntime {result.level}")
        for line in parity_table(result):
            print(f"  {line}")
    return EXIT_OK if result.ok else EXIT_MISMATCH


def _bench(args: argparse.Namespace) -> int:
    from onnxrep.bench import benchmark
    from onnxrep.report import timing_lines
    from onnxrep.verify import parse_shapes

    for path in (args.a, args.b):
        if path is not None:
            io.load(path, check=False)
    result = benchmark(
        args.a, args.b, threads=args.threads, warmup=args.warmup, runs=args.runs,
        level=args.level, shapes=parse_shapes(args.shape), inputs=args.inputs,
        names=(Path(args.a).name, Path(args.b).name if args.b else ""),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print("\n".join(line.strip() if i == 0 else line for i, line in
                        enumerate(timing_lines(result))))
    return EXIT_OK


COMMANDS = {"optimize": _optimize, "compare": _compare, "bench": _bench}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except OnnxrepError as e:
        print(f"onnxrep: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("onnxrep: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("onnxrep: error: out of memory", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # never a traceback: name the failure in one line
        text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(f"onnxrep: error: {type(e).__name__}: {text}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
