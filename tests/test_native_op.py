"""lcfast::crossing_act / crossing_act_ / crossing_count (C++ CPU kernel) against a
plain-PyTorch expression of the definition (docs/design.md#definition), and opcheck."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lcfast import _extension, acts

pytestmark = pytest.mark.skipif(not _extension.available(), reason=f"lcfast._C not built: {_extension.ERROR}")

if _extension.available():
    from lcfast.ops.native_crossing_act import crossing_act, crossing_act_, crossing_count

#: every kind with a native kernel (lcfast.acts), leaky_relu with two slopes
ACTS = [(k, 0.0) for k in acts.kernel_codes("native") if k != "leaky_relu"] + [("leaky_relu", 0.1),
                                                                               ("leaky_relu", 2.5)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def expected(pre: torch.Tensor, V: int, act: str, slope: float):
    """``(n*V, *F) -> (act(pre), LongTensor (n,))`` with plain PyTorch."""
    n = pre.shape[0] // V
    z = pre.reshape(n, V, pre[0].numel() if n else pre.shape[1:].numel())
    mn, mx = z.amin(1), z.amax(1)
    same = (mn > 0) | (mx < 0) | ((mn == 0) & (mx == 0))
    out = F.leaky_relu(pre, slope) if act == "leaky_relu" else acts.by_kind[act].fn(pre).clone()
    return out, (~same).sum(1)


def assert_out_equal(out, ref, act):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if act.startswith("gelu"):
        # PyTorch's CPU GELU evaluates erf/tanh with its own SIMD polynomials; the op
        # uses libm's erf/tanh in ATen's scalar formula: equal within a few ulps.
        tol = {torch.float32: (2e-6, 1e-6), torch.float64: (1e-13, 1e-15), torch.bfloat16: (1e-2, 1e-5)}
        rtol, atol = tol[out.dtype]
        torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, equal_nan=True)
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
        # -0.0 stays -0.0 (torch.relu keeps it)
        assert torch.equal(torch.signbit(out), torch.signbit(ref)) or out.isnan().any()


def make(n, V, feat, dtype, seed=0):
    """Values with exact zeros, ties, all-positive / all-negative / all-zero neurons."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * V, *feat, generator=g, dtype=torch.float64)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.1, torch.zeros_like(x), x)  # exact zeros
    x = torch.where(torch.rand(x.shape, generator=g) < 0.05, -torch.zeros_like(x), x)  # -0.0
    if n and x[0].numel() >= 4:
        z = x.reshape(n, V, -1)
        z[:, :, 0] = z[:, :, 0].abs() + 0.5   # all positive
        z[:, :, 1] = -z[:, :, 1].abs() - 0.5  # all negative
        z[:, :, 2] = 0.0                      # all zero: not crossed
        z[:, :, 3] = 0.0
        z[:, 0, 3] = 1.0                      # zero beside a positive: crossed
        z[:, 1:, -1] = z[:, :1, -1]           # ties: all vertices equal
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("n,V,feat", [(37, 6, (17,)), (1, 50, (3, 5, 7)), (0, 2, (9,)), (37, 2, (200,)),
                                      (5, 50, (2049,))])
def test_op_matches_definition(n, V, feat, dtype, act, slope):
    pre = make(n, V, feat, dtype)
    ref_out, ref_c = expected(pre, V, act, slope)
    out, c = crossing_act(pre, V, act, slope)
    assert c.dtype == torch.long and c.shape == (n,)
    assert torch.equal(c, ref_c)
    assert_out_equal(out, ref_out, act)
    assert torch.equal(crossing_count(pre, V), ref_c)
    p2 = pre.clone()
    c2 = crossing_act_(p2, V, act, slope)
    assert torch.equal(c2, ref_c)
    assert torch.equal(p2, out) or act.startswith("gelu") and torch.allclose(p2, out, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_and_noncontiguous(dtype):
    V = 6
    base = make(7, V, (5, 6, 9), dtype, seed=3)
    cl = base.to(memory_format=torch.channels_last)
    for pre in (cl, base.transpose(2, 3), base[:, :, ::2, 1:], base.permute(0, 3, 1, 2)):
        ref_out, ref_c = expected(pre, V, "leaky_relu", 0.2)
        out, c = crossing_act(pre, V, "leaky_relu", 0.2)
        assert torch.equal(c, ref_c)
        assert_out_equal(out, ref_out, "leaky_relu")
        assert torch.equal(crossing_count(pre, V), ref_c)
        p2 = pre.clone()  # clone keeps the strides of a dense tensor
        assert torch.equal(crossing_act_(p2, V, "relu", 0.0), ref_c)
        assert torch.equal(p2, torch.relu(pre))
    out, _ = crossing_act(cl, V, "relu", 0.0)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()  # no copy
    # a view whose rows are not dense blocks: in place still writes through to the base
    t = base.clone()
    view = t[:, :, :, ::2]
    c = crossing_act_(view, V, "relu", 0.0)
    assert torch.equal(c, expected(base[:, :, :, ::2], V, "relu", 0.0)[1])
    assert torch.equal(t[:, :, :, ::2], torch.relu(base[:, :, :, ::2]))
    assert torch.equal(t[:, :, :, 1::2], base[:, :, :, 1::2])


def test_batch_not_outermost_and_nan():
    V = 2
    pre = make(4, V, (11,), torch.float32).t().contiguous().t()  # dense, dim 0 innermost
    assert not pre.is_contiguous()
    ref_out, ref_c = expected(pre, V, "relu", 0.0)
    out, c = crossing_act(pre, V, "relu", 0.0)
    assert torch.equal(c, ref_c) and torch.equal(out, ref_out)
    nan = torch.tensor([[1.0, 1.0], [float("nan"), 1.0]])  # NaN neuron counts as crossed, like amin/amax
    assert torch.equal(crossing_count(nan, 2), expected(nan, 2, "identity", 0.0)[1])
    assert crossing_count(nan, 2).tolist() == [1]


def test_errors():
    x = torch.randn(6, 3)
    with pytest.raises(RuntimeError, match="multiple of V"):
        crossing_act(x, 4, "relu", 0.0)
    with pytest.raises(RuntimeError, match="act must be one of"):
        crossing_act(x, 2, "swish", 0.0)
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16"):
        crossing_count(x.to(torch.int32), 2)


@pytest.mark.parametrize("case", ["out", "inplace", "count"])
def test_opcheck(case):
    pre = make(3, 6, (4, 5), torch.float32, seed=1)
    cl = make(3, 2, (4, 5, 3), torch.float32, seed=2).to(memory_format=torch.channels_last)
    for t in (pre, cl, pre.transpose(1, 2)):
        if case == "out":
            torch.library.opcheck(torch.ops.lcfast.crossing_act.default, (t.clone(), 2 if t is cl else 6, "relu", 0.0))
        elif case == "inplace":
            torch.library.opcheck(torch.ops.lcfast.crossing_act_.default,
                                  (t.clone(), 2 if t is cl else 6, "leaky_relu", 0.1))
        else:
            torch.library.opcheck(torch.ops.lcfast.crossing_count.default, (t.clone(), 2 if t is cl else 6))


def test_compile_uses_fake_impl():
    f = torch.compile(lambda t: crossing_act(t * 2, 6, "relu", 0.0), backend="eager", fullgraph=True)
    pre = make(4, 6, (13,), torch.float32)
    out, c = f(pre)
    ref_out, ref_c = expected(pre * 2, 6, "relu", 0.0)
    assert torch.equal(out, ref_out) and torch.equal(c, ref_c)


@pytest.mark.parametrize("order", ["native_first", "python_first"])
def test_namespace_coexists_with_python_ops(order):
    """A Python ``torch.library`` op in the lcfast namespace (what triton_op registers)
    coexists with the C++ TORCH_LIBRARY, in either import order."""
    code = f"""
import torch
def py():
    @torch.library.custom_op("lcfast::_coexist_probe", mutates_args=())
    def probe(x: torch.Tensor) -> torch.Tensor:
        return x + 1
def nat():
    import lcfast._C
for f in ({'nat, py' if order == 'native_first' else 'py, nat'}):
    f()
x = torch.tensor([[1.0, -1.0], [2.0, 1.0]])
assert torch.ops.lcfast._coexist_probe(x).sum().item() == 7.0
assert torch.ops.lcfast.crossing_count(x, 2).tolist() == [1]
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.skipif(not (torch.cuda.is_available() and _extension.has_kernel("crossing_act", "cuda")),
                    reason="no CUDA device or lcfast._C built without CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act,slope", ACTS)
def test_cuda_matches_definition(dtype, act, slope):
    for n, V, feat in [(37, 6, (17,)), (3, 50, (64, 7, 9)), (0, 2, (5,))]:
        pre = make(n, V, feat, dtype).cuda()
        ref_out, ref_c = expected(pre, V, act, slope)
        out, c = crossing_act(pre, V, act, slope)
        assert torch.equal(c, ref_c)
        assert_out_equal(out, ref_out, act)
        assert torch.equal(crossing_count(pre, V), ref_c)
        cl = pre.reshape(n * V, *feat[:1], 1, -1).to(memory_format=torch.channels_last) if len(feat) == 3 else pre
        p2 = cl.clone()
        assert torch.equal(crossing_act_(p2, V, act, slope), ref_c)
    torch.library.opcheck(torch.ops.lcfast.crossing_act.default, (make(3, 6, (4, 5), dtype).cuda(), 6, act, slope))
