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
folds touch no fused kernel pays almost nothing for the audit. The output's neighbourhood of
the kernels at risk goes to the helper while the pipeline builds and checks the result, which
it keeps unless the verdict withdraws folds.

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
import os
import queue
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from onnxrep import fusions
from onnxrep.errors import one_line
from onnxrep.fusions import Inventory, Kernel, Signature

if TYPE_CHECKING:
    import onnx

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
    from onnxrep import io  # imports onnx: not needed to start the helper

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
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("onnxrep_fusions", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
module.serve()
os._exit(0)
"""
"""The helper: :func:`onnxrep.fusions.serve`, loaded from its file (the package's other
modules and their imports are not needed there). When its stdin closes it has removed its
temporary folder, and it leaves without tearing onnxruntime down (tens of milliseconds that
this process would wait for at its exit)."""


class _Worker:
    """One onnxruntime process, started on first use and kept for the life of this one.

    The runtime works in a process of its own: in a thread of this process it slows the
    optimizer's own work by a third (they share the interpreter's lock and the allocator); as
    a process on the other core it costs the optimizer next to nothing. It runs in a session
    of its own (a Ctrl-C at the terminal is for this process) and ends when this process
    closes its stdin, at exit or when it dies.

    Requests are numbered (tickets). A writer thread sends them in order and a reader thread
    takes every reply as it comes, keeping it for its ticket (or dropping it, when its ticket
    was forgotten): the caller never blocks on a full pipe, and the process never blocks
    writing replies nobody reads. If the process dies, every ticket it had fails."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._process: subprocess.Popen[bytes] | None = None
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._tickets = 0
        self._owner: dict[int, subprocess.Popen[bytes]] = {}
        """Tickets still waiting for a reply → the process that has them."""
        self._replies: dict[int, bytes | AuditUnavailable] = {}
        self._forgotten: set[int] = set()
        self._started = False

    def _start(self) -> subprocess.Popen[bytes]:
        """The running process (started if there is none); call with the lock held."""
        if self._process is None or self._process.poll() is not None:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-c", _WORKER_CODE, fusions.__file__],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                )
            except OSError as e:
                raise AuditUnavailable(f"cannot start onnxruntime: {one_line(e)}") from None
            self._process, self._outbox = process, queue.SimpleQueue()
            threading.Thread(target=self._send, args=(process, self._outbox), daemon=True).start()
            threading.Thread(target=self._receive, args=(process, self._outbox),
                             daemon=True).start()
            if not self._started:
                atexit.register(self.close)
                self._started = True
        return self._process

    def warm_up(self) -> None:
        """Start the process now (its imports take a moment) if it is not running."""
        with self._changed, contextlib.suppress(AuditUnavailable):
            self._start()

    def submit(self, data: bytes, weights: Iterable[str] = ()) -> int:
        """Send a serialized model (and the names of its inputs that stand for weights);
        returns the ticket to collect its reply with. Never waits for the process."""
        with self._changed:
            self._tickets += 1
            ticket = self._tickets
            try:
                self._owner[ticket] = self._start()
            except AuditUnavailable as e:
                self._replies[ticket] = e
                return ticket
            self._outbox.put(fusions.request(ticket, data, weights))
            return ticket

    def collect(self, ticket: int) -> bytes:
        """The reply the process sent for ``ticket`` (waits for it): its first byte says
        whether the optimized model or its kernels follow (:mod:`onnxrep.fusions`)."""
        with self._changed:
            self._changed.wait_for(lambda: ticket in self._replies)
            reply = self._replies.pop(ticket)
        if isinstance(reply, AuditUnavailable):
            raise reply
        if reply[:1] == fusions.FAILED:
            raise AuditUnavailable(f"onnxruntime cannot optimize it: {reply[1:].decode()}")
        return reply

    def forget(self, ticket: int) -> None:
        """Drop the reply for ``ticket``, now or when it comes."""
        with self._changed:
            if self._replies.pop(ticket, None) is None and ticket in self._owner:
                self._forgotten.add(ticket)

    def _send(self, process: subprocess.Popen[bytes], outbox: queue.SimpleQueue[bytes | None],
              ) -> None:
        """The writer thread: requests in order, until ``None`` (then the process's stdin
        closes, and it ends)."""
        stdin = process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError, ValueError):
            while (record := outbox.get()) is not None:
                stdin.write(record)
                stdin.flush()
        with contextlib.suppress(OSError, ValueError):
            stdin.close()

    def _receive(self, process: subprocess.Popen[bytes],
                 outbox: queue.SimpleQueue[bytes | None]) -> None:
        """The reader thread: every reply, kept for its ticket, until the process ends; then
        whatever it still had fails."""
        stdout = process.stdout
        assert stdout is not None
        error: BaseException = EOFError("the process ended")
        try:
            while (head := fusions.read_exactly(stdout.fileno(), 16)) is not None:
                number, size = struct.unpack("<QQ", head)
                data = fusions.read_exactly(stdout.fileno(), size)
                if data is None:
                    break
                with self._changed:
                    self._owner.pop(number, None)
                    if number in self._forgotten:
                        self._forgotten.discard(number)
                    else:
                        self._replies[number] = data
                    self._changed.notify_all()
        except (OSError, ValueError, struct.error) as e:
            error = e
        outbox.put(None)  # the writer thread ends too
        with self._changed:
            for ticket in [t for t, p in self._owner.items() if p is process]:
                del self._owner[ticket]
                if ticket in self._forgotten:
                    self._forgotten.discard(ticket)
                else:
                    self._replies[ticket] = _failed(error)
            if self._process is process:
                self._process = None
            self._changed.notify_all()

    def release(self) -> None:
        """Let go of this process's ends of the pipes without ending the helper (it is
        another process's); see :func:`_after_fork_in_child`. Their descriptors are pointed
        at the null device rather than closed: the file objects, whose locks a thread of the
        parent may have held, are never touched, and close only that when they go."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_RDWR)
            try:
                for stream in (process.stdin, process.stdout):
                    if stream is not None:
                        os.dup2(null, stream.fileno())
            finally:
                os.close(null)

    def close(self) -> None:
        with self._changed:
            process, self._process = self._process, None
            outbox = self._outbox
        if process is not None and process.poll() is None:
            outbox.put(None)
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _failed(e: BaseException) -> AuditUnavailable:
    return AuditUnavailable(f"onnxruntime's process failed: {one_line(e)}")


_WORKERS: list[_Worker] = []


def _worker() -> _Worker:
    if not _WORKERS:
        _WORKERS.append(_Worker())
    return _WORKERS[0]


def _after_fork_in_child() -> None:
    """A forked child has the parent's pipes to the helper but not the threads that serve
    them: it lets go of its copies (the parent's helper is the parent's) and starts its own
    helper when it needs one."""
    for worker in _WORKERS:
        worker.release()
    _WORKERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def warm_up() -> None:
    """Start onnxruntime's process for the audit ahead of the first optimization (the command
    line does this first thing, so it starts while the model loads)."""
    _worker().warm_up()
