"""Parity in onnxruntime: do two models give the same outputs on the same inputs?

Both models run with ``ORT_DISABLE_ALL`` by default, so onnxruntime's own fusions can neither
hide nor cause a difference. Inputs come from an ``.npz`` file or are generated from the
declared input types, one set per seed (floats ~ N(0, 1), integers uniform in [0, 10),
booleans fair coins). A dynamic dimension takes its size from ``shapes`` or, by default, 1 on
the first axis and 64 elsewhere.

Verdict per output: ``max|a - b| <= atol + rtol * max|reference|`` over every seed — the error
is judged against the output's own scale, so one tolerance serves logits and feature maps.
The defaults scale with the output dtype (``DEFAULT_TOLERANCES``). Non-float outputs must be
equal; NaNs must sit in the same places.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort

from onnxrep import io
from onnxrep.errors import OnnxrepError, one_line

__all__ = [
    "DEFAULT_TOLERANCES",
    "CompareResult",
    "OutputDiff",
    "compare",
    "make_feeds",
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


@dataclass
class CompareResult:
    outputs: list[OutputDiff]
    seeds: int
    level: str
    inputs: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seeds": self.seeds,
            "level": self.level,
            "inputs": self.inputs,
            "outputs": [asdict(o) for o in self.outputs],
        }


@dataclass(frozen=True)
class _Arg:
    name: str
    shape: list[int | str | None]
    type: str


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

    def get_inputs(self) -> list[_Arg]:
        return self._inputs

    def get_outputs(self) -> list[_Arg]:
        return self._outputs

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._eval.run(names, feeds))


def _arg(v: onnx.ValueInfoProto) -> _Arg:
    tt = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tt.shape.dim]
    np_type = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    names = {np.float32: "float", np.float64: "double", np.float16: "float16", np.bool_: "bool"}
    return _Arg(v.name, dims, f"tensor({names.get(np_type.type, np_type.name)})")


def quiet_runtime_logs() -> None:
    """Only errors from onnxruntime sessions this module does not create (onnx-graphsurgeon's
    constant folding runs one) reach the terminal."""
    ort.set_default_logger_severity(3)


def runtime_of(sess: Any) -> str:
    return getattr(sess, "runtime", "onnxruntime")


def session(
    model: ModelLike, *, level: str = "disable_all", threads: int = 1, fallback: bool = False
) -> ort.InferenceSession | ReferenceSession:
    """A CPU InferenceSession; models over the protobuf limit go through a temporary file.

    With ``fallback``, a model that onnxruntime has no kernel for, or whose inputs or outputs
    are bfloat16, runs in onnx's reference evaluator instead (parity only; never for timing).
    """
    try:
        sess = _ort_session(model, level, threads)
    except OnnxrepError as e:
        if not fallback or "NOT_IMPLEMENTED" not in str(e):
            raise
    else:
        args = (*sess.get_inputs(), *sess.get_outputs())
        if not fallback or all(a.type != "tensor(bfloat16)" for a in args):
            return sess
        # onnxruntime's Python API takes and returns no bfloat16 array (numpy has none)
    proto = model if isinstance(model, onnx.ModelProto) else io.load(model, check=False)
    return ReferenceSession(proto)


def _ort_session(model: ModelLike, level: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        if isinstance(model, onnx.ModelProto):
            if io.fits(model):
                return ort.InferenceSession(
                    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                io.save(model, path, external=True)
                return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
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
    sess: ort.InferenceSession,
    seed: int,
    shapes: Mapping[str, list[int]] | None = None,
) -> dict[str, np.ndarray]:
    """One random input set for ``sess``, reproducible from ``seed``."""
    shapes = dict(shapes or {})
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name in shapes:
            shape = shapes.pop(inp.name)
        else:
            shape = [
                d if isinstance(d, int) and d >= 0 else (DYNAMIC_BATCH if i == 0 else DYNAMIC_OTHER)
                for i, d in enumerate(inp.shape)
            ]
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
    progress: Callable[[int, int], None] | None = None,
) -> CompareResult:
    """Run ``a`` (the reference) and ``b`` on the same inputs and judge every output.

    ``progress(done, total)`` is called after every input set.
    """
    if seeds < 1:
        raise OnnxrepError("--seeds must be at least 1")
    sa = session(a, level=level, fallback=True)
    sb = session(b, level=level, fallback=True)
    names_a = [o.name for o in sa.get_outputs()]
    names_b = [o.name for o in sb.get_outputs()]
    if names_a != names_b:
        raise OnnxrepError(f"the models have different outputs: {names_a} vs {names_b}")
    ins_a = sorted(i.name for i in sa.get_inputs())
    if ins_a != sorted(i.name for i in sb.get_inputs()):
        raise OnnxrepError("the models have different inputs")

    if inputs is not None:
        given = load_inputs(inputs) if isinstance(inputs, (str, os.PathLike)) else dict(inputs)
        missing = sorted(set(ins_a) - set(given))
        if missing:
            raise OnnxrepError(f"inputs file lacks {missing}")
        feed_sets = [{k: np.asarray(given[k]) for k in ins_a}]
    else:
        feed_sets = [make_feeds(sa, seed, shapes) for seed in range(seeds)]

    worst: dict[str, OutputDiff] = {}
    for done, feeds in enumerate(feed_sets, 1):
        try:
            ra = sa.run(None, feeds)
            rb = sb.run(None, feeds)
        except Exception as e:
            raise OnnxrepError(f"onnxruntime failed to run: {one_line(e)}") from None
        for name, x, y in zip(names_a, ra, rb, strict=True):
            diff = _diff(name, np.asarray(x), np.asarray(y), atol, rtol)
            worst[name] = diff if name not in worst else _worse(worst[name], diff)
        if progress is not None:
            progress(done, len(feed_sets))
    runtimes = {runtime_of(sa), runtime_of(sb)}
    return CompareResult(
        outputs=[worst[n] for n in names_a],
        seeds=len(feed_sets),
        level=level if runtimes == {"onnxruntime"} else " / ".join(sorted(runtimes)),
        inputs={k: list(v.shape) for k, v in feed_sets[0].items()},
    )


def tolerances(dtype: np.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    default = DEFAULT_TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))
    return (default[0] if atol is None else atol, default[1] if rtol is None else rtol)


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
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64)) if ref.size else ref
        max_abs = float(diff.max()) if ref.size else 0.0
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
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(np.dot(a, b) / norm) if norm > 0 else (1.0 if max_abs == 0 else 0.0)
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
