"""load → canonicalize → passes to a fixpoint → export beside the original's metadata → check.

The input ModelProto is never modified: the graph is imported into onnx-graphsurgeon (whose
constants read the original tensors lazily) and a new ModelProto is built from it. Everything
the passes do not rewrite is carried over from the original: model and graph metadata, opset
imports, functions, graph inputs/outputs/value_info protos, and the NodeProtos of untouched
nodes (so their subgraphs, doc strings and attribute order stay exactly as they were). A model
that nothing applies to comes back byte-identical.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from onnxrep import io
from onnxrep.errors import OnnxrepError
from onnxrep.graph import (
    Names,
    ShapeInfo,
    canonicalize,
    release_overridable,
    subgraph_references,
)
from onnxrep.passes import FAMILIES, PASSES, PassState, constants
from onnxrep.result import Fold, ModelStats, OptimizeResult, Skip

__all__ = ["optimize"]

def optimize(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    skip: Iterable[str] = (),
    max_rounds: int = 8,
) -> OptimizeResult:
    """Fold every exact re-parameterization in ``model`` (a ModelProto or a path).

    ``skip`` names pattern families to leave alone (see ``onnxrep.passes.FAMILIES``).
    Returns an :class:`OptimizeResult` whose ``.model`` is a new ModelProto.
    """
    start = time.perf_counter()
    original = io.load(model) if isinstance(model, (str, Path, os.PathLike)) else model
    if not isinstance(original, onnx.ModelProto):
        raise OnnxrepError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")
    skipped_families = frozenset(skip)
    unknown = sorted(skipped_families - set(FAMILIES))
    if unknown:
        raise OnnxrepError(f"unknown pattern(s) {unknown}; choose from {sorted(FAMILIES)}")
    io.validate(original)

    before = ModelStats.of(original)
    graph = gs.import_onnx(original)
    release_overridable(graph, original)
    pinned = subgraph_references(graph) | {t.name for t in graph.outputs}
    opset = next(o.version for o in original.opset_import if o.domain in ("", "ai.onnx"))
    state = PassState(
        ShapeInfo.infer(original), pinned, Names.of(original), skipped_families, opset
    )
    removed = canonicalize(graph, pinned)
    folded = 0
    if constants.FAMILY not in skipped_families:
        for _ in range(constants.MAX_ROUNDS):
            count = constants.fold(graph, state.shapes)
            if not count:
                break
            folded += count
            state.shapes = ShapeInfo.infer(export(graph, original))  # folding exposes shapes

    applied: list[Fold] = []
    skipped: list[Skip] = []
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007  (the count is reported)
        folds_this_round: list[Fold] = []
        skipped = []
        for family, run in PASSES:
            if family in skipped_families:
                continue
            folds, skips = run(graph, state)
            folds_this_round += folds
            skipped += skips
        applied += folds_this_round
        if not folds_this_round:
            break

    if not applied and not removed and not folded:
        result_model = onnx.ModelProto()
        result_model.CopyFrom(original)
    else:
        result_model = export(graph, original)
        _check(result_model, original)
    return OptimizeResult(
        model=result_model,
        applied=applied,
        skipped=_unique(skipped),
        before=before,
        after=ModelStats.of(result_model),
        seconds=time.perf_counter() - start,
        rounds=rounds,
        notes=[
            *([f"canonicalized {removed} Identity/Constant node(s)"] if removed else []),
            *([f"folded {folded} constant node(s)"] if folded else []),
        ],
    )


def export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """A new ModelProto: ``graph``'s nodes and initializers in ``original``'s clothes."""
    exported = gs.export_onnx(graph, do_type_check=False).graph
    src = original.graph
    out = onnx.ModelProto()
    for field, value in original.ListFields():
        if field.name != "graph":
            io.copy_field(out, field.name, value)
    g = out.graph
    for field, value in src.ListFields():
        if field.name not in ("node", "initializer", "input", "output", "value_info"):
            io.copy_field(g, field.name, value)

    originals = {tuple(n.output): n for n in src.node}
    for node in exported.node:
        before = originals.get(tuple(node.output))
        same = (
            before is not None and before.op_type == node.op_type
            and before.domain == node.domain and list(before.input) == list(node.input)
        )
        g.node.append(before if same else node)
    g.initializer.extend(exported.initializer)
    present = {t.name for t in exported.initializer}
    overridable = {v.name for v in exported.input} - present
    g.initializer.extend(t for t in src.initializer if t.name in overridable)

    inputs = {v.name: v for v in src.input}
    outputs = {v.name: v for v in src.output}
    g.input.extend(inputs.get(v.name, v) for v in exported.input)
    g.output.extend(outputs.get(v.name, v) for v in exported.output)
    live = {name for n in g.node for name in n.output}
    g.value_info.extend(v for v in src.value_info if v.name in live)
    return out


def _check(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """A result that fails the checker when its input passes is a bug of ours: refuse it."""
    if not io.fits(model):
        return  # too large to check in memory; checked by path when loaded again
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        try:
            onnx.checker.check_model(original)
        except onnx.checker.ValidationError:
            return  # the input already failed the checker the same way
        first = str(e).strip().splitlines()[0]
        raise OnnxrepError(
            f"internal error: the optimized model fails onnx.checker: {first}"
        ) from None


def _unique(skips: list[Skip]) -> list[Skip]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for s in skips:
        key = (s.node, s.op, s.reason)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out
