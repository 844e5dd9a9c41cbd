"""The fusion audit: does onnxruntime fuse as much in the optimized model as in the input?

Folds are exact, but exact is not enough: a fold that takes one node out of an idiom onnxruntime
fuses (a GELU, a LayerNorm, a Conv and its activation, ...) leaves the runtime to run the rest
of the idiom op by op, and the model gets slower. :mod:`onnxrep.idioms` keeps the idioms it
knows intact; this audit is the safety net that needs no such list. It runs onnxruntime's graph
optimizer (a session at ``ORT_ENABLE_EXTENDED`` that writes its optimized graph and runs
nothing; the layout transforms of ``ORT_ENABLE_ALL`` come after every fusion) and reads what it
made of the model:

- a *fused kernel* is a node of that graph that replaced several nodes of the model
  (:mod:`onnxrep.fusions` says exactly when), keeping the tensors they computed internal;
- the output *splits* a fused kernel of the input when a node of the kernel that the output
  still has as it was (same op, same inputs) computes its tensor in the output's optimized
  graph outside any kernel of the same kind: the idiom runs in pieces. Nodes a fold merged
  away or replaced are no split (their replacement may well fuse, as a Conv that now computes
  a SiLU's input does).

Only kernels a fold touched can be split: a kernel is *at risk* when a node it replaced was
rewritten and one of its internal tensors is still computed in the output. Only then does the
optimized model go through onnxruntime too; the input's inventory is made in a helper process
(which reads the kernels itself, :mod:`onnxrep.fusions`) while the passes run, so a model whose
folds touch no fused kernel pays almost nothing for the audit.

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
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import IO

import onnx

from onnxrep import fusions, io
from onnxrep.errors import one_line
from onnxrep.fusions import Inventory, Kernel, Signature

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
    "weights",
]


class AuditUnavailable(RuntimeError):
    """onnxruntime cannot optimize the model; the message says why."""


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
    not_needed: bool = False
    """Nothing was folded, so there was nothing to audit: the input's kernels were not waited
    for (``before`` is empty)."""
    seconds: float = 0.0
    """Time the audit added to the optimization (waiting for it included)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "before": self.before, "after": self.after, "at_risk": self.at_risk,
            "withdrawn": [asdict(x) for x in self.withdrawn],
            "remaining": [asdict(x) for x in self.remaining],
            "unavailable": self.unavailable, "not_needed": self.not_needed,
            "seconds": self.seconds,
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
    return Pending(model, weights).result()


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
    return inventory(view(model), weights(model))


def compare_models(a: onnx.ModelProto, b: onnx.ModelProto) -> list[Loss]:
    """The fused kernels of ``a`` that ``b`` runs in pieces."""
    return splits(kernels_of(a), kernels_of(b))


def weights(model: onnx.ModelProto) -> set[str]:
    """The names of ``model``'s initializers: in its light copy, the graph inputs of those that
    became inputs stand for weights."""
    return {t.name for t in model.graph.initializer}


class Pending:
    """An inventory in the making: onnxruntime works on ``copy`` (an audited copy, whose graph
    inputs named in ``weights`` stand for initializers) in the helper process from the moment
    this is created, while the caller goes on."""

    def __init__(self, copy: onnx.ModelProto, weights: Iterable[str]) -> None:
        self._copy = copy
        self._weights = set(weights)
        self._start = time.perf_counter()
        self._worker = _worker()
        self._ticket = self._worker.submit(copy.SerializeToString(), self._weights)
        self._result: Inventory | AuditUnavailable | None = None

    def cancel(self) -> None:
        """The inventory is not wanted: its reply is dropped when it comes."""
        if self._result is None:
            self._worker.forget(self._ticket)

    def result(self) -> Inventory:
        """The inventory (the same on every call); raises :class:`AuditUnavailable` when
        onnxruntime could not make it."""
        if self._result is None:
            try:
                reply = self._worker.collect(self._ticket)
                seconds = time.perf_counter() - self._start
                self._result = (
                    fusions.decode(reply[1:], seconds) if reply[:1] == fusions.KERNELS
                    else fusions.read(self._copy, reply[1:], self._weights, seconds))
            except AuditUnavailable as e:
                self._result = e
        if isinstance(self._result, AuditUnavailable):
            raise self._result
        return self._result


# --------------------------------------------------------------------------------------------
# the helper process

_WORKER_CODE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("onnxrep_fusions", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
module.serve()
"""
"""The helper: :func:`onnxrep.fusions.serve`, loaded from its file (the package's other
modules and their imports are not needed there)."""

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
        self._forgotten: set[int] = set()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", _WORKER_CODE, fusions.__file__],
                    stdin=subprocess.PIPE,
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

    def submit(self, data: bytes, weights: Iterable[str] = ()) -> int:
        """Send a serialized model (and the names of its inputs that stand for weights);
        returns the ticket to collect its reply with."""
        with self._lock:
            self._tickets += 1
            ticket = self._tickets
            try:
                stdin = self._start().stdin
                assert stdin is not None
                record = fusions.request(ticket, data, weights)
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
        """The reply the process sent for ``ticket`` (waits for it): its first byte says
        whether the optimized model or its kernels follow (:mod:`onnxrep.fusions`)."""
        with self._lock:
            while ticket not in self._replies:
                process = self._process
                try:
                    assert process is not None and process.stdout is not None
                    head = _read(process.stdout, 16)
                    number, size = struct.unpack("<QQ", head)
                    data = _read(process.stdout, size)
                    if number in self._forgotten:
                        self._forgotten.discard(number)
                    else:
                        self._replies[number] = data
                except (AssertionError, OSError, EOFError) as e:
                    self._replies[ticket] = _failed(e)
                    self.close()
            reply = self._replies.pop(ticket)
        if isinstance(reply, AuditUnavailable):
            raise reply
        if reply[:1] == fusions.FAILED:
            raise AuditUnavailable(f"onnxruntime cannot optimize it: {reply[1:].decode()}")
        return reply

    def forget(self, ticket: int) -> None:
        """Drop the reply for ``ticket``, now or when it comes."""
        with self._lock:
            if self._replies.pop(ticket, None) is None:
                self._forgotten.add(ticket)

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
