"""Op-level benchmark of lcfast::crossing_act (C++ CPU kernel) against the reference
expression (crossing rule with amin/amax + torch.relu), side by side in one run; and
lcfast::row_gram against ``(g @ g.mT).to(torch.float64)`` (end of the file).

    python -m pytest benchmarks/test_bench_native_op.py --benchmark-only

Shapes (float32, V = 50 vertices per point): an MLP site (51,200 x 200) and a
ResNet-stage-1 conv site (400 x 64 x 56 x 56).  Two pairs per shape:

* ``out``: the op vs ``crossing_counts(pre) + torch.relu(pre)`` (the reference
  backend's :func:`lcfast.engine.reference.crossing_counts`); both allocate a fresh
  output.  On the CI VM a fresh 321 MB buffer costs ~120 ms of page faults (measured:
  torch.relu 146 ms vs 27 ms for torch.relu_ on the conv shape, one thread), which
  bounds the speedup of the conv shape for any out-of-place kernel.
* ``inplace``: ``crossing_act_`` vs ``crossing_counts(pre) + pre.relu_()`` (what a
  model with ``nn.ReLU(inplace=True)`` such as torchvision's ResNets runs).  Both are
  value-independent (branch-free), so repeating them on the same tensor is fair.

``extra_info`` carries ``speedup_vs_reference`` (reference median / this median, same
run, same shape and pair).  Not a test of timing: counts and outputs are checked for
equality once before timing.

lcfast::absmax_rows (the offsets engine's screen, ``max_{p < P} |a_p|``) against its
torch expression ``torch.maximum(a.amax(1), -a.amin(1))`` on the first ``P = 25`` of
``R = 25`` rows, float32: the MNIST MLP screen (1000 points x 200 neurons) and a
ResNet-stage-1 site (2 points x 64*56*56).  The op's row carries
``speedup_vs_torch``; outputs are checked for equality once before timing.
"""
from __future__ import annotations

import pytest
import torch

from lcfast import _extension
from lcfast.engine.reference import crossing_counts  # the crossing rule, written once
from lcfast.ops.absmax_rows import absmax_rows_torch

pytestmark = pytest.mark.skipif(not _extension.available(), reason=f"lcfast._C not built: {_extension.ERROR}")

V = 50
SHAPES = {"mlp_51200x200": (51200, 200), "conv_400x64x56x56": (400, 64, 56, 56)}
# reference first in each pair, so that the op's row can carry the ratio
CASES = [(s, pair, m) for s in SHAPES for pair in ("out", "inplace") for m in ("reference", "native_op")]
_MEDIANS: dict = {}
_TENSORS: dict = {}


def _pre(shape_name: str) -> torch.Tensor:
    if shape_name not in _TENSORS:
        _TENSORS.clear()  # keep one large tensor alive at a time
        g = torch.Generator().manual_seed(0)
        _TENSORS[shape_name] = torch.randn(*SHAPES[shape_name], generator=g)
    return _TENSORS[shape_name]


def _fn(pair: str, method: str, pre: torch.Tensor):
    if method == "reference":
        if pair == "out":
            return lambda: (torch.relu(pre), crossing_counts(pre, V))
        return lambda: (crossing_counts(pre, V), pre.relu_())
    if pair == "out":
        return lambda: torch.ops.lcfast.crossing_act(pre, V, "relu", 0.0)
    return lambda: torch.ops.lcfast.crossing_act_(pre, V, "relu", 0.0)


@pytest.mark.parametrize("shape_name,pair,method", CASES, ids=[f"{s}-{p}-{m}" for s, p, m in CASES])
def test_bench_crossing_act(benchmark, shape_name, pair, method):
    pre = _pre(shape_name)
    if method == "native_op" and pair == "out":  # correctness once, outside the timing
        out, c = torch.ops.lcfast.crossing_act(pre, V, "relu", 0.0)
        assert torch.equal(c, crossing_counts(pre, V)) and torch.equal(out, torch.relu(pre))
    fn = _fn(pair, method, pre)
    benchmark.group = f"crossing_act {shape_name} {pair}"
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    med = benchmark.stats.stats.median
    _MEDIANS[(shape_name, pair, method)] = med
    ref = _MEDIANS.get((shape_name, pair, "reference"))
    benchmark.extra_info.update(
        shape=list(SHAPES[shape_name]), V=V, dtype="float32", pair=pair, method=method,
        threads=torch.get_num_threads(),
        speedup_vs_reference=(ref / med) if ref else None)


ABSMAX_SHAPES = {"mlp_1000x25x200": (1000, 25, 200), "conv_2x25x64x56x56": (2, 25, 64 * 56 * 56)}
ABSMAX_ROWS = 25
# torch first in each pair, so that the op's row can carry the ratio
ABSMAX_CASES = [(s, m) for s in ABSMAX_SHAPES for m in ("torch", "native_op")]


@pytest.mark.parametrize("shape_name,method", ABSMAX_CASES, ids=[f"{s}-{m}" for s, m in ABSMAX_CASES])
def test_bench_absmax_rows(benchmark, shape_name, method):
    key = ("absmax", shape_name)
    if key not in _TENSORS:
        _TENSORS.clear()
        g = torch.Generator().manual_seed(0)
        _TENSORS[key] = torch.randn(*ABSMAX_SHAPES[shape_name], generator=g)
    a = _TENSORS[key]
    if method == "native_op":
        fn = lambda: torch.ops.lcfast.absmax_rows(a, ABSMAX_ROWS)  # noqa: E731
        assert torch.equal(fn(), absmax_rows_torch(a, ABSMAX_ROWS))
    else:
        fn = lambda: absmax_rows_torch(a, ABSMAX_ROWS)  # noqa: E731
    benchmark.group = f"absmax_rows {shape_name}"
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    med = benchmark.stats.stats.median
    _MEDIANS[key + (method,)] = med
    ref = _MEDIANS.get(key + ("torch",))
    benchmark.extra_info.update(
        shape=list(ABSMAX_SHAPES[shape_name]), rows=ABSMAX_ROWS, dtype="float32", method=method,
        threads=torch.get_num_threads(), speedup_vs_torch=(ref / med) if (ref and method != "torch") else None)


# lcfast::row_gram (csrc/row_gram_cpu.cpp) against the expression it replaces in
# lcfast.frames, on MNIST-sized frames (1,000 points x 25 rows x 784) and two ImageNet-
# sized ones (2 x 25 x 3x224x224); torch first so the op's row carries the ratio.
GRAM_SHAPES = {"mnist_1000x25x784": (1000, 25, 784), "imagenet_2x25x150528": (2, 25, 3 * 224 * 224)}
GRAM_CASES = [(s, m) for s in GRAM_SHAPES for m in ("torch", "native_op")]


@pytest.mark.parametrize("shape_name,method", GRAM_CASES, ids=[f"{s}-{m}" for s, m in GRAM_CASES])
def test_bench_row_gram(benchmark, shape_name, method):
    from lcfast.ops.row_gram import row_gram_torch

    g = torch.randn(*GRAM_SHAPES[shape_name], generator=torch.Generator().manual_seed(0))
    fn = (lambda: row_gram_torch(g)) if method == "torch" else (lambda: torch.ops.lcfast.row_gram(g))
    if method == "native_op":  # correctness once, outside the timing (float32 bmm's error ~4e-7)
        assert torch.allclose(fn(), row_gram_torch(g.double()), rtol=0, atol=1e-5 * g.shape[-1])
    benchmark.group = f"row_gram {shape_name}"
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    med = benchmark.stats.stats.median
    _MEDIANS[("row_gram", shape_name, method)] = med
    ref = _MEDIANS.get(("row_gram", shape_name, "torch"))
    benchmark.extra_info.update(shape=list(GRAM_SHAPES[shape_name]), dtype="float32", method=method,
                                threads=torch.get_num_threads(), speedup_vs_reference=(ref / med) if ref else None)
