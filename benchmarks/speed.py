"""How fast onnxrep itself is, against onnxsim, onnxslim and the cost of reading and writing.

    python benchmarks/speed.py [--parts dbb,zoo,big,scaling] [--repeats 5] [--big-repeats 3]
                               [--nets a,b] [--forms x,y] [--onnxsim-cli] [--dir DIR] [--keep]
                               [--json speed.json] [--markdown speed.md] [--root DIR]

Four parts, each with its goal; every comparison is a median over interleaved repeats (the
contenders alternate inside every round, so drift of the machine hits all alike), quoted with
its min-max.

``dbb``  DBB ResNet-18 of ``models.nets`` (TorchScript export with BN preserved: ~14k nodes,
         mostly the ScatterND/Shape/Range code of DBB's border fills). In process, on a fresh
         copy of the loaded ModelProto each run: ``onnxrep.optimize`` against
         ``onnxsim.simplify`` (its defaults). Goal: onnxrep <= 0.5x onnxsim, with the deploy
         form's node count. ``--onnxsim-cli`` also times both command lines as fresh processes
         (``onnxrep optimize IN -o OUT -q`` and ``onnxsim IN OUT``, which checks its result by
         running it: minutes on this model).
``zoo``  every network of ``models.nets`` in every export form of ``models.export``: the three
         optimizers in process, rotated each round. Goal: onnxrep <= the faster of onnxsim and
         onnxslim on every file.
``big``  a 12 x 1024-channel RepVGG training form (``_common.repvgg_stack``: 480.6 MiB in one
         protobuf file). File to file as fresh processes, ABBA: ``onnxrep optimize IN -o OUT
         -q`` against ``python speed.py --load-save IN OUT`` (``onnx.load`` then ``onnx.save``:
         the read-and-write limit). Goals: <= 1.1x the load and save; peak RSS <= 2.5x the file.
``scaling``  10x the blocks: a RepVGG chain (100 and 1,000 blocks x 8 channels, generated) and
         a DBB chain (10 and 100 ``DBBBlock(8, 8, 3)``, exported with BN preserved: border
         fills, sequential kernels, avg-pools). Load + optimize + save in a fresh process
         (imports excluded), the two depths alternating. Goal: <= 11x the time.

Models go into ``--dir`` (a temporary folder unless given; with ``--keep`` they stay there and
are reused by the next run). Exit code 0 when every goal measured is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common  # puts the repository root on sys.path

_common.use_root(None)

PARTS = ("dbb", "zoo", "big", "scaling")
DBB_GOAL = 0.5
"""onnxrep / onnxsim, in process, on DBB ResNet-18."""
ZOO_GOAL = 1.0
"""onnxrep / the faster of onnxsim and onnxslim, in process, on every network and form."""
IO_GOAL = 1.1
"""onnxrep optimize / onnx load + save, file to file, on the big model."""
MEMORY_GOAL = 2.5
"""onnxrep's peak RSS / the big model's size."""
SCALING_GOAL = 11.0
"""The time for 10x the blocks, in multiples of the time for 1x."""


# -- child processes -----------------------------------------------------------------------------


def child(src: str, dst: str) -> int:
    """``--child IN OUT``: load, optimize and save as the CLI does; print the phases as JSON."""
    import onnxrep
    from onnxrep import io

    t1 = time.perf_counter()
    model = io.load(src)
    t2 = time.perf_counter()
    result = onnxrep.optimize(model)
    t3 = time.perf_counter()
    io.save(result.model, dst)
    t4 = time.perf_counter()
    print(json.dumps({"load_s": t2 - t1, "optimize_s": t3 - t2, "save_s": t4 - t3,
                      "in_process_s": t4 - t1, "nodes": len(result.model.graph.node)}))
    return 0


def load_save(src: str, dst: str) -> int:
    """``--load-save IN OUT``: what any tool must do at least, ``onnx.load`` and ``onnx.save``."""
    import onnx

    onnx.save(onnx.load(src), dst)
    return 0


def _this(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _cli(tool: str) -> list[str]:
    """The command line of ``tool``: the console script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).with_name(tool)
    return [str(script)] if script.exists() else [sys.executable, "-m", tool]


def _process(argv: list[str], dst: Path) -> dict[str, Any]:
    """One timed process; its output is removed afterwards."""
    result = _common.timed(argv)
    for p in (dst, dst.with_name(dst.name + ".data")):
        p.unlink(missing_ok=True)
    if result["exit_code"] != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... exited {result['exit_code']}: "
                           f"{(result['stderr'] or result['stdout'] or [''])[-1]}")
    return result


def _child_json(result: dict[str, Any]) -> dict[str, Any]:
    for line in reversed(result["stdout"]):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    raise RuntimeError("the child printed no JSON")


# -- statistics ----------------------------------------------------------------------------------


def spread(samples: list[float]) -> dict[str, Any]:
    """Median, min and max of ``samples`` (seconds), and the samples themselves."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples}


def interleaved(
    contenders: dict[str, Callable[[], float]], repeats: int, warmup: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run every contender ``repeats`` times, rotating their order each round and reversing
    the rotation every other cycle (two contenders: AB BA BA AB ..., three: all six orders);
    each call returns its own time in seconds. One untimed call each first when ``warmup``."""
    names = list(contenders)
    if warmup:
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        if (r // len(names)) % 2:
            order.reverse()
        for name in order:
            times[name].append(contenders[name]())
    return {name: spread(t) for name, t in times.items()}


# -- the optimizers, in process ------------------------------------------------------------------


def _timed_optimizer(model: Any, optimize: Callable[[Any], Any], nodes: dict[str, int],
                     name: str) -> Callable[[], float]:
    import onnx

    def run() -> float:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)

        def timed() -> tuple[float, Any]:
            start = time.perf_counter()
            out = optimize(copy)
            return time.perf_counter() - start, out

        seconds, out = _common.silent(timed)
        nodes[name] = len(out.graph.node)
        return seconds

    return run


def compare_in_process(path: Path, tools: tuple[str, ...], repeats: int) -> dict[str, Any]:
    """The optimizers ``tools`` on the model at ``path``, interleaved; failures are recorded."""
    import onnx

    model = onnx.load(str(path))
    nodes: dict[str, int] = {}
    errors: dict[str, str] = {}
    contenders = {}
    every = _common.optimizers(tools)
    for name in tools:
        run = _timed_optimizer(model, every[name], nodes, name)
        try:
            run()  # the warm-up, and a tool that fails is left out of the rounds
        except Exception as e:  # a baseline's own failure is a result, not a crash
            errors[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            continue
        contenders[name] = run
    times = interleaved(contenders, repeats, warmup=False)
    return {"input_nodes": len(model.graph.node), "times": times, "nodes": nodes,
            "errors": errors}


# -- parts ---------------------------------------------------------------------------------------


def part_dbb(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from models.export import export
    from models.nets import NETWORKS

    spec = NETWORKS["dbb_resnet18"]
    net = spec.factory()
    src = _export_once(folder / "dbb_resnet18.preserve.onnx",
                       lambda p: export(net, spec.input_shape, p, "preserve"))
    deploy = _export_once(folder / "dbb_resnet18.deploy.preserve.onnx",
                          lambda p: export(net, spec.input_shape, p, "preserve", deploy=True))
    import onnx

    out: dict[str, Any] = compare_in_process(src, ("onnxrep", "onnxsim"), args.repeats)
    out["deploy_nodes"] = len(onnx.load(str(deploy)).graph.node)
    times = out["times"]
    out["ratio"] = times["onnxrep"]["median"] / times["onnxsim"]["median"]
    out["ok"] = out["ratio"] <= DBB_GOAL and out["nodes"]["onnxrep"] == out["deploy_nodes"]
    if args.onnxsim_cli:
        dst = folder / "dbb_resnet18.out.onnx"
        commands = {"onnxrep": [*_cli("onnxrep"), "optimize", str(src), "-o", str(dst), "-q"],
                    "onnxsim": [*_cli("onnxsim"), str(src), str(dst)]}
        out["cli"] = interleaved(
            {k: (lambda c=c: _process(c, dst)["wall_s"]) for k, c in commands.items()},
            args.cli_repeats, warmup=False)
    return out


def part_zoo(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from models.export import export
    from models.nets import NETWORKS

    rows = []
    for name in args.nets:
        spec, net = NETWORKS[name], None
        for form in args.forms:
            print(f"zoo: {name} {form}", file=sys.stderr, flush=True)
            src = folder / f"{name}.{form}.onnx"
            if not src.exists():
                net = net or spec.factory()
                export(net, spec.input_shape, src, form, opset=spec.opset)
            row = {"net": name, "form": form,
                   **compare_in_process(src, ("onnxrep", "onnxsim", "onnxslim"), args.repeats)}
            times = row["times"]
            baselines = [times[t]["median"] for t in ("onnxsim", "onnxslim") if t in times]
            row["ratio"] = (times["onnxrep"]["median"] / min(baselines)
                            if baselines and "onnxrep" in times else None)
            row["ok"] = row["ratio"] is not None and row["ratio"] <= ZOO_GOAL
            rows.append(row)
    return {"rows": rows, "ok": all(r["ok"] for r in rows),
            "worst": max((r["ratio"] for r in rows if r["ratio"] is not None), default=None)}


def part_big(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    src = folder / f"big{args.channels}x{args.blocks}.onnx"
    if not src.exists():
        print(f"generating {src.name}", file=sys.stderr, flush=True)
        _common.spawn(_common.save_repvgg_stack, str(src), args.channels, args.blocks)
    dst = folder / "big.out.onnx"
    commands = {"onnxrep": [*_cli("onnxrep"), "optimize", str(src), "-o", str(dst), "-q"],
                "load+save": _this("--load-save", str(src), str(dst))}
    peaks: dict[str, list[int]] = {k: [] for k in commands}

    def run(name: str) -> float:
        result = _process(commands[name], dst)
        if result["peak_rss_bytes"]:
            peaks[name].append(result["peak_rss_bytes"])
        return result["wall_s"]

    times = interleaved({k: (lambda k=k: run(k)) for k in commands}, args.big_repeats,
                        warmup=True)
    size = src.stat().st_size
    phases = [_child_json(_process(_this("--child", str(src), str(dst)), dst))
              for _ in range(2)]
    ratio = times["onnxrep"]["median"] / times["load+save"]["median"]
    memory = max(peaks["onnxrep"]) / size if peaks["onnxrep"] else None
    return {
        "file_bytes": size, "channels": args.channels, "blocks": args.blocks, "times": times,
        "peak_rss_bytes": {k: max(v) if v else None for k, v in peaks.items()},
        "phases": {k: statistics.median(p[k] for p in phases) for k in phases[0]},
        "ratio": ratio, "memory_ratio": memory,
        "ok": ratio <= IO_GOAL and memory is not None and memory <= MEMORY_GOAL,
    }


def part_scaling(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    chains = {
        "repvgg": {n: folder / f"repvgg_chain{n}.onnx" for n in (100, 1000)},
        "dbb": {n: folder / f"dbb_chain{n}.onnx" for n in (10, 100)},
    }
    for n, path in chains["repvgg"].items():
        if not path.exists():
            _common.spawn(_common.save_repvgg_stack, str(path), 8, n)
    for n, path in chains["dbb"].items():
        _export_once(path, lambda p, n=n: _export_dbb_chain(p, n))
    out: dict[str, Any] = {}
    for kind, paths in chains.items():
        print(f"scaling: {kind}", file=sys.stderr, flush=True)
        dst = folder / f"{kind}_chain.out.onnx"
        nodes: dict[int, int] = {}

        def run(n: int, path: Path, dst: Path = dst, nodes: dict[int, int] = nodes) -> float:
            phases = _child_json(_process(_this("--child", str(path), str(dst)), dst))
            nodes[n] = phases["nodes"]
            return phases["in_process_s"]

        times = interleaved({str(n): (lambda n=n, p=p: run(n, p)) for n, p in paths.items()},
                            args.repeats, warmup=False)
        small, large = sorted(paths)
        ratio = times[str(large)]["median"] / times[str(small)]["median"]
        out[kind] = {
            "blocks": [small, large], "times": times, "ratio": ratio,
            "input_nodes": {n: _node_count(p) for n, p in paths.items()},
            "output_nodes": nodes, "ok": ratio <= SCALING_GOAL * (large / small) / 10,
        }
    out["ok"] = all(v["ok"] for v in out.values())
    return out


def _export_dbb_chain(path: Path, blocks: int) -> Path:
    import torch

    from models.blocks import DBBBlock
    from models.export import export
    from models.nets import randomize_bn

    torch.manual_seed(blocks)
    net = randomize_bn(torch.nn.Sequential(*[DBBBlock(8, 8, 3) for _ in range(blocks)]), blocks)
    return export(net.eval(), (1, 8, 16, 16), path, "preserve")


def _export_once(path: Path, make: Callable[[Path], Any]) -> Path:
    if not path.exists():
        make(path)
    return path


def _node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


# -- report --------------------------------------------------------------------------------------


def _s(t: dict[str, Any] | None) -> str:
    """``median (min-max)`` in seconds, or ms below a second."""
    if t is None:
        return "n/a"
    if t["max"] < 1:
        return f"{t['median'] * 1e3:.1f} ({t['min'] * 1e3:.1f}-{t['max'] * 1e3:.1f}) ms"
    return f"{t['median']:.2f} ({t['min']:.2f}-{t['max']:.2f}) s"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def markdown(record: dict[str, Any]) -> str:
    lines = ["| goal | measured | target | |", "|---|---:|---:|---|"]
    dbb, zoo, big, scaling = (record.get(p) for p in PARTS)
    if dbb:
        lines.append(f"| DBB ResNet-18 (preserve), onnxrep / onnxsim in process | "
                     f"{dbb['ratio']:.2f}x, {dbb['nodes'].get('onnxrep')} nodes | "
                     f"<= {DBB_GOAL}x, {dbb['deploy_nodes']} nodes | {_met(dbb['ok'])} |")
    if zoo:
        bad = sum(not r["ok"] for r in zoo["rows"])
        lines.append(f"| every network x form ({len(zoo['rows'])}), onnxrep / faster of onnxsim "
                     f"and onnxslim, worst | {zoo['worst']:.2f}x ({bad} above) | "
                     f"<= {ZOO_GOAL}x | {_met(zoo['ok'])} |")
    if big:
        size = _common.fmt_bytes(big["file_bytes"])
        lines.append(f"| {size} model, onnxrep / onnx load+save, file to file | "
                     f"{big['ratio']:.2f}x | <= {IO_GOAL}x | {_met(big['ratio'] <= IO_GOAL)} |")
        mem = big["memory_ratio"]
        lines.append(f"| {size} model, onnxrep peak RSS / file size | "
                     f"{'n/a' if mem is None else f'{mem:.2f}x'} | <= {MEMORY_GOAL}x | "
                     f"{_met(mem is not None and mem <= MEMORY_GOAL)} |")
    if scaling:
        for kind in ("repvgg", "dbb"):
            s = scaling[kind]
            a, b = s["blocks"]
            lines.append(f"| {kind} chain, time for {b} / {a} blocks | {s['ratio']:.2f}x | "
                         f"<= {SCALING_GOAL * (b / a) / 10:g}x | {_met(s['ok'])} |")
    lines += ["", "Times: median (min-max) of interleaved repeats."]
    if dbb:
        lines += ["", f"DBB ResNet-18, {dbb['input_nodes']} nodes, in process:", "",
                  "| tool | time | nodes after |", "|---|---:|---:|"]
        for tool, t in dbb["times"].items():
            lines.append(f"| {tool} | {_s(t)} | {dbb['nodes'].get(tool)} |")
        for tool, t in dbb.get("cli", {}).items():
            lines.append(f"| {tool} (command line, fresh process) | {_s(t)} | |")
    if big:
        lines += ["", f"{big['blocks']} blocks x {big['channels']} channels, "
                  f"{_common.fmt_bytes(big['file_bytes'])}, fresh processes:", "",
                  "| process | wall time | peak RSS |", "|---|---:|---:|"]
        for name, t in big["times"].items():
            lines.append(f"| {name} | {_s(t)} | "
                         f"{_common.fmt_bytes(big['peak_rss_bytes'][name])} |")
        ph = big["phases"]
        lines += ["", "onnxrep in one process (median of 2): " + ", ".join(
            f"{k[:-2]} {ph[k]:.2f} s" for k in ("load_s", "optimize_s", "save_s"))]
    if scaling:
        lines += ["", "Chains, load + optimize + save in a fresh process (imports excluded):",
                  "", "| chain | blocks | nodes in | nodes out | time |",
                  "|---|---:|---:|---:|---:|"]
        for kind in ("repvgg", "dbb"):
            s = scaling[kind]
            for n in s["blocks"]:
                lines.append(f"| {kind} | {n} | {s['input_nodes'][n]} | "
                             f"{s['output_nodes'].get(n)} | {_s(s['times'][str(n)])} |")
    if zoo:
        lines += ["", "Every network and export form, in process:", "",
                  "| network | form | nodes | onnxrep | onnxsim | onnxslim | ratio |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in zoo["rows"]:
            t = r["times"]
            cells = [_s(t.get(k)) if k in t else f"failed: {r['errors'].get(k, '')[:40]}"
                     for k in ("onnxrep", "onnxsim", "onnxslim")]
            ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
            lines.append(f"| {r['net']} | {r['form']} | {r['input_nodes']} | "
                         + " | ".join(cells) + f" | {ratio}{'' if r['ok'] else ' !'} |")
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    from models.export import FORMS
    from models.nets import NETWORKS

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parts", type=_csv, default=list(PARTS), help="which parts to run")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved rounds per in-process comparison and chain")
    parser.add_argument("--big-repeats", type=int, default=3, help="ABBA rounds on big")
    parser.add_argument("--cli-repeats", type=int, default=1,
                        help="rounds of the command lines on DBB ResNet-18 (--onnxsim-cli)")
    parser.add_argument("--onnxsim-cli", action="store_true",
                        help="also time onnxsim's and onnxrep's command lines on DBB ResNet-18")
    parser.add_argument("--nets", type=_csv, default=list(NETWORKS))
    parser.add_argument("--forms", type=_csv, default=list(FORMS))
    parser.add_argument("--channels", type=int, default=1024, help="width of the big model")
    parser.add_argument("--blocks", type=int, default=12, help="depth of the big model")
    parser.add_argument("--dir", help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the models in --dir")
    parser.add_argument("--json", default="speed.json", help="write the record here")
    parser.add_argument("--markdown", help="also write the Markdown tables here")
    parser.add_argument("--root", metavar="DIR",
                        help="import onnxrep and models from DIR (a snapshot of a commit)")
    parser.add_argument("--child", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--load-save", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    if args.load_save:
        return load_save(*args.load_save)
    unknown = ({p for p in args.parts if p not in PARTS}
               | {n for n in args.nets if n not in NETWORKS}
               | {f for f in args.forms if f not in FORMS})
    if unknown:
        parser.error(f"unknown part, network or form: {', '.join(sorted(unknown))}")

    record: dict[str, Any] = {
        "machine": _common.machine(), "versions": _common.versions(),
        "revision": _common.revision(), "command": "python benchmarks/speed.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
    }
    with contextlib.ExitStack() as stack:
        folder = _common.work_dir(stack, args.dir, "onnxrep-speed-")
        if args.dir and not args.keep:
            stack.callback(_cleanup, folder)
        steps = {"dbb": part_dbb, "zoo": part_zoo, "big": part_big, "scaling": part_scaling}
        for part in args.parts:
            print(f"part {part}", file=sys.stderr, flush=True)
            record[part] = steps[part](folder, args)
            Path(args.json).write_text(json.dumps(record, indent=1, default=str) + "\n")
    text = markdown(record)
    if args.markdown:
        Path(args.markdown).write_text(text)
    print(text)
    return 0 if all(record[p]["ok"] for p in args.parts) else 1


def _cleanup(folder: Path) -> None:
    for p in folder.glob("*.onnx*"):
        p.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
