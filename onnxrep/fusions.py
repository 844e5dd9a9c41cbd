"""What onnxruntime fused: its optimized graph of a model, read as fused kernels, and the
helper process that makes and reads it.

A node of the optimized graph *replaced* the nodes of the model on a path from its inputs to
its outputs that compute from the model's real inputs; it is a *fused kernel* when it replaced
more than one node and is of another type than the node whose output it computes (else it is
that node, with no-ops before it removed). Kernels are whatever the runtime makes: Gelu,
FusedConv, QuickGelu, FusedMatMul, LayerNormalization from a decomposed one, a Conv with a
BatchNormalization folded in, ... A kernel keeps *internal* the tensors the nodes it replaced
computed; its kind is its op type (with the activation, for FusedConv).

The helper (:func:`serve`) is started by :mod:`onnxrep.audit` as a process of its own, loading
this file by its path: it needs no other part of onnxrep, and nothing here imports onnx or
onnxruntime at import time. It imports onnxruntime (a fifth of a second) and, for the model
messages, only the protobuf module onnx generates (``onnx_ml_pb2``, loaded from its file: some
30 ms, where the onnx package takes a second, mostly ml_dtypes). It reads the kernels itself
and answers with them, so the caller's thread does not spend milliseconds walking protobuf
messages while its own work waits; where that module cannot be found it answers with the
optimized model as onnxruntime wrote it, and the caller reads it.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import struct
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import onnx

__all__ = ["Inventory", "Kernel", "decode", "read", "serve"]

MEMORY_FOLDER = "/dev/shm"
"""Where the helper has onnxruntime write the optimized graph when it is small: a file system
in memory (the write and the read back cost 0.3-0.5 ms less a request than on disk)."""
IN_MEMORY_BELOW = 1 << 24
"""Requests (light copies) of fewer bytes use ``MEMORY_FOLDER`` while it has four times the
request free; larger ones (quantized weights stay in the light copy) the disk, as a
container's /dev/shm may be small (64 MiB). A request that fails there and succeeds on the
disk sends every later one to the disk."""
TRANSPARENT = ("Identity", "Constant")
"""Ops the runtime removes (and the pipeline canonicalizes away): no part of a fusion."""
MAX_REPLACED = 256
"""Nodes a kernel may replace before its extent is taken as unknown."""

Signature = tuple[str, tuple[str, ...]]
"""A node as the audit compares it: ``(op type, input names)``."""

OPTIMIZED, FAILED, KERNELS = b"\0", b"\1", b"\2"
"""The first byte of a reply: the optimized model follows, a one-line error, or the kernels
(:func:`encode`)."""


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


def read(model: onnx.ModelProto, optimized: bytes, weights: Iterable[str] = (),
         seconds: float = 0.0) -> Inventory:
    """The fused kernels in ``optimized`` (onnxruntime's optimized graph of ``model``, whose
    graph inputs named in ``weights`` stand for initializers).

    Only nodes that compute from the model's real inputs count as replaced: the runtime's
    constant folding of weight and shape arithmetic is no fusion."""
    parsed = type(model)()  # onnx's ModelProto, or the helper's class of the same message
    parsed.ParseFromString(optimized)
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
    for node in parsed.graph.node:
        outputs = tuple(x for x in node.output if x)
        kernel = _kernel(node, outputs, signatures, live)
        if kernel is not None:
            kernels.append(kernel)
        for name in outputs:
            produced[name] = kernel.kind if kernel is not None else ""
    return Inventory(kernels, produced, signatures, seconds)


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


def encode(inventory: Inventory) -> bytes:
    """``inventory`` as the helper sends it (marshal: the same interpreter reads it back)."""
    kernels = [(k.kind, k.outputs, k.internal, k.replaced) for k in inventory.kernels]
    return marshal.dumps((kernels, inventory.produced, inventory.signatures))


def decode(data: bytes, seconds: float = 0.0) -> Inventory:
    """The inventory :func:`encode` wrote."""
    kernels, produced, signatures = marshal.loads(data)
    return Inventory([Kernel(*k) for k in kernels], produced, signatures, seconds)


# --------------------------------------------------------------------------------------------
# the helper process


def request(ticket: int, model: bytes, weights: Iterable[str]) -> bytes:
    """One request record: ``(ticket, length)``, then the weights' names and the model."""
    body = marshal.dumps((sorted(weights), model))
    return struct.pack("<QQ", ticket, len(body)) + body


def serve(source: int = 0, sink: BinaryIO | None = None) -> None:
    """The helper's loop: read request records from the file descriptor ``source`` until it
    closes, answer each on ``sink`` with ``(ticket, length)`` and a reply (its first byte says
    which kind)."""
    import tempfile

    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    out = sink if sink is not None else sys.stdout.buffer
    model_class = _model_class()
    with contextlib.ExitStack() as stack:
        folders = [stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxrep-audit-"))]
        with contextlib.suppress(OSError):  # none, or not ours to write: the disk it is
            folders.append(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="onnxrep-audit-", dir=MEMORY_FOLDER)))
        while True:
            head = read_exactly(source, 16)
            if head is None:
                return
            ticket, size = struct.unpack("<QQ", head)
            body = read_exactly(source, size)
            if body is None:
                return
            weights, model = marshal.loads(body)
            memory = len(folders) > 1 and len(model) < IN_MEMORY_BELOW and _room(
                folders[-1], 4 * len(model))
            try:
                try:
                    optimized = _optimized(ort, model, folders[-1] if memory else folders[0])
                except Exception:
                    if not memory:
                        raise
                    optimized = _optimized(ort, model, folders[0])  # raises if the model is
                    folders.pop()  # to blame; else the memory folder was: the disk from now on
                reply = OPTIMIZED + optimized
                if model_class is not None:
                    parsed = model_class()
                    parsed.ParseFromString(model)
                    reply = KERNELS + encode(read(parsed, optimized, weights))
            except Exception as e:
                reply = FAILED + " ".join(str(e).split())[:1000].encode()
            out.write(struct.pack("<QQ", ticket, len(reply)) + reply)
            out.flush()


def _optimized(ort: Any, model: bytes, folder: str) -> bytes:
    """onnxruntime's optimized graph of ``model``, written in ``folder`` and read back (the
    file is removed: a folder in memory holds nothing between requests)."""
    path = os.path.join(folder, "optimized.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.optimized_model_filepath = path
    try:
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        with open(path, "rb") as f:
            return f.read()
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def _room(folder: str, needed: int) -> bool:
    """``folder``'s file system has ``needed`` bytes free."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize >= needed


def _model_class() -> type | None:
    """The ModelProto message class: onnx's, if it is imported here already, else the one of
    onnx's generated protobuf module loaded from its file without the package (None if that
    cannot be done)."""
    if "onnx" in sys.modules:
        return sys.modules["onnx"].ModelProto
    try:
        import importlib.util

        spec = importlib.util.find_spec("onnx")
        if spec is None or spec.origin is None:
            return None
        found = importlib.util.spec_from_file_location(
            "onnxrep_onnx_ml_pb2", os.path.join(os.path.dirname(spec.origin), "onnx_ml_pb2.py"))
        if found is None or found.loader is None:
            return None
        module = importlib.util.module_from_spec(found)
        found.loader.exec_module(module)
        return module.ModelProto
    except Exception:  # any failure: the caller reads the optimized model itself
        return None


def read_exactly(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None at its end."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
