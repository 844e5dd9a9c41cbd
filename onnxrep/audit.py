"""The fusion audit: does onnxruntime fuse as much in the optimized model as in the input?

Folds are exact, but exact is not enough: a fold that takes one node out of an idiom onnxruntime
fuses (a GELU, a LayerNorm, a Conv and its activation, ...) leaves the runtime to run the rest
of the idiom op by op, and the model gets slower. :mod:`onnxrep.idioms` keeps the idioms it
knows intact; this audit is the safety net that needs no such list. It runs onnxruntime's graph
optimizer (a session at ``ORT_ENABLE_EXTENDED`` that writes its optimized graph and runs
nothing; the layout transforms of ``ORT_ENABLE_ALL`` come after every fusion) and reads what it
made of the model:

- a node of the optimized graph *replaced* the nodes of the model on a path from its inputs to
  its outputs that compute from the model's real inputs; it is a *fused kernel* when it
  replaced more than one node and is of another type than the node whose output it computes
  (else it is that node, with no-ops before it removed). Kernels are whatever the runtime
  makes: Gelu, FusedConv, QuickGelu, FusedMatMul, LayerNormalization from a decomposed one, a
  Conv with a BatchNormalization folded in, ... A kernel keeps *internal* the tensors the
  nodes it replaced computed; its kind is its op type (with the activation, for FusedConv);
- the output *splits* a fused kernel of the input when a node of the kernel that the output
  still has as it was (same op, same inputs) computes its tensor in the output's optimized
  graph outside any kernel of the same kind: the idiom runs in pieces. Nodes a fold merged
  away or replaced are no split (their replacement may well fuse, as a Conv that now computes
  a SiLU's input does).

Only kernels a fold touched can be split: a kernel is *at risk* when a node it replaced was
rewritten and one of its internal tensors is still computed in the output. Only then does the
optimized model go through onnxruntime too; the input's inventory is made in a background
thread while the passes run (onnxruntime releases the GIL), so a model whose folds touch no
fused kernel pays almost nothing for the audit.

The audit hands onnxruntime a *light copy* (``io.light_copy``): float initializers of more than
64 elements become graph inputs of the same shape (those a Quantize/DequantizeLinear reads
excepted). The idioms
it fuses read only scalars and shapes (LayerNorm's scale and bias may be inputs), and a model
of any size (external data over 2 GB too) costs a few kilobytes to hand over. The runtime's
folds of BatchNormalization into constant conv weights then do not happen, so a Conv → BN →
activation chain is no fused kernel of the audited input; it is the fold this tool makes, and
the Conv → activation left behind fuses as before.
"""

from __future__ import annotations

import atexit
import contextlib
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import IO

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
    "kernels_of",
    "splits",
    "view",
]

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


def view(model: onnx.ModelProto) -> onnx.ModelProto:
    """The light copy of ``model`` the audit hands onnxruntime."""
    return io.light_copy(model)


# --------------------------------------------------------------------------------------------
# onnxruntime's optimized graph


def inventory(model: onnx.ModelProto, weights: Iterable[str] = ()) -> Inventory:
    """Run onnxruntime's optimizer on ``model`` (an audited copy, whose graph inputs named in
    ``weights`` stand for initializers) and list its fused kernels."""
    start = time.perf_counter()
    optimized = _worker().exchange(model.SerializeToString())
    return read(model, optimized, weights, time.perf_counter() - start)


def read(model: onnx.ModelProto, optimized: bytes, weights: Iterable[str] = (),
         seconds: float = 0.0) -> Inventory:
    """The fused kernels in ``optimized`` (onnxruntime's optimized graph of ``model``).

    Only nodes that compute from the model's real inputs count as replaced: the runtime's
    constant folding of weight and shape arithmetic is no fusion."""
    graph = onnx.GraphProto()
    graph.ParseFromString(_graph_bytes(optimized))
    signatures = {
        name: (n.op_type, tuple(n.input)) for n in model.graph.node for name in n.output if name
    }
    static = set(weights) | {t.name for t in model.graph.initializer}
    live = {v.name: -1 for v in model.graph.input if v.name not in static}
    for i, n in enumerate(model.graph.node):  # topological order: what depends on a real input
        if any(x in live for x in n.input):
            live.update((x, i) for x in n.output if x)
    kernels: list[Kernel] = []
    produced: dict[str, str] = {}
    for node in graph.node:
        outputs = tuple(x for x in node.output if x)
        kernel = _kernel(node, outputs, signatures, live)
        if kernel is not None:
            kernels.append(kernel)
        for name in outputs:
            produced[name] = kernel.kind if kernel is not None else ""
    return Inventory(kernels, produced, signatures, seconds)


def _graph_bytes(model: bytes) -> bytes:
    """The serialized ``graph`` field of a serialized ModelProto (its initializers are not
    needed, and the runtime's folded constants can be large)."""
    parsed = onnx.ModelProto()
    parsed.ParseFromString(model)
    graph = parsed.graph
    del graph.initializer[:]
    return graph.SerializeToString()


def _kernel(
    node: onnx.NodeProto, outputs: tuple[str, ...], signatures: Mapping[str, Signature],
    live: Mapping[str, int],
) -> Kernel | None:
    """``node`` as a fused kernel, or None when it replaced at most one node of the model.

    The nodes it replaced are those on a path from its inputs to its outputs that compute from
    a real input (``live``: tensor → position of its node in the model); a path from an input
    the runtime made (a folded constant) is none."""
    first = signatures.get(outputs[0]) if outputs else None
    if first is None or first[0] == node.op_type:
        return None  # a new node, or the model's own (no-ops before it may have gone)
    activations = [x for x in node.input if x in live]
    if not activations:
        return None  # computed from constants only
    stops = set(node.input)
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in stops or name in seen or name not in live or name not in signatures:
            continue
        seen.add(name)
        if len(seen) > MAX_REPLACED:
            return None
        stack.extend(x for x in signatures[name][1] if x)
    reach = set(activations)  # what computes from the kernel's own activations
    for name in sorted(seen, key=live.__getitem__):  # in the model's order
        if any(x in reach for x in signatures[name][1]):
            reach.add(name)
    replaced = {name for name in seen & reach if signatures[name][0] not in TRANSPARENT}
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


def splits(before: Inventory, after: Inventory,
           kernels: Iterable[Kernel] | None = None) -> list[Loss]:
    """The fused kernels of ``before`` (or just ``kernels`` of it) that ``after`` runs in
    pieces: a tensor of the kernel that the output still computes with the node that computed
    it in the input (a survivor, not a fold's new node) is computed in the output's optimized
    graph by anything but a kernel of the same kind."""
    losses = []
    for k in before.kernels if kernels is None else kernels:
        survivors = (t for t in k.replaced if after.signatures.get(t) == before.signatures[t])
        split = sorted(t for t in survivors if after.produced.get(t, k.kind) != k.kind)
        if split:
            losses.append(Loss(k.kind, k.outputs, tuple(split), tuple(sorted(k.replaced))))
    return losses


def kernels_of(model: onnx.ModelProto) -> Inventory:
    """The fused kernels onnxruntime makes of ``model`` (through its light copy)."""
    return inventory(view(model), _weights(model))


def compare_models(a: onnx.ModelProto, b: onnx.ModelProto) -> list[Loss]:
    """The fused kernels of ``a`` that ``b`` runs in pieces."""
    return splits(kernels_of(a), kernels_of(b))


def _weights(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


class Pending:
    """The input's inventory: onnxruntime works on it in the helper process from the moment
    this is created, while the caller goes on. ``light`` is the model's light copy, if the
    caller has one."""

    def __init__(self, model: onnx.ModelProto, light: onnx.ModelProto | None = None) -> None:
        self._copy = light if light is not None else view(model)
        self._weights = _weights(model)
        self._start = time.perf_counter()
        self._worker = _worker()
        self._ticket = self._worker.submit(self._copy.SerializeToString())
        self._result: Inventory | AuditUnavailable | None = None

    def result(self) -> Inventory:
        """The inventory (the same on every call); raises :class:`AuditUnavailable` when
        onnxruntime could not make it."""
        if self._result is None:
            try:
                optimized = self._worker.collect(self._ticket)
                self._result = read(self._copy, optimized, self._weights,
                                    time.perf_counter() - self._start)
            except AuditUnavailable as e:
                self._result = e
        if isinstance(self._result, AuditUnavailable):
            raise self._result
        return self._result


# --------------------------------------------------------------------------------------------
# the helper process

_WORKER_CODE = r"""
import os, struct, sys, tempfile
import onnxruntime as ort
ort.set_default_logger_severity(3)
source, sink = sys.stdin.buffer, sys.stdout.buffer
with tempfile.TemporaryDirectory(prefix="onnxrep-audit-") as folder:
    path = os.path.join(folder, "optimized.onnx")
    while True:
        head = source.read(16)
        if len(head) < 16:
            break
        ticket, size = struct.unpack("<QQ", head)
        data = source.read(size)
        try:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            options.add_session_config_entry("session.disable_prepacking", "1")
            options.optimized_model_filepath = path
            ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            with open(path, "rb") as f:
                reply = b"\0" + f.read()
        except Exception as e:
            reply = b"\1" + " ".join(str(e).split())[:1000].encode()
        sink.write(struct.pack("<QQ", ticket, len(reply)) + reply)
        sink.flush()
"""
"""The helper: reads ``(ticket, length, model)`` records on stdin and answers each with
``(ticket, length, optimized graph or one-line error)``. It imports only onnxruntime."""

PIPE_WRITE = 1 << 16
"""Requests up to this size are written at once (the pipe holds them); larger ones by a
thread, so the caller never waits for the helper to read."""


class _Worker:
    """One onnxruntime process, started on first use and kept for the life of this one.

    The runtime works in a process of its own: in a thread of this process it slows the
    optimizer's own work by a third (they share the interpreter's lock and the allocator); as
    a process on the other core it costs the optimizer next to nothing. It runs in a session
    of its own (a Ctrl-C at the terminal is for this process) and ends when this process
    closes its stdin, at exit or when it dies. Requests are numbered; a reply read while
    waiting for another is kept for its ticket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._tickets = 0
        self._replies: dict[int, bytes | AuditUnavailable] = {}
        self._writers: list[threading.Thread] = []

    def _start(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                )
            except OSError as e:
                raise AuditUnavailable(f"cannot start onnxruntime: {one_line(e)}") from None
            atexit.register(self.close)
        return self._process

    def warm_up(self) -> None:
        """Start the process now (its imports take a moment) if it is not running."""
        with self._lock, contextlib.suppress(AuditUnavailable):
            self._start()

    def submit(self, data: bytes) -> int:
        """Send a model; returns the ticket to collect its reply with."""
        with self._lock:
            self._tickets += 1
            ticket = self._tickets
            try:
                stdin = self._start().stdin
                assert stdin is not None
                record = struct.pack("<QQ", ticket, len(data)) + data
                if len(record) <= PIPE_WRITE:
                    stdin.write(record)
                    stdin.flush()
                else:
                    writer = threading.Thread(target=_write, args=(stdin, record), daemon=True)
                    writer.start()
                    self._writers.append(writer)
            except (OSError, AuditUnavailable) as e:
                self._replies[ticket] = _failed(e)
            return ticket

    def collect(self, ticket: int) -> bytes:
        """The optimized graph the process sent for ``ticket`` (waits for it)."""
        with self._lock:
            while ticket not in self._replies:
                process = self._process
                try:
                    assert process is not None and process.stdout is not None
                    head = _read(process.stdout, 16)
                    number, size = struct.unpack("<QQ", head)
                    self._replies[number] = _read(process.stdout, size)
                except (AssertionError, OSError, EOFError) as e:
                    self._replies[ticket] = _failed(e)
                    self.close()
            reply = self._replies.pop(ticket)
        if isinstance(reply, AuditUnavailable):
            raise reply
        if reply[:1] != b"\0":
            raise AuditUnavailable(f"onnxruntime cannot optimize it: {reply[1:].decode()}")
        return reply[1:]

    def exchange(self, data: bytes) -> bytes:
        return self.collect(self.submit(data))

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()


def _write(stream: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(OSError):
        stream.write(data)
        stream.flush()


def _read(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("the process ended")
    return data


def _failed(e: BaseException) -> AuditUnavailable:
    return AuditUnavailable(f"onnxruntime's process failed: {one_line(e)}")


_WORKERS: list[_Worker] = []


def _worker() -> _Worker:
    if not _WORKERS:
        _WORKERS.append(_Worker())
    return _WORKERS[0]


def warm_up() -> None:
    """Start onnxruntime's process for the audit ahead of the first optimization (the command
    line does this first thing, so it starts while the model loads)."""
    _worker().warm_up()
