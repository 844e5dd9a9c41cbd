"""Random valid ONNX graphs of the ops onnxrep folds, for property tests and the fuzz benchmark.

``fuzz_cases()`` is a hypothesis strategy of :class:`FuzzCase`: a model, concrete inputs, and
the features it used. A graph grows from one input (sometimes two) by steps; each step reads a
live tensor and appends either one op or a *block* — 2 to 4 parallel branches of one tensor
merged by Add / Sub / Sum / Concat, the shape of RepVGG, ACNet, DBB and Inception blocks:

- Conv: kernels 1-5 per axis (asymmetric too), strides 1-3, dilations 1-3, explicit pads
  (asymmetric too) or auto_pad, groups (depthwise too), with and without bias and
  kernel_shape; a weight sometimes comes through an Identity or a Constant node, or is
  computed from constants at run time (Reshape, Mul by 2, Transpose, Cast), as exporters do.
- ConvTranspose: strides, dilations, pads, output_padding, groups, with and without bias.
- BatchNormalization with random statistics and epsilon; Add / Sub / Mul / Div by a constant
  (scalar, per channel, or per position; either operand order where that is affine).
- Add / Sub / Sum / Mul of tensors, Concat (mostly on channels), Pad (constant, reflect, edge;
  spatial, channel or negative pads), AveragePool (pads, strides, count_include_pad,
  ceil_mode), Relu, Identity.
- DBB's 1x1 → BN-and-pad → kxk branch, its border written with ``BN(0)`` per channel by a
  ``Where`` with a constant mask or a ``ScatterND`` (sometimes a wrong value, or only part of
  the border: those must be refused).

Initializers are often *shared* (one weight read by two convs, one BN statistics set by two
BNs). Graph outputs are every unread tensor plus random intermediate ones. Inputs may declare
dynamic batch and spatial dims (the concrete sizes are in ``feeds``; outputs then leave their
sizes open). Opsets 11 to the newest onnx knows. The dtype is float32, sometimes float16.
Shapes are tracked here and checked against ONNX shape inference by the tests. Choices that
change what can be folded are hypothesis draws (so failures shrink); weights and cosmetic
choices (attribute spelling, node names) come from a seeded numpy generator.

``check(case)`` runs the property both tests/test_fuzz.py and benchmarks/fuzz.py use: optimize
either refuses cleanly (OnnxrepError) or returns a model that passes the full checker, keeps
the graph inputs and outputs, every original initializer byte for byte, unique tensor and node
names and the model's float type, agrees with the input in onnxruntime at ORT_DISABLE_ALL
within ``TOLERANCES`` (also at two other sizes of the dynamic dims, where the input runs),
gives every BN, per-channel affine op, sum, Pad and AveragePool it leaves a reason, and is
left byte-identical by a second optimize.
"""

from __future__ import annotations

import math
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxrep

__all__ = ["FEATURES", "KNOWN_BUGS", "TOLERANCES", "FuzzCase", "Outcome", "check", "fuzz_cases"]

NEWEST = onnx.defs.onnx_opset_version()
OPSETS = (17, 11, 13, 18, 19, 21, NEWEST)

TOLERANCES = {
    # dtype → (atol, rtol x max|reference|), the verdict of onnxrep.compare
    "float32": (1e-4, 1e-4),
    "float16": (1e-2, 1e-2),
}

FEATURES = (
    "conv", "convtranspose", "bn", "affine", "binary", "sum", "concat", "pad", "avgpool",
    "relu", "identity", "block", "shared", "float16", "dynamic", "auto_pad", "weight-node",
    "second-input", "rank-change", "intermediate-output", "dynamic-same-stride",
    "computed-weight", "border-fill", "small-pad-value",
)
"""What a case can use; ``fuzz_cases(exclude=...)`` switches any of them off."""

KNOWN_BUGS: frozenset[str] = frozenset()
"""Constructs to leave out while a bug they trigger is open (each has a regression test in
tests/test_fuzz.py). None is open.

Fixed (no longer excluded): ``dynamic-same-stride`` — a Conv with ``auto_pad=SAME_*`` and a
stride > 1 on an input of unknown size, after a map with a non-zero bias; ``small-pad-value``
— a constant Pad whose value is small but not zero before a Conv, once accepted as the map's
zero bias within a tolerance absolute at magnitude 1."""


SINGLE_OPS = ("conv", "bn", "affine", "block", "relu", "pad", "avgpool", "binary", "sum",
              "concat", "convtranspose", "identity")


@dataclass
class FuzzCase:
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    dtype: str
    features: frozenset[str]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        ops = Counter(n.op_type for n in self.model.graph.node)
        text = onnx.printer.to_text(self.model.graph)
        return (f"FuzzCase({self.dtype}, opset {self.model.opset_import[0].version}, "
                f"{dict(ops)}, features={sorted(self.features)})\n{text}")


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]


class _Graph:
    """The graph under construction (structural choices are hypothesis draws: they shrink)."""

    def __init__(self, draw: Callable, exclude: frozenset[str], dtype: np.dtype, opset: int,
                 rng: np.random.Generator) -> None:
        self.draw = draw
        self.exclude = exclude
        self.dtype = dtype
        self.elem = helper.np_dtype_to_tensor_dtype(dtype)
        self.opset = opset
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.by_shape: dict[tuple, list[str]] = {}
        self.pool: list[_Tensor] = []
        self.readers: Counter[str] = Counter()
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.features: set[str] = set()
        self.dead_ends: list[_Tensor] = []
        self.dynamic = False
        self.values: dict[str, np.ndarray] = {}
        self._n = 0

    # ---- choices

    def chance(self, feature: str | None, percent: int) -> bool:
        """True with ``percent`` % probability (shrinks to False); never for excluded features."""
        if feature is not None and feature in self.exclude:
            return False
        return self.draw(st.integers(0, 99)) >= 100 - percent

    def coin(self, percent: int) -> bool:
        """True with ``percent`` % probability, from the seeded generator: for choices that do
        not change what is folded (attribute spelling, names), so they cost no draws."""
        return bool(self.rng.random() * 100 < percent)

    def pick(self, options: Iterable) -> object:
        return self.draw(st.sampled_from(list(options)))

    def int(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def small(self, lo: int, hi: int) -> int:
        """An int in [lo, hi], mostly lo (strides, dilations)."""
        return lo if not self.chance(None, 30) else self.int(lo, hi)

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    # ---- graph building

    def tensor(self) -> _Tensor:
        """A live tensor: the newest one more often than not (so chains are likely)."""
        if self.chance(None, 40):
            return self.pool[-1 - self.int(0, len(self.pool) - 1)]
        return self.pool[-1]

    def add_node(self, op: str, inputs: list[str], shape: tuple[int, ...], *,
                 keep: bool = True, **attrs: object) -> _Tensor:
        out = self.name(op.lower())
        node_name = self.name(op) if not self.coin(10) else ""
        self.nodes.append(helper.make_node(op, inputs, [out], name=node_name, **attrs))
        self.readers.update(i for i in inputs if i)
        self.shapes[out] = shape
        t = _Tensor(out, shape)
        if keep:
            self.pool.append(t)
        return t

    def constant(self, values: np.ndarray, share_key: tuple | None = None,
                 node_ok: bool = True) -> str:
        """An initializer (or, sometimes, a Constant / Identity node) holding ``values``;
        with ``share_key`` an existing initializer with the same key may be reused."""
        values = np.asarray(values)
        if values.dtype.kind == "f":
            values = values.astype(self.dtype)
        key = (share_key, values.dtype.str, values.shape) if share_key is not None else None
        if key is not None and self.by_shape.get(key) and self.chance("shared", 30):
            self.features.add("shared")
            found = self.by_shape[key]
            return found[self.int(0, len(found) - 1)]
        name = self.name("w")
        self.values[name] = values
        if node_ok and self.chance("weight-node", 8):
            self.features.add("weight-node")
            if self.coin(50):
                self.nodes.append(helper.make_node(
                    "Constant", [], [name], value=numpy_helper.from_array(values, name + "_v")))
                return name
            inner = self.name("w")
            self.inits[inner] = numpy_helper.from_array(values, inner)
            self.nodes.append(helper.make_node("Identity", [inner], [name]))
            self.readers[inner] += 1
            return name
        if node_ok and values.dtype.kind == "f" and self.chance("computed-weight", 8):
            return self.computed(values, name)
        self.inits[name] = numpy_helper.from_array(values, name)
        if key is not None:
            self.by_shape.setdefault(key, []).append(name)
        return name

    def computed(self, values: np.ndarray, name: str) -> str:
        """``values`` computed at run time from constants only (exactly): what exporters write
        and the constants pre-pass must fold before anything else can."""
        self.features.add("computed-weight")
        form = self.pick(["reshape", "double", "transpose", "cast"])
        a = self.name("w")
        if form == "reshape":
            shape = self.name("w")
            self.inits[a] = numpy_helper.from_array(values.reshape(-1), a)
            self.inits[shape] = numpy_helper.from_array(np.array(values.shape, np.int64), shape)
            self.nodes.append(helper.make_node("Reshape", [a, shape], [name]))
            self.readers.update([a, shape])
        elif form == "double":  # values / 2 * 2 is exact in binary floating point
            two = self.name("w")
            self.inits[a] = numpy_helper.from_array(values / values.dtype.type(2), a)
            self.inits[two] = numpy_helper.from_array(np.array(2, values.dtype), two)
            self.nodes.append(helper.make_node("Mul", [a, two], [name]))
            self.readers.update([a, two])
        elif form == "transpose" and values.ndim >= 2:
            perm = [1, 0, *range(2, values.ndim)]
            self.inits[a] = numpy_helper.from_array(np.ascontiguousarray(
                values.transpose(perm)), a)
            self.nodes.append(helper.make_node("Transpose", [a], [name], perm=perm))
            self.readers[a] += 1
        else:  # stored wider, cast down (exact: the values are representable)
            self.inits[a] = numpy_helper.from_array(values.astype(np.float64), a)
            self.nodes.append(helper.make_node("Cast", [a], [name], to=self.elem))
            self.readers[a] += 1
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        values = self.rng.standard_normal(shape) / math.sqrt(max(fan_in, 1))
        return self.constant(values, share_key=("weight",))

    def bias(self, c: int) -> str:
        return self.constant(self.rng.standard_normal(c) * 0.3, share_key=("bias",))

    # ---- ops

    def conv(self, t: _Tensor, *, cout: int | None = None, group: int | None = None,
             kernel: tuple[int, ...] | None = None, stride: tuple[int, ...] | None = None,
             dilation: tuple[int, ...] | None = None, pads: tuple[int, ...] | None = None,
             keep: bool = True, bias: bool | None = None) -> _Tensor:
        self.features.add("conv")
        n, c, *size = t.shape
        r = len(size)
        if group is None:
            divisors = [g for g in range(1, c + 1) if c % g == 0]
            group = 1 if not self.chance(None, 35) else self.pick(divisors)
        if cout is None:
            if group == c and self.chance(None, 50):
                cout = c * self.int(1, 2)  # depthwise, channel multiplier 1 or 2
            else:
                cout = group * self.int(1, max(1, 8 // group))
        if kernel is None:
            k0 = self.int(1, 5)
            kernel = tuple(k0 if not self.chance(None, 20) else self.int(1, 5) for _ in size)
        stride = stride or tuple(self.small(1, 3) for _ in size)
        dilation = dilation or tuple(self.small(1, 3) for _ in size)
        attrs: dict[str, object] = {}
        if pads is None:
            mode = self.pick(["same", "explicit", "zero", "auto"])
            if mode == "auto" and "auto_pad" in self.exclude:
                mode = "same"
            if mode == "auto":
                self.features.add("auto_pad")
                auto = self.pick(["SAME_UPPER", "SAME_LOWER", "VALID"])
                if auto == "VALID" and any(
                    s < d * (k - 1) + 1 for s, k, d in zip(size, kernel, dilation, strict=True)
                ):
                    auto = "SAME_UPPER"
                if (auto != "VALID" and self.dynamic and any(x > 1 for x in stride)
                        and "dynamic-same-stride" in self.exclude):
                    auto = "NOTSET"  # explicit zero pads instead
                if auto != "NOTSET":
                    attrs["auto_pad"] = auto
                else:
                    pads = (0,) * (2 * r)
                if auto not in ("VALID", "NOTSET"):  # onnxruntime: no dilated SAME conv
                    dilation = (1,) * r
            else:
                begins, ends = [], []
                for i in range(r):
                    total = dilation[i] * (kernel[i] - 1)
                    if mode == "same":
                        p0 = self.int(0, total)
                        p1 = total - p0
                    elif mode == "explicit":
                        p0, p1 = self.int(0, 3), self.int(0, 3)
                    else:
                        p0 = p1 = 0
                    begins.append(p0)
                    ends.append(p1)
                pads = (*begins, *ends)
        if pads is not None:
            kernel, dilation = self._fit(size, kernel, dilation, pads)
            attrs["pads"] = list(pads)
            if not any(pads) and self.coin(30):
                del attrs["pads"]
        out_size = []
        for i in range(r):
            k, s, d = kernel[i], stride[i], dilation[i]
            if "auto_pad" in attrs and attrs["auto_pad"] != "VALID":
                out_size.append(-(-size[i] // s))
            elif "auto_pad" in attrs:
                out_size.append((size[i] - d * (k - 1) - 1) // s + 1)
            else:
                p0, p1 = pads[i], pads[r + i]
                out_size.append((size[i] + p0 + p1 - d * (k - 1) - 1) // s + 1)
        w = self.weight((cout, c // group, *kernel), c // group * math.prod(kernel))
        inputs = [t.name, w]
        if bias if bias is not None else self.chance(None, 70):
            inputs.append(self.bias(cout))
        if self.coin(70):
            attrs["kernel_shape"] = list(kernel)
        if any(s != 1 for s in stride) or self.coin(50):
            attrs["strides"] = list(stride)
        if any(d != 1 for d in dilation) or self.coin(50):
            attrs["dilations"] = list(dilation)
        if group != 1 or self.coin(30):
            attrs["group"] = group
        return self.add_node("Conv", inputs, (n, cout, *out_size), keep=keep, **attrs)

    @staticmethod
    def _fit(size, kernel, dilation, pads):
        """Shrink kernels (and dilations) so every output size is at least 1."""
        r = len(size)
        kernel, dilation = list(kernel), list(dilation)
        for i in range(r):
            room = size[i] + pads[i] + pads[r + i]
            if dilation[i] * (kernel[i] - 1) + 1 > room:
                dilation[i] = 1
                kernel[i] = max(1, min(kernel[i], room))
        return tuple(kernel), tuple(dilation)

    def conv_transpose(self, t: _Tensor) -> _Tensor:
        self.features.add("convtranspose")
        n, c, *size = t.shape
        divisors = [g for g in range(1, c + 1) if c % g == 0]
        group = 1 if not self.chance(None, 35) else self.pick(divisors)
        per_group = self.int(1, 3)
        kernel = tuple(self.int(1, 4) for _ in size)
        stride = tuple(self.small(1, 3) for _ in size)
        dilation = tuple(self.small(1, 2) for _ in size)
        out_pad = tuple(self.int(0, s - 1) if s > 1 else 0 for s in stride)
        begins, ends, out_size = [], [], []
        for i, m in enumerate(size):
            full = stride[i] * (m - 1) + out_pad[i] + dilation[i] * (kernel[i] - 1) + 1
            p0, p1 = self.int(0, 2), self.int(0, 2)
            if full - p0 - p1 < 1:
                p0 = p1 = 0
            begins.append(p0)
            ends.append(p1)
            out_size.append(full - p0 - p1)
        w = self.weight((c, per_group, *kernel), c // group * math.prod(kernel))
        inputs = [t.name, w]
        if self.chance(None, 60):
            inputs.append(self.bias(per_group * group))
        attrs: dict[str, object] = {"strides": list(stride), "pads": [*begins, *ends]}
        if any(out_pad):
            attrs["output_padding"] = list(out_pad)
        if any(d != 1 for d in dilation):
            attrs["dilations"] = list(dilation)
        if group != 1:
            attrs["group"] = group
        if self.coin(50):
            attrs["kernel_shape"] = list(kernel)
        return self.add_node("ConvTranspose", inputs, (n, per_group * group, *out_size), **attrs)

    def bn(self, t: _Tensor, keep: bool = True) -> _Tensor:
        self.features.add("bn")
        c = t.shape[1]
        rng = self.rng
        stats = [rng.uniform(0.5, 1.5, c), rng.standard_normal(c) * 0.3,
                 rng.standard_normal(c) * 0.3, rng.uniform(0.5, 1.5, c)]
        names = [self.constant(v, share_key=("bn", i), node_ok=False) for i, v in enumerate(stats)]
        attrs: dict[str, object] = {}
        if self.coin(50):
            attrs["epsilon"] = float(self.pick([1e-5, 1e-3, 0.1]))
        if self.coin(20):
            attrs["momentum"] = 0.9
        if self.opset >= 14 and self.coin(20):
            attrs["training_mode"] = 0
        return self.add_node("BatchNormalization", [t.name, *names], t.shape, keep=keep, **attrs)

    def affine(self, t: _Tensor, op: str | None = None, shape_kind: str | None = None,
               keep: bool = True) -> _Tensor:
        self.features.add("affine")
        c, size = t.shape[1], t.shape[2:]
        r = len(t.shape)
        op = op or self.pick(["Mul", "Add", "Sub", "Div"])
        kinds = ["channel", "scalar", "channel-short", "ones", "spatial", "last-axis"]
        if "rank-change" not in self.exclude:
            kinds.append("rank-up")
        kind = shape_kind or self.pick(kinds)
        shape = {
            "channel": (1, c) + (1,) * len(size), "scalar": (), "channel-short": (c,) +
            (1,) * len(size), "ones": (1,) * r, "spatial": (1, 1, *size),
            "last-axis": (size[-1],), "rank-up": (1, 1, c) + (1,) * len(size),
        }[kind]
        if op == "Div":
            values = self.rng.uniform(0.5, 2.0, shape) * self.rng.choice([-1.0, 1.0], shape)
        else:
            values = self.rng.uniform(-1.5, 1.5, shape)
        const = self.constant(values, share_key=("affine",))
        first = op != "Div" and self.chance(None, 40)
        inputs = [const, t.name] if first else [t.name, const]
        out_shape = tuple(np.broadcast_shapes(t.shape, shape))
        if kind == "rank-up":
            self.features.add("rank-change")
            dead = self.add_node(op, inputs, out_shape, keep=False)
            self.dead_ends.append(dead)
            return t
        return self.add_node(op, inputs, out_shape, keep=keep)

    def same_shape(self, t: _Tensor, channels_free: bool = False) -> list[_Tensor]:
        return [u for u in self.pool if u.shape == t.shape or (
            channels_free and len(u.shape) == len(t.shape) and u.shape[0] == t.shape[0]
            and u.shape[2:] == t.shape[2:])]

    def binary(self, t: _Tensor) -> _Tensor:
        self.features.add("binary")
        others = self.same_shape(t)
        u = others[self.int(0, len(others) - 1)]
        op = self.pick(["Add", "Sub", "Mul"])
        pair = [t.name, u.name] if self.chance(None, 50) else [u.name, t.name]
        return self.add_node(op, pair, t.shape)

    def sum(self, t: _Tensor) -> _Tensor:
        self.features.add("sum")
        others = self.same_shape(t)
        parts = [t.name] + [others[self.int(0, len(others) - 1)].name
                            for _ in range(self.int(0, 3))]
        return self.add_node("Sum", parts, t.shape)

    def concat(self, t: _Tensor) -> _Tensor:
        self.features.add("concat")
        axis = 1 if not self.chance(None, 15) else self.int(0, len(t.shape) - 1)
        if axis == 1:
            others = self.same_shape(t, channels_free=True)
        else:
            others = [u for u in self.pool if u.shape[:axis] + u.shape[axis + 1:]
                      == t.shape[:axis] + t.shape[axis + 1:]]
        parts = [t] + [others[self.int(0, len(others) - 1)] for _ in range(self.int(1, 3))]
        shape = list(t.shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        written = axis if self.coin(70) else axis - len(t.shape)
        return self.add_node("Concat", [p.name for p in parts], tuple(shape), axis=written)

    def pad(self, t: _Tensor, pads: tuple[int, ...] | None = None, keep: bool = True) -> _Tensor:
        self.features.add("pad")
        r = len(t.shape)
        mode = "constant" if pads is not None or not self.chance(None, 20) else self.pick(
            ["reflect", "edge"])
        if pads is None:
            begins = [0, 0] + [self.int(0, 2) for _ in t.shape[2:]]
            ends = [0, 0] + [self.int(0, 2) for _ in t.shape[2:]]
            if mode == "constant" and self.chance(None, 10):
                begins[1] = self.int(0, 1)  # on the channel axis
            if mode != "reflect" and self.chance(None, 10):  # a crop, keeping a pixel
                i = self.int(2, r - 1)
                if t.shape[i] > 1:
                    begins[i] = -1
            if mode == "reflect":  # reflect needs pads smaller than the size
                begins = [min(p, t.shape[i] - 1) for i, p in enumerate(begins)]
                ends = [min(p, t.shape[i] - 1) for i, p in enumerate(ends)]
            pads = (*begins, *ends)
        inputs = [t.name, self.constant(np.array(pads, np.int64), node_ok=False)]
        if mode == "constant" and self.chance(None, 40):
            value = 0.0 if not self.chance(None, 40) else float(self.rng.uniform(-1, 1))
            if "small-pad-value" in self.exclude and 0 < abs(value) < 0.1:
                value = math.copysign(0.1, value)
            inputs.append(self.constant(np.array(value, self.dtype), node_ok=False))
        shape = tuple(d + pads[i] + pads[r + i] for i, d in enumerate(t.shape))
        attrs = {} if mode == "constant" and self.coin(50) else {"mode": mode}
        return self.add_node("Pad", inputs, shape, keep=keep, **attrs)

    def avgpool(self, t: _Tensor, kernel: tuple[int, ...] | None = None,
                stride: tuple[int, ...] | None = None, pads: tuple[int, ...] | None = None,
                keep: bool = True) -> _Tensor:
        self.features.add("avgpool")
        n, c, *size = t.shape
        r = len(size)
        kernel = kernel or tuple(self.int(1, min(4, m + 2)) for m in size)
        stride = stride or tuple(self.small(1, 3) for _ in size)
        if pads is None:
            pads = tuple(self.int(0, kernel[i % r] - 1) if self.chance(None, 50) else 0
                         for i in range(2 * r))
        kernel = tuple(min(k, m + pads[i] + pads[r + i]) for i, (k, m) in enumerate(
            zip(kernel, size, strict=True)))
        pads = tuple(min(p, kernel[i % r] - 1) for i, p in enumerate(pads))
        attrs: dict[str, object] = {"kernel_shape": list(kernel)}
        if any(s != 1 for s in stride):
            attrs["strides"] = list(stride)
        if any(pads):
            attrs["pads"] = list(pads)
        if self.coin(60):
            attrs["count_include_pad"] = 1 if self.chance(None, 60) else 0
        spans = [size[i] + pads[i] + pads[r + i] - kernel[i] for i in range(r)]
        ceil = self.chance(None, 15) and all(  # a last window starting in the end pad is
            (-(-spans[i] // stride[i])) * stride[i] < size[i] + pads[i]  # dropped or not,
            for i in range(r)  # depending on the opset: left out
        )
        if ceil:
            attrs["ceil_mode"] = 1
        out = [(-(-spans[i] // stride[i]) if ceil else spans[i] // stride[i]) + 1
               for i in range(r)]
        return self.add_node("AveragePool", [t.name], (n, c, *out), keep=keep, **attrs)

    def value_at_zero(self, t: _Tensor) -> np.ndarray:
        """Per channel, the value ``t`` has where its input is zero: ``BN(Conv1x1(0))``."""
        bn = next(n for n in self.nodes if t.name in n.output)
        conv = next(n for n in self.nodes if bn.input[0] in n.output)
        c = t.shape[1]
        bias = (self.values[conv.input[2]].astype(np.float64) if len(conv.input) > 2
                else np.zeros(c))
        gamma, beta, mean, var = (self.values[i].astype(np.float64) for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + np.float64(np.float32(eps)))
        return scale * (bias - mean) + beta

    def border_fill(self, t: _Tensor, pads: tuple[int, ...], fill: np.ndarray) -> _Tensor:
        """``t`` zero-padded, then its border overwritten with ``fill[c]`` per channel, the way
        exporters write DBB's BN-and-pad: a Where with a constant mask, or a ScatterND."""
        self.features.add("border-fill")
        c, size = t.shape[1], t.shape[2:]
        r = len(size)
        full = (0, 0, *pads[:r], 0, 0, *pads[r:])
        padded = self.pad(t, full, keep=False)
        shape = padded.shape
        if self.chance(None, 10):  # a wrong value: must be refused
            fill = fill + np.eye(1, c, self.int(0, c - 1)).reshape(-1) * 0.5
        mask = np.ones((1, 1, *shape[2:]), bool)
        mask[(0, 0, *(slice(pads[i], pads[i] + size[i]) for i in range(r)))] = False
        if self.chance(None, 10):  # only part of the border: the rest stays 0
            mask[(0, 0, *(slice(None) for _ in range(r - 1)), slice(0, 1))] = False
        values = fill.reshape((1, c) + (1,) * r)
        if self.chance(None, 50):
            ins = [self.constant(mask, node_ok=False), self.constant(values, node_ok=False),
                   padded.name]
            return self.add_node("Where", ins, shape, keep=False)
        where = np.argwhere(np.broadcast_to(mask, shape))
        updates = np.asarray(fill, np.float64)[where[:, 1]]
        ins = [padded.name, self.constant(where.astype(np.int64), node_ok=False),
               self.constant(updates, node_ok=False)]
        return self.add_node("ScatterND", ins, shape, keep=False)

    # ---- a block of parallel branches

    def block(self, t: _Tensor) -> _Tensor:
        self.features.add("block")
        n, c, *size = t.shape
        r = len(size)
        s = tuple([self.small(1, 2)] * r)
        d = tuple([1 if not self.chance(None, 15) else 2] * r)
        cout = c if self.chance(None, 60) else self.int(1, 8)
        group = 1
        if self.chance(None, 30):
            common = [g for g in range(1, min(c, cout) + 1) if c % g == 0 and cout % g == 0]
            group = self.pick(common)
        merge = self.pick(["Add", "Sum", "Sub", "Concat"])
        count = 2 if merge in ("Add", "Sub") else self.int(2, 4)
        kinds = ["conv", "conv1x1", "identity", "seq", "pad-conv", "pool"]
        if "border-fill" not in self.exclude:
            kinds.append("bn-pad")
        if r == 2:
            kinds.append("asym")
        branches = []
        for _ in range(count):
            kind = self.pick(kinds)
            b = self.branch(t, kind, cout, group, s, d)
            if b is None:
                continue
            if self.chance("bn", 60):
                b = self.bn(b, keep=False)
            if self.chance("affine", 20):
                b = self.affine(b, "Mul", self.pick(["scalar", "channel"]), keep=False)
            branches.append(b)
        if not branches:
            return t
        first = branches[0]
        if merge == "Concat":
            parts = [b for b in branches if b.shape[:1] + b.shape[2:] == first.shape[:1]
                     + first.shape[2:]]
        else:
            parts = [b for b in branches if b.shape == first.shape]
        for b in branches:  # branches whose shape does not fit become outputs of their own
            if b is not t and all(b is not p for p in parts[1:]) and (
                    len(parts) == 1 or b is not first):
                self.pool.append(b)
        if len(parts) == 1:
            return first
        if merge in ("Add", "Sub"):
            return self.add_node(merge, [parts[0].name, parts[1].name], first.shape)
        if merge == "Sum":
            return self.add_node("Sum", [p.name for p in parts], first.shape)
        shape = (n, sum(p.shape[1] for p in parts), *first.shape[2:])
        return self.add_node("Concat", [p.name for p in parts], shape, axis=1)

    def branch(self, t: _Tensor, kind: str, cout: int, group: int, s: tuple[int, ...],
               d: tuple[int, ...]) -> _Tensor | None:
        c = t.shape[1]
        r = len(t.shape) - 2

        def centred(k: tuple[int, ...], dil: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(dil[i] * (k[i] - 1) // 2 for i in range(r)) * 2

        if kind == "identity":
            if cout != c or any(x != 1 for x in s):
                return None
            return t
        if kind in ("conv", "conv1x1", "asym"):
            if kind == "conv":
                k = tuple([self.pick([3, 1, 5])] * r)
            elif kind == "conv1x1":
                k = (1,) * r
            else:
                k = (1, 3) if self.chance(None, 50) else (3, 1)
            pads = centred(k, d)
            if self.chance(None, 10):  # off-centre: a frame that may not align
                pads = tuple(p + (1 if i == 0 else 0) for i, p in enumerate(pads))
            return self.conv(t, cout=cout, group=group, kernel=k, stride=s, dilation=d,
                             pads=pads, keep=False)
        if kind == "seq":
            mid = group * self.int(1, 3)
            a = self.conv(t, cout=mid, group=group if c % group == 0 else 1, kernel=(1,) * r,
                          stride=(1,) * r, dilation=(1,) * r, pads=(0,) * (2 * r), keep=False)
            if self.chance("bn", 40):
                a = self.bn(a, keep=False)
            k = tuple([3] * r)
            return self.conv(a, cout=cout, group=group, kernel=k, stride=s, dilation=d,
                             pads=centred(k, d), keep=False)
        if kind == "pad-conv":
            k = tuple([3] * r)
            p = centred(k, d)
            padded = self.pad(t, (0, 0, *p[:r], 0, 0, *p[r:]), keep=False)
            return self.conv(padded, cout=cout, group=group, kernel=k, stride=s, dilation=d,
                             pads=(0,) * (2 * r), keep=False)
        if kind == "bn-pad":  # DBB: 1x1 → BN → border written with BN(0) → kxk
            a = self.conv(t, cout=c, group=1, kernel=(1,) * r, stride=(1,) * r,
                          dilation=(1,) * r, pads=(0,) * (2 * r), keep=False)
            y = self.bn(a, keep=False)
            k = tuple([3] * r)
            filled = self.border_fill(y, centred(k, d), self.value_at_zero(y))
            return self.conv(filled, cout=cout, group=group, kernel=k, stride=s, dilation=d,
                             pads=(0,) * (2 * r), keep=False)
        if kind == "pool":
            a = self.conv(t, cout=cout, group=group, kernel=(1,) * r, stride=(1,) * r,
                          dilation=(1,) * r, pads=(0,) * (2 * r), keep=False,
                          bias=not self.chance(None, 60))
            if any(x != 1 for x in d):
                return a
            k = tuple(3 for _ in range(r))
            return self.avgpool(a, k, s, (1,) * (2 * r), keep=False)
        raise AssertionError(kind)

    # ---- the model

    def model(self, inputs: list[_Tensor], dynamic: set[tuple[int, int]]) -> onnx.ModelProto:
        outputs = [t for t in [*self.pool, *self.dead_ends]
                   if self.readers[t.name] == 0 and t.name in self.shapes
                   and t not in inputs]
        if "intermediate-output" not in self.exclude:
            for t in self.pool:
                if t not in outputs and t not in inputs and self.chance(None, 12):
                    self.features.add("intermediate-output")
                    outputs.append(t)
        if not outputs:  # no op was added: a lone Relu keeps the graph non-empty
            outputs.append(self.add_node("Relu", [inputs[0].name], inputs[0].shape))
        declared = []
        for j, t in enumerate(inputs):
            dims: list[int | str] = list(t.shape)
            for axis in range(len(dims)):
                if (j, axis) in dynamic:
                    dims[axis] = "N" if axis == 0 else f"d{axis}"
            declared.append(helper.make_tensor_value_info(t.name, self.elem, dims))
        graph = helper.make_graph(
            self.nodes, "fuzz", declared,
            [helper.make_tensor_value_info(  # sizes a dynamic input leaves open stay open
                t.name, self.elem, [None] * len(t.shape) if dynamic else list(t.shape))
             for t in outputs],
            list(self.inits.values()),
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
        return model


@st.composite
def fuzz_cases(draw: Callable, exclude: frozenset[str] = frozenset(), max_steps: int = 8,
               float16: bool = True) -> FuzzCase:
    """A random valid model (see the module docstring) and concrete inputs for it."""
    exclude = frozenset(exclude) | (frozenset() if float16 else {"float16"})
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    probe = _Graph(draw, exclude, np.dtype(np.float32), 17, rng)
    dtype = np.dtype(np.float16 if probe.chance("float16", 15) else np.float32)
    opset = draw(st.sampled_from(OPSETS))
    g = _Graph(draw, exclude, dtype, opset, rng)
    if dtype == np.float16:
        g.features.add("float16")
    rank = 2 if not g.chance(None, 25) else g.pick([1, 3])
    limit = 6 if rank == 3 else 10
    shape = (g.int(1, 2), g.int(1, 6), *(g.int(1, limit) for _ in range(rank)))
    x = _Tensor("x", shape)
    g.shapes["x"] = shape
    g.pool.append(x)
    inputs = [x]
    if g.chance("second-input", 10):
        g.features.add("second-input")
        y = _Tensor("y", shape)
        g.shapes["y"] = shape
        g.pool.append(y)
        inputs.append(y)
    dynamic: set[tuple[int, int]] = set()
    if g.chance("dynamic", 25):
        g.features.add("dynamic")
        g.dynamic = True
        for j in range(len(inputs)):
            for axis in (0, *range(2, 2 + rank)):
                if g.chance(None, 60):
                    dynamic.add((j, axis))
    ops = [op for op in SINGLE_OPS if op not in exclude]
    for _ in range(g.int(1, max_steps)):
        op = g.pick(ops)
        t = g.tensor()
        if op == "convtranspose" and max(t.shape[2:]) > 8:
            op = "conv"
        if op in ("conv", "convtranspose", "block") and max(t.shape[2:]) > 24:
            op = "avgpool"  # keep the tensors small
        {
            "conv": g.conv, "bn": g.bn, "affine": g.affine, "block": g.block, "relu":
            lambda t: g.add_node("Relu", [t.name], t.shape), "pad": g.pad,
            "avgpool": g.avgpool, "binary": g.binary, "sum": g.sum, "concat": g.concat,
            "convtranspose": g.conv_transpose,
            "identity": lambda t: g.add_node("Identity", [t.name], t.shape),
        }[op](t)
        if op in ("relu", "identity"):
            g.features.add(op)
    model = g.model(inputs, dynamic)
    feeds = {t.name: rng.standard_normal(t.shape).astype(dtype) for t in inputs}
    return FuzzCase(model, feeds, dtype.name, frozenset(g.features), dict(g.shapes))


# --------------------------------------------------------------------------------------------
# the property


@dataclass
class Outcome:
    """``kind``: ok, refused, internal (an OnnxrepError saying "internal error"), mismatch,
    checker (the output fails the full checker), not-idempotent, unexplained (a node left
    without a reason), crash (any other exception), invalid (the generated input itself is
    rejected: a bug of this module)."""

    kind: str
    detail: str = ""
    folds: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.kind not in ("ok", "refused")


def check(case: FuzzCase, tolerances: dict[str, tuple[float, float]] | None = None) -> Outcome:
    """Optimize ``case.model`` and judge the result (see the module docstring)."""
    atol, rtol = (tolerances or TOLERANCES)[case.dtype]
    model = case.model
    before = model.SerializeToString()
    try:
        result = onnxrep.optimize(model)
    except onnxrep.OnnxrepError as e:
        kind = "internal" if "internal error" in str(e) else "refused"
        return Outcome(kind, str(e))
    except Exception as e:
        return Outcome("crash", f"optimize: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    folds = result.applied_by_pattern()
    if model.SerializeToString() != before:
        return Outcome("crash", "optimize modified its input", folds)
    try:
        onnx.checker.check_model(result.model, full_check=True)
    except Exception as e:
        return Outcome("checker", f"{type(e).__name__}: {e}", folds)
    try:
        cmp = onnxrep.compare(model, result.model, inputs=case.feeds, atol=atol, rtol=rtol)
    except Exception as e:
        return _compare_failure(case, e, folds)
    if not cmp.ok:
        return Outcome("mismatch", _diffs(cmp), folds)
    for feeds in _other_sizes(case):  # dynamic dims: exact for every size the input accepts
        if not _runs(model, feeds):
            continue  # the input itself only runs at the generated size
        try:
            cmp = onnxrep.compare(model, result.model, inputs=feeds, atol=atol, rtol=rtol)
        except Exception as e:
            return Outcome("crash", f"compare at {_sizes(feeds)}: {e}", folds)
        if not cmp.ok:
            return Outcome("mismatch", f"at {_sizes(feeds)}: {_diffs(cmp)}", folds)
    problem = _interface_problem(model, result.model)
    if problem:
        return Outcome("crash", problem, folds)
    silent = _unexplained(model, result)
    if silent:
        return Outcome("unexplained", f"left without a reason: {silent}", folds)
    try:
        again = onnxrep.optimize(result.model)
    except Exception as e:
        return Outcome("not-idempotent", f"second optimize raised {type(e).__name__}: {e}", folds)
    if again.model.SerializeToString() != result.model.SerializeToString():
        return Outcome("not-idempotent", f"second pass applied {again.applied_by_pattern()}",
                       folds)
    return Outcome("ok", "", folds)


def _considered(node: onnx.NodeProto, constants: set[str]) -> bool:
    """A node some fold family looked at: BN, a per-channel affine op, a sum of tensors, Pad,
    AveragePool."""
    consts = sum(1 for i in node.input if i in constants)
    if node.op_type in ("Mul", "Div", "Add", "Sub") and len(node.input) == 2 and consts == 1:
        return True
    if node.op_type in ("Add", "Sub", "Sum"):
        return not consts
    return node.op_type in ("BatchNormalization", "Pad", "AveragePool")


def _unexplained(model: onnx.ModelProto, result: onnxrep.OptimizeResult) -> list[str]:
    """Nodes of the input that stay in the output, were considered, and have no reason."""
    constants = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    mine = {(n.name, n.op_type) for n in model.graph.node if n.name}
    explained = {s.node for s in result.skipped}
    return sorted(f"{n.op_type} {n.name!r}" for n in result.model.graph.node
                  if (n.name, n.op_type) in mine and n.name not in explained
                  and _considered(n, constants))


def _diffs(cmp: onnxrep.CompareResult) -> str:
    return "; ".join(f"{o.name}: max abs {o.max_abs:.3g} (ref max {o.ref_max:.3g}, allowed "
                     f"{o.atol + o.rtol * o.ref_max:.3g}) {o.note}"
                     for o in cmp.outputs if not o.ok)


def _sizes(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}: {list(v.shape)}" for k, v in feeds.items())


def _other_sizes(case: FuzzCase) -> list[dict[str, np.ndarray]]:
    """Inputs of other sizes along the dims the model declares dynamic."""
    out = []
    rng = np.random.default_rng(len(case.model.graph.node))
    for grow in (1, 3):
        feeds = {}
        for vi in case.model.graph.input:
            shape = list(case.feeds[vi.name].shape)
            for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
                if dim.HasField("dim_param"):
                    shape[axis] += grow
            feeds[vi.name] = rng.standard_normal(shape).astype(case.dtype)
        if any(feeds[k].shape != case.feeds[k].shape for k in feeds):
            out.append(feeds)
    return out


def _runs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> bool:
    """The model runs on ``feeds`` in onnxruntime (quietly: no error log on failure)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
    except Exception:
        return False
    return True


def _interface_problem(before: onnx.ModelProto, after: onnx.ModelProto) -> str:
    """Inputs, outputs, shared initializers and names that an optimization must keep."""
    if list(after.graph.input) != list(before.graph.input):
        return "graph inputs changed"
    if list(after.graph.output) != list(before.graph.output):
        return "graph outputs changed"
    old = {t.name: t for t in before.graph.initializer}
    elem = before.graph.input[0].type.tensor_type.elem_type
    for t in after.graph.initializer:
        if t.name in old and t.SerializeToString() != old[t.name].SerializeToString():
            return f"initializer {t.name!r} was edited"
        floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
        if t.name not in old and t.data_type in floats and t.data_type != elem:
            return f"new initializer {t.name!r} has data type {t.data_type}"
    defined = [t.name for t in after.graph.initializer] + [o for n in after.graph.node
                                                           for o in n.output if o]
    if len(defined) != len(set(defined)):
        return "a tensor name is defined twice"
    names = [n.name for n in after.graph.node if n.name]
    if len(names) != len(set(names)):
        return "two nodes share a name"
    return ""


def _compare_failure(case: FuzzCase, error: Exception, folds: dict[str, int]) -> Outcome:
    """A compare that raised: is the generated input at fault, or the optimized model?"""
    from onnxrep.verify import session

    try:
        session(case.model, fallback=True).run(None, case.feeds)
    except Exception as e:
        return Outcome("invalid", f"the input does not run: {type(e).__name__}: {e}")
    return Outcome("crash", f"compare: {type(error).__name__}: {error}", folds)
