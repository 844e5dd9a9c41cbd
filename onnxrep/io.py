"""Loading and saving models: clear one-line errors for bad files, atomic writes, external data.

``load`` accepts what onnx.checker accepts (IR 3 .. current, default-domain opset 7 .. current,
custom domains that the model imports, in subgraphs too); every failure — a missing path, a
directory, an empty, truncated, text or random file, external data that is missing, short or
outside the model's folder, a model the checker rejects — is an :class:`OnnxrepError` whose
one-line message names the file. Graph outputs without a type or a shape, which onnxruntime
runs and the checker rejects, are checked as shape inference completes them
(:func:`output_types`). A model over the 2 GB protobuf limit keeps its weights in an external
data file and is checked by path.

``save`` writes to temporary files beside the target and renames them into place, so a failed
or interrupted run never leaves half a model, never leaves a temporary file behind, and leaves
an existing output as it was. Weights go to an external data file ``<name>.data`` when the model
would exceed the protobuf limit or when asked; if the model's own rename fails after the data
file was replaced, the previous data file is put back. New files get the permissions a plain
``open()`` would give them (``0o666`` minus the umask); a replaced file keeps its mode. An
existing target that is not a regular file (a FIFO, a device, a directory) is never replaced
(:func:`refuse_special`); a symlink to a regular file is, as a link. A folder no file can be
made in is found before any work (:func:`refuse_unwritable`).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import signal
import stat
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from google.protobuf.message import EncodeError, Message
from onnx import external_data_helper

from onnxrep.errors import OnnxrepError, one_line

try:
    from google.protobuf.unknown_fields import UnknownFieldSet as _UnknownFieldSet
except ImportError:  # protobuf before 4.22: unknown fields cannot be told apart
    _UnknownFieldSet = None
_UNKNOWN_HIDDEN = _UnknownFieldSet is None
"""This protobuf cannot list the fields a message holds that onnx does not know (written by a
newer onnx): copied field by field they would be lost, so messages are encoded whole."""

if TYPE_CHECKING:
    from google.protobuf.descriptor import FieldDescriptor

__all__ = [
    "MIN_OPSET",
    "checker_subject",
    "copy_field",
    "fits",
    "light_copy",
    "light_keeps",
    "load",
    "load_with_sources",
    "mode_for",
    "node_subgraphs",
    "output_types",
    "payload_bound",
    "refuse_special",
    "refuse_unwritable",
    "save",
    "serialize_chunks",
    "serialized_size",
    "validate",
    "write_temp",
]

MIN_OPSET = 7
PROTOBUF_LIMIT = 2**31 - 1
CHECK_IN_FULL = 64 << 20
"""Models up to this size are checked with their weights; larger ones as ``light_copy``."""
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16)
EXTERNAL_THRESHOLD = 1024
"""Tensors of at least this many bytes go to the external data file when one is written."""
EXTERNAL_MARGIN = 64 * 2**20
"""Headroom under the protobuf limit kept for the graph itself when deciding by size."""


def load(path: str | os.PathLike[str], *, check: bool = True) -> onnx.ModelProto:
    """Read, validate and return a model (with its external data loaded)."""
    return load_with_sources(path, check=check)[0]


def load_with_sources(
    path: str | os.PathLike[str], *, check: bool = True
) -> tuple[onnx.ModelProto, list[Path]]:
    """:func:`load`, and the files the model was read from: its own path, then each external
    data file its tensors name (resolved against the model's folder, each once)."""
    p = Path(path)
    if not p.exists():
        raise OnnxrepError(f"{p}: no such file")
    if p.is_dir():
        raise OnnxrepError(f"{p}: is a directory, not an ONNX model")
    try:
        info = p.stat()
    except OSError as e:
        raise OnnxrepError(f"{p}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise OnnxrepError(f"{p}: is not a regular file")
    if info.st_size == 0:
        raise OnnxrepError(f"{p}: file is empty")
    model = _parse(p, info.st_size)
    validate(model, str(p))
    sources = [p]
    for t in _tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in t.external_data}.get("location", "")
            if location and p.parent / location not in sources:
                sources.append(p.parent / location)
    _bound_external_reads(model)
    try:
        external_data_helper.load_external_data_for_model(model, str(p.parent))
    except OSError as e:
        raise OnnxrepError(
            f"{p}: cannot read its external data ({e.strerror or one_line(e)})"
        ) from None
    except Exception as e:  # onnx raises ValidationError for locations outside the folder
        raise OnnxrepError(f"{p}: cannot read its external data ({one_line(e)})") from None
    if check:
        subject = checker_subject(model, str(p))
        try:
            onnx.checker.check_model(subject)
        except Exception as e:
            raise OnnxrepError(f"{p}: fails onnx.checker: {one_line(e)}") from None
    return model, sources


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The initializers and attribute tensors of ``graph`` and of its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def refuse_special(path: Path) -> None:
    """An existing ``path`` that is not a regular file (a FIFO, a device, a socket, a
    directory) is never replaced by an output. A symlink to a regular file is: the link itself
    is replaced, as ``os.replace`` does."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # nothing there yet (or a dangling link, which the output replaces)
    if not stat.S_ISREG(mode):
        raise OnnxrepError(f"{path}: is {_kind(mode)}, not a regular file; not replacing it")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def checker_subject(model: onnx.ModelProto, where: str = "model") -> onnx.ModelProto:
    """What onnx.checker is given for ``model``: the model, or a ``light_copy`` (no weight
    bytes, so no second serialized copy of them) when it is large or when graph outputs lack a
    type or shape. In that copy they are completed as :func:`output_types` completes them;
    those whose rank no inference can tell are left out (onnxruntime runs them)."""
    types = output_types(model, where)
    if not types:
        return model if serialized_size(model) < CHECK_IN_FULL else light_copy(model)
    subject = light_copy(model)
    completed = [v for v in (_typed(v, types) for v in subject.graph.output) if v is not None]
    del subject.graph.output[:]
    subject.graph.output.extend(completed)
    return subject


def output_types(model: onnx.ModelProto, where: str = "model") -> dict[str, onnx.TypeProto]:
    """The types graph outputs without a type or a shape get from shape inference, by name.

    onnxruntime runs such outputs (hand-built and onnx-graphsurgeon-written graphs have them);
    the checker does not. An output whose rank inference cannot tell gets its element type
    alone (no shape: it keeps failing the checker, as in the input). An output whose element
    type inference cannot tell, or that no node, input or initializer defines, is refused.
    """
    incomplete = [v for v in model.graph.output if not _complete(v)]
    if not incomplete:
        return {}
    defined = {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer}
    defined |= {o for n in model.graph.node for o in n.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(light_copy(model), data_prop=True).graph
        known = {v.name: v.type for v in (*inferred.input, *inferred.value_info, *inferred.output)
                 if v.type.tensor_type.elem_type}
    except Exception:  # inference is best effort here: what it cannot tell is refused below
        known = {}
    for t in model.graph.initializer:
        known.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, t.dims))
    types = {}
    for v in incomplete:
        if v.name not in defined:
            raise OnnxrepError(f"{where}: graph output {v.name!r} is not computed by any node, "
                               "input or initializer; remove it or add what computes it")
        given = v.type.tensor_type
        found = known.get(v.name)
        elem = given.elem_type or (found.tensor_type.elem_type if found is not None else 0)
        if not elem:
            raise OnnxrepError(
                f"{where}: graph output {v.name!r} has no type and shape inference cannot tell "
                "it; declare its element type and shape (onnx.helper.make_tensor_value_info)")
        out = onnx.TypeProto()
        out.tensor_type.elem_type = elem
        if given.HasField("shape"):
            out.tensor_type.shape.CopyFrom(given.shape)
        elif found is not None and found.tensor_type.HasField("shape"):
            out.tensor_type.shape.CopyFrom(found.tensor_type.shape)
        types[v.name] = out
    return types


def _complete(v: onnx.ValueInfoProto) -> bool:
    """A graph output the checker accepts as declared: a tensor type with an element type and a
    shape, or a type other than a tensor."""
    if not v.HasField("type"):
        return False
    if v.type.WhichOneof("value") != "tensor_type":
        return v.type.WhichOneof("value") is not None
    return bool(v.type.tensor_type.elem_type) and v.type.tensor_type.HasField("shape")


def _typed(v: onnx.ValueInfoProto, types: dict[str, onnx.TypeProto]) -> onnx.ValueInfoProto | None:
    """``v`` with the type ``types`` give it (``None`` when that type still has no shape)."""
    if v.name not in types:
        return v
    if not types[v.name].tensor_type.HasField("shape"):
        return None
    out = onnx.ValueInfoProto()
    out.CopyFrom(v)
    out.type.CopyFrom(types[v.name])
    return out


def _parse(p: Path, size: int) -> onnx.ModelProto:
    """The ModelProto in ``p`` without its external data, or a one-line reason it is not one."""
    try:
        if p.suffix.lower() in TEXT_SUFFIXES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # onnx warns about its experimental text formats
                return onnx.load_model(str(p), load_external_data=False)
        return _parse_binary(p)
    except OSError as e:
        raise OnnxrepError(f"{p}: cannot read ({e.strerror or one_line(e)})") from None
    except Exception as e:  # protobuf DecodeError, text/JSON ParseError, ValueError, ...
        if size > PROTOBUF_LIMIT:
            raise OnnxrepError(
                f"{p}: cannot parse a {size / 2**30:.1f} GB protobuf file; models over 2 GB "
                "must keep their weights in external data"
            ) from None
        if _looks_like_text(p):
            raise OnnxrepError(f"{p}: is a text file, not an ONNX model") from None
        raise OnnxrepError(f"{p}: not an ONNX model (cannot parse: {one_line(e)})") from None


TEXT_SUFFIXES = (".json", ".onnxjson", ".onnxtext", ".onnxtxt", ".pbtxt", ".prototxt",
                 ".textproto", ".txtpb")
"""Suffixes onnx.load_model reads in one of onnx's text formats."""


def _parse_binary(p: Path) -> onnx.ModelProto:
    """Parse straight from a read-only memory map of the file: no copy of it in memory."""
    model = onnx.ModelProto()
    with (
        open(p, "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
        memoryview(mapped) as view,
    ):
        model.ParseFromString(view)  # protobuf copies what it keeps
    return model


def _looks_like_text(p: Path) -> bool:
    """The start of the file decodes as UTF-8 without control bytes other than whitespace."""
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # a multi-byte character cut at the end of the window
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return bool(text) and all(c.isprintable() or c in "\t\n\r\f\v" for c in text)


def validate(model: onnx.ModelProto, where: str = "model") -> None:
    """Structural sanity that the checker reports late or obscurely."""
    if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
        raise OnnxrepError(f"{where}: not an ONNX model (no graph, opset or IR version)")
    if model.ir_version > onnx.IR_VERSION:
        raise OnnxrepError(
            f"{where}: IR version {model.ir_version} is newer than this onnx supports "
            f"({onnx.IR_VERSION})"
        )
    if model.ir_version < 3:
        raise OnnxrepError(f"{where}: IR version {model.ir_version} is too old (need >= 3)")
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    default = opsets.get("ai.onnx")
    newest = onnx.defs.onnx_opset_version()
    if default is None:
        raise OnnxrepError(f"{where}: does not import the default ONNX domain")
    if not MIN_OPSET <= default <= newest:
        raise OnnxrepError(
            f"{where}: opset {default} is outside the supported range {MIN_OPSET}..{newest}"
        )
    used = {n.domain or "ai.onnx" for n in _nodes(model.graph)}
    missing = sorted(used - set(opsets))
    if missing:
        raise OnnxrepError(f"{where}: nodes use domain(s) {missing} that the model does not import")


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of ``graph`` and of every subgraph (If/Loop/Scan bodies), depth first."""
    for node in graph.node:
        yield node
        for sub in node_subgraphs(node):
            yield from _nodes(sub)


def node_subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs ``node``'s attributes hold (If/Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type in _MAY_HOLD_GRAPHS:  # one read for the attributes that cannot
            if attr.HasField("g"):
                yield attr.g
            yield from attr.graphs


_MAY_HOLD_GRAPHS = frozenset({
    onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS, onnx.AttributeProto.UNDEFINED})


def save(
    model: onnx.ModelProto, path: str | os.PathLike[str], *, external: bool | None = None
) -> None:
    """Write ``model`` atomically; ``external=None`` decides by size.

    Every file is written under a temporary name beside its target and renamed into place, so
    a reader sees the old file or the new one, never part of one, and a failed or interrupted
    write leaves the target as it was. The files are not fsynced, as ``onnx.save`` does not:
    on a 500 MB model the sync costs more than the whole optimization, and durability across
    a power loss is the filesystem's to give (ext4 and XFS flush a file renamed over another).
    """
    p = Path(path)
    refuse_special(p)
    if not p.parent.exists():
        raise OnnxrepError(f"{p.parent}: no such directory")
    if external is None:
        external = not fits(model, margin=EXTERNAL_MARGIN)
    data_name = p.name + ".data"
    data_path = p.parent / data_name
    if external:
        refuse_special(data_path)
    temps: list[str] = []
    backup: str | None = None
    try:
        if external:
            shell, data_temp = _externalize(model, p.parent, data_name, mode_for(data_path),
                                            temps)
            chunks = serialize_chunks(shell)
        else:
            chunks = serialize_chunks(model)
        model_temp = write_temp(p.parent, p.name, chunks, mode_for(p), temps)
        if external:
            with held_signals():  # the backup link exists only once its name is recorded
                backup = _hard_link_backup(data_path)
            os.replace(data_temp, data_path)
            try:
                os.replace(model_temp, p)
            except BaseException:  # the old model (if any) must keep reading its old data
                if backup is not None:
                    os.replace(backup, data_path)
                    backup = None
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(data_path)
                raise
        else:
            os.replace(model_temp, p)
        temps.clear()
    except OSError as e:
        raise OnnxrepError(f"{p}: cannot write ({e.strerror or one_line(e)})") from None
    except (ValueError, RuntimeError, EncodeError) as e:  # protobuf: too large to encode
        raise OnnxrepError(f"{p}: cannot write ({one_line(e)})") from None
    finally:
        for t in (*temps, *([backup] if backup else [])):
            with contextlib.suppress(OSError):
                os.unlink(t)


def _bound_external_reads(model: onnx.ModelProto) -> None:
    """An external tensor without a ``length`` reads what its shape and type take, as
    onnxruntime reads it (onnx's loader would read the whole rest of the file)."""
    for t in _tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL or t.data_type not in _ITEMSIZE:
            continue
        if not any(e.key == "length" for e in t.external_data):
            t.external_data.add(key="length",
                                value=str(_ITEMSIZE[t.data_type] * math.prod(t.dims)))


def serialize_chunks(model: onnx.ModelProto) -> Iterator[bytes]:
    """``model.SerializeToString()``, the same bytes, one initializer at a time.

    Protobuf writes a message's fields in field-number order, each sub-message as a tag, its
    length and its bytes; so the model is written as its fields before ``graph``, the graph's
    fields before ``initializer``, each initializer as a field of its own, and the rest. Only
    one tensor is ever held twice, instead of the whole model.
    """
    if _UNKNOWN_HIDDEN:
        yield model.SerializeToString()
        return
    layout = _Layout(model)
    yield layout.head
    if model.HasField("graph"):
        yield _varint(_GRAPH << 3 | 2) + _varint(layout.graph_size)
        yield layout.graph_head
        for tensor, n in zip(model.graph.initializer, layout.sizes, strict=True):
            data = tensor.SerializeToString()  # not concatenated: that would copy it again
            if len(data) != n:  # raw_data of another length than its shape says
                more = "more" if len(data) > n else "fewer"
                raise ValueError(f"initializer {tensor.name!r} holds {more} raw bytes than its "
                                 "shape and type take; onnxruntime refuses it too")
            yield _INIT_KEY + _varint(n)
            yield data
        yield layout.graph_tail
    yield layout.tail


def serialized_size(model: onnx.ModelProto) -> int:
    """The exact serialized size in bytes. protobuf's own ``ByteSize()`` encodes the whole
    message (and refuses past 2 GB): it is used while the initializers are small, both in all
    (under ``ENCODE_BELOW`` bytes) and next to the number of the graph's parts (under
    ``ENCODE_PER_PART`` bytes a part), and the rest of the model fits too. Otherwise the
    model is sized part by part (:func:`_graph_size`; fields onnx does not know included),
    encoding no large raw weights: 10 MB of weights in 1,700 nodes, initializers and
    value_infos take 2.3 ms against 3.3 ms encoded (more in a fresh process, where the
    encoder's buffer is new memory)."""
    graph = model.graph
    payload = payload_bound(model)
    parts = len(graph.node) + len(graph.initializer) + len(graph.value_info)
    if payload < min(ENCODE_BELOW, ENCODE_PER_PART * parts) or _UNKNOWN_HIDDEN:
        with contextlib.suppress(EncodeError, ValueError):  # over 2 GB outside initializers
            return model.ByteSize()
    head, tail = _split(model, onnx.ModelProto(), _GRAPH)
    if not model.HasField("graph"):
        return len(head) + len(tail)
    size = _graph_size(graph)
    return len(head) + len(_varint(_GRAPH << 3 | 2)) + len(_varint(size)) + size + len(tail)


ENCODE_BELOW = 1 << 26
"""Models whose initializers hold fewer bytes than this may be sized by encoding them."""
ENCODE_PER_PART = 1 << 13
"""Nor may the initializers hold this many bytes per part of the graph (node, initializer,
value_info): sizing a part costs about what encoding 6 KiB of weights does."""


def _graph_size(graph: onnx.GraphProto) -> int:
    """Serialized size of ``graph``, its repeated messages sized one by one (initializers from
    their shapes: :func:`_tensor_size`), the other fields encoded together."""
    rest = onnx.GraphProto()
    size = 0
    for descriptor, value in graph.ListFields():
        if descriptor.message_type is None or not _is_repeated(descriptor):
            copy_field(rest, descriptor.name, value)
            continue
        sizes = map(_tensor_size, value) if descriptor.number == _INIT else (
            part.ByteSize() for part in value)
        # each part: its key, its length (a varint of 7 bits a byte) and its bytes
        size += len(value) * len(_varint(descriptor.number << 3 | 2)) + sum(
            n + ((n.bit_length() + 6) // 7 or 1) for n in sizes)
    copy_unknown_fields(graph, rest)
    return size + rest.ByteSize()


def _is_repeated(descriptor: FieldDescriptor) -> bool:
    repeated = getattr(descriptor, "is_repeated", None)  # protobuf 6 on; ``label`` before
    return bool(repeated) if repeated is not None else descriptor.label == descriptor.LABEL_REPEATED


def payload_bound(model: onnx.ModelProto) -> int:
    """A bound on the bytes ``model``'s initializers hold (8 a value: exact for the numeric
    types; external data counted as if it were inside). Constant nodes, sparse initializers
    and functions are not counted: if they pass 2 GB, ``ByteSize()`` refuses and the caller
    sizes the model part by part."""
    return 8 * sum(math.prod(t.dims) for t in model.graph.initializer)


_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INIT = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_INIT_KEY = bytes([_INIT << 3 | 2])
_RAW = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


class _Layout:
    """A model's serialized bytes around its initializers, and each initializer's size."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.head, self.tail = _split(model, onnx.ModelProto(), _GRAPH)
        self.graph_head, self.graph_tail = _split(model.graph, onnx.GraphProto(), _INIT)
        self.sizes = [_tensor_size(t) for t in model.graph.initializer]
        self.graph_size = len(self.graph_head) + len(self.graph_tail) + sum(
            len(_INIT_KEY) + len(_varint(n)) + n for n in self.sizes
        )


def _tensor_size(t: onnx.TensorProto) -> int:
    """Serialized size of ``t``; its raw bytes are counted from its shape, not copied (raw
    bytes of another length, which onnxruntime refuses, are caught when written:
    :func:`serialize_chunks`)."""
    if not t.HasField("raw_data") or t.data_type not in _ITEMSIZE:
        return t.ByteSize()
    n = _ITEMSIZE[t.data_type] * math.prod(t.dims)
    if n < _SMALL or _UNKNOWN_HIDDEN:
        return t.ByteSize()  # cheaper than rebuilding it field by field, or the only exact way
    stub = onnx.TensorProto()
    for descriptor in t.DESCRIPTOR.fields:  # not ListFields(): it would copy the raw bytes out
        if descriptor.number == _RAW:
            continue
        try:
            present = t.HasField(descriptor.name)
        except ValueError:  # a repeated field
            present = len(getattr(t, descriptor.name)) > 0
        if present:
            copy_field(stub, descriptor.name, getattr(t, descriptor.name))
    copy_unknown_fields(t, stub)
    return stub.ByteSize() + 1 + len(_varint(n)) + n


_SMALL = 1 << 16
"""Raw tensors below this many bytes are sized by protobuf itself."""

_ITEMSIZE = {
    getattr(onnx.TensorProto, name): size for name, size in (
        ("FLOAT", 4), ("DOUBLE", 8), ("FLOAT16", 2), ("BFLOAT16", 2), ("INT8", 1), ("UINT8", 1),
        ("INT16", 2), ("UINT16", 2), ("INT32", 4), ("UINT32", 4), ("INT64", 8), ("UINT64", 8),
        ("BOOL", 1),
    )
}


def _split(message: Message, empty: Message, number: int) -> tuple[bytes, bytes]:
    """The serialized fields of ``message`` numbered below ``number``, and above it."""
    before, after = empty, type(empty)()
    for descriptor, value in message.ListFields():
        if descriptor.number != number:
            copy_field(before if descriptor.number < number else after, descriptor.name, value)
    copy_unknown_fields(message, after)  # protobuf writes them after every known field
    return before.SerializeToString(), after.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def fits(model: onnx.ModelProto, margin: int = 0) -> bool:
    """The model serializes into one protobuf (under the 2 GB limit, less ``margin``).

    Safe on models of any size: protobuf's own ``ByteSize()`` raises EncodeError past 2 GB,
    so large raw tensors are counted by length and the rest is sized only when small.
    """
    return serialized_size(model) < PROTOBUF_LIMIT - margin


def mode_for(target: Path) -> int:
    """The permissions ``target`` has, or a new file made by ``open()`` would get."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _hard_link_backup(target: Path) -> str | None:
    """A second name for an existing ``target`` so it can be restored (None if none exists)."""
    if not target.is_file():
        return None
    fd, backup = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
    os.close(fd)
    os.unlink(backup)
    try:
        os.link(target, backup)
    except OSError:
        return None  # no hard links on this filesystem: no restore either
    return backup


HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
"""Signals that interrupt a write (the command line turns them into exceptions)."""


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold :data:`HELD_SIGNALS` until the block ends: a signal that arrives meanwhile is
    handled, as it would have been, once the block is over. Makes "create a file and record
    its name" one step, so an interrupted write never leaves a file nobody knows to remove.

    Held in Python, not with a signal mask: the kernel gives a process's signal to any thread
    that does not block it (numpy's BLAS threads, say), and the interpreter then runs the
    handler on the main thread wherever it is. Off the main thread handlers cannot be swapped
    and nothing is held; nor where a handler was installed outside Python."""
    if threading.current_thread() is not threading.main_thread() or any(
            signal.getsignal(sig) is None for sig in HELD_SIGNALS):  # not ours to swap
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _: caught.append(signum))
                for sig in HELD_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            _deliver(caught[0], previous[caught[0]])


def _deliver(signum: int, handler: object) -> None:
    """Handle ``signum`` as ``handler`` (what :func:`signal.signal` returned) would have."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def _new_temp(folder: Path, name: str, temps: list[str]) -> int:
    """A new temporary file beside ``folder / name``, its path recorded in ``temps`` as it is
    created (signals held); returns its descriptor."""
    with held_signals():
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        temps.append(temp)
    return fd


def refuse_unwritable(path: Path, role: str) -> None:
    """Refuse, before any work is done, a file that cannot be made where ``path`` says (a
    folder that is read-only, full, or not a real file system): a temporary file is made
    there and removed at once."""
    if not path.parent.is_dir():
        raise OnnxrepError(f"{path.parent}: no such directory (for {role})")
    temps: list[str] = []
    try:
        os.close(_new_temp(path.parent, path.name, temps))
    except OSError as e:
        raise OnnxrepError(f"{path}: cannot write {role} there ({e.strerror or e})") from None
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def write_temp(folder: Path, name: str, chunks: Iterable[bytes], mode: int,
               temps: list[str]) -> str:
    """``chunks`` written to a new temporary file beside ``folder / name`` with permissions
    ``mode``; returns its path, which is also appended to ``temps`` the moment the file
    exists (the caller removes what ``temps`` holds if it does not rename the file). Removed
    again if writing fails."""
    fd = _new_temp(folder, name, temps)
    temp = temps[-1]
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError, AttributeError):
                os.fchmod(f.fileno(), mode)
            for chunk in chunks:
                f.write(chunk)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _externalize(
    model: onnx.ModelProto, folder: Path, data_name: str, mode: int, temps: list[str]
) -> tuple[onnx.ModelProto, str]:
    """A copy of ``model`` whose large initializers point into a new data file (a temporary
    path, recorded in ``temps`` as it is created and renamed to ``data_name`` by the caller).
    ``model`` is not modified."""
    shell = model_without(model, "initializer")
    graph = shell.graph
    fd = _new_temp(folder, data_name, temps)
    temp = temps[-1]
    offset = 0
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError, AttributeError):
                os.fchmod(f.fileno(), mode)
            for t in model.graph.initializer:
                raw = t.raw_data if t.HasField("raw_data") else b""  # one copy, not three
                if len(raw) >= EXTERNAL_THRESHOLD:
                    stub = graph.initializer.add()
                    stub.name, stub.data_type = t.name, t.data_type
                    stub.dims.extend(t.dims)
                    if t.doc_string:
                        stub.doc_string = t.doc_string
                    pad = (-offset) % 4096  # page-aligned, as onnx's own writer does
                    f.write(b"\0" * pad)
                    offset += pad
                    f.write(raw)
                    # by hand: onnx's set_external_data wants the bytes in the stub too
                    stub.data_location = onnx.TensorProto.EXTERNAL
                    for key, value in (("location", data_name), ("offset", offset),
                                       ("length", len(raw))):
                        entry = stub.external_data.add()
                        entry.key, entry.value = key, str(value)
                    offset += len(raw)
                else:
                    graph.initializer.append(t)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return shell, temp


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def light_keeps(qdq: set[str]) -> InlinePredicate:
    """Which tensors keep their values in a light copy: all but float tensors of over 64
    elements, and those too when a Quantize/DequantizeLinear reads them (names in ``qdq``: the
    runtime's quantized kernels need their scales)."""

    def keep(name: str, elem_type: int, elements: int) -> bool:
        return elem_type not in FLOAT_TYPES or elements <= 64 or name in qdq

    return keep


InlinePredicate = Callable[[str, int, int], bool]
"""``(name, element type, element count)`` → keep the tensor's values in a light copy."""


def light_copy(model: onnx.ModelProto, *, node_metadata: bool = True) -> onnx.ModelProto:
    """The model with large float initializers replaced by graph inputs of equal shape.

    Shape inference reads the values of small integer tensors (Reshape targets, Pad amounts) but
    only the shapes of weights, and the checker's structural rules hold for both, so this keeps
    inference and checks cheap for large models (see :func:`light_keeps`). Without
    ``node_metadata`` the nodes' ``metadata_props`` are left out too: the dynamo exporter
    describes every node in them at length (three quarters of a light copy's bytes), and
    neither shape inference nor onnxruntime's optimizer reads them.
    """
    keep = light_keeps({x for n in model.graph.node if n.op_type in QDQ_OPS for x in n.input})
    skeleton = model_without(model, "initializer")
    g = skeleton.graph
    src = model.graph
    declared = {v.name for v in src.input}
    for t in src.initializer:
        if not keep(t.name, t.data_type, math.prod(t.dims)):
            if t.name not in declared:
                v = g.input.add()
                v.name = t.name
                tensor_type = v.type.tensor_type
                tensor_type.elem_type = t.data_type
                tensor_type.shape.SetInParent()  # present even without dims, as onnx.helper has it
                for d in t.dims:
                    tensor_type.shape.dim.add().dim_value = d
        else:
            g.initializer.append(t)
    if not node_metadata:
        for node in g.node:
            if len(node.metadata_props):
                node.ClearField("metadata_props")
    return skeleton


def model_without(model: onnx.ModelProto, *graph_fields: str) -> onnx.ModelProto:
    """A copy of ``model`` with every field but the named fields of its graph (say
    ``"initializer"``): one copy of what is kept, none of what is left out. Fields the
    installed onnx does not know, on the model and on its graph, are kept too."""
    out = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name != "graph":
            copy_field(out, descriptor.name, value)
    for descriptor, value in model.graph.ListFields():
        if descriptor.name not in graph_fields:
            copy_field(out.graph, descriptor.name, value)
    copy_unknown_fields(model, out)
    if model.HasField("graph"):
        copy_unknown_fields(model.graph, out.graph)
    return out


def copy_unknown_fields(src: Message, dst: Message) -> None:
    """Add to ``dst`` the fields of ``src`` its schema does not know (written by a newer onnx),
    which copying known fields one by one leaves out."""
    if _UnknownFieldSet is not None and len(_UnknownFieldSet(src)):
        dst.MergeFromString(_encode_unknown(_UnknownFieldSet(src)))


def _encode_unknown(fields: Iterable[Any]) -> bytes:
    """Protobuf's wire format of unknown fields (``UnknownFieldSet`` entries)."""
    out = bytearray()
    for f in fields:
        out += _varint(f.field_number << 3 | f.wire_type)
        if f.wire_type == 0:  # varint
            out += _varint(f.data)
        elif f.wire_type == 1:  # 64 bits
            out += f.data.to_bytes(8, "little")
        elif f.wire_type == 2:  # length-delimited
            out += _varint(len(f.data)) + f.data
        elif f.wire_type == 3:  # group: its fields, then its end tag
            out += _encode_unknown(f.data) + _varint(f.field_number << 3 | 4)
        else:  # 5: 32 bits
            out += f.data.to_bytes(4, "little")
    return bytes(out)


def copy_field(dst: Message, name: str, value: object) -> None:
    """Copy one set protobuf field (repeated, message or scalar) onto ``dst``."""
    target = getattr(dst, name)
    if hasattr(target, "extend"):
        target.extend(value)
    elif hasattr(target, "CopyFrom"):
        target.CopyFrom(value)
    else:
        setattr(dst, name, value)
