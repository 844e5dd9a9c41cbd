"""Every pattern family, in one place: the single source of truth.

A family has a name (what ``--skip`` takes and what reports label folds with), what it folds
(before → after, the README's table, which a test holds to this list), the stage it runs in,
and the module that implements it. Everything else derives from this tuple: the command
line's choices, the pass order (``prepare`` families first, then the one region pass with
every ``regions`` family's rules, then each ``pass`` family in order), and the label of a
rewritten region (the first ``regions`` family in this order that it used). Adding a family
is one entry here and its module; the module's rules name the family they belong to, and an
unknown name is an error at import.

This module imports nothing heavy: the command line reads it before onnx is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAMILIES", "NAMES", "Family", "family"]


@dataclass(frozen=True)
class Family:
    name: str
    before: str
    after: str
    stage: str
    """``prepare`` (before the passes), ``regions`` (rules of the region pass) or ``pass``."""
    module: str
    runtime_does_it: bool = False
    """onnxruntime makes this fold itself when it loads a model: alone it buys no speed."""

    @property
    def summary(self) -> str:
        return f"{self.before} → {self.after}"


FAMILIES: tuple[Family, ...] = (
    Family("constants", "constant subgraphs: exporter shape arithmetic, kernels computed in "
           "forward", "initializers (evaluated in numpy, shapes from onnx shape inference)",
           "prepare",
           "onnxrep.passes.constants"),
    Family("branches", "Add/Sub/Sum of branches of one tensor; of several tensors, per tensor",
           "one Conv (or one Conv per tensor and an Add)", "regions", "onnxrep.passes.branches"),
    Family("concat", "Concat(Conv_1(x), Conv_2(x)) on channels", "one Conv", "regions",
           "onnxrep.passes.concat"),
    Family("sequential", "Conv3x3(Conv1x1(x)), Conv1x1(Conv3x3(x))", "one Conv, where exact",
           "regions", "onnxrep.passes.sequential"),
    Family("dense", "Gemm/MatMul with constant weights: BN or a per-feature affine after or "
           "before them (2-D, and N-D token features), sums of parallel ones ((Linear_a(x) + "
           "Linear_b(x)) / 2)", "one Gemm (MatMul and Add on N-D inputs)", "regions",
           "onnxrep.passes.dense"),
    Family("commute", "BN or a 1x1 conv, then GlobalAveragePool / ReduceMean over space / "
           "Flatten / a Reshape that keeps the channel axis, then a dense layer; a dense "
           "layer, then token features transposed to axis 1 and back around a BN",
           "the data movement first, the map inside the dense layer", "regions",
           "onnxrep.passes.dense"),
    Family("avgpool", "AveragePool inside a region", "part of the Conv (a depthwise kernel)",
           "regions", "onnxrep.passes.pooling"),
    Family("border-fill", "exported \"BN and pad\" (Pad + ScatterND/Transpose chains writing "
           "BN(0) into the border)", "part of the next Conv", "regions",
           "onnxrep.passes.border"),
    Family("pad", "zero Pad before a Conv", "the Conv's pads", "regions",
           "onnxrep.passes.padding"),
    Family("conv-bn", "BN(Conv(x)); BN(x) as a branch or before a conv", "Conv'(x)",
           "regions", "onnxrep.passes.conv_bn", runtime_does_it=True),
    Family("conv-affine", "Mul/Add/Sub/Div(Conv(x), c), c a scalar or per channel, either "
           "operand order", "Conv'(x)", "regions", "onnxrep.passes.affine",
           runtime_does_it=True),
    Family("convtranspose-bn", "BN(ConvTranspose(x)) (grouped too)", "ConvTranspose'(x)",
           "pass", "onnxrep.passes.conv_transpose", runtime_does_it=True),
)

NAMES: tuple[str, ...] = tuple(f.name for f in FAMILIES)


def family(name: str, stage: str | None = None) -> Family:
    """The family called ``name`` (of ``stage``, if given); an unknown one is a bug."""
    for f in FAMILIES:
        if f.name == name and (stage is None or f.stage == stage):
            return f
    raise LookupError(f"no {stage or ''} family {name!r} in onnxrep.families")
