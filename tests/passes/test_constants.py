"""Constant subgraphs: weights computed in ``forward`` fold whatever their size; folds that
would only grow the model do not."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxrep import interpret, io
from onnxrep.graph import ShapeInfo
from onnxrep.passes import constants
from tests.builders import GraphBuilder, op_counts
from tests.helpers import optimized

BIG = 384
"""Channels of a 3x3 kernel of 5.06 MiB of float32, over the 4 MiB size limit."""


def _orepa_like(b: GraphBuilder, x: str, c: int) -> str:
    """OREPA builds its kernel in forward: an origin kxk kernel scaled per output channel, plus
    a 1x1 kernel padded to 3x3 and an Einsum of a 1x1 with a fixed prior, all summed."""
    origin = b.init(b.rng.standard_normal((c, c, 3, 3)) * 0.05)
    vec = b.init(b.rng.uniform(0.5, 1.5, (c, 1, 1, 1)))
    pointwise = b.init(b.rng.standard_normal((c, c, 1, 1)) * 0.05)
    padded = b.node("Pad", [pointwise, b.init(np.array([0, 0, 1, 1, 0, 0, 1, 1]))])
    mix = b.init(b.rng.standard_normal((c, c)) * 0.05)
    prior = b.init(b.rng.standard_normal((c, 3, 3)) * 0.3)
    einsum = b.node("Einsum", [mix, prior], equation="oi,ikl->oikl")
    weight = b.node("Sum", [b.node("Mul", [origin, vec]), padded, einsum])
    return b.bn(b.node("Conv", [x, weight], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), c)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64],
                         ids=["fp32", "fp16", "fp64"])
def test_a_generated_kernel_folds(dtype: type) -> None:
    b = GraphBuilder(dtype, seed=20)
    x = b.input([1, 8, 6, 6])
    r = optimized(b.model([b.node("Relu", [_orepa_like(b, x, 8)])]), {"Conv": 1, "Relu": 1},
                  dtype=np.dtype(dtype).name)
    assert r.applied_by_pattern() == {"conv-bn": 1}


def test_a_generated_kernel_over_the_size_limit_folds() -> None:
    """5 MiB of float32 computed from parameters: folded, then its BN folds as well."""
    b = GraphBuilder(seed=21)
    x = b.input([1, BIG, 6, 6])
    r = optimized(b.model([b.node("Relu", [_orepa_like(b, x, BIG)])]), {"Conv": 1, "Relu": 1})
    assert r.applied_by_pattern() == {"conv-bn": 1}
    (weight,) = [t for t in r.model.graph.initializer if len(t.dims) == 4]
    assert list(weight.dims) == [BIG, BIG, 3, 3]
    assert r.after.params < r.before.params  # the generating parameters are gone


def test_a_fold_that_grows_the_model_is_left_to_run_time() -> None:
    """An Expand of one value to a 16 MiB activation-sized tensor stays an Expand."""
    b = GraphBuilder(seed=22)
    x = b.input([1, 64, 256, 256])
    full = b.node("Expand", [b.init(np.array([0.5])), b.init(np.array([1, 64, 256, 256]))])
    model = b.model([b.node("Add", [x, full])])
    r = optimized(model, {"Expand": 1, "Add": 1})
    assert r.after.bytes < 1 << 20


def test_a_large_expand_on_the_way_to_a_matmul_activation_is_no_weight() -> None:
    """What feeds a MatMul's activation operand is no weight: the size rule applies."""
    b = GraphBuilder(seed=27)
    x = b.input([1, 64, 256, 256])
    full = b.node("Expand", [b.init(np.array([0.5])), b.init(np.array([1, 64, 256, 256]))])
    h = b.node("MatMul", [b.node("Add", [x, full]), b.init(b.rng.standard_normal((256, 8)))])
    r = optimized(b.model([h]), {"Expand": 1, "Add": 1, "MatMul": 1})
    assert r.after.bytes < 1 << 20


def test_a_small_expand_still_folds() -> None:
    b = GraphBuilder(seed=23)
    x = b.input([1, 8, 4, 4])
    scale = b.node("Expand", [b.init(np.array([2.0])), b.init(np.array([1, 8, 1, 1]))])
    optimized(b.model([b.node("Mul", [b.conv(x, 8, 8, 3), scale])]), {"Conv": 1})


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    shapes = ShapeInfo.infer(model, io.light_copy(model))
    return constants.prepare(model, io.light_copy(model), shapes, in_place=False).model


def test_a_generated_weight_is_computed_in_float64_and_rounded_once() -> None:
    b = GraphBuilder(seed=24)
    x = b.input([1, 16, 6, 6])
    a, c, d, e = (b.rng.standard_normal((16, 16, 3, 3)).astype(np.float32) for _ in range(4))
    weight = b.node("Add", [b.node("Mul", [b.init(a), b.init(c)]),
                            b.node("Mul", [b.init(d), b.init(e)])])
    model = b.model([b.node("Conv", [x, weight], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])

    (folded,) = [numpy_helper.to_array(t) for t in _prepared(model).graph.initializer]
    f64 = [v.astype(np.float64) for v in (a, c, d, e)]
    wide = (f64[0] * f64[1] + f64[2] * f64[3]).astype(np.float32)
    assert folded.dtype == np.float32
    np.testing.assert_array_equal(folded, wide)
    assert not np.array_equal(a * c + d * e, wide)  # rounded thrice, it differs somewhere


def test_shapes_fold_where_inference_knows_them_and_only_there() -> None:
    b = GraphBuilder(seed=25)
    fixed, free = b.input([1, 4, 5, 5]), b.input(["n", 4, 5, 5])
    outs = [b.node("Reshape", [x, b.node("Shape", [x])]) for x in (fixed, free)]
    model = _prepared(b.model(outs))
    assert op_counts(model) == {"Reshape": 2, "Shape": 1}
    assert [n.input[0] for n in model.graph.node if n.op_type == "Shape"] == [free]


def test_random_draws_graph_outputs_and_subgraph_reads_stay() -> None:
    b = GraphBuilder(seed=26)
    x = b.input([1, 4])
    noise = b.node("RandomUniformLike", [b.init(np.zeros((1, 4)))])
    shown = b.node("Mul", [b.init(np.ones((1, 4))), b.init(np.full((1, 4), 2.0))])
    read = b.node("Add", [b.init(np.ones((1, 4))), b.init(np.ones((1, 4)))])
    branch = helper.make_graph(
        [helper.make_node("Mul", [x, read], ["inside"])], "branch", [],
        [helper.make_tensor_value_info("inside", onnx.TensorProto.FLOAT, [1, 4])])
    cond = b.init(np.array(True), cast=False)
    chosen = b.node("If", [cond], then_branch=branch, else_branch=branch)
    model = _prepared(b.model([b.node("Add", [x, noise]), shown, chosen]))
    counts = op_counts(model)
    assert counts["RandomUniformLike"] == 1 and counts["Mul"] == 1 and counts["If"] == 1
    assert "Add" in counts and read in {t.name for t in model.graph.initializer}
    onnx.checker.check_model(model, full_check=True)


def test_a_repeated_computation_is_evaluated_once_and_only_where_it_repeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exported border fills repeat one index computation per layer: a node with the same
    op, attributes and input values as an earlier one reuses its result; one that differs
    in any of them is evaluated."""
    calls: Counter[str] = Counter()
    real = interpret.run

    def counted(node: onnx.NodeProto, inputs: list[np.ndarray | None],
                opset: int) -> list[np.ndarray]:
        calls[node.op_type] += 1
        return real(node, inputs, opset)

    monkeypatch.setattr(interpret, "run", counted)
    b = GraphBuilder(seed=28)
    x = b.input([1, 4])
    outs = []
    for value, power in ((2.0, 2), (2.0, 2), (3.0, 2), (2.0, 3)):
        c = b.node("Constant", [], value=numpy_helper.from_array(np.full(4, value, np.float32)))
        p = b.node("Constant", [], value=numpy_helper.from_array(np.array(power, np.float32)))
        shape = b.node("Shape", [x], start=1)  # of a variable: folds from its known shape
        flat = b.node("Reshape", [b.node("Pow", [c, p]), shape])
        outs.append(b.node("Add", [x, flat]))
    model = _prepared(b.model(outs))

    assert op_counts(model) == {"Add": 4}
    assert calls == {"Pow": 3, "Shape": 1, "Reshape": 3}
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    added = [values[n.input[1]] for n in model.graph.node]
    for got, want in zip(added, (4.0, 4.0, 9.0, 8.0), strict=True):
        np.testing.assert_array_equal(got, np.full(4, want, np.float32))


def test_shapes_learned_in_the_scan_are_right_for_every_repeat() -> None:
    """Pads computed from constants: inference does not know the Pads' output shapes, the
    scan learns them (the same answer for the same pads, a new one for new pads), and what
    reads those shapes folds."""
    b = GraphBuilder(seed=29)
    x = b.input([1, 2, 5, 5])
    outs, padded = [], []
    for extra in (1, 1, 2):
        base = b.init(np.array([0, 0, 1, 1, 0, 0, 1, 1]))
        more = b.init(np.array([0, 0, extra, 0, 0, 0, 0, 0]))
        padded.append(b.node("Pad", [x, b.node("Mul", [base, more])]))
        zeros = b.node("ConstantOfShape", [b.node("Shape", [padded[-1]])])
        outs.append(b.node("Add", [padded[-1], zeros]))
    model = b.model(outs)
    known = ShapeInfo.infer(model).shapes
    assert [known.get(p) for p in padded] == [(None, None, None, None)] * 3

    folded = _prepared(model)
    assert op_counts(folded) == {"Pad": 3, "Add": 3}
    dims = {t.name: list(t.dims) for t in folded.graph.initializer}
    added = [dims[n.input[1]] for n in folded.graph.node if n.op_type == "Add"]
    assert added == [[1, 2, 6, 5], [1, 2, 6, 5], [1, 2, 7, 5]]  # extra rows on top


def test_a_repeat_must_ask_for_the_same_outputs() -> None:
    """An equal Split's parts depend on how many outputs it has: two Splits of one constant
    into two and into three parts are no repeat of each other."""
    b = GraphBuilder(seed=30)
    x = b.input([2])
    c = b.init(np.arange(6, dtype=np.float32))
    two = [f"two{i}" for i in range(2)]
    three = [f"three{i}" for i in range(3)]
    b.nodes.append(helper.make_node("Split", [c], two, axis=0))
    b.nodes.append(helper.make_node("Split", [c], three, axis=0))
    outs = [b.node("Add", [x, p]) for p in three]
    outs.append(b.node("Add", [b.node("Concat", two, axis=0), b.init(np.zeros(6))]))
    model = _prepared(b.model(outs, opset=13))

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    added = [values[n.input[1]] for n in model.graph.node if n.op_type == "Add"]
    for got, want in zip(added, ([0, 1], [2, 3], [4, 5]), strict=False):
        np.testing.assert_array_equal(got, np.array(want, np.float32))
    onnx.checker.check_model(model, full_check=True)


def test_a_repeat_for_shapes_must_ask_for_the_same_outputs() -> None:
    """The shapes inference gives an equal Split's parts depend on how many there are."""
    b = GraphBuilder(seed=31)
    x = b.input([1, 2, 5, 5])
    pads = b.node("Mul", [b.init(np.array([0, 0, 1, 0, 0, 0, 0, 0])), b.init(np.array(1))])
    y = b.node("Pad", [x, pads])  # [1, 2, 6, 5], unknown to inference
    outs = []
    for parts in (2, 3):
        names = [f"split{parts}_{i}" for i in range(parts)]
        b.nodes.append(helper.make_node("Split", [y], names, axis=2))
        zeros = b.node("ConstantOfShape", [b.node("Shape", [names[0]])])
        outs += [b.node("Add", [names[0], zeros]), *(b.node("Relu", [n]) for n in names[1:])]
    model = b.model(outs, opset=13)
    folded = _prepared(model)
    dims = {t.name: list(t.dims) for t in folded.graph.initializer}
    added = [dims[n.input[1]] for n in folded.graph.node if n.op_type == "Add"]
    assert added == [[1, 2, 3, 5], [1, 2, 2, 5]]


def test_results_line_up_with_the_outputs_when_one_is_omitted() -> None:
    """TopK asked only for its indices (its values omitted): the result at the indices'
    position holds the indices."""
    node = helper.make_node("TopK", ["x", "k"], ["", "indices"], axis=0)
    values, indices = interpret.run(
        node, [np.array([3.0, 1.0, 2.0], np.float32), np.array([2])], 13)
    assert values.size == 0
    np.testing.assert_array_equal(indices, [0, 2])


def test_inference_is_not_rerun_where_it_cannot_learn_more() -> None:
    """After a scan that leaves only tensors whose static shapes inference knew, the shapes of
    the folded model are those inference would give (it is not run again); where it did not
    know a kept tensor's shape (a Pad of computed pads), it is run again."""
    b = GraphBuilder(seed=32)
    x = b.input([1, 4, 6, 6])
    scale = b.node("Constant", [], value=numpy_helper.from_array(np.full((1, 4, 1, 1), 2.0,
                                                                       np.float32)))
    y = b.node("Mul", [b.conv(x, 4, 4, 3), scale])
    pads = b.node("Mul", [b.init(np.array([0, 0, 1, 1, 0, 0, 1, 1])), b.init(np.array(1))])
    for model, knows in ((b.model([y]), True), (b.model([b.node("Pad", [y, pads])]), False)):
        shapes = ShapeInfo.infer(model)
        step = constants._Round(model, shapes, 17)
        folded = onnx.ModelProto()
        folded.CopyFrom(model)
        step.write(folded, fresh=False)
        settled = step.settled(folded)
        assert (settled is not None) == knows
        if settled is not None:
            again = ShapeInfo.infer(folded)
            assert (settled.shapes, settled.dtypes) == (again.shapes, again.dtypes)


def test_the_shape_of_an_input_with_a_default_is_what_the_input_declares() -> None:
    """An initializer that is also a graph input is a default a caller may override with a
    tensor of another shape: its Shape, or the Shape of what is computed from it, does not
    fold to the default's shape."""
    b = GraphBuilder(seed=33)
    x = b.input([1, 4])
    w = b.input(["n"], name="w")
    b.inits.append(numpy_helper.from_array(np.ones(4, np.float32), "w"))
    direct = b.node("Cast", [b.node("Shape", [w])], to=onnx.TensorProto.FLOAT)
    computed = b.node("Cast", [b.node("Shape", [b.node("Relu", [w])])], to=onnx.TensorProto.FLOAT)
    model = _prepared(b.model([b.node("Add", [x, direct]), b.node("Add", [x, computed])]))
    assert op_counts(model)["Shape"] == 2
    assert [t.name for t in model.graph.initializer] == ["w"]


def _qdq_model(op: str, opset: int) -> onnx.ModelProto:
    """A quantized layer as a QDQ export writes it: ``Q → DQ`` on the activation, ``DQ`` of an
    int8 constant for the weight (per output channel for a Conv), ``Q → DQ`` after."""
    rng = np.random.default_rng(30)
    f = onnx.TensorProto.FLOAT
    if op == "Conv":
        x_shape, w_shape, y_shape = [1, 8, 6, 6], (16, 8, 3, 3), [1, 16, 6, 6]
        w_scale = rng.uniform(0.005, 0.02, 16).astype(np.float32)
        w_zero = np.zeros(16, np.int8)
        attrs: dict[str, object] = {"pads": [1] * 4}
    else:
        x_shape, w_shape, y_shape = [1, 4, 32], (32, 16), [1, 4, 16]
        w_scale, w_zero, attrs = np.array(0.01, np.float32), np.array(0, np.int8), {}
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
             numpy_helper.from_array(np.array(128, np.uint8), "zx"),
             numpy_helper.from_array(w_scale, "sw"), numpy_helper.from_array(w_zero, "zw"),
             numpy_helper.from_array(rng.integers(-100, 100, w_shape).astype(np.int8), "wq")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"],
                              **({"axis": 0} if op == "Conv" else {})),
             helper.make_node(op, ["xd", "wd"], ["m"], **attrs),
             helper.make_node("QuantizeLinear", ["m", "sx", "zx"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sx", "zx"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", f, x_shape)],
                              [helper.make_tensor_value_info("y", f, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("op", ["Conv", "MatMul"])
def test_a_dequantized_constant_weight_stays_for_the_quantized_kernel(op: str,
                                                                        opset: int) -> None:
    """``DequantizeLinear`` of an int8 constant is kept (as onnxruntime's own folding keeps
    it): folded to float, the weight no longer makes a QLinearConv / QLinearMatMul, and the
    runtime re-quantizes a float Conv weight per tensor, changing the outputs."""
    from onnxrep import audit

    model = _qdq_model(op, opset)
    r = optimized(model, {"QuantizeLinear": 2, "DequantizeLinear": 3, op: 1})
    assert not r.notes and not r.applied
    assert {t.name: t.SerializeToString() for t in r.model.graph.initializer} == {
        t.name: t.SerializeToString() for t in model.graph.initializer}
    kernels = audit.kernels_of(r.model).counts()
    assert kernels == audit.kernels_of(model).counts() and kernels.get(f"QLinear{op}") == 1
