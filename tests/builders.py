"""A small builder of ONNX graphs for tests: weights are random, names are generated."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 17


class GraphBuilder:
    def __init__(self, dtype: type = np.float32, seed: int = 0, opset: int = OPSET) -> None:
        self.dtype = np.dtype(dtype)
        self.elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._ids = itertools.count()

    def name(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    def input(self, shape: Sequence[int | str | None], name: str | None = None,
              elem: int | None = None) -> str:
        name = name or self.name("x")
        self.inputs.append(helper.make_tensor_value_info(name, elem or self.elem, list(shape)))
        return name

    def init(self, values: np.ndarray, name: str | None = None, cast: bool = True) -> str:
        name = name or self.name("w")
        values = np.asarray(values)
        if cast and values.dtype.kind == "f":
            values = values.astype(self.dtype)
        self.inits.append(numpy_helper.from_array(values, name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: int = 1, name: str | None = None,
             **attrs: object) -> str:
        outs = [self.name(op.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op, list(inputs), outs, name=name or self.name(op), **attrs)
        )
        return outs[0]

    def conv(self, x: str, cin: int, cout: int, kernel: int | Sequence[int] = 3, *,
             stride: int | Sequence[int] = 1, pads: Sequence[int] | None = None,
             dilation: int | Sequence[int] = 1, group: int = 1, bias: bool = True,
             weight: str | None = None, rank: int = 2, **attrs: object) -> str:
        k = [kernel] * rank if isinstance(kernel, int) else list(kernel)
        r = len(k)
        w = weight or self.init(self.rng.standard_normal((cout, cin // group, *k)) * 0.3)
        inputs = [x, w]
        if bias:
            inputs.append(self.init(self.rng.standard_normal(cout) * 0.3))
        strides = [stride] * r if isinstance(stride, int) else list(stride)
        dil = [dilation] * r if isinstance(dilation, int) else list(dilation)
        if pads is None and "auto_pad" not in attrs:
            pads = [(kk - 1) * d // 2 for kk, d in zip(k, dil, strict=True)] * 2
        if pads is not None:
            attrs["pads"] = list(pads)
        return self.node("Conv", inputs, kernel_shape=k, strides=strides, dilations=dil,
                         group=group, **attrs)

    def bn_params(self, c: int) -> list[str]:
        gamma = self.rng.uniform(0.5, 1.5, c)
        beta = self.rng.standard_normal(c) * 0.3
        mean = self.rng.standard_normal(c) * 0.3
        var = self.rng.uniform(0.5, 1.5, c)
        return [self.init(v) for v in (gamma, beta, mean, var)]

    def bn(self, x: str, c: int, eps: float = 1e-5, **attrs: object) -> str:
        return self.node("BatchNormalization", [x, *self.bn_params(c)], epsilon=eps, **attrs)

    def model(self, outputs: Sequence[str], opset: int | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test", self.inputs,
            [helper.make_tensor_value_info(o, self.elem, None) for o in outputs],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset or self.opset)]
        )
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type for v in (*inferred.graph.value_info, *inferred.graph.output)}
        for out in model.graph.output:
            if out.name in types and types[out.name].tensor_type.HasField("shape"):
                out.type.CopyFrom(types[out.name])
        return model


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
