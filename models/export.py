"""Export the networks of ``models.nets`` to ONNX in the forms users meet.

Forms (``FORMS``):

- ``preserve``: TorchScript exporter, ``training=TrainingMode.PRESERVE`` with the net in eval
  mode, opset 17. The exporter's Conv+BN fusion only runs in ``EVAL`` mode, so every
  ``BatchNormalization`` survives (inference mode, ``training_mode=0``, one output). Constant
  folding (left at its default, on) keeps BN nodes too; it only folds constant subexpressions such
  as DBB's pad values ``beta - mean * gamma / sqrt(var + eps)`` into initializers.
- ``torchscript``: default TorchScript export (``EVAL``), opset 17: Conv+BN pairs are fused by
  the exporter; BNs that follow no Conv (identity branches, DBB's BN after an average pool) stay.
- ``dynamo``: ``torch.onnx.export(..., dynamo=True, optimize=False)``, opset 18 (the opset the
  dynamo exporter's op library is written in): every BN survives, plus the raw decomposition.
- ``dynamo-opt``: the same with the exporter's default optimizer (``optimize=True``), which
  folds Conv+BN and constant subgraphs.

A net may set another opset for the two TorchScript forms (``NetSpec.opset``, e.g. 14, where
LayerNorm has no ONNX op and is written as primitive ops); the dynamo forms stay at opset 18.

Every export is a single self-contained ``.onnx`` file (no external data), with input ``input``
and output ``output``, and is deterministic: the same bytes on every run and in every checkout
(the dynamo exporter's per-node Python stack traces, which hold absolute paths, are dropped; its
other node metadata is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from models.nets import NETWORKS, deploy_copy

__all__ = ["DYNAMO_OPSET", "FORMS", "TORCHSCRIPT_OPSET", "export", "export_all", "main"]

FORMS = ("preserve", "torchscript", "dynamo", "dynamo-opt")
TORCHSCRIPT_OPSET = 17
DYNAMO_OPSET = 18


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings, progress prints and log lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export(
    net: nn.Module,
    input_shape: Sequence[int],
    path: str | os.PathLike[str],
    form: str,
    deploy: bool = False,
    dynamic_batch: bool = False,
    opset: int | None = None,
) -> Path:
    """Write ``net`` (or ``deploy_copy(net)`` when ``deploy``) as ONNX in ``form`` to ``path``.

    The net is exported in eval mode with a float32 zero input of ``input_shape``; with
    ``dynamic_batch`` axis 0 of input and output is symbolic (named ``batch``). ``opset`` is the
    TorchScript forms' opset (default ``TORCHSCRIPT_OPSET``); the dynamo forms always use
    ``DYNAMO_OPSET``. ``net`` itself is not modified (its training flag is restored).
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = deploy_copy(net) if deploy else net
    was_training = model.training
    model.eval()
    shape = list(input_shape)
    if dynamic_batch and form.startswith("dynamo"):
        # torch.export specializes a size-1 axis to a constant, so trace with batch 2. The
        # TorchScript tracer keeps batch 1: DBB's slice assignments bake the traced batch into
        # Expand/Reshape shapes, and only a traced 1 broadcasts to every batch size.
        shape[0] = 2
    args = (torch.zeros(shape, dtype=torch.float32),)
    names = {"input_names": ["input"], "output_names": ["output"]}
    try:
        with _quiet(), torch.no_grad():
            if form in ("preserve", "torchscript"):
                torch.onnx.export(
                    model,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=TORCHSCRIPT_OPSET if opset is None else opset,
                    training=(
                        torch.onnx.TrainingMode.PRESERVE
                        if form == "preserve"
                        else torch.onnx.TrainingMode.EVAL
                    ),
                    dynamic_axes=(
                        {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
                    ),
                    **names,
                )
            else:
                program = torch.onnx.export(
                    model,
                    args,
                    dynamo=True,
                    optimize=form == "dynamo-opt",
                    opset_version=DYNAMO_OPSET,
                    dynamic_shapes=(({0: torch.export.Dim("batch")},) if dynamic_batch else None),
                    verbose=False,
                    **names,
                )
                assert program is not None
                for node in program.model.graph.all_nodes():
                    # Python stack traces carry absolute source paths: drop them so the bytes do
                    # not depend on where the repository is checked out.
                    node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
                program.save(str(path), external_data=False)
    finally:
        model.train(was_training)
    return path


def export_all(
    directory: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
) -> list[Path]:
    """Write ``{net}.{form}.onnx`` and ``{net}.deploy.{form}.onnx`` for every net and form."""
    directory = Path(directory)
    written = []
    for name in names or list(NETWORKS):
        spec = NETWORKS[name]
        net = spec.factory()
        for form in FORMS:
            for deploy in (False, True):
                stem = f"{name}.deploy" if deploy else name
                path = directory / f"{stem}.{form}.onnx"
                written.append(
                    export(net, spec.input_shape, path, form, deploy, dynamic_batch, spec.opset)
                )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.export", description="Export the model zoo of models.nets to ONNX."
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--net", choices=sorted(NETWORKS), help="one network to export")
    target.add_argument("--all", metavar="DIR", help="export every net in every form into DIR")
    parser.add_argument("--form", choices=FORMS, default="preserve")
    parser.add_argument("--deploy", action="store_true", help="export the deploy form")
    parser.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis")
    parser.add_argument("-o", "--output", help="output .onnx path (with --net)")
    args = parser.parse_args(argv)
    if args.all:
        for path in export_all(args.all, dynamic_batch=args.dynamic_batch):
            print(path)
        return 0
    if not args.output:
        parser.error("--net needs -o/--output")
    spec = NETWORKS[args.net]
    path = export(
        spec.factory(),
        spec.input_shape,
        args.output,
        args.form,
        deploy=args.deploy,
        dynamic_batch=args.dynamic_batch,
        opset=spec.opset,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
