"""Triton kernels' numerics under the interpreter (issue 14 items 9-11): the launch
grid of wide sites, NaN groups counted like the reference, tanh and float64
LeakyReLU against float64."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before lcfast's kernels are imported

import pytest  # noqa: E402

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("TRITON_INTERPRET is set to something else", allow_module_level=True)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lcfast  # noqa: E402
from lcfast.engine.reference import crossing_counts  # noqa: E402  (the oracle, tests only)
from lcfast.ops import triton_crossing_act as epi_op  # noqa: E402
from lcfast.ops import triton_crossing_count  # noqa: E402,F401
from lcfast.ops import triton_linear_crossing_act  # noqa: E402,F401
from lcfast.ops.triton_util import GRID_LIMITS, check_grid, epilogue_blocks, epilogue_grid  # noqa: E402

ops = torch.ops.lcfast


# ---------------------------------------------------------------------------
# item 9: launch geometry
# ---------------------------------------------------------------------------

def test_epilogue_grid_above_the_y_limit():
    """A ResNet stem at 512 px (64 x 256 x 256 neurons per row) has 65,536 feature
    tiles of 64: one more than grid axis y holds.  The grid puts them on axis x."""
    V, n, F_ = 50, 90, 64 * 256 * 256
    vb, bf = epilogue_blocks(V, F_)
    tiles = -(-F_ // bf)
    assert tiles > GRID_LIMITS[1]  # the old (n, tiles) grid would not launch
    grid = epilogue_grid(n, F_, bf)
    assert grid == (n * tiles,)
    assert all(size <= limit for size, limit in zip(grid, GRID_LIMITS))
    with pytest.raises(ValueError, match="axis y"):
        check_grid((n, tiles))
    with pytest.raises(ValueError, match="axis x"):
        epilogue_grid(2 ** 20, 2 ** 20 * bf, bf)


@pytest.mark.parametrize("V,n,feat", [(2, 3, (37,)), (6, 4, (5, 7, 11)), (50, 2, (1031,))])
def test_epilogue_one_axis_grid_covers_every_tile(V, n, feat):
    """Several feature tiles per point and several points: every (point, tile) program
    of the one-axis grid counts and writes its own part (poisoned output buffer)."""
    g = torch.Generator().manual_seed(V)
    pre = torch.randn(n * V, *feat, generator=g)
    pre[:, ..., -1] = pre[:, ..., -1].abs() + 1  # last neuron never crossed
    out = torch.full_like(pre, float("nan"))
    out, counts = epi_op.launch_epilogue(pre, V, "relu", 0.0, out=out)
    assert torch.equal(counts, crossing_counts(pre, V))
    assert torch.equal(out, pre.relu())


# ---------------------------------------------------------------------------
# item 10: NaN groups
# ---------------------------------------------------------------------------

def nan_data(rows, feat, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, *feat, generator=g, dtype=torch.float64)
    flat = z.view(rows, -1)
    flat[:, 0] = flat[:, 0].abs() + 1      # all positive...
    flat[1, 0] = float("nan")              # ...but one NaN vertex: crossed
    flat[:, 1] = -flat[:, 1].abs() - 1     # all negative with a NaN
    flat[0, 1] = float("nan")
    flat[:, 2] = float("nan")              # all NaN
    flat[:, 3] = 0.0                       # all zero with a NaN
    flat[-1, 3] = float("nan")
    flat[:, 4] = flat[:, 4].abs() + 1      # plain all positive: not crossed
    return z.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("V,n", [(2, 5), (6, 3), (50, 2)])
def test_nan_groups_count_as_crossed_like_reference(dtype, V, n):
    pre = nan_data(n * V, (3, 4), dtype, seed=V)
    ref = crossing_counts(pre, V)
    out, counts = ops.triton_crossing_act(pre, V, "relu", 0.0)
    assert torch.equal(counts, ref)
    assert torch.equal(ops.triton_crossing_count(pre, V), ref)
    # ReLU keeps NaN, as PyTorch's does
    assert torch.equal(out.isnan(), pre.isnan())
    # the NaN-free neurons were not miscounted (count of the first point >= its 4 NaN neurons)
    assert int(counts[0]) >= 4


def test_nan_parity_with_native_op_and_reference_backend():
    """NaN reaching a site (a model that overflows): triton, native and reference agree."""
    from lcfast import _extension as _native  # the compiled extension loader
    pre = nan_data(12, (9,), torch.float32, seed=1)
    c_tri = ops.triton_crossing_count(pre, 6)
    assert torch.equal(c_tri, crossing_counts(pre, 6))
    if _native.has_kernel("crossing_act", "cpu"):
        assert torch.equal(c_tri, ops.crossing_count(pre, 6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_in_fused_linear_counts_as_crossed(dtype):
    """An infinite input makes ``inf * 0 = NaN`` at one vertex of point 1; every other
    pre-activation is far above 0, so the exact counts are 0, NOUT, 0."""
    V, N, K, NOUT = 6, 3, 8, 5
    g = torch.Generator().manual_seed(4)
    x = torch.rand(N * V, K, generator=g).to(dtype)
    w = torch.rand(NOUT, K, generator=g).to(dtype)
    w[:, 0] = 0.0
    x[V + 2, 0] = float("inf")
    b = torch.full((NOUT,), 4.0, dtype=dtype)
    out, counts = ops.triton_linear_crossing_act(x, w, b, V, 1, "relu", 0.0)
    z = x.double() @ w.double().T + b.double()  # the same NaNs, the rest in [4, 12]
    assert z[V + 2].isnan().all() and int(z.isnan().sum()) == NOUT
    assert counts.tolist() == [0, NOUT, 0] == crossing_counts(z, V).tolist()
    assert torch.equal(out.isnan(), z.isnan())


# ---------------------------------------------------------------------------
# item 11: tanh and float64 LeakyReLU
# ---------------------------------------------------------------------------

def tanh_points(dtype):
    """``(2, M)``: one point of V = 2 rows, the values along the neurons (few programs)."""
    mags = torch.cat([torch.logspace(-30, -1, 200, dtype=torch.float64),
                      torch.linspace(0.1, 0.5, 401, dtype=torch.float64),   # around the split 0.3
                      torch.linspace(0.5, 25.0, 200, dtype=torch.float64)])
    u = torch.cat([mags, -mags]).to(dtype)
    return u.reshape(2, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ["tanh", "gelu_tanh"])
def test_tanh_accurate_against_float64(dtype, act):
    """Relative error within 4 ulp of the dtype everywhere, also near 0 where the old
    ``1 - 2/(exp(2u)+1)`` lost ~1e-3 (and gave 0 for tiny u)."""
    pre = tanh_points(dtype)
    out, _ = ops.triton_crossing_act(pre, 2, act, 0.0)
    z = pre.double()
    eps = torch.finfo(dtype).eps
    if act == "tanh":
        ref = torch.tanh(z)
        err = ((out.double() - ref).abs() / ref.abs()).max()
        assert float(err) <= 4 * eps, float(err)
        assert torch.equal(torch.signbit(out), torch.signbit(pre))
    else:
        # 0.5 z (1 + tanh(.)): rounding the sum with 1 costs up to ~|z| eps absolute, in
        # PyTorch's formula as in the kernel's
        ref = F.gelu(z, approximate="tanh")
        err = ((out.double() - ref).abs() / ((ref.abs() + z.abs()) * eps)).max()
        assert float(err) <= 4, float(err)


def test_tanh_special_values():
    pre = torch.tensor([[0.0], [-0.0], [float("inf")], [float("-inf")], [float("nan")], [1e-40]], dtype=torch.float32)
    out, _ = ops.triton_crossing_act(pre, 1, "tanh", 0.0)
    exp = torch.tanh(pre)
    assert torch.equal(out.isnan(), exp.isnan())
    keep = ~exp.isnan()
    assert torch.equal(out[keep], exp[keep]) and torch.equal(out[keep].signbit(), exp[keep].signbit())


@pytest.mark.parametrize("slope", [0.01, 0.1, 1 / 3])
def test_float64_leaky_relu_uses_float64_slope(slope):
    """float64 LeakyReLU equals PyTorch's float64 exactly (a float32 slope 0.01f would
    differ in the 9th digit); float32 equals PyTorch's float32."""
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float64, torch.float32):
        pre = torch.randn(12, 7, generator=g, dtype=torch.float64).to(dtype)
        out, _ = ops.triton_crossing_act(pre, 6, "leaky_relu", slope)
        assert torch.equal(out, F.leaky_relu(pre, slope))
