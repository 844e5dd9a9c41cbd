"""Training form == hand-written deploy form, for every block and every registered net.

Float64, eval mode: the folds are exact algebra, so the only difference is float64 rounding of a
few dozen multiply-adds per output (observed <= 2e-15 on outputs of magnitude <= 10); the
tolerance ``rtol = atol = 1e-10`` leaves five orders of margin and still catches any wrong fold.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from models.blocks import (
    ACBlock,
    ChainAddBlock,
    ConvBN,
    DBBBlock,
    LargeSmallKernel,
    MobileOneBlock,
    MultiScaleBlock,
    OREPABlock,
    PPYoloeRepVgg,
    QARepVGGBlock,
    RepBlock,
    RepVGGBlock,
    ResidualConvBN,
    ScaledDiffResidual,
    avg_pool_kernel,
    centre_kernel,
    fold_input_bn,
    identity_kernel,
    merge_1x1_kxk,
    orepa_prior,
)
from models.hybrid import is_deployed
from models.nets import (
    NETWORKS,
    RepNet,
    deploy_copy,
    randomize_bn,
    randomize_extras,
    rep_blocks,
)

TOL = {"rtol": 1e-10, "atol": 1e-10}

BLOCKS: dict[str, Callable[[], RepBlock]] = {
    "convbn": lambda: ConvBN(8, 16, 3, stride=2),
    "convbn_dw_noact": lambda: ConvBN(8, 8, 3, groups=8, act=None),
    "convbn_1x1": lambda: ConvBN(8, 16, 1),
    "repvgg_identity": lambda: RepVGGBlock(8, 8),
    "repvgg_strided": lambda: RepVGGBlock(8, 16, stride=2),
    "repconv_silu": lambda: RepVGGBlock(8, 16, act="silu"),
    "repvgg_g4": lambda: RepVGGBlock(8, 8, groups=4),
    "repvgg_g4_strided": lambda: RepVGGBlock(8, 16, stride=2, groups=4),
    "repvgg_dw": lambda: RepVGGBlock(8, 8, groups=8),
    "repvgg_dw_strided": lambda: RepVGGBlock(8, 8, stride=2, groups=8),
    "acnet": lambda: ACBlock(8, 8),
    "acnet_k5_g4_strided": lambda: ACBlock(8, 16, kernel_size=5, stride=2, groups=4),
    "multiscale": lambda: MultiScaleBlock(8, 8),
    "multiscale_g2_strided": lambda: MultiScaleBlock(8, 16, stride=2, groups=2),
    "mobileone_dw": lambda: MobileOneBlock(8, 8, 3, groups=8, num_conv_branches=3),
    "mobileone_dw_strided": lambda: MobileOneBlock(8, 8, 3, stride=2, groups=8),
    "mobileone_pw": lambda: MobileOneBlock(8, 8, 1),
    "mobileone_pw_widen": lambda: MobileOneBlock(8, 16, 1),
    "ppyoloe_scalar_alpha_first": lambda: PPYoloeRepVgg(8, 8, "scalar", alpha_first=True),
    "ppyoloe_scalar_alpha_last": lambda: PPYoloeRepVgg(8, 16, "scalar", alpha_first=False),
    "ppyoloe_channel_alpha_first": lambda: PPYoloeRepVgg(8, 16, "channel", alpha_first=True),
    "ppyoloe_channel_alpha_last": lambda: PPYoloeRepVgg(8, 8, "channel", alpha_first=False),
    "residual": lambda: ResidualConvBN(8),
    "residual_dw": lambda: ResidualConvBN(8, groups=8),
    "scaled_diff": lambda: ScaledDiffResidual(8),
    "scaled_diff_g4": lambda: ScaledDiffResidual(8, groups=4),
    "large_small_identity_dw": lambda: LargeSmallKernel(8, 8, groups=8, identity=True),
    "large_small_strided": lambda: LargeSmallKernel(8, 16, stride=2),
    "chain_add": lambda: ChainAddBlock(8),
    "chain_add_g2_no_identity": lambda: ChainAddBlock(8, identity=False, groups=2),
    "dbb": lambda: DBBBlock(8, 8),
    "dbb_strided": lambda: DBBBlock(8, 16, stride=2),
    "dbb_g4": lambda: DBBBlock(8, 8, groups=4),
    "dbb_dw": lambda: DBBBlock(8, 8, groups=8),
    "dbb_dw_strided": lambda: DBBBlock(8, 8, stride=2, groups=8),
    "dbb_k7_stem": lambda: DBBBlock(3, 8, 7, stride=2),
    "dbb_k5_half_internal": lambda: DBBBlock(8, 8, 5, internal_channels=4),
    "qarepvgg_identity": lambda: QARepVGGBlock(8, 8),
    "qarepvgg_strided": lambda: QARepVGGBlock(8, 16, stride=2),
    "qarepvgg_g4": lambda: QARepVGGBlock(8, 8, groups=4),
    "qarepvgg_dw_strided": lambda: QARepVGGBlock(8, 8, stride=2, groups=8),
    "orepa": lambda: OREPABlock(8, 8),
    "orepa_widen_strided": lambda: OREPABlock(8, 16, stride=2),
    "orepa_g4": lambda: OREPABlock(8, 16, groups=4),
    "orepa_dw": lambda: OREPABlock(8, 8, groups=8),
    "orepa_k5_g2": lambda: OREPABlock(8, 8, 5, groups=2),
    "orepa_k1_internal": lambda: OREPABlock(8, 8, 1, internal_channels=4),
}


def _count(net: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def _block(name: str) -> RepBlock:
    torch.manual_seed(0)
    block = BLOCKS[name]()
    randomize_extras(randomize_bn(block, seed=1), seed=1)
    return block.double().eval()


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_deploy_equals_training_form(name: str) -> None:
    block = _block(name)
    gen = torch.Generator().manual_seed(2)
    # Odd and even sizes, batch 2: strided frames and borders must agree on every size.
    inputs = [
        torch.randn(2, block.in_channels, h, w, generator=gen, dtype=torch.float64)
        for h, w in ((15, 17), (16, 16))
    ]
    deployed = copy.deepcopy(block)
    deployed.switch_to_deploy()
    assert deployed.deployed and not block.deployed
    with torch.no_grad():
        for x in inputs:
            torch.testing.assert_close(deployed(x), block(x), **TOL)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_deploy_is_one_conv(name: str) -> None:
    block = _block(name)
    block.switch_to_deploy()
    block.switch_to_deploy()  # idempotent
    conv = block.reparam
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    assert _count(block, nn.Conv2d) == 1
    assert _count(block, nn.modules.batchnorm._BatchNorm) == 0
    assert conv.weight.dtype == torch.float64
    assert [n for n, _ in block.named_parameters()] == ["reparam.weight", "reparam.bias"]


def test_deploy_keeps_float32() -> None:
    torch.manual_seed(0)
    block = randomize_bn(DBBBlock(8, 8), seed=1).eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        ref = block(x)
        block.switch_to_deploy()
        out = block(x)
    assert block.reparam.weight.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_kernel_helpers_against_functional() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 9, 9, generator=gen, dtype=torch.float64)
    # identity kernel, grouped
    eye = identity_kernel(8, 4, 3)
    torch.testing.assert_close(torch.conv2d(x, eye, padding=1, groups=4), x, **TOL)
    # average pool with zero pads counted == conv with the diagonal kernel
    pool = nn.AvgPool2d(3, 2, padding=1)
    conv = torch.conv2d(x, avg_pool_kernel(8, 8, 3), stride=2, padding=1, groups=8)
    torch.testing.assert_close(conv, pool(x), **TOL)
    # 1x3 kernel centred into 3x3 with pads (0, 1) vs (1, 1)
    k13 = torch.randn(4, 8, 1, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        torch.conv2d(x, centre_kernel(k13, 3), padding=1),
        torch.conv2d(x, k13, padding=(0, 1)),
        **TOL,
    )
    # grouped 1x1 then kxk (no pads)
    k1 = torch.randn(8, 4, 1, 1, generator=gen, dtype=torch.float64)
    b1 = torch.randn(8, generator=gen, dtype=torch.float64)
    k2 = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    b2 = torch.randn(6, generator=gen, dtype=torch.float64)
    kernel, bias = merge_1x1_kxk(k1, b1, k2, b2, groups=2)
    seq = torch.conv2d(torch.conv2d(x, k1, b1, groups=2), k2, b2, groups=2)
    torch.testing.assert_close(torch.conv2d(x, kernel, bias, groups=2), seq, **TOL)
    # BN before a grouped 1x1 conv (no pads) and before a Linear
    bn = randomize_bn(nn.BatchNorm2d(8), seed=4).double().eval()
    k, b = fold_input_bn(k1, b1, bn, groups=2)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.conv2d(x, k, b, groups=2), torch.conv2d(bn(x), k1, b1, groups=2), **TOL
        )
    bn1d = randomize_bn(nn.BatchNorm1d(8), seed=5).double().eval()
    w = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    tokens = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    w_fused, b_fused = fold_input_bn(w, None, bn1d)
    with torch.no_grad():
        torch.testing.assert_close(tokens @ w_fused.T + b_fused, bn1d(tokens) @ w.T, **TOL)


def test_orepa_prior_matches_reference_formula() -> None:
    """The reference fills the prior with loops (k = 3): rows for the first half of the
    channels, columns for the second."""
    import math

    prior = orepa_prior(6, 3)
    for i in range(6):
        for h in range(3):
            for w in range(3):
                want = (
                    math.cos(math.pi * (h + 0.5) * (i + 1) / 3)
                    if i < 3
                    else math.cos(math.pi * (w + 0.5) * (i + 1 - 3) / 3)
                )
                assert prior[i, h, w].item() == pytest.approx(want, abs=1e-15)


def test_qarepvgg_branches_follow_reference() -> None:
    """Identity and average pool only with in == out and stride 1; the 1x1 conv has no BN."""
    same, strided = QARepVGGBlock(8, 8), QARepVGGBlock(8, 8, stride=2)
    assert isinstance(same.rbr_identity, nn.Identity) and isinstance(same.rbr_avg, nn.AvgPool2d)
    assert same.rbr_avg.count_include_pad and same.rbr_avg.padding == 1
    assert strided.rbr_identity is None and strided.rbr_avg is None
    assert isinstance(same.rbr_1x1, nn.Conv2d) and same.rbr_1x1.bias is None


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_net_deploy_equals_training_form(name: str) -> None:
    spec = NETWORKS[name]
    net = spec.factory().double()
    x = torch.randn(
        spec.input_shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    deployed = deploy_copy(net)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), net(x), **TOL)
    blocks = rep_blocks(deployed)
    assert all(b.deployed for b in blocks) and is_deployed(deployed)
    if isinstance(net, RepNet):
        # Pure CNNs: one conv per block. (Hybrid nets: tests/models/test_hybrid.py counts.)
        assert blocks and _count(deployed, nn.Conv2d) == len(blocks) == len(rep_blocks(net))
    assert _count(deployed, nn.modules.batchnorm._BatchNorm) == 0
    # deploy_copy leaves net alone
    assert not any(b.deployed for b in rep_blocks(net))
    assert net.state_dict().keys() == spec.factory().state_dict().keys()


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_net_factory_is_deterministic_and_folds_matter(name: str) -> None:
    spec = NETWORKS[name]
    a, b = spec.factory(), spec.factory()
    assert not a.training
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    bns = [m for m in a.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    lns = [m for m in a.modules() if isinstance(m, nn.LayerNorm)]
    assert bns or lns  # the ViT nets normalize with LayerNorm only
    for bn in bns:
        assert bn.running_mean.abs().max() > 0 and (bn.running_var - 1).abs().max() > 0
        assert (bn.weight - 1).abs().max() > 0 and bn.bias.abs().max() > 0
    for ln in lns:
        assert (ln.weight - 1).abs().max() > 0 and ln.bias.abs().max() > 0


def test_switch_to_deploy_on_net_in_place() -> None:
    spec = NETWORKS["repvgg"]
    net = spec.factory()
    x = torch.randn(spec.input_shape)
    with torch.no_grad():
        ref = net(x)
        net.switch_to_deploy()
        out = net(x)
    assert all(b.deployed for b in rep_blocks(net))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
