"""Op-level benchmarks of the Triton kernels (CUDA only; skipped elsewhere).

Each group times an lcfast Triton op beside the plain-PyTorch way of getting the
same result, on the same tensors:

    pytest benchmarks/test_bench_triton_ops.py --benchmark-only

Counts are checked before timing (the epilogue exactly against the reference's
``crossing_counts``, the fused GEMM with the float64 tolerance rule of
:mod:`lcfast.tolerance` on a slice).  No timing is asserted.
"""
import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    pytest.skip("Triton op benchmarks need a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from lcfast.ops import (triton_bn_crossing_act, triton_crossing_act,  # noqa: E402,F401
                        triton_linear_crossing_act, triton_mlp_block)
from lcfast.engine.reference import crossing_counts  # noqa: E402  (the crossing rule, written once)
from lcfast.tolerance import ambiguous_counts, check_counts  # noqa: E402  (the float64 tolerance rule)

ops = torch.ops.lcfast
DEV = torch.device("cuda")
V = 50  # P = 25


def _sync(fn):
    def run():
        r = fn()
        torch.cuda.synchronize()
        return r
    return run


@pytest.fixture(autouse=True)
def _no_tf32():
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


@pytest.mark.parametrize("method", ["triton_epilogue", "torch_relu_and_count", "copy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_epilogue(benchmark, method, dtype):
    benchmark.group = f"epilogue resnet18-layer1 site {dtype}"
    pre = torch.randn(10 * V, 64, 56, 56, device=DEV, dtype=dtype).to(memory_format=torch.channels_last)
    if method == "triton_epilogue":
        out, c = ops.triton_crossing_act(pre, V, "relu", 0.0)
        assert torch.equal(c, crossing_counts(pre, V)) and torch.equal(out, pre.relu())
        fn = lambda: ops.triton_crossing_act(pre, V, "relu", 0.0)  # noqa: E731
    elif method == "torch_relu_and_count":
        fn = lambda: (crossing_counts(pre, V), pre.relu())  # noqa: E731
    else:
        fn = pre.clone
    benchmark.extra_info["bytes_moved"] = 2 * pre.numel() * pre.element_size()
    benchmark(_sync(fn))


@pytest.mark.parametrize("method", ["triton_fused", "flinear_triton_epilogue", "flinear_torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K,N", [(784, 200), (200, 200)])
def test_linear_block(benchmark, method, dtype, K, N):
    benchmark.group = f"linear block {K}->{N} 1024 points V=50 {dtype}"
    x = torch.rand(1024 * V, K, device=DEV, dtype=dtype)
    w = (torch.randn(N, K, device=DEV) / K ** 0.5).to(dtype)
    b = (torch.randn(N, device=DEV) * 0.1).to(dtype)
    if method == "triton_fused":
        out, c = ops.triton_linear_crossing_act(x, w, b, V, 1, "relu", 0.0)
        # float64 of the same (rounded) operands, its dot-product scale |x|.|W|^T + |b|, and
        # the library's rule at float32 (the kernel accumulates in float32 for every dtype)
        z64 = x[:20 * V].double() @ w.double().T + b.double()
        s64 = x[:20 * V].double().abs() @ w.double().abs().T + b.double().abs()
        check_counts(c[:20, None].cpu(), crossing_counts(z64, V)[:, None].cpu(),
                     ambiguous_counts(z64, s64, V, torch.float32)[:, None].cpu(), N)
        fn = lambda: ops.triton_linear_crossing_act(x, w, b, V, 1, "relu", 0.0)  # noqa: E731
    elif method == "flinear_triton_epilogue":
        fn = lambda: ops.triton_crossing_act(F.linear(x, w, b), V, "relu", 0.0)  # noqa: E731
    else:
        fn = lambda: (lambda z: (crossing_counts(z, V), z.relu()))(F.linear(x, w, b))  # noqa: E731
    benchmark(_sync(fn))


@pytest.mark.parametrize("method", ["triton_bn_add_act", "torch"])
def test_bn_residual_block_tail(benchmark, method):
    benchmark.group = "bn+residual+relu resnet18-layer1 10 points fp32"
    conv = torch.randn(10 * V, 64, 56, 56, device=DEV).to(memory_format=torch.channels_last)
    res = torch.randn_like(conv)
    bn = torch.nn.BatchNorm2d(64).to(DEV).eval()
    from lcfast.ops.triton_bn_crossing_act import fold_bn
    sc, sh = fold_bn(bn)
    if method == "torch":
        fn = lambda: (lambda z: (crossing_counts(z, V), z.relu()))(bn(conv) + res)  # noqa: E731
    else:
        fn = lambda: ops.triton_bn_crossing_act(conv, V, sc, sh, res, "relu", 0.0)  # noqa: E731
    with torch.no_grad():
        benchmark(_sync(fn))
