"""Helpers shared by ``zoo.py`` and ``speed.py``: the machine, versions, timed subprocesses, the
optimizers compared (silenced) and a generated RepVGG-style training-form model.

Importing this module puts the repository root on ``sys.path``, so the scripts run as
``python benchmarks/NAME.py`` from a checkout without installing anything but the package's
dependencies.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import multiprocessing
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DISTRIBUTIONS = (
    "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "torch", "onnxscript", "onnxsim",
    "onnxslim", "openvino", "onnxrep",
)


def use_root(argv: list[str] | None) -> None:
    """Honour ``--root DIR`` before anything from onnxrep or models is imported: DIR goes first
    on ``sys.path`` (and on ``PYTHONPATH``, for child processes)."""
    args = sys.argv[1:] if argv is None else list(argv)
    for i, arg in enumerate(args):
        root = args[i + 1] if arg == "--root" and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--root=") else None)
        if root:
            root = str(Path(root).resolve())
            sys.path.insert(0, root)
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [root, *filter(None, [os.environ.get("PYTHONPATH")])])
            return


def machine() -> dict[str, Any]:
    """CPU model, logical cores, RAM, OS and Python, and the date (UTC)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        ram = 0.0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(ram, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg": _loadavg(),
        "revision": revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def revision(root: Path = ROOT) -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files under onnxrep/ differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no",
                                "--", "onnxrep"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: other jobs on the machine skew timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def versions() -> dict[str, str | None]:
    """Installed versions of the packages the benchmarks use (None when missing)."""
    found: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def counts(model: Any) -> dict[str, int]:
    """Node count and Conv count (any domain: onnxruntime writes ``com.microsoft.nchwc.Conv``)."""
    ops = Counter(n.op_type for n in model.graph.node)
    return {"nodes": len(model.graph.node), "convs": ops["Conv"]}


def timed(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``argv`` in a fresh process: wall seconds, peak RSS (GNU time, else getrusage),
    exit code and the last lines of its output."""
    gnu_time = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists()
                                        else None)
    command = [gnu_time, "-v", *argv] if gnu_time else argv
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    peak_kb = None
    if gnu_time:
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
        peak_kb = int(found.group(1)) if found else None
    if peak_kb is None:  # the children's maximum: only this child's if it is the largest yet
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak_kb = after if after > before else None
    stderr = [line for line in run.stderr.splitlines()
              if not line.startswith(("\t", "    ")) and "Command being timed" not in line]
    return {
        "exit_code": run.returncode,
        "wall_s": wall,
        "peak_rss_bytes": peak_kb * 1024 if peak_kb else None,
        "stdout": run.stdout.strip().splitlines()[-20:],
        "stderr": stderr[-8:],
    }


def work_dir(stack: contextlib.ExitStack, folder: str | None, prefix: str) -> Path:
    """``folder`` (created if needed), or a temporary folder removed when ``stack`` closes."""
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))


def repvgg_stack(channels: int, blocks: int, size: int = 8, seed: int = 0) -> Any:
    """A training-form RepVGG-style stack as an onnx.ModelProto (float32, opset 17).

    Per block: ``Relu(BN(Conv3x3(h)) + BN(Conv1x1(h)) + BN(h))`` with ``channels`` channels
    everywhere; input ``x`` of shape ``[1, channels, size, size]``. Weights are
    ``10 * channels**2 + 12 * channels`` floats per block. Built with onnx.helper and numpy.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = channels
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, values: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(values, np.float32), name))
        return name

    def bn(x: str, name: str) -> str:
        params = [init(f"{name}.{p}", v) for p, v in (
            ("gamma", rng.uniform(0.5, 1.5, c)), ("beta", rng.standard_normal(c) * 0.1),
            ("mean", rng.standard_normal(c) * 0.1), ("var", rng.uniform(0.5, 1.5, c)))]
        nodes.append(helper.make_node("BatchNormalization", [x, *params], [name], name=name))
        return name

    h = "x"
    for b in range(blocks):
        w3 = rng.standard_normal((c, c, 3, 3), dtype=np.float32)
        w3 *= np.float32(1 / np.sqrt(c * 9) / 2)
        nodes.append(helper.make_node("Conv", [h, init(f"b{b}.conv3.weight", w3)],
                                      [f"b{b}.conv3"], name=f"b{b}.conv3", pads=[1] * 4))
        del w3
        w1 = rng.standard_normal((c, c, 1, 1), dtype=np.float32) * np.float32(1 / np.sqrt(c) / 2)
        nodes.append(helper.make_node("Conv", [h, init(f"b{b}.conv1.weight", w1)],
                                      [f"b{b}.conv1"], name=f"b{b}.conv1"))
        branches = [bn(f"b{b}.conv3", f"b{b}.bn3"), bn(f"b{b}.conv1", f"b{b}.bn1"),
                    bn(h, f"b{b}.bnid")]
        nodes.append(helper.make_node("Sum", branches, [f"b{b}.sum"], name=f"b{b}.sum"))
        nodes.append(helper.make_node("Relu", [f"b{b}.sum"], [f"b{b}.out"], name=f"b{b}.relu"))
        h = f"b{b}.out"
    graph = helper.make_graph(
        nodes, "repvgg_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, c, size, size])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save_repvgg_stack(path: str, channels: int, blocks: int) -> None:
    """``repvgg_stack(channels, blocks)`` written to ``path`` (run it through :func:`spawn`)."""
    import onnx

    onnx.save_model(repvgg_stack(channels, blocks), path)


def spawn(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh process, whose memory goes back to the system when it exits."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def silent(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` with its prints, warnings and log lines swallowed, those its C++ code writes
    to the process's stdout/stderr included (onnxslim prints a table, onnxsim warnings)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            return fn()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def optimizers(
    names: Sequence[str] = ("onnxsim", "onnxslim", "onnxrep"),
) -> dict[str, Callable[[Any], Any]]:
    """The optimizers of ``names`` (onnxsim and onnxslim are imported only when asked for)."""
    import onnxrep

    found: dict[str, Callable[[Any], Any]] = {}
    if "onnxsim" in names:
        import onnxsim

        def simplify(model: Any) -> Any:
            simplified, ok = onnxsim.simplify(model)
            if not ok:
                raise RuntimeError("onnxsim.simplify reports that its check failed")
            return simplified

        found["onnxsim"] = simplify
    if "onnxslim" in names:
        import onnxslim

        found["onnxslim"] = lambda model: onnxslim.slim(model)
    if "onnxrep" in names:
        found["onnxrep"] = lambda model: onnxrep.optimize(model).model
    return found


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
