"""The fusion audit: does onnxruntime fuse as much in the optimized model as in the input?

Folds are exact, but exact is not enough: a fold that takes one node out of an idiom onnxruntime
fuses (a GELU, a LayerNorm, a Conv and its activation, ...) leaves the runtime to run the rest
of the idiom op by op, and the model gets slower. :mod:`onnxrep.idioms` keeps the idioms it
knows intact; this audit is the safety net that needs no such list. It runs onnxruntime's graph
optimizer (a session at ``ORT_ENABLE_EXTENDED`` that writes its optimized graph and runs
nothing; the layout transforms of ``ORT_ENABLE_ALL`` come after every fusion) and reads what it
made of the model:

- a node of the optimized graph *replaced* the nodes of the model on a path from its inputs to
  its outputs; it is a *fused kernel* when it replaced more than one node (Gelu, FusedConv,
  QuickGelu, FusedMatMul, LayerNormalization from a decomposed one, a Conv with a
  BatchNormalization folded in, ... whatever the runtime makes), and keeps *internal* the
  tensors those nodes computed. Its kind is its op type (with the activation, for FusedConv);
- the output *splits* a fused kernel of the input when one of those internal tensors is
  computed again in the output's optimized graph by a node that is not a kernel of the same
  kind: the idiom runs in pieces. A kernel whose internal tensors no longer exist was merged
  away by a fold, which is the point of folding.

Only kernels a fold touched can be split: a kernel is *at risk* when a node it replaced was
rewritten and one of its internal tensors is still computed in the output. Only then does the
optimized model go through onnxruntime too; the input's inventory is made in a background
thread while the passes run (onnxruntime releases the GIL), so a model whose folds touch no
fused kernel pays almost nothing for the audit.

The audit hands onnxruntime a *light copy*: float initializers of more than 64 elements become
graph inputs of the same shape (those a Quantize/DequantizeLinear reads excepted). The idioms
it fuses read only scalars and shapes (LayerNorm's scale and bias may be inputs), and a model
of any size (external data over 2 GB too) costs a few kilobytes to hand over. The runtime's
folds of BatchNormalization into constant conv weights then do not happen, so a Conv → BN →
activation chain is no fused kernel of the audited input; it is the fold this tool makes, and
the Conv → activation left behind fuses as before.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from onnxrep import io
from onnxrep.errors import one_line

__all__ = [
    "AuditResult",
    "AuditUnavailable",
    "Inventory",
    "Kernel",
    "Loss",
    "Pending",
    "at_risk",
    "compare_models",
    "inventory",
    "keep_predicate",
    "splits",
    "view",
]

QDQ = ("QuantizeLinear", "DequantizeLinear")
TRANSPARENT = ("Identity", "Constant")
"""Ops the runtime removes (and the pipeline canonicalizes away): no part of a fusion."""
MAX_REPLACED = 256
"""Nodes a kernel may replace before its extent is taken as unknown."""

Signature = tuple[str, tuple[str, ...]]
"""A node as the audit compares it: ``(op type, input names)``."""


class AuditUnavailable(RuntimeError):
    """onnxruntime cannot optimize the model; the message says why."""


@dataclass(frozen=True)
class Kernel:
    """One fused kernel: its kind, the tensors it keeps internal, and the outputs of every node
    of the model it replaced (by which the pipeline names those nodes)."""

    kind: str
    outputs: tuple[str, ...]
    internal: frozenset[str]
    replaced: frozenset[str]


@dataclass
class Inventory:
    """What onnxruntime's optimizer made of one model."""

    kernels: list[Kernel]
    produced: dict[str, str]
    """Tensor → the kind of the kernel that computes it ('' for an ordinary op)."""
    signatures: dict[str, Signature] = field(repr=False)
    """Tensor → the node of the model (before optimizing) that computes it."""
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(k.kind for k in self.kernels).items()))


@dataclass(frozen=True)
class Loss:
    """A fused kernel of the input that the output runs in pieces."""

    kind: str
    outputs: tuple[str, ...]
    split: tuple[str, ...]
    """Tensors the kernel kept internal that the output computes again."""
    nodes: tuple[str, ...]
    """Output tensor names of the input's nodes that made up the kernel."""


@dataclass
class AuditResult:
    """The audit's findings."""

    before: dict[str, int] = field(default_factory=dict)
    """Fused kernels of the input, by kind."""
    after: dict[str, int] | None = None
    """Fused kernels of the output, by kind (only counted when a kernel was at risk)."""
    at_risk: int = 0
    """Kernels of the input that a fold touched while their inside is still computed."""
    withdrawn: list[Loss] = field(default_factory=list)
    """Splits found and undone: their nodes were kept out of every fold, the passes rerun."""
    remaining: list[Loss] = field(default_factory=list)
    """Splits still in the output (none unless withdrawing could not undo them)."""
    unavailable: str | None = None
    seconds: float = 0.0
    """Time the audit added to the optimization (waiting for it included)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "before": self.before, "after": self.after, "at_risk": self.at_risk,
            "withdrawn": [asdict(x) for x in self.withdrawn],
            "remaining": [asdict(x) for x in self.remaining],
            "unavailable": self.unavailable, "seconds": self.seconds,
        }


# --------------------------------------------------------------------------------------------
# the audited copy


def qdq_inputs(nodes: Iterable[tuple[str, Iterable[str]]]) -> set[str]:
    """Names read by Quantize/DequantizeLinear among ``(op, inputs)`` pairs."""
    return {name for op, inputs in nodes if op in QDQ for name in inputs}


def keep_predicate(qdq: set[str]) -> io.InlinePredicate:
    """Which initializers keep their values in the audited copy (``qdq``: names Q/DQ read)."""

    def keep(name: str, elem_type: int, elements: int) -> bool:
        return name in qdq or io.small_or_not_float(name, elem_type, elements)

    return keep


def view(model: onnx.ModelProto) -> onnx.ModelProto:
    """The light copy of ``model`` the audit hands onnxruntime."""
    qdq = qdq_inputs((n.op_type, n.input) for n in model.graph.node)
    return io.light_copy(model, keep_predicate(qdq))


# --------------------------------------------------------------------------------------------
# onnxruntime's optimized graph


def inventory(model: onnx.ModelProto) -> Inventory:
    """Run onnxruntime's optimizer on ``model`` (an audited copy) and list its fused kernels."""
    import onnxruntime as ort

    from onnxrep.verify import quiet_runtime_logs

    quiet_runtime_logs()
    start = time.perf_counter()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_prepacking", "1")
    with tempfile.TemporaryDirectory(prefix="onnxrep-audit-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        options.optimized_model_filepath = str(path)
        try:
            ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
            optimized = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # onnxruntime raises several unrelated types
            raise AuditUnavailable(f"onnxruntime cannot optimize it: {one_line(e)}") from None
    signatures = {
        name: (n.op_type, tuple(n.input)) for n in model.graph.node for name in n.output if name
    }
    kernels: list[Kernel] = []
    produced: dict[str, str] = {}
    for node in optimized.graph.node:
        outputs = tuple(x for x in node.output if x)
        kernel = _kernel(node, outputs, signatures)
        if kernel is not None:
            kernels.append(kernel)
        for name in outputs:
            produced[name] = kernel.kind if kernel is not None else ""
    return Inventory(kernels, produced, signatures, time.perf_counter() - start)


def _kernel(
    node: onnx.NodeProto, outputs: tuple[str, ...], signatures: Mapping[str, Signature]
) -> Kernel | None:
    """``node`` as a fused kernel, or None when it replaced at most one node of the model.

    The nodes it replaced are those on a path from its inputs to its outputs."""
    first = signatures.get(outputs[0]) if outputs else None
    if first is None or first == (node.op_type, tuple(node.input)):
        return None  # a new node, or the model's own
    stops = set(node.input)
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in stops or name in seen or name not in signatures:
            continue
        seen.add(name)
        if len(seen) > MAX_REPLACED:
            return None
        stack.extend(x for x in signatures[name][1] if x)
    replaced = {name for name in seen if signatures[name][0] not in TRANSPARENT}
    if len(replaced) <= len(outputs):
        return None
    activation = next((a.s.decode() for a in node.attribute if a.name == "activation"), None)
    kind = f"{node.op_type}[{activation}]" if activation else node.op_type
    return Kernel(kind, outputs, frozenset(replaced - set(outputs)), frozenset(replaced))


# --------------------------------------------------------------------------------------------
# judging the output


def at_risk(before: Inventory, after: Mapping[str, Signature]) -> list[Kernel]:
    """Kernels of the input that a fold touched (a node they replaced is gone or different in
    ``after``, the output's nodes by output tensor) while a tensor they keep internal is still
    computed there."""
    risky = []
    for k in before.kernels:
        if any(t in after for t in k.internal) and any(
            after.get(t) != before.signatures[t] for t in k.replaced
        ):
            risky.append(k)
    return risky


def splits(kernels: Iterable[Kernel], after: Inventory) -> list[Loss]:
    """The ``kernels`` (of the input) that ``after`` runs in pieces."""
    losses = []
    for k in kernels:
        split = sorted(t for t in k.internal if after.produced.get(t, k.kind) != k.kind)
        if split:
            losses.append(Loss(k.kind, k.outputs, tuple(split), tuple(sorted(k.replaced))))
    return losses


def compare_models(a: onnx.ModelProto, b: onnx.ModelProto) -> list[Loss]:
    """The fused kernels of ``a`` that ``b`` runs in pieces (both audited in full)."""
    before = inventory(view(a))
    return splits(before.kernels, inventory(view(b)))


class Pending:
    """The input's inventory, made in a background thread from the moment this is created."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._copy: onnx.ModelProto | None = view(model)
        self._result: Inventory | AuditUnavailable | None = None
        self._thread = threading.Thread(target=self._run, name="onnxrep-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            assert self._copy is not None
            self._result = inventory(self._copy)
        except AuditUnavailable as e:
            self._result = e
        except Exception as e:  # never let the audit take the optimizer down
            self._result = AuditUnavailable(f"the audit failed: {one_line(e)}")
        finally:
            self._copy = None

    def result(self) -> Inventory:
        """The inventory; raises :class:`AuditUnavailable` when onnxruntime could not make it."""
        self._thread.join()
        assert self._result is not None
        if isinstance(self._result, AuditUnavailable):
            raise self._result
        return self._result
