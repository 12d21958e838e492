"""Property tests: every offset rule against ``f(vertices)`` in float64.

An :class:`OffsetTensor` with random centres and offsets (antisymmetric or dense, any
scale) goes through one op; the vertex values of the result (``c + d``) must equal the
op applied to the input's vertex values, computed directly in float64.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from lcfast.engine.offsets.nonlinear import crossing_counts
from lcfast.engine.offsets.tensor import Layout, OffsetContext, OffsetTensor, OffsetsError
from lcfast.engine.reference import crossing_counts as reference_counts

SET = settings(max_examples=20, deadline=None)


@st.composite
def cases(draw):
    return dict(n=draw(st.integers(1, 3)), P=draw(st.integers(1, 4)), sym=draw(st.booleans()),
                rank=draw(st.sampled_from([None, 1, 2, 3])),
                scale=draw(st.sampled_from([1e-6, 1e-3, 0.1, 1.0, 10.0])), seed=draw(st.integers(0, 2**31 - 1)))


def make(case, feat, ctx=None, seed_offset=0):
    """Random ``OffsetTensor`` with ``N`` points of shape ``feat`` (float64)."""
    g = torch.Generator().manual_seed(case["seed"] + seed_offset)
    n, P = case["n"], case["P"]
    ctx = ctx or OffsetContext(n, P, torch.float64)
    R = ctx.R
    c = torch.randn(n, *feat, generator=g, dtype=torch.float64)
    a = torch.randn(n, P, *feat, generator=g, dtype=torch.float64) * case["scale"]
    a = torch.cat([a, a], 1) if R != P else a  # P = 1: the row is stored twice
    s = bidx = coef = blocks = None
    if not case["sym"]:  # a random nonempty subset of broken points with a symmetric part
        bidx = torch.nonzero(torch.rand(n, generator=g) < 0.6).flatten()
        bidx = bidx if bidx.numel() else torch.tensor([n - 1])
        K = case.get("rank")
        if K is None or K > R:  # dense: row p is s_p
            s = torch.randn(bidx.numel(), P, *feat, generator=g, dtype=torch.float64) * case["scale"]
            s = (torch.cat([s, s], 1) if R != P else s).reshape(-1, *feat)
        else:  # low rank: K basis rows, s_p = sum_k coef[p, k] E_k
            s = torch.randn(bidx.numel() * K, *feat, generator=g, dtype=torch.float64) * case["scale"]
            coef = torch.randn(bidx.numel(), P, K, generator=g, dtype=torch.float64)
            coef = torch.cat([coef, coef], 1) if R != P else coef
            blocks = ((ctx.new_block(), K),)
    return OffsetTensor(c, a.reshape(-1, *feat), s, bidx, Layout(0), ctx, coef, blocks)


def close(out, expect):
    got = out.vertices() if isinstance(out, OffsetTensor) else out
    assert got.shape == expect.shape
    tol = 1e-12 * (1 + expect.abs().max())
    assert torch.allclose(got, expect, rtol=0, atol=float(tol)), float((got - expect).abs().max())


def check_unary(case, feat, fn):
    x = make(case, feat)
    with torch.no_grad():
        close(fn(x), fn(x.vertices()))
    return x


@SET
@given(cases())
def test_linear(case):
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    x = make(case, (5,))
    with torch.no_grad():
        out = F.linear(x, w, b)
        close(out, F.linear(x.vertices(), w, b))
    assert (out.s is None) == (x.s is None)  # linear ops keep antisymmetry


@SET
@given(cases())
def test_linear_3d_and_matmul(case):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    check_unary(case, (3, 6), lambda t: F.linear(t, w) @ w)


@SET
@given(cases())
def test_conv_bn_pool(case):
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    mean, var = torch.randn(4, generator=g, dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64) + .5
    gamma, beta = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)

    def fn(t):
        h = F.conv2d(t, w, b, padding=1)
        h = F.batch_norm(h, mean, var, gamma, beta, training=False)
        return F.avg_pool2d(h, 2) + F.adaptive_avg_pool2d(h, 1) - h.mean((2, 3), keepdim=True)[..., :1, :1]
    x = check_unary(case, (2, 6, 6), fn)
    with torch.no_grad():
        assert (fn(x).s is None) == (x.s is None)


@SET
@given(cases())
def test_conv_output_used_by_batch_norm_and_again(case):
    """Batch norm folds its scale into the pending convolution's weight; the convolution's
    output used again afterwards (and before) is still the plain convolution."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    mean, var = torch.randn(3, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64) + .5
    gamma, beta = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)

    def fn(t):
        h = F.conv2d(t, w, padding=1)
        z = F.batch_norm(h, mean, var, gamma, beta, training=False)
        return torch.cat([z, h, F.batch_norm(F.conv2d(t, w), mean, var, None, None, training=False)[..., :1, :1]
                          .expand(-1, -1, 6, 6)], 1)
    x = check_unary(case, (2, 6, 6), fn)
    with torch.no_grad():
        h = F.conv2d(x, w, padding=1)
        assert h.pending is not None  # left pending until its next use
        z = F.batch_norm(h, mean, var, gamma, beta, training=False)
        assert h.pending is not None and z.pending is None  # the fold did not compute nor change h
        close(h, F.conv2d(x.vertices(), w, padding=1))
        close(z, F.batch_norm(F.conv2d(x.vertices(), w, padding=1), mean, var, gamma, beta, training=False))


@pytest.fixture(scope="module")
def cudnn_bn_on_cpu():
    """``aten::cudnn_batch_norm`` given a CPU kernel for this module's tests: eval-mode
    ``F.batch_norm`` dispatches to that op on a GPU (seen on an H200, where the offsets
    engine first met it and raised), so its rule is tested here the way it is called
    there: the centre through the op itself, the offsets by the rule."""
    lib = torch.library.Library("aten", "IMPL")

    def cpu_kernel(x, w, b, mean, var, training, momentum, eps):
        out = F.batch_norm(x, mean, var, w, b, training=training, momentum=momentum, eps=eps)
        return out, mean.clone(), var.clone(), x.new_empty(0, dtype=torch.uint8)
    lib.impl("cudnn_batch_norm", cpu_kernel, "CPU")
    try:
        yield
    finally:
        lib._destroy()


@SET
@given(cases())
def test_cudnn_batch_norm(cudnn_bn_on_cpu, case):
    g = torch.Generator().manual_seed(5)
    mean, var = torch.randn(3, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64) + .5
    gamma, beta = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    bn = lambda t: torch.ops.aten.cudnn_batch_norm(t, gamma, beta, mean, var, False, 0.1, 1e-5)[0]  # noqa: E731
    x = check_unary(case, (3, 4, 4), bn)
    with torch.no_grad():
        assert (bn(x).s is None) == (x.s is None)  # eval BN keeps antisymmetry
        with pytest.raises(OffsetsError, match="eval mode"):
            torch.ops.aten.cudnn_batch_norm(x, gamma, beta, mean, var, True, 0.1, 1e-5)


@SET
@given(cases(), st.sampled_from([0.0, 0.2]))
def test_relu_leaky(case, slope):
    x = make(case, (9,))
    with torch.no_grad():
        out = F.leaky_relu(x, slope) if slope else F.relu(x)
        v = x.vertices()
        close(out, F.leaky_relu(v, slope) if slope else F.relu(v))
    assert torch.equal(crossing_counts(x), reference_counts(x.vertices(), 2 * case["P"]))


@SET
@given(cases())
def test_max_pool(case):
    check_unary(case, (2, 5, 6), lambda t: F.max_pool2d(t, 2, ceil_mode=True))
    check_unary(case, (3, 8), lambda t: F.max_pool1d(t, 3, stride=2, padding=1))


@SET
@given(cases(), st.integers(0, 2**31 - 1))
def test_max_pool_with_ties(case, seed):
    """Max pooling of values with many exact ties (centres from a few integers, a ReLU's
    dead zeros, rows whose offsets are exactly zero): values and indices equal pooling the
    vertices (the rule clears ties among exact elements without evaluating them)."""
    g = torch.Generator().manual_seed(seed)
    x = make(case, (2, 6, 6))
    frozen = torch.rand(2, 6, 6, generator=g, dtype=torch.float64) < 0.5  # elements without offsets
    with torch.no_grad():
        c = torch.randint(-2, 3, x.c.shape, generator=g).to(torch.float64)
        x.c.copy_(c)
        x.a.masked_fill_(frozen, 0)
        if x.s is not None:
            x.s.masked_fill_(frozen, 0)
        h = torch.relu(x)
        out, idx = F.max_pool2d(h, 2, return_indices=True)
        want, want_idx = F.max_pool2d(torch.relu(x.vertices()), 2, return_indices=True)
    close(out, want)
    # where a window's maximum is tied at a vertex, both pick the first maximiser in scan order
    assert torch.equal(idx, want_idx)


@SET
@given(cases())
def test_smooth_ops(case):
    g = torch.Generator().manual_seed(4)
    w, b = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    check_unary(case, (4, 6), F.gelu)
    check_unary(case, (4, 6), lambda t: torch.softmax(t, -1))
    check_unary(case, (4, 6), lambda t: F.layer_norm(t, (6,), w, b))
    check_unary(case, (4, 6), lambda t: F.silu(torch.tanh(t)) / (1 + t.sigmoid()))


@SET
@given(cases())
def test_products(case):
    x = make(case, (3, 4))
    y = make(case, (3, 4), ctx=x.ctx, seed_offset=1)
    z = make(case, (4, 5), ctx=x.ctx, seed_offset=2)
    with torch.no_grad():
        close(x * y, x.vertices() * y.vertices())
        close(torch.bmm(x, z), torch.bmm(x.vertices(), z.vertices()))
        close(x + 2 * y - y / 3, x.vertices() + 2 * y.vertices() - y.vertices() / 3)


@SET
@given(cases())
def test_attention(case):
    q = make(case, (2, 3, 4))
    k = make(case, (2, 3, 4), ctx=q.ctx, seed_offset=1)
    v = make(case, (2, 3, 4), ctx=q.ctx, seed_offset=2)
    with torch.no_grad():
        close(F.scaled_dot_product_attention(q, k, v),
              F.scaled_dot_product_attention(q.vertices(), k.vertices(), v.vertices()))


@SET
@given(cases())
def test_structural(case):
    g = torch.Generator().manual_seed(5)
    tok = torch.randn(1, 1, 6, generator=g, dtype=torch.float64)

    def fn(t):  # (B, 4, 6)
        B = t.shape[0]
        h = torch.cat([tok.expand(B, -1, -1), t], 1)          # class token
        h = h.permute(1, 0, 2).reshape(5 * B, 6)               # batch merged as an inner factor
        h = h.view(5, B, 2, 3).transpose(0, 1).flatten(1)      # and back
        h = h.unsqueeze(1).squeeze(1)[:, 2:]
        return torch.stack([h, h * 2], -1).sum(-1)
    check_unary(case, (4, 6), fn)
