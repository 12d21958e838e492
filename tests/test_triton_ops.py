"""Triton ops under the interpreter (CPU): epilogue exact vs the reference rule,
fused BN / GEMM / MLP-block kernels vs float64 with the tolerance rule, opcheck."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before lcfast's kernels are imported

import pytest  # noqa: E402

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("TRITON_INTERPRET is set to something else", allow_module_level=True)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lcfast import acts  # noqa: E402
from lcfast.engine.reference import crossing_counts  # noqa: E402  (the oracle, tests only)
from lcfast.ops import triton_bn_crossing_act as bn_op  # noqa: E402
from lcfast.ops import triton_crossing_act as epi_op  # noqa: E402
from lcfast.ops import triton_crossing_count  # noqa: E402,F401
from lcfast.ops import triton_linear_crossing_act as lin_op  # noqa: E402
from lcfast.ops import triton_mlp_block  # noqa: E402,F401
from lcfast.tolerance import ambiguous_counts, check_counts  # noqa: E402

ops = torch.ops.lcfast

#: activation output tolerance (atol, rtol) per dtype, for the transcendental acts;
#: relu / leaky_relu / identity must be exact.
ACT_TOL = {
    torch.float32: (2e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float64: (1e-12, 1e-12),
}


def torch_act(z, act, slope=0.0):
    """The catalogue row's PyTorch function (lcfast.acts)."""
    if act == "leaky_relu":
        return F.leaky_relu(z, slope)
    return acts.by_kind[act].fn(z).clone()


def tie_data(rows, feat, dtype, seed=0):
    """Values on a coarse grid: exact zeros, ties, all-zero and zero+positive groups."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randint(-2, 3, (rows, *feat), generator=g).to(torch.float64) * 0.5)
    if rows:
        z[:, ..., 0] = 0.0                # neuron 0: all zero in every group -> not crossed
        z.view(rows, -1)[:, 1].abs_()     # neuron 1: zeros beside positives -> crossed where mixed
    return z.to(dtype)


def layout(t, kind):
    if kind == "contiguous":
        return t
    if kind == "channels_last":
        return t.to(memory_format=torch.channels_last)
    if kind == "noncontig":  # a strided view: every other column of a wider tensor
        wide = torch.zeros(t.shape[0], *t.shape[1:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    raise ValueError(kind)


def assert_act(out, pre, act, slope=0.0):
    exp = torch_act(pre, act, slope)
    if act in ("relu", "leaky_relu", "identity"):
        assert torch.equal(out, exp)
    else:
        atol, rtol = ACT_TOL[pre.dtype]
        torch.testing.assert_close(out.double(), exp.double(), atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------
# crossing epilogue: exact
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("V", [2, 6, 50])
@pytest.mark.parametrize("N", [0, 1, 37])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "noncontig"])
def test_epilogue_shapes_exact(V, N, kind):
    pre = layout(tie_data(N * V, (3, 5, 7), torch.float32, seed=V + N), kind)
    out, counts = ops.triton_crossing_act(pre, V, "relu", 0.0)
    assert counts.dtype == torch.int64 and counts.shape == (N,)
    assert torch.equal(counts, crossing_counts(pre, V))
    assert out.shape == pre.shape
    assert torch.equal(out, torch.relu(pre))
    if kind == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ops.triton_crossing_count(pre, V), counts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("act", list(acts.kernel_codes("triton")))
def test_epilogue_acts_dtypes(dtype, act):
    V, N = 6, 5
    pre = torch.cat([tie_data(N * V, (17,), dtype, seed=1),
                     (torch.randn(N * V, 23, generator=torch.Generator().manual_seed(2)) * 3).to(dtype)], 1)
    out, counts = ops.triton_crossing_act(pre, V, act, 0.1)
    assert out.dtype == dtype
    assert torch.equal(counts, crossing_counts(pre, V))
    assert_act(out, pre, act, 0.1)


def test_epilogue_rule_cases():
    """docs/design.md#definition: three-valued signs on hand-made groups (V = 2)."""
    pre = torch.tensor([[0., 0., 1., -1., 0., 1., 2., -3.],
                        [0., 1., 1., -2., -1., -1., 2., -3.]])
    # neuron: (0,0) no | (0,1) yes | (1,1) no | (-1,-2) no | (0,-1) yes | (1,-1) yes | ties no | ties no
    _, c = ops.triton_crossing_act(pre, 2, "relu", 0.0)
    assert c.tolist() == [3]


def test_epilogue_large_V_loops_over_slabs():
    """V > 64 walks several slabs of vertex rows (running min/max across slabs)."""
    V, N = 130, 3
    pre = tie_data(N * V, (19,), torch.float32, seed=5)
    pre[V - 1, 3] = -7.0  # the only negative of neuron 3 of point 0 sits in the last slab
    pre[:V, 3] = pre[:V, 3].abs()
    pre[V - 1, 3] = -7.0
    out, counts = ops.triton_crossing_act(pre, V, "relu", 0.0)
    assert torch.equal(counts, crossing_counts(pre, V))
    assert torch.equal(out, pre.relu())


def test_epilogue_bad_rows():
    with pytest.raises(ValueError, match="n\\*V rows"):
        ops.triton_crossing_act(torch.zeros(5, 3), 2, "relu", 0.0)
    with pytest.raises(ValueError, match="act must be one of"):
        ops.triton_crossing_act(torch.zeros(4, 3), 2, "elu", 0.0)


# ---------------------------------------------------------------------------
# float64 comparison with the tolerance rule
# ---------------------------------------------------------------------------

def check_vs_float64(counts, z64, scale, V):
    """``z64`` ``(n*V, *F)`` float64 truth *of the same rounded operands* the kernel got
    and ``scale`` its magnitude scale (``|x|.|W|^T + |b|`` for a GEMM): the tolerance
    rule of :mod:`lcfast.tolerance` at float32 (the kernels accumulate in float32
    whatever the input dtype).  Returns the report (ambiguous vs crossed)."""
    n = z64.shape[0] // V
    if n == 0:
        assert counts.shape == (0,)
        return None
    amb = ambiguous_counts(z64, scale, V, torch.float32)
    exact = crossing_counts(z64, V)
    return check_counts(counts.cpu()[:, None], exact[:, None], amb[:, None], z64[0].numel())


OUT_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def close_to(out, exp64, dtype):
    if out.numel():
        exp64 = exp64.detach()
        tol = OUT_TOL[dtype] * max(1.0, float(exp64.abs().max()))
        assert float((out.double() - exp64).abs().max()) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("residual", [False, True])
def test_bn_epilogue_vs_float64(dtype, kind, residual):
    V, N, C = 6, 4, 5
    g = torch.Generator().manual_seed(3)
    conv = layout(torch.randn(N * V, C, 3, 7, generator=g, dtype=torch.float64), kind)
    bn = torch.nn.BatchNorm2d(C).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(C, generator=g, dtype=torch.float64) * 0.3)
        bn.running_var.copy_(torch.rand(C, generator=g, dtype=torch.float64) + 0.5)
        bn.weight.copy_(torch.rand(C, generator=g, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64) * 0.3)
    res = layout(torch.randn(N * V, C, 3, 7, generator=g, dtype=torch.float64), kind) if residual else None
    scale, shift = bn_op.fold_bn(bn)
    conv_d, res_d = conv.to(dtype), (None if res is None else res.to(dtype))
    with torch.no_grad():
        a, b = scale.float().double()[:, None, None], shift.float().double()[:, None, None]
        z64 = conv_d.double() * a + b
        s64 = conv_d.double().abs() * a.abs() + b.abs()
        if residual:
            z64, s64 = z64 + res_d.double(), s64 + res_d.double().abs()
    out, counts = ops.triton_bn_crossing_act(conv_d, V, scale.float(), shift.float(), res_d, "relu", 0.0)
    check_vs_float64(counts, z64, s64, V)
    close_to(out, z64.relu(), dtype)
    if kind == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_bn_epilogue_float32_exact_vs_torch_fold():
    """float32: the kernel's z = pre*scale + shift matches torch's folded BN closely
    enough that counts on well-separated data are exact."""
    V, N, C = 2, 3, 4
    pre = tie_data(N * V, (C, 2, 3), torch.float32, seed=9)
    scale = torch.tensor([1.0, 2.0, 0.5, 4.0])
    shift = torch.tensor([0.0, 0.5, -0.25, 1.0])
    z = pre * scale[:, None, None] + shift[:, None, None]  # exact in fp32 (dyadic values)
    out, counts = ops.triton_bn_crossing_act(pre, V, scale, shift, None, "relu", 0.0)
    assert torch.equal(counts, crossing_counts(z, V))
    assert torch.equal(out, z.relu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("V,T,N", [(50, 1, 3), (6, 3, 5), (2, 1, 37), (2, 5, 1), (6, 1, 0)])
def test_linear_block_vs_float64(dtype, V, T, N):
    g = torch.Generator().manual_seed(V * 7 + T)
    K, NOUT = 37, 33
    x64 = torch.randn(N * V * T, K, generator=g, dtype=torch.float64)
    w64 = torch.randn(NOUT, K, generator=g, dtype=torch.float64) / K ** 0.5
    b64 = torch.randn(NOUT, generator=g, dtype=torch.float64) * 0.1
    x, w, b = x64.to(dtype), w64.to(dtype), b64.to(dtype)
    out, counts = ops.triton_linear_crossing_act(x, w, b, V, T, "relu", 0.0)
    assert out.shape == (N * V * T, NOUT) and out.dtype == dtype and counts.shape == (N,)
    # float64 truth of the *same* (rounded) operands: only accumulation order differs
    z64 = x.double() @ w.double().T + b.double()
    s64 = x.double().abs() @ w.double().abs().T + b.double().abs()
    check_vs_float64(counts, z64.reshape(N * V, T * NOUT), s64.reshape(N * V, T * NOUT), V)
    close_to(out, z64.relu(), dtype)


@pytest.mark.parametrize("act", ["gelu", "leaky_relu", "identity"])
def test_linear_block_acts_no_bias_strided(act):
    V, N, K, NOUT = 6, 4, 20, 17
    g = torch.Generator().manual_seed(11)
    x = torch.randn(K, N * V, generator=g).T  # non-contiguous rows
    w = torch.randn(NOUT, K, generator=g)
    out, counts = ops.triton_linear_crossing_act(x, w, None, V, 1, act, 0.2)
    z64 = x.double() @ w.double().T
    check_vs_float64(counts, z64, x.double().abs() @ w.double().abs().T, V)
    exp = torch_act(z64, act, 0.2)
    assert float((out.double() - exp).abs().max()) <= 1e-5 * float(exp.abs().max())


def test_linear_block_fp32_is_not_tf32():
    """float32 uses ieee dots: values with 23-bit mantissas survive (TF32 keeps 10)."""
    x = torch.full((2, 16), 1.0 + 2.0 ** -20)
    w = torch.ones(16, 16)
    out, _ = ops.triton_linear_crossing_act(x, w, None, 2, 1, "identity", 0.0)
    assert torch.equal(out, torch.full((2, 16), 16 * (1.0 + 2.0 ** -20)))


def test_linear_block_rejects():
    with pytest.raises(ValueError, match="V must be"):
        ops.triton_linear_crossing_act(torch.zeros(260, 4), torch.zeros(3, 4), None, 130, 1, "relu", 0.0)
    with pytest.raises(ValueError, match="dtype"):
        ops.triton_linear_crossing_act(torch.zeros(4, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64),
                                       None, 2, 1, "relu", 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlp_block_vs_float64(dtype):
    V, T, N, D, H = 6, 3, 4, 24, 40
    g = torch.Generator().manual_seed(21)
    x = torch.randn(N * V * T, D, generator=g).to(dtype)
    w1 = (torch.randn(H, D, generator=g) / D ** 0.5).to(dtype)
    b1 = (torch.randn(H, generator=g) * 0.1).to(dtype)
    w2 = (torch.randn(D, H, generator=g) / H ** 0.5).to(dtype)
    b2 = (torch.randn(D, generator=g) * 0.1).to(dtype)
    out, counts = ops.triton_mlp_block(x, w1, b1, w2, b2, V, T, "gelu")
    h64 = x.double() @ w1.double().T + b1.double()
    s64 = x.double().abs() @ w1.double().abs().T + b1.double().abs()
    check_vs_float64(counts, h64.reshape(N * V, T * H), s64.reshape(N * V, T * H), V)
    # the hidden activation is rounded to dtype between the GEMMs, as in the model
    exp = F.gelu(h64).to(dtype).double() @ w2.double().T + b2.double()
    close_to(out, exp, dtype)


# ---------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------

# test_aot_dispatch_dynamic needs compiled Triton kernels (the interpreter cannot
# run on the fake storages it traces with): checked by the GPU script instead.
_OPCHECK = ("test_schema", "test_autograd_registration", "test_faketensor")


def test_opcheck():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(12, 3, 4, 5, generator=g)
    torch.library.opcheck(ops.triton_crossing_act.default, (pre, 6, "relu", 0.0), test_utils=_OPCHECK)
    # every layout class of the launcher: channels-last (kept), dense but permuted and
    # strided (copied to contiguous): the fake must predict the real output's strides
    permuted = torch.randn(12, 5, 4, 3, generator=g).permute(0, 3, 2, 1)
    assert not permuted.is_contiguous() and not permuted.is_contiguous(memory_format=torch.channels_last)
    for p in (pre.to(memory_format=torch.channels_last), permuted, layout(pre, "noncontig")):
        torch.library.opcheck(ops.triton_crossing_act.default, (p, 6, "relu", 0.0), test_utils=_OPCHECK)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake_out, _ = ops.triton_crossing_act(mode.from_tensor(p), 6, "relu", 0.0)
        assert fake_out.stride() == ops.triton_crossing_act(p, 6, "relu", 0.0)[0].stride()
    torch.library.opcheck(ops.triton_crossing_count.default, (pre, 6), test_utils=_OPCHECK)
    torch.library.opcheck(ops.triton_bn_crossing_act.default,
                          (pre, 6, torch.rand(3) + 0.5, torch.randn(3), torch.randn(12, 3, 4, 5), "relu", 0.0),
                          test_utils=_OPCHECK)
    x, w, b = torch.randn(12, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    torch.library.opcheck(ops.triton_linear_crossing_act.default, (x, w, b, 6, 1, "gelu", 0.0), test_utils=_OPCHECK)
    torch.library.opcheck(ops.triton_mlp_block.default, (x, w, b, torch.randn(8, 5), None, 2, 3, "gelu"),
                          test_utils=_OPCHECK)


def test_native_contract_shape():
    """Same contract as lcfast::crossing_act: (pre, V, act, slope) -> (out, counts)."""
    schema = str(ops.triton_crossing_act.default._schema)
    assert "Tensor pre, SymInt V, str act, float slope" in schema or "Tensor pre, int V, str act, float slope" in schema
    assert schema.endswith("-> (Tensor, Tensor)")


def test_kernels_run_when_triton_was_imported_first():
    """torchvision imports triton; if that happens before TRITON_INTERPRET=1 is set,
    the standard-library jit helpers are compiled-mode functions.  Our kernels must
    still run under the interpreter (they use builtins and tl.reduce only)."""
    import subprocess
    import sys
    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import triton, torchvision, torch\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "import lcfast.ops.triton_crossing_act, lcfast.ops.triton_linear_crossing_act\n"
        "x = torch.randn(12, 7)\n"
        "o, c = torch.ops.lcfast.triton_crossing_act(x, 6, 'relu', 0.0)\n"
        "assert torch.equal(o, x.relu())\n"
        "o, c2 = torch.ops.lcfast.triton_linear_crossing_act(x, torch.eye(7), None, 6, 1, 'relu', 0.0)\n"
        "assert torch.equal(c, c2), (c, c2)\n"
        "print('ok')\n")
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "identity"])
def test_interchangeable_with_native_op(act):
    """Where the compiled extension is built, lcfast::crossing_act and
    lcfast::triton_crossing_act give identical results (exact acts)."""
    from lcfast import _extension
    if not _extension.has_kernel("crossing_act", "cpu"):
        pytest.skip(f"native extension not available: {_extension.ERROR}")
    for V, N, kind in [(2, 37, "contiguous"), (6, 1, "channels_last"), (50, 3, "noncontig")]:
        pre = layout(tie_data(N * V, (3, 5, 7), torch.float32, seed=V), kind)
        o1, c1 = ops.crossing_act(pre, V, act, 0.1)
        o2, c2 = ops.triton_crossing_act(pre, V, act, 0.1)
        assert torch.equal(c1, c2) and torch.equal(o1, o2)
