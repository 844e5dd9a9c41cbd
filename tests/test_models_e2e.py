"""Every models/ network in every export form optimizes to its hand-written deploy form.

For each network and form: the training form and the deploy form (the network after its own
``switch_to_deploy``, same weights, same exporter) are exported; onnxrep optimizes the training
form; then
- the Conv count equals the deploy form's, no op is left that the deploy form lacks (no BN,
  Pad, ScatterND, AveragePool inside the blocks), and no op is more frequent;
- onnxruntime at ORT_DISABLE_ALL agrees with the deploy form (atol 1e-5 + rtol 1e-5 x max|ref|);
- onnxruntime fuses in the optimized model every kernel it fuses in the training form (no
  GELU, HardSwish, LayerNorm, QuickGelu, ... is split), and the idiom guard alone kept them:
  the fusion audit had nothing to withdraw;
- against the float64 torch model, the RMS error over 4 inputs is no larger than the deploy
  form's: equal (within 2 %) where onnxrep did all the folding (preserve, dynamo) and reached
  the same ops, within 10 % where it folded more (a layer scale the deploy form keeps), and
  within 25 % of the larger of the deploy form's and the exported model's own error where the
  exporter had already folded Conv+BN in float32 (torchscript, dynamo-opt), whose rounding
  onnxrep inherits.
"""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

import onnxrep
from models.export import FORMS
from models.nets import NETWORKS
from onnxrep import audit
from onnxrep.verify import session

PREFOLDED = {"torchscript", "dynamo-opt"}
LAYER_KINDS = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "FusedGemm")
"""Kernels a fold may merge away (the layers it rewrites); every other kind is an idiom."""
CASES = [(n, f) for n in NETWORKS for f in FORMS]


def _rms_error(model: onnx.ModelProto, inputs: list[np.ndarray], refs: list[np.ndarray]) -> float:
    sess = session(model)
    name = sess.get_inputs()[0].name
    errors = [
        np.mean((sess.run(None, {name: x})[0] - r) ** 2) for x, r in zip(inputs, refs, strict=True)
    ]
    return float(np.sqrt(np.mean(errors)))


@pytest.mark.parametrize(("name", "form"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_network_optimizes_to_its_deploy_form(exports, name: str, form: str) -> None:
    train, deploy = onnx.load(exports(name, form)), onnx.load(exports(name, form, deploy=True))
    result = onnxrep.optimize(train)
    onnx.checker.check_model(result.model, full_check=True)

    got = Counter(n.op_type for n in result.model.graph.node)
    want = Counter(n.op_type for n in deploy.graph.node)
    assert got["Conv"] == want["Conv"], (got, result.skipped)
    assert not got - want, f"ops the deploy form does not have: {got - want}"

    parity = onnxrep.compare(deploy, result.model, atol=1e-5, rtol=1e-5, seeds=2)
    assert parity.ok, parity.outputs

    assert result.audit is not None and result.audit.unavailable is None
    assert not result.audit.withdrawn and not result.audit.remaining, result.audit
    before, after = audit.kernels_of(train), audit.kernels_of(result.model)
    assert audit.splits(before, after) == []
    idioms = {k: n for k, n in before.counts().items() if not k.startswith(LAYER_KINDS)}
    assert all(after.counts().get(k, 0) >= n for k, n in idioms.items()), (before.counts(),
                                                                          after.counts())

    shape = NETWORKS[name].input_shape
    inputs = [np.random.default_rng(i).standard_normal(shape).astype(np.float32) for i in range(4)]
    net64 = copy.deepcopy(exports.net(name)).double().eval()
    with torch.no_grad():
        refs = [net64(torch.from_numpy(x).double()).numpy() for x in inputs]
    mine, theirs = _rms_error(result.model, inputs, refs), _rms_error(deploy, inputs, refs)
    if form in PREFOLDED:
        exported = _rms_error(train, inputs, refs)
        assert mine <= 1.25 * max(theirs, exported), (mine, theirs, exported)
    else:  # the same folds round alike; where onnxrep folds more, a little differently
        assert mine <= (1.02 if got == want else 1.10) * theirs, (mine, theirs)
