"""Every export form of ``models.export`` yields a valid model that onnxruntime runs like torch.

Parity is checked at ``ORT_DISABLE_ALL`` in float32 with ``rtol = 1e-4`` and
``atol = 1e-4 * max|torch output|``: the exporters reorder float32 arithmetic (fused Conv+BN,
precomputed constants), observed errors are <= 1e-6 relative to the output's magnitude.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models import bundle as bundle_module
from models.export import DYNAMO_OPSET, FORMS, TORCHSCRIPT_OPSET, export, main
from models.nets import NETWORKS, rep_blocks

# Every form on these; the cheap TorchScript forms on every other net (dynamo exports cost ~1-4 s).
FULL = ("convbn_stack", "repvgg", "dbb")
CASES = [(net, form) for net in FULL for form in FORMS] + [
    (net, form)
    for net in NETWORKS
    if net not in FULL and net != "dbb_resnet18"
    for form in ("preserve", "torchscript")
]
CASES += [("dbb_resnet18", "preserve"), ("mobileone", "dynamo"), ("residual", "dynamo-opt")]


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in model.graph.node)


def _ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _assert_parity(path: Path, net: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = net(x).numpy()
    out = _ort_run(path, x.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
@pytest.mark.parametrize(("name", "form"), CASES)
def test_export_form(name: str, form: str, deploy: bool, exports) -> None:
    spec = NETWORKS[name]
    net = exports.net(name)
    path = exports(name, form, deploy)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
        ("", TORCHSCRIPT_OPSET if form in ("preserve", "torchscript") else DYNAMO_OPSET)
    ]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

    ops = _ops(model)
    num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    num_conv = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    if deploy:
        assert ops["BatchNormalization"] == 0
        assert ops["Conv"] == len(rep_blocks(net))
    elif form in ("preserve", "dynamo"):
        # Nothing is fused: one BatchNormalization (inference mode) per BN module.
        assert ops["BatchNormalization"] == num_bn
        assert ops["Conv"] == num_conv
        for node in model.graph.node:
            if node.op_type == "BatchNormalization":
                assert len(node.output) == 1
                assert all(a.name != "training_mode" or a.i == 0 for a in node.attribute)
    else:
        assert ops["Conv"] == num_conv
        assert ops["BatchNormalization"] < num_bn

    x = torch.randn(spec.input_shape, generator=torch.Generator().manual_seed(5))
    _assert_parity(path, net, x)


# DBB's slice assignments are where the TorchScript tracer bakes in the batch size; the dynamo
# forms are cheaper to check on repvgg (a symbolic DBB export takes 5-8 s).
@pytest.mark.parametrize(
    ("name", "form"),
    [("dbb", "preserve"), ("dbb", "torchscript"), ("repvgg", "dynamo"), ("repvgg", "dynamo-opt")],
)
def test_dynamic_batch(name: str, form: str, tmp_path: Path) -> None:
    spec = NETWORKS[name]
    net = spec.factory()
    path = export(net, spec.input_shape, tmp_path / f"{name}.onnx", form, dynamic_batch=True)
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.randn(3, *spec.input_shape[1:], generator=torch.Generator().manual_seed(6))
    _assert_parity(path, net, x)


def test_export_is_deterministic_and_leaves_net_alone(tmp_path: Path) -> None:
    spec = NETWORKS["mobileone"]
    net = spec.factory().train()
    a = export(net, spec.input_shape, tmp_path / "a.onnx", "preserve", deploy=True)
    b = export(spec.factory(), spec.input_shape, tmp_path / "b.onnx", "preserve", deploy=True)
    assert a.read_bytes() == b.read_bytes()
    assert net.training and not any(blk.deployed for blk in rep_blocks(net))


def test_unknown_form_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown form"):
        export(nn.Identity(), (1, 3, 4, 4), tmp_path / "x.onnx", "onnxscript")


def test_cli_exports_one_net(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "convbn.onnx"
    assert main(["--net", "convbn_stack", "--form", "torchscript", "--deploy", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert _ops(onnx.load(str(out)))["BatchNormalization"] == 0


@pytest.mark.parametrize("name", bundle_module.BUNDLED)
def test_bundled_model_is_current(name: str) -> None:
    path = bundle_module.HERE / f"{name}.onnx"
    assert path.stat().st_size < bundle_module.MAX_BYTES
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    spec = NETWORKS[name]
    net = spec.factory()
    assert _ops(model)["BatchNormalization"] == sum(
        isinstance(m, nn.BatchNorm2d) for m in net.modules()
    )
    x = torch.randn(spec.input_shape, generator=torch.Generator().manual_seed(7))
    _assert_parity(path, net, x)
