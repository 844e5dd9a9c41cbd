"""The idiom guard: no fold absorbs a node of an idiom onnxruntime fuses into one kernel.

Every idiom of tests/idiomgraphs.py sits between two layers, where the fold of its last
constant into the next layer is exact. The guard (run here with the fusion audit off, so the
list alone is tested) must find the idiom, keep every node of it, say so under its name, and
leave onnxruntime as many fused kernels of each kind in the output as in the input.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

import onnxrep
from onnxrep import audit, idioms
from onnxrep.cli import main
from onnxrep.graph import ShapeInfo, import_graph
from tests.builders import GraphBuilder, op_counts
from tests.helpers import optimized
from tests.idiomgraphs import (
    ACTIVATIONS,
    NORMALIZATIONS,
    conv_model,
    gelu_torchscript,
    gemm_model,
    layer_norm,
    qdq_model,
)


def _found(model: onnx.ModelProto) -> list[tuple[str, list[str]]]:
    found = idioms.find(import_graph(model), ShapeInfo.infer(model))
    return [(i.name, [n.op for n in i.nodes]) for i in found]


def _fused(model: onnx.ModelProto) -> Counter[str]:
    return Counter(audit.kernels_of(model).counts())


def _has_constant_affine(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    return any(n.op_type in ("Add", "Sub", "Mul", "Div") and any(i in inits for i in n.input)
               for n in model.graph.node)


def _idiom_ops(model: onnx.ModelProto) -> Counter[str]:
    """Op counts of the idiom nodes (everything but the layers around them)."""
    layers = {"Conv", "Gemm", "BatchNormalization"}
    return Counter(n.op_type for n in model.graph.node if n.op_type not in layers)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_idiom_is_kept_whole(name: str) -> None:
    build, label = ACTIVATIONS[name]
    model = conv_model(build)
    assert [found for found, _ in _found(model)] == [label]
    result = optimized(model, skip=(), audit=False)
    assert _idiom_ops(result.model) == _idiom_ops(model)  # every node of the idiom is there
    assert op_counts(result.model)["Conv"] == 2 and "BatchNormalization" not in op_counts(
        result.model)  # the BN before it still folds
    if _has_constant_affine(model):  # a node a fold would have taken: refused by name
        assert any(label in s.reason and "idiom" in s.reason for s in result.skipped)
    before, after = _fused(model), _fused(result.model)
    assert all(after[k] >= n for k, n in before.items() if not k.startswith("Conv")), (
        before, after)


@pytest.mark.parametrize("listed", [False, True], ids=["no-value-info", "value-info"])
@pytest.mark.parametrize("name", sorted(NORMALIZATIONS))
def test_normalization_idiom_is_kept_whole(name: str, listed: bool) -> None:
    """With and without value_info in the model (TorchScript exports list none, dynamo
    exports every tensor): the passes see the graph without it and read shape inference."""
    build, label = NORMALIZATIONS[name]
    model = gemm_model(build)
    if listed:
        model = onnx.shape_inference.infer_shapes(model)
        assert model.graph.value_info
    assert [found for found, _ in _found(model)] == [label]
    result = optimized(model, audit=False)
    assert _idiom_ops(result.model) == _idiom_ops(model)
    before, after = _fused(model), _fused(result.model)
    assert all(after[k] >= n for k, n in before.items()), (before, after)


def test_runtime_fuses_what_the_guard_keeps() -> None:
    """The guard is worth having: onnxruntime fuses these idioms in the models above."""
    assert _fused(conv_model(gelu_torchscript))["Gelu"] == 1
    assert _fused(gemm_model(layer_norm))["LayerNormalization"] == 1
    assert _fused(conv_model(ACTIVATIONS["silu"][0]))["QuickGelu"] == 1


def test_without_the_guard_the_fold_splits_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: with no idiom list and no audit, the 0.5 of GELU folds into the conv and
    onnxruntime no longer fuses a Gelu (so the tests above can fail)."""
    model = conv_model(gelu_torchscript)
    monkeypatch.setattr(idioms, "find", lambda graph, shapes=None: [])
    result = onnxrep.optimize(model, audit=False)
    assert _idiom_ops(result.model)["Mul"] == _idiom_ops(model)["Mul"] - 1
    assert _fused(result.model)["Gelu"] == 0


def test_a_normalization_over_channels_is_no_idiom() -> None:
    """ReduceMean over axis 1 (a channels-first LayerNorm) is not what runtimes fuse: not
    guarded, so its affine may still fold into the next conv."""
    b = GraphBuilder(seed=6)
    x = b.input([1, 8, 4, 4])
    mean = b.node("ReduceMean", [x], axes=[1])
    d = b.node("Sub", [x, mean])
    var = b.node("ReduceMean", [b.node("Pow", [d, b.init(np.array(2.0))])], axes=[1])
    n = b.node("Div", [d, b.node("Sqrt", [b.node("Add", [var, b.init(np.array(1e-5))])])])
    y = b.node("Mul", [n, b.init(b.rng.uniform(0.5, 1.5, (1, 8, 1, 1)))])
    model = b.model([b.conv(y, 8, 8, 1)])
    assert _found(model) == []
    result = optimized(model, audit=False)
    assert "Mul" not in op_counts(result.model)


def test_qdq_group_is_found_and_kept() -> None:
    model = qdq_model()
    assert _found(model) == [("Q/DQ", ["DequantizeLinear", "DequantizeLinear", "Conv",
                                       "QuantizeLinear"])]
    result = onnxrep.optimize(model)
    assert op_counts(result.model) == op_counts(model)


def test_explain_names_the_idiom(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gelu.onnx"
    onnx.save(conv_model(gelu_torchscript), path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "[conv-affine] Mul" in out and "part of a Gelu idiom" in out
