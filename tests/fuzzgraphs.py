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
BNs), sometimes *sparse* (float32 and float16 models of IR 4 or later: onnx's reference
evaluator, which runs the others, reads no sparse tensor). Graph outputs are every unread
tensor plus random intermediate ones. Inputs may declare dynamic batch and spatial dims (the
concrete sizes are in ``feeds``; outputs then leave their sizes open). Opsets 7 to the newest
onnx knows, the ops written as each opset has them (below 11: Pad's pads and value as
attributes, no ScatterND, no negative Concat axis; below 10 no ceil_mode; below 9 no Where, so
no border fill, and BN's ``spatial=1``); IR versions from the opset's lowest (3 for opsets 7
and 8, where every initializer is also a graph input) to the newest. The dtype is float32,
sometimes float16, float64 (opset 14 and later) or bfloat16 (opset 22 and later, where Conv
takes it; onnxruntime has no float64 or bfloat16 Conv, so these run in the reference
evaluator, and have no ConvTranspose or negative pads, which it fails on). Some cases are
optimized from files, their weights in external data. Shapes are tracked here and checked
against ONNX shape inference by the tests. Choices that change what can be folded are
hypothesis draws (so failures shrink); weights and cosmetic choices (attribute spelling, node
names) come from a seeded numpy generator.

``check(case)`` runs the property both tests/test_fuzz.py and benchmarks/fuzz.py use: optimize
either refuses cleanly (an OnnxrepError that neither says "internal error" nor quotes a Python
exception such as ``TypeError: ...``: those are bugs, for a valid model) or returns a model
that passes the full checker (the plain one where a sparse initializer is read: onnx's
inference cannot type it), keeps the graph inputs and outputs, every original initializer
byte for byte, unique tensor and node names and the model's float type, agrees with the input
in onnxruntime at ORT_DISABLE_ALL (or the reference evaluator) within ``TOLERANCES`` (also at
two other sizes of the dynamic dims, where the input runs),
gives every BN, per-channel affine op, sum, Pad and AveragePool it leaves a reason, and is
left byte-identical by a second optimize. A case with external data is also optimized by the
command line from its files (weights in one external file or one per tensor), which must
write the same model, and the result saved with external data must read back the same.
"""

from __future__ import annotations

import contextlib
import math
import re
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxrep
import onnxrep.io
from onnxrep.cli import main

__all__ = ["FEATURES", "KNOWN_BUGS", "TOLERANCES", "FuzzCase", "Outcome", "check", "fuzz_cases"]

NEWEST = onnx.defs.onnx_opset_version()
OPSETS = (17, *(o for o in range(7, NEWEST + 1) if o != 17))
"""Every opset from 7 (the first draw, where failures shrink to, is 17)."""
OLD_OPSET = 11
"""Below this opset Pad takes its pads as attributes and ScatterND does not exist."""
BF16_OPSET = 22
"""The first opset whose Conv accepts bfloat16."""
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

TOLERANCES = {
    # dtype → (atol, rtol x max|reference|), the verdict of onnxrep.compare
    "float32": (1e-4, 1e-4),
    "float16": (1e-2, 1e-2),
    "float64": (1e-9, 1e-9),
    # onnx's reference evaluator runs bfloat16 graphs and rounds after every op of the input
    "bfloat16": (5e-2, 5e-2),
}

FEATURES = (
    "conv", "convtranspose", "bn", "affine", "binary", "sum", "concat", "pad", "avgpool",
    "relu", "identity", "block", "shared", "float16", "dynamic", "auto_pad", "weight-node",
    "second-input", "rank-change", "intermediate-output", "dynamic-same-stride",
    "computed-weight", "border-fill", "small-pad-value", "float64", "bfloat16", "old-opset",
    "ir3", "sparse", "external",
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
    external: bool = False
    """Optimize it from files, its weights in external data (``check``)."""

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        ops = Counter(n.op_type for n in self.model.graph.node)
        text = onnx.printer.to_text(self.model.graph)
        return (f"FuzzCase({self.dtype}, opset {self.model.opset_import[0].version}, IR "
                f"{self.model.ir_version}, {dict(ops)}, features={sorted(self.features)})"
                f"\n{text}")


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]


class _Graph:
    """The graph under construction (structural choices are hypothesis draws: they shrink)."""

    def __init__(self, draw: Callable, exclude: frozenset[str], dtype: np.dtype, opset: int,
                 rng: np.random.Generator, ir: int = 8) -> None:
        self.draw = draw
        self.exclude = exclude
        self.dtype = dtype
        self.elem = helper.np_dtype_to_tensor_dtype(dtype)
        self.opset = opset
        self.ir = ir
        self.rng = rng
        self.sparse: dict[str, onnx.SparseTensorProto] = {}
        # float64 and bfloat16 Conv run in onnx's reference evaluator, not in onnxruntime: no
        # sparse tensor, negative pads or ConvTranspose then (the evaluator fails on them)
        self.reference = dtype not in (np.float32, np.float16)
        self.sparse_ok = ir >= 4 and not self.reference
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
        if _float(values.dtype):
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
        if node_ok and _float(values.dtype) and self.chance("computed-weight", 8):
            return self.computed(values, name)
        if (_float(values.dtype) and values.ndim and self.sparse_ok
                and self.chance("sparse", 4)):
            self.features.add("sparse")  # a sparse initializer: no rule reads it as a constant
            flat = values.reshape(-1)
            where = np.flatnonzero(flat != 0).astype(np.int64)
            self.sparse[name] = helper.make_sparse_tensor(
                numpy_helper.from_array(flat[where], name), numpy_helper.from_array(where),
                list(values.shape))
            return name
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
        if self.opset < 9 and self.coin(50):
            attrs["spatial"] = 1  # opsets 7 and 8 still have it
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
        written = axis if self.coin(70) or self.opset < 11 else axis - len(t.shape)
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
            if (mode != "reflect" and self.opset >= OLD_OPSET and not self.reference
                    and self.chance(None, 10)):  # a crop
                i = self.int(2, r - 1)
                if t.shape[i] > 1:
                    begins[i] = -1
            if mode == "reflect":  # reflect needs pads smaller than the size
                begins = [min(p, t.shape[i] - 1) for i, p in enumerate(begins)]
                ends = [min(p, t.shape[i] - 1) for i, p in enumerate(ends)]
            pads = (*begins, *ends)
        old = self.opset < OLD_OPSET  # Pad-2: pads and value are attributes
        inputs = [t.name] if old else [t.name, self.constant(np.array(pads, np.int64),
                                                             node_ok=False)]
        attrs: dict[str, object] = {} if mode == "constant" and self.coin(50) else {"mode": mode}
        if old:
            attrs["pads"] = list(pads)
        if mode == "constant" and self.chance(None, 40):
            value = 0.0 if not self.chance(None, 40) else float(self.rng.uniform(-1, 1))
            if "small-pad-value" in self.exclude and 0 < abs(value) < 0.1:
                value = math.copysign(0.1, value)
            value = float(np.array(value, self.dtype).astype(np.float64))  # exact in the dtype
            if old:
                attrs["value"] = value
            else:
                inputs.append(self.constant(np.array(value, self.dtype), node_ok=False))
        shape = tuple(d + pads[i] + pads[r + i] for i, d in enumerate(t.shape))
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
        ceil = self.opset >= 10 and self.chance(None, 15) and all(  # ceil_mode is opset 10;
            (-(-spans[i] // stride[i])) * stride[i] < size[i] + pads[i]  # a last window
            for i in range(r)  # starting in the end pad is dropped or not by opset: left out
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
        if self.opset < 9:  # no Where yet: the border stays 0
            return padded
        shape = padded.shape
        if self.chance(None, 10):  # a wrong value: must be refused
            fill = fill + np.eye(1, c, self.int(0, c - 1)).reshape(-1) * 0.5
        mask = np.ones((1, 1, *shape[2:]), bool)
        mask[(0, 0, *(slice(pads[i], pads[i] + size[i]) for i in range(r)))] = False
        if self.chance(None, 10):  # only part of the border: the rest stays 0
            mask[(0, 0, *(slice(None) for _ in range(r - 1)), slice(0, 1))] = False
        values = fill.reshape((1, c) + (1,) * r)
        if self.opset < OLD_OPSET or self.chance(None, 50):  # ScatterND is opset 11
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
        graph.sparse_initializer.extend(self.sparse.values())
        if self.ir < 4:  # IR 3: every initializer is a graph input too
            graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                               for t in self.inits.values())
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = self.ir
        return model


@st.composite
def fuzz_cases(draw: Callable, exclude: frozenset[str] = frozenset(), max_steps: int = 8,
               float16: bool = True) -> FuzzCase:
    """A random valid model (see the module docstring) and concrete inputs for it."""
    exclude = frozenset(exclude) | (frozenset() if float16 else {"float16"})
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    probe = _Graph(draw, exclude, np.dtype(np.float32), 17, rng)
    dtype = np.dtype(np.float32)
    for name, percent in (("float16", 15), ("float64", 8), ("bfloat16", 8)):
        if probe.chance(name, percent):
            dtype = BFLOAT16 if name == "bfloat16" else np.dtype(name)
            break
    opsets = [o for o in OPSETS if (o >= OLD_OPSET or "old-opset" not in exclude)
              and (o >= BF16_OPSET or dtype != BFLOAT16)
              and (o >= 14 or dtype != np.float64)]  # float64 runs in onnx's reference
    # evaluator (onnxruntime has no float64 Conv), whose BatchNormalization before opset 14 is
    # wrong (-7 returns a tuple, -9 ignores the channel axis)
    opset = draw(st.sampled_from(opsets))
    lowest = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    ir = lowest if not probe.chance(None, 30) else draw(st.integers(lowest, onnx.IR_VERSION))
    if ir < 4 and "ir3" in exclude:
        ir = 4
    g = _Graph(draw, exclude, dtype, opset, rng, ir)
    if dtype != np.float32:
        g.features.add(dtype.name)
    if opset < OLD_OPSET:
        g.features.add("old-opset")
    if ir < 4:
        g.features.add("ir3")
    external = g.chance("external", 8)
    if external:
        g.features.add("external")
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
    ops = [op for op in SINGLE_OPS if op not in exclude
           and not (op == "convtranspose" and g.reference)]
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
    return FuzzCase(model, feeds, dtype.name, frozenset(g.features), dict(g.shapes), external)


def _float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == BFLOAT16


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


BUG = re.compile(r"internal error|\b[A-Z]\w*(Error|Exception|Warning): ")
"""A message that is a bug for a valid model: "internal error", or one quoting a Python
exception (``TypeError: ...``)."""


def _refusal(message: str) -> Outcome:
    return Outcome("internal" if BUG.search(message) else "refused", message)


def check(case: FuzzCase, tolerances: dict[str, tuple[float, float]] | None = None) -> Outcome:
    """Optimize ``case.model`` and judge the result (see the module docstring)."""
    atol, rtol = (tolerances or TOLERANCES)[case.dtype]
    model = case.model
    before = model.SerializeToString()
    try:
        result = onnxrep.optimize(model)
    except onnxrep.OnnxrepError as e:
        return _refusal(str(e))
    except Exception as e:
        return Outcome("crash", f"optimize: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    folds = result.applied_by_pattern()
    if model.SerializeToString() != before:
        return Outcome("crash", "optimize modified its input", folds)
    if case.external:
        problem = _through_files(model, result.model)
        if problem is not None:
            return Outcome(problem.kind, problem.detail, folds)
    try:  # onnx's inference cannot type a sparse initializer an op reads: its full check fails
        onnx.checker.check_model(result.model, full_check=not model.graph.sparse_initializer)
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


def _through_files(model: onnx.ModelProto, expected: onnx.ModelProto) -> Outcome | None:
    """The command line on ``model`` saved with its weights in external data files must write
    what ``optimize`` returned in memory; so must ``io.save`` with external data, read back."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src, out = folder / "model.onnx", folder / "out" / "model.onnx"
        out.parent.mkdir()
        one_file = len(model.graph.node) % 2 == 0
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # onnx's writer moves the tensors' bytes out of the model it saves
        onnx.save_model(copy, src, save_as_external_data=True, size_threshold=0,
                        all_tensors_to_one_file=one_file, location="weights.bin")
        err = StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(StringIO()):
            code = main(["optimize", str(src), "-o", str(out), "-q"])
        if code != 0:
            message = err.getvalue().strip()
            return Outcome("internal" if BUG.search(message) else "crash",
                           f"optimize from external data exited {code}: {message}")
        written = onnxrep.io.load(out)
        if not _same_model(written, expected):
            return Outcome("crash", "optimize from external data wrote another model")
        onnxrep.io.save(expected, out, external=True)
        if not _same_model(onnxrep.io.load(out), expected):
            return Outcome("crash", "a model saved with external data reads back different")
    return None


def _same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """Same nodes, interface and initializer values (their encodings may differ: a tensor read
    from external data says so in fields a tensor made in memory leaves unset)."""
    def values(m: onnx.ModelProto) -> dict[str, tuple[int, bytes]]:
        return {t.name: (t.data_type, numpy_helper.to_array(t).tobytes())
                for t in m.graph.initializer}

    ga, gb = a.graph, b.graph
    return (list(ga.node) == list(gb.node) and list(ga.input) == list(gb.input)
            and list(ga.output) == list(gb.output) and values(a) == values(b)
            and list(ga.sparse_initializer) == list(gb.sparse_initializer))


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
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output} | {
        s.values.name for s in model.graph.sparse_initializer}
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
            if vi.name not in case.feeds:  # IR 3: an initializer listed as an input
                continue
            shape = list(case.feeds[vi.name].shape)
            for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
                if dim.HasField("dim_param"):
                    shape[axis] += grow
            feeds[vi.name] = rng.standard_normal(shape).astype(case.feeds[vi.name].dtype)
        if any(feeds[k].shape != case.feeds[k].shape for k in feeds):
            out.append(feeds)
    return out


def _runs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> bool:
    """The model runs on ``feeds`` in onnxruntime (quietly: no error log on failure), or in
    onnx's reference evaluator where onnxruntime has no kernel (float64 and bfloat16 Conv)."""
    import onnxruntime

    from onnxrep.verify import ReferenceSession

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        if any(v.dtype == BFLOAT16 for v in feeds.values()):  # onnxruntime takes none
            sess = ReferenceSession(model)
        else:
            try:
                sess = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])
            except Exception as e:
                if "NOT_IMPLEMENTED" not in str(e):
                    return False
                sess = ReferenceSession(model)
        sess.run(None, feeds)
    except Exception:
        return False
    return True


def _interface_problem(before: onnx.ModelProto, after: onnx.ModelProto) -> str:
    """Inputs, outputs, shared initializers and names that an optimization must keep."""
    def inputs(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
        inits = {t.name for t in m.graph.initializer} if m.ir_version < 4 else set()
        return [v for v in m.graph.input if v.name not in inits]

    if inputs(after) != inputs(before):
        return "graph inputs changed"
    if after.ir_version < 4 and {v.name for v in after.graph.input} != {v.name for v in inputs(
            after)} | {t.name for t in after.graph.initializer}:
        return "IR 3: the initializers are not exactly the inputs beyond the graph's own"
    if list(after.graph.output) != list(before.graph.output):
        return "graph outputs changed"
    if list(after.graph.sparse_initializer) != list(before.graph.sparse_initializer):
        return "sparse initializers changed"
    old = {t.name: t for t in before.graph.initializer}
    elem = before.graph.input[0].type.tensor_type.elem_type
    for t in after.graph.initializer:
        if t.name in old and t.SerializeToString() != old[t.name].SerializeToString():
            return f"initializer {t.name!r} was edited"
        floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE,
                  TensorProto.BFLOAT16)
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
