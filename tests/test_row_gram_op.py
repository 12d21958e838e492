"""lcfast::row_gram (csrc/row_gram_cpu.cpp, lcfast/ops/row_gram.py): Gram matrices of
float32 row blocks in float64, against an independent float64 computation."""
from __future__ import annotations

import pytest
import torch

from lcfast import _extension
from lcfast.ops import row_gram as rg

native = pytest.mark.skipif(not _extension.has_kernel("row_gram", "cpu"), reason=f"lcfast._C: {_extension.ERROR}")

# The kernel's error bound (top of csrc/row_gram_cpu.cpp): lanes of 32 float32 fma terms
# then float64, |out - exact| <= 33 * 2^-24 |g_i| |g_j|.  The reference is float64 (its
# own error ~D 2^-53, negligible); torch's float32 bmm measured 4e-7 on 784 x 25 rows.
BOUND = 33 * 2.0 ** -24

SHAPES = [(3, 25, 784), (4, 1, 9), (5, 7, 7), (0, 3, 4), (2, 5, 513), (3, 6, 13), (2, 25, 3 * 64 * 64),
          (1, 30, 2049), (2, 4, 1), (3, 0, 5), (2, 3, 0)]


def _exact(g: torch.Tensor) -> torch.Tensor:
    g64 = g.to(torch.float64)
    return torch.einsum("bid,bjd->bij", g64, g64)


@native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_against_float64(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    g = torch.randn(*shape, generator=gen) * 3
    out = torch.ops.lcfast.row_gram(g)
    assert out.dtype == torch.float64 and out.shape == (shape[0], shape[1], shape[1])
    assert torch.equal(out, out.mT)  # exactly symmetric
    if g.numel():
        n = g.to(torch.float64).norm(dim=-1)
        err = ((out - _exact(g)).abs() / (n.unsqueeze(-1) * n.unsqueeze(-2)).clamp_min(1e-300)).max().item()
        assert err <= BOUND
    else:
        assert torch.equal(out, torch.zeros_like(out))


@native
def test_cancellation_and_strides():
    """Rows with large cancelling terms (the bound is relative to |g_i| |g_j|, not to the
    result) and a non-contiguous input."""
    g = torch.randn(4, 6, 1000, generator=torch.Generator().manual_seed(1))
    g[:, 1] = -g[:, 0] + 1e-3 * g[:, 1]
    t = g.transpose(1, 2).contiguous().transpose(1, 2)  # (4, 6, 1000), column-major rows
    out = torch.ops.lcfast.row_gram(t)
    assert torch.equal(out, torch.ops.lcfast.row_gram(g))
    n = g.to(torch.float64).norm(dim=-1)
    assert ((out - _exact(g)).abs() / (n.unsqueeze(-1) * n.unsqueeze(-2))).max().item() <= BOUND


@native
def test_thread_count_independent():
    g = torch.randn(64, 9, 300, generator=torch.Generator().manual_seed(2))
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.lcfast.row_gram(g)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, torch.ops.lcfast.row_gram(g))
    assert torch.equal(torch.ops.lcfast.row_gram(g[[5, 2]]), one[[5, 2]])  # per point


@native
def test_opcheck_and_bad_input():
    torch.library.opcheck(torch.ops.lcfast.row_gram.default, (torch.randn(3, 4, 17),))
    torch.library.opcheck(torch.ops.lcfast.row_gram.default, (torch.randn(0, 4, 17),))
    with pytest.raises(RuntimeError, match="3-d float32"):
        torch.ops.lcfast.row_gram(torch.randn(3, 4, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="3-d float32"):
        torch.ops.lcfast.row_gram(torch.randn(4, 5))


def test_wrapper_paths(monkeypatch):
    """The wrapper: the op for float32 with a kernel, else the torch expression (float64
    input: a float64 Gram; without a kernel: the float32 bmm, cast)."""
    g = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(3))
    g64 = g.to(torch.float64)
    assert torch.equal(rg.row_gram(g64), g64 @ g64.mT)
    if _extension.has_kernel("row_gram", "cpu"):
        assert torch.equal(rg.row_gram(g), torch.ops.lcfast.row_gram(g))
    monkeypatch.setattr(rg._extension, "has_kernel", lambda op, dev: False)
    assert torch.equal(rg.row_gram(g), (g @ g.mT).to(torch.float64))
    n = g64.norm(dim=-1)
    assert ((rg.row_gram(g) - _exact(g)).abs() / (n.unsqueeze(-1) * n.unsqueeze(-2))).max().item() < 1e-5


@native
def test_typical_error_below_float32_bmm():
    """On Gaussian rows the error is far below the worst-case bound: measured 5e-8 to 8e-8
    (relative to |g_i| |g_j|, 200 x 25 x 784, seeds 0-2) against 4e-7 for the float32 bmm
    it replaces in lcfast.frames."""
    g = torch.randn(200, 25, 784, generator=torch.Generator().manual_seed(0))
    n = g.to(torch.float64).norm(dim=-1)
    den = n.unsqueeze(-1) * n.unsqueeze(-2)
    exact = _exact(g)
    err = ((torch.ops.lcfast.row_gram(g) - exact).abs() / den).max().item()
    bmm = (((g @ g.mT).to(torch.float64) - exact).abs() / den).max().item()
    assert err < 1.5e-7 < bmm
