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
- a BN *before* a conv without pads, or before a Linear (``fold_input_bn``): with
  ``BN(x) = t * x + c`` per input channel, ``W'[o, i] = W[o, i] * t[i]`` and
  ``b' = b + sum_{i, taps} W[o, i] * c[i]``. Not exact with zero pads: a padded border would read
  ``0`` where the BN writes ``c``.

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
    "OREPABlock",
    "PPYoloeRepVgg",
    "QARepVGGBlock",
    "RepBlock",
    "RepVGGBlock",
    "ResidualConvBN",
    "ScaledDiffResidual",
    "avg_pool_kernel",
    "bn_scale_shift",
    "centre_kernel",
    "conv_bn",
    "fold_input_bn",
    "fuse_bn",
    "fuse_conv_bn",
    "identity_kernel",
    "merge_1x1_kxk",
    "mobileone_unit",
    "orepa_prior",
]

Size2 = tuple[int, int]
KernelBias = tuple[Tensor, Tensor]
AnyBN = nn.modules.batchnorm._BatchNorm


def _pair(value: int | Size2) -> Size2:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _make_act(act: str | None) -> nn.Module:
    if act is None:
        return nn.Identity()
    if act == "relu":
        return nn.ReLU()
    if act == "silu":
        return nn.SiLU()
    if act == "gelu":
        return nn.GELU()
    if act == "hardswish":
        return nn.Hardswish()
    raise ValueError(
        f"unknown activation {act!r} (expected 'relu', 'silu', 'gelu', 'hardswish' or None)"
    )


# --------------------------------------------------------------------------------------------
# Pure tensor math (float64 in, float64 out).
# --------------------------------------------------------------------------------------------


def bn_scale_shift(bn: AnyBN) -> KernelBias:
    """Inference BN as ``BN(y) = t * y + c``.

    ``t = gamma / sqrt(var + eps)``, ``c = beta - mean * t`` (float64, per channel).
    """
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(var)
    t = gamma / torch.sqrt(var + bn.eps)
    return t, beta - mean * t


def fuse_bn(kernel: Tensor, bias: Tensor | None, bn: AnyBN) -> KernelBias:
    """Fold ``BN(W * x + b)`` into ``W' * x + b'``: ``W' = W * t``, ``b' = c + b * t``.

    ``t`` and ``c`` are per output channel (``bn_scale_shift``); ``b = 0`` when ``bias`` is None.
    ``kernel`` is [O, ...]: a conv kernel or a Linear weight.
    """
    t, c = bn_scale_shift(bn)
    kernel = kernel.detach().double()
    fused_kernel = kernel * t.view(-1, *[1] * (kernel.dim() - 1))
    fused_bias = c if bias is None else c + bias.detach().double() * t
    return fused_kernel, fused_bias


def fold_input_bn(kernel: Tensor, bias: Tensor | None, bn: AnyBN, groups: int = 1) -> KernelBias:
    """Fold ``W * BN(x) + b`` into ``W' * x + b'`` for a conv without pads or a Linear.

    With ``BN(x) = t * x + c`` per input channel (``bn_scale_shift``), per group:
    ``W'[o, i] = W[o, i] * t[i]`` and ``b'[o] = b[o] + sum_{i, taps} W[o, i] * c[i]``
    (``b = 0`` when ``bias`` is None). ``kernel`` is [O, I/g, ...] (a Linear weight is [O, I]).
    """
    t, c = bn_scale_shift(bn)
    kernel = kernel.detach().double()
    out, in_g = kernel.shape[:2]
    taps = kernel.shape[2:]
    grouped = kernel.reshape(groups, out // groups, in_g, *taps)
    t_g = t.reshape(groups, 1, in_g, *[1] * len(taps))
    c_g = c.reshape(groups, 1, in_g, *[1] * len(taps))
    fused_kernel = (grouped * t_g).reshape(kernel.shape)
    shift = (grouped * c_g).sum(dim=tuple(range(2, grouped.dim()))).reshape(out)
    fused_bias = shift if bias is None else bias.detach().double() + shift
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
        """Replace all branches (modules, parameters, buffers) by one ``nn.Conv2d`` with bias
        (idempotent)."""
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
        for name in list(self._parameters) + list(self._buffers):
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

    The 1x1 "scale" branch exists when k > 1 and ``scale_branch``, the identity ``BN(x)`` when
    in == out and stride == 1; ``num_conv_branches`` may be 0 (FastViT's RepMixer uses
    ``BN(x)`` alone as its "norm"). The forward keeps the reference code's accumulation, which
    adds the integer ``0`` for a missing branch (so a traced graph may hold ``Add(t, 0)``) and
    accumulates the kxk branches with ``+=``. ``W = centre(Wscale) + t_id * I + sum W_i``.
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
        scale_branch: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, act)
        self.rbr_skip = nn.BatchNorm2d(in_channels) if self.has_identity else None
        self.rbr_conv = nn.ModuleList(
            conv_bn(in_channels, out_channels, kernel_size, stride, groups)
            for _ in range(num_conv_branches)
        )
        self.rbr_scale = (
            conv_bn(in_channels, out_channels, 1, stride, groups)
            if kernel_size > 1 and scale_branch
            else None
        )
        if not self.rbr_conv and self.rbr_scale is None and self.rbr_skip is None:
            raise ValueError("a MobileOne block needs at least one branch")

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


class QARepVGGBlock(RepBlock):
    """YOLOv6 v3's QARepVGGBlockV2: ``act(BN(BN3(Conv3x3(x)) + Conv1x1(x) + x + Avg3x3(x)))``.

    The 1x1 conv has neither bias nor BN; the identity ``x`` and the average pool (3x3, stride 1,
    pad 1, ``count_include_pad=True``) exist only when in == out and stride == 1, and a missing
    branch adds the integer ``0`` as in the reference code. The sum inside the outer BN is one conv
    (transforms I, VI, V, II): ``W_in = W3 + centre(W1) + I + A``, ``b_in = b3``, with ``A`` the
    average pool's kernel; the outer BN then folds as ``W = t * W_in``, ``b = c + t * b_in``.
    (The reference keeps the outer BN in its deploy form for quantization-aware training; an
    inference deploy form folds it.)
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
        self.rbr_1x1 = nn.Conv2d(
            in_channels, out_channels, 1, stride=stride, groups=groups, bias=False
        )
        self.rbr_identity = nn.Identity() if self.has_identity else None
        self.rbr_avg = nn.AvgPool2d(3, stride=stride, padding=1) if self.has_identity else None
        self.bn = nn.BatchNorm2d(out_channels)

    def forward_branches(self, x: Tensor) -> Tensor:
        id_out: Tensor | int = 0 if self.rbr_identity is None else self.rbr_identity(x)
        avg_out: Tensor | int = 0 if self.rbr_avg is None else self.rbr_avg(x)
        return self.bn(self.rbr_dense(x) + self.rbr_1x1(x) + id_out + avg_out)

    def equivalent_kernel_bias(self) -> KernelBias:
        zero = torch.zeros(self.out_channels, dtype=torch.float64)
        terms = [_fuse_seq(self.rbr_dense), (self.rbr_1x1.weight.detach().double(), zero)]
        if self.has_identity:
            terms.append((identity_kernel(self.in_channels, self.groups, 3), zero))
            terms.append((avg_pool_kernel(self.in_channels, self.groups, 3), zero))
        kernel, bias = _sum(self.kernel_size, *terms)
        return fuse_bn(kernel, bias, self.bn)


def orepa_prior(channels: int, kernel_size: int) -> Tensor:
    """OREPA's frequency prior [C, k, k] (float64): for ``i < C/2``,
    ``P[i, h, w] = cos(pi * (h + 1/2) * (i + 1) / k)``, else
    ``P[i, h, w] = cos(pi * (w + 1/2) * (i + 1 - C/2) / k)`` (the reference writes k = 3).
    """
    k = kernel_size
    half = channels / 2
    pos = (torch.arange(k, dtype=torch.float64) + 0.5).view(1, k)
    index = torch.arange(channels, dtype=torch.float64).view(channels, 1)
    rows = torch.cos(torch.pi * pos * (index + 1) / k)
    cols = torch.cos(torch.pi * pos * (index + 1 - half) / k)
    low = (index < half).view(channels, 1, 1)
    return torch.where(
        low,
        rows.view(channels, k, 1).expand(-1, -1, k),
        cols.view(channels, 1, k).expand(-1, k, -1),
    )


class OREPABlock(RepBlock):
    """OREPA: ``act(BN(conv(x, W_gen)))``, one conv whose kernel is generated in the forward.

    ``W_gen`` (the reference code's ``weight_gen``, written with ``einsum``s; ``v`` is a learnable
    [6, O] matrix of per-branch, per-output-channel scales, ``'oihw,o->oihw'``) sums six branches:

    - origin: ``v0 * W_o`` with ``W_o`` [O, I/g, k, k];
    - avg: ``v1 * (W_a ⊗ A)``, ``'oi,hw->oihw'`` of a 1x1 weight with the fixed ``A = 1 / k^2``;
    - 1x1: ``v4 * pad(W_1)``, the 1x1 weight zero-padded centred (a ``Pad`` in the graph);
    - 1x1-kxk: ``v3 * (W_2 ∘ (W_id + E))``, ``'ti,othw->oihw'`` (per group ``'gti,gothw->goihw'``)
      of an identity-based 1x1 weight (``W_id + E``, ``E`` the identity) and a kxk weight;
    - prior: ``v2 * (W_p ⊗ P)``, ``'oi,ohw->oihw'`` of a 1x1 weight with the fixed prior
      ``P`` (``orepa_prior``);
    - depthwise-separable: ``v5 * dwsc(W_dw, W_pw)``, a depthwise kxk conv expanding every input
      channel 8 times followed by a grouped 1x1 conv, as one kernel (``'cgtihw,ocgt->cogihw'``).
      The reference's layout is kept: with ``g`` groups, output ``c * O/g + o`` takes row
      ``o * g + c`` of ``W_pw`` (for ``g = 1``, the plain composition).

    Every term is linear in fixed tensors, so the conv has one kernel ``W_gen`` and the block
    deploys as ``W = t * W_gen``, ``b = c`` (transform I); ``W_gen`` is evaluated in float64.
    """

    EXPAND = 8
    NUM_BRANCHES = 6

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
        k, in_g = kernel_size, in_channels // groups
        internal = (
            (in_channels if groups <= 4 else 2 * in_channels)
            if internal_channels is None
            else internal_channels
        )
        if internal % groups or (self.EXPAND * in_channels) % groups:
            raise ValueError(f"groups={groups} must divide internal_channels={internal}")
        self.internal_channels = internal
        self.weight_orepa_origin = nn.Parameter(torch.empty(out_channels, in_g, k, k))
        self.weight_orepa_avg_conv = nn.Parameter(torch.empty(out_channels, in_g, 1, 1))
        self.weight_orepa_pfir_conv = nn.Parameter(torch.empty(out_channels, in_g, 1, 1))
        self.register_buffer("weight_orepa_avg_avg", torch.full((k, k), 1.0 / (k * k)))
        self.register_buffer("weight_orepa_prior", orepa_prior(out_channels, k).float())
        self.weight_orepa_1x1 = nn.Parameter(torch.empty(out_channels, in_g, 1, 1))
        self.weight_orepa_1x1_kxk_idconv1 = nn.Parameter(torch.zeros(internal, in_g, 1, 1))
        eye = torch.zeros(internal, in_g, 1, 1)
        eye[torch.arange(internal), torch.arange(internal) % in_g] = 1.0
        self.register_buffer("id_tensor", eye)
        self.weight_orepa_1x1_kxk_conv2 = nn.Parameter(
            torch.empty(out_channels, internal // groups, k, k)
        )
        self.weight_orepa_gconv_dw = nn.Parameter(torch.empty(self.EXPAND * in_channels, 1, k, k))
        self.weight_orepa_gconv_pw = nn.Parameter(
            torch.empty(out_channels, self.EXPAND * in_channels // groups, 1, 1)
        )
        for weight in (
            self.weight_orepa_origin,
            self.weight_orepa_avg_conv,
            self.weight_orepa_pfir_conv,
            self.weight_orepa_1x1,
            self.weight_orepa_1x1_kxk_conv2,
            self.weight_orepa_gconv_dw,
            self.weight_orepa_gconv_pw,
        ):
            nn.init.kaiming_uniform_(weight, a=0.0)
        # origin, avg, prior, 1x1-kxk, 1x1, depthwise-separable (the reference's initial values)
        init = torch.tensor([0.25, 0.25, 0.0, 0.5, 1.0, 0.5]).view(-1, 1)
        self.vector = nn.Parameter(init.repeat(1, out_channels))
        self.bn = nn.BatchNorm2d(out_channels)

    def weight_gen(self, double: bool = False) -> Tensor:
        """``W_gen`` in the module's dtype (traced), or from float64 copies when ``double``."""

        def get(name: str) -> Tensor:
            tensor = getattr(self, name)
            assert isinstance(tensor, Tensor)
            return tensor.detach().double() if double else tensor

        vector = get("vector")
        k, g = self.kernel_size[0], self.groups
        o, in_g = self.out_channels, self.in_channels // g
        origin = torch.einsum("oihw,o->oihw", get("weight_orepa_origin"), vector[0, :])
        avg = torch.einsum(
            "oi,hw->oihw",
            get("weight_orepa_avg_conv").squeeze(3).squeeze(2),
            get("weight_orepa_avg_avg"),
        )
        avg = torch.einsum("oihw,o->oihw", avg, vector[1, :])
        pfir = torch.einsum(
            "oi,ohw->oihw",
            get("weight_orepa_pfir_conv").squeeze(3).squeeze(2),
            get("weight_orepa_prior"),
        )
        pfir = torch.einsum("oihw,o->oihw", pfir, vector[2, :])

        # Shapes come from the block's own ints, never from ``tensor.shape``: a tracer records
        # those as Shape ops, and the TorchScript exporter then cannot export a Conv whose kernel
        # has no static shape.
        conv1 = (get("weight_orepa_1x1_kxk_idconv1") + get("id_tensor")).squeeze(3).squeeze(2)
        conv2 = get("weight_orepa_1x1_kxk_conv2")
        if g > 1:
            t = self.internal_channels
            one_kxk = torch.einsum(
                "gti,gothw->goihw",
                conv1.view(g, t // g, in_g),
                conv2.view(g, o // g, t // g, k, k),
            ).reshape(o, in_g, k, k)
        else:
            one_kxk = torch.einsum("ti,othw->oihw", conv1, conv2)
        one_kxk = torch.einsum("oihw,o->oihw", one_kxk, vector[3, :])

        # The no-op view pins the padded kernel's shape: the TorchScript exporter writes Pad's
        # pads as a small subgraph, so without it the shape (and the Conv) would not export.
        one = F.pad(get("weight_orepa_1x1"), [k // 2] * 4).view(o, in_g, k, k)
        one = torch.einsum("oihw,o->oihw", one, vector[4, :])

        gconv = self._dwsc_to_full(get("weight_orepa_gconv_dw"), get("weight_orepa_gconv_pw"))
        gconv = torch.einsum("oihw,o->oihw", gconv, vector[5, :])
        return origin + avg + one + one_kxk + pfir + gconv

    def _dwsc_to_full(self, weight_dw: Tensor, weight_pw: Tensor) -> Tensor:
        """A depthwise kxk conv (``in`` groups, ``EXPAND`` outputs each) then a 1x1 conv with
        ``groups`` groups, as one [O, I/g, k, k] kernel (the reference's ``dwsc2full``)."""
        g, o, k, tg = self.groups, self.out_channels, self.kernel_size[0], self.EXPAND
        gc = self.in_channels // g
        dw = weight_dw.view(g, gc, tg, 1, k, k)
        pw = weight_pw.squeeze(3).squeeze(2).view(o // g, g, gc, tg)
        full = torch.einsum("cgtihw,ocgt->cogihw", dw, pw)
        return full.reshape(o, gc, k, k)

    def forward_branches(self, x: Tensor) -> Tensor:
        weight = self.weight_gen()
        out = F.conv2d(x, weight, None, self.stride, self.padding, 1, self.groups)
        return self.bn(out)

    def equivalent_kernel_bias(self) -> KernelBias:
        return fuse_bn(self.weight_gen(double=True), None, self.bn)
