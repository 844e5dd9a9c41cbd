"""A training-form model over the 2 GB protobuf limit, through ``onnxrep optimize`` and back.

    python benchmarks/large_model.py [--channels 2048] [--blocks 14] [--size 8]
                                     [--dir /tmp/onnxrep-large] [--keep] [--json FILE]

Builds a RepVGG-style stack — per block ``Relu(BN(Conv3x3(h)) + BN(Conv1x1(h)) + BN(h))`` with
``--channels`` channels, float32 — whose weights exceed 2 GB, saved with onnx's own external
data writer (``big.onnx`` + ``big.onnx.data``). Then, each in a fresh process under
``/usr/bin/time -v`` (peak RSS; ``getrusage(RUSAGE_CHILDREN)`` where that is missing):

1. ``onnxrep optimize big.onnx -o big.opt.onnx`` — wall time and peak RSS of the fold alone;
2. the same with ``--verify --seeds 1 --report report.json`` — parity in onnxruntime at
   ORT_DISABLE_ALL, both models loaded from external data.

Records: generated size, both runs' wall time, peak RSS and exit code, whether the output was
written with external data (and how many tensors went there), that it reloads and passes
``onnx.checker.check_model`` by path, its op counts, the parity numbers and the fusion audit's
result (it runs by default: onnxruntime's optimizer on a light copy of the model, whose large
weights are left out). The multi-GB files are
deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate(path: str, channels: int, blocks: int, size: int, seed: int = 0) -> dict:
    """Write the training-form model with external data; return its description."""
    import onnx
    from _common import repvgg_stack

    start = time.perf_counter()
    model = repvgg_stack(channels, blocks, size, seed)
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    ops = Counter(n.op_type for n in model.graph.node)
    built = time.perf_counter() - start
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=Path(path).name + ".data", size_threshold=1024)
    del model
    onnx.checker.check_model(path)
    return {
        "channels": channels, "blocks": blocks, "input": [1, channels, size, size],
        "weight_bytes": weight_bytes, "model_file_bytes": os.path.getsize(path),
        "data_file_bytes": os.path.getsize(path + ".data"), "nodes": sum(ops.values()),
        "ops": dict(ops), "build_seconds": round(built, 1),
        "generate_seconds": round(time.perf_counter() - start, 1),
    }


def timed(argv: list[str], cwd: Path) -> dict:
    """Run ``argv`` in a fresh process; wall time, peak RSS, exit code, output tails."""
    gnu_time = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists()
                                        else None)
    command = [gnu_time, "-v", *argv] if gnu_time else argv
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    peak_kb = None
    if gnu_time:
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
        peak_kb = int(found.group(1)) if found else None
    if peak_kb is None:  # only meaningful if this child is the largest so far
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak_kb = after if after > before else None
    stderr = run.stderr.split("\tCommand being timed:")[0]  # GNU time's report follows
    return {
        "argv": ["onnxrep", *argv[argv.index("optimize"):]], "exit_code": run.returncode,
        "wall_seconds": round(wall, 1),
        "peak_rss_gb": round(peak_kb / 2**20, 2) if peak_kb else None,
        "stdout": run.stdout.strip().splitlines(), "stderr": stderr.strip().splitlines()[-5:],
    }


def inspect_output(path: Path) -> dict:
    """How the output was written, and whether it reloads and passes the checker by path."""
    import onnx

    info: dict = {"exists": path.exists()}
    if not path.exists():
        return info
    data = path.with_name(path.name + ".data")
    shell = onnx.load(str(path), load_external_data=False)
    external = [t for t in shell.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    info.update({
        "model_file_bytes": path.stat().st_size,
        "data_file": data.name if data.exists() else None,
        "data_file_bytes": data.stat().st_size if data.exists() else 0,
        "external_tensors": len(external), "initializers": len(shell.graph.initializer),
        "ops": dict(Counter(n.op_type for n in shell.graph.node)),
    })
    try:
        onnx.checker.check_model(str(path))
        info["checker_by_path"] = "ok"
    except Exception as e:
        info["checker_by_path"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    start = time.perf_counter()
    try:
        loaded = onnx.load(str(path))
        info["reload"] = f"ok ({sum(len(t.raw_data) for t in loaded.graph.initializer)} bytes)"
        del loaded
    except Exception as e:
        info["reload"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    info["reload_seconds"] = round(time.perf_counter() - start, 1)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--blocks", type=int, default=14)
    parser.add_argument("--size", type=int, default=8, help="input height and width")
    parser.add_argument("--dir", default="/tmp/onnxrep-large")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--no-verify", action="store_true", help="skip the --verify run")
    parser.add_argument("--json", help="write the record as JSON to this file")
    args = parser.parse_args(argv)

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    src, dst = folder / "big.onnx", folder / "big.opt.onnx"
    record: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                               f"{_memory_gb()} GB RAM, Python {platform.python_version()}"}
    try:
        print(f"generating {args.blocks} blocks x {args.channels} channels in {folder} ...",
              flush=True)
        with get_context("spawn").Pool(1) as pool:  # its memory is returned when it exits
            record["generated"] = pool.apply(generate, (str(src), args.channels, args.blocks,
                                                        args.size))
        print(json.dumps(record["generated"], indent=2), flush=True)

        runs = [("cli", [sys.executable, "-m", "onnxrep"])]
        for label, prefix in runs:
            cli = [*prefix, "optimize", src.name, "-o", dst.name]
            print(f"optimize ({label}) ...", flush=True)
            record[label] = {"optimize": timed(cli, folder)}
            record[label]["output"] = inspect_output(dst)
            print(json.dumps(record[label], indent=2), flush=True)
            if args.no_verify or record[label]["optimize"]["exit_code"] != 0:
                continue
            for p in (dst, dst.with_name(dst.name + ".data")):
                p.unlink(missing_ok=True)
            print(f"optimize --verify ({label}) ...", flush=True)
            report = folder / "report.json"
            verify = timed([*cli, "--verify", "--seeds", "1", "--report", report.name], folder)
            if report.exists():
                data = json.loads(report.read_text())
                verify["parity"] = data.get("parity")
                verify["folds"] = data.get("applied_by_pattern")
                verify["audit"] = data.get("audit")  # the fusion audit, on external data
            record[label]["verify"] = verify
            record[label]["verify_output"] = inspect_output(dst)
            print(json.dumps({k: record[label][k] for k in ("verify", "verify_output")},
                             indent=2), flush=True)
            for p in (dst, dst.with_name(dst.name + ".data"), report):
                p.unlink(missing_ok=True)
    finally:
        if not args.keep:
            for p in (src, src.with_name(src.name + ".data"), dst,
                      dst.with_name(dst.name + ".data"), folder / "report.json"):
                p.unlink(missing_ok=True)
            leftovers = sorted(p.name for p in folder.iterdir())
            record["leftover_files"] = leftovers
            if not leftovers:
                folder.rmdir()
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    ok = record.get("cli", {}).get("optimize", {}).get("exit_code") == 0
    return 0 if ok else 1


def _memory_gb() -> int:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 2**30)
    except (ValueError, OSError, AttributeError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
