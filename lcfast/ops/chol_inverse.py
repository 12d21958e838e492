"""The native op ``lcfast::chol_inverse``: for small symmetric positive definite
matrices, the inverse of their Cholesky factor (the ``P x P`` step of the CholeskyQR in
:mod:`lcfast.frames`).

C++ CPU kernel in ``csrc/chol_inverse_cpu.cpp``: the whole batch in one parallel loop,
each matrix serially in float64, because torch's per-matrix LAPACK calls collapse when
the CPU is oversubscribed (``solve_triangular`` on 1,000 25 x 25 matrices: 7.8 s with 2
threads at load ~4 against 6.5 ms on one thread, measured).  No CUDA kernel: elsewhere
:func:`chol_inverse` is :func:`chol_inverse_torch` (``cholesky_ex`` + ``solve_triangular``).
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["chol_inverse", "chol_inverse_torch"]

if _extension.available():
    @torch.library.register_fake("lcfast::chol_inverse")
    def _chol_inverse_fake(a):
        B, P = a.shape[0], a.shape[1]
        return a.new_empty((B, P, P)), a.new_empty((B,), dtype=torch.long), a.new_empty((B, P))


def chol_inverse_torch(a: torch.Tensor):
    """The fallback: ``L, info = cholesky_ex(a)``, ``T = L^-1`` by ``solve_triangular``."""
    L, info = torch.linalg.cholesky_ex(a)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    T = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    return T, info.long(), L.diagonal(dim1=-2, dim2=-1)


def chol_inverse(a: torch.Tensor):
    """``(T, info, diag)`` for symmetric positive definite ``a``: ``T = L^-1`` with
    ``a = L L^T`` (``L`` lower triangular, positive diagonal).

    Args:
        a: ``(B, P, P)`` float64.

    Returns:
        ``T`` ``(B, P, P)`` (lower triangular), ``info`` ``(B,)`` int64 (``0``, or ``k > 0``
        when the leading ``k x k`` minor is not positive definite: then ``T`` is not a
        valid inverse), ``diag`` ``(B, P)`` the diagonal of ``L``.

    Example:
        >>> T, info, d = chol_inverse(4 * torch.eye(2, dtype=torch.float64)[None])
        >>> T[0], int(info[0]), d[0]
        (tensor([[0.5000, 0.0000],
                [0.0000, 0.5000]], dtype=torch.float64), 0, tensor([2., 2.], dtype=torch.float64))
    """
    if a.dtype == torch.float64 and _extension.has_kernel("chol_inverse", a.device.type):
        return torch.ops.lcfast.chol_inverse(a)
    return chol_inverse_torch(a)
