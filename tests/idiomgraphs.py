"""Models with the operator idioms runtimes fuse, written the ways exporters write them.

Each builder takes a :class:`tests.builders.GraphBuilder` and the idiom's input tensor ``x``
(``[1, C, H, W]``, or ``[N, C]`` for the normalizations) and returns the idiom's output. The
shape of every model is ``Conv → BN → idiom → Conv 1x1`` (or ``Gemm → idiom → Gemm``): without
the idiom guard the last constant of the idiom would fold into the next layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from tests.builders import GraphBuilder

C = 8
"""Channels (features) of every idiom model."""

Idiom = Callable[[GraphBuilder, str], str]


def _c(b: GraphBuilder, value: float) -> str:
    return b.init(np.array(value))


def gelu_torchscript(b: GraphBuilder, x: str) -> str:
    """``(x * (erf(x / sqrt2) + 1)) * 0.5`` as TorchScript writes it."""
    e = b.node("Erf", [b.node("Div", [x, _c(b, math.sqrt(2))])])
    return b.node("Mul", [b.node("Mul", [x, b.node("Add", [e, _c(b, 1.0)])]), _c(b, 0.5)])


def gelu_half_first(b: GraphBuilder, x: str) -> str:
    """``(0.5 * x) * (1 + erf(x * (1/sqrt2)))``: the half on x, the reciprocal as a Mul."""
    e = b.node("Erf", [b.node("Mul", [_c(b, 1 / math.sqrt(2)), x])])
    return b.node("Mul", [b.node("Mul", [_c(b, 0.5), x]), b.node("Add", [_c(b, 1.0), e])])


def gelu_half_on_erf(b: GraphBuilder, x: str) -> str:
    """``x * ((1 + erf(x / sqrt2)) * 0.5)``."""
    e = b.node("Erf", [b.node("Div", [x, _c(b, math.sqrt(2))])])
    half = b.node("Mul", [b.node("Add", [e, _c(b, 1.0)]), _c(b, 0.5)])
    return b.node("Mul", [x, half])


def gelu_tanh(b: GraphBuilder, x: str) -> str:
    """``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` with Pow."""
    cube = b.node("Mul", [b.node("Pow", [x, _c(b, 3.0)]), _c(b, 0.044715)])
    inner = b.node("Mul", [b.node("Add", [x, cube]), _c(b, math.sqrt(2 / math.pi))])
    one = b.node("Add", [b.node("Tanh", [inner]), _c(b, 1.0)])
    return b.node("Mul", [b.node("Mul", [x, _c(b, 0.5)]), one])


def gelu_tanh_cubed(b: GraphBuilder, x: str) -> str:
    """The tanh form with ``x * x * x`` instead of Pow, and the half last."""
    cube = b.node("Mul", [b.node("Mul", [x, x]), x])
    inner = b.node("Mul", [_c(b, math.sqrt(2 / math.pi)),
                           b.node("Add", [x, b.node("Mul", [_c(b, 0.044715), cube])])])
    one = b.node("Add", [_c(b, 1.0), b.node("Tanh", [inner])])
    return b.node("Mul", [b.node("Mul", [x, one]), _c(b, 0.5)])


def silu(b: GraphBuilder, x: str) -> str:
    return b.node("Mul", [x, b.node("Sigmoid", [x])])


def quick_gelu(b: GraphBuilder, x: str) -> str:
    return b.node("Mul", [b.node("Sigmoid", [b.node("Mul", [x, _c(b, 1.702)])]), x])


def hard_swish(b: GraphBuilder, x: str) -> str:
    """``x * HardSigmoid(x)`` (opset < 14 exports)."""
    return b.node("Mul", [x, b.node("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])


def _relu6_of_x_plus_3(b: GraphBuilder, x: str) -> str:
    return b.node("Clip", [b.node("Add", [x, _c(b, 3.0)]), _c(b, 0.0), _c(b, 6.0)])


def hard_swish_clip(b: GraphBuilder, x: str) -> str:
    """``x * clip(x + 3, 0, 6) / 6``."""
    return b.node("Div", [b.node("Mul", [x, _relu6_of_x_plus_3(b, x)]), _c(b, 6.0)])


def hard_swish_clip_sixth(b: GraphBuilder, x: str) -> str:
    """``(clip(x + 3, 0, 6) * (1/6)) * x``."""
    return b.node("Mul", [b.node("Mul", [_relu6_of_x_plus_3(b, x), _c(b, 1 / 6)]), x])


def hard_sigmoid_clip(b: GraphBuilder, x: str) -> str:
    """``clip(x + 3, 0, 6) / 6``."""
    return b.node("Div", [_relu6_of_x_plus_3(b, x), _c(b, 6.0)])


def mish(b: GraphBuilder, x: str) -> str:
    return b.node("Mul", [x, b.node("Tanh", [b.node("Softplus", [x])])])


def layer_norm(b: GraphBuilder, x: str, axis: int = -1) -> str:
    """LayerNormalization over the last axis, decomposed as below opset 17."""
    mean = b.node("ReduceMean", [x], axes=[axis])
    d = b.node("Sub", [x, mean])
    var = b.node("ReduceMean", [b.node("Pow", [d, _c(b, 2.0)])], axes=[axis])
    n = b.node("Div", [d, b.node("Sqrt", [b.node("Add", [var, _c(b, 1e-5)])])])
    gamma = b.init(b.rng.uniform(0.5, 1.5, C))
    beta = b.init(b.rng.standard_normal(C) * 0.3)
    return b.node("Add", [b.node("Mul", [n, gamma]), beta])


def rms_norm(b: GraphBuilder, x: str) -> str:
    """RMS normalization over the last axis: ``x / sqrt(mean(x^2) + eps) * gamma``."""
    var = b.node("ReduceMean", [b.node("Pow", [x, _c(b, 2.0)])], axes=[-1])
    inv = b.node("Reciprocal", [b.node("Sqrt", [b.node("Add", [var, _c(b, 1e-6)])])])
    return b.node("Mul", [b.node("Mul", [x, inv]), b.init(b.rng.uniform(0.5, 1.5, C))])


ACTIVATIONS: dict[str, tuple[Idiom, str]] = {
    # name → (builder, idiom name onnxrep reports)
    "gelu_torchscript": (gelu_torchscript, "Gelu"),
    "gelu_half_first": (gelu_half_first, "Gelu"),
    "gelu_half_on_erf": (gelu_half_on_erf, "Gelu"),
    "gelu_tanh": (gelu_tanh, "Gelu (tanh approximation)"),
    "gelu_tanh_cubed": (gelu_tanh_cubed, "Gelu (tanh approximation)"),
    "silu": (silu, "SiLU"),
    "quick_gelu": (quick_gelu, "QuickGelu"),
    "hard_swish": (hard_swish, "HardSwish"),
    "hard_swish_clip": (hard_swish_clip, "HardSwish"),
    "hard_swish_clip_sixth": (hard_swish_clip_sixth, "HardSwish"),
    "hard_sigmoid_clip": (hard_sigmoid_clip, "HardSigmoid"),
    "mish": (mish, "Mish"),
}
"""Activations on ``[1, C, H, W]`` between two convs."""

NORMALIZATIONS: dict[str, tuple[Idiom, str]] = {
    "layer_norm": (layer_norm, "LayerNormalization"),
    # the last axis by its positive number: only the input's rank (shape inference; the
    # model lists no value_info) says it is the last
    "layer_norm_positive_axis": (lambda b, x: layer_norm(b, x, axis=1), "LayerNormalization"),
    "rms_norm": (rms_norm, "RMS normalization"),
}
"""Normalizations on ``[N, C]`` between two Gemms."""


def conv_model(idiom: Idiom, dtype: type = np.float32) -> onnx.ModelProto:
    """``Conv1x1(idiom(BN(Conv3x3(x))))``."""
    b = GraphBuilder(dtype, seed=3)
    x = b.input([1, 4, 8, 8])
    y = idiom(b, b.bn(b.conv(x, 4, C, 3), C))
    return b.model([b.conv(y, C, C, 1)])


def gemm_model(idiom: Idiom, dtype: type = np.float32) -> onnx.ModelProto:
    """``Gemm(idiom(Gemm(x)))`` on 2-D features."""
    b = GraphBuilder(dtype, seed=4)
    x = b.input([2, C])
    h = b.node("Gemm", [x, b.init(b.rng.standard_normal((C, C)) * 0.3),
                        b.init(b.rng.standard_normal(C) * 0.3)])
    y = idiom(b, h)
    return b.model([b.node("Gemm", [y, b.init(b.rng.standard_normal((C, 4)) * 0.3),
                                    b.init(b.rng.standard_normal(4) * 0.3)])])


def qdq_model() -> onnx.ModelProto:
    """``DQ(Q(x)) → Conv(DQ(W)) → Q → DQ``: a quantized conv in QDQ form."""
    b = GraphBuilder(np.float32, seed=5)
    x = b.input([1, 4, 8, 8])
    scale, zero = b.init(np.array(0.05)), b.init(np.array(0, dtype=np.int8), cast=False)
    xq = b.node("DequantizeLinear", [b.node("QuantizeLinear", [x, scale, zero]), scale, zero])
    w = b.init((b.rng.standard_normal((C, 4, 3, 3)) * 20).astype(np.int8), cast=False)
    wq = b.node("DequantizeLinear", [w, b.init(np.array(0.01)), zero])
    conv = b.node("Conv", [xq, wq], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.node("QuantizeLinear", [conv, scale, zero])
    return b.model([b.node("DequantizeLinear", [y, scale, zero])])
