"""Hybrid blocks and nets (``models.hybrid``): training form == deploy form, and what deploy keeps.

Float64, eval mode, ``rtol = atol = 1e-10`` as in ``test_blocks.py``. Every block is built under a
fixed seed with random BN statistics, layer scales and LayerNorm affines, deployed with
``deploy_all`` (its own ``switch_to_deploy`` where it has one), and checked at two input sizes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from models.blocks import LargeSmallKernel, MobileOneBlock, RepBlock
from models.hybrid import (
    BNConvBN,
    BNLinear,
    BNPoolHead,
    ConvFFN,
    DistillClassifier,
    InvertedResidual,
    LKConvFFN,
    MlpBlock,
    MobileNetV3Features,
    RepCPE,
    RepLKBlock,
    RepMixer,
    RepMixerBlock,
    RepVGGDW,
    RepViTBlock,
    SqueezeExcite,
    average_linears,
    deploy_all,
    deployable,
    is_deployed,
    make_divisible,
)
from models.nets import NETWORKS, deploy_copy, randomize_bn, randomize_extras

TOL = {"rtol": 1e-10, "atol": 1e-10}
BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class Case:
    """A block, the input shapes it is checked on, and its deploy form's module counts."""

    build: Callable[[], nn.Module]
    shapes: tuple[tuple[int, ...], ...]
    deploy: dict[type[nn.Module], int] = field(default_factory=dict)


IMAGE = ((2, 8, 15, 17), (2, 8, 16, 16))
SMALL = ((2, 8, 7, 9), (2, 8, 4, 4))  # a 31x31 kernel on maps smaller than itself
VECTOR = ((2, 8), (5, 8))
TOKENS = ((2, 5, 8), (1, 16, 8))

# Deploy counts: every re-parameterizable part is one conv (or Linear) with bias; 1x1 convs of
# FFNs and SE stay. ``nn.BatchNorm*`` must be 0 everywhere (checked for all cases).
CASES: dict[str, Case] = {
    # FastViT
    "repmixer": Case(lambda: RepMixer(8, 3), IMAGE, {nn.Conv2d: 1}),
    "repmixer_k5": Case(lambda: RepMixer(8, 5), IMAGE, {nn.Conv2d: 1}),
    "repcpe": Case(lambda: RepCPE(8, 7), IMAGE, {nn.Conv2d: 1}),
    "fastvit_convffn": Case(lambda: ConvFFN(8, 24), IMAGE, {nn.Conv2d: 3, nn.GELU: 1}),
    # RepMixer 1 + ConvFFN 3; the block's layer scale stays
    "repmixer_block": Case(lambda: RepMixerBlock(8), IMAGE, {nn.Conv2d: 4, nn.GELU: 1}),
    # RepViT
    "repvggdw": Case(lambda: RepVGGDW(8), IMAGE, {nn.Conv2d: 1}),
    # RepVGGDW 1 + SE 2 + FFN 2
    "repvit_block_se": Case(
        lambda: RepViTBlock(8, 8, use_se=True), IMAGE, {nn.Conv2d: 5, SqueezeExcite: 1}
    ),
    "repvit_block": Case(lambda: RepViTBlock(8, 8), IMAGE, {nn.Conv2d: 3, SqueezeExcite: 0}),
    # dw 1 + SE 2 + pw 1 + FFN 2
    "repvit_block_down_se": Case(
        lambda: RepViTBlock(8, 16, stride=2, use_se=True), IMAGE, {nn.Conv2d: 6}
    ),
    "bn_linear": Case(lambda: BNLinear(8, 10), VECTOR, {nn.Linear: 1}),
    "distill_classifier": Case(lambda: DistillClassifier(8, 10), VECTOR, {nn.Linear: 1}),
    # RepLKNet
    "bn_conv_bn": Case(lambda: BNConvBN(8, 16), IMAGE, {nn.Conv2d: 1}),
    "bn_conv_bn_g2_noact": Case(lambda: BNConvBN(8, 16, groups=2, act=None), IMAGE, {nn.Conv2d: 1}),
    "replk_block_13": Case(lambda: RepLKBlock(8, 8, 13, 5), IMAGE, {nn.Conv2d: 3, nn.ReLU: 2}),
    "replk_block_31_wide": Case(lambda: RepLKBlock(8, 16, 31, 5), SMALL, {nn.Conv2d: 3}),
    "lk_convffn": Case(lambda: LKConvFFN(8, 32), IMAGE, {nn.Conv2d: 2, nn.GELU: 1}),
    "bn_pool_head": Case(lambda: BNPoolHead(8, 10), IMAGE, {nn.Linear: 1, nn.Conv2d: 0}),
    # MobileNetV3: expand 1 + dw 1 + SE 2 + project 1
    "inverted_residual_se_hs": Case(
        lambda: InvertedResidual(8, 5, 24, 8, True, "hardswish", 1),
        IMAGE,
        {nn.Conv2d: 5, nn.Hardswish: 2, nn.Hardsigmoid: 1},
    ),
    # no expanding conv (expanded == in): dw 1 + SE 2 + project 1
    "inverted_residual_noexpand_s2": Case(
        lambda: InvertedResidual(8, 3, 8, 16, True, "relu", 2), IMAGE, {nn.Conv2d: 4}
    ),
    "inverted_residual_relu": Case(
        lambda: InvertedResidual(8, 3, 24, 8, False, "relu", 1), IMAGE, {nn.Conv2d: 3}
    ),
    # two blocks without residual: the first's projection (8 -> 16) merges into the second's
    # expansion (16 -> 48): 8 * 48 <= 8 * 16 + 16 * 48. dw 1 + (merged 1 + dw 1 + SE 2 + proj 1)
    "mnv3_features_merge": Case(
        lambda: MobileNetV3Features(
            [
                InvertedResidual(8, 3, 8, 16, False, "relu", 2),
                InvertedResidual(16, 3, 48, 24, True, "hardswish", 1),
            ]
        ),
        IMAGE,
        {nn.Conv2d: 6},
    ),
    # the second block's residual reads the projection's output too: nothing merges
    "mnv3_features_residual": Case(
        lambda: MobileNetV3Features(
            [
                InvertedResidual(8, 3, 8, 16, False, "relu", 2),
                InvertedResidual(16, 3, 48, 16, True, "hardswish", 1),
            ]
        ),
        IMAGE,
        {nn.Conv2d: 7},
    ),
    # 32 -> 8 then 8 -> 32: merged (32 * 32) would cost more than both (2 * 32 * 8): kept
    "mnv3_features_costly": Case(
        lambda: MobileNetV3Features(
            [
                InvertedResidual(8, 3, 32, 8, False, "relu", 2),
                InvertedResidual(8, 3, 32, 8, False, "relu", 1),
            ]
        ),
        IMAGE,
        {nn.Conv2d: 6},
    ),
    # ViT MLP: nothing to fold
    "mlp_block": Case(lambda: MlpBlock(8, 32), TOKENS, {nn.Linear: 2, nn.LayerNorm: 1}),
    "mlp_block_tanh": Case(lambda: MlpBlock(8, 32, "tanh"), TOKENS, {nn.Linear: 2}),
}


def _count(net: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def _block(name: str) -> nn.Module:
    torch.manual_seed(0)
    block = CASES[name].build()
    randomize_extras(randomize_bn(block, seed=1), seed=1)
    return block.double().eval()


def _inputs(name: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in CASES[name].shapes]


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_deploy_equals_training_form(name: str) -> None:
    block = _block(name)
    deployed = copy.deepcopy(block)
    deploy_all(deployed)
    assert is_deployed(deployed)
    with torch.no_grad():
        for x in _inputs(name):
            torch.testing.assert_close(deployed(x), block(x), **TOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_deploy_removes_branches(name: str) -> None:
    block = _block(name)
    before = {kind: _count(block, kind) for kind in (nn.Conv2d, nn.Linear, BN)}
    deploy_all(block)
    assert _count(block, BN) == 0
    for kind, number in CASES[name].deploy.items():
        assert _count(block, kind) == number, kind
    # Folding never adds a conv or a Linear.
    assert _count(block, nn.Conv2d) <= before[nn.Conv2d]
    assert _count(block, nn.Linear) <= before[nn.Linear]
    if isinstance(block, RepBlock):
        assert [n for n, _ in block.named_parameters()] == ["reparam.weight", "reparam.bias"]
        assert not list(block.buffers())


@pytest.mark.parametrize("name", sorted(CASES))
def test_switch_to_deploy_is_idempotent(name: str) -> None:
    block = _block(name)
    deploy_all(block)
    state = copy.deepcopy(block.state_dict())
    deploy_all(block)
    again = block.state_dict()
    assert state.keys() == again.keys()
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_deploy_forms_keep_what_upstream_keeps() -> None:
    """Layer scales on FFN residuals, SE gates and activations are not folded."""
    block = _block("repmixer_block")
    deploy_all(block)
    assert [n for n, _ in block.named_parameters(recurse=False)] == ["layer_scale"]
    assert isinstance(block.token_mixer.reparam, nn.Conv2d)
    assert block.token_mixer.reparam.groups == 8 and block.token_mixer.reparam.kernel_size == (3, 3)
    se = _block("repvit_block_se")
    deploy_all(se)
    assert isinstance(se.token_mixer[1], SqueezeExcite) and se.token_mixer[1].flavour == "timm"
    head = _block("bn_pool_head")
    deploy_all(head)
    assert head.norm is None and isinstance(head.avgpool, nn.AdaptiveAvgPool2d)


def test_fastvit_mixer_and_norm_follow_reference() -> None:
    """RepMixer's ``norm`` is the identity BN alone; its ``mixer`` has a kxk and a 1x1 conv-BN
    and the identity BN (a MobileOne block with one conv branch)."""
    mixer = RepMixer(8, 3)
    assert mixer.norm.rbr_scale is None and len(mixer.norm.rbr_conv) == 0
    assert isinstance(mixer.norm.rbr_skip, nn.BatchNorm2d)
    assert mixer.mixer.rbr_scale is not None and len(mixer.mixer.rbr_conv) == 1
    assert isinstance(mixer.mixer.rbr_skip, nn.BatchNorm2d)
    assert mixer.layer_scale.shape == (8, 1, 1)
    with pytest.raises(ValueError, match="at least one branch"):
        MobileOneBlock(8, 16, 3, num_conv_branches=0, scale_branch=False)


def test_helpers() -> None:
    gen = torch.Generator().manual_seed(3)
    w1, b1, w2, b2 = (
        torch.randn(s, generator=gen, dtype=torch.float64) for s in ((3, 4), (3,), (3, 4), (3,))
    )
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    w, b = average_linears((w1, b1), (w2, b2))
    torch.testing.assert_close(x @ w.T + b, ((x @ w1.T + b1) + (x @ w2.T + b2)) / 2, **TOL)
    # MobileNet's rounding: multiples of 8, never below 90 % of the value
    rounded = [make_divisible(v) for v in (4, 18, 24, 60)]
    assert rounded == [8, 24, 24, 64]


HYBRID_NETS: dict[str, dict[type[nn.Module], int]] = {
    # stem 3 + RepMixerBlock 4 + patch embed 2 + RepCPE 1 + RepMixerBlock 4; one Linear
    "fastvit": {nn.Conv2d: 14, nn.Linear: 1, RepBlock: 10},
    # stem 2 + SE block 5 + block 3 + stride-2 block 4 + SE block 5; RepViT's two BN-Linears
    # averaged into one Linear
    "repvit": {nn.Conv2d: 19, nn.Linear: 1, SqueezeExcite: 2},
    # stem 4 + (RepLK 3 + FFN 2) + transition 2 + (RepLK 3 + FFN 2); the head's BN in the Linear
    "replknet": {nn.Conv2d: 16, nn.Linear: 1, LargeSmallKernel: 2},
    # stem 1 + blocks 4 + 3 + 3 + 5 + 5 + last 1x1 1, less the first block's projection merged
    # into the second block's expansion; two Linears in the classifier
    "mobilenetv3": {nn.Conv2d: 21, nn.Linear: 2, SqueezeExcite: 3},
    # unchanged: 2 x 2 Linears + head, 3 LayerNorms
    "vit_mlp": {nn.Linear: 5, nn.LayerNorm: 3, nn.Conv2d: 0},
    "vit_mlp_op14": {nn.Linear: 5, nn.LayerNorm: 3, nn.Conv2d: 0},
}


@pytest.mark.parametrize("name", sorted(HYBRID_NETS))
def test_hybrid_net_deploy_counts(name: str) -> None:
    net = NETWORKS[name].factory()
    deployed = deploy_copy(net)
    assert is_deployed(deployed) and _count(deployed, BN) == 0
    for kind, number in HYBRID_NETS[name].items():
        assert _count(deployed, kind) == number, kind
    assert all(m.deployed for m in deployed.modules() if isinstance(m, RepBlock))


def test_deployable_finds_outermost_modules() -> None:
    net = NETWORKS["repvit"].factory()
    outer = deployable(net)
    assert outer and all(callable(getattr(m, "switch_to_deploy", None)) for m in outer)
    inner = {id(m) for o in outer for m in o.modules() if m is not o}
    assert not any(id(m) in inner for m in outer)


def test_switch_to_deploy_on_hybrid_net_in_place_float32() -> None:
    spec = NETWORKS["repvit"]
    net = spec.factory()
    x = torch.randn(spec.input_shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = net(x)
        net.switch_to_deploy()
        out = net(x)
    assert is_deployed(net)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_factories_randomize_what_folds_read() -> None:
    """Layer scales (1e-5 upstream) and OREPA's branch vectors are far from their initial
    constants, so folding them is not a near no-op."""
    fastvit = NETWORKS["fastvit"].factory()
    scales = [p for n, p in fastvit.named_parameters() if n.endswith("layer_scale")]
    assert len(scales) == 4
    assert all(p.min() > 0.2 and p.std() > 0 for p in scales)
    orepa = NETWORKS["orepa"].factory()
    vectors = [p for n, p in orepa.named_parameters() if n.endswith("vector")]
    assert vectors and all((v.std(dim=1) > 0).all() and v.min() > 0.2 for v in vectors)
