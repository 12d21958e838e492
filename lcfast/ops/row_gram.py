"""The native op ``lcfast::row_gram``: Gram matrices of blocks of rows, ``g g^T`` per
point, in float64 (the Gram step of the CholeskyQR in :mod:`lcfast.frames`).

C++ CPU kernel in ``csrc/row_gram_cpu.cpp`` (float32 fma sums over blocks of 32 columns
per lane, the blocks and lanes added in float64: within ``33 * 2^-24 |g_i| |g_j|`` of the
exact value, measured 7.5e-8 against the float32 bmm's 4.0e-7; exactly symmetric).
No CUDA kernel: on a GPU, and for dtypes other than float32, :func:`row_gram` is the
torch expression ``(g @ g.mT).to(torch.float64)`` (a Gram matrix in ``g``'s dtype).
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["row_gram", "row_gram_torch"]

if _extension.available():
    @torch.library.register_fake("lcfast::row_gram")
    def _row_gram_fake(g):
        return g.new_empty((g.shape[0], g.shape[1], g.shape[1]), dtype=torch.float64)


def row_gram_torch(g: torch.Tensor) -> torch.Tensor:
    """The fallback: ``(g @ g.mT)`` in ``g``'s dtype, then float64 ``(B, P, P)``."""
    return (g @ g.mT).to(torch.float64)


def row_gram(g: torch.Tensor) -> torch.Tensor:
    """Gram matrices of the rows of each point: ``out[b, i, j] = sum_d g[b, i, d] g[b, j, d]``.

    The native op where the extension has a kernel for ``g``'s device (the CPU) and ``g``
    is float32 (float32 block sums added in float64); else :func:`row_gram_torch` (CUDA, other
    dtypes, no extension), which sums in ``g``'s dtype.

    Args:
        g: ``(B, P, D)`` rows (any strides).

    Returns:
        ``(B, P, P)`` float64 on ``g``'s device.

    Example:
        >>> row_gram(torch.ones(2, 3, 5))[0]
        tensor([[5., 5., 5.],
                [5., 5., 5.],
                [5., 5., 5.]], dtype=torch.float64)
    """
    if g.dtype == torch.float32 and _extension.has_kernel("row_gram", g.device.type):
        return torch.ops.lcfast.row_gram(g)
    return row_gram_torch(g)
