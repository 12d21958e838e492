"""Checks that need a CUDA GPU (skipped without one; run by benchmarks/gpu_check.sh
with ``-k cuda``).  With ``LCFAST_REQUIRE_CUDA_KERNEL=1`` (set by that script) a
missing CUDA build of the native op *fails* instead of skipping, so a CPU-only
extension build cannot pass as a clean GPU run.
"""
import os

import pytest
import torch

from lcfast import _extension as _native  # the compiled extension loader

HAVE_CUDA = torch.cuda.is_available()
REQUIRE = os.environ.get("LCFAST_REQUIRE_CUDA_KERNEL") == "1"
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")


@needs_cuda
def test_cuda_native_kernel_present():
    have = _native.has_kernel("crossing_act", "cuda")
    if not have and not REQUIRE:
        pytest.skip(f"lcfast._C has no CUDA kernel ({_native.ERROR or 'built without CUDA'})")
    assert have, f"lcfast._C has no CUDA kernel for lcfast::crossing_act ({_native.ERROR or 'CPU-only build'})"


def _signed_values(dtype):
    v = torch.tensor([-0.0, 0.0, 1.5, -2.0, float("nan"), -1e-30, float("inf"), float("-inf")], dtype=dtype)
    return torch.stack([v, v.flip(0)]).cuda()  # (2, 8): one point of V = 2


@needs_cuda
@pytest.mark.skipif(not _native.has_kernel("crossing_act", "cuda"), reason="lcfast._C without CUDA kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_cuda_native_relu_sign_bits_match_torch(dtype):
    """-0.0 -> +0.0 and NaN kept, exactly as PyTorch's CUDA ReLU (out of place and in place)."""
    pre = _signed_values(dtype)
    ref = torch.relu(pre)
    out, _ = torch.ops.lcfast.crossing_act(pre, 2, "relu", 0.0)
    inplace = pre.clone()
    torch.ops.lcfast.crossing_act_(inplace, 2, "relu", 0.0)
    for got in (out, inplace):
        assert torch.equal(got.isnan(), ref.isnan())
        keep = ~ref.isnan()
        assert torch.equal(got[keep], ref[keep])
        assert torch.equal(torch.signbit(got[keep]), torch.signbit(ref[keep]))


@needs_cuda
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="Triton interpreter forced in this process")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_cuda_triton_relu_sign_bits_and_nan_match_torch(dtype):
    pytest.importorskip("triton")
    from lcfast.ops import triton_crossing_act  # noqa: F401
    from lcfast.engine.reference import crossing_counts
    pre = _signed_values(dtype)
    ref = torch.relu(pre)
    out, counts = torch.ops.lcfast.triton_crossing_act(pre, 2, "relu", 0.0)
    assert torch.equal(counts.cpu(), crossing_counts(pre.cpu(), 2))  # NaN groups crossed
    keep = ~ref.isnan()
    assert torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out[keep], ref[keep]) and torch.equal(torch.signbit(out[keep]), torch.signbit(ref[keep]))


@needs_cuda
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="Triton interpreter forced in this process")
def test_cuda_triton_tanh_and_float64_leaky_relu():
    pytest.importorskip("triton")
    import torch.nn.functional as F
    from lcfast.ops import triton_crossing_act  # noqa: F401
    u = torch.cat([torch.logspace(-20, 1.3, 2000, dtype=torch.float64), -torch.logspace(-20, 1.3, 2000,
                                                                                         dtype=torch.float64)])
    for dtype, ulps in ((torch.float32, 8), (torch.float64, 4)):
        pre = u.to(dtype).reshape(2, -1).cuda()
        out, _ = torch.ops.lcfast.triton_crossing_act(pre, 2, "tanh", 0.0)
        ref = torch.tanh(pre.double())
        assert float(((out.double() - ref).abs() / ref.abs()).max()) <= ulps * torch.finfo(dtype).eps
    pre = torch.randn(12, 33, dtype=torch.float64, device="cuda")
    out, _ = torch.ops.lcfast.triton_crossing_act(pre, 6, "leaky_relu", 0.01)
    assert torch.equal(out, F.leaky_relu(pre, 0.01))
