"""Pattern families and the default pass order.

Every family can be switched off by name (``--skip NAME``); the region families are rules of
one pass (see ``regions``), the dense-layer families are chain passes of their own.
"""

from __future__ import annotations

from onnxrep.passes import (  # noqa: F401  (importing registers the rules)
    affine,
    branches,
    concat,
    conv_bn,
    padding,
    pooling,
    sequential,
)

FAMILIES: dict[str, str] = {
    "conv-bn": "BatchNormalization after a Conv, or on a branch input (identity branch)",
    "conv-affine": "Mul/Add/Sub/Div by a scalar or per-channel constant after a Conv",
    "branches": "Add/Sub/Sum of parallel branches on one tensor",
    "sequential": "a Conv reading another Conv (1x1 then kxk, kxk then 1x1)",
    "concat": "Concat of parallel convolutions on one tensor",
    "avgpool": "AveragePool inside a region, as a depthwise conv",
    "pad": "zero Pad before a Conv, merged into its pads",
}
"""Family name → what it folds; the names ``--skip`` accepts."""
