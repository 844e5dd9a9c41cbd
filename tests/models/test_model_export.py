"""Every export form of ``models.export`` yields a valid model that onnxruntime runs like torch.

Parity is checked at ``ORT_DISABLE_ALL`` in float32 with ``rtol = 1e-4`` and
``atol = 1e-4 * max|torch output|``: the exporters reorder float32 arithmetic (fused Conv+BN,
precomputed constants), observed errors are <= 1e-6 relative to the output's magnitude.

Node counts are checked against the torch modules of each net (``_module_counts``), so the same
assertions hold for pure CNNs and hybrids: one ``Conv`` per ``nn.Conv2d`` (plus one per OREPA
block, whose conv is functional), one ``BatchNormalization`` per BatchNorm (1d or 2d), one
``Gemm``/``MatMul`` per ``nn.Linear``, one ``LayerNormalization`` per ``nn.LayerNorm`` from
opset 17 on; the TorchScript exporter's EVAL mode fuses exactly the BNs that read a
``nn.Conv2d``'s output.
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
from models.blocks import OREPABlock
from models.export import DYNAMO_OPSET, FORMS, TORCHSCRIPT_OPSET, export, main
from models.nets import NETWORKS, RepNet, deploy_copy, rep_blocks

HYBRID = ("fastvit", "repvit", "replknet", "mobilenetv3", "vit_mlp", "vit_mlp_op14")
# Every form on these; the cheap TorchScript forms on every other net (dynamo exports cost ~1-4 s).
FULL = ("convbn_stack", "repvgg", "dbb", *HYBRID, "qarepvgg", "orepa")
CASES = [(net, form) for net in FULL for form in FORMS] + [
    (net, form)
    for net in NETWORKS
    if net not in FULL and net != "dbb_resnet18"
    for form in ("preserve", "torchscript")
]
CASES += [("dbb_resnet18", "preserve"), ("mobileone", "dynamo"), ("residual", "dynamo-opt")]


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in model.graph.node)


def _module_counts(net: nn.Module, input_shape: tuple[int, ...]) -> collections.Counter[str]:
    """What each kind of module of ``net`` exports to, keyed by ONNX op.

    ``fused_bn`` counts the BatchNorms whose input is the output of an ``nn.Conv2d`` (found by
    running ``net`` once with hooks): the ones the exporters' Conv+BN fusion can fold.
    """
    counts: collections.Counter[str] = collections.Counter()
    conv_outputs: list[torch.Tensor] = []
    hooks = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            counts["Conv"] += 1
            hooks.append(m.register_forward_hook(lambda mod, i, out: conv_outputs.append(out)))
        elif isinstance(m, OREPABlock) and not m.deployed:
            counts["Conv"] += 1  # F.conv2d with the generated kernel
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            counts["BatchNormalization"] += 1

            def after_conv(mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                counts["fused_bn"] += any(inputs[0] is out for out in conv_outputs)

            hooks.append(m.register_forward_pre_hook(after_conv))
        elif isinstance(m, nn.Linear):
            counts["Linear"] += 1
        elif isinstance(m, nn.LayerNorm):
            counts["LayerNormalization"] += 1
    try:
        with torch.no_grad():
            net(torch.zeros(input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return counts


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
    torchscript = form in ("preserve", "torchscript")
    opset = (spec.opset or TORCHSCRIPT_OPSET) if torchscript else DYNAMO_OPSET
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
        ("", opset)
    ]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

    ops = _ops(model)
    want = _module_counts(deploy_copy(net) if deploy else net, spec.input_shape)
    assert ops["Conv"] == want["Conv"]
    assert ops["Gemm"] + ops["MatMul"] == want["Linear"]
    assert ops["LayerNormalization"] == (want["LayerNormalization"] if opset >= 17 else 0)
    if deploy:
        assert want["BatchNormalization"] == ops["BatchNormalization"] == 0
        if isinstance(net, RepNet):
            assert ops["Conv"] == len(rep_blocks(net))  # pure CNNs: one conv per block
    elif form in ("preserve", "dynamo"):
        # Nothing is fused: one BatchNormalization (inference mode) per BN module.
        assert ops["BatchNormalization"] == want["BatchNormalization"]
        for node in model.graph.node:
            if node.op_type == "BatchNormalization":
                assert len(node.output) == 1
                assert all(a.name != "training_mode" or a.i == 0 for a in node.attribute)
    elif form == "torchscript":
        # Exactly the BNs that read an nn.Conv2d's output are fused into it; a BN after a sum
        # of branches, an identity BN, a pre-BN, a BatchNorm1d and OREPA's BN (its conv kernel
        # is computed, not an initializer) stay.
        assert ops["BatchNormalization"] == want["BatchNormalization"] - want["fused_bn"]
    else:
        # The optimizer fuses at least those; constant folding may first turn a generated
        # kernel into an initializer (OREPA) and fuse its BN too.
        assert ops["BatchNormalization"] <= want["BatchNormalization"] - want["fused_bn"]

    x = torch.randn(spec.input_shape, generator=torch.Generator().manual_seed(5))
    _assert_parity(path, net, x)


def test_layernorm_is_one_op_from_opset_17(exports) -> None:
    """vit_mlp's TorchScript forms (opset 17) write LayerNormalization; vit_mlp_op14's (opset 14,
    before the op existed) write it as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add."""
    num_ln = sum(isinstance(m, nn.LayerNorm) for m in exports.net("vit_mlp").modules())
    for form in ("preserve", "torchscript"):
        assert _ops(onnx.load(str(exports("vit_mlp", form))))["LayerNormalization"] == num_ln
        ops = _ops(onnx.load(str(exports("vit_mlp_op14", form))))
        assert ops["LayerNormalization"] == 0
        for op in ("Sub", "Pow", "Sqrt", "Div"):
            assert ops[op] >= num_ln, op
        # two ReduceMeans per LayerNorm (mean, variance) plus the token mean
        assert ops["ReduceMean"] == 2 * num_ln + 1


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
