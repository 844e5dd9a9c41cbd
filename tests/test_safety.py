"""Graph safety: what an optimization must never touch, and what it must always keep.

Complements tests/test_pipeline.py (metadata of a one-input model, If subgraphs, one custom
op, idempotence of one model) with: shared and overridable initializers, name uniqueness under
collisions, several dynamic inputs and outputs, intermediate graph outputs, custom-domain
look-alikes of folded ops, Loop and Scan bodies, float16 and float64, every opset from 11 to
the newest onnx knows, and determinism across processes. Parity uses tests/helpers.py's
tolerances (float32: 1e-5 + 1e-5 x max|ref|; float16: 2e-3 + 5e-3 x max|ref|) at
ORT_DISABLE_ALL; float64 runs in onnx's reference evaluator (onnxruntime has no double Conv).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.cli import main
from tests.builders import GraphBuilder, op_counts
from tests.helpers import assert_equivalent, optimized


def _names(g: onnx.GraphProto) -> set[str]:
    """Every node and tensor name of a graph and its subgraphs."""
    names = {t.name for t in g.initializer} | {v.name for v in (*g.input, *g.output)}
    names |= {v.name for v in g.value_info}
    for n in g.node:
        names |= {n.name, *n.input, *n.output}
        for a in n.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                names |= _names(sub)
    return names - {""}


def _inits(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: t.SerializeToString() for t in model.graph.initializer}


def _assert_single_assignment(model: onnx.ModelProto) -> None:
    g = model.graph
    produced = [o for n in g.node for o in n.output if o]
    produced += [t.name for t in g.initializer] + [v.name for v in g.input]
    inits = {t.name for t in g.initializer}
    produced = [p for p in produced if not (p in inits and produced.count(p) == 2
                                            and p in {v.name for v in g.input})]
    assert len(produced) == len(set(produced)), "a tensor name is defined twice"
    node_names = [n.name for n in g.node if n.name]
    assert len(node_names) == len(set(node_names)), "two nodes share a name"


def repvgg(g: GraphBuilder, x: str, c: int) -> str:
    a = g.bn(g.conv(x, c, c, 3), c)
    b = g.bn(g.conv(x, c, c, 1), c)
    return g.node("Relu", [g.node("Add", [g.node("Add", [a, b]), g.bn(x, c)])])


# --------------------------------------------------------------------------------------------
# initializers


def test_a_weight_shared_by_a_folded_and_an_unfolded_conv_is_not_edited() -> None:
    g = GraphBuilder(seed=1)
    x = g.input([1, 4, 7, 7], name="x")
    w = g.init(g.rng.standard_normal((4, 4, 3, 3)), name="shared_w")
    b = g.init(g.rng.standard_normal(4), name="shared_b")
    bn = g.bn_params(4)  # shared by a BN that folds and one that cannot
    folded = g.node("BatchNormalization", [g.node("Conv", [x, w, b], pads=[1] * 4), *bn])
    kept = g.node("Conv", [x, w, b], pads=[1] * 4)  # its output is a graph output
    kept_bn = g.node("BatchNormalization", [kept, *bn])
    model = g.model([folded, kept, kept_bn])
    original = _inits(model)
    r = optimized(model, {"Conv": 2, "BatchNormalization": 1})
    after = _inits(r.model)
    for name in ("shared_w", "shared_b", *bn):
        assert after[name] == original[name], f"{name} was edited"
    readers = [n for n in r.model.graph.node if n.op_type == "Conv" and n.input[1] == "shared_w"]
    assert len(readers) == 1 and readers[0].output[0] == kept
    new = set(after) - set(original)
    assert len(new) == 2 and not new & _names(model.graph)


def test_a_weight_read_twice_by_one_region_gets_a_new_initializer() -> None:
    """Add(Conv(x, W), Conv(x, W)) → Conv(x, 2W): W itself must not become 2W."""
    g = GraphBuilder(seed=2)
    x = g.input([1, 4, 7, 7], name="x")
    w = g.init(g.rng.standard_normal((4, 4, 3, 3)), name="w")
    y = g.node("Add", [g.node("Conv", [x, w], pads=[1] * 4), g.node("Conv", [x, w], pads=[1] * 4)])
    model = g.model([g.node("Relu", [y])])
    r = optimized(model, {"Conv": 1, "Relu": 1})
    conv = next(n for n in r.model.graph.node if n.op_type == "Conv")
    assert conv.input[1] != "w" and "w" not in _inits(r.model)


def test_a_weight_that_is_a_graph_output_stays() -> None:
    g = GraphBuilder(seed=3)
    x = g.input([1, 4, 7, 7], name="x")
    w = g.init(g.rng.standard_normal((4, 4, 3, 3)), name="w")
    y = g.bn(g.conv(x, 4, 4, 3, weight=w), 4)
    model = g.model([y])
    model.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4, 3, 3]))
    r = optimized(model, {"Conv": 1})
    assert _inits(r.model)["w"] == _inits(model)["w"]
    assert [o.name for o in r.model.graph.output] == [y, "w"]


def test_an_overridable_initializer_is_not_a_constant() -> None:
    g = GraphBuilder(seed=4)
    x = g.input([1, 4, 7, 7], name="x")
    w = g.init(g.rng.standard_normal((4, 4, 3, 3)), name="w")
    y = g.bn(g.conv(x, 4, 4, 3, weight=w), 4)
    model = g.model([y])
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4, 3, 3]))
    r = onnxrep.optimize(model)
    assert [i.name for i in r.model.graph.input] == ["x", "w"]
    assert op_counts(r.model) == {"Conv": 1, "BatchNormalization": 1}


def _without(what: str) -> onnx.ModelProto:
    """Conv → BN → Relu whose graph output has no shape, or no type at all (as hand-built and
    onnx-graphsurgeon-written graphs have them: onnxruntime runs these)."""
    g = GraphBuilder(seed=18)
    x = g.input(["N", 4, 6, 6], name="x")
    model = g.model([g.node("Relu", [g.bn(g.conv(x, 4, 4, 3), 4)])])
    out = model.graph.output[0]
    if what == "shape":
        out.type.tensor_type.ClearField("shape")
    else:
        out.ClearField("type")
    return model


@pytest.mark.parametrize("what", ["shape", "type"])
def test_an_output_without_shape_or_type_gets_the_inferred_one(what: str, tmp_path: Path,
                                                              capsys) -> None:
    model = _without(what)
    name = model.graph.output[0].name
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    onnxruntime.InferenceSession(model.SerializeToString())  # which runs it
    r = onnxrep.optimize(model)
    onnx.checker.check_model(r.model, full_check=True)
    assert op_counts(r.model) == {"Conv": 1, "Relu": 1}
    declared = r.model.graph.output[0].type.tensor_type
    assert declared.elem_type == TensorProto.FLOAT
    assert [d.dim_value or d.dim_param for d in declared.shape.dim] == ["N", 4, 6, 6]
    assert len(r.warnings) == 1 and repr(name) in r.warnings[0]
    assert_equivalent(model, r.model)
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    assert main(["optimize", str(src), "-o", str(out), "--verify"]) == 0
    err = capsys.readouterr().err
    assert f"onnxrep: warning: graph output {name!r} had no" in err
    assert onnx.load(out).SerializeToString() == r.model.SerializeToString()
    nothing = onnxrep.optimize(model, skip=["conv-bn"])  # no fold: the outputs are still typed
    onnx.checker.check_model(nothing.model, full_check=True)


def test_an_output_of_unknown_rank_is_kept_without_a_shape(tmp_path: Path, capsys) -> None:
    """Reshape to a shape given at run time: no inference can tell the rank, onnxruntime runs
    it. The output keeps no shape (with a warning naming it) and the folds still happen."""
    g = GraphBuilder(seed=20)
    x = g.input([1, 4, 6, 6], name="x")
    shape = g.input([None], name="s", elem=TensorProto.INT64)
    model = g.model([])
    y = g.bn(g.conv(x, 4, 4, 3), 4)
    model.graph.node.extend(g.nodes[len(model.graph.node):])
    model.graph.initializer.extend(g.inits[len(model.graph.initializer):])
    model.graph.node.append(helper.make_node("Reshape", [y, shape], ["r"]))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    r = onnxrep.optimize(model)
    assert r.applied_by_pattern() == {"conv-bn": 1}
    assert len(r.warnings) == 1 and "'r' has no shape" in r.warnings[0]
    assert not r.model.graph.output[0].type.tensor_type.HasField("shape")
    feeds = {"x": np.ones((1, 4, 6, 6), np.float32), "s": np.array([4, 36], np.int64)}
    assert onnxrep.compare(model, r.model, inputs=feeds).ok
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    assert main(["optimize", str(src), "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_an_output_no_inference_can_type_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    g = GraphBuilder(seed=19)
    x = g.input([1, 4, 6, 6], name="x")
    model = g.model([g.bn(g.conv(x, 4, 4, 3), 4)])
    model.graph.node.append(helper.make_node("Mystery", [model.graph.output[0].name], ["odd"],
                                             domain="com.example"))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    model.graph.output.append(helper.make_tensor_value_info("odd", 0, None))
    with pytest.raises(onnxrep.OnnxrepError, match="graph output 'odd' has no type and shape "
                       "inference cannot tell it; declare its element type"):
        onnxrep.optimize(model)
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"onnxrep: error: {src}: graph output 'odd' has no type")
    assert not (tmp_path / "out.onnx").exists()


# --------------------------------------------------------------------------------------------
# names


def test_new_names_never_collide_with_any_existing_name() -> None:
    """Node names equal to tensor names, and the names a fold would pick, taken in subgraphs."""
    g = GraphBuilder(seed=5)
    x = g.input([1, 4, 7, 7], name="x")
    a = g.bn(g.conv(x, 4, 4, 3, name="conv"), 4)
    b = g.bn(g.conv(x, 4, 4, 1, name="conv.weight"), 4)  # a node named like a tensor
    y = g.node("Add", [a, b], name="conv.bias")
    z = g.bn(g.conv(y, 4, 4, 3, name=y), 4)  # a node named like its input
    g.init(np.zeros(1), name="conv.weight_1")
    cond = g.input([], name="cond", elem=TensorProto.BOOL)
    model = g.model([z])
    branch = helper.make_graph(
        [helper.make_node("Identity", [z], ["conv.bias_1"], name="conv.weight_2")], "then", [],
        [helper.make_tensor_value_info("conv.bias_1", TensorProto.FLOAT, [1, 4, 7, 7])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", [z], ["conv.weight_3"], name="conv.bias_2")], "else", [],
        [helper.make_tensor_value_info("conv.weight_3", TensorProto.FLOAT, [1, 4, 7, 7])],
    )
    model.graph.node.append(helper.make_node("If", [cond], ["branch"], name="if",
                                             then_branch=branch, else_branch=other))
    model.graph.output.append(
        helper.make_tensor_value_info("branch", TensorProto.FLOAT, [1, 4, 7, 7]))
    before = _names(model.graph)
    r = onnxrep.optimize(model)
    onnx.checker.check_model(r.model, full_check=True)
    assert op_counts(r.model) == {"Conv": 2, "If": 1}
    _assert_single_assignment(r.model)
    new_inits = set(_inits(r.model)) - set(_inits(model))
    assert len(new_inits) == 4 and not new_inits & before
    for cond_value in (True, False):
        feeds = {"x": np.random.default_rng(0).standard_normal((1, 4, 7, 7)).astype(np.float32),
                 "cond": np.array(cond_value)}
        assert onnxrep.compare(model, r.model, inputs=feeds).ok


# --------------------------------------------------------------------------------------------
# the model's interface and metadata


def _two_headed() -> onnx.ModelProto:
    """Two dynamic inputs, three outputs (one intermediate), value_info, docs, metadata."""
    g = GraphBuilder(seed=6)
    x = g.input(["N", 4, "H", "W"], name="image")
    s = g.input(["N", 8, "h", "w"], name="side")
    trunk = repvgg(g, x, 4)
    head1 = g.bn(g.conv(trunk, 4, 8, 3, stride=2), 8)
    side = g.node("Relu", [s])
    head2 = g.node("Mul", [g.conv(side, 8, 8, 1), g.init(np.full((1, 8, 1, 1), 0.5))])
    model = g.model([head1, trunk, head2])
    model.doc_string = "two heads"
    model.producer_name, model.producer_version = "exporter", "9.9"
    model.domain, model.model_version = "com.example.models", 3
    helper.set_model_props(model, {"author": "someone", "license": "MIT", "k": "v"})
    model.graph.doc_string = "the graph"
    model.graph.name = "two_heads"
    for n in model.graph.node:
        n.doc_string = f"doc of {n.name}"
    folded_away = model.graph.node[0].output[0]  # a conv output inside the trunk's region
    model.graph.value_info.extend([
        helper.make_tensor_value_info(side, TensorProto.FLOAT, ["N", 8, "h", "w"]),
        helper.make_tensor_value_info(folded_away, TensorProto.FLOAT, ["N", 4, "H", "W"]),
    ])
    model.opset_import.append(helper.make_opsetid("com.example", 2))
    return model


def test_several_dynamic_inputs_and_outputs_keep_their_interface() -> None:
    model = _two_headed()
    shapes = {"image": [2, 4, 9, 7], "side": [2, 8, 5, 6]}
    r = optimized(model, {"Conv": 3, "Relu": 2}, shapes=shapes)
    assert_equivalent(model, r.model, shapes={"image": [1, 4, 16, 5], "side": [1, 8, 1, 1]})
    out = r.model
    for field in ("doc_string", "producer_name", "producer_version", "domain", "model_version",
                  "ir_version", "metadata_props", "opset_import"):
        assert getattr(out, field) == getattr(model, field), field
    assert (out.graph.name, out.graph.doc_string) == (model.graph.name, model.graph.doc_string)
    assert list(out.graph.input) == list(model.graph.input)
    assert list(out.graph.output) == list(model.graph.output)
    live = {o for n in out.graph.node for o in n.output}
    assert list(out.graph.value_info) == [v for v in model.graph.value_info if v.name in live]
    assert [v.name for v in out.graph.value_info] == [model.graph.value_info[0].name]
    relus = [n for n in out.graph.node if n.op_type == "Relu"]
    assert relus == [n for n in model.graph.node if n.op_type == "Relu"]  # doc strings too


def test_a_value_info_entry_for_an_output_does_not_replace_the_output() -> None:
    g = GraphBuilder(seed=15)
    x = g.input(["N", 4, 8, 8], name="x")
    y = g.bn(g.conv(x, 4, 4, 3), 4)
    model = g.model([y])
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 4, 8, 8]))
    model.graph.value_info.append(
        helper.make_tensor_value_info(y, TensorProto.FLOAT, ["B", 4, 8, 8]))
    r = onnxrep.optimize(model)
    assert list(r.model.graph.output) == list(model.graph.output)


def test_intermediate_graph_outputs_are_never_folded_away() -> None:
    g = GraphBuilder(seed=7)
    x = g.input(["N", 4, 8, 8], name="x")
    conv = g.conv(x, 4, 4, 3)  # graph output, and read by a BN
    bn1 = g.bn(conv, 4)  # graph output, and read by another BN
    bn2 = g.bn(bn1, 4)
    pad = g.node("Pad", [x, g.init(np.array([0, 0, 1, 1, 0, 0, 1, 1]), cast=False)])
    padded_conv = g.conv(pad, 4, 4, 3, pads=[0] * 4)  # pad is a graph output: no pad merge
    branch = g.node("Add", [g.bn(g.conv(x, 4, 4, 1), 4), g.bn(g.conv(x, 4, 4, 3), 4)])
    model = g.model([conv, bn1, bn2, pad, padded_conv, branch])
    r = optimized(model)
    producers = {o: n for n in r.model.graph.node for o in n.output}
    assert producers[conv].op_type == "Conv" and producers[bn1].op_type == "BatchNormalization"
    assert producers[pad].op_type == "Pad" and producers[padded_conv].input[0] == pad
    assert producers[branch].op_type == "Conv"  # only this one folds: 2 branches → 1 Conv
    assert r.applied_by_pattern() == {"branches": 1}


def test_custom_domain_lookalikes_and_unknown_ops_pass_through() -> None:
    """A ``BatchNormalization`` or ``Conv`` in another domain is not ONNX's: never folded."""
    g = GraphBuilder(seed=8)
    x = g.input([1, 4, 6, 6], name="x")
    c = g.conv(x, 4, 4, 3)
    model = g.model([])
    bn = g.bn_params(4)
    model.graph.initializer.extend(g.inits[len(model.graph.initializer):])
    custom = [
        helper.make_node("BatchNormalization", [c, *bn], ["fake_bn"], name="fake_bn",
                         domain="com.example", epsilon=1e-5),
        helper.make_node("Conv", ["fake_bn", model.graph.initializer[0].name], ["fake_conv"],
                         name="fake_conv", domain="com.example", pads=[1] * 4),
        helper.make_node("Mystery", ["fake_conv"], ["mystery"], name="mystery",
                         domain="com.example", payload=b"\x00\x01", mode="x"),
    ]
    model.graph.node.extend(custom)
    model.graph.node.append(helper.make_node("BatchNormalization", ["mystery", *bn], ["y"]))
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    r = onnxrep.optimize(model)
    onnx.checker.check_model(r.model)
    assert r.model.SerializeToString() == model.SerializeToString()
    assert not r.applied


def test_a_sparse_initializer_passes_through_untouched(tmp_path: Path) -> None:
    """A sparse initializer (read here as the weight of a Conv and as a per-channel shift) is not
    a constant to any rule: the folds around it happen, it stays byte for byte. onnx's full
    check cannot type a sparse tensor read by an op, so the plain checker and onnxruntime (which
    densifies it on load) judge the result."""
    g = GraphBuilder(seed=17)
    x = g.input([1, 4, 6, 6], name="x")
    y = g.bn(g.conv(x, 4, 4, 3), 4)
    model = g.model([])
    shift = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.5, -2.0], np.float32),
                                                              "shift"),
                                      numpy_helper.from_array(np.array([0, 3], np.int64)),
                                      [1, 4, 1, 1])
    weight = helper.make_sparse_tensor(numpy_helper.from_array(np.array([0.5, 2.0], np.float32),
                                                               "sparse_w"),
                                       numpy_helper.from_array(np.array([0, 5], np.int64)),
                                       [4, 4, 1, 1])
    model.graph.sparse_initializer.extend([shift, weight])
    model.graph.node.extend([helper.make_node("Add", [y, "shift"], ["z"], name="add"),
                             helper.make_node("Conv", ["z", "sparse_w"], ["out"], name="conv")])
    model.graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                            [1, 4, 6, 6]))
    onnx.checker.check_model(model)
    r = onnxrep.optimize(model)
    onnx.checker.check_model(r.model)
    assert r.applied_by_pattern() == {"conv-bn": 1}
    assert list(r.model.graph.sparse_initializer) == list(model.graph.sparse_initializer)
    assert op_counts(r.model) == {"Conv": 2, "Add": 1}
    assert_equivalent(model, r.model)
    src, out = tmp_path / "sparse.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    assert main(["optimize", str(src), "-o", str(out), "--verify", "-q"]) == 0
    assert onnx.load(out).SerializeToString() == r.model.SerializeToString()


# --------------------------------------------------------------------------------------------
# control flow


def _body_conv_bn(prefix: str, x: str, out: str) -> tuple[list[onnx.NodeProto],
                                                         list[onnx.TensorProto]]:
    """Conv → BN inside a body, with the body's own initializers."""
    rng = np.random.default_rng(len(prefix))
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
                                     f"{prefix}_w")]
    params = [rng.uniform(0.5, 1.5, 4), rng.standard_normal(4), rng.standard_normal(4),
              rng.uniform(0.5, 1.5, 4)]
    inits += [numpy_helper.from_array(p.astype(np.float32), f"{prefix}_bn{i}")
              for i, p in enumerate(params)]
    nodes = [
        helper.make_node("Conv", [x, f"{prefix}_w"], [f"{prefix}_c"], pads=[1] * 4),
        helper.make_node("BatchNormalization", [f"{prefix}_c", *(t.name for t in inits[1:])],
                         [out]),
    ]
    return nodes, inits


def _loop_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = GraphBuilder(seed=9)
    x = g.input([1, 4, 6, 6], name="x")
    outer = g.bn(g.conv(x, 4, 4, 3), 4)  # read inside the body: keeps its name
    model = g.model([])
    f = TensorProto.FLOAT
    nodes, inits = _body_conv_bn("loop", "v_in", "v_bn")
    nodes.append(helper.make_node("Add", ["v_bn", outer], ["v_out"]))
    nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(
        nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", f, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", f, [1, 4, 6, 6])],
        inits,
    )
    model.graph.input.extend([helper.make_tensor_value_info("trips", TensorProto.INT64, []),
                              helper.make_tensor_value_info("go", TensorProto.BOOL, [])])
    model.graph.node.append(helper.make_node("Loop", ["trips", "go", x], ["loop_v"], body=body))
    model.graph.output.append(helper.make_tensor_value_info("loop_v", f, [1, 4, 6, 6]))
    feeds = {"trips": np.array(3, np.int64), "go": np.array(True)}
    return model, feeds


def _scan_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = GraphBuilder(seed=10)
    x = g.input([1, 4, 6, 6], name="x")
    seq = g.input([3, 1, 4, 6, 6], name="seq")
    outer = g.bn(g.conv(x, 4, 4, 3), 4)
    model = g.model([])
    f = TensorProto.FLOAT
    nodes, inits = _body_conv_bn("scan", "x_t", "x_bn")
    nodes += [
        helper.make_node("Add", ["s_in", "x_bn"], ["s_sum"]),
        helper.make_node("Add", ["s_sum", outer], ["s_out"]),
        helper.make_node("Relu", ["s_out"], ["y_t"]),
    ]
    body = helper.make_graph(
        nodes, "body",
        [helper.make_tensor_value_info("s_in", f, [1, 4, 6, 6]),
         helper.make_tensor_value_info("x_t", f, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("s_out", f, [1, 4, 6, 6]),
         helper.make_tensor_value_info("y_t", f, [1, 4, 6, 6])],
        inits,
    )
    model.graph.node.append(helper.make_node("Scan", [x, seq], ["state", "ys"], body=body,
                                             num_scan_inputs=1))
    model.graph.output.extend([helper.make_tensor_value_info("state", f, [1, 4, 6, 6]),
                               helper.make_tensor_value_info("ys", f, [3, 1, 4, 6, 6])])
    rng = np.random.default_rng(1)
    feeds = {"seq": rng.standard_normal((3, 1, 4, 6, 6)).astype(np.float32)}
    return model, feeds


def _if_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = GraphBuilder(seed=11)
    x = g.input([1, 4, 6, 6], name="x")
    cond = g.input([], name="cond", elem=TensorProto.BOOL)
    outer = g.bn(g.conv(x, 4, 4, 3), 4)
    model = g.model([])
    f = TensorProto.FLOAT
    then_nodes, then_inits = _body_conv_bn("then", outer, "t_out")
    else_nodes = [helper.make_node("Neg", [outer], ["e_out"])]
    then = helper.make_graph(then_nodes, "then", [],
                             [helper.make_tensor_value_info("t_out", f, [1, 4, 6, 6])], then_inits)
    other = helper.make_graph(else_nodes, "else", [],
                              [helper.make_tensor_value_info("e_out", f, [1, 4, 6, 6])])
    model.graph.node.append(helper.make_node("If", [cond], ["branch"], then_branch=then,
                                             else_branch=other))
    model.graph.output.append(helper.make_tensor_value_info("branch", f, [1, 4, 6, 6]))
    return model, {"cond": np.array(True)}


CONTROL_FLOW: dict[str, Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]] = {
    "If": _if_model, "Loop": _loop_model, "Scan": _scan_model,
}


@pytest.mark.parametrize("op", sorted(CONTROL_FLOW))
def test_control_flow_bodies_are_left_as_they_were(op: str) -> None:
    model, feeds = CONTROL_FLOW[op]()
    onnx.checker.check_model(model, full_check=True)
    before = model.SerializeToString()
    r = onnxrep.optimize(model)
    assert model.SerializeToString() == before
    onnx.checker.check_model(r.model, full_check=True)
    node = next(n for n in r.model.graph.node if n.op_type == op)
    assert node == next(n for n in model.graph.node if n.op_type == op)  # bodies byte-identical
    # the outer BN is read inside the body: folded into its conv, under the same name
    assert r.applied_by_pattern() == {"conv-bn": 1}
    outer = model.graph.node[1].output[0]
    assert any(outer in n.output and n.op_type == "Conv" for n in r.model.graph.node)
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    cmp = onnxrep.compare(model, r.model, inputs={"x": x, **feeds})
    assert cmp.ok, cmp.outputs
    again = onnxrep.optimize(r.model)
    assert again.model.SerializeToString() == r.model.SerializeToString()


# --------------------------------------------------------------------------------------------
# dtypes and opsets


def _zoo(g: GraphBuilder, x: str, c: int) -> str:
    """RepVGG, ACNet with a scaled 1x1 branch, a zero Pad, a Concat, a DBB-like pool branch."""
    y = repvgg(g, x, c)
    scale = g.init(g.rng.uniform(0.5, 1.5, (1, c, 1, 1)))
    acnet = g.node("Sum", [g.bn(g.conv(y, c, c, 3), c),
                           g.bn(g.conv(y, c, c, (1, 3), pads=[0, 1, 0, 1]), c),
                           g.bn(g.conv(y, c, c, (3, 1), pads=[1, 0, 1, 0]), c),
                           g.node("Mul", [g.conv(y, c, c, 1), scale])])
    pads = g.init(np.array([0, 0, 1, 1, 0, 0, 1, 1]), cast=False)
    padded = g.bn(g.conv(g.node("Pad", [g.node("Relu", [acnet]), pads]), c, c, 3, pads=[0] * 4),
                  c)
    z = g.node("Relu", [padded])
    cat = g.node("Concat", [g.conv(z, c, c, 3), g.bn(g.conv(z, c, c, 3), c)], axis=1)
    pool = g.node("AveragePool", [g.conv(cat, 2 * c, c, 1, bias=False)], kernel_shape=[3, 3],
                  pads=[1] * 4, count_include_pad=1)
    pooled = g.node("Add", [g.bn(pool, c), g.bn(g.conv(cat, 2 * c, c, 3), c)])
    return g.node("Relu", [pooled])


ZOO_OPS = {"Conv": 5, "Relu": 4}


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_float16_and_float64_models_keep_their_dtype(dtype: str) -> None:
    g = GraphBuilder(dtype=np.dtype(dtype).type, seed=12)
    x = g.input([1, 4, 9, 9], name="x")
    model = g.model([_zoo(g, x, 4)])
    r = optimized(model, ZOO_OPS, dtype=dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    floats = [t for t in r.model.graph.initializer if t.data_type in
              (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)]
    assert floats and all(t.data_type == elem for t in floats)
    assert set(r.applied_by_pattern()) >= {"branches", "concat"}


def test_an_all_bfloat16_model_is_folded_in_float64_and_rounded_once(tmp_path: Path) -> None:
    """Conv accepts bfloat16 from opset 22; onnxruntime's CPU provider has no bfloat16 Conv, so
    parity runs in onnx's reference evaluator. Every new weight is bfloat16 again."""
    g = GraphBuilder(dtype=ml_dtypes.bfloat16, seed=12, opset=22)
    model = g.model([_zoo(g, g.input([1, 4, 9, 9], name="x"), 4)])
    onnx.checker.check_model(model, full_check=True)
    r = optimized(model, ZOO_OPS, dtype="bfloat16")
    assert {t.data_type for t in r.model.graph.initializer} == {TensorProto.BFLOAT16}
    assert set(r.applied_by_pattern()) >= {"branches", "concat"}
    src, out = tmp_path / "bf16.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    assert main(["optimize", str(src), "-o", str(out), "--verify", "-q"]) == 0
    assert onnx.load(out).SerializeToString() == r.model.SerializeToString()


def test_parity_of_a_bfloat16_model_onnxruntime_loads() -> None:
    """onnxruntime has bfloat16 Concat but its Python API takes no bfloat16 array: parity runs
    in the reference evaluator."""
    g = GraphBuilder(dtype=ml_dtypes.bfloat16, seed=21, opset=22)
    x = g.input([1, 4, 3, 3], name="x")
    model = g.model([g.node("Concat", [x, x], axis=1)])
    cmp = onnxrep.compare(model, model)
    assert cmp.ok and cmp.level == "onnx.reference" and cmp.outputs[0].dtype == "bfloat16"


def test_float8_weights_are_left_as_they_are() -> None:
    """float8 weights (read through DequantizeLinear) are not folded: rounded to 8 bits, a fold
    is rarely exact. The Q/DQ graph keeps its structure and its float8 tensors byte for byte."""
    rng = np.random.default_rng(0)
    f8 = ml_dtypes.float8_e4m3fn
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(f8), "w8"),
             numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             numpy_helper.from_array(np.zeros((), f8), "zp")]
    inits += [numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), f"bn{i}")
              for i in range(4)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w8", "s", "zp"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "bn0", "bn1", "bn2", "bn3"], ["y"])]
    graph = helper.make_graph(
        nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    r = optimized(model, {"QuantizeLinear": 1, "DequantizeLinear": 2, "Conv": 1,
                          "BatchNormalization": 1})
    assert _inits(r.model)["w8"] == _inits(model)["w8"]
    assert not r.applied


def test_float8_constants_are_refused_naming_the_dtype() -> None:
    from onnxrep.graph import fold_refusal, is_float

    assert is_float(ml_dtypes.bfloat16) and is_float(np.float16)
    assert not is_float(ml_dtypes.float8_e5m2)
    reason = str(fold_refusal("the weight of Conv 'c'", ml_dtypes.float8_e5m2))
    assert "float8_e5m2" in reason and "8 bits" in reason


def _ir3_model() -> onnx.ModelProto:
    """An opset 7 export (IR 3): every initializer is also listed as a graph input; a
    BatchNormalization with the ``spatial=1`` attribute opset 7 still has."""
    rng = np.random.default_rng(16)
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")]
    inits += [numpy_helper.from_array(p.astype(np.float32), name) for p, name in (
        (rng.uniform(0.5, 1.5, 4), "gamma"), (rng.standard_normal(4), "beta"),
        (rng.standard_normal(4), "mean"), (rng.uniform(0.5, 1.5, 4), "var"))]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"],
                         name="bn", epsilon=1e-3, spatial=1),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    inputs = [helper.make_tensor_value_info("x", f, [1, 4, 8, 8])] + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "ir3", inputs, [helper.make_tensor_value_info(
        "y", f, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    return model


def test_an_ir3_opset7_model_lists_every_new_initializer_as_an_input() -> None:
    model = _ir3_model()
    onnx.checker.check_model(model, full_check=True)
    r = optimized(model, {"Conv": 1, "Relu": 1})
    assert r.applied_by_pattern() == {"conv-bn": 1}
    assert (r.model.ir_version, r.model.opset_import) == (3, model.opset_import)
    g = r.model.graph
    inits = [t.name for t in g.initializer]
    assert [v.name for v in g.input] == ["x", *inits]  # no input left for a folded-away weight
    for v, t in zip(g.input[1:], g.initializer, strict=True):
        assert v.type.tensor_type.elem_type == t.data_type
        assert [d.dim_value for d in v.type.tensor_type.shape.dim] == list(t.dims)
    again = onnxrep.optimize(r.model)
    assert again.model.SerializeToString() == r.model.SerializeToString()
    in_place = onnxrep.optimize(_ir3_model(), in_place=True)  # edits the input's own lists
    assert in_place.model.SerializeToString() == r.model.SerializeToString()


@pytest.mark.parametrize("opset", range(11, onnx.defs.onnx_opset_version() + 1))
def test_every_opset_from_11_to_the_newest(opset: int) -> None:
    g = GraphBuilder(opset=opset, seed=opset)
    x = g.input(["N", 4, "H", "W"], name="x")
    model = g.model([_zoo(g, x, 4)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    r = optimized(model, ZOO_OPS, shapes={"x": [1, 4, 10, 7]})
    assert r.model.opset_import == model.opset_import and r.model.ir_version == model.ir_version


# --------------------------------------------------------------------------------------------
# idempotence and determinism


def _fp16_zoo() -> onnx.ModelProto:
    g = GraphBuilder(dtype=np.float16, seed=13)
    return g.model([_zoo(g, g.input([1, 4, 9, 9], name="x"), 4)])


@pytest.mark.parametrize("make", [
    _two_headed, _fp16_zoo, lambda: _loop_model()[0], lambda: _scan_model()[0],
], ids=["two-headed", "float16-zoo", "loop", "scan"])
def test_idempotent(make: Callable[[], onnx.ModelProto]) -> None:
    model = make()
    first = onnxrep.optimize(model)
    assert first.applied
    again = onnxrep.optimize(onnx.load_from_string(first.model.SerializeToString()))
    assert not again.applied and not again.notes
    assert again.model.SerializeToString() == first.model.SerializeToString()
    assert onnxrep.optimize(make()).model.SerializeToString() == \
        first.model.SerializeToString()


def test_deterministic_across_processes(tmp_path: Path) -> None:
    """Same input bytes → same output bytes, whatever the interpreter's hash seed."""
    g = GraphBuilder(seed=14)
    model = g.model([_zoo(g, g.input(["N", 4, 9, 9], name="x"), 4)])
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}.onnx"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-m", "onnxrep", "optimize", str(src), "-o",
                              str(out)], capture_output=True, text=True, env=env, check=False)
        assert run.returncode == 0, run.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert onnxrep.optimize(model).model.SerializeToString() == outputs[0]

