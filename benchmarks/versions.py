"""onnxrep against an earlier version of itself, paired in one process.

    python benchmarks/versions.py --base REV --dir DIR NET.FORM [NET.FORM ...]
                                  [--rounds 21] [--audit]

``REV`` (a git revision of this repository) is unpacked into a temporary folder as the
package ``onnxrep_base`` (its imports renamed), so both versions optimize the same loaded
ModelProto in the same process, alternating within every round (``speed.interleaved``:
AB BA BA AB ...): the drift of this machine hits both alike. ``DIR`` holds the exports as
``NET.FORM.onnx`` (``speed.py --dir DIR --keep`` writes them). Prints per file the medians of
both, the ratio of the medians and the median of the per-round ratios, and whether the two
wrote byte-identical models. The audit is off unless ``--audit`` (its helper process runs on
the other core and adds its own noise).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
from speed import interleaved

ROOT = Path(__file__).resolve().parents[1]


def unpack(rev: str, folder: Path) -> None:
    """``onnxrep`` at ``rev`` as the package ``onnxrep_base`` in ``folder``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "onnxrep"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    package = folder / "onnxrep"
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bonnxrep\b(?=\.|\s+import|$)", "onnxrep_base", text,
                               flags=re.MULTILINE))
    package.rename(folder / "onnxrep_base")


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="NET.FORM names of exports in --dir")
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--dir", required=True, type=Path, help="folder of the exports")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--audit", action="store_true", help="run the fusion audit in both")
    args = parser.parse_args(argv)

    import onnx

    import onnxrep

    with tempfile.TemporaryDirectory() as tmp:
        unpack(args.base, Path(tmp))
        sys.path.insert(0, tmp)
        import onnxrep_base  # type: ignore[import-not-found]

        for name in args.files:
            model = onnx.load(str(args.dir / f"{name}.onnx"))
            runs = {
                "base": lambda m=model: onnxrep_base.optimize(m, audit=args.audit),
                "now": lambda m=model: onnxrep.optimize(m, audit=args.audit),
            }
            for run in runs.values():
                run()  # and interleaved's own warm-up call: two untimed runs each
            spreads = interleaved({k: (lambda f=f: _seconds(f)) for k, f in runs.items()},
                                  args.rounds)
            times = {k: spread["samples"] for k, spread in spreads.items()}
            base, now = (statistics.median(times[k]) for k in ("base", "now"))
            paired = statistics.median(a / b for a, b in zip(times["now"], times["base"],
                                                             strict=True))
            same = (runs["base"]().model.SerializeToString()
                    == runs["now"]().model.SerializeToString())
            print(f"{name:28} base {1e3 * base:8.1f} ms  now {1e3 * now:8.1f} ms  "
                  f"now/base {now / base:.3f}  paired {paired:.3f}  "
                  f"{'byte-identical' if same else 'DIFFERENT'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
