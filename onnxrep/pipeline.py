"""load → canonicalize → passes to a fixpoint → export beside the original's metadata → check.

The input ModelProto is never modified: the graph is imported into onnx-graphsurgeon (whose
constants read the original tensors lazily) and a new ModelProto is built from it. Everything
the passes do not rewrite is carried over from the original: model and graph metadata, opset
imports, functions, graph inputs/outputs/value_info protos, and the NodeProtos of untouched
nodes (so their subgraphs, doc strings and attribute order stay exactly as they were). A model
that nothing applies to comes back byte-identical, but for graph outputs that had no type or
shape: they get the ones shape inference gives (``io.output_types``), with a warning. Before
IR 4 every initializer, a new one too, is also a graph input.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.logger import G_LOGGER

from onnxrep import idioms, io
from onnxrep.errors import OnnxrepError, one_line
from onnxrep.families import NAMES
from onnxrep.graph import (
    Names,
    ShapeInfo,
    canonicalize,
    constant,
    import_graph,
    is_float,
    numpy_dtypes,
    release_overridable,
    release_sparse,
    subgraph_references,
)
from onnxrep.passes import PASSES, PREPARE, PassState, regions
from onnxrep.result import Fold, ModelStats, OptimizeResult, Skip

if TYPE_CHECKING:
    from onnxrep.audit import Inventory, Kernel, Pending

__all__ = ["export", "optimize"]



def optimize(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    skip: Iterable[str] = (),
    max_rounds: int = 8,
    in_place: bool = False,
    audit: bool = True,
) -> OptimizeResult:
    """Fold every exact re-parameterization in ``model`` (a ModelProto or a path).

    ``skip`` names pattern families to leave alone (see ``onnxrep.families``).
    Returns an :class:`OptimizeResult` whose ``.model`` is a new ModelProto; a ModelProto given
    here is not modified unless ``in_place`` says the caller has no further use for it. Then,
    as for a model read from a path, the result is the same object rebuilt, and no second copy
    of the weights is held (but for a model of at most a few MiB, while the fusion audit
    reviews a fold; see ``SPECULATE_BELOW``). ``audit`` runs the fusion audit
    (:mod:`onnxrep.audit`), which withdraws any fold that would split a kernel onnxruntime
    fuses in the input.

    Warnings of the libraries it calls (numpy's RuntimeWarning on NaN or Inf parameters,
    onnx-graphsurgeon's logger) are not printed: they are in ``library_warnings``.
    """
    with _interpreter_tuned(), _library_warnings() as caught:
        result = _optimize(model, skip, max_rounds, in_place, audit)
    result.library_warnings = caught
    return result


@contextlib.contextmanager
def _library_warnings() -> Iterator[list[str]]:
    """Record, instead of printing, the Python warnings raised and onnx-graphsurgeon's messages
    of warning severity or above logged for the duration: one line each, each once, in the
    list yielded (filled when the block ends)."""
    logger = G_LOGGER
    logged: list[str] = []

    def record(message: object, severity: int, *args: object, **kwargs: object) -> None:
        if severity >= max(logger.WARNING, logger.severity):  # what gs itself would print
            text = message() if callable(message) else message
            logged.append(f"onnx-graphsurgeon: {one_line(Exception(text))}")

    caught: list[str] = []
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        shadowed = logger.__dict__.get("log")
        logger.log = record  # shadows the method on this instance (gs prints to stdout)
        try:
            yield caught
        finally:
            if shadowed is None:
                logger.__dict__.pop("log", None)
            else:
                logger.log = shadowed
            python = [f"{w.category.__name__}: {one_line(Exception(w.message))} "
                      f"({Path(w.filename).name}:{w.lineno})" for w in recorded]
            caught.extend(dict.fromkeys([*logged, *python]))


SWITCH_INTERVAL = 1e-4
"""Seconds between the interpreter's thread switches while optimizing (default 5e-3)."""


@contextlib.contextmanager
def _interpreter_tuned() -> Iterator[None]:
    """Two process-wide settings for the duration of one optimization, restored after it.

    Python's cyclic collector walks every live object each time it runs; a graph of many
    thousand nodes makes that quadratic in model size, and nothing here needs it. The fusion
    audit's threads wait on the pipes of its helper process and then need the GIL for a
    moment (to send a request, to keep a reply); by default they would wait up to 5 ms for
    the main thread to yield it, and the helper would start late: a short switch interval
    hands the GIL over in time."""
    enabled = gc.isenabled()
    interval = sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        if enabled:
            gc.enable()


def _optimize(
    model: onnx.ModelProto | str | os.PathLike[str],
    skip: Iterable[str],
    max_rounds: int,
    in_place: bool,
    audit: bool,
) -> OptimizeResult:
    start = time.perf_counter()
    from_path = isinstance(model, (str, Path, os.PathLike))
    owned = in_place or from_path
    original = io.load(model) if from_path else model
    if not isinstance(original, onnx.ModelProto):
        raise OnnxrepError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")
    skipped_families = frozenset(skip)
    unknown = sorted(skipped_families - set(NAMES))
    if unknown:
        raise OnnxrepError(f"unknown pattern(s) {unknown}; choose from {sorted(NAMES)}")
    io.validate(original)
    completed = io.output_types(original)

    before = ModelStats.of(original)
    light = io.light_copy(original, node_metadata=False)
    shapes = ShapeInfo.infer(original, light)
    source, folded = original, 0
    for family, step in PREPARE:
        if family not in skipped_families:
            prepared = step(source, light, shapes, owned or source is not original)
            source, light, shapes = prepared.model, prepared.light, prepared.shapes
            folded += prepared.removed
    # The audit reads the input with its constant subgraphs folded: onnxruntime folds them
    # too before it fuses anything, so its kernels are the same, and it optimizes the graph of
    # the size that matters (DBB's border fills alone are thousands of nodes).
    checker = _Auditor(source, light) if audit else None
    protected: dict[str, str] = {}
    edit_source = owned or source is not original
    while True:
        run = _passes(source, shapes, skipped_families, max_rounds, protected)
        review = checker.start(run) if checker is not None else None
        # While onnxruntime looks at the output's neighbourhood of kernels a fold touched, the
        # result is built and checked as if nothing were withdrawn (nearly always so): into a
        # copy, for the source must survive a rerun. A source too large to copy is rebuilt in
        # place after the verdict instead.
        if review is not None and edit_source and io.payload_bound(source) >= SPECULATE_BELOW:
            if review.withdraws(protected):
                continue
            review = None
        unchanged = not run.applied and not run.removed and not folded
        try:
            result_model, warnings = _build(run, original, source, unchanged, completed, owned,
                                            in_place=edit_source and review is None)
        except OnnxrepError:
            if review is None or not review.withdraws(protected):
                raise
            continue
        except BaseException:
            if review is not None:
                review.cancel()
            raise
        if review is None:
            break
        if review.withdraws(protected):
            del result_model  # not held while the passes run again
            continue
        if owned:  # built into a copy during the review: the model given (or read) becomes it
            original.CopyFrom(result_model)
            result_model = original
        break

    return OptimizeResult(
        model=result_model,
        applied=run.applied,
        skipped=_unique(run.skipped),
        before=before,
        after=ModelStats.of(result_model),
        seconds=time.perf_counter() - start,
        rounds=run.rounds,
        notes=[
            *([f"canonicalized {run.removed} Identity/Constant node(s)"] if run.removed else []),
            *([f"folded {folded} constant node(s)"] if folded else []),
        ],
        audit=checker.result if checker is not None else None,
        warnings=warnings,
    )


def _complete_outputs(model: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> list[str]:
    """Give the graph outputs named in ``types`` (see ``io.output_types``) those types; one
    warning per output, naming it."""
    warnings = []
    for v in model.graph.output:
        if v.name not in types:
            continue
        missing = "type" if not v.type.tensor_type.elem_type else "shape"
        v.type.CopyFrom(types[v.name])
        tt = v.type.tensor_type
        elem = onnx.helper.tensor_dtype_to_string(tt.elem_type).removeprefix("TensorProto.")
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                    for d in tt.shape.dim]
            warnings.append(f"graph output {v.name!r} had no {missing}; written with the one "
                            f"shape inference gives: {elem} {dims}")
        else:
            warnings.append(f"graph output {v.name!r} has no shape and shape inference cannot "
                            f"tell its rank: written as {elem} without one (onnxruntime runs it; "
                            "onnx.checker rejects it, as it rejects the input)")
    return warnings


@dataclass
class _Run:
    """One pass of the pipeline over a fresh import of the model."""

    graph: gs.Graph
    applied: list[Fold]
    skipped: list[Skip]
    rounds: int
    removed: int
    original: onnx.ModelProto
    shapes: ShapeInfo


def _passes(
    original: onnx.ModelProto, shapes: ShapeInfo, skipped_families: frozenset[str],
    max_rounds: int, protected: dict[str, str],
) -> _Run:
    """Import ``original`` (whose constants are folded already; ``shapes`` is what shape
    inference knows of it), canonicalize, then run the passes to a fixpoint: again while a
    round folds something and leaves the graph ``unsettled`` (``regions.run`` says when a
    round that folded leaves nothing for another). Nodes whose output is in ``protected``
    (and every runtime idiom) are left alone."""
    graph = import_graph(original)
    numpy_dtypes(graph, shapes)
    release_sparse(graph)
    release_overridable(graph, original)
    pinned = subgraph_references(graph) | {t.name for t in graph.outputs}
    opset = next(o.version for o in original.opset_import if o.domain in ("", "ai.onnx"))
    state = PassState(shapes, pinned, Names.of(original), skipped_families, opset)
    removed = canonicalize(graph, pinned)
    for idiom in idioms.find(graph, shapes):
        for node in idiom.nodes:
            state.protected[node.outputs[0].name] = idiom.reason
    state.protected.update(protected)

    applied: list[Fold] = []
    skipped: list[Skip] = []
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007  (the count is reported)
        folds_this_round: list[Fold] = []
        skipped = []
        state.unsettled = False
        for family, run in PASSES:
            if family in skipped_families:
                continue
            folds, skips = run(graph, state)
            folds_this_round += folds
            skipped += skips
            if folds and run is not regions.run:  # a rewrite the region pass has not seen
                state.unsettled = True
        applied += folds_this_round
        if not folds_this_round or not state.unsettled:
            break
    return _Run(graph, applied, skipped, rounds, removed, original, state.shapes)


class _Auditor:
    """Runs the fusion audit (:mod:`onnxrep.audit`) and decides what to withdraw."""

    MAX_ROUNDS = 3
    """Reruns of the passes with more nodes kept out, before a loss is reported as remaining."""

    def __init__(self, original: onnx.ModelProto, light: onnx.ModelProto) -> None:
        from onnxrep import audit

        self._audit = audit
        self._pending = audit.Pending(light, audit.weights(original))
        self.result = audit.AuditResult()
        self._rounds = 0

    def start(self, run: _Run) -> _Review | None:
        """Audit ``run``: None when it splits no fused kernel of the input (or the audit is
        unavailable), else the review of the kernels a fold touched, which onnxruntime makes
        in its process while the caller goes on (:meth:`finish` waits for it)."""
        audit, result = self._audit, self.result
        begin = time.perf_counter()
        result.after = None
        try:
            if not run.applied:
                if not self._rounds:  # no fold at all: nothing to audit, nor to wait for
                    self._pending.cancel()
                    result.not_needed = True
                return None
            before = self._pending.result()
            result.before = before.counts()
            signatures = {
                t.name: (n.op, tuple(x.name for x in n.inputs))
                for n in run.graph.nodes for t in n.outputs
            }
            risky = audit.at_risk(before, signatures)
            result.at_risk = len(risky)
            if not risky:
                return None
            region = set().union(*(k.replaced for k in risky))
            copy, weights = _neighbourhood(run, region)
            return _Review(self, before, risky, audit.Pending(copy, weights))
        except audit.AuditUnavailable as e:
            result.unavailable = str(e)
            return None
        finally:
            result.seconds += time.perf_counter() - begin

    def finish(self, review: _Review, protected: dict[str, str]) -> bool:
        """Wait for ``review``; when the output splits fused kernels of the input, add their
        nodes to ``protected`` and return True (the caller reruns the passes)."""
        audit, result = self._audit, self.result
        begin = time.perf_counter()
        try:
            after = review.after.result()
            result.after = after.counts()
            losses = audit.splits(review.before, after, review.risky)
        except audit.AuditUnavailable as e:
            result.unavailable = str(e)
            return False
        finally:
            result.seconds += time.perf_counter() - begin
        new = {name for loss in losses for name in loss.nodes if name not in protected}
        if not losses or not new or self._rounds >= self.MAX_ROUNDS:
            result.remaining = losses
            return False
        self._rounds += 1
        result.withdrawn += losses
        for loss in losses:
            reason = (f"keeps onnxruntime's fused {loss.kind} kernel intact (the fusion audit "
                      f"found that folding it splits the kernel)")
            protected.update(dict.fromkeys(loss.nodes, reason))
        return True


@dataclass
class _Review:
    """The audit of kernels a fold touched, under way: the input's inventory, the kernels
    at risk, and onnxruntime's inventory of the output's neighbourhood of them."""

    auditor: _Auditor
    before: Inventory
    risky: list[Kernel]
    after: Pending

    def withdraws(self, protected: dict[str, str]) -> bool:
        """Wait for the verdict: True when folds must be withdrawn (:meth:`_Auditor.finish`)."""
        return self.auditor.finish(self, protected)

    def cancel(self) -> None:
        """The verdict is not wanted (the optimization failed): its reply is dropped."""
        self.after.cancel()


SPECULATE_BELOW = 1 << 23
"""Bound (``io.payload_bound``) on the weights of a source that may be copied to build the
result while the audit reviews it (larger ones are built in place, after the review)."""


def _build(run: _Run, original: onnx.ModelProto, source: onnx.ModelProto, unchanged: bool,
           completed: dict[str, onnx.TypeProto], owned: bool, *, in_place: bool,
           ) -> tuple[onnx.ModelProto, list[str]]:
    """The optimized model of ``run`` (``original`` itself, or a copy, when nothing changed;
    with ``in_place``, ``source`` rebuilt), its untyped outputs completed and the whole
    checked; and the warnings about those outputs."""
    if not unchanged:
        model = export(run.graph, source, in_place=in_place)
    elif owned:
        model = original
    else:
        model = onnx.ModelProto()
        model.CopyFrom(original)
    del run.graph
    warnings = _complete_outputs(model, completed)
    if not unchanged or completed:
        _check(model, None if owned else original)
    return model, warnings


def _neighbourhood(run: _Run, region: set[str]) -> tuple[onnx.ModelProto, set[str]]:
    """The part of ``run``'s graph the audit needs to see what onnxruntime fuses where the
    input had the kernels of ``region`` (their tensors): every node that computes one of those
    tensors, and every reader of what they compute (a tensor read outside a fusion keeps the
    runtime from fusing it, as in the whole graph). Returns the model (its inputs typed and
    shaped as inference knows them, large weights as inputs) and the names standing for
    weights."""
    inside = {id(n): n for n in run.graph.nodes if any(t.name in region for t in n.outputs)}
    for n in list(inside.values()):
        for t in n.outputs:
            inside.update((id(r), r) for r in t.outputs)
    nodes = [n for n in run.graph.nodes if id(n) in inside]  # in graph order
    produced = {t.name for n in nodes for t in n.outputs}
    outputs = {t.name for t in run.graph.outputs}
    model = _shell(run.original)
    g = model.graph
    g.node.extend(OnnxExporter.export_node(n) for n in nodes)
    keep = io.light_keeps({t.name for n in nodes if n.op in io.QDQ_OPS for t in n.inputs})
    weights: set[str] = set()
    seen: set[str] = set()
    for n in nodes:
        for t in n.inputs:
            if not t.name or t.name in produced or t.name in seen:
                continue
            seen.add(t.name)
            if isinstance(t, gs.Constant):
                weights.add(t.name)
                elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
                if keep(t.name, elem, math.prod(t.shape)):
                    _append_initializer(g, t.name, constant(t))
                    continue
                g.input.append(onnx.helper.make_tensor_value_info(t.name, elem, list(t.shape)))
            else:
                g.input.append(_typed(t, run.shapes))
    for n in nodes:
        for t in n.outputs:
            if t.name in outputs or any(id(r) not in inside for r in t.outputs) or not t.outputs:
                g.output.append(_typed(t, run.shapes))
    return model, weights


def _typed(t: gs.Tensor, shapes: ShapeInfo) -> onnx.ValueInfoProto:
    """A value info of ``t`` with the type and shape inference (or the graph) knows."""
    elem = shapes.dtypes.get(t.name) or (
        onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)) if t.dtype is not None else 0)
    shape = shapes.shapes.get(t.name)
    return onnx.helper.make_tensor_value_info(
        t.name, elem, None if shape is None else [d if d is not None else f"d{i}"
                                                    for i, d in enumerate(shape)])


def export(graph: gs.Graph, source: onnx.ModelProto, *, in_place: bool = False) -> onnx.ModelProto:
    """``graph``'s nodes and initializers in ``source``'s clothes.

    With ``in_place`` the result *is* ``source``, edited: initializers the graph no longer
    reads are deleted and new ones appended, so untouched weights are never copied. Otherwise
    a new ModelProto gets copies of the kept ones. Untouched nodes keep their original
    NodeProtos (attribute order, doc strings, subgraphs exactly as they were).
    """
    out = source if in_place else _shell(source)
    g, src = out.graph, source.graph

    initializers = {t.name for t in src.initializer}
    originals = {tuple(n.output): n for n in src.node}
    nodes = []
    for node in graph.nodes:
        before = originals.get(tuple(t.name for t in node.outputs))
        same = (
            before is not None and before.op_type == node.op
            and before.domain == (node.domain or "")
            and list(before.input) == [t.name for t in node.inputs]
        )
        if same:
            copy = onnx.NodeProto()
            copy.CopyFrom(before)
            nodes.append(copy)
        else:
            nodes.append(OnnxExporter.export_node(node))
    del originals
    if in_place:
        del g.node[:]
    g.node.extend(nodes)

    constants_read = {
        t.name: t for t in graph.tensors().values() if isinstance(t, gs.Constant)
    }
    keep = set(constants_read) | subgraph_references(graph) | {t.name for t in graph.inputs}
    if in_place:
        for i in reversed(range(len(g.initializer))):
            if g.initializer[i].name not in keep:
                del g.initializer[i]
    else:
        g.initializer.extend(t for t in src.initializer if t.name in keep)
    present = {t.name for t in g.initializer}
    for name, tensor in constants_read.items():
        if name not in present:  # folded weights, canonicalized and folded constants
            _append_initializer(g, name, constant(tensor))
            tensor.values = np.zeros(0, np.dtype(tensor.dtype))  # the graph is done: free it

    inputs = {t.name for t in graph.inputs}
    if out.ir_version < 4:  # IR 3: every initializer is a graph input, and only those stay
        present = {t.name for t in g.initializer}
        inputs = {n for n in inputs if n in present or n not in initializers} | present
    kept_inputs = [v for v in src.input if v.name in inputs]
    if out.ir_version < 4:
        listed = {v.name for v in kept_inputs}
        kept_inputs += [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                        for t in g.initializer if t.name not in listed]
    live = {name for n in g.node for name in n.output}
    kept_info = [v for v in src.value_info if v.name in live]
    if in_place:
        kept_inputs = [_copied(v) for v in kept_inputs]
        kept_info = [_copied(v) for v in kept_info]
        del g.input[:]
        del g.value_info[:]
    else:
        g.output.extend(src.output)
    g.input.extend(kept_inputs)
    g.value_info.extend(kept_info)
    return out


def _copied(message: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(message)
    return copy


def _shell(source: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``source`` without its nodes, initializers, inputs, outputs and value_info."""
    return io.model_without(source, "node", "initializer", "input", "output", "value_info")


def _append_initializer(g: onnx.GraphProto, name: str, values: np.ndarray) -> None:
    """``values`` as a new raw-data initializer (one copy of the bytes, not three)."""
    t = g.initializer.add()
    t.name = name
    t.data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    t.dims.extend(values.shape)
    if (values.dtype.kind in "fiub" or is_float(values.dtype)) and values.dtype.byteorder in "=<|":
        t.raw_data = np.ascontiguousarray(values).tobytes()
    else:  # strings, big-endian data: let onnx encode them
        t.CopyFrom(numpy_helper.from_array(values, name))


def _check(model: onnx.ModelProto, original: onnx.ModelProto | None) -> None:
    """A result that fails the checker when its input passes is a bug of ours: refuse it.

    Large models are checked as their skeleton (structure, types, attributes; not the weight
    bytes, which numpy wrote), so the check never holds a second serialized copy.
    """
    subject = io.checker_subject(model)
    try:
        onnx.checker.check_model(subject)
    except onnx.checker.ValidationError as e:
        if original is not None:
            try:
                onnx.checker.check_model(io.checker_subject(original))
            except onnx.checker.ValidationError:
                return  # the input already failed the checker the same way
        raise OnnxrepError(
            f"internal error: the optimized model fails onnx.checker: {one_line(e)}"
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
