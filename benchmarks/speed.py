"""How fast onnxrep itself is: a ~500 MB model against onnxslim, scaling with depth, peak memory.

    python benchmarks/speed.py [--channels 1024] [--blocks 12] [--chains 100,1000]
                               [--chain-channels 8] [--repeats 2] [--with-onnxsim]
                               [--slim-chains] [--profile] [--dir DIR] [--keep] [--json FILE]

Models (generated with onnx.helper and numpy by ``_common.repvgg_stack``, float32, opset 17):
per block ``Relu(BN(Conv3x3(h)) + BN(Conv1x1(h)) + BN(h))``, the training form of a RepVGG block,
``10 c^2 + 12 c`` weights per block.

(a) ``big``: ``--channels`` x ``--blocks`` (1024 x 12: 504 MB of float32 weights in one
    protobuf file). ``onnxrep optimize IN -o OUT`` and ``onnxslim IN OUT`` (and with
    ``--with-onnxsim``, ``onnxsim IN OUT``) each run as a fresh process, interleaved ABBA over
    ``--repeats`` rounds; wall time (process start to exit, imports included) and peak RSS.
    Goal: onnxrep's median wall time <= 0.5x onnxslim's.
(b) ``chain{N}``: ``N`` blocks of ``--chain-channels`` channels. onnxrep's wall time as a
    process, and in-process (``io.load`` + ``optimize`` + ``io.save``, imports excluded, which is
    what grows with the model). Goal: 10x the blocks costs <= 13x the in-process time.
(c) peak RSS of the ``onnxrep optimize`` process on ``big`` (GNU ``time -v``'s maximum resident
    set size, else ``getrusage(RUSAGE_CHILDREN)``). Goal: <= 2.5x the model file's size.

Every onnxrep process is also timed phase by phase (``--child`` mode of this script: load,
optimize, save), and ``--profile`` runs that child under cProfile on ``big`` and the largest
chain and prints the top entries. Models are generated into ``--dir`` (a temporary folder unless
given) and deleted afterwards unless ``--keep``. Exit code 0 when every goal is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import _common  # puts the repository root on sys.path

SPEED_GOAL = 0.5
SCALING_GOAL = 13.0
MEMORY_GOAL = 2.5


def generate(path: str, channels: int, blocks: int) -> dict[str, Any]:
    """Write ``repvgg_stack(channels, blocks)`` to ``path`` (run in a child process)."""
    import onnx

    start = time.perf_counter()
    model = _common.repvgg_stack(channels, blocks)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    onnx.save_model(model, path)
    return {
        "channels": channels, "blocks": blocks, "nodes": len(model.graph.node),
        "weight_bytes": weights, "file_bytes": os.path.getsize(path),
        "generate_s": time.perf_counter() - start,
    }


def child(src: str, dst: str, profile: str | None, root: str | None) -> int:
    """``--child``: load, optimize and save as the CLI does; print the phase times as JSON."""
    if root:
        sys.path.insert(0, root)
    t0 = time.perf_counter()
    import onnxrep
    from onnxrep import io

    t1 = time.perf_counter()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    model = io.load(src)
    t2 = time.perf_counter()
    result = onnxrep.optimize(model)
    t3 = time.perf_counter()
    io.save(result.model, dst)
    t4 = time.perf_counter()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    print(json.dumps({
        "import_s": t1 - t0, "load_s": t2 - t1, "optimize_s": t3 - t2, "save_s": t4 - t3,
        "in_process_s": t4 - t1, "folds": len(result.applied), "package": onnxrep.__file__,
        "ops_after": result.after.ops,
    }))
    return 0


def _cli(tool: str) -> list[str]:
    """The command line of ``tool``: the console script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).with_name(tool)
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", tool]


def commands(src: Path, dst: Path, root: str | None = None) -> dict[str, list[str]]:
    child = ["--child-root", root] if root else []
    return {
        "onnxrep": [*_cli("onnxrep"), "optimize", str(src), "-o", str(dst), "--quiet"],
        "onnxslim": [*_cli("onnxslim"), str(src), str(dst)],
        "onnxsim": [*_cli("onnxsim"), str(src), str(dst)],
        "phases": [sys.executable, str(Path(__file__).resolve()), "--child", str(src), str(dst),
                   *child],
    }


def run(argv: list[str], dst: Path, root: str | None = None) -> dict[str, Any]:
    """One timed process; the output is removed afterwards (its size is recorded)."""
    env = None
    if root:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = _common.timed(argv, env=env)
    result["output_bytes"] = dst.stat().st_size if dst.exists() else None
    for p in (dst, dst.with_name(dst.name + ".data")):
        p.unlink(missing_ok=True)
    if result["exit_code"] != 0:
        print(f"  {' '.join(argv[:2])} ... exited {result['exit_code']}: "
              f"{result['stderr'][-1:] or result['stdout'][-1:]}", file=sys.stderr)
    return result


def profile_top(path: str, limit: int) -> dict[str, list[str]]:
    """The top ``limit`` entries of a cProfile dump by cumulative and by own time."""
    import io
    import pstats

    tops = {}
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(path, stream=out).strip_dirs().sort_stats(key).print_stats(limit)
        text = out.getvalue().splitlines()
        start = next((i for i, line in enumerate(text) if line.lstrip().startswith("ncalls")), 0)
        tops[key] = [line for line in text[start:] if line.strip()]
    return tops


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [s for s in samples if s["exit_code"] == 0]
    walls = [s["wall_s"] for s in ok]
    rss = [s["peak_rss_bytes"] for s in ok if s["peak_rss_bytes"]]
    return {
        "runs": len(samples), "failed": len(samples) - len(ok),
        "wall_s": statistics.median(walls) if walls else None,
        "wall_min_s": min(walls) if walls else None,
        "peak_rss_bytes": max(rss) if rss else None,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--channels", type=int, default=1024, help="width of the big model")
    parser.add_argument("--blocks", type=int, default=12, help="depth of the big model")
    parser.add_argument("--chains", default="100,1000", help="depths of the chain models")
    parser.add_argument("--chain-channels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2,
                        help="ABBA rounds on the big model (each runs every tool twice)")
    parser.add_argument("--with-onnxsim", action="store_true", help="also time onnxsim on big")
    parser.add_argument("--slim-chains", action="store_true",
                        help="also time onnxslim on the chains (slow on deep ones)")
    parser.add_argument("--profile", action="store_true",
                        help="profile onnxrep in-process on big and the deepest chain")
    parser.add_argument("--top", type=int, default=25, help="profile entries to print")
    parser.add_argument("--dir", help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated models")
    parser.add_argument("--json", default="speed.json", help="write the record here")
    parser.add_argument("--onnxrep-root", metavar="DIR",
                        help="time the onnxrep package found in DIR (a patched copy of this "
                        "checkout, say) instead of this checkout's")
    parser.add_argument("--child", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", help=argparse.SUPPRESS)
    parser.add_argument("--child-root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child, args.child_profile, args.child_root)
    root = str(Path(args.onnxrep_root).resolve()) if args.onnxrep_root else None
    chains = [int(n) for n in args.chains.split(",") if n.strip()]

    record: dict[str, Any] = {
        "machine": _common.machine(), "versions": _common.versions(),
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None
                                                            else argv),
        "onnxrep_root": root or str(_common.ROOT),
        "goals": {"speed_vs_onnxslim": SPEED_GOAL, "scaling_10x": SCALING_GOAL,
                  "memory_vs_size": MEMORY_GOAL},
    }
    with contextlib.ExitStack() as stack:
        folder = _common.work_dir(stack, args.dir, "onnxrep-speed-")
        if not args.keep:
            stack.callback(_cleanup, folder)
        models = {"big": (args.channels, args.blocks)}
        models.update({f"chain{n}": (args.chain_channels, n) for n in chains})
        record["models"] = {}
        with get_context("spawn").Pool(1) as pool:  # its memory goes back when it exits
            for name, (c, b) in models.items():
                path = folder / f"{name}.onnx"
                if path.exists() and args.keep:
                    record["models"][name] = {"channels": c, "blocks": b,
                                              "file_bytes": path.stat().st_size}
                else:
                    print(f"generating {name}: {b} blocks x {c} channels", file=sys.stderr,
                          flush=True)
                    record["models"][name] = pool.apply(generate, (str(path), c, b))

        # (a) + (c): big, tools interleaved ABBA
        src, dst = folder / "big.onnx", folder / "big.out.onnx"
        tools = ["onnxrep", "onnxslim", *(["onnxsim"] if args.with_onnxsim else [])]
        cmds = commands(src, dst, root)
        samples: dict[str, list[dict[str, Any]]] = {t: [] for t in [*tools, "phases"]}
        for r in range(args.repeats):
            for order in (tools, tools[::-1]):
                for tool in order:
                    print(f"big round {r + 1}: {tool}", file=sys.stderr, flush=True)
                    samples[tool].append(run(cmds[tool], dst, root))
        samples["phases"].append(run(cmds["phases"], dst, root))
        big = {t: summarize(s) for t, s in samples.items()}
        big["phases"]["breakdown"] = _phases(samples["phases"])
        record["big"] = big
        rep, slim = big["onnxrep"]["wall_s"], big["onnxslim"]["wall_s"]
        size = record["models"]["big"]["file_bytes"]
        peak = big["onnxrep"]["peak_rss_bytes"]
        record["results"] = {
            "speed_ratio": rep / slim if rep and slim else None,
            "memory_ratio": peak / size if peak else None,
        }

        # (b): chains
        record["chains"] = {}
        for n in chains:
            src, dst = folder / f"chain{n}.onnx", folder / f"chain{n}.out.onnx"
            cmds = commands(src, dst, root)
            entry: dict[str, Any] = {}
            print(f"chain{n}", file=sys.stderr, flush=True)
            entry["onnxrep"] = summarize([run(cmds["onnxrep"], dst, root) for _ in range(2)])
            phases = [run(cmds["phases"], dst, root) for _ in range(2)]
            entry["phases"] = summarize(phases)
            entry["phases"]["breakdown"] = _phases(phases)
            if args.slim_chains:
                entry["onnxslim"] = summarize([run(cmds["onnxslim"], dst)])
            record["chains"][str(n)] = entry
        if len(chains) >= 2:
            lo, hi = str(min(chains)), str(max(chains))
            a = record["chains"][lo]["phases"]["breakdown"].get("in_process_s")
            b = record["chains"][hi]["phases"]["breakdown"].get("in_process_s")
            a_cli = record["chains"][lo]["onnxrep"]["wall_s"]
            b_cli = record["chains"][hi]["onnxrep"]["wall_s"]
            record["results"].update({
                "scaling_blocks": int(hi) / int(lo),
                "scaling_ratio": b / a if a and b else None,
                "scaling_ratio_cli": b_cli / a_cli if a_cli and b_cli else None,
            })

        if args.profile:
            record["profiles"] = {}
            for name in ("big", f"chain{max(chains)}" if chains else None):
                if name is None:
                    continue
                prof = folder / f"{name}.prof"
                print(f"profiling {name}", file=sys.stderr, flush=True)
                run([*commands(folder / f"{name}.onnx", folder / f"{name}.out.onnx",
                               root)["phases"], "--child-profile", str(prof)],
                    folder / f"{name}.out.onnx")
                record["profiles"][name] = profile_top(str(prof), args.top)

    res = record["results"]
    res["speed_ok"] = res["speed_ratio"] is not None and res["speed_ratio"] <= SPEED_GOAL
    res["memory_ok"] = res["memory_ratio"] is not None and res["memory_ratio"] <= MEMORY_GOAL
    res["scaling_ok"] = (res.get("scaling_ratio") is not None
                         and res["scaling_ratio"] <= SCALING_GOAL * res["scaling_blocks"] / 10)
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    print(report(record))
    return 0 if res["speed_ok"] and res["memory_ok"] and res["scaling_ok"] else 1


def _phases(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each phase over the ``--child`` runs that printed their JSON."""
    parsed = []
    for s in samples:
        for line in reversed(s["stdout"]):
            with contextlib.suppress(ValueError):
                parsed.append(json.loads(line))
                break
    keys = ("import_s", "load_s", "optimize_s", "save_s", "in_process_s")
    out: dict[str, Any] = {k: statistics.median(p[k] for p in parsed) for k in keys if parsed}
    if parsed:
        out["package"] = parsed[0].get("package")
    return out


def _cleanup(folder: Path) -> None:
    for p in folder.glob("*.onnx*"):
        p.unlink(missing_ok=True)
    for p in folder.glob("*.prof"):
        p.unlink(missing_ok=True)


def report(record: dict[str, Any]) -> str:
    """Markdown: the goals, then the figures behind them, then the profiles."""
    res, big, models = record["results"], record["big"], record["models"]
    size = models["big"]["file_bytes"]

    def yes(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        "| goal | measured | target | |",
        "|---|---:|---:|---|",
        f"| (a) onnxrep / onnxslim wall time, {_common.fmt_bytes(size)} model | "
        f"{_r(res['speed_ratio'])}x | <= {SPEED_GOAL}x | {yes(res['speed_ok'])} |",
    ]
    if res.get("scaling_ratio") is not None:
        lines.append(
            f"| (b) time for {res['scaling_blocks']:.0f}x the blocks (in-process; as a process "
            f"{_r(res['scaling_ratio_cli'])}x) | {_r(res['scaling_ratio'])}x | "
            f"<= {SCALING_GOAL * res['scaling_blocks'] / 10:g}x | {yes(res['scaling_ok'])} |")
    lines += [
        f"| (c) peak RSS / model size, onnxrep on the {_common.fmt_bytes(size)} model | "
        f"{_r(res['memory_ratio'])}x | <= {MEMORY_GOAL}x | {yes(res['memory_ok'])} |",
        "",
        f"Big model: {models['big']['blocks']} blocks x {models['big']['channels']} channels, "
        f"{_common.fmt_bytes(size)} ({size:,} bytes).",
        "",
        "| tool (fresh process) | wall s (median) | min | peak RSS | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    for tool, s in big.items():
        if tool == "phases":
            continue
        lines.append(f"| {tool} | {_r(s['wall_s'])} | {_r(s['wall_min_s'])} | "
                     f"{_common.fmt_bytes(s['peak_rss_bytes'])} | {s['runs']} "
                     f"{'(' + str(s['failed']) + ' failed)' if s['failed'] else ''}|")
    lines += ["", "onnxrep phases (in one process, seconds):", "",
              "| model | import | load | optimize | save | load+optimize+save | CLI wall |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    rows = [("big", big["phases"]["breakdown"], big["onnxrep"]["wall_s"])]
    rows += [(f"chain{n}", c["phases"]["breakdown"], c["onnxrep"]["wall_s"])
             for n, c in record["chains"].items()]
    for name, ph, cli in rows:
        lines.append(f"| {name} | " + " | ".join(
            _r(ph.get(k)) for k in ("import_s", "load_s", "optimize_s", "save_s",
                                    "in_process_s")) + f" | {_r(cli)} |")
    slim = [(n, c["onnxslim"]) for n, c in record["chains"].items() if "onnxslim" in c]
    if slim:
        lines += ["", "onnxslim on the chains: " + ", ".join(
            f"chain{n} {_r(s['wall_s'])} s" for n, s in slim)]
    for name, tops in record.get("profiles", {}).items():
        lines += ["", f"cProfile, onnxrep load+optimize+save on {name}, by cumulative time:",
                  "", "```", *tops["cumulative"], "```", "", "by own time:", "", "```",
                  *tops["tottime"], "```"]
    return "\n".join(lines) + "\n"


def _r(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
