"""``lcfast::chol_inverse`` (csrc/chol_inverse_cpu.cpp): the inverse of the Cholesky
factor of small SPD matrices, against torch's ``cholesky_ex`` + ``solve_triangular``
(the fallback) and against the defining identities in float64."""
from __future__ import annotations

import pytest
import torch

from lcfast import _extension
from lcfast.ops.chol_inverse import chol_inverse, chol_inverse_torch

native = pytest.mark.skipif(not _extension.has_kernel("chol_inverse", "cpu"), reason="extension without chol_inverse")


def _spd(B, P, seed=0, cond=10.0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(B, P, 4 * P + 1, generator=g, dtype=torch.float64)
    a = m @ m.mT / (4 * P + 1)
    return a + torch.eye(P, dtype=torch.float64) / cond


@native
@pytest.mark.parametrize("B,P", [(7, 1), (5, 2), (300, 25), (3, 64), (0, 4), (2, 0)])
def test_equals_lapack_and_inverts(B, P):
    a = _spd(B, P)
    T, info, d = torch.ops.lcfast.chol_inverse(a)
    T2, info2, d2 = chol_inverse_torch(a)
    assert T.shape == (B, P, P) and info.shape == (B,) and d.shape == (B, P)
    assert torch.equal(info, info2) and int(info.sum()) == 0
    assert bool((T.triu(1) == 0).all())
    scale = T2.abs().amax().item() if T2.numel() else 1.0
    assert (T - T2).abs().max().item() <= 1e-13 * scale if T.numel() else True
    assert (d - d2).abs().max().item() <= 1e-13 * d2.abs().amax().item() if d.numel() else True
    if B and P:  # T A T^T = I: T is L^-1 of A = L L^T
        eye = torch.eye(P, dtype=torch.float64)
        assert (T @ a @ T.mT - eye).abs().max().item() < 1e-12


@native
def test_not_positive_definite_reports_the_minor():
    a = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    a[1, 2, 2] = -1.0                 # third leading minor fails
    a[2, 0, 0] = 0.0                  # first
    a[3, 3, 3] = float("nan")         # fourth (NaN is not > 0)
    T, info, _ = torch.ops.lcfast.chol_inverse(a)
    assert info.tolist() == [0, 3, 1, 4]
    assert torch.equal(info[:3], chol_inverse_torch(a)[1][:3])
    assert torch.equal(T[0], torch.eye(4, dtype=torch.float64)) and bool((T[1:] == 0).all())


@native
def test_same_bits_on_one_and_two_threads_and_opcheck():
    a = _spd(500, 25, seed=3)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.lcfast.chol_inverse(a)
        torch.set_num_threads(2)
        two = torch.ops.lcfast.chol_inverse(a)
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(x, y) for x, y in zip(one, two))
    assert torch.equal(torch.ops.lcfast.chol_inverse(a[7:9])[0], one[0][7:9])  # per matrix, not per batch
    torch.library.opcheck(torch.ops.lcfast.chol_inverse.default, (_spd(3, 5),))


def test_wrapper_dispatch_and_bad_input(monkeypatch):
    a = _spd(4, 6)
    monkeypatch.setattr(_extension, "has_kernel", lambda op, dev: False)
    got = chol_inverse(a)
    assert all(torch.equal(x, y) for x, y in zip(got, chol_inverse_torch(a)))
    if _extension.available():
        with pytest.raises(RuntimeError, match="float64"):
            torch.ops.lcfast.chol_inverse(a.float())
