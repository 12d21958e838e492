"""The native op ``lcfast::tril_mix_``: rows of each point mixed in place by a lower
triangular matrix, ``g <- t @ g`` (the ``L^-1 G`` step of the CholeskyQR in
:mod:`lcfast.frames`, written over the Gaussian rows instead of into a fresh output).

C++ CPU kernel in ``csrc/tril_mix_cpu.cpp``: per column a float32 fma chain in ascending
``q`` (AVX-512, AVX2 and portable paths give the same bits), rows produced from the last
up so that the input is overwritten in place; within ``P * 2^-24 * sum_q |t_pq| |g_q|`` of
exact.  Measured (1,000 x 25 x 784, one thread, 2-core Zen 5): 6.1 ms in place against
44 ms for the float32 ``bmm`` into a fresh 78 MB output (most of it page faults).  No
CUDA kernel: on a GPU, for other dtypes or a non-contiguous ``g``, :func:`tril_mix_` is
:func:`tril_mix_torch` (``torch.bmm``, written back).
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["tril_mix_", "tril_mix_torch"]

if _extension.available():
    @torch.library.register_fake("lcfast::tril_mix_")
    def _tril_mix_fake(g, t):
        return None


def tril_mix_torch(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The fallback: ``g.copy_(torch.bmm(t, g))`` (``t`` cast to ``g``'s dtype; its upper
    triangle is read too, so it must be zero)."""
    return g.copy_(torch.bmm(t.to(g.dtype), g))


def tril_mix_(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """In place: ``g[b, p, :] <- sum_{q <= p} t[b, p, q] * g[b, q, :]``.

    The native op where the extension has a kernel for ``g``'s device (the CPU) and ``g``
    is float32 and contiguous (``t``'s strictly upper triangle is not read; the sums are
    float32 fma chains in ascending ``q``); else :func:`tril_mix_torch` (CUDA, other
    dtypes, strided ``g``, no extension), a ``bmm`` written back, which reads all of ``t``.

    Args:
        g: ``(B, P, D)`` rows, overwritten.
        t: ``(B, P, P)`` lower triangular (any strides; cast to ``g``'s dtype), on
            ``g``'s device.

    Returns:
        ``g``.

    Example:
        >>> g = torch.ones(1, 2, 3)
        >>> tril_mix_(g, torch.tensor([[[2., 0.], [1., 3.]]]))[0]
        tensor([[2., 2., 2.],
                [4., 4., 4.]])
    """
    if g.dtype == torch.float32 and g.is_contiguous() and _extension.has_kernel("tril_mix_", g.device.type):
        torch.ops.lcfast.tril_mix_(g, t.to(torch.float32))
        return g
    return tril_mix_torch(g, t)
