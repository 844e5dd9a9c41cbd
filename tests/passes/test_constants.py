"""Constant subgraphs: weights computed in ``forward`` fold whatever their size; folds that
would only grow the model do not."""

from __future__ import annotations

import numpy as np
import pytest

from tests.builders import GraphBuilder
from tests.helpers import optimized

BIG = 384
"""Channels of a 3x3 kernel of 5.06 MiB of float32, over the 4 MiB size limit."""


def _orepa_like(b: GraphBuilder, x: str, c: int) -> str:
    """OREPA builds its kernel in forward: an origin kxk kernel scaled per output channel, plus
    a 1x1 kernel padded to 3x3 and an Einsum of a 1x1 with a fixed prior, all summed."""
    origin = b.init(b.rng.standard_normal((c, c, 3, 3)) * 0.05)
    vec = b.init(b.rng.uniform(0.5, 1.5, (c, 1, 1, 1)))
    pointwise = b.init(b.rng.standard_normal((c, c, 1, 1)) * 0.05)
    padded = b.node("Pad", [pointwise, b.init(np.array([0, 0, 1, 1, 0, 0, 1, 1]))])
    mix = b.init(b.rng.standard_normal((c, c)) * 0.05)
    prior = b.init(b.rng.standard_normal((c, 3, 3)) * 0.3)
    einsum = b.node("Einsum", [mix, prior], equation="oi,ikl->oikl")
    weight = b.node("Sum", [b.node("Mul", [origin, vec]), padded, einsum])
    return b.bn(b.node("Conv", [x, weight], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), c)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64],
                         ids=["fp32", "fp16", "fp64"])
def test_a_generated_kernel_folds(dtype: type) -> None:
    b = GraphBuilder(dtype, seed=20)
    x = b.input([1, 8, 6, 6])
    r = optimized(b.model([b.node("Relu", [_orepa_like(b, x, 8)])]), {"Conv": 1, "Relu": 1},
                  dtype=np.dtype(dtype).name)
    assert r.applied_by_pattern() == {"conv-bn": 1}


def test_a_generated_kernel_over_the_size_limit_folds() -> None:
    """5 MiB of float32 computed from parameters: folded, then its BN folds as well."""
    b = GraphBuilder(seed=21)
    x = b.input([1, BIG, 6, 6])
    r = optimized(b.model([b.node("Relu", [_orepa_like(b, x, BIG)])]), {"Conv": 1, "Relu": 1})
    assert r.applied_by_pattern() == {"conv-bn": 1}
    (weight,) = [t for t in r.model.graph.initializer if len(t.dims) == 4]
    assert list(weight.dims) == [BIG, BIG, 3, 3]
    assert r.after.params < r.before.params  # the generating parameters are gone


def test_a_fold_that_grows_the_model_is_left_to_run_time() -> None:
    """An Expand of one value to a 16 MiB activation-sized tensor stays an Expand."""
    b = GraphBuilder(seed=22)
    x = b.input([1, 64, 256, 256])
    full = b.node("Expand", [b.init(np.array([0.5])), b.init(np.array([1, 64, 256, 256]))])
    model = b.model([b.node("Add", [x, full])])
    r = optimized(model, {"Expand": 1, "Add": 1})
    assert r.after.bytes < 1 << 20


def test_a_small_expand_still_folds() -> None:
    b = GraphBuilder(seed=23)
    x = b.input([1, 8, 4, 4])
    scale = b.node("Expand", [b.init(np.array([2.0])), b.init(np.array([1, 8, 1, 1]))])
    optimized(b.model([b.node("Mul", [b.conv(x, 8, 8, 3), scale])]), {"Conv": 1})
