"""The numpy evaluator agrees with onnxruntime (the runtime whose results a folded constant
replaces), op by op, on random inputs; with onnx's reference evaluator where onnxruntime has
no kernel."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxrep import interpret

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _runtime(node: onnx.NodeProto, inputs: list[np.ndarray | None],
             opset: int) -> list[np.ndarray] | None:
    feeds = {n: x for n, x in zip(node.input, inputs, strict=True) if x is not None}
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
         for n, x in feeds.items()],
        [onnx.ValueInfoProto(name="y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    except Exception:  # no kernel for this op and type
        return None
    return session.run(None, feeds)


def _agree(op: str, inputs: list[np.ndarray | None], opset: int = 18, **attrs: object) -> None:
    names = [f"i{k}" if x is not None else "" for k, x in enumerate(inputs)]
    node = helper.make_node(op, names, ["y"], **attrs)
    mine = interpret.run(node, inputs, opset)
    theirs = _runtime(node, inputs, opset)
    if theirs is None:
        theirs = interpret._reference(node, inputs, opset)
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert a.dtype == b.dtype, (op, a.dtype, b.dtype)
        assert a.shape == b.shape, (op, a.shape, b.shape)
        np.testing.assert_array_equal(a, b)


ints = st.integers(-7, 7)


@SETTINGS
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.data())
def test_slice(shape: list[int], data: st.DataObject) -> None:
    x = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    n = data.draw(st.integers(1, len(shape)))
    axes = data.draw(st.permutations(range(len(shape))))[:n]
    starts = [data.draw(st.integers(-9, 9) | st.sampled_from([-(2**62), 2**62])) for _ in axes]
    ends = [data.draw(st.integers(-9, 9) | st.sampled_from([-(2**62), 2**62])) for _ in axes]
    steps = [data.draw(st.sampled_from([-3, -2, -1, 1, 2, 3])) for _ in axes]
    _agree("Slice", [x, np.array(starts), np.array(ends), np.array(axes), np.array(steps)])
    _agree("Slice", [x, np.array(starts), np.array(ends), np.array(axes)])


@SETTINGS
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.data())
def test_gather_and_squeeze_unsqueeze(shape: list[int], data: st.DataObject) -> None:
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    idx = np.array(data.draw(st.lists(st.integers(-shape[axis], shape[axis] - 1), min_size=1,
                                      max_size=3)))
    _agree("Gather", [x, idx], axis=axis)
    _agree("Gather", [x, np.array(idx[0])], axis=axis)
    axes = [data.draw(st.integers(-(len(shape) + 1), len(shape)))]
    _agree("Unsqueeze", [x, np.array(axes)], opset=13)
    _agree("Unsqueeze", [x], opset=11, axes=axes)
    ones = [i for i, d in enumerate(shape) if d == 1]
    if ones:
        _agree("Squeeze", [x, np.array(ones[:1])], opset=13)
        _agree("Squeeze", [x], opset=11, axes=ones[:1])


@SETTINGS
@given(st.lists(ints, min_size=1, max_size=6), st.lists(ints.filter(bool), min_size=1,
                                                         max_size=6))
def test_arithmetic_on_integers_and_floats(a: list[int], b: list[int]) -> None:
    n = min(len(a), len(b))
    for dtype in (np.int64, np.int32, np.float32, np.float64):
        x, y = np.array(a[:n], dtype=dtype), np.array(b[:n], dtype=dtype)
        for op in ("Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater", "Min", "Max"):
            _agree(op, [x, y])
        _agree("Where", [x > 0, x, y])
        _agree("Neg", [x])
        _agree("Abs", [x])
        for to in (1, 6, 7, 9, 10, 11):
            _agree("Cast", [x], to=to)


@SETTINGS
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_shape_ops(shape: list[int], data: st.DataObject) -> None:
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    _agree("Shape", [x])
    _agree("Shape", [x], start=data.draw(st.integers(-4, 4)), end=data.draw(st.integers(-4, 4)))
    _agree("Size", [x])
    _agree("Transpose", [x], perm=list(data.draw(st.permutations(range(len(shape))))))
    _agree("Flatten", [x], axis=data.draw(st.integers(-len(shape), len(shape))))
    target = [0, -1] if len(shape) > 1 else [-1]
    _agree("Reshape", [x, np.array(target)])
    _agree("Expand", [x, np.array([2] + [1] * len(shape))])
    _agree("Tile", [x, np.array([data.draw(st.integers(1, 3)) for _ in shape])])
    _agree("Concat", [x, x], axis=data.draw(st.integers(-len(shape), len(shape) - 1)))
    axes = sorted(set(data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1))))
    for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"):
        _agree(op, [x, np.array(axes)], keepdims=data.draw(st.integers(0, 1)))


def test_range_constant_of_shape_and_friends() -> None:
    _agree("Range", [np.array(2), np.array(11), np.array(3)])
    _agree("Range", [np.array(5.0, np.float32), np.array(-1.0, np.float32),
                     np.array(-1.5, np.float32)])
    _agree("ConstantOfShape", [np.array([2, 3])],
           value=helper.make_tensor("v", 7, [1], [5]))
    _agree("ConstantOfShape", [np.array([2, 3])])
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    _agree("Pad", [x, np.array([0, 1, 2, 0, 2, 1]), np.array(7.0, np.float32)])
    _agree("Einsum", [x, np.ones((4, 5), np.float32)], equation="abc,cd->abd")
    _agree("MatMul", [x, np.ones((4, 5), np.float32)])
    idx = np.array([[0, 1], [1, 2], [0, 1]])
    _agree("ScatterND", [x, idx, np.arange(12, dtype=np.float32).reshape(3, 4)])
    _agree("ScatterElements", [x, np.zeros((2, 1, 4), dtype=np.int64),
                               np.ones((2, 1, 4), np.float32)], axis=1)
    _agree("Not", [x > 3])
    _agree("CastLike", [x, np.array([1], dtype=np.int64)])


def test_a_float_range_is_evaluated_only_where_runtimes_agree() -> None:
    """The specification's ``start + i * delta`` and onnxruntime's running sum differ in float32
    for steps like 0.1: such a Range is left to run time; one whose terms agree is folded."""
    for start, limit, delta in ((0.0, 10.0, 0.1), (0.5, 3.7, 0.3)):
        node = helper.make_node("Range", ["s", "l", "d"], ["y"])
        inputs = [np.array(v, np.float32) for v in (start, limit, delta)]
        with pytest.raises(interpret.Unevaluable, match="running sum"):
            interpret.run(node, inputs, 18)
    _agree("Range", [np.array(-1.0, np.float32), np.array(1.0, np.float32),
                     np.array(0.25, np.float32)])
    _agree("Range", [np.array(0.0, np.float32), np.array(64.0, np.float32),
                     np.array(1.0, np.float32)])


@pytest.mark.parametrize("op", ["Einsum", "MatMul"])
def test_half_precision_contractions_sum_as_exactly_as_they_can(op: str) -> None:
    """numpy sums float16 products in float16 (percents off over 4,096 terms); a folded
    constant is the exact sum rounded once, within an ulp of onnxruntime's float32 sum."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (8, 4096)).astype(np.float16)
    b = rng.uniform(0, 1, (4096, 8)).astype(np.float16)
    attrs = {"equation": "ik,kj->ij"} if op == "Einsum" else {}
    node = helper.make_node(op, ["a", "b"], ["y"], **attrs)
    (mine,) = interpret.run(node, [a, b], 18)
    assert mine.dtype == np.float16
    exact = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float16)
    np.testing.assert_array_equal(mine, exact)
    runtime = _runtime(node, [a, b], 18)
    if runtime is not None:
        ulp = np.spacing(np.abs(exact)).astype(np.float64)
        assert np.all(np.abs(mine.astype(np.float64) - runtime[0]) <= ulp)


def test_what_it_does_not_implement_goes_to_the_reference_evaluator() -> None:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    (y,) = interpret.run(node, [x], 18)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-6)


def test_a_node_nothing_can_run_is_unevaluable() -> None:
    node = helper.make_node("NoSuchOp", ["x"], ["y"])
    with pytest.raises(interpret.Unevaluable):
        interpret.run(node, [np.zeros(2)], 18)


_R = np.random.default_rng(7)
_X = _R.standard_normal((2, 3, 4)).astype(np.float32)
_TIES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, -0.0], np.float32)
_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -1.0, 3.0], np.float32)
REFERENCE_CASES: list[tuple[str, list[np.ndarray | None], int, dict[str, object]]] = [
    ("Split", [_X, np.array([1, 2])], 13, {"axis": 1}),
    ("Split", [_X], 11, {"axis": -1, "split": [1, 3]}),
    ("Split", [_X], 18, {"axis": 2, "num_outputs": 3}),
    ("Pow", [np.abs(_X), np.array(1.7, np.float32)], 15, {}),
    ("Pow", [_X, np.array(3, np.int64)], 15, {}),
    ("TopK", [_X, np.array([2])], 11, {"axis": 1, "largest": 0}),
    ("TopK", [np.array([[1.0, 3.0, 3.0, 2.0]], np.float32), np.array([2])], 11, {}),
    ("Mod", [np.arange(-7, 8), np.array([3, -2, 5] * 5)], 13, {}),
    ("Mod", [_X * 5, np.array(-1.5, np.float32)], 13, {"fmod": 1}),
    ("Clip", [_X, np.array(-0.5, np.float32), np.array(0.5, np.float32)], 13, {}),
    ("Clip", [_X], 13, {}),
    ("Relu", [_X], 14, {}),
    ("Sign", [_SPECIAL[1:]], 13, {}),
    ("Exp", [_X * 4], 13, {}),
    ("Log", [np.abs(_X) + 0.01], 13, {}),
    ("Sigmoid", [_X * 6], 13, {}),
    ("Tanh", [_X * 3], 13, {}),
    ("Erf", [_X * 2], 13, {}),
    ("Sin", [_X * 4], 7, {}),
    ("Cos", [_X * 4], 7, {}),
    ("Round", [_TIES], 11, {}),
    ("IsNaN", [_SPECIAL], 13, {}),
    ("IsInf", [_SPECIAL], 10, {"detect_negative": 0}),
    ("Xor", [np.array([True, False, True]), np.array([True, True, False])], 7, {}),
    ("BitShift", [np.array([16, 255, 3], np.uint8), np.array([1, 9, 0], np.uint8)], 11,
     {"direction": "RIGHT"}),
    ("CumSum", [_X, np.array(-1, np.int32)], 14, {"exclusive": 1, "reverse": 1}),
    ("GatherND", [_X, np.array([[[1], [0]], [[2], [1]]])], 13, {"batch_dims": 1}),
    ("NonZero", [np.array([[0, 1, 0], [2, 0, 3]])], 13, {}),
    ("Trilu", [_X, np.array(-1)], 14, {"upper": 0}),
    ("Softmax", [_X * 3], 13, {"axis": 1}),
    ("LogSoftmax", [_X * 3], 13, {"axis": 1}),
    ("ReduceL1", [_X], 13, {"axes": [1], "keepdims": 0}),
    ("ReduceL2", [_X, np.array([-1])], 18, {}),
    ("ReduceL2", [_X], 13, {"axes": [0, 2]}),
    ("ReduceSumSquare", [_X, np.array([], np.int64)], 18, {"noop_with_empty_axes": 1}),
    ("Split", [_X], 13, {"axis": 2}),
]
"""A case (or several) for each op of ``interpret.REFERENCE_OPS``."""
TRANSCENDENTAL = {"Exp", "Log", "Sigmoid", "Tanh", "Erf", "Sin", "Cos", "Softmax",
                  "LogSoftmax", "ReduceL2", "Pow"}
"""Ops onnxruntime computes by its own approximations (MLAS's logistic and tanh are off by up
to ~7e-8 near 0): a folded value may differ from the runtime's in the last bits of the float32
scale of the result (4 ulps of its largest magnitude, or of 1), as any folded float may; the
others are equal."""


def test_every_op_handed_to_the_reference_evaluator_has_a_case() -> None:
    assert {op for op, *_ in REFERENCE_CASES} == set(interpret.REFERENCE_OPS)


@pytest.mark.parametrize(("op", "inputs", "opset", "attrs"), REFERENCE_CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(REFERENCE_CASES)])
def test_the_reference_evaluator_computes_what_onnxruntime_computes(
    op: str, inputs: list[np.ndarray | None], opset: int, attrs: dict[str, object],
) -> None:
    """What the constant step folds through onnx's reference evaluator is what onnxruntime
    would compute at run time."""
    names = [f"i{k}" if x is not None else "" for k, x in enumerate(inputs)]
    count = {"Split": 3 if "num_outputs" in attrs else 2, "TopK": 2}.get(op, 1)
    node = helper.make_node(op, names, [f"y{k}" for k in range(count)], **attrs)
    mine = interpret.run(node, inputs, opset)
    feeds = {n: x for n, x in zip(names, inputs, strict=True) if x is not None}
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
         for n, x in feeds.items()],
        [onnx.ValueInfoProto(name=o) for o in node.output])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    theirs = ort.InferenceSession(model.SerializeToString(), options,
                                  providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
        if op in TRANSCENDENTAL:
            scale = max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, rtol=0, atol=4 * np.finfo(np.float32).eps * scale)
        else:
            np.testing.assert_array_equal(a, b)


_C3 = np.ones(3, np.float32)
LEFT_TO_RUN_TIME: list[tuple[str, list[np.ndarray | None], int, dict[str, object]]] = [
    # the reference evaluator's value is not onnxruntime's
    ("BatchNormalization", [_X[:, :3, :], _C3, _C3, _C3, _C3], 13, {}),  # in training mode
    ("Softmax", [_X], 11, {"axis": 1}),  # only the opset-13 meaning
    ("LpNormalization", [_X], 13, {"p": 1}),
    ("Unique", [_X], 13, {"sorted": 0}),
    ("OneHot", [np.array([0, 1, 2]), np.array(3.7, np.float32), np.array([0.0, 1.0])], 11, {}),
    ("ArgMax", [np.array([1.0, np.nan, 3.0], np.float32)], 13, {}),
    ("ReduceLogSumExp", [np.full((2, 3), -np.inf, np.float32)], 13, {"axes": [1]}),
    ("ReduceSumSquare", [np.arange(6, dtype=np.int32)], 13, {}),  # widened to int64
    ("Pow", [np.array([3], np.int32), np.array([40], np.int32)], 15, {}),  # overflow
    ("TopK", [_X, np.array([2])], 11, {"axis": 1, "sorted": 0}),
    ("NonZero", [np.array(3)], 13, {}),
    # onnxruntime refuses what the reference evaluator computes
    ("Mod", [_X, np.array(1.5, np.float32)], 13, {}),  # float Mod needs fmod=1
    ("Mod", [np.arange(4), np.array([1, 0, 2, 3])], 13, {}),  # by zero
    ("Clip", [_X], 6, {"min": 1.0, "max": -1.0}),
    ("Split", [_X], 13, {"axis": 1}),  # 3 into 2
]


@pytest.mark.parametrize(("op", "inputs", "opset", "attrs"), LEFT_TO_RUN_TIME,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(LEFT_TO_RUN_TIME)])
def test_what_the_reference_evaluator_gets_wrong_is_left_to_run_time(
    op: str, inputs: list[np.ndarray | None], opset: int, attrs: dict[str, object],
) -> None:
    names = [f"i{k}" for k in range(len(inputs))]
    outputs = ["y0", "y1"] if op in ("Split", "TopK") else ["y0"]
    node = helper.make_node(op, names, outputs, **attrs)
    with pytest.raises(interpret.Unevaluable):
        interpret.run(node, inputs, opset)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                "ReduceProd"])
def test_noop_with_empty_axes_leaves_the_input_as_it_is(op: str) -> None:
    """``noop_with_empty_axes=1`` with the axes input omitted (or empty) is the identity."""
    opset = 13 if op == "ReduceSum" else 18
    _agree(op, [_X], opset=opset, noop_with_empty_axes=1)
    _agree(op, [_X, np.array([], np.int64)], opset=opset, noop_with_empty_axes=1)
