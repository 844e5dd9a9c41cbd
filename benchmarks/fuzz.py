"""Fuzz onnxrep with random graphs (tests/fuzzgraphs.py) at scale, and record what happened.

    python benchmarks/fuzz.py [--examples 10000] [--jobs 2] [--seed 0] [--max-steps 12]
                              [--include-known] [--out DIR] [--json FILE]

Every example is one generated model; the property (``tests.fuzzgraphs.check``) is: optimize
refuses cleanly (OnnxrepError) or returns a model that passes the full checker, keeps the
interface and every original initializer, matches the input in onnxruntime at
ORT_DISABLE_ALL within ``tests.fuzzgraphs.TOLERANCES`` (also at other sizes of dynamic dims),
and is left byte-identical by a second optimize. Unlike the test, a failing example does not
stop the run: it is counted, saved to ``--out`` (model, inputs, description) and the run goes
on. ``--jobs`` worker processes each run ``examples / jobs`` examples from their own seed.
Constructs of open bugs (``KNOWN_BUGS``) are left out unless ``--include-known``.

Prints progress, then the counts by outcome, the folds applied by pattern, the failures by
kind with their first lines, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _worker(job: int, examples: int, seed: int, max_steps: int, include_known: bool,
            out: str, every: int) -> dict:
    import numpy as np
    import onnxruntime
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from tests.fuzzgraphs import KNOWN_BUGS, check, fuzz_cases

    onnxruntime.set_default_logger_severity(3)  # constant folding's warnings, one per model
    kinds: Counter[str] = Counter()
    folds: Counter[str] = Counter()
    features: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    failures: list[dict] = []
    nodes: list[int] = []
    start = time.perf_counter()
    exclude = frozenset() if include_known else KNOWN_BUGS

    @hypothesis_seed(seed + job)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(fuzz_cases(exclude=exclude, max_steps=max_steps))
    def run(case) -> None:
        outcome = check(case)
        kinds[outcome.kind] += 1
        folds.update(outcome.folds)
        features.update(case.features)
        features[f"dtype {case.dtype}"] += 1
        nodes.append(len(case.model.graph.node))
        if outcome.kind == "refused":
            refusals[outcome.detail.split(":")[0][:120]] += 1
        if outcome.failed:
            n = sum(kinds.values())
            folder = Path(out) / f"job{job}-{n:06d}-{outcome.kind}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "model.onnx").write_bytes(case.model.SerializeToString())
            np.savez(folder / "inputs.npz", **case.feeds)
            (folder / "README.txt").write_text(f"{outcome.kind}\n{outcome.detail}\n\n{case!r}\n")
            failures.append({"kind": outcome.kind, "detail": outcome.detail.splitlines()[0][:300],
                             "features": sorted(case.features), "saved": str(folder)})
        done = sum(kinds.values())
        if done % every == 0:
            rate = done / (time.perf_counter() - start)
            print(f"  [job {job}] {done}/{examples} examples, {rate:.1f}/s, "
                  f"{dict(sorted(kinds.items()))}", flush=True)

    run()
    return {"kinds": kinds, "folds": folds, "features": features, "refusals": refusals,
            "failures": failures, "nodes": nodes, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples in all")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (job i uses seed + i)")
    parser.add_argument("--max-steps", type=int, default=12, help="ops/blocks per graph at most")
    parser.add_argument("--include-known", action="store_true",
                        help="also generate the constructs of open bugs (KNOWN_BUGS)")
    parser.add_argument("--out", default="/tmp/onnxrep-fuzz", help="folder for failing cases")
    parser.add_argument("--json", help="write the summary as JSON to this file")
    parser.add_argument("--every", type=int, default=500, help="progress every N examples")
    args = parser.parse_args(argv)

    jobs = max(1, args.jobs)
    shares = [args.examples // jobs + (1 if i < args.examples % jobs else 0) for i in range(jobs)]
    known = "included" if args.include_known else "left out"
    print(f"fuzzing {args.examples} examples in {jobs} job(s), seed {args.seed}, "
          f"max {args.max_steps} steps, known bugs {known}", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_worker, i, n, args.seed, args.max_steps, args.include_known,
                               args.out, args.every) for i, n in enumerate(shares) if n]
        parts = [f.result() for f in futures]
    wall = time.perf_counter() - start

    kinds, folds, features, refusals = Counter(), Counter(), Counter(), Counter()
    failures, nodes = [], []
    for p in parts:
        kinds.update(p["kinds"])
        folds.update(p["folds"])
        features.update(p["features"])
        refusals.update(p["refusals"])
        failures += p["failures"]
        nodes += p["nodes"]
    total = sum(kinds.values())
    summary = {
        "examples": total,
        "outcomes": dict(sorted(kinds.items())),
        "mismatches": kinds["mismatch"],
        "crashes": sum(kinds[k] for k in ("crash", "checker", "internal", "not-idempotent")),
        "invalid_inputs": kinds["invalid"],
        "refusals": kinds["refused"],
        "refusal_reasons": dict(refusals.most_common(10)),
        "folds_by_pattern": dict(folds.most_common()),
        "examples_with_feature": dict(sorted(features.items())),
        "nodes_per_model": {"median": _percentile(nodes, 50), "p90": _percentile(nodes, 90),
                            "max": max(nodes, default=0)},
        "failures": failures,
        "wall_seconds": round(wall, 1),
        "jobs": jobs,
        "seed": args.seed,
        "max_steps": args.max_steps,
        "known_bugs_included": args.include_known,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}, {platform.platform()}",
    }
    _print(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if any(f for f in failures if f["kind"] != "invalid") else 0


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))])


def _print(s: dict) -> None:
    print(f"\n{s['examples']} examples in {s['wall_seconds']} s "
          f"({s['examples'] / max(s['wall_seconds'], 1e-9):.1f}/s, {s['jobs']} job(s))")
    print(f"  outcomes     {s['outcomes']}")
    print(f"  mismatches   {s['mismatches']}")
    print(f"  crashes      {s['crashes']} (crash, checker, internal, not-idempotent)")
    print(f"  refusals     {s['refusals']}")
    print(f"  invalid      {s['invalid_inputs']} (generator produced a model onnxruntime rejects)")
    print(f"  folds        {s['folds_by_pattern']}")
    print(f"  nodes/model  {s['nodes_per_model']}")
    for f in s["failures"][:20]:
        print(f"  FAIL {f['kind']}: {f['detail']}  ({f['saved']})")


if __name__ == "__main__":
    sys.exit(main())
