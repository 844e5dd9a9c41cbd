"""Small networks built from the blocks in ``models.blocks``, and their registry.

Every factory is deterministic (it seeds its own RNG without touching the global one) and gives
every BatchNorm non-trivial statistics (``randomize_bn``), so each fold changes the weights.
A net's ``switch_to_deploy()`` turns every block into its single conv; ``deploy_copy`` does that
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
    PPYoloeRepVgg,
    RepBlock,
    RepVGGBlock,
    ResidualConvBN,
    ScaledDiffResidual,
    mobileone_unit,
)

__all__ = [
    "NETWORKS",
    "DBBBasicBlock",
    "NetSpec",
    "RepNet",
    "deploy_copy",
    "randomize_bn",
    "rep_blocks",
]

NUM_CLASSES = 10


@dataclass(frozen=True)
class NetSpec:
    """A registered network: a deterministic ``factory``, its ``input_shape`` and a description."""

    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str


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
        for block in rep_blocks(self):
            block.switch_to_deploy()


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


def deploy_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` in eval mode with every block switched to its deploy form."""
    deployed = copy.deepcopy(net).eval()
    for block in rep_blocks(deployed):
        block.switch_to_deploy()
    return deployed


def _seeded(build: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    """A factory: build under a private RNG seed, randomize BN, return in eval mode."""

    def factory() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build()
        return randomize_bn(net, seed).eval()

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
}
