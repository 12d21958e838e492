"""lcfast::tril_mix_ (csrc/tril_mix_cpu.cpp, lcfast/ops/tril_mix.py): rows mixed in place
by a lower triangular matrix, bit for bit against an independent numpy evaluation of
the kernel's fma chain, within the derived bound of float64, and its use in lcfast.frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lcfast import _extension, frames
from lcfast.frames import FactoredFrames, factored_frames, gaussian_frames, orthonormal_rows, random_frames
from lcfast.ops import tril_mix as tm
from test_frames import _fma32, _orth_err

native = pytest.mark.skipif(not _extension.has_kernel("tril_mix_", "cpu"), reason=f"lcfast._C: {_extension.ERROR}")

# Shapes around the kernels' tiles (4 rows; 4 vectors of 16 (AVX-512) or 8 (AVX2) columns,
# then single vectors, then scalar columns): P = 1, P = D, P not a multiple of 4, D with
# every kind of tail.
SHAPES = [(3, 25, 784), (2, 1, 5), (2, 7, 7), (2, 6, 13), (2, 9, 40), (1, 30, 100), (2, 4, 67), (2, 5, 1),
          (3, 2, 64), (1, 17, 17)]


def _case(shape, seed):
    B, P, D = shape
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(B, P, D, generator=gen) * 3
    t = torch.randn(B, P, P, generator=gen).tril()
    return g, t


def _chain_numpy(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The kernel's definition, evaluated independently: per column acc = 0, then
    acc = fma(t[p, q], g[q], acc) for q = 0 .. p, every fma correctly rounded to float32
    (test_frames._fma32)."""
    gn, tn = g.numpy(), t.numpy()
    out = np.empty_like(gn)
    for b in range(gn.shape[0]):
        for p in range(gn.shape[1]):
            acc = np.zeros(gn.shape[2], dtype=np.float32)
            for q in range(p + 1):
                acc = _fma32(np.full_like(acc, tn[b, p, q]), gn[b, q], acc)
            out[b, p] = acc
    return torch.from_numpy(out)


@native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bits_equal_the_fma_chain(shape):
    """Every path of the kernel (AVX-512, AVX2 and portable: whichever this machine runs)
    gives exactly the chain's bits; t's strictly upper triangle (NaN here) is not read."""
    g, t = _case(shape, sum(shape))
    want = _chain_numpy(g, t)
    tn = t + torch.full_like(t, float("nan")).triu(1)
    got = g.clone()
    torch.ops.lcfast.tril_mix_(got, tn)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


# |out - exact| <= gamma_P sum_q |t_pq| |g_q| with gamma_P = P u / (1 - P u), u = 2^-24: row
# p is a chain of p + 1 <= P roundings of a float32 fma (the first one rounds the product
# alone), the textbook bound of a recursive sum of products.  The reference is float64
# (its own error ~P 2^-53 of the same scale), hence the 1% margin.
def _bound(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    P, u = t.shape[-1], 2.0 ** -24
    return 1.01 * (P * u / (1 - P * u)) * (t.double().abs() @ g.double().abs())


@native
@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 3000)], ids=lambda s: "x".join(map(str, s)))
def test_against_float64(shape):
    g, t = _case(shape, 7 + sum(shape))
    g[:, -1] = -g[:, 0] * 0.999  # cancellation in the last row: the bound is on |t| |g|, not on the result
    exact = t.double() @ g.double()
    got = g.clone()
    torch.ops.lcfast.tril_mix_(got, t)
    assert ((got.double() - exact).abs() <= _bound(t, g)).all()


@native
def test_thread_count_and_batch_independent():
    g, t = _case((64, 9, 300), 2)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = g.clone()
        torch.ops.lcfast.tril_mix_(one, t)
    finally:
        torch.set_num_threads(n)
    many = g.clone()
    torch.ops.lcfast.tril_mix_(many, t)
    assert torch.equal(one, many)
    sub = g[[5, 2]].contiguous()
    torch.ops.lcfast.tril_mix_(sub, t[[5, 2]])
    assert torch.equal(sub, one[[5, 2]])  # per point


@native
def test_opcheck_and_bad_input():
    g, t = _case((3, 4, 17), 3)
    torch.library.opcheck(torch.ops.lcfast.tril_mix_.default, (g.clone(), t))
    torch.library.opcheck(torch.ops.lcfast.tril_mix_.default, (torch.randn(0, 4, 17), torch.randn(0, 4, 4)))
    op = torch.ops.lcfast.tril_mix_
    with pytest.raises(RuntimeError, match="g must be contiguous"):
        op(g.clone().transpose(1, 2).contiguous().transpose(1, 2), t)
    with pytest.raises(RuntimeError, match="g must be a 3-d float32"):
        op(g.double(), t)
    with pytest.raises(RuntimeError, match="g must be a 3-d float32"):
        op(g[0].clone(), t)
    with pytest.raises(RuntimeError, match="t must be a 3-d float32"):
        op(g.clone(), t.double())
    with pytest.raises(RuntimeError, match=r"t must have shape \(B, P, P\) = \(3, 4, 4\)"):
        op(g.clone(), t[:, :3, :3])
    with pytest.raises(RuntimeError, match=r"t must have shape"):
        op(g.clone(), t[:2])
    untouched = g.clone()
    with pytest.raises(RuntimeError):
        op(untouched, t[:2])
    assert torch.equal(untouched, g)  # checked before anything is written
    tt = t.mT.contiguous().mT  # t itself may have any strides
    a, b = g.clone(), g.clone()
    op(a, t)
    op(b, tt)
    assert torch.equal(a, b)


def test_wrapper_paths(monkeypatch):
    """The wrapper: the op for contiguous float32 with a kernel; else the bmm written back
    (float64, strided g, no kernel), always in place and returning g."""
    g, t = _case((3, 5, 40), 4)
    exact = t.double() @ g.double()
    g64 = g.double()
    assert tm.tril_mix_(g64, t) is g64 and torch.equal(g64, torch.bmm(t.double(), g.double()))
    strided = g.mT.contiguous().mT
    assert tm.tril_mix_(strided, t) is strided and torch.equal(strided, torch.bmm(t, g))
    a = g.clone()
    assert tm.tril_mix_(a, t) is a
    if _extension.has_kernel("tril_mix_", "cpu"):
        b = g.clone()
        torch.ops.lcfast.tril_mix_(b, t)
        assert torch.equal(a, b)
    assert ((a.double() - exact).abs() <= _bound(t, g)).all()
    monkeypatch.setattr(tm._extension, "has_kernel", lambda op, dev: False)
    c = g.clone()
    assert tm.tril_mix_(c, t) is c and torch.equal(c, torch.bmm(t, g))


def test_frames_use_it_in_place_and_agree():
    """random_frames mixes its own Gaussians in place; orthonormal_rows leaves its argument
    alone and gives the same bits; FactoredFrames.dense() too; rows orthonormal to 1e-6."""
    ids = torch.arange(40)
    g = gaussian_frames(1, ids, 784, 25)
    before = g.clone()
    q = orthonormal_rows(g)
    assert torch.equal(g, before)
    rf = random_frames((784,), 25, 1, ids, dtype=torch.float32)
    assert torch.equal(q, rf)
    f = factored_frames((784,), 25, 1, ids)
    gauss = f.gauss.clone()
    assert torch.equal(f.dense(), rf) and torch.equal(f.gauss, gauss)
    # a strided gauss (a view) still gives the same bits
    strided = FactoredFrames(f.gauss.mT.contiguous().mT, f.mix, f.row_norms, f.mix_l1)
    assert torch.equal(strided.dense(), rf)
    assert _orth_err(rf) < 1e-6


def test_in_place_keeps_the_rows_householder_needs():
    """A point sent to Householder QR (failed or ill-conditioned factor) gets it from its
    original rows also when the buffer is mixed in place (own=True), one pass and two."""
    for D, P in ((40, 5), (8, 6)):
        g = gaussian_frames(0, torch.arange(4), D, P)
        g[1, P - 1] = g[1, P - 2]                            # rank-deficient: Cholesky fails
        g[2, P - 1] = g[2, P - 2] + 1e-5 * g[2, P - 3]       # cond ~1e6 > _COND_LIMIT
        want = orthonormal_rows(g)
        got = frames._orthonormalise(g.clone(), own=True)
        assert torch.equal(got, want), (D, P)
        assert _orth_err(got) < 2e-6
