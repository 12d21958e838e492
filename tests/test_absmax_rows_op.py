"""lcfast::absmax_rows (C++ CPU kernel, lcfast/ops/absmax_rows.py) against the torch
expression of the offsets engine's screen, ``torch.maximum(a.amax(1), -a.amin(1))`` over
the first rows, and against an independent float64 ``abs().amax``; opcheck; NaN/inf;
and the offsets engine's results with the op and with the fallback."""
from __future__ import annotations

import os

import pytest
import torch

import zoo
from lcfast import _extension
from lcfast.engine.offsets import offsets_local_complexity, screen
from lcfast.engine.offsets.tensor import to_pts
from lcfast.neighborhood import random_frames
from lcfast.ops.absmax_rows import DTYPES, absmax_rows, absmax_rows_torch

native = pytest.mark.skipif(not _extension.has_kernel("absmax_rows", "cpu"),
                            reason=f"lcfast._C without absmax_rows: {_extension.ERROR}")

# (N, R, F, rows): R == rows, rows < R, one row, F = 1, N = 0, F over the CPU kernel's
# 2048-neuron block (a partial second block), many points
SHAPES = [(7, 5, 33, 5), (7, 5, 33, 3), (4, 2, 9, 1), (6, 4, 1, 4), (0, 3, 5, 2), (3, 1, 1, 1),
          (2, 3, 4100, 2), (300, 26, 200, 25)]


def _values(shape, dtype, seed=0):
    """Random values with exact zeros, -0.0, ties of |x| with opposite signs and rows
    where the negative side is the larger."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 4
    r = torch.rand(shape, generator=g)
    x = torch.where(r < 0.05, torch.zeros_like(x), x)
    x = torch.where((r >= 0.05) & (r < 0.1), -torch.zeros_like(x), x)
    if shape[0] and shape[1] >= 2:
        x[:, 1] = torch.where(r[:, 1] < 0.2, -x[:, 0], x[:, 1])  # |x| ties, opposite signs
    return x.to(dtype)


def _independent(a: torch.Tensor, rows: int) -> torch.Tensor:
    """max |x| in float64 (every dtype here converts to float64 exactly), cast back."""
    return a[:, :rows].double().abs().amax(1).to(a.dtype) if a.shape[0] else a.new_empty((0, a.shape[2]))


def _check(a, rows):
    out = absmax_rows(a, rows)
    assert out.shape == (a.shape[0], a.shape[2]) and out.dtype == a.dtype and out.is_contiguous()
    assert torch.equal(out, absmax_rows_torch(a, rows))  # values; -0.0 == +0.0
    assert torch.equal(out, _independent(a, rows))
    assert not torch.signbit(out).any()  # |x|: a zero result is +0.0
    return out


@native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,R,F,rows", SHAPES)
def test_equals_torch_expression(N, R, F, rows, dtype):
    a = _values((N, R, F), dtype)
    _check(a, rows)
    # views the op reads with their strides: rows of a wider tensor, points reversed
    wide = _values((N, R + 3, F), dtype, seed=1)
    _check(wide[:, 2:2 + R], rows)
    _check(a.flip(0) if N else a, rows)
    # neurons not adjacent (copied by the op): a transposed layout
    _check(_values((F, R, N), dtype, seed=2).permute(2, 1, 0), rows)


@native
def test_engine_views():
    """The views the engine passes: to_pts of a split form whose batch leads (a view,
    rows narrowed by the op) and of one whose batch does not (to_pts copies)."""
    t4 = _values((1, 12, 7, 1, 30), torch.float32)  # (outer, pts, rows, inner, F)
    _check(to_pts(t4, 0), 4)
    t4 = _values((3, 12, 7, 5, 2), torch.float32).permute(4, 0, 1, 2, 3)  # batch dim 1, permuted
    _check(to_pts(t4, 1), 6)


@native
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf(dtype):
    """A NaN among the first rows gives NaN (as amax/amin propagate it); a NaN in a row
    past ``rows`` is not read; +-inf gives +inf."""
    a = _values((5, 4, 10), dtype)
    a[0, 1, 3] = float("nan")
    a[1, 0, 4] = -float("nan")
    a[2, 3, 5] = float("nan")  # past rows = 3
    a[3, 2, 6] = -float("inf")
    a[4, 0, 7] = float("inf")
    a[4, 1, 7] = float("nan")  # NaN beats inf
    out, ref = absmax_rows(a, 3), absmax_rows_torch(a, 3)
    assert torch.equal(out.isnan(), ref.isnan())
    assert out[0, 3].isnan() and out[1, 4].isnan() and out[4, 7].isnan() and not out[2, 5].isnan()
    assert out[3, 6] == float("inf")
    keep = ~ref.isnan()
    assert torch.equal(out[keep], ref[keep])
    # all rows NaN, and every neuron: the whole output NaN
    assert absmax_rows(torch.full((2, 3, 17), float("nan"), dtype=dtype), 2).isnan().all()


@native
def test_opcheck_and_bad_input():
    for a, rows in [(_values((4, 5, 6), torch.float32), 3), (_values((0, 2, 3), torch.float64), 2),
                    (_values((3, 4, 8), torch.bfloat16)[:, 1:], 2), (_values((3, 2, 5), torch.float16), 1)]:
        torch.library.opcheck(torch.ops.lcfast.absmax_rows.default, (a, rows))
    with pytest.raises(RuntimeError, match="rows must be in"):
        torch.ops.lcfast.absmax_rows(torch.zeros(2, 3, 4), 4)
    with pytest.raises(RuntimeError, match="must be float32"):
        torch.ops.lcfast.absmax_rows(torch.zeros(2, 3, 4, dtype=torch.int32), 1)
    with pytest.raises(RuntimeError, match="must be 3-d"):
        torch.ops.lcfast.absmax_rows(torch.zeros(2, 3), 1)


def test_wrapper_bad_input():
    with pytest.raises(ValueError, match="rows"):
        absmax_rows(torch.zeros(2, 3, 4), 0)
    with pytest.raises(ValueError, match="rows"):
        absmax_rows(torch.zeros(2, 3), 1)
    with pytest.raises(TypeError, match="a must be"):
        absmax_rows(torch.zeros(2, 3, 4, dtype=torch.int64), 1)


def _run(monkeypatch, native_op: bool, model, x, dirs, radius, dtype):
    """The engine's result, the op used or not at every screen call (spied), and whether
    the dense branch of s_bound ran."""
    calls, dense = [], []
    real_has, real_absmax, real_s_bound = _extension.has_kernel, screen.absmax_rows, screen.s_bound
    if not native_op:
        monkeypatch.setattr(_extension, "has_kernel", lambda op, dev: op != "absmax_rows" and real_has(op, dev))

    def spy(a, rows):
        calls.append(_extension.has_kernel("absmax_rows", a.device.type))
        return real_absmax(a, rows)

    def spy_s_bound(x_):
        dense.append(x_.coef is None)
        return real_s_bound(x_)

    monkeypatch.setattr(screen, "absmax_rows", spy)
    monkeypatch.setattr(screen, "s_bound", spy_s_bound)
    try:
        res = offsets_local_complexity(model, x, radius=radius, directions=dirs, dtype=dtype)
    finally:
        monkeypatch.undo()
    assert calls and all(c == native_op for c in calls)
    return res, any(dense)


@native
@pytest.mark.parametrize("name,radius,dtype", [("mlp", 5.0, torch.float32), ("mlp", 0.3, torch.bfloat16),
                                               ("cnn", 0.5, torch.float32), ("cnn", 0.05, torch.float64)])
def test_engine_same_with_and_without_op(monkeypatch, name, radius, dtype):
    model, shape = {"mlp": (zoo.mlp(), (20,)), "cnn": (zoo.cnn(), (3, 16, 16))}[name]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, *shape, generator=g)
    dirs = random_frames(shape, 5, 7, torch.arange(6))
    with_op, dense_a = _run(monkeypatch, True, model, x, dirs, radius, dtype)
    without, dense_b = _run(monkeypatch, False, model, x, dirs, radius, dtype)
    assert dense_a == dense_b
    if (name, radius) == ("mlp", 5.0):
        assert dense_a  # the dense symmetric branch of the screen was exercised
    assert torch.equal(with_op.counts, without.counts)
    assert with_op.names == without.names and with_op.meta == without.meta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_equals_torch_expression(dtype):
    """The CUDA kernel (run by benchmarks/gpu_check.sh, ``-k cuda``; with
    ``LCFAST_REQUIRE_CUDA_KERNEL=1`` a build without it fails instead of skipping)."""
    if not _extension.has_kernel("absmax_rows", "cuda"):
        assert os.environ.get("LCFAST_REQUIRE_CUDA_KERNEL") != "1", "lcfast._C has no CUDA kernel for absmax_rows"
        pytest.skip("lcfast._C without the CUDA kernel")
    for N, R, F, rows in SHAPES:
        a = _values((N, R, F), dtype).cuda()
        a[:, :, :1] = float("nan") if N else 0  # a NaN neuron
        for v in (a, _values((F, R, N), dtype, seed=2).cuda().permute(2, 1, 0), a[:, R - rows:]):
            out, ref = absmax_rows(v, rows), absmax_rows_torch(v, rows)
            assert out.is_cuda and torch.equal(out.isnan(), ref.isnan())
            assert torch.equal(out.nan_to_num(), ref.nan_to_num()) and not torch.signbit(out).any()
            assert torch.equal(out.cpu(), absmax_rows(v.cpu(), rows).cpu())  # CPU and CUDA kernels: same bits
    torch.library.opcheck(torch.ops.lcfast.absmax_rows.default, (_values((4, 5, 6), dtype).cuda(), 3))
