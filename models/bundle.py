"""Regenerate the small training-form models bundled in ``models/``.

``python -m models.bundle`` writes ``models/{net}.onnx`` for every net in ``BUNDLED``, in the
``preserve`` form (BatchNormalization nodes kept), and refuses any file of ``MAX_BYTES`` or more.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from models.export import export
from models.nets import NETWORKS

__all__ = ["BUNDLED", "FORM", "MAX_BYTES", "bundle", "main"]

BUNDLED = ("convbn_stack", "repvgg")
FORM = "preserve"
MAX_BYTES = 2 * 1024 * 1024
HERE = Path(__file__).resolve().parent


def bundle(directory: str | Path = HERE) -> list[Path]:
    """Export every bundled net as ``directory/{net}.onnx`` and check its size."""
    written = []
    for name in BUNDLED:
        spec = NETWORKS[name]
        path = export(spec.factory(), spec.input_shape, Path(directory) / f"{name}.onnx", FORM)
        size = path.stat().st_size
        if size >= MAX_BYTES:
            path.unlink()
            raise RuntimeError(f"{path} is {size} bytes, over the {MAX_BYTES}-byte bundle limit")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.bundle", description=__doc__)
    parser.add_argument("-d", "--directory", default=str(HERE), help="output directory")
    args = parser.parse_args(argv)
    for path in bundle(args.directory):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
