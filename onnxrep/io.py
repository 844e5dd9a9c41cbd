"""Loading and saving models: clear one-line errors for bad files, atomic writes, external data.

``load`` accepts what onnx.checker accepts (IR 3 .. current, default-domain opset 7 .. current,
custom domains that the model imports); a model over the 2 GB protobuf limit keeps its weights
in an external data file and is checked by path. ``save`` writes to a temporary file beside the
target and renames it, so an interrupted run never leaves half a model; weights go to an
external data file ``<name>.data`` when the model would exceed the protobuf limit or when asked.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, Message
from onnx import external_data_helper

from onnxrep.errors import OnnxrepError

__all__ = ["MIN_OPSET", "copy_field", "load", "save", "validate"]

MIN_OPSET = 7
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_THRESHOLD = 1024
"""Tensors of at least this many bytes go to the external data file when one is written."""


def load(path: str | os.PathLike[str], *, check: bool = True) -> onnx.ModelProto:
    """Read, validate and return a model (with its external data loaded)."""
    p = Path(path)
    if not p.exists():
        raise OnnxrepError(f"{p}: no such file")
    if p.is_dir():
        raise OnnxrepError(f"{p}: is a directory, not an ONNX model")
    try:
        size = p.stat().st_size
        if size == 0:
            raise OnnxrepError(f"{p}: file is empty")
        model = onnx.load_model(str(p), load_external_data=False)
    except OnnxrepError:
        raise
    except (DecodeError, ValueError, RuntimeError) as e:
        raise OnnxrepError(f"{p}: not an ONNX model (cannot parse: {_first_line(e)})") from None
    except OSError as e:
        raise OnnxrepError(f"{p}: cannot read ({e.strerror or e})") from None
    validate(model, str(p))
    try:
        external_data_helper.load_external_data_for_model(model, str(p.parent))
    except (OSError, ValueError) as e:
        raise OnnxrepError(f"{p}: cannot read its external data ({_first_line(e)})") from None
    if check:
        try:
            if model.ByteSize() < PROTOBUF_LIMIT:
                onnx.checker.check_model(model)
            else:
                onnx.checker.check_model(str(p))
        except Exception as e:
            raise OnnxrepError(f"{p}: fails onnx.checker: {_first_line(e)}") from None
    return model


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
    used = {n.domain or "ai.onnx" for n in model.graph.node}
    missing = sorted(used - set(opsets))
    if missing:
        raise OnnxrepError(f"{where}: nodes use domain(s) {missing} that the model does not import")


def save(
    model: onnx.ModelProto, path: str | os.PathLike[str], *, external: bool | None = None
) -> None:
    """Write ``model`` atomically; ``external=None`` decides by size."""
    p = Path(path)
    if p.is_dir():
        raise OnnxrepError(f"{p}: is a directory")
    if not p.parent.exists():
        raise OnnxrepError(f"{p.parent}: no such directory")
    if external is None:
        external = _payload(model) >= PROTOBUF_LIMIT - 64 * 2**20
    data_name = p.name + ".data"
    temps: list[str] = []
    try:
        if external:
            shell, data_temp = _externalize(model, p.parent, data_name)
            temps.append(data_temp)
            blob = shell.SerializeToString()
        else:
            blob = model.SerializeToString()
        model_temp = _write_temp(p.parent, p.name, [blob])
        temps.append(model_temp)
        if external:
            os.replace(data_temp, p.parent / data_name)
        os.replace(model_temp, p)
        temps.clear()
    except OSError as e:
        raise OnnxrepError(f"{p}: cannot write ({e.strerror or e})") from None
    finally:
        for t in temps:
            with contextlib.suppress(OSError):
                os.unlink(t)


def _payload(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer) + 2**20


def _write_temp(folder: Path, name: str, chunks: list[bytes]) -> str:
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _externalize(
    model: onnx.ModelProto, folder: Path, data_name: str
) -> tuple[onnx.ModelProto, str]:
    """A copy of ``model`` whose large initializers point into a new data file (returned as a
    temporary path, renamed to ``data_name`` by the caller). ``model`` is not modified."""
    shell = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            copy_field(shell, field.name, value)
    graph = shell.graph
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            copy_field(graph, field.name, value)
    fd, temp = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=folder)
    offset = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for t in model.graph.initializer:
                if t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_THRESHOLD:
                    stub = graph.initializer.add()
                    stub.name, stub.data_type = t.name, t.data_type
                    stub.dims.extend(t.dims)
                    pad = (-offset) % 4096  # page-aligned, as onnx's own writer does
                    f.write(b"\0" * pad)
                    offset += pad
                    f.write(t.raw_data)
                    external_data_helper.set_external_data(
                        stub, data_name, offset=offset, length=len(t.raw_data)
                    )
                    stub.data_location = onnx.TensorProto.EXTERNAL
                    offset += len(t.raw_data)
                else:
                    graph.initializer.append(t)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return shell, temp


def copy_field(dst: Message, name: str, value: object) -> None:
    """Copy one set protobuf field (repeated, message or scalar) onto ``dst``."""
    target = getattr(dst, name)
    if hasattr(target, "extend"):
        target.extend(value)
    elif hasattr(target, "CopyFrom"):
        target.CopyFrom(value)
    else:
        setattr(dst, name, value)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
