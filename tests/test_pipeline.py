"""The pipeline: canonicalization, what it preserves, idempotence, determinism."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxrep
from onnxrep.passes import regions
from tests.builders import GraphBuilder, op_counts
from tests.helpers import optimized


def repvgg(g: GraphBuilder, x: str, c: int) -> str:
    a = g.bn(g.conv(x, c, c, 3), c)
    b = g.bn(g.conv(x, c, c, 1), c)
    return g.node("Relu", [g.node("Add", [g.node("Add", [a, b]), g.bn(x, c)])])


def test_identity_and_constant_nodes_become_initializers() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    w = g.init(g.rng.standard_normal((4, 4, 3, 3)))
    wid = g.node("Identity", [w])  # the TorchScript exporter wraps shared weights like this
    shift = g.node("Constant", [], value=numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32)))
    y = g.node("Add", [g.conv(x, 4, 4, 3, weight=wid), shift])
    y = g.node("Identity", [g.node("Relu", [y])])
    model = g.model([y])
    r = optimized(model, {"Conv": 1, "Relu": 1, "Identity": 1})  # the output's Identity stays
    assert r.applied_by_pattern() == {"conv-affine": 1}


def test_canonicalization_alone_changes_nothing_else() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    w = g.node("Identity", [g.init(g.rng.standard_normal((4, 4, 3, 3)))])
    y = g.node("Relu", [g.conv(x, 4, 4, 3, weight=w)])
    r = optimized(g.model([y]), {"Conv": 1, "Relu": 1})
    assert not r.applied and r.notes


def test_untouched_model_comes_back_byte_identical() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    model = g.model([g.node("Relu", [g.conv(x, 4, 4, 3)])])
    r = onnxrep.optimize(model)
    assert r.model.SerializeToString() == model.SerializeToString()
    assert r.model is not model


def _rich_model() -> onnx.ModelProto:
    g = GraphBuilder()
    x = g.input(["batch", 8, 10, 10], name="image")
    y = repvgg(g, x, 8)
    model = g.model([y])
    model.doc_string = "a model"
    model.producer_name = "exporter"
    model.model_version = 7
    helper.set_model_props(model, {"author": "someone", "license": "MIT"})
    model.graph.doc_string = "the graph"
    model.graph.value_info.append(helper.make_tensor_value_info(y, g.elem, ["batch", 8, 10, 10]))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def test_metadata_inputs_outputs_and_value_info_are_preserved() -> None:
    model = _rich_model()
    r = optimized(model, {"Conv": 1, "Relu": 1}, shapes={"image": [2, 8, 10, 10]})
    out = r.model
    assert out.doc_string == model.doc_string
    assert out.producer_name == model.producer_name and out.model_version == 7
    assert list(out.metadata_props) == list(model.metadata_props)
    assert list(out.opset_import) == list(model.opset_import)
    assert out.ir_version == model.ir_version
    assert out.graph.doc_string == model.graph.doc_string
    assert list(out.graph.input) == list(model.graph.input)
    assert list(out.graph.output) == list(model.graph.output)
    assert list(out.graph.value_info) == list(model.graph.value_info)


def test_optimization_is_idempotent_and_deterministic() -> None:
    model = _rich_model()
    first = onnxrep.optimize(model).model.SerializeToString()
    again = onnxrep.optimize(model).model.SerializeToString()
    assert first == again
    second = onnxrep.optimize(onnx.load_from_string(first))
    assert second.model.SerializeToString() == first
    assert not second.applied


def test_new_initializer_names_are_unique_even_when_names_collide() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    a = g.bn(g.conv(x, 4, 4, 3, name="conv"), 4)
    g.init(np.zeros(1), name="conv.weight")  # a name the fold would like to use
    g.init(np.zeros(1), name="conv.bias")
    other = g.node("Mul", [g.node("Relu", [x]), g.init(np.zeros(1), "conv.weight_1")])
    y = g.node("Add", [a, other])
    r = optimized(g.model([y]))
    names = [t.name for t in r.model.graph.initializer]
    assert len(names) == len(set(names))


def test_custom_domain_nodes_pass_through_untouched() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    y = g.bn(g.conv(x, 4, 4, 3), 4)
    model = g.model([y])
    model.graph.node.append(
        helper.make_node("MyOp", [y], ["custom"], name="mine", domain="com.example", alpha=2.0)
    )
    model.graph.output.append(helper.make_tensor_value_info("custom", g.elem, [None] * 4))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    r = onnxrep.optimize(model)
    assert op_counts(r.model) == {"Conv": 1, "MyOp": 1}
    mine = next(n for n in r.model.graph.node if n.op_type == "MyOp")
    assert mine == model.graph.node[-1]


def _if_model() -> onnx.ModelProto:
    """An If whose branches read an outer tensor produced by a BN (so it must survive)."""
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    cond = g.input([], name="cond", elem=onnx.TensorProto.BOOL)
    c = g.conv(x, 4, 4, 3)
    inner = g.bn(c, 4)
    then = helper.make_graph(
        [helper.make_node("Relu", [inner], ["t_out"])], "then", [],
        [helper.make_tensor_value_info("t_out", g.elem, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", [inner], ["e_out"])], "else", [],
        [helper.make_tensor_value_info("e_out", g.elem, None)],
    )
    model = g.model([])
    model.graph.node.append(
        helper.make_node("If", [cond], ["branch"], then_branch=then, else_branch=other)
    )
    model.graph.output.append(helper.make_tensor_value_info("branch", g.elem, [None] * 4))
    return model


def test_subgraphs_are_left_exactly_as_they_were() -> None:
    model = _if_model()
    r = onnxrep.optimize(model)
    onnx.checker.check_model(r.model)
    if_node = next(n for n in r.model.graph.node if n.op_type == "If")
    assert if_node == next(n for n in model.graph.node if n.op_type == "If")
    # the BN output is read inside the subgraphs: it is folded into the conv but keeps its name
    assert op_counts(r.model) == {"Conv": 1, "If": 1}
    for cond in (True, False):
        feeds = {"cond": np.array(cond)}
        onnxrep_cmp = onnxrep.compare(model, r.model, inputs={
            "x_0": np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32),
            **feeds,
        })
        assert onnxrep_cmp.ok


@pytest.mark.parametrize("opset", [11, 13, 15, 17, 18, 19, 21])
def test_opsets(opset: int) -> None:
    g = GraphBuilder(opset=opset)
    x = g.input([1, 4, 6, 6])
    optimized(g.model([repvgg(g, x, 4)]), {"Conv": 1, "Relu": 1})


def test_unknown_skip_name_is_an_error() -> None:
    with pytest.raises(onnxrep.OnnxrepError, match="unknown pattern"):
        onnxrep.optimize(_rich_model(), skip=["nope"])


def test_in_place_reuses_the_given_model_and_agrees_with_a_copy() -> None:
    model = _rich_model()
    keep = onnx.ModelProto()
    keep.CopyFrom(model)
    copied = onnxrep.optimize(model).model
    reused = onnxrep.optimize(model, in_place=True)
    assert reused.model is model
    assert reused.model.SerializeToString() == copied.SerializeToString()
    assert reused.before.ops == {op: n for op, n in sorted(op_counts(keep).items())}


def test_every_candidate_left_has_a_reason() -> None:
    """BN, affine ops, sums, Pad and AveragePool that stay are each explained."""
    g = GraphBuilder(seed=31)
    x, y = g.input([1, 4, 6, 6]), g.input([1, 4, 6, 6])
    r = g.node("Relu", [x])
    bn = g.bn(r, 4)  # no conv on either side
    scaled = g.node("Mul", [g.node("Relu", [bn]), g.init(np.full((1, 4, 1, 1), 2.0))])
    total = g.node("Add", [scaled, y])  # two sources, no conv
    padded = g.node("Pad", [total, g.init(np.array([0, 0, 1, 1, 0, 0, 1, 1]))])
    pooled = g.node("AveragePool", [padded], kernel_shape=[3, 3])
    result = onnxrep.optimize(g.model([g.node("Relu", [pooled])]))
    why = {s.node: s.reason for s in result.skipped}
    for node in result.model.graph.node:
        if node.op_type != "Relu":
            assert node.name in why, (node.op_type, why)
    assert "folds only into a conv" in why[next(
        n.name for n in result.model.graph.node if n.op_type == "BatchNormalization")]


def _long_affine_chain(links: int) -> onnx.ModelProto:
    g = GraphBuilder(seed=7)
    x = g.input([1, 4, 6, 6])
    y = g.conv(x, 4, 4, 3)
    for i in range(links):
        c = g.init(g.rng.uniform(0.5, 1.5, (1, 4, 1, 1)))
        y = g.node("Mul" if i % 2 else "Add", [y, c])
    return g.model([g.node("Relu", [y])])


@pytest.mark.parametrize("links", [3, 12, 30])
def test_a_chain_longer_than_a_tensor_remembers_folds_whole(links: int) -> None:
    """Each tensor remembers its nearest sources only (regions.MAX_CANDIDATES): a chain longer
    than that folds part of the way in a round, and the next round folds the rest."""
    result = optimized(_long_affine_chain(links), {"Conv": 1, "Relu": 1})
    if links < regions.MAX_CANDIDATES:  # all in reach: one round, and no second to confirm
        assert result.rounds == 1
    else:
        assert result.rounds > 1
    again = onnxrep.optimize(result.model)
    assert not again.applied and again.rounds == 1


def test_a_region_read_by_a_conv_a_pad_stopped_merges_in_a_second_round() -> None:
    """``Pad0(Conv1x1(Sum(Conv1x1(x), Conv3x3(x))))`` (found by the fuzzer): the zero Pad folds
    into the 1x1 conv but passes no longer regions on, so the first round writes two Convs;
    the new Conv then meets the sum's Conv, which only a second round merges."""
    g = GraphBuilder(seed=3)
    x = g.input([1, 2, 5, 5])
    s = g.node("Sum", [g.conv(x, 2, 2, 1, bias=False), g.conv(x, 2, 2, 3, bias=False)])
    y = g.conv(s, 2, 2, 1, bias=False)
    out = g.node("Pad", [y, g.init(np.zeros(8, np.int64))], mode="constant")
    result = optimized(g.model([out]), {"Conv": 1})
    assert result.rounds == 2
    assert not onnxrep.optimize(result.model).applied


def test_a_merge_that_only_a_sum_downstream_pays_for_takes_a_second_round() -> None:
    """``Add(Conv1x1(Pad0(BN(Conv3x3(x)))), Conv3x3(x))``: the first round folds the BN and the
    Pad into their convs; the 3x3 then 1x1 pair alone would cost more as one Conv, but summed
    with the parallel 3x3 of the same source it is one Conv that costs less: a second round
    finds that, so a second optimize finds nothing."""
    g = GraphBuilder(seed=5)
    x = g.input([1, 16, 6, 6])
    u = g.bn(g.conv(x, 16, 2, 3), 2)
    p = g.node("Pad", [u, g.init(np.zeros(8, np.int64))], mode="constant")
    t = g.conv(p, 2, 16, 1)
    out = g.node("Add", [t, g.conv(x, 16, 16, 3)])
    result = optimized(g.model([out]), {"Conv": 1})
    assert result.rounds > 1
    assert not onnxrep.optimize(result.model).applied


def test_the_passes_see_no_value_info_and_type_variables_from_inference() -> None:
    """The graph is imported without the model's value_info (gs would build a Variable per
    entry): intermediate variables get their types from shape inference instead, and the
    model itself keeps its value_info."""
    from onnxrep.graph import ShapeInfo, import_graph, numpy_dtypes

    b = GraphBuilder(seed=40)
    x = b.input([1, 4, 6, 6])
    mid = b.node("Relu", [b.conv(x, 4, 4, 3)])
    model = onnx.shape_inference.infer_shapes(b.model([b.conv(mid, 4, 4, 1)]))
    listed = len(model.graph.value_info)
    assert listed >= 2

    graph = import_graph(model)
    tensors = graph.tensors()
    assert tensors[mid].shape is None and tensors[mid].dtype is None
    numpy_dtypes(graph, ShapeInfo.infer(model))
    assert tensors[mid].dtype == np.float32
    assert len(model.graph.value_info) == listed
