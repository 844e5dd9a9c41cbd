"""The ``onnxrep`` command: the only module that parses arguments or prints.

Exit codes (a contract for scripts and CI): 0 success; 1 outputs differ beyond tolerance
(``optimize --verify``, ``compare``, ``check``); 2 bad input or usage; 3 the optimized model is
not fast enough (``check --min-speedup``).

SIGTERM and SIGHUP (CI time-outs, container stops, a closed terminal) are handled as Ctrl-C is:
what was being written is removed and the exit code is 128 + the signal's number.

Every subcommand takes ``--quiet`` (print nothing but errors; the exit code still tells) and
``--verbose`` (every fold and skipped candidate, and the duration of each step on stderr). On a
terminal, long steps show a status line on stderr (:mod:`onnxrep.progress`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from onnxrep import __version__
from onnxrep.errors import OnnxrepError, one_line
from onnxrep.families import NAMES
from onnxrep.progress import Progress

if TYPE_CHECKING:
    import onnx

    from onnxrep.bench import BenchResult
    from onnxrep.result import OptimizeResult
    from onnxrep.verify import CompareResult

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_TOO_SLOW = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + 13
"""The reader of the output went away (SIGPIPE's exit code in a shell)."""

RUNTIMES = ("onnxruntime", "openvino")
"""The names of ``onnxrep.verify.RUNTIMES``, for ``--runtime`` and ``--reference`` without
importing a runtime to print the help."""

EXIT_CODES = """\
exit codes:
  0  success
  1  outputs differ beyond tolerance (optimize --verify, compare, check)
  2  bad input or usage
  3  speedup below --min-speedup (check)
  130  interrupted (Ctrl-C); 143 and 129 for SIGTERM and SIGHUP, nothing left half-written
  141  the reader of the output went away (a closed pipe)"""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line like every other error (its subcommands'
    parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        print(f"onnxrep: error: {self.prog}: {message} (see {self.prog} --help)",
              file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _tolerance(text: str) -> float:
    """A tolerance: a finite number, 0 or more."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _number(text: str) -> float:
    """A finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="onnxrep",
        description=textwrap.fill(
            "Structural re-parameterization of ONNX models: fold BatchNorm and collapse "
            "parallel conv branches into one Conv, verified with onnxruntime.", 79),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnxrep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=textwrap.fill(description, 79),
                              epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    opt = add("optimize", "fold a model and write the result",
              "Fold a model and write the result; optionally verify parity and time it.")
    opt.add_argument("input", help="input .onnx model")
    opt.add_argument("-o", "--output", help="output .onnx path")
    opt.add_argument("--in-place", action="store_true", help="allow writing over the input")
    opt.add_argument("--verify", action="store_true", help="check parity (in --runtime)")
    opt.add_argument("--keep-on-mismatch", action="store_true",
                     help="write the output even when --verify finds a mismatch")
    opt.add_argument("--bench", action="store_true", help="time input vs output (in --runtime)")
    opt.add_argument("--deploy-form", metavar="MODEL.onnx",
                     help="with --bench, also time this model (e.g. the network exported after "
                     "its own switch_to_deploy), interleaved with the other two")
    _report_option(opt)
    _skip_option(opt)
    opt.add_argument("--explain", action="store_true",
                     help="list every fold and every skipped candidate with its reason")
    _audit_option(opt)
    _runtime_option(opt)
    _parity_options(opt)
    _timing_options(opt)
    _feedback_options(opt)

    chk = add("check", "optimize in memory, verify and time: a CI gate",
              "Optimize MODEL in memory (nothing is written), check parity, then time input vs "
              "optimized. Exits 0 when parity holds and the speedup (p50 ratio) is at least "
              "--min-speedup, 1 when parity fails (timing is then skipped), 3 when the speedup "
              "is below the bar, or the bar is 1 or more and the optimized model is not faster "
              "beyond the measured noise (the 95 % interval of the median ratio reaches 1).")
    chk.add_argument("input", metavar="MODEL", help="input .onnx model")
    chk.add_argument("--min-speedup", type=_number, metavar="X",
                     help="fail (exit 3) when p50(input) / p50(optimized) < X (default: no bar)")
    _skip_option(chk)
    _audit_option(chk)
    _runtime_option(chk)
    _parity_options(chk)
    _timing_options(chk)
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    _report_option(chk)
    _feedback_options(chk)

    cmp = add("compare", "run two models on the same inputs",
              "Run two models on the same inputs and judge every output: the reference in "
              "onnxruntime (--reference), the other in --runtime.")
    cmp.add_argument("a", help="reference model")
    cmp.add_argument("b", help="model to check")
    _runtime_option(cmp)
    _parity_options(cmp)
    cmp.add_argument("--json", action="store_true", help="print JSON")
    _feedback_options(cmp)

    bench = add("bench", "time one model, or several interleaved",
                "Time one model, or several interleaved (the first is the baseline).")
    bench.add_argument("a", help="model (the baseline when more are given)")
    bench.add_argument("more", nargs="*", metavar="B", help="models to time against it")
    _runtime_option(bench)
    _timing_options(bench)
    bench.add_argument("--shape", action="append", metavar="NAME:DIMS",
                       help="size of a dynamic input, e.g. x:1x3x224x224")
    bench.add_argument("--inputs", metavar="FILE.npz", help="inputs to use")
    bench.add_argument("--json", action="store_true", help="print JSON")
    _feedback_options(bench)
    return parser


def _report_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", metavar="FILE",
                   help="write a report; the extension picks the format: .json, .md (for a "
                   "pull-request comment) or .html (one self-contained page with charts)")


def _skip_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip", nargs="+", action="extend", default=[], metavar="NAME",
                   choices=NAMES, help="pattern families to leave alone: " + ", ".join(NAMES))


def _audit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-audit", action="store_true",
                   help="skip the fusion audit (which withdraws any fold that would split a "
                   "kernel onnxruntime fuses in the input)")


def _runtime_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="where models are checked and timed: onnxruntime (default) or openvino "
                   "(its CPU plugin; pip install \"onnxrep[openvino]\"); parity asks it for f32")


def _parity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", choices=RUNTIMES, default="onnxruntime",
                   help="where the reference model runs for parity (default onnxruntime, at "
                   "disable_all)")
    p.add_argument("--atol", type=_tolerance, help="absolute tolerance (default by dtype)")
    p.add_argument("--rtol", type=_tolerance,
                   help="tolerance relative to the output's max |value| (default by dtype)")
    p.add_argument("--inputs", metavar="FILE.npz", help="inputs to use instead of random ones")
    p.add_argument("--shape", action="append", metavar="NAME:DIMS",
                   help="size of a dynamic input, e.g. x:1x3x224x224 (repeatable)")
    p.add_argument("--seeds", type=int, default=3, help="random input sets (default 3)")


def _timing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="inference threads (0: the runtime's choice; default 1)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per model")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model")
    p.add_argument("--level", choices=("disable_all", "basic", "extended", "all"), default="all",
                   help="onnxruntime optimization level for timing (default all)")


def _feedback_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="print nothing but errors (the exit code still tells)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="list every fold and skipped candidate; log each step's duration")


class _Console:
    """What a command prints: results on stdout unless quiet, progress and errors on stderr."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quiet: bool = args.quiet
        self.verbose: bool = args.verbose
        self.progress = Progress(sys.stderr, live=False if self.quiet else None,
                                 verbose=self.verbose)
        self.step = self.progress.step

    def out(self, text: str) -> None:
        if not self.quiet:
            print(text)

    def error(self, text: str) -> None:
        print(f"onnxrep: {text}", file=sys.stderr)

    def warn(self, text: str) -> None:
        if not self.quiet:
            print(f"onnxrep: warning: {text}", file=sys.stderr)

    def load(self, path: str | os.PathLike[str], *, check: bool = True) -> onnx.ModelProto:
        return self.load_with_sources(path, check=check)[0]

    def load_with_sources(self, path: str | os.PathLike[str], *,
                          check: bool = True) -> tuple[onnx.ModelProto, list[Path]]:
        try:
            size = f" ({_size(Path(path).stat().st_size)})"
        except OSError:
            size = ""  # io.load names the problem
        with self.step(f"loading {path}{size}"):
            from onnxrep import io

            return io.load_with_sources(path, check=check)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _optimize(args: argparse.Namespace) -> int:
    from onnxrep import io
    from onnxrep.pipeline import optimize
    from onnxrep.report import Report, StagedReport, render_text
    from onnxrep.result import ModelStats

    ui = _Console(args)
    src = Path(args.input)
    if args.output is None and not args.in_place:
        raise OnnxrepError("missing -o OUTPUT (or --in-place to overwrite the input)")
    dst = _file_name(args.output, "the output") if args.output is not None else src
    if dst.suffix.lower() in io.TEXT_SUFFIXES:  # read in onnx's text formats, written binary
        raise OnnxrepError(f"{dst}: the output is written as binary ONNX, not in the text "
                           f"format its name says; name it .onnx")
    report_path = _report_path(args)
    if _same_file(src, dst) and not args.in_place:
        raise OnnxrepError(f"{dst}: output is the input; pass --in-place to overwrite it")
    if args.deploy_form and not args.bench:
        raise OnnxrepError("--deploy-form is timed with the others: it needs --bench")
    if not (args.verify or args.bench) and "openvino" in (args.runtime, args.reference):
        raise OnnxrepError("--runtime and --reference say where to verify and time: they need "
                           "--verify or --bench")
    _require(args, parity=args.verify, timing=args.bench)
    outputs = [("the output", dst), ("the output's data file", dst.with_name(dst.name + ".data")),
               *([("the report", report_path)] if report_path is not None else [])]
    in_place = args.in_place and _same_file(src, dst)
    _check_outputs(outputs, [("the input", src)], in_place=in_place)
    model, sources = ui.load_with_sources(src)
    inputs = [("the input", src), *(("the input's external data file", f) for f in sources[1:])]
    # --deploy-form is only timed: it may be an earlier output that this run replaces
    deploy = ui.load(args.deploy_form) if args.deploy_form else None
    if args.inputs:
        inputs.append(("the --inputs file", Path(args.inputs)))
    _check_outputs(outputs, inputs, in_place=in_place)
    with ui.step("optimizing"):
        # without parity or timing the input is not needed again: let it become the output
        alone = not (args.verify or args.bench)
        result = optimize(model, skip=args.skip, in_place=alone, audit=not args.no_audit)
        if alone:
            del model
    report = Report(str(src), str(dst), result)
    report.warnings += result.warnings
    if deploy is not None:
        report.deploy_form, report.deploy_stats = args.deploy_form, ModelStats.of(deploy)
    code = EXIT_OK
    if args.verify:
        report.parity = _verify(ui, args, model, result.model)
        if not report.parity.ok:
            code = EXIT_MISMATCH
    if args.bench:
        models = [model, result.model] + ([deploy] if deploy is not None else [])
        report.timing = _time(ui, args, models, ["input", "optimized", "deploy-form"])
        report.warnings += _slow(report.timing, result)
    report.written = code == EXIT_OK or args.keep_on_mismatch
    if not report.written:
        report.output = None
    # The report is staged first and renamed into place after the model is saved: a report
    # that cannot be written leaves no model behind, and a model that cannot be written leaves
    # no report claiming it was.
    staged = StagedReport(report, args.report) if args.report is not None else None
    try:
        if report.written:
            with ui.step(f"writing {dst}"):
                io.save(result.model, dst)
        if staged is not None:
            staged.commit()
    finally:
        if staged is not None:
            staged.discard()
    ui.out(render_text(report, explain=args.explain or args.verbose))
    for warning in report.warnings:
        ui.warn(warning)
    if code == EXIT_MISMATCH:
        kept = "written anyway (--keep-on-mismatch)" if report.written else "not written"
        ui.error(f"outputs differ beyond tolerance; {dst} {kept}")
    return code


def _warm_up(args: argparse.Namespace) -> None:
    """Start the fusion audit's onnxruntime process first thing, for a command that audits: it
    imports onnxruntime while this process imports onnx (a second) and loads the model, and
    is ready when the first model comes."""
    if getattr(args, "no_audit", True) is False:
        from onnxrep.audit import warm_up

        warm_up()


def _require(args: argparse.Namespace, *, parity: bool, timing: bool) -> None:
    """Refuse, before any work is done, a runtime that is not installed and inputs that
    cannot be made as asked: fewer than one seed, a malformed ``--shape``, or ``--shape``
    beside ``--inputs`` (whose arrays have their shapes already)."""
    from onnxrep.verify import parse_shapes, require

    if parity:
        require(args.reference)
        if getattr(args, "seeds", 1) < 1:
            raise OnnxrepError("--seeds must be at least 1")
    if parity or timing:
        require(args.runtime)
        if getattr(args, "shape", None):
            parse_shapes(args.shape)
            if getattr(args, "inputs", None):
                raise OnnxrepError("--shape and --inputs both say what the inputs are; the "
                                   "arrays of --inputs have their shapes: give one of them")


def _verify(ui: _Console, args: argparse.Namespace, a: object, b: object) -> CompareResult:
    from onnxrep.verify import compare, parse_shapes

    shapes = parse_shapes(args.shape)
    label = "verifying" + ("" if args.inputs else f" over {args.seeds} input set(s)")
    if args.runtime != "onnxruntime":
        label += f" in {args.runtime}"
    with ui.step(label) as tick:
        return compare(a, b, atol=args.atol, rtol=args.rtol, inputs=args.inputs, shapes=shapes,
                       seeds=args.seeds, progress=tick, runtime=args.runtime,
                       reference=args.reference)


def _time(ui: _Console, args: argparse.Namespace, models: Sequence[object],
          names: Sequence[str]) -> BenchResult:
    from onnxrep.bench import benchmark
    from onnxrep.verify import parse_shapes

    shapes = parse_shapes(args.shape)
    where = "" if args.runtime == "onnxruntime" else f" in {args.runtime}"
    with ui.step(f"timing {len(models)} model(s){where}") as tick:
        return benchmark(*models, threads=args.threads, warmup=args.warmup, runs=args.runs,
                         level=args.level, shapes=shapes, inputs=args.inputs,
                         names=tuple(names), progress=tick, runtime=args.runtime)


def _slow(timing: BenchResult, result: OptimizeResult | None,
          models: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """The warning for a second model that is not faster than the first, with its likely cause
    (for two models onnxrep did not make, the fusion audit between them names it)."""
    from onnxrep.report import not_faster

    if timing.faster is not False:
        return []
    splits: list[str] = []
    in_onnxruntime = timing.runtime is None or timing.runtime.name == "onnxruntime"
    if result is None and len(models) >= 2 and in_onnxruntime:  # the audit reads its kernels
        from onnxrep import io
        from onnxrep.audit import AuditUnavailable, compare_models

        with contextlib.suppress(AuditUnavailable):
            splits = [x.kind for x in compare_models(io.load(models[0], check=False),
                                                     io.load(models[1], check=False))]
    warning = not_faster(timing, result, splits)
    return [warning] if warning else []


def _file_name(text: str, role: str) -> Path:
    """``text`` as the path of a file to write (refused when it names no file: empty, ``.``,
    or ending in a separator, which a Path would drop)."""
    if not text or text.endswith(("/", os.sep)) or Path(text).name in ("", ".", ".."):
        raise OnnxrepError(f"{text!r}: {role} needs a file name")
    return Path(text)


def _report_path(args: argparse.Namespace) -> Path | None:
    """The ``--report`` file, if asked for: refused before any work when it names no file,
    an unknown format or a folder that does not exist."""
    from onnxrep.report import report_format

    if args.report is None:
        return None
    path = _file_name(args.report, "the report")
    report_format(path)
    return path


def _check_outputs(outputs: Sequence[tuple[str, Path]], inputs: Sequence[tuple[str, Path]], *,
                   in_place: bool = False) -> None:
    """Refuse, before anything is written, an output that would replace a FIFO, a device or
    another file that is not a regular one, that lies in a folder no file can be made in, that
    is an input (the model or any of its external
    data files, by device and inode: hard and symbolic links count), or that is another output
    of the same run. With ``in_place`` (the output model is the input model) its data file may
    be one of the input's too: the input is in memory before either is replaced."""
    from onnxrep import io

    for role, path in outputs:
        io.refuse_special(path)
        io.refuse_unwritable(path, role)
    seen: dict[tuple[object, ...], str] = {}
    for role, path in outputs:
        key = _identity(path)
        if key in seen:
            raise OnnxrepError(f"{path}: {role} would be {seen[key]} too; give each its own "
                               "file")
        seen[key] = role
    for role, path in outputs:
        key = _identity(path)
        for source, candidate in inputs:
            if key != _identity(candidate):
                continue
            if in_place and role == "the output" and source == "the input":
                continue
            if (in_place and role == "the output's data file"
                    and source == "the input's external data file"):
                continue
            raise OnnxrepError(f"{path}: {role} would overwrite {source} ({candidate}); "
                               "nothing was written")


def _identity(path: Path) -> tuple[object, ...]:
    """What names one file: device and inode when it exists, else the resolved path."""
    try:
        info = os.stat(path)
    except OSError:
        return ("path", str(path.resolve()))
    return ("inode", info.st_dev, info.st_ino)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _check(args: argparse.Namespace) -> int:
    from onnxrep.bench import MIN_INTERVAL_RUNS
    from onnxrep.pipeline import optimize
    from onnxrep.report import Report, Verdict, render_text, to_json, write

    ui = _Console(args)
    report_path = _report_path(args)
    outputs = [("the report", report_path)] if report_path is not None else []
    bar = args.min_speedup
    if bar is not None and not bar > 0:
        raise OnnxrepError("--min-speedup must be a positive number")
    if bar is not None and bar >= 1 and args.runs < MIN_INTERVAL_RUNS:
        raise OnnxrepError(f"--min-speedup {bar:g} needs --runs {MIN_INTERVAL_RUNS} or more: "
                           "whether the optimized model is faster is judged by a confidence "
                           "interval of the speedup, which fewer runs do not give")
    _check_outputs(outputs, [("the input", Path(args.input))])
    _require(args, parity=True, timing=True)
    model, sources = ui.load_with_sources(args.input)
    inputs = [("the input", sources[0]),
              *(("the input's external data file", f) for f in sources[1:]),
              *([("the --inputs file", Path(args.inputs))] if args.inputs else [])]
    _check_outputs(outputs, inputs)
    with ui.step("optimizing"):
        result = optimize(model, skip=args.skip, audit=not args.no_audit)
    report = Report(str(args.input), None, result)
    report.warnings += result.warnings
    report.parity = parity = _verify(ui, args, model, result.model)
    if not parity.ok:
        bad = [o.name for o in parity.outputs if not o.ok]
        verdict = Verdict(False, EXIT_MISMATCH, f"outputs differ beyond tolerance: "
                          f"{', '.join(map(repr, bad))} (timing skipped)", bar)
    else:
        report.timing = timing = _time(ui, args, [model, result.model], ["input", "optimized"])
        report.warnings += _slow(timing, result)
        speedup = timing.speedup or 0.0
        shown = _ratio(speedup, bar)
        if bar is not None and speedup < bar:
            verdict = Verdict(False, EXIT_TOO_SLOW,
                              f"speedup {shown} is below --min-speedup {bar:g}x", bar)
        elif bar is not None and bar >= 1 and not timing.faster:
            verdict = Verdict(False, EXIT_TOO_SLOW,
                              f"speedup {shown} is not above 1 beyond the measured noise (95 % "
                              f"interval {timing.speedup_low:.3f}x .. {timing.speedup_high:.3f}x)"
                              f"; --min-speedup {bar:g}x asks for a faster model", bar)
        else:
            reached = f" >= {bar:g}x" if bar is not None else ""
            verdict = Verdict(True, EXIT_OK, f"parity ok, speedup {shown}{reached}", bar)
    report.check = verdict
    if args.report is not None:
        with ui.step(f"writing {args.report}"):
            write(report, args.report)
    if args.json:
        ui.out(to_json(report.to_dict()))
    else:
        ui.out(render_text(report, explain=args.verbose))
    for warning in report.warnings:
        ui.warn(warning)
    if not verdict.ok:
        ui.error(f"check failed: {verdict.reason}")
    return verdict.code


def _ratio(x: float, bar: float | None) -> str:
    """``x`` as ``1.21x``, with as many decimals as it takes not to look equal to ``bar``."""
    for digits in range(2, 7):
        text = f"{x:.{digits}f}"
        if bar is None or x == bar or float(text) != bar:
            return text + "x"
    return f"{x!r}x"


def _compare(args: argparse.Namespace) -> int:
    from onnxrep.report import parity_table, runtime_label, to_json

    ui = _Console(args)
    _require(args, parity=True, timing=False)
    for path in (args.a, args.b):
        ui.load(path, check=False)  # a clear error for a bad file before onnxruntime's
    result = _verify(ui, args, args.a, args.b)
    if args.json:
        ui.out(to_json(result.to_dict()))
    else:
        verdict = "equivalent" if result.ok else "DIFFERENT"
        lines = [f"{args.a} vs {args.b}: {verdict} over {result.seeds} input set(s), "
                 f"{runtime_label(result)}"]
        lines += [f"  {line}" for line in parity_table(result)]
        if ui.verbose:
            lines.append("  inputs " + ", ".join(
                f"{k} {'x'.join(map(str, v))}" for k, v in result.inputs.items()))
        ui.out("\n".join(lines))
    return EXIT_OK if result.ok else EXIT_MISMATCH


def _bench(args: argparse.Namespace) -> int:
    from onnxrep.report import timing_lines, to_json

    ui = _Console(args)
    _require(args, parity=False, timing=True)
    paths = [args.a, *args.more]
    for path in paths:
        ui.load(path, check=False)
    names: list[str] = []
    for path in paths:
        name = Path(path).name
        names.append(name if name not in names else f"{name} ({len(names) + 1})")
    result = _time(ui, args, paths, names)
    warnings = _slow(result, None, paths)
    if args.json:
        ui.out(to_json({**result.to_dict(), "warnings": warnings}))
    else:
        lines = timing_lines(result)
        if ui.verbose:
            lines.append("    inputs     " + ", ".join(
                f"{k} {'x'.join(map(str, v))}" for k, v in result.inputs.items()))
        ui.out("\n".join(line.strip() if i == 0 else line for i, line in enumerate(lines)))
    for warning in warnings:
        ui.warn(warning)
    return EXIT_OK


COMMANDS = {"optimize": _optimize, "check": _check, "compare": _compare, "bench": _bench}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the signal arrives: a KeyboardInterrupt, so every path
    that cleans up after Ctrl-C (temporary files, staged reports) cleans up after it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                    if hasattr(signal, name))


@contextlib.contextmanager
def _terminations_interrupt() -> Iterator[None]:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` for the duration, then restore the
    previous handlers. A second such signal during the cleanup of the first is ignored."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in TERMINATING:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {}
    for sig in TERMINATING:
        with contextlib.suppress(ValueError, OSError):  # not the main thread: leave them
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _library_warnings(args: argparse.Namespace, caught: list[str]) -> None:
    """Python warnings raised outside ``optimize`` (which keeps its own in the result): none
    under ``-q``, each under ``-v``, else how many."""
    caught = list(dict.fromkeys(caught))
    if args.quiet or not caught:
        return
    if args.verbose:
        for text in caught:
            print(f"onnxrep: warning: {text}", file=sys.stderr)
    else:
        print(f"onnxrep: warning: {len(caught)} library warning(s) (-v lists them)",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _warm_up(args)
    try:
        with _terminations_interrupt(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = COMMANDS[args.command](args)
        _library_warnings(args, [f"{w.category.__name__}: {one_line(Exception(w.message))}"
                                 for w in caught])
        return code
    except OnnxrepError as e:
        return _last_word(f"onnxrep: error: {e}", EXIT_BAD_INPUT)
    except BrokenPipeError:  # the reader went away (``| head``): nothing left to say
        return _last_word(None, EXIT_BROKEN_PIPE)
    except Terminated as e:
        return _last_word(f"onnxrep: terminated by {signal.Signals(e.signum).name}",
                          128 + e.signum)
    except KeyboardInterrupt:
        return _last_word("onnxrep: interrupted", 130)
    except MemoryError:
        return _last_word("onnxrep: error: out of memory", EXIT_BAD_INPUT)
    except Exception as e:  # never a traceback: name the failure in one line
        return _last_word(f"onnxrep: error: {type(e).__name__}: {one_line(e)}", EXIT_BAD_INPUT)


def _last_word(text: str | None, code: int) -> int:
    """Say ``text`` on stderr and return ``code``, whatever became of the terminal: with its
    reader gone (a closed pipe), the exit code still says what happened, and what a stream
    could not deliver goes to the null device rather than failing again at exit."""
    if text is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            print(text, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    return code


if __name__ == "__main__":
    sys.exit(main())
