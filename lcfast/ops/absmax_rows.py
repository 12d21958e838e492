"""The native op ``lcfast::absmax_rows`` (C++/CUDA, ``csrc/absmax_rows*``): the screen
reduction of the offsets engine, ``max_p |a_p|`` over the first rows of each point, in
one pass over ``a``.

C++ kernels in ``csrc/`` (CPU, and CUDA when built with it); this file holds the fake
(meta) implementation for ``torch.compile``/``opcheck`` and the wrapper, which falls
back to the torch expression where the extension has no kernel for the device.

The op is exact (a max of absolute values rounds nothing): it equals the fallback
``torch.maximum(a.amax(1), -a.amin(1))`` value for value, NaN where a NaN is among the
rows (as ``amax`` propagates it); only the sign of a zero result may differ (the op
gives ``+0.0``, the torch expression ``-0.0`` on some of its paths; csrc/absmax_rows.h).
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["DTYPES", "absmax_rows", "absmax_rows_torch"]

#: the dtypes the op takes (the kernels' integer lanes: 2, 4 and 8 bytes)
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


if _extension.available():
    @torch.library.register_fake("lcfast::absmax_rows")
    def _absmax_rows_fake(a, rows):
        torch._check(a.dim() == 3, lambda: f"lcfast::absmax_rows: a must be 3-d (N, R, F), got {tuple(a.shape)}")
        torch._check(1 <= rows <= a.shape[1], lambda: f"lcfast::absmax_rows: rows must be in [1, R], got {rows}")
        return a.new_empty((a.shape[0], a.shape[2]))


def absmax_rows_torch(a: torch.Tensor, rows: int) -> torch.Tensor:
    """The torch expression of :func:`absmax_rows` (the fallback): two passes, ``amax``
    and ``amin`` over the rows (not ``abs().amax``: a third pass and a temporary)."""
    a = a.narrow(1, 0, rows)
    return torch.maximum(a.amax(1), -a.amin(1))


def absmax_rows(a: torch.Tensor, rows: int) -> torch.Tensor:
    """``max_{p < rows} |a[:, p, :]|``: the native op where the extension has a kernel for
    ``a``'s device, else :func:`absmax_rows_torch`.

    Args:
        a: ``(N, R, F)`` float32/float64/bfloat16/float16, any strides (neurons adjacent,
            ``a.stride(2) == 1``, are read in place; other layouts are copied first).
        rows: how many leading rows, ``1 <= rows <= R``.

    Returns:
        ``(N, F)`` in ``a``'s dtype (contiguous from the op).

    Example:
        >>> absmax_rows(torch.tensor([[[1., -3.], [-2., 2.], [9., 9.]]]), 2)
        tensor([[2., 3.]])
    """
    if a.dtype not in DTYPES:
        raise TypeError(f"absmax_rows: a must be one of {DTYPES}, got {a.dtype}")
    if a.dim() != 3 or not 1 <= rows <= a.shape[1]:
        raise ValueError(f"absmax_rows: a must be (N, R, F) and rows in [1, R], got a {tuple(a.shape)}, rows {rows}")
    if _extension.has_kernel("absmax_rows", a.device.type):
        return torch.ops.lcfast.absmax_rows(a, int(rows))
    return absmax_rows_torch(a, rows)
