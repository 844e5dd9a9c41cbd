"""Parity: do two models give the same outputs on the same inputs? And the runtimes they run in.

Both models run in onnxruntime with ``ORT_DISABLE_ALL`` by default, so onnxruntime's own
fusions can neither hide nor cause a difference. With ``runtime="openvino"`` the checked model
runs in OpenVINO's CPU plugin at ``PARITY_PRECISION`` (f32) instead, against the same reference
run in onnxruntime (``reference`` picks another runtime for it). Inputs come from an ``.npz``
file or are generated from the declared input types, one set per seed (floats ~ N(0, 1),
integers uniform in [0, 10), booleans fair coins). A dynamic dimension takes its size from
``shapes`` or, by default, 1 on the first axis and 64 elsewhere; a named one has the same size
in every input.

The runtimes sit behind one small interface (:class:`Session`: inputs, outputs, run, and a
:class:`RuntimeInfo` naming the runtime, its version and how it ran); :data:`RUNTIMES` maps
each name to the function that opens a model in it, for parity here and timing in ``bench``.

Verdict per output: ``max|a - b| <= atol + rtol * max|reference|`` over every seed — the error
is judged against the output's own scale, so one tolerance serves logits and feature maps.
The defaults scale with the output dtype (``DEFAULT_TOLERANCES``). Non-float outputs must be
equal; NaNs must sit in the same places.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import re
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort

from onnxrep import io
from onnxrep.errors import OnnxrepError, one_line

__all__ = [
    "DEFAULT_TOLERANCES",
    "PARITY_PRECISION",
    "RUNTIMES",
    "CompareResult",
    "OutputDiff",
    "RuntimeInfo",
    "Session",
    "compare",
    "make_feeds",
    "require",
    "session",
]

DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-9),
    "float32": (1e-5, 1e-4),
    "float16": (1e-3, 1e-2),
    "bfloat16": (1e-2, 5e-2),
}
"""dtype → (atol, rtol); see the module docstring for the verdict."""

DYNAMIC_BATCH = 1
DYNAMIC_OTHER = 64
LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

ModelLike = onnx.ModelProto | str | os.PathLike[str]


@dataclass(frozen=True)
class OutputDiff:
    """How far one output of B is from A's (the reference), worst over all seeds."""

    name: str
    dtype: str
    shape: list[int]
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    ref_max: float
    atol: float
    rtol: float
    ok: bool
    note: str = ""


@dataclass(frozen=True)
class RuntimeInfo:
    """Which runtime ran a model, and how: ``level`` is onnxruntime's graph optimization level,
    ``precision`` the inference precision of a runtime that picks one (OpenVINO)."""

    name: str
    version: str
    level: str | None = None
    device: str | None = None
    precision: str | None = None

    @property
    def label(self) -> str:
        """``onnxruntime 1.32.0 disable_all``, ``openvino 2026.4.1 CPU, f32 inference
        precision``."""
        text = " ".join(x for x in (self.name, self.version, self.device, self.level) if x)
        return text + (f", {self.precision} inference precision" if self.precision else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


@dataclass
class CompareResult:
    outputs: list[OutputDiff]
    seeds: int
    level: str
    inputs: dict[str, list[int]] = field(default_factory=dict)
    runtime: RuntimeInfo | None = None
    """Where the checked model ran."""
    reference: RuntimeInfo | None = None
    """Where the reference model ran."""

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seeds": self.seeds,
            "level": self.level,
            "runtime": self.runtime.to_dict() if self.runtime else None,
            "reference": self.reference.to_dict() if self.reference else None,
            "inputs": self.inputs,
            "outputs": [asdict(o) for o in self.outputs],
        }


# -- runtimes ------------------------------------------------------------------------------------

PARITY_PRECISION = "f32"
"""The inference precision parity asks of a runtime that may compute in less than the model's
types: OpenVINO's CPU plugin defaults to bf16 or f16 on CPUs that have them."""


@dataclass(frozen=True)
class _Arg:
    name: str
    shape: list[int | str | None]
    type: str


class Session(Protocol):
    """A model loaded in a runtime: what :func:`session` returns, for parity and timing."""

    info: RuntimeInfo

    def get_inputs(self) -> Sequence[Any]:
        """Inputs with ``name``, ``shape`` (ints; None or a name where dynamic) and ``type``
        (onnxruntime's spelling: ``tensor(float)``)."""
        ...

    def get_outputs(self) -> Sequence[Any]:
        ...

    def run(self, names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        ...

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Get ready to run on inputs shaped like ``feeds`` (untimed: OpenVINO compiles a
        model with dynamic inputs for their shapes here)."""
        ...


class OrtSession:
    """An onnxruntime InferenceSession on the CPU provider."""

    def __init__(self, sess: ort.InferenceSession, level: str) -> None:
        self.inner = sess
        self.info = RuntimeInfo("onnxruntime", ort.__version__, level=level)

    def get_inputs(self) -> Sequence[Any]:
        return self.inner.get_inputs()

    def get_outputs(self) -> Sequence[Any]:
        return self.inner.get_outputs()

    def run(self, names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.inner.run(names, feeds, _SILENT_RUN)  # type: ignore[arg-type]

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Nothing to do: onnxruntime runs any shape as loaded."""


_SILENT_RUN = ort.RunOptions()
_SILENT_RUN.log_severity_level = 4
"""A failed run raises, with its message; onnxruntime does not also log it to the terminal."""


class ReferenceSession:
    """onnx's reference evaluator behind InferenceSession's interface.

    Used for parity only when onnxruntime's CPU provider lacks a kernel the model needs (it has
    no float64 Conv, for one); slow, but exact in the model's own dtype.
    """

    runtime = "onnx.reference"

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx.reference import ReferenceEvaluator

        self._eval = ReferenceEvaluator(model)
        inits = {t.name for t in model.graph.initializer}
        self._inputs = [_arg(v) for v in model.graph.input if v.name not in inits]
        self._outputs = [_arg(v) for v in model.graph.output]
        self.info = RuntimeInfo(self.runtime, onnx.__version__)

    def get_inputs(self) -> list[_Arg]:
        return self._inputs

    def get_outputs(self) -> list[_Arg]:
        return self._outputs

    def run(self, names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._eval.run(names, dict(feeds)))

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Nothing to do: the evaluator runs any shape."""


class OpenVinoSession:
    """A model compiled by OpenVINO for its CPU plugin: one stream, the LATENCY hint,
    ``threads`` inference threads (0: OpenVINO's choice) and ``precision`` as the inference
    precision hint (None: the plugin's default, bf16 or f16 on CPUs that have them). The
    precision the plugin settled on is in ``info``.

    A model with dynamic input dimensions is compiled again, once per set of input shapes it
    meets, with those shapes made static (as it would be deployed), so that OpenVINO's slower
    dynamic-shape path is neither timed nor trusted for parity.
    """

    def __init__(self, model: ModelLike, *, threads: int, precision: str | None) -> None:
        ov = _load("openvino")
        props, hints = ov.properties, ov.properties.hint
        self._config: dict[Any, Any] = {
            props.streams.num: 1, hints.performance_mode: hints.PerformanceMode.LATENCY,
        }
        if threads > 0:
            self._config[props.inference_num_threads] = threads
        if precision is not None:
            self._config[hints.inference_precision] = getattr(ov.Type, precision)
        self._label = _label(model)
        # a model read from a temporary file may keep reading its weights from there
        self._files = contextlib.ExitStack()
        try:
            try:
                read = _openvino_core().read_model(self._files.enter_context(_source(model)))
            except Exception as e:  # OpenVINO raises RuntimeError and its own types
                raise OnnxrepError(f"openvino cannot read {self._label}: {one_line(e)}") from None
            compiled = self._compile(read)
            used = compiled.get_property(hints.inference_precision).get_type_name()
        except BaseException:
            self._files.close()
            raise
        # names as read: compiling may merge the names of outputs that are the same tensor
        self._inputs = [_openvino_arg(p) for p in read.inputs]
        self._outputs = [_openvino_arg(p) for p in read.outputs]
        self._index = {o.name: i for i, o in enumerate(self._outputs)}
        self._requests: dict[tuple[tuple[str, tuple[int, ...]], ...], Any] = {}
        if any(p.get_partial_shape().is_dynamic for p in read.inputs):
            self._dynamic: Any = read
            weakref.finalize(self, self._files.close)
        else:
            self._dynamic = None
            self._files.close()
        self._request = compiled.create_infer_request()
        self.info = RuntimeInfo("openvino", _version("openvino"), device="CPU", precision=used)

    def _compile(self, read: Any, shapes: str = "") -> Any:
        try:
            return _openvino_core().compile_model(read, "CPU", self._config)
        except Exception as e:  # OpenVINO raises RuntimeError and its own types
            where = f" with inputs {shapes}" if shapes else ""
            raise OnnxrepError(f"openvino cannot run {self._label}{where}: {one_line(e)}") from None

    def _request_for(self, feeds: Mapping[str, np.ndarray]) -> Any:
        if self._dynamic is None:
            return self._request
        key = tuple(sorted((k, tuple(np.shape(v))) for k, v in feeds.items()))
        if key not in self._requests:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in key)
            static = self._dynamic.clone()
            try:
                static.reshape({k: list(shape) for k, shape in key})
            except Exception as e:  # OpenVINO raises RuntimeError and its own types
                raise OnnxrepError(f"openvino cannot run {self._label} with inputs {shapes}: "
                                   f"{one_line(e)}") from None
            compiled = self._compile(static, shapes)
            self._requests[key] = compiled.create_infer_request()
        return self._requests[key]

    def get_inputs(self) -> list[_Arg]:
        return self._inputs

    def get_outputs(self) -> list[_Arg]:
        return self._outputs

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Compile a model with dynamic inputs for the shapes of ``feeds``."""
        self._request_for(feeds)

    def run(self, names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        results = self._request_for(feeds).infer(dict(feeds), share_inputs=True).to_tuple()
        if names is None:
            return list(results)
        return [results[self._index[name]] for name in names]


def _arg(v: onnx.ValueInfoProto) -> _Arg:
    tt = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tt.shape.dim]
    np_type = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    names = {np.float32: "float", np.float64: "double", np.float16: "float16", np.bool_: "bool"}
    return _Arg(v.name, dims, f"tensor({names.get(np_type.type, np_type.name)})")


_OPENVINO_TYPES = {
    "f32": "float", "f64": "double", "f16": "float16", "bf16": "bfloat16", "boolean": "bool",
    "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
    "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
}


def _openvino_arg(port: Any) -> _Arg:
    shape = port.get_partial_shape()
    dims = ([d.get_length() if d.is_static else None for d in shape]
            if shape.rank.is_static else [])
    kind = port.get_element_type().get_type_name()
    return _Arg(port.get_any_name(), dims, f"tensor({_OPENVINO_TYPES.get(kind, kind)})")


def _load(module: str) -> ModuleType:
    """Import a runtime's package; one line saying how to install it when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f'pip install "onnxrep[{module}]"'
        if getattr(e, "name", None) == module:
            raise OnnxrepError(f"{module} is not installed; install it with: {hint}") from None
        raise OnnxrepError(f"{module} cannot be imported ({one_line(e)}); reinstall it with: "
                           f"{hint}") from None


@functools.cache
def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return str(getattr(_load(distribution), "__version__", "unknown")).split("-")[0]


@functools.cache
def _openvino_core() -> Any:
    """One OpenVINO Core per process: each loads its plugins anew."""
    return _load("openvino").Core()


@contextlib.contextmanager
def _source(model: ModelLike) -> Iterator[bytes | str]:
    """What a runtime reads ``model`` from: its path, its serialized bytes, or — over the
    protobuf limit — a temporary file with external data that lasts as long as the context."""
    if not isinstance(model, onnx.ModelProto):
        yield str(model)
    elif io.fits(model):
        yield model.SerializeToString()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            io.save(model, path, external=True)
            yield str(path)


def quiet_runtime_logs() -> None:
    """Only errors from onnxruntime sessions this module does not create (onnx-graphsurgeon's
    constant folding runs one) reach the terminal."""
    ort.set_default_logger_severity(3)


def runtime_of(sess: Session) -> str:
    return sess.info.name


def _open_onnxruntime(
    model: ModelLike, *, level: str, threads: int, precision: str | None, fallback: bool
) -> Session:
    """A CPU InferenceSession (``precision`` does not apply: onnxruntime computes in the model's
    types). With ``fallback``, a model that onnxruntime has no kernel for, or whose inputs or
    outputs are bfloat16, runs in onnx's reference evaluator instead."""
    try:
        sess = _ort_session(model, level, threads)
    except OnnxrepError as e:
        if not fallback or "NOT_IMPLEMENTED" not in str(e):
            raise
    else:
        args = (*sess.get_inputs(), *sess.get_outputs())
        if not fallback or all(a.type != "tensor(bfloat16)" for a in args):
            return OrtSession(sess, level)
        # onnxruntime's Python API takes and returns no bfloat16 array (numpy has none)
    proto = model if isinstance(model, onnx.ModelProto) else io.load(model, check=False)
    return ReferenceSession(proto)


def _open_openvino(
    model: ModelLike, *, level: str, threads: int, precision: str | None, fallback: bool
) -> Session:
    """An OpenVINO CPU model (``level`` is onnxruntime's; there is no fallback: a model
    OpenVINO cannot run is an error)."""
    return OpenVinoSession(model, threads=threads, precision=precision)


RUNTIMES: dict[str, Callable[..., Session]] = {
    "onnxruntime": _open_onnxruntime,
    "openvino": _open_openvino,
}
"""Runtime name → opener: ``(model, *, level, threads, precision, fallback) -> Session``. A new
runtime is one more opener and its name here (and in the command line's ``RUNTIMES``)."""


def require(runtime: str) -> None:
    """Refuse an unknown runtime, or one that is not installed, before any work is done."""
    if runtime not in RUNTIMES:
        raise OnnxrepError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    _load(runtime)


def session(
    model: ModelLike,
    *,
    runtime: str = "onnxruntime",
    level: str = "disable_all",
    threads: int = 1,
    precision: str | None = None,
    fallback: bool = False,
) -> Session:
    """``model`` (a ModelProto or a path) loaded in ``runtime`` on the CPU; models over the
    protobuf limit go through a temporary file.

    ``level`` is onnxruntime's optimization level; ``precision`` the inference precision asked
    of a runtime that may lower it (OpenVINO); ``fallback`` lets onnxruntime hand a model it
    has no kernel for, or with bfloat16 inputs or outputs, to onnx's reference evaluator
    (parity only; never for timing).
    """
    require(runtime)
    return RUNTIMES[runtime](model, level=level, threads=threads, precision=precision,
                             fallback=fallback)


def _ort_session(model: ModelLike, level: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # errors are raised (one line), not also logged
    try:
        with _source(model) as source:
            return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types
        raise OnnxrepError(f"onnxruntime cannot run {_label(model)}: {one_line(e)}") from None


def _label(model: ModelLike) -> str:
    return "the model" if isinstance(model, onnx.ModelProto) else str(model)


def parse_shapes(specs: list[str] | None) -> dict[str, list[int]]:
    """``["x:1x3x224x224", ...]`` → ``{"x": [1, 3, 224, 224]}``."""
    shapes: dict[str, list[int]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
            if any(d < 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise OnnxrepError(f"bad --shape {spec!r}: expected NAME:1x3x224x224") from None
    return shapes


def make_feeds(
    sess: Session,
    seed: int,
    shapes: Mapping[str, list[int]] | None = None,
) -> dict[str, np.ndarray]:
    """One random input set for ``sess``, reproducible from ``seed``. A named dynamic
    dimension has one size in every input: the size an input given in ``shapes`` has there,
    else the default of its first place (a batch dimension is 1)."""
    shapes = dict(shapes or {})
    rng = np.random.default_rng(seed)
    inputs = sess.get_inputs()
    sizes: dict[str, int] = {}
    for inp in inputs:
        for d, size in zip(inp.shape or (), shapes.get(inp.name, ()), strict=False):
            if isinstance(d, str) and d and sizes.setdefault(d, size) != size:
                raise OnnxrepError(f"--shape gives the dimension {d!r} two sizes "
                                   f"({sizes[d]} and {size})")
    feeds = {}
    for inp in inputs:
        if inp.name in shapes:
            shape = shapes.pop(inp.name)
        else:
            shape = []
            for i, d in enumerate(inp.shape):
                if isinstance(d, int) and d >= 0:
                    shape.append(d)
                    continue
                size = DYNAMIC_BATCH if i == 0 else DYNAMIC_OTHER
                if isinstance(d, str) and d:
                    size = sizes.setdefault(d, size)
                shape.append(size)
        dtype = _numpy_dtype(inp.type)
        if _is_float(dtype):
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            value = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.random(shape) < 0.5
        else:
            raise OnnxrepError(f"cannot generate input {inp.name!r} of type {inp.type}")
        feeds[inp.name] = value
    if shapes:
        raise OnnxrepError(f"--shape names unknown input(s) {sorted(shapes)}")
    return feeds


def _numpy_dtype(ort_type: str) -> np.dtype:
    names = {
        "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
        "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(int16)": np.int16,
        "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64,
        "tensor(bfloat16)": ml_dtypes.bfloat16,
    }
    if ort_type not in names:
        raise OnnxrepError(f"cannot generate inputs of type {ort_type}")
    return np.dtype(names[ort_type])


def _is_float(dtype: np.dtype) -> bool:
    """A float type numpy has, or bfloat16 (from ml_dtypes; its numpy kind is "V")."""
    return dtype.kind in "fc" or dtype == np.dtype(ml_dtypes.bfloat16)


def load_inputs(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` file; any failure is one line naming the file."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("one array, not an .npz archive of named inputs")
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise OnnxrepError(f"{path}: cannot read inputs ({one_line(e)})") from None


def given_inputs(inputs: Mapping[str, np.ndarray] | str | os.PathLike[str],
                 names: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays of ``inputs`` (a mapping or an ``.npz`` file) for the inputs ``names``:
    one for each, and none for anything else (an array no input reads is a mistake worth
    a word, not something to drop silently)."""
    given = load_inputs(inputs) if isinstance(inputs, (str, os.PathLike)) else dict(inputs)
    missing = sorted(set(names) - set(given))
    if missing:
        raise OnnxrepError(f"the inputs given lack {missing}")
    extra = sorted(set(given) - set(names))
    if extra:
        raise OnnxrepError(f"the inputs given have arrays {extra} that the model has no input "
                           f"for (its inputs: {sorted(names)})")
    return {k: np.asarray(given[k]) for k in names}


def compare(
    a: ModelLike,
    b: ModelLike,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike[str] | None = None,
    shapes: Mapping[str, list[int]] | None = None,
    seeds: int = 3,
    level: str = "disable_all",
    runtime: str = "onnxruntime",
    reference: str = "onnxruntime",
    progress: Callable[[int, int], None] | None = None,
) -> CompareResult:
    """Run ``a`` (the reference, in ``reference``) and ``b`` (in ``runtime``) on the same
    inputs and judge every output. onnxruntime runs at ``level``; a runtime that may lower the
    precision (OpenVINO) is asked for ``PARITY_PRECISION``.

    ``progress(done, total)`` is called after every input set.
    """
    if seeds < 1:
        raise OnnxrepError("--seeds must be at least 1")
    require(reference)
    require(runtime)
    sa = session(a, runtime=reference, level=level, precision=PARITY_PRECISION, fallback=True)
    sb = session(b, runtime=runtime, level=level, precision=PARITY_PRECISION, fallback=True)
    names_a = [o.name for o in sa.get_outputs()]
    names_b = [o.name for o in sb.get_outputs()]
    if names_a != names_b:
        raise OnnxrepError(f"the models have different outputs: {names_a} vs {names_b}")
    ins_a = sorted(i.name for i in sa.get_inputs())
    if ins_a != sorted(i.name for i in sb.get_inputs()):
        raise OnnxrepError("the models have different inputs")

    if inputs is not None:
        feed_sets = [given_inputs(inputs, ins_a)]
    else:
        feed_sets = [make_feeds(sa, seed, shapes) for seed in range(seeds)]

    types = {o.name: str(getattr(o, "type", "")) for o in sa.get_outputs()}
    worst: dict[str, OutputDiff] = {}
    for done, feeds in enumerate(feed_sets, 1):
        ra, rb = run(sa, feeds), run(sb, feeds)
        for name, x, y in zip(names_a, ra, rb, strict=True):
            diff = _diff_value(name, x, y, atol, rtol, _map_values(types[name]))
            worst[name] = diff if name not in worst else _worse(worst[name], diff)
        if progress is not None:
            progress(done, len(feed_sets))
    runtimes = {runtime_of(sa), runtime_of(sb)}
    return CompareResult(
        outputs=[_lowered(worst[n], sb.info) for n in names_a],
        seeds=len(feed_sets),
        level=level if runtimes == {"onnxruntime"} else " / ".join(sorted(runtimes)),
        inputs={k: list(v.shape) for k, v in feed_sets[0].items()},
        runtime=sb.info,
        reference=sa.info,
    )


def run(sess: Session, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of ``sess`` on ``feeds``; a failure is one line naming the runtime."""
    try:
        return sess.run(None, feeds)
    except OnnxrepError:
        raise
    except Exception as e:  # every runtime raises its own types
        raise OnnxrepError(f"{sess.info.name} failed to run: {one_line(e)}") from None


def prepare(sess: Session, feeds: Mapping[str, np.ndarray]) -> None:
    """``sess`` made ready for inputs shaped like ``feeds``; a failure is one line."""
    try:
        sess.prepare(feeds)
    except OnnxrepError:
        raise
    except Exception as e:  # every runtime raises its own types
        raise OnnxrepError(f"{sess.info.name} failed to run: {one_line(e)}") from None


def _lowered(diff: OutputDiff, info: RuntimeInfo) -> OutputDiff:
    """A failed output of a type wider than the precision its runtime computed it in says so
    (OpenVINO's CPU plugin computes float64 models in f32)."""
    bits = {"f16": 16, "bf16": 16, "f32": 32}.get(info.precision or "")
    if diff.ok or bits is None or diff.dtype not in ("float64", "float32"):
        return diff
    if np.dtype(diff.dtype).itemsize * 8 <= bits:
        return diff
    note = f"{info.name} computes {diff.dtype} in {info.precision}"
    return dataclasses.replace(diff, note="; ".join(filter(None, (diff.note, note))))


def tolerances(dtype: np.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    default = DEFAULT_TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))
    return (default[0] if atol is None else atol, default[1] if rtol is None else rtol)


def _map_values(output_type: str) -> np.dtype | None:
    """The type of the values of the maps in an output of ``output_type`` (onnxruntime's
    spelling: ``seq(map(int64,tensor(float)))``), which come back as Python numbers."""
    found = re.search(r"map\([^,]+,\s*(?:tensor\()?(\w+)", output_type)
    if found is None:
        return None
    with contextlib.suppress(OnnxrepError):
        return _numpy_dtype(f"tensor({found.group(1)})")
    return None


def _diff_value(name: str, ref: object, got: object, atol: float | None,
                rtol: float | None, values: np.dtype | None = None) -> OutputDiff:
    """:func:`_diff` of two outputs: tensors, or sequences of them (compared element by
    element; they may differ in shape) and maps (ZipMap's: the values of equal keys, as the
    type ``values`` that the output declares, with its tolerance)."""
    if isinstance(ref, dict) or isinstance(got, dict):
        if not (isinstance(ref, dict) and isinstance(got, dict)):
            return _mismatch(name, "a map against another kind of output")
        if ref.keys() != got.keys():
            return _mismatch(name, "map keys differ")
        keys = list(ref)
        return _diff(name, np.asarray([ref[k] for k in keys], dtype=values),
                     np.asarray([got[k] for k in keys], dtype=values), atol, rtol)
    if isinstance(ref, (list, tuple)) or isinstance(got, (list, tuple)):
        if not (isinstance(ref, (list, tuple)) and isinstance(got, (list, tuple))):
            return _mismatch(name, "a sequence against a tensor")
        if len(ref) != len(got):
            return _mismatch(name, f"sequences of {len(ref)} and {len(got)} elements")
        diffs = [_diff_value(name, x, y, atol, rtol, values)
                 for x, y in zip(ref, got, strict=True)]
        if not diffs:
            return _diff(name, np.zeros(0, np.float32), np.zeros(0, np.float32), atol, rtol)
        worst = diffs[0]
        for d in diffs[1:]:
            worst = _worse(worst, d)
        return dataclasses.replace(worst, shape=[len(diffs), *worst.shape])
    return _diff(name, np.asarray(ref), np.asarray(got), atol, rtol)


def _mismatch(name: str, note: str) -> OutputDiff:
    """A failed verdict for outputs of different kinds or structures (no distance: ``inf``,
    written ``null`` in JSON), ``note`` saying how they differ."""
    inf = float("inf")
    return OutputDiff(name, "object", [], inf, inf, inf, 0.0, 0.0, 0.0, 0.0, False, note=note)


def _diff(
    name: str, ref: np.ndarray, got: np.ndarray, atol: float | None, rtol: float | None
) -> OutputDiff:
    a_tol, r_tol = tolerances(ref.dtype, atol, rtol)
    if ref.shape != got.shape or ref.dtype != got.dtype:
        return OutputDiff(
            name, str(ref.dtype), list(ref.shape), float("inf"), float("inf"), float("inf"),
            0.0, 0.0, a_tol, r_tol, False,
            note=f"shape/dtype {list(ref.shape)} {ref.dtype} vs {list(got.shape)} {got.dtype}",
        )
    if not _is_float(ref.dtype):
        mismatches = int(np.count_nonzero(ref != got))
        if ref.dtype.kind in "biu":
            diff = np.abs(ref.astype(np.float64) - got.astype(np.float64)) if ref.size else ref
            max_abs = float(diff.max()) if ref.size else 0.0
        else:  # strings (and other objects): equal or not, no distance
            max_abs = 0.0 if mismatches == 0 else float("inf")
        return OutputDiff(
            name, str(ref.dtype), list(ref.shape), max_abs, max_abs, max_abs,
            1.0 if mismatches == 0 else 0.0, 0.0, 0.0, 0.0, mismatches == 0,
            note="" if mismatches == 0 else f"{mismatches} element(s) differ",
        )
    a, b = ref.astype(np.float64), got.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    same_nan = bool(np.array_equal(nan_a, nan_b))
    finite = ~(nan_a | nan_b)
    a, b = a[finite], b[finite]
    inf_a = np.isinf(a)
    inf_ok = bool(np.array_equal(inf_a, np.isinf(b)) and np.all(a[inf_a] == b[inf_a]))
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    err = np.abs(a - b)
    ref_max = float(np.abs(a).max()) if a.size else 0.0
    max_abs = float(err.max()) if a.size else 0.0
    eps = float(np.finfo(ref.dtype).tiny)
    max_rel = float((err / np.maximum(np.abs(a), eps)).max()) if a.size else 0.0
    mean_abs = float(err.mean()) if a.size else 0.0
    scale = max(ref_max, float(np.abs(b).max()) if b.size else 0.0)
    if scale > 0:  # scaled first: the norms of outputs near 1e200 would overflow
        a_s, b_s = a / scale, b / scale
        norm = float(np.linalg.norm(a_s) * np.linalg.norm(b_s))
        cosine = float(np.dot(a_s, b_s) / norm) if norm > 0 else (1.0 if max_abs == 0 else 0.0)
    else:
        cosine = 1.0 if max_abs == 0 else 0.0
    ok = same_nan and inf_ok and max_abs <= a_tol + r_tol * ref_max
    note = "" if same_nan and inf_ok else "NaN/inf positions differ"
    return OutputDiff(
        name, str(ref.dtype), list(ref.shape), max_abs, max_rel, mean_abs, cosine, ref_max,
        a_tol, r_tol, ok, note,
    )


def _worse(x: OutputDiff, y: OutputDiff) -> OutputDiff:
    return OutputDiff(
        x.name, x.dtype, x.shape,
        max(x.max_abs, y.max_abs), max(x.max_rel, y.max_rel), max(x.mean_abs, y.mean_abs),
        min(x.cosine, y.cosine), max(x.ref_max, y.ref_max), x.atol, x.rtol, x.ok and y.ok,
        x.note or y.note,
    )
