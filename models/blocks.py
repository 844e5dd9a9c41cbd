"""Training-form re-parameterizable blocks and their hand-written deploy forms.

Every block's branches reduce to one ``(kernel, bias)`` pair, computed in float64:

- Conv -> BN (DBB transform I): ``t = gamma / sqrt(var + eps)``,
  ``W' = W * t[:, None, None, None]``, ``b' = beta + (b - mean) * t`` (``b = 0`` without bias).
- identity ``x`` with ``C`` channels and ``g`` groups: a kernel with ``1`` at
  ``[i, i mod (C/g), centre]``; ``BN(x)`` is that kernel folded as above.
- a smaller kernel in a larger frame (DBB transform VI): zero-pad it centred. Every branch pads
  ``k // 2`` per axis, so centred kernels read the same input pixels as the merged conv.
- branches summed (DBB transform II): ``W = sum W_i``, ``b = sum b_i``; a branch multiplied by
  ``alpha`` (a scalar or one value per output channel) contributes ``alpha * W_i``,
  ``alpha * b_i``; a subtracted branch contributes ``-W_i``, ``-b_i``.
- a 1x1 conv (no pads) then a kxk conv (DBB transform III), per group:
  ``W[o, i] = sum_d W2[o, d] * W1[d, i]`` and ``b = b2 + sum_{d, taps} W2[o, d, :, :] * b1[d]``.
  Exact even when the kxk conv reads a padded input, provided the pad value is ``b1`` (DBB's
  "BN and pad" writes ``BN(0)`` into the border, and ``BN(0)`` is the fused bias ``b1``).
- a kxk average pool with stride s (DBB transform V): a depthwise-diagonal kernel with ``1 / k^2``
  at ``[i, i mod (C/g)]``; exact with zero pads only when the pad pixels are counted
  (``count_include_pad=True``, the ``nn.AvgPool2d`` default).

``switch_to_deploy()`` replaces the branches of a block by one ``nn.Conv2d`` (with bias) in place;
the kernel is computed in float64 and cast once to the block's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACBlock",
    "BNAndPad",
    "ChainAddBlock",
    "ConvBN",
    "DBBBlock",
    "LargeSmallKernel",
    "MobileOneBlock",
    "MultiScaleBlock",
    "PPYoloeRepVgg",
    "RepBlock",
    "RepVGGBlock",
    "ResidualConvBN",
    "ScaledDiffResidual",
    "avg_pool_kernel",
    "bn_scale_shift",
    "centre_kernel",
    "conv_bn",
    "fuse_bn",
    "fuse_conv_bn",
    "identity_kernel",
    "merge_1x1_kxk",
    "mobileone_unit",
]

Size2 = tuple[int, int]
KernelBias = tuple[Tensor, Tensor]


def _pair(value: int | Size2) -> Size2:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _make_act(act: str | None) -> nn.Module:
    if act is None:
        return nn.Identity()
    if act == "relu":
        return nn.ReLU()
    if act == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {act!r} (expected 'relu', 'silu' or None)")


# --------------------------------------------------------------------------------------------
# Pure tensor math (float64 in, float64 out).
# --------------------------------------------------------------------------------------------


def bn_scale_shift(bn: nn.BatchNorm2d) -> KernelBias:
    """Inference BN as ``BN(y) = t * y + c``.

    ``t = gamma / sqrt(var + eps)``, ``c = beta - mean * t`` (float64, per channel).
    """
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(var)
    t = gamma / torch.sqrt(var + bn.eps)
    return t, beta - mean * t


def fuse_bn(kernel: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> KernelBias:
    """Fold ``BN(W * x + b)`` into ``W' * x + b'``: ``W' = W * t``, ``b' = c + b * t``.

    ``t`` and ``c`` are per output channel (``bn_scale_shift``); ``b = 0`` when ``bias`` is None.
    """
    t, c = bn_scale_shift(bn)
    fused_kernel = kernel.detach().double() * t.view(-1, 1, 1, 1)
    fused_bias = c if bias is None else c + bias.detach().double() * t
    return fused_kernel, fused_bias


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> KernelBias:
    """``(kernel, bias)`` of ``bn(conv(x))`` in float64."""
    return fuse_bn(conv.weight, conv.bias, bn)


def identity_kernel(channels: int, groups: int, kernel_size: int | Size2) -> Tensor:
    """Kernel of ``x`` itself: ``1`` at ``[i, i mod (channels / groups), centre]`` (float64)."""
    kh, kw = _pair(kernel_size)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"identity kernel needs odd sizes, got {kh}x{kw}")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=torch.float64)
    index = torch.arange(channels)
    kernel[index, index % per_group, kh // 2, kw // 2] = 1.0
    return kernel


def centre_kernel(kernel: Tensor, kernel_size: int | Size2) -> Tensor:
    """Zero-pad ``kernel`` [O, I, h, w] centred into a ``kernel_size`` frame (transform VI)."""
    kh, kw = _pair(kernel_size)
    h, w = kernel.shape[-2:]
    dh, dw = kh - h, kw - w
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {h}x{w} kernel in a {kh}x{kw} frame")
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def avg_pool_kernel(channels: int, groups: int, kernel_size: int | Size2) -> Tensor:
    """Average pool as a conv (transform V): ``1 / (kh * kw)`` at ``[i, i mod (C/g)]`` (float64)."""
    kh, kw = _pair(kernel_size)
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=torch.float64)
    index = torch.arange(channels)
    kernel[index, index % per_group] = 1.0 / (kh * kw)
    return kernel


def merge_1x1_kxk(k1: Tensor, b1: Tensor, k2: Tensor, b2: Tensor, groups: int) -> KernelBias:
    """Merge a 1x1 conv ``(k1, b1)`` followed by a kxk conv ``(k2, b2)`` (transform III).

    Per group: ``W[o, i] = sum_d k2[o, d] * k1[d, i, 0, 0]`` and
    ``b[o] = b2[o] + sum_{d, taps} k2[o, d] * b1[d]``.
    ``k1``: [D, Cin/g, 1, 1], ``k2``: [Cout, D/g, kh, kw].
    """
    d, cin_g = k1.shape[:2]
    cout, d_g, kh, kw = k2.shape
    k1g = k1.double().reshape(groups, d // groups, cin_g)
    k2g = k2.double().reshape(groups, cout // groups, d_g, kh, kw)
    b1g = b1.double().reshape(groups, d // groups)
    kernel = torch.einsum("godhw,gdi->goihw", k2g, k1g).reshape(cout, cin_g, kh, kw)
    bias = torch.einsum("godhw,gd->go", k2g, b1g).reshape(cout) + b2.double()
    return kernel, bias


def _scale(kernel_bias: KernelBias, alpha: Tensor) -> KernelBias:
    """``alpha * (W * x + b)`` with ``alpha`` of shape [1] or [1, C, 1, 1]."""
    a = alpha.detach().double().reshape(-1)
    return kernel_bias[0] * a.view(-1, 1, 1, 1), kernel_bias[1] * a


def _sum(frame: Size2, *terms: KernelBias) -> KernelBias:
    """Transform II after VI: centre every kernel in ``frame`` and add kernels and biases."""
    kernel = sum(centre_kernel(k, frame) for k, _ in terms)
    bias = sum(b for _, b in terms)
    assert isinstance(kernel, Tensor) and isinstance(bias, Tensor)
    return kernel, bias


# --------------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------------


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Size2,
    stride: int = 1,
    groups: int = 1,
) -> nn.Sequential:
    """``BN(Conv(x))`` with centred pads ``k // 2`` and no conv bias (children ``conv``, ``bn``)."""
    kh, kw = _pair(kernel_size)
    seq = nn.Sequential()
    seq.add_module(
        "conv",
        nn.Conv2d(
            in_channels,
            out_channels,
            (kh, kw),
            stride=stride,
            padding=(kh // 2, kw // 2),
            groups=groups,
            bias=False,
        ),
    )
    seq.add_module("bn", nn.BatchNorm2d(out_channels))
    return seq


def _fuse_seq(seq: nn.Sequential) -> KernelBias:
    conv, bn = seq.conv, seq.bn
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    return fuse_conv_bn(conv, bn)


class RepBlock(nn.Module):
    """Base class: ``act(sum of branches(x))`` that equals ``act(Conv(x))`` for one conv.

    The merged conv has ``kernel_size``, ``stride``, ``groups`` and centred pads ``k // 2``.
    Subclasses implement ``forward_branches`` and ``equivalent_kernel_bias`` (float64).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Size2,
        stride: int,
        groups: int,
        act: str | None,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide {in_channels} and {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = stride
        self.groups = groups
        self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        self.act = _make_act(act)
        self.register_module("reparam", None)

    @property
    def has_identity(self) -> bool:
        """An identity branch needs equal channels and stride 1."""
        return self.in_channels == self.out_channels and self.stride == 1

    @property
    def deployed(self) -> bool:
        return self.reparam is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam is not None:
            return self.act(self.reparam(x))
        return self.act(self.forward_branches(x))

    def forward_branches(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def equivalent_kernel_bias(self) -> KernelBias:
        """The merged conv's ``(kernel, bias)`` in float64."""
        raise NotImplementedError

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Replace all branches by one ``nn.Conv2d`` with bias (idempotent)."""
        if self.reparam is not None:
            return
        kernel, bias = self.equivalent_kernel_bias()
        ref = next(self.parameters())
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            bias=True,
        ).to(device=ref.device, dtype=ref.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        for name in [n for n in self._modules if n not in ("act", "reparam")]:
            delattr(self, name)
        for name in list(self._parameters):
            delattr(self, name)
        self.reparam = conv


class ConvBN(RepBlock):
    """``act(BN(Conv(x)))``: one branch, folded by transform I."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Size2 = 3,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, act)
        kh, kw = self.kernel_size
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            (kh, kw),
            stride=stride,
            padding=self.padding,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    def equivalent_kernel_bias(self) -> KernelBias:
        return fuse_conv_bn(self.conv, self.bn)


class RepVGGBlock(RepBlock):
    """RepVGG: ``act(BN(Conv3x3(x)) + BN(Conv1x1(x)) + BN(x))``.

    The identity ``BN(x)`` exists only when in == out and stride == 1; without it this is
    YOLOv7's RepConv. ``W = W3 + centre(W1) + t_id * I``, ``b = b3 + b1 + c_id``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__(in_channels, out_channels, 3, stride, groups, act)
        self.rbr_dense = conv_bn(in_channels, out_channels, 3, stride, groups)
        self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride, groups)
        self.rbr_identity = nn.BatchNorm2d(in_channels) if self.has_identity else None

    def forward_branches(self, x: Tensor) -> Tensor:
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.rbr_dense(x) + self.rbr_1x1(x) + id_out

    def equivalent_kernel_bias(self) -> KernelBias:
        terms = [_fuse_seq(self.rbr_dense), _fuse_seq(self.rbr_1x1)]
        if self.rbr_identity is not None:
            eye = identity_kernel(self.in_channels, self.groups, 3)
            terms.append(fuse_bn(eye, None, self.rbr_identity))
        return _sum(self.kernel_size, *terms)


class ACBlock(RepBlock):
    """ACNet: ``act(BN(Conv kxk(x)) + BN(Conv 1xk(x)) + BN(Conv kx1(x)))``.

    Pads ``(k//2, k//2)``, ``(0, k//2)`` and ``(k//2, 0)`` keep the three frames aligned;
    ``W = Wsq + centre(Whor) + centre(Wver)``, ``b = bsq + bhor + bver``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, act)
        k = kernel_size
        self.square = conv_bn(in_channels, out_channels, (k, k), stride, groups)
        self.hor = conv_bn(in_channels, out_channels, (1, k), stride, groups)
        self.ver = conv_bn(in_channels, out_channels, (k, 1), stride, groups)

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.square(x) + self.ver(x) + self.hor(x)

    def equivalent_kernel_bias(self) -> KernelBias:
        return _sum(
            self.kernel_size, _fuse_seq(self.square), _fuse_seq(self.hor), _fuse_seq(self.ver)
        )


class MultiScaleBlock(RepBlock):
    """``act(BN(Conv1x1(x)) + BN(Conv3x3(x)) + BN(Conv5x5(x)))`` merged into one 5x5 conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__(in_channels, out_channels, 5, stride, groups, act)
        self.branch1 = conv_bn(in_channels, out_channels, 1, stride, groups)
        self.branch3 = conv_bn(in_channels, out_channels, 3, stride, groups)
        self.branch5 = conv_bn(in_channels, out_channels, 5, stride, groups)

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.branch1(x) + self.branch3(x) + self.branch5(x)

    def equivalent_kernel_bias(self) -> KernelBias:
        return _sum(
            self.kernel_size,
            _fuse_seq(self.branch1),
            _fuse_seq(self.branch3),
            _fuse_seq(self.branch5),
        )


class MobileOneBlock(RepBlock):
    """MobileOne: ``act(BN(Conv1x1(x)) + BN(x) + sum_{i<n} BN(Conv_i kxk(x)))``.

    The 1x1 "scale" branch exists when k > 1, the identity ``BN(x)`` when in == out and
    stride == 1. The forward keeps the reference code's accumulation, which adds the integer
    ``0`` for a missing branch (so a traced graph may hold ``Add(t, 0)``) and accumulates the
    kxk branches with ``+=``. ``W = centre(Wscale) + t_id * I + sum W_i``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        num_conv_branches: int = 2,
        act: str | None = "relu",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, act)
        self.rbr_skip = nn.BatchNorm2d(in_channels) if self.has_identity else None
        self.rbr_conv = nn.ModuleList(
            conv_bn(in_channels, out_channels, kernel_size, stride, groups)
            for _ in range(num_conv_branches)
        )
        self.rbr_scale = (
            conv_bn(in_channels, out_channels, 1, stride, groups) if kernel_size > 1 else None
        )

    def forward_branches(self, x: Tensor) -> Tensor:
        scale_out: Tensor | int = 0
        if self.rbr_scale is not None:
            scale_out = self.rbr_scale(x)
        identity_out: Tensor | int = 0
        if self.rbr_skip is not None:
            identity_out = self.rbr_skip(x)
        out = scale_out + identity_out
        for branch in self.rbr_conv:
            out += branch(x)
        assert isinstance(out, Tensor)
        return out

    def equivalent_kernel_bias(self) -> KernelBias:
        terms = [_fuse_seq(branch) for branch in self.rbr_conv]
        if self.rbr_scale is not None:
            terms.append(_fuse_seq(self.rbr_scale))
        if self.rbr_skip is not None:
            eye = identity_kernel(self.in_channels, self.groups, self.kernel_size)
            terms.append(fuse_bn(eye, None, self.rbr_skip))
        return _sum(self.kernel_size, *terms)


def mobileone_unit(
    in_channels: int, out_channels: int, stride: int = 1, num_conv_branches: int = 2
) -> nn.Sequential:
    """A MobileOne unit: a depthwise 3x3 block then a pointwise 1x1 block (two convs deployed)."""
    return nn.Sequential(
        MobileOneBlock(in_channels, in_channels, 3, stride, in_channels, num_conv_branches),
        MobileOneBlock(in_channels, out_channels, 1, 1, 1, num_conv_branches),
    )


class PPYoloeRepVgg(RepBlock):
    """PP-YOLOE's RepVggBlock: ``act(BN(Conv3x3(x)) + alpha * BN(Conv1x1(x)))``.

    ``alpha`` is a learnable scalar (shape [1]) or one value per channel (shape [1, C, 1, 1]);
    ``alpha_first`` writes the product as ``alpha * t`` (else ``t * alpha``).
    ``W = W3 + alpha * centre(W1)``, ``b = b3 + alpha * b1``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        alpha: str = "scalar",
        alpha_first: bool = True,
        stride: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__(in_channels, out_channels, 3, stride, 1, act)
        shapes = {"scalar": (1,), "channel": (1, out_channels, 1, 1)}
        if alpha not in shapes:
            raise ValueError(f"alpha must be 'scalar' or 'channel', got {alpha!r}")
        self.alpha_kind = alpha
        self.alpha_first = alpha_first
        self.conv1 = conv_bn(in_channels, out_channels, 3, stride)
        self.conv2 = conv_bn(in_channels, out_channels, 1, stride)
        self.alpha = nn.Parameter(torch.empty(shapes[alpha]).uniform_(0.5, 1.5))

    def forward_branches(self, x: Tensor) -> Tensor:
        t = self.conv2(x)
        scaled = self.alpha * t if self.alpha_first else t * self.alpha
        return self.conv1(x) + scaled

    def equivalent_kernel_bias(self) -> KernelBias:
        return _sum(
            self.kernel_size, _fuse_seq(self.conv1), _scale(_fuse_seq(self.conv2), self.alpha)
        )


class ResidualConvBN(RepBlock):
    """``act(x + BN(Conv(x)))``: ``W = I + W_c``, ``b = b_c``."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__(channels, channels, kernel_size, 1, groups, act)
        self.conv_bn = conv_bn(channels, channels, kernel_size, 1, groups)

    def forward_branches(self, x: Tensor) -> Tensor:
        return x + self.conv_bn(x)

    def equivalent_kernel_bias(self) -> KernelBias:
        eye = identity_kernel(self.in_channels, self.groups, self.kernel_size)
        return _sum(
            self.kernel_size,
            (eye, torch.zeros(self.out_channels).double()),
            _fuse_seq(self.conv_bn),
        )


class ScaledDiffResidual(RepBlock):
    """``act(x + s * (BN(Conv(x)) - BN'(x)))`` with a per-channel ``s`` of shape [1, C, 1, 1].

    ``W = I + s * (W_c - t' * I)``, ``b = s * (b_c - c')``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__(channels, channels, kernel_size, 1, groups, act)
        self.conv_bn = conv_bn(channels, channels, kernel_size, 1, groups)
        self.bn = nn.BatchNorm2d(channels)
        self.scale = nn.Parameter(torch.empty(1, channels, 1, 1).uniform_(0.25, 1.25))

    def forward_branches(self, x: Tensor) -> Tensor:
        return x + self.scale * (self.conv_bn(x) - self.bn(x))

    def equivalent_kernel_bias(self) -> KernelBias:
        eye = identity_kernel(self.in_channels, self.groups, self.kernel_size)
        k_c, b_c = _fuse_seq(self.conv_bn)
        k_bn, b_bn = fuse_bn(eye, None, self.bn)
        k_diff, b_diff = _scale((k_c - k_bn, b_c - b_bn), self.scale)
        return eye + k_diff, b_diff


class LargeSmallKernel(RepBlock):
    """RepLKNet-style ``act(BN(Conv_L(x)) + BN(Conv_S(x)) [+ x])``, default 7x7 and 3x3.

    ``W = W_L + centre(W_S) [+ I]``, ``b = b_L + b_S``; the identity needs in == out, stride 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        identity: bool = False,
        large: int = 7,
        small: int = 3,
        act: str | None = "relu",
    ) -> None:
        super().__init__(in_channels, out_channels, large, stride, groups, act)
        if identity and not self.has_identity:
            raise ValueError("identity needs in_channels == out_channels and stride == 1")
        self.identity = identity
        self.large = conv_bn(in_channels, out_channels, large, stride, groups)
        self.small = conv_bn(in_channels, out_channels, small, stride, groups)

    def forward_branches(self, x: Tensor) -> Tensor:
        out = self.large(x) + self.small(x)
        return out + x if self.identity else out

    def equivalent_kernel_bias(self) -> KernelBias:
        terms = [_fuse_seq(self.large), _fuse_seq(self.small)]
        if self.identity:
            eye = identity_kernel(self.in_channels, self.groups, self.kernel_size)
            terms.append((eye, torch.zeros(self.out_channels).double()))
        return _sum(self.kernel_size, *terms)


class ChainAddBlock(RepBlock):
    """A sum written as a chain of binary adds: ``act((((a + x) + b) + c) + d)``.

    ``a, b, c, ...`` are conv-BN branches with the given (possibly non-square) kernel sizes; the
    identity ``x`` (when ``identity``) is the second term. Merged in the largest frame:
    ``W = sum centre(W_i) [+ I]``, ``b = sum b_i``.
    """

    def __init__(
        self,
        channels: int,
        kernel_sizes: tuple[int | Size2, ...] = (3, 1, (1, 3), 5),
        identity: bool = True,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        sizes = [_pair(k) for k in kernel_sizes]
        frame = (max(k[0] for k in sizes), max(k[1] for k in sizes))
        super().__init__(channels, channels, frame, 1, groups, act)
        self.identity = identity
        self.branches = nn.ModuleList(conv_bn(channels, channels, k, 1, groups) for k in sizes)

    def forward_branches(self, x: Tensor) -> Tensor:
        first, *rest = self.branches
        out = first(x)
        if self.identity:
            out = out + x
        for branch in rest:
            out = out + branch(x)
        return out

    def equivalent_kernel_bias(self) -> KernelBias:
        terms = [_fuse_seq(branch) for branch in self.branches]
        if self.identity:
            eye = identity_kernel(self.in_channels, self.groups, self.kernel_size)
            terms.append((eye, torch.zeros(self.out_channels).double()))
        return _sum(self.kernel_size, *terms)


class BNAndPad(nn.Module):
    """DBB's ``BNAndPadLayer``: ``BN(x)`` zero-padded by ``pad_pixels``, then every border pixel
    overwritten with ``BN(0) = beta - mean * gamma / sqrt(var + eps)`` by slice assignment.

    Equal to ``BN(ZeroPad(x))``, which is what makes DBB's 1x1 -> kxk merge exact.
    """

    def __init__(self, pad_pixels: int, num_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)
        self.pad_pixels = pad_pixels

    def forward(self, input: Tensor) -> Tensor:
        output = self.bn(input)
        if self.pad_pixels > 0:
            pad_values = self.bn.bias.detach() - self.bn.running_mean * self.bn.weight.detach() / (
                torch.sqrt(self.bn.running_var + self.bn.eps)
            )
            output = F.pad(output, [self.pad_pixels] * 4)
            pad_values = pad_values.view(1, -1, 1, 1)
            output[:, :, 0 : self.pad_pixels, :] = pad_values
            output[:, :, -self.pad_pixels :, :] = pad_values
            output[:, :, :, 0 : self.pad_pixels] = pad_values
            output[:, :, :, -self.pad_pixels :] = pad_values
        return output


class DBBBlock(RepBlock):
    """Diverse Branch Block: ``act(origin + 1x1 + avg + 1x1_kxk)``, all reading ``x``.

    - ``origin``: ``BN(Conv kxk(x))`` (transform I);
    - ``1x1``: ``BN(Conv1x1(x))`` centred into kxk (I, VI) — only when groups < out;
    - ``avg``: ``BN(AvgPool_k,s(BNAndPad(Conv1x1(x))))``: the 1x1 conv-BN merged with the
      average pool as a kernel (I, V, III); for depthwise blocks (groups >= out) it is
      ``BN(AvgPool_k,s,pad(x))`` instead (V, I);
    - ``1x1_kxk``: ``BN(Conv kxk, no pads(BNAndPad(Conv1x1(x))))`` with ``internal_channels``
      (default ``2 * in``) between them (I, III).

    Then ``W = sum W_i``, ``b = sum b_i`` (II). The forward keeps the reference code's ``+=``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        internal_channels: int | None = None,
        act: str | None = "relu",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, act)
        k, pad = kernel_size, kernel_size // 2
        internal = 2 * in_channels if internal_channels is None else internal_channels
        if internal % groups:
            raise ValueError(f"groups={groups} must divide internal_channels={internal}")
        self.dbb_origin = conv_bn(in_channels, out_channels, k, stride, groups)
        self.dbb_avg = nn.Sequential()
        if groups < out_channels:
            self.dbb_avg.add_module(
                "conv", nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False)
            )
            self.dbb_avg.add_module("bn", BNAndPad(pad, out_channels))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, stride, padding=0))
            self.dbb_1x1: nn.Sequential | None = conv_bn(
                in_channels, out_channels, 1, stride, groups
            )
        else:
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, stride, padding=pad))
            self.dbb_1x1 = None
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(out_channels))
        self.dbb_1x1_kxk = nn.Sequential()
        self.dbb_1x1_kxk.add_module(
            "conv1", nn.Conv2d(in_channels, internal, 1, groups=groups, bias=False)
        )
        self.dbb_1x1_kxk.add_module("bn1", BNAndPad(pad, internal))
        self.dbb_1x1_kxk.add_module(
            "conv2",
            nn.Conv2d(internal, out_channels, k, stride, padding=0, groups=groups, bias=False),
        )
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(out_channels))

    def forward_branches(self, x: Tensor) -> Tensor:
        out = self.dbb_origin(x)
        if self.dbb_1x1 is not None:
            out += self.dbb_1x1(x)
        out += self.dbb_avg(x)
        out += self.dbb_1x1_kxk(x)
        return out

    def equivalent_kernel_bias(self) -> KernelBias:
        g, k = self.groups, self.kernel_size
        terms = [_fuse_seq(self.dbb_origin)]
        if self.dbb_1x1 is not None:
            terms.append(_fuse_seq(self.dbb_1x1))

        avg = self.dbb_avg
        k_avg, b_avg = fuse_bn(avg_pool_kernel(self.out_channels, g, k), None, avg.avgbn)
        if self.dbb_1x1 is not None:
            k_first, b_first = fuse_bn(avg.conv.weight, None, avg.bn.bn)
            k_avg, b_avg = merge_1x1_kxk(k_first, b_first, k_avg, b_avg, g)
        terms.append((k_avg, b_avg))

        seq = self.dbb_1x1_kxk
        k_first, b_first = fuse_bn(seq.conv1.weight, None, seq.bn1.bn)
        k_second, b_second = fuse_conv_bn(seq.conv2, seq.bn2)
        terms.append(merge_1x1_kxk(k_first, b_first, k_second, b_second, g))
        return _sum(k, *terms)
