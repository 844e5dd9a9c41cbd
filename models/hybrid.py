"""Training-form hybrid blocks (convolutional token mixers, FFNs, heads) and their deploy forms.

The blocks follow FastViT, RepViT, RepLKNet, MobileNetV3 and the ViT MLP. Their deploy forms are
what an ideal ONNX-level optimizer reaches from the training form: every parallel branch merged,
every BatchNorm folded into a neighbouring conv or Linear, nothing else changed (activations,
squeeze-excite gates, LayerNorm, residual adds and layer scales stay; FastViT's own deploy form
keeps its layer scales too). The folds beyond those of ``models.blocks``:

- ``x + s * (mixer(x) - norm(x))`` (RepMixer) with per-channel ``s``: one depthwise conv,
  ``W = I + s * (W_m - W_n)``, ``b = s * (b_m - b_n)``.
- ``BN(x)`` before a 1x1 conv without pads or before a Linear (``fold_input_bn``):
  ``W' = W * t[i]``, ``b' = b + W c``.
- ``Linear(GlobalAvgPool(BN(x)))``: a per-channel affine commutes with the spatial mean
  (``mean(t * x + c) = t * mean(x) + c``), so the BN folds into the Linear as above.
- ``(L1(BN1(x)) + L2(BN2(x))) / 2`` (RepViT's classifier with distillation head): both BNs fold
  into their Linears, then ``W = (W1' + W2') / 2``, ``b = (b1' + b2') / 2``.
- a linear 1x1 projection (C -> D) read only by the next 1x1 conv (D -> E), e.g. a MobileNetV3
  block without residual followed by an expanding one: one 1x1 conv (DBB transform III),
  ``W = W_e W_p``, ``b = W_e b_p + b_e``, taken when it does no more work per pixel
  (``C * E <= C * D + D * E``).

A block's ``switch_to_deploy()`` deploys everything inside it (idempotent); ``deploy_all`` calls it
on the outermost modules that have one. Kernels are computed in float64 and cast once.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from models.blocks import (
    ConvBN,
    KernelBias,
    LargeSmallKernel,
    MobileOneBlock,
    RepBlock,
    conv_bn,
    fold_input_bn,
    fuse_bn,
    fuse_conv_bn,
    identity_kernel,
    merge_1x1_kxk,
)

__all__ = [
    "BNConvBN",
    "BNLinear",
    "BNPoolHead",
    "ConvFFN",
    "DistillClassifier",
    "HybridBlock",
    "InvertedResidual",
    "LKConvFFN",
    "Mlp",
    "MlpBlock",
    "MobileNetV3Features",
    "RepCPE",
    "RepLKBlock",
    "RepMixer",
    "RepMixerBlock",
    "RepVGGDW",
    "RepViTBlock",
    "Residual",
    "SqueezeExcite",
    "average_linears",
    "deploy_all",
    "deployable",
    "is_deployed",
    "make_divisible",
]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor`` not below 90 % of it (MobileNet's rule)."""
    floor = divisor if min_value is None else min_value
    new = max(floor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


# --------------------------------------------------------------------------------------------
# Deploying nested modules.
# --------------------------------------------------------------------------------------------


def deployable(module: nn.Module) -> list[nn.Module]:
    """The outermost modules strictly inside ``module`` that have a ``switch_to_deploy()``."""
    found: list[nn.Module] = []
    for child in module.children():
        if callable(getattr(child, "switch_to_deploy", None)):
            found.append(child)
        else:
            found.extend(deployable(child))
    return found


def deploy_all(module: nn.Module) -> None:
    """Deploy ``module`` if it has a ``switch_to_deploy()``, else every ``deployable`` inside it."""
    switch = getattr(module, "switch_to_deploy", None)
    if callable(switch):
        switch()
        return
    for child in deployable(module):
        child.switch_to_deploy()


def is_deployed(module: nn.Module) -> bool:
    """True when ``module`` and every module inside it with a ``deployed`` flag is deployed."""
    return all(getattr(m, "deployed", True) for m in module.modules())


def average_linears(*terms: KernelBias) -> KernelBias:
    """The mean of Linears ``(W_i, b_i)``: ``W = sum W_i / n``, ``b = sum b_i / n`` (float64)."""
    weight = torch.stack([w.double() for w, _ in terms]).mean(0)
    bias = torch.stack([b.double() for _, b in terms]).mean(0)
    return weight, bias


def _linear(weight: Tensor, bias: Tensor, ref: Tensor) -> nn.Linear:
    """An ``nn.Linear`` holding the float64 ``(weight, bias)`` cast once to ``ref``'s dtype."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features).to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear


class HybridBlock(nn.Module):
    """A block whose re-parameterizable parts are the modules inside it.

    ``switch_to_deploy()`` deploys them (``deploy_all`` on each); ``deployed`` is true when all
    of them are.
    """

    def switch_to_deploy(self) -> None:
        for child in deployable(self):
            child.switch_to_deploy()

    @property
    def deployed(self) -> bool:
        return all(is_deployed(child) for child in deployable(self))


class Residual(HybridBlock):
    """``x + m(x)`` (RepViT's ``Residual`` without drop path)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: Tensor) -> Tensor:
        return x + self.m(x)


class SqueezeExcite(nn.Module):
    """Squeeze-excite in its two upstream spellings (not re-parameterizable; kept in deploy).

    - ``"timm"`` (timm's ``SEModule``, RepViT): ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``;
    - ``"torchvision"`` (MobileNetV3): ``hardsigmoid(fc2(relu(fc1(AdaptiveAvgPool(x))))) * x``.
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        flavour: Literal["timm", "torchvision"] = "timm",
    ) -> None:
        super().__init__()
        if flavour not in ("timm", "torchvision"):
            raise ValueError(f"flavour must be 'timm' or 'torchvision', got {flavour!r}")
        self.flavour = flavour
        self.pool = nn.AdaptiveAvgPool2d(1) if flavour == "torchvision" else None
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate: nn.Module = nn.Hardsigmoid() if flavour == "torchvision" else nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean((2, 3), keepdim=True) if self.pool is None else self.pool(x)
        scale = self.gate(self.fc2(self.act(self.fc1(squeezed))))
        return x * scale if self.pool is None else scale * x


# --------------------------------------------------------------------------------------------
# FastViT (apple/ml-fastvit models/fastvit.py, models/modules/mobileone.py).
# --------------------------------------------------------------------------------------------


class RepMixer(RepBlock):
    """FastViT's token mixer: ``x + s * (mixer(x) - norm(x))`` with ``s`` [C, 1, 1].

    ``mixer`` is a depthwise MobileOne block without activation (kxk conv-BN + 1x1 conv-BN + the
    identity ``BN(x)``), ``norm`` a MobileOne block holding only the identity ``BN(x)``. With
    ``(W_m, b_m)`` and ``(W_n, b_n)`` their depthwise kernels:
    ``W = I + s * (W_m - W_n)``, ``b = s * (b_m - b_n)`` (one depthwise kxk conv, no activation).
    """

    def __init__(self, dim: int, kernel_size: int = 3, layer_scale_init: float = 1e-5) -> None:
        super().__init__(dim, dim, kernel_size, 1, dim, None)
        self.norm = MobileOneBlock(
            dim, dim, kernel_size, groups=dim, num_conv_branches=0, act=None, scale_branch=False
        )
        self.mixer = MobileOneBlock(
            dim, dim, kernel_size, groups=dim, num_conv_branches=1, act=None
        )
        self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

    def forward_branches(self, x: Tensor) -> Tensor:
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))

    def equivalent_kernel_bias(self) -> KernelBias:
        k_m, b_m = self.mixer.equivalent_kernel_bias()
        k_n, b_n = self.norm.equivalent_kernel_bias()
        s = self.layer_scale.detach().double().reshape(-1)
        eye = identity_kernel(self.in_channels, self.groups, self.kernel_size)
        return eye + s.view(-1, 1, 1, 1) * (k_m - k_n), s * (b_m - b_n)


class RepCPE(RepBlock):
    """FastViT's conditional positional encoding ``pe(x) + x``, ``pe`` a depthwise kxk conv with
    bias: ``W = W_pe + I``, ``b = b_pe``."""

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__(dim, dim, kernel_size, 1, dim, None)
        self.pe = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=True)

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.pe(x) + x

    def equivalent_kernel_bias(self) -> KernelBias:
        eye = identity_kernel(self.in_channels, self.groups, self.kernel_size)
        return self.pe.weight.detach().double() + eye, self.pe.bias.detach().double()


class ConvFFN(HybridBlock):
    """FastViT's ``ConvFFN``: ``fc2(GELU(fc1(BN(dwconv7x7(x)))))``, fc1/fc2 1x1 convs with bias.

    Deploy: the depthwise conv-BN folds into one depthwise conv with bias (transform I); the
    1x1 convs and the GELU stay. (FastViT's own deploy form leaves this BN unfolded.)
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = ConvBN(in_channels, in_channels, kernel_size, groups=in_channels, act=None)
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_channels, in_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


class RepMixerBlock(HybridBlock):
    """FastViT's ``RepMixerBlock``: ``y = RepMixer(x)``, then ``y + s * ConvFFN(y)``.

    Deploy: RepMixer -> one depthwise conv, ConvFFN's conv-BN -> one conv; the layer scale ``s``
    [C, 1, 1] stays a ``Mul`` (as in FastViT's deploy form).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        mlp_ratio: float = 3.0,
        layer_scale_init: float = 1e-5,
    ) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.token_mixer(x)
        return x + self.layer_scale * self.convffn(x)


# --------------------------------------------------------------------------------------------
# RepViT (THU-MIG/RepViT model/repvit.py).
# --------------------------------------------------------------------------------------------


class RepVGGDW(RepBlock):
    """RepViT's token mixer ``BN((BN3(dwconv3x3(x)) + dwconv1x1(x)) + x)``.

    The 1x1 depthwise conv has a bias and no BN. Inside the outer BN:
    ``W_in = W3 + centre(W1) + I``, ``b_in = b3 + b1``; then ``W = t * W_in``, ``b = c + t * b_in``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim, 3, 1, dim, None)
        self.conv = conv_bn(dim, dim, 3, 1, dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, 1, 0, groups=dim)
        self.bn = nn.BatchNorm2d(dim)

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.bn((self.conv(x) + self.conv1(x)) + x)

    def equivalent_kernel_bias(self) -> KernelBias:
        conv, bn = self.conv.conv, self.conv.bn
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        k3, b3 = fuse_conv_bn(conv, bn)
        k1 = nn.functional.pad(self.conv1.weight.detach().double(), [1, 1, 1, 1])
        eye = identity_kernel(self.in_channels, self.groups, 3)
        b1 = self.conv1.bias.detach().double()
        return fuse_bn(k3 + k1 + eye, b3 + b1, self.bn)


class RepViTBlock(HybridBlock):
    """RepViT's block: ``channel_mixer(token_mixer(x))``.

    - stride 1 (in == out): ``token_mixer = SE?(RepVGGDW(x))``;
    - stride 2: ``token_mixer = ConvBN1x1(SE?(ConvBN_dw kxk, stride 2(x)))`` (in -> out);
    - ``channel_mixer = y + ConvBN1x1(GELU(ConvBN1x1(y)))`` with hidden width ``2 * out``.

    Deploy: every conv-BN and RepVGGDW -> one conv; the SE (timm flavour) and GELU stay.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        use_se: bool = False,
    ) -> None:
        super().__init__()
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 RepViT block needs in_channels == out_channels")
        se: nn.Module = (
            SqueezeExcite(in_channels, make_divisible(in_channels * 0.25, 8))
            if use_se
            else nn.Identity()
        )
        if stride == 2:
            self.token_mixer = nn.Sequential(
                ConvBN(in_channels, in_channels, kernel_size, 2, groups=in_channels, act=None),
                se,
                ConvBN(in_channels, out_channels, 1, act=None),
            )
        else:
            self.token_mixer = nn.Sequential(RepVGGDW(in_channels), se)
        hidden = 2 * out_channels
        self.channel_mixer = Residual(
            nn.Sequential(
                ConvBN(out_channels, hidden, 1, act=None),
                nn.GELU(),
                ConvBN(hidden, out_channels, 1, act=None),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.channel_mixer(self.token_mixer(x))


class BNLinear(nn.Module):
    """RepViT's ``BN_Linear``: ``Linear(BatchNorm1d(x))``; deploy: one Linear (``fold_input_bn``:
    ``W' = W * t[None, :]``, ``b' = b + W c``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.l = nn.Linear(in_features, out_features)
        self.register_module("reparam", None)

    @property
    def deployed(self) -> bool:
        return self.reparam is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam is not None:
            return self.reparam(x)
        return self.l(self.bn(x))

    def equivalent_weight_bias(self) -> KernelBias:
        """The folded Linear's ``(weight, bias)`` in float64."""
        return fold_input_bn(self.l.weight, self.l.bias, self.bn)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if self.reparam is not None:
            return
        linear = _linear(*self.equivalent_weight_bias(), self.l.weight)
        del self.bn, self.l
        self.reparam = linear


class DistillClassifier(nn.Module):
    """RepViT's ``Classfier`` with distillation, in inference form: ``(head(x) + dist(x)) / 2``
    with ``head`` and ``dist`` ``BNLinear``s (the reference returns both outputs while training).

    Deploy (RepViT's ``Classfier.fuse``): one Linear, ``W = (W_h' + W_d') / 2``,
    ``b = (b_h' + b_d') / 2`` with both BNs folded first.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = BNLinear(dim, num_classes)
        self.classifier_dist = BNLinear(dim, num_classes)
        self.register_module("reparam", None)

    @property
    def deployed(self) -> bool:
        return self.reparam is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam is not None:
            return self.reparam(x)
        return (self.classifier(x) + self.classifier_dist(x)) / 2

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if self.reparam is not None:
            return
        weight, bias = average_linears(
            self.classifier.equivalent_weight_bias(),
            self.classifier_dist.equivalent_weight_bias(),
        )
        linear = _linear(weight, bias, self.classifier.l.weight)
        del self.classifier, self.classifier_dist
        self.reparam = linear


# --------------------------------------------------------------------------------------------
# RepLKNet (DingXiaoH/RepLKNet-pytorch replknet.py).
# --------------------------------------------------------------------------------------------


class BNConvBN(RepBlock):
    """``act(BN2(Conv1x1(BN1(x))))``: a pre-BN, then a 1x1 conv-BN (RepLKNet's ``prelkb_bn`` /
    ``preffn_bn`` followed by ``pw1``).

    A 1x1 conv has no pads, so the pre-BN folds exactly (``fold_input_bn``), then the post-BN
    (transform I): one 1x1 conv with bias.
    """

    def __init__(
        self, in_channels: int, out_channels: int, groups: int = 1, act: str | None = "relu"
    ) -> None:
        super().__init__(in_channels, out_channels, 1, 1, groups, act)
        self.pre_bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.pre_bn(x)))

    def equivalent_kernel_bias(self) -> KernelBias:
        kernel, bias = fold_input_bn(self.conv.weight, None, self.pre_bn, self.groups)
        return fuse_bn(kernel, bias, self.bn)


class RepLKBlock(HybridBlock):
    """RepLKNet's block: ``x + pw2(ReLU(LK(pw1(x))))``.

    ``pw1 = ReLU(BN(Conv1x1(BN_pre(x))))`` (``BNConvBN``), ``LK`` a depthwise large-kernel
    conv-BN plus a parallel small-kernel conv-BN (``LargeSmallKernel``, RepLKNet's
    ``ReparamLargeKernelConv``), ``pw2`` a 1x1 conv-BN. Deploy: three convs with bias, two ReLUs
    and the residual add.
    """

    def __init__(
        self, channels: int, dw_channels: int, kernel_size: int = 13, small_kernel: int = 5
    ) -> None:
        super().__init__()
        self.pw1 = BNConvBN(channels, dw_channels, act="relu")
        self.large_kernel = LargeSmallKernel(
            dw_channels,
            dw_channels,
            groups=dw_channels,
            large=kernel_size,
            small=small_kernel,
            act=None,
        )
        self.lk_nonlinear = nn.ReLU()
        self.pw2 = ConvBN(dw_channels, channels, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(x))))


class LKConvFFN(HybridBlock):
    """RepLKNet's ``ConvFFN``: ``x + pw2(GELU(pw1(BN_pre(x))))`` with pw1/pw2 1x1 conv-BN.

    Deploy: the pre-BN and pw1's BN fold into pw1 (``BNConvBN``), pw2's BN into pw2: two 1x1
    convs with bias, the GELU and the residual add.
    """

    def __init__(self, channels: int, internal_channels: int) -> None:
        super().__init__()
        self.pw1 = BNConvBN(channels, internal_channels, act=None)
        self.nonlinear = nn.GELU()
        self.pw2 = ConvBN(internal_channels, channels, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pw2(self.nonlinear(self.pw1(x)))


class BNPoolHead(nn.Module):
    """RepLKNet's classifier: ``Linear(Flatten(GlobalAvgPool(BN(x))))``.

    The BN's per-channel affine commutes with the spatial mean, so deploy folds it into the
    Linear (``fold_input_bn``): ``Linear'(Flatten(GlobalAvgPool(x)))``.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm: nn.BatchNorm2d | None = nn.BatchNorm2d(channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    @property
    def deployed(self) -> bool:
        return self.norm is None

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is not None:
            x = self.norm(x)
        return self.head(torch.flatten(self.avgpool(x), 1))

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if self.norm is None:
            return
        weight, bias = fold_input_bn(self.head.weight, self.head.bias, self.norm)
        self.head = _linear(weight, bias, self.head.weight)
        self.norm = None


# --------------------------------------------------------------------------------------------
# MobileNetV3 (torchvision models/mobilenetv3.py).
# --------------------------------------------------------------------------------------------


class InvertedResidual(HybridBlock):
    """MobileNetV3's inverted residual (torchvision), ``act`` = ReLU or HardSwish:

    ``y = ConvBN1x1(SE?(act(ConvBN_dw kxk(act(ConvBN1x1(x))))))``, plus ``x`` when stride == 1
    and in == out; the expanding 1x1 exists when ``expanded != in``, the SE is torchvision's
    (ReLU, HardSigmoid) with ``make_divisible(expanded / 4)`` channels.

    Deploy: every conv-BN -> one conv with bias; activations, SE and residual stay.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: Literal["relu", "hardswish"],
        stride: int,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(ConvBN(in_channels, expanded_channels, 1, act=activation))
        layers.append(
            ConvBN(
                expanded_channels,
                expanded_channels,
                kernel_size,
                stride,
                groups=expanded_channels,
                act=activation,
            )
        )
        if use_se:
            squeeze = make_divisible(expanded_channels // 4, 8)
            layers.append(SqueezeExcite(expanded_channels, squeeze, "torchvision"))
        layers.append(ConvBN(expanded_channels, out_channels, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


def _pointwise(module: nn.Module) -> ConvBN | None:
    """``module`` as an ungrouped 1x1 ``ConvBN`` with stride 1 (deployed or not), else None."""
    if (
        isinstance(module, ConvBN)
        and module.kernel_size == (1, 1)
        and module.stride == 1
        and module.groups == 1
    ):
        return module
    return None


def _kernel_bias(block: RepBlock) -> KernelBias:
    """A single-conv block's ``(kernel, bias)`` in float64, from its branches when it has them."""
    if block.reparam is None:
        return block.equivalent_kernel_bias()
    conv = block.reparam
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    return conv.weight.detach().double(), conv.bias.detach().double()


class MobileNetV3Features(HybridBlock):
    """MobileNetV3's feature layers (a stem, inverted residuals, the last 1x1 conv) in sequence.

    Deploy: every conv-BN folds; then wherever a block ends in its linear 1x1 projection ``P``
    (C -> D, no activation) and the next block starts with a 1x1 expansion ``E`` (D -> E, then its
    activation), and neither block has a residual (so ``E`` is ``P``'s only reader), the two
    merge into one 1x1 conv (``merge_1x1_kxk`` with a 1x1 second kernel): ``W = W_e W_p``,
    ``b = W_e b_p + b_e``, when ``C * E <= C * D + D * E``. The merged conv replaces ``E`` and
    ``P`` disappears.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        for first, second in zip(self.layers[:-1], self.layers[1:], strict=True):
            if not isinstance(first, InvertedResidual) or first.use_res_connect:
                continue
            if not isinstance(second, InvertedResidual) or second.use_res_connect:
                continue  # the residual would read the projection's output too
            project, expand = _pointwise(first.block[-1]), _pointwise(second.block[0])
            if project is None or expand is None or not isinstance(project.act, nn.Identity):
                continue
            c, d, e = project.in_channels, project.out_channels, expand.out_channels
            if c * e > c * d + d * e:
                continue
            kernel, bias = merge_1x1_kxk(*_kernel_bias(project), *_kernel_bias(expand), groups=1)
            ref = next(expand.parameters())
            conv = nn.Conv2d(c, e, 1).to(device=ref.device, dtype=ref.dtype)
            conv.weight.copy_(kernel)
            conv.bias.copy_(bias)
            first.block[-1] = nn.Identity()
            second.block[0] = nn.Sequential(conv, expand.act)
        super().switch_to_deploy()


# --------------------------------------------------------------------------------------------
# ViT MLP (timm layers/mlp.py, models/vision_transformer.py).
# --------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """timm's ``Mlp``: ``fc2(GELU(fc1(x)))`` on tokens [B, T, C] (dropout 0, no norm)."""

    def __init__(self, dim: int, hidden: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MlpBlock(nn.Module):
    """The MLP half of a ViT block: ``x + Mlp(LayerNorm(x))`` (eps 1e-6 as in timm's ViT).

    Nothing to fold: the deploy form is the training form (no ``switch_to_deploy``).
    """

    def __init__(self, dim: int, hidden: int, approximate: str = "none") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden, approximate)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm(x))
