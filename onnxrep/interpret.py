"""Evaluate ONNX nodes on numpy arrays: constant subgraphs and routing proofs.

Exporters compute fixed values at run time from constants — shapes, border indices, kernels of
OREPA-style blocks — and onnxrep folds them into initializers (``passes.constants``); DBB's
exported border fills are proven to be paddings by running their data movement on integer tags
(``passes.border``). Both evaluate thousands of small nodes, once each. Doing that in numpy,
node by node, costs microseconds a node; a session of a runtime costs tens of microseconds a
node to build before it runs anything.

:func:`run` evaluates one node. The ops in ``OPS`` are implemented here, after the ONNX
specification of each (opset differences included: attributes that became inputs, integer
division that truncates), and the forms of them not implemented here are run by onnx's
reference evaluator; of the other ops, those in ``REFERENCE_OPS`` are run by the reference
evaluator too, in the forms where it computes what onnxruntime computes. Any other node
raises :class:`Unevaluable`, and the caller leaves it to run time (where onnxruntime folds it
itself when it loads the model): the reference evaluator does not compute every op as
onnxruntime does (BatchNormalization before opset 14 in training mode, Softmax before opset
13 over the last axis only, LpNormalization, Unique, some Resize forms, OneHot of a float
depth, ArgMax over NaN, ...), and a fold must give what the runtime would have computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["OPS", "REFERENCE_OPS", "Unevaluable", "attribute_values", "run"]


class Unevaluable(RuntimeError):
    """The node cannot be evaluated here; the message says why."""


Impl = Callable[[list[np.ndarray | None], dict[str, Any], int], list[np.ndarray]]


_INT, _INTS = onnx.AttributeProto.INT, onnx.AttributeProto.INTS


def attribute_values(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (tensors as numpy arrays)."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.type == _INT:
            out[a.name] = a.i
        elif a.type == _INTS:
            out[a.name] = list(a.ints)
        elif a.type == onnx.AttributeProto.TENSOR:
            out[a.name] = numpy_helper.to_array(a.t)
        elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise Unevaluable(f"{node.op_type} has a subgraph")
        else:
            out[a.name] = helper.get_attribute_value(a)
    return out


REFERENCE_OPS: dict[str, int] = {
    # op → the first opset from which onnx's reference evaluator computes it as the
    # specification (and onnxruntime) does, in the forms ``_reference_refusal`` lets through;
    # tests/test_interpret.py checks each against onnxruntime
    "Split": 1, "Pow": 1, "TopK": 1, "Mod": 1, "Clip": 13, "Relu": 1, "Sign": 1, "Exp": 1,
    "Log": 1, "Sigmoid": 1, "Tanh": 1, "Erf": 1, "Sin": 1, "Cos": 1, "Round": 1, "IsNaN": 1,
    "IsInf": 1, "Xor": 1, "BitShift": 1, "CumSum": 1, "GatherND": 1, "NonZero": 1,
    "Trilu": 1, "Softmax": 13, "LogSoftmax": 13, "ReduceL1": 1, "ReduceL2": 1,
    "ReduceSumSquare": 1,
}
"""Ops outside ``OPS`` that :func:`run` hands to onnx's reference evaluator. Every other op
(and every form ``_reference_refusal`` names) is left to run time; onnxruntime folds such
constants itself when it loads the model, so the runtime loses nothing."""


def _reference_refusal(node: onnx.NodeProto, inputs: Sequence[np.ndarray | None],
                       attrs: dict[str, Any], opset: int) -> str | None:
    """Why a form of an op of ``REFERENCE_OPS`` is not handed over: where the reference
    evaluator computes another value than onnxruntime, or a value where onnxruntime raises."""
    op = node.op_type
    x = inputs[0] if inputs else None
    if x is None:
        return "no input"
    if op == "Pow" and x.dtype.kind != "f":
        return "integer Pow (onnxruntime and numpy overflow differently)"
    if op == "Mod":
        if x.dtype.kind == "f" and not attrs.get("fmod", 0):
            return "float Mod without fmod (onnxruntime refuses it)"
        d = inputs[1] if len(inputs) > 1 else None
        if x.dtype.kind != "f" and (d is None or np.any(np.asarray(d) == 0)):
            return "integer Mod by zero"
    if op == "TopK" and not attrs.get("sorted", 1):
        return "unsorted TopK (its order is the implementation's)"
    if op == "NonZero" and x.ndim == 0:
        return "NonZero of a scalar"
    if op.startswith("Reduce") and x.dtype.kind != "f":
        return "an integer reduction (the reference widens its type)"
    if op == "Split" and opset < 18:
        split = attrs.get("split") if opset < 13 else (inputs[1] if len(inputs) > 1 else None)
        axis = int(attrs.get("axis", 0))
        if split is None and x.shape[axis] % max(len(node.output), 1):
            return "an uneven Split without split sizes (onnxruntime refuses it)"
    return None


def run(node: onnx.NodeProto, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """The outputs of ``node`` (default domain) on ``inputs`` (None for an omitted one)."""
    impl = OPS.get(node.op_type)
    attrs = attribute_values(node)
    if impl is not None:
        try:
            return [np.asarray(v) for v in impl(list(inputs), attrs, opset)]
        except _Fallback:
            pass
    else:
        if opset < REFERENCE_OPS.get(node.op_type, opset + 1):
            raise Unevaluable(f"{node.op_type} at opset {opset} is left to run time")
        why = _reference_refusal(node, inputs, attrs, opset)
        if why is not None:
            raise Unevaluable(f"{node.op_type}: {why} is left to run time")
    return _reference(node, inputs, opset)


class _Fallback(Exception):
    """An attribute or form this module does not implement: ask the reference evaluator."""


def _reference(node: onnx.NodeProto, inputs: Sequence[np.ndarray | None],
               opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    feeds = {n: x for n, x in zip(names, inputs, strict=True) if x is not None}
    single = onnx.NodeProto()
    single.CopyFrom(node)
    del single.input[:]
    single.input.extend(names)
    del single.output[:]
    single.output.extend(f"out{i}" if o else "" for i, o in enumerate(node.output))
    graph = helper.make_graph(
        [single], "node",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
         for n, x in feeds.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
         for o in single.output if o],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        outputs = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:  # an op or form the reference evaluator does not run either
        raise Unevaluable(f"{node.op_type}: {' '.join(str(e).split())[:200]}") from None
    # one result per output of the node, lined up with node.output: an omitted output gets
    # an empty placeholder (callers skip outputs without a name)
    computed = iter(outputs)
    return [np.asarray(next(computed)) if o else np.empty(0) for o in node.output]


# --------------------------------------------------------------------------------------------
# helpers


def _axes(inputs: list[np.ndarray | None], attrs: dict[str, Any], index: int,
          opset: int, since: int) -> list[int] | None:
    """Axes given as an attribute before opset ``since`` and as input ``index`` from it on."""
    if opset >= since:
        value = inputs[index] if len(inputs) > index else None
        return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    value = attrs.get("axes")
    return None if value is None else [int(a) for a in value]


def _truncating_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division as ONNX defines it (truncation toward zero, not numpy's floor)."""
    q = np.floor_divide(a, b)
    fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return (q + fix).astype(np.result_type(a, b))


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Impl:
    def impl(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
        if attrs.get("broadcast") or attrs.get("axis") is not None:
            raise _Fallback  # opset < 7 broadcasting rules
        a, b = x[0], x[1]
        assert a is not None and b is not None
        return [np.asarray(fn(a, b)).astype(a.dtype, copy=False)]

    return impl


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return _truncating_divide(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b)


def _compare(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Impl:
    def impl(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
        a, b = x[0], x[1]
        assert a is not None and b is not None
        return [fn(a, b)]

    return impl


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Impl:
    def impl(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
        a = x[0]
        assert a is not None
        with np.errstate(all="ignore"):
            return [np.asarray(fn(a)).astype(a.dtype, copy=False)]

    return impl


def _variadic(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Impl:
    def impl(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
        arrays = [a for a in x if a is not None]
        out = arrays[0]
        for a in arrays[1:]:
            out = fn(out, a)
        return [np.asarray(out).astype(arrays[0].dtype, copy=False)]

    return impl


# --------------------------------------------------------------------------------------------
# the ops


def _shape(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    shape = np.array(np.shape(x[0]), dtype=np.int64)
    start, end = attrs.get("start", 0), attrs.get("end")
    return [shape[start:end]]


def _size(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    return [np.array(np.size(x[0]), dtype=np.int64)]


def _identity(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    return [x[0]]  # type: ignore[list-item]


def _constant(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    if "value" in attrs:
        return [np.asarray(attrs["value"])]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return [np.array(attrs[key], dtype=dtype)]
    raise _Fallback


def _cast(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    a = x[0]
    assert a is not None
    to = helper.tensor_dtype_to_np_dtype(int(attrs["to"]))
    if attrs.get("saturate", 1) != 1 or to.kind not in "fiub" or a.dtype.kind not in "fiub":
        raise _Fallback  # bfloat16 and float8 (ml_dtypes types), strings
    with np.errstate(all="ignore"):
        return [a.astype(to)]


def _cast_like(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    a, like = x[0], x[1]
    assert a is not None and like is not None
    return _cast([a], {"to": helper.np_dtype_to_tensor_dtype(like.dtype),
                       **{k: v for k, v in attrs.items() if k == "saturate"}}, opset)


def _gather(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data, indices = x[0], x[1]
    assert data is not None and indices is not None
    axis = int(attrs.get("axis", 0)) % max(1, data.ndim)
    size = data.shape[axis]
    idx = np.where(indices < 0, indices + size, indices)
    if np.any((idx < 0) | (idx >= size)):
        raise _Fallback
    return [np.take(data, idx, axis=axis)]


def _unsqueeze(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data = x[0]
    assert data is not None
    axes = _axes(x, attrs, 1, opset, 13)
    if axes is None:
        raise _Fallback
    rank = data.ndim + len(axes)
    out = data
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return [out]


def _squeeze(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data = x[0]
    assert data is not None
    axes = _axes(x, attrs, 1, opset, 13)
    if axes is None:
        return [np.squeeze(data)]
    axes = [a % data.ndim for a in axes]
    if any(data.shape[a] != 1 for a in axes):
        raise _Fallback
    return [np.squeeze(data, axis=tuple(axes))]


def _concat(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    arrays = [a for a in x if a is not None]
    return [np.concatenate(arrays, axis=int(attrs["axis"]))]


def _reshape(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data = x[0]
    assert data is not None
    if opset < 5:
        raise _Fallback
    shape = [int(d) for d in np.asarray(x[1]).reshape(-1)]
    if not attrs.get("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    elif 0 in shape and -1 in shape:
        raise _Fallback
    return [data.reshape(shape)]


def _flatten(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data = x[0]
    assert data is not None
    axis = int(attrs.get("axis", 1))
    axis = axis + data.ndim if axis < 0 else axis
    outer = int(np.prod(data.shape[:axis], dtype=np.int64))
    inner = int(np.prod(data.shape[axis:], dtype=np.int64))
    return [data.reshape(outer, inner)]


def _transpose(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data = x[0]
    assert data is not None
    perm = attrs.get("perm")
    return [np.transpose(data, None if perm is None else [int(p) for p in perm])]


def _expand(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data, shape = x[0], x[1]
    assert data is not None and shape is not None
    target = np.broadcast_shapes(data.shape, tuple(int(d) for d in shape.reshape(-1)))
    return [np.array(np.broadcast_to(data, target))]


def _tile(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data, repeats = x[0], x[1]
    assert data is not None and repeats is not None
    return [np.tile(data, [int(r) for r in repeats.reshape(-1)])]


def _slice(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data = x[0]
    assert data is not None
    if opset < 10:
        starts, ends, axes, steps = attrs.get("starts"), attrs.get("ends"), attrs.get("axes"), None
    else:
        starts, ends = x[1], x[2]
        axes = x[3] if len(x) > 3 else None
        steps = x[4] if len(x) > 4 else None
    if starts is None or ends is None:
        raise _Fallback
    starts = [int(v) for v in np.asarray(starts).reshape(-1)]
    ends = [int(v) for v in np.asarray(ends).reshape(-1)]
    axes = list(range(len(starts))) if axes is None else [
        int(a) % data.ndim for a in np.asarray(axes).reshape(-1)]
    steps = [1] * len(starts) if steps is None else [int(s) for s in np.asarray(steps).reshape(-1)]
    index: list[slice] = [slice(None)] * data.ndim
    for a, start, end, step in zip(axes, starts, ends, steps, strict=True):
        if step == 0:
            raise _Fallback
        size = data.shape[a]
        start += size if start < 0 else 0
        end += size if end < 0 else 0
        if size == 0:
            index[a] = slice(0, 0)
        elif step > 0:  # the clamping of the ONNX specification, then a plain slice
            index[a] = slice(min(max(start, 0), size), min(max(end, 0), size), step)
        else:
            end = min(max(end, -1), size - 1)
            index[a] = slice(min(max(start, 0), size - 1), None if end < 0 else end, step)
    return [data[tuple(index)]]


def _range(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    """``start + i * delta``, as the specification writes it. A float range is evaluated
    only where that equals the running sum ``start + delta + delta ...`` in its dtype, which
    onnxruntime computes: elsewhere runtimes differ, and the node is left to each."""
    start, limit, delta = x[0], x[1], x[2]
    assert start is not None and limit is not None and delta is not None
    out = np.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)
    if out.dtype.kind != "f" or out.size < 2:
        return [out]
    with np.errstate(all="ignore"):
        terms = np.arange(out.size, dtype=out.dtype) * delta.astype(out.dtype) + start
        steps = np.full(out.size, delta, dtype=out.dtype)
        steps[0] = start
        running = np.cumsum(steps, dtype=out.dtype)  # sequential, in the dtype
    if not np.array_equal(terms, running):
        raise Unevaluable("a float Range whose terms start + i*delta differ from its running "
                          "sum in its dtype (runtimes compute it either way)")
    return [terms]


def _constant_of_shape(x: list[np.ndarray | None], attrs: dict[str, Any],
                       opset: int) -> list[np.ndarray]:
    shape = [int(d) for d in np.asarray(x[0]).reshape(-1)]
    value = attrs.get("value")
    value = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return [np.full(shape, value[0], dtype=value.dtype)]


def _where(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    cond, a, b = x[0], x[1], x[2]
    assert cond is not None and a is not None and b is not None
    return [np.where(cond, a, b).astype(a.dtype, copy=False)]


def _not(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    return [np.logical_not(x[0])]


def _reduce(fn: Callable[..., np.ndarray], since: int) -> Impl:
    def impl(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
        data = x[0]
        assert data is not None
        if fn is np.mean and data.dtype.kind != "f":
            raise _Fallback  # an integer mean rounds as the spec says, not as numpy does
        axes = _axes(x, attrs, 1, opset, since)
        keep = bool(attrs.get("keepdims", 1))
        if axes is None or not axes:
            if attrs.get("noop_with_empty_axes", 0) and opset >= since:
                return [data]  # axes omitted or empty: the input as it is
            axes = list(range(data.ndim))
        with np.errstate(all="ignore"):
            out = fn(data, axis=tuple(a % data.ndim for a in axes), keepdims=keep)
        return [np.asarray(out).astype(data.dtype, copy=False)]

    return impl


def _matmul(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    a, b = x[0], x[1]
    assert a is not None and b is not None
    return [np.matmul(*_accumulating(a, b)).astype(a.dtype, copy=False)]


def _einsum(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    arrays = [a for a in x if a is not None]
    equation = attrs["equation"]
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    return [np.einsum(equation.replace(" ", ""), *_accumulating(*arrays),
                      optimize=len(arrays) > 2).astype(arrays[0].dtype, copy=False)]


def _accumulating(*arrays: np.ndarray) -> list[np.ndarray]:
    """Half-precision operands of a contraction, in float64: numpy would sum their products in
    float16 (2 % off on 4,096 terms), where runtimes sum in float32 at least. The result,
    rounded once to the operands' dtype, is what an exact sum gives."""
    if any(a.dtype == np.float16 for a in arrays):
        return [a.astype(np.float64) if a.dtype == np.float16 else a for a in arrays]
    return list(arrays)


def _pad(x: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    data = x[0]
    assert data is not None
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if opset < 11:
        pads = attrs.get("pads") or attrs.get("paddings")
        value, axes = attrs.get("value", 0.0), None
    else:
        pads = x[1]
        value = x[2] if len(x) > 2 and x[2] is not None else 0
        axes = x[3] if len(x) > 3 else None
    if pads is None or mode != "constant":
        raise _Fallback
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = data.ndim
    axes_list = list(range(rank)) if axes is None else [
        int(a) % rank for a in np.asarray(axes).reshape(-1)]
    n = len(axes_list)
    width = [(0, 0)] * rank
    for j, a in enumerate(axes_list):
        width[a] = (pads[j], pads[n + j])
    if any(b < 0 or e < 0 for b, e in width):
        raise _Fallback  # negative pads crop
    fill = np.asarray(value, dtype=data.dtype).reshape(-1)
    return [np.pad(data, width, mode="constant", constant_values=fill[0] if fill.size else 0)]


def _plain_scatter(x: list[np.ndarray | None],
                   attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(data, indices, updates)`` of a scatter that writes (``reduction="none"``); the
    reducing ones go to the fallback."""
    data, indices, updates = x[0], x[1], x[2]
    assert data is not None and indices is not None and updates is not None
    reduction = attrs.get("reduction", b"none")
    if (reduction.decode() if isinstance(reduction, bytes) else reduction) != "none":
        raise _Fallback
    return data, indices, updates


def _scatter_nd(x: list[np.ndarray | None], attrs: dict[str, Any],
                opset: int) -> list[np.ndarray]:
    data, indices, updates = _plain_scatter(x, attrs)
    out = np.array(data, copy=True)
    k = indices.shape[-1]
    flat = indices.reshape(-1, k)
    flat = np.where(flat < 0, flat + np.array(data.shape[:k]), flat)
    rows = updates.reshape((flat.shape[0], *data.shape[k:]))
    if not flat.size:
        return [out]
    linear = np.ravel_multi_index(tuple(flat.T), data.shape[:k])
    # in order, a later update of the same index wins: keep each index's last update
    _, last = np.unique(linear[::-1], return_index=True)
    last = len(linear) - 1 - last
    out.reshape((-1, *data.shape[k:]))[linear[last]] = rows[last]
    return [out]


def _scatter_elements(x: list[np.ndarray | None], attrs: dict[str, Any],
                      opset: int) -> list[np.ndarray]:
    data, indices, updates = _plain_scatter(x, attrs)
    axis = int(attrs.get("axis", 0)) % data.ndim
    out = np.array(data, copy=True)
    idx = np.where(indices < 0, indices + data.shape[axis], indices)
    np.put_along_axis(out, idx, updates, axis=axis)
    return [out]


OPS: dict[str, Impl] = {
    "Shape": _shape, "Size": _size, "Identity": _identity, "Constant": _constant,
    "Cast": _cast, "CastLike": _cast_like, "Gather": _gather, "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze, "Concat": _concat, "Reshape": _reshape, "Flatten": _flatten,
    "Transpose": _transpose, "Expand": _expand, "Tile": _tile, "Slice": _slice,
    "Range": _range, "ConstantOfShape": _constant_of_shape, "Where": _where, "Not": _not,
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply),
    "Div": _binary(_div), "Equal": _compare(np.equal), "Less": _compare(np.less),
    "Greater": _compare(np.greater), "LessOrEqual": _compare(np.less_equal),
    "GreaterOrEqual": _compare(np.greater_equal), "And": _compare(np.logical_and),
    "Or": _compare(np.logical_or), "Neg": _unary(np.negative), "Abs": _unary(np.abs),
    "Sqrt": _unary(np.sqrt), "Reciprocal": _unary(np.reciprocal), "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil), "Min": _variadic(np.minimum), "Max": _variadic(np.maximum),
    "Sum": _variadic(np.add), "ReduceSum": _reduce(np.sum, 13),
    "ReduceMean": _reduce(np.mean, 18), "ReduceProd": _reduce(np.prod, 18),
    "ReduceMax": _reduce(np.max, 18), "ReduceMin": _reduce(np.min, 18), "MatMul": _matmul,
    "Einsum": _einsum, "Pad": _pad, "ScatterND": _scatter_nd,
    "ScatterElements": _scatter_elements,
}
"""Ops evaluated here; every other goes to onnx's reference evaluator."""
