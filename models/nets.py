"""Small networks built from the blocks in ``models.blocks`` and ``models.hybrid``, and their
registry.

Every factory is deterministic (it seeds its own RNG without touching the global one) and gives
every BatchNorm non-trivial statistics (``randomize_bn``) and every layer scale, OREPA branch
vector and LayerNorm non-trivial values (``randomize_extras``), so each fold changes the weights.
A net's ``switch_to_deploy()`` turns every block into its deploy form; ``deploy_copy`` does that
on a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
    mobileone_unit,
)
from models.hybrid import (
    BNPoolHead,
    DistillClassifier,
    HybridBlock,
    InvertedResidual,
    LKConvFFN,
    MlpBlock,
    MobileNetV3Features,
    RepCPE,
    RepLKBlock,
    RepMixerBlock,
    RepViTBlock,
    deploy_all,
    deployable,
)

__all__ = [
    "NETWORKS",
    "DBBBasicBlock",
    "HybridNet",
    "NetSpec",
    "RepNet",
    "TokenPoolHead",
    "deploy_copy",
    "randomize_bn",
    "randomize_extras",
    "rep_blocks",
]

NUM_CLASSES = 10


@dataclass(frozen=True)
class NetSpec:
    """A registered network: a deterministic ``factory``, its ``input_shape`` and a description.

    ``opset`` is the opset of the TorchScript forms (``None``: ``models.export``'s default); the
    dynamo forms always use the dynamo exporter's opset.
    """

    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str
    opset: int | None = None


def rep_blocks(net: nn.Module) -> list[RepBlock]:
    """All re-parameterizable blocks of ``net`` in module order."""
    return [m for m in net.modules() if isinstance(m, RepBlock)]


class RepNet(nn.Module):
    """``Linear(GlobalAvgPool(body(x)))`` with ``switch_to_deploy`` over all blocks in ``body``."""

    def __init__(self, body: Iterable[nn.Module], channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))

    def switch_to_deploy(self) -> None:
        for block in deployable(self):
            block.switch_to_deploy()


class HybridNet(HybridBlock):
    """``head(body(x))``; ``switch_to_deploy`` deploys every deployable module in both."""

    def __init__(self, body: Iterable[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class TokenPoolHead(nn.Module):
    """A ViT classifier on tokens [B, T, C]: ``Linear(mean_T(LayerNorm(x)))``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x).mean(1))


class DBBBasicBlock(nn.Module):
    """ResNet basic block with DBB convs: ``relu(dbb2(dbb1(x)) + shortcut(x))``.

    The shortcut is ``x`` or a 1x1 ``ConvBN`` when the stride or width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = DBBBlock(in_channels, out_channels, 3, stride)
        self.conv2 = DBBBlock(out_channels, out_channels, 3, 1, act=None)
        self.shortcut: nn.Module = (
            ConvBN(in_channels, out_channels, 1, stride, act=None)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


@torch.no_grad()
def randomize_bn(net: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (in place).

    ``running_mean ~ N(0, 0.3^2)``, ``running_var ~ U(0.5, 2)``, ``weight ~ U(0.5, 1.5)``,
    ``bias ~ N(0, 0.3^2)``: the inference BN is far from the identity, so every fold matters.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            if module.affine:
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.3 * torch.randn(n, generator=gen))
    return net


@torch.no_grad()
def randomize_extras(net: nn.Module, seed: int) -> nn.Module:
    """Give the non-BN parameters that folds read non-trivial values (in place).

    Layer scales (FastViT; initialised to 1e-5 upstream, which would make ``x + s * f(x)``
    almost ``x``) ``~ U(0.25, 1.25)``; OREPA's branch vectors ``~ U(0.25, 1.25)`` and its
    zero-initialised identity-based 1x1 weight ``~ N(0, 0.1^2)``; LayerNorm affine parameters
    ``weight ~ U(0.5, 1.5)``, ``bias ~ N(0, 0.3^2)``.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(param: Tensor, low: float, high: float) -> None:
        param.copy_(low + (high - low) * torch.rand(param.shape, generator=gen))

    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "layer_scale":
                uniform(param, 0.25, 1.25)
        if isinstance(module, OREPABlock):
            uniform(module.vector, 0.25, 1.25)
            idconv = module.weight_orepa_1x1_kxk_idconv1
            idconv.copy_(0.1 * torch.randn(idconv.shape, generator=gen))
        if isinstance(module, nn.LayerNorm):
            uniform(module.weight, 0.5, 1.5)
            module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
    return net


def deploy_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` in eval mode with every block switched to its deploy form."""
    deployed = copy.deepcopy(net).eval()
    deploy_all(deployed)
    return deployed


def _seeded(build: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    """A factory: build under a private RNG seed, randomize BN and extras, return in eval mode."""

    def factory() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build()
        return randomize_extras(randomize_bn(net, seed), seed).eval()

    factory.__name__ = build.__name__
    return factory


def _convbn_stack() -> nn.Module:
    return RepNet(
        [
            ConvBN(3, 16, 3),
            ConvBN(16, 32, 3, stride=2),
            ConvBN(32, 32, 3, groups=32),
            ConvBN(32, 64, 1),
        ],
        64,
    )


def _repvgg() -> nn.Module:
    return RepNet(
        [
            RepVGGBlock(3, 16, stride=2),
            RepVGGBlock(16, 16),
            RepVGGBlock(16, 32, stride=2),
            RepVGGBlock(32, 32),
            RepVGGBlock(32, 32),
            RepVGGBlock(32, 64, stride=2),
        ],
        64,
    )


def _repvgg_grouped() -> nn.Module:
    return RepNet(
        [
            RepVGGBlock(3, 16),
            RepVGGBlock(16, 16, groups=4),
            RepVGGBlock(16, 32, stride=2, groups=4),
            RepVGGBlock(32, 32, groups=32),
            RepVGGBlock(32, 32, stride=2, groups=32),
            RepVGGBlock(32, 64, groups=4),
        ],
        64,
    )


def _repconv() -> nn.Module:
    return RepNet(
        [
            RepVGGBlock(3, 16, stride=2, act="silu"),
            RepVGGBlock(16, 32, act="silu"),
            RepVGGBlock(32, 32, stride=2, act="silu"),
            RepVGGBlock(32, 64, act="silu"),
        ],
        64,
    )


def _acnet() -> nn.Module:
    return RepNet(
        [
            ACBlock(3, 16),
            ACBlock(16, 32, stride=2),
            ACBlock(32, 32, kernel_size=5, groups=4),
            ACBlock(32, 64, stride=2),
        ],
        64,
    )


def _multiscale() -> nn.Module:
    return RepNet(
        [
            MultiScaleBlock(3, 16),
            MultiScaleBlock(16, 32, stride=2),
            MultiScaleBlock(32, 32, groups=4),
        ],
        32,
    )


def _mobileone() -> nn.Module:
    return RepNet(
        [
            MobileOneBlock(3, 16, 3, stride=2, num_conv_branches=2),
            *mobileone_unit(16, 16, stride=1, num_conv_branches=3),
            *mobileone_unit(16, 32, stride=2, num_conv_branches=2),
            *mobileone_unit(32, 32, stride=1, num_conv_branches=2),
        ],
        32,
    )


def _ppyoloe() -> nn.Module:
    return RepNet(
        [
            ConvBN(3, 16, 3, stride=2),
            PPYoloeRepVgg(16, 16, alpha="scalar", alpha_first=True),
            PPYoloeRepVgg(16, 32, alpha="channel", alpha_first=False),
            PPYoloeRepVgg(32, 32, alpha="scalar", alpha_first=False),
            PPYoloeRepVgg(32, 32, alpha="channel", alpha_first=True),
        ],
        32,
    )


def _residual() -> nn.Module:
    return RepNet(
        [
            ConvBN(3, 16, 3),
            ResidualConvBN(16),
            ScaledDiffResidual(16),
            LargeSmallKernel(16, 16, groups=16, identity=True),
            LargeSmallKernel(16, 32, stride=2),
            ChainAddBlock(32),
        ],
        32,
    )


def _dbb() -> nn.Module:
    return RepNet(
        [
            DBBBlock(3, 16, 3),
            DBBBlock(16, 16, 3),
            DBBBlock(16, 32, 3, stride=2),
            DBBBlock(32, 32, 3, groups=4),
            DBBBlock(32, 32, 3, groups=32),
        ],
        32,
    )


def _dbb_resnet18(width: int = 16) -> nn.Module:
    layers: list[nn.Module] = [
        DBBBlock(3, width, 7, stride=2),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    in_channels = width
    for stage in range(4):
        out_channels = width * 2**stage
        for index in range(2):
            stride = 2 if stage > 0 and index == 0 else 1
            layers.append(DBBBasicBlock(in_channels, out_channels, stride))
            in_channels = out_channels
    return RepNet(layers, in_channels)


def _pool_linear(channels: int, classifier: nn.Module | None = None) -> nn.Module:
    """``classifier(Flatten(GlobalAvgPool(x)))``, by default a Linear to ``NUM_CLASSES``."""
    head = classifier if classifier is not None else nn.Linear(channels, NUM_CLASSES)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), head)


def _fastvit() -> nn.Module:
    """FastViT-T-like: MobileOne stem (/4), a RepMixer stage, a patch embedding (7x7 + 3x3
    grouped stride-2 conv, then a MobileOne 1x1), RepCPE and a second RepMixer stage."""
    return HybridNet(
        [
            MobileOneBlock(3, 16, 3, stride=2, num_conv_branches=1, act="gelu"),
            MobileOneBlock(16, 16, 3, stride=2, groups=16, num_conv_branches=1, act="gelu"),
            MobileOneBlock(16, 16, 1, num_conv_branches=1, act="gelu"),
            RepMixerBlock(16, 3, mlp_ratio=3),
            LargeSmallKernel(16, 32, stride=2, groups=16, large=7, small=3, act="gelu"),
            MobileOneBlock(32, 32, 1, num_conv_branches=1, act="gelu"),
            RepCPE(32, 7),
            RepMixerBlock(32, 3, mlp_ratio=3),
        ],
        _pool_linear(32),
    )


def _repvit() -> nn.Module:
    """RepViT-like: conv-BN-GELU-conv-BN stem (/4), RepViT blocks with and without SE, a
    stride-2 RepViT block, and the distillation classifier."""
    return HybridNet(
        [
            ConvBN(3, 8, 3, stride=2, act="gelu"),
            ConvBN(8, 16, 3, stride=2, act=None),
            RepViTBlock(16, 16, use_se=True),
            RepViTBlock(16, 16, use_se=False),
            RepViTBlock(16, 32, stride=2, use_se=False),
            RepViTBlock(32, 32, use_se=True),
        ],
        _pool_linear(32, DistillClassifier(32, NUM_CLASSES)),
    )


def _replknet() -> nn.Module:
    """RepLKNet-like: conv-BN-ReLU stem (/4), a 13x13 stage on 16x16, a transition, a 31x31
    stage on 8x8 (each a RepLK block and a ConvFFN), and the BN-pool-Linear head."""
    return HybridNet(
        [
            ConvBN(3, 16, 3, stride=2),
            ConvBN(16, 16, 3, groups=16),
            ConvBN(16, 16, 1),
            ConvBN(16, 16, 3, stride=2, groups=16),
            RepLKBlock(16, 16, 13, 5),
            LKConvFFN(16, 64),
            ConvBN(16, 32, 1),
            ConvBN(32, 32, 3, stride=2, groups=32),
            RepLKBlock(32, 32, 31, 5),
            LKConvFFN(32, 128),
        ],
        BNPoolHead(32, NUM_CLASSES),
    )


def _mobilenetv3() -> nn.Module:
    """MobileNetV3-Small-like: HardSwish stem, five inverted residuals (ReLU and HardSwish, with
    and without SE, with and without residual), last 1x1 conv, pool and the two-layer classifier.
    Deploy merges the first block's projection into the second block's expansion."""
    return HybridNet(
        [
            MobileNetV3Features(
                [
                    ConvBN(3, 16, 3, stride=2, act="hardswish"),
                    InvertedResidual(16, 3, 16, 16, True, "relu", 2),
                    InvertedResidual(16, 3, 72, 24, False, "relu", 2),
                    InvertedResidual(24, 3, 88, 24, False, "relu", 1),
                    InvertedResidual(24, 5, 96, 40, True, "hardswish", 2),
                    InvertedResidual(40, 5, 240, 40, True, "hardswish", 1),
                    ConvBN(40, 240, 1, act="hardswish"),
                ]
            )
        ],
        _pool_linear(
            240,
            nn.Sequential(
                nn.Linear(240, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, NUM_CLASSES)
            ),
        ),
    )


def _vit_mlp() -> nn.Module:
    """Two ViT MLP blocks on tokens [1, 16, 32] (exact and tanh GELU), LayerNorm, token mean,
    Linear."""
    return HybridNet(
        [MlpBlock(32, 128), MlpBlock(32, 128, approximate="tanh")], TokenPoolHead(32, NUM_CLASSES)
    )


def _qarepvgg() -> nn.Module:
    return RepNet(
        [
            QARepVGGBlock(3, 16, stride=2),
            QARepVGGBlock(16, 16),
            QARepVGGBlock(16, 32, stride=2),
            QARepVGGBlock(32, 32),
            QARepVGGBlock(32, 32, groups=4),
        ],
        32,
    )


def _orepa() -> nn.Module:
    return RepNet(
        [
            OREPABlock(3, 16, 3, stride=2),
            OREPABlock(16, 16, 3),
            OREPABlock(16, 32, 3, stride=2, groups=4),
            OREPABlock(32, 32, 3, groups=32),
            OREPABlock(32, 32, 5),
        ],
        32,
    )


NETWORKS: dict[str, NetSpec] = {
    "convbn_stack": NetSpec(
        _seeded(_convbn_stack, 0),
        (1, 3, 32, 32),
        "Conv-BN-ReLU stack (strided, depthwise, 1x1) with global avg pool + Linear",
    ),
    "repvgg": NetSpec(
        _seeded(_repvgg, 1),
        (1, 3, 32, 32),
        "RepVGG blocks: 3x3 + 1x1 + identity BN, with and without identity",
    ),
    "repvgg_grouped": NetSpec(
        _seeded(_repvgg_grouped, 2),
        (1, 3, 32, 32),
        "RepVGG blocks with groups=4 and depthwise, identity and strided",
    ),
    "repconv": NetSpec(
        _seeded(_repconv, 3),
        (1, 3, 32, 32),
        "YOLOv7 RepConv (3x3 + 1x1, no identity) with SiLU",
    ),
    "acnet": NetSpec(
        _seeded(_acnet, 4),
        (1, 3, 32, 32),
        "ACNet blocks: kxk + 1xk + kx1 conv-BN (k=3 and a grouped k=5)",
    ),
    "multiscale": NetSpec(
        _seeded(_multiscale, 5),
        (1, 3, 32, 32),
        "1x1 + 3x3 + 5x5 conv-BN summed, merged into 5x5",
    ),
    "mobileone": NetSpec(
        _seeded(_mobileone, 6),
        (1, 3, 32, 32),
        "MobileOne: stem block + depthwise/pointwise units with k branches, scale and identity",
    ),
    "ppyoloe": NetSpec(
        _seeded(_ppyoloe, 7),
        (1, 3, 32, 32),
        "PP-YOLOE RepVgg: 3x3 + alpha * 1x1, scalar/per-channel alpha, both Mul orders",
    ),
    "residual": NetSpec(
        _seeded(_residual, 8),
        (1, 3, 32, 32),
        "x + conv-BN, x + s*(conv-BN - BN), 7x7 + 3x3 (+x), chained adds of mixed kernels",
    ),
    "dbb": NetSpec(
        _seeded(_dbb, 9),
        (1, 3, 32, 32),
        "Diverse Branch Blocks (kxk, 1x1, 1x1-avg, 1x1-kxk with BN-and-pad), grouped, depthwise",
    ),
    "dbb_resnet18": NetSpec(
        _seeded(_dbb_resnet18, 10),
        (1, 3, 64, 64),
        "ResNet-18 shape (base width 16) whose convs are DBB blocks; 7x7 DBB stem + max pool",
    ),
    "fastvit": NetSpec(
        _seeded(_fastvit, 11),
        (1, 3, 32, 32),
        "FastViT: MobileOne stem, RepMixer + ConvFFN with layer scales, 7x7+3x3 embed, RepCPE",
    ),
    "repvit": NetSpec(
        _seeded(_repvit, 12),
        (1, 3, 32, 32),
        "RepViT: RepVGGDW token mixer, SE, conv-BN-GELU FFN, BN1d-Linear + distillation head",
    ),
    "replknet": NetSpec(
        _seeded(_replknet, 13),
        (1, 3, 64, 64),
        "RepLKNet: pre-BN 1x1, 13x13 / 31x31 dw + 5x5 dw, pre-BN ConvFFN, BN-pool-Linear head",
    ),
    "mobilenetv3": NetSpec(
        _seeded(_mobilenetv3, 14),
        (1, 3, 64, 64),
        "MobileNetV3-Small: inverted residuals, HardSwish, SE with HardSigmoid, conv-BN",
    ),
    "vit_mlp": NetSpec(
        _seeded(_vit_mlp, 15),
        (1, 16, 32),
        "ViT MLP blocks x + fc2(GELU(fc1(LN(x)))), exact and tanh GELU; nothing to fold",
    ),
    "vit_mlp_op14": NetSpec(
        _seeded(_vit_mlp, 15),
        (1, 16, 32),
        "vit_mlp with TorchScript forms at opset 14: LayerNorm decomposed into primitive ops",
        opset=14,
    ),
    "qarepvgg": NetSpec(
        _seeded(_qarepvgg, 16),
        (1, 3, 32, 32),
        "YOLOv6 QARepVGGBlockV2: BN(3x3-BN + 1x1 + x + avgpool3x3), grouped and strided",
    ),
    "orepa": NetSpec(
        _seeded(_orepa, 17),
        (1, 3, 32, 32),
        "OREPA: kernel generated by einsums of six scaled branches, one conv + BN; dw, 5x5",
    ),
}
