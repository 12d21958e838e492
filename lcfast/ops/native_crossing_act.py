"""The native op ``lcfast::crossing_act`` (C++/CUDA, beside the Triton
``ops/triton_crossing_act.py``): crossing count and activation of a site in one pass.

C++ kernels in ``csrc/`` (CPU, and CUDA when built with it); this file holds the fake
(meta) implementations for ``torch.compile``/``opcheck`` and the Python wrappers.
Importing it never fails; the wrappers raise ``RuntimeError`` when the extension is
missing (:data:`lcfast._extension.ERROR` says why).

Definition (docs/design.md#definition): for ``pre`` of shape ``(n*V, *F)`` with the ``V``
vertices of each point contiguous, neuron ``j`` of point ``p`` is crossed when the
three-valued signs of ``pre[p*V:(p+1)*V, j]`` are not all equal.
"""
from __future__ import annotations

import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false

from .. import _extension
from ..acts import KERNEL_DTYPES, kernel_codes

__all__ = ["ACTIVATIONS", "crossing_act", "crossing_act_", "crossing_count", "rows_flat", "supports"]

#: activation names the kernels implement (lcfast.acts rows with a native kernel)
ACTIVATIONS = tuple(kernel_codes("native"))


def rows_flat(pre: torch.Tensor) -> bool:
    """Mirror of ``row_flat`` in csrc/crossing_act.h: every row is one dense block."""
    if not is_non_overlapping_and_dense_or_false(pre):
        return False
    f = pre[0].numel() if pre.shape[0] else 0
    return pre.shape[0] <= 1 or pre.stride(0) == f


def _fake_out(pre: torch.Tensor) -> torch.Tensor:
    # row-flat inputs keep their strides (contiguous, channels-last, ...); others are
    # read from a contiguous copy, so the output is contiguous
    return torch.empty_like(pre) if rows_flat(pre) else torch.empty(pre.shape, dtype=pre.dtype, device=pre.device)


if _extension.available():
    @torch.library.register_fake("lcfast::crossing_act")
    def _crossing_act_fake(pre, V, act, slope):
        return _fake_out(pre), pre.new_empty((pre.shape[0] // V,), dtype=torch.long)

    @torch.library.register_fake("lcfast::crossing_act_")
    def _crossing_act_inplace_fake(pre, V, act, slope):
        return pre.new_empty((pre.shape[0] // V,), dtype=torch.long)

    @torch.library.register_fake("lcfast::crossing_count")
    def _crossing_count_fake(pre, V):
        return pre.new_empty((pre.shape[0] // V,), dtype=torch.long)


def _require():
    if _extension.ERROR is not None:
        raise RuntimeError(f"lcfast native ops are not available: {_extension.ERROR}")


def supports(pre: torch.Tensor, act: str = "identity") -> bool:
    """Whether the op covers ``pre`` (dtype, device kernel) and ``act``."""
    return (_extension.ERROR is None and act in ACTIVATIONS and pre.dtype in KERNEL_DTYPES and pre.dim() >= 1
            and _extension.has_kernel("crossing_act", pre.device.type))


def crossing_act(pre: torch.Tensor, V: int, act: str = "relu", slope: float = 0.0):
    """Activation and crossing counts in one pass.

    Args:
        pre: ``(n*V, *F)`` float32/float64/bfloat16/float16 site values (any layout;
            row-flat layouts such as contiguous or channels-last are read without a copy).
        V: vertices per point.
        act: ``"relu"``, ``"leaky_relu"``, ``"gelu"`` (erf), ``"gelu_tanh"`` or ``"identity"``.
        slope: negative slope of ``"leaky_relu"``.

    Returns:
        ``(out, counts)``: ``out`` ``(n*V, *F)`` = ``act(pre)`` (strides of ``pre`` when
        row-flat, else contiguous); ``counts`` ``LongTensor (n,)``.

    Example:
        >>> out, c = crossing_act(torch.tensor([[1., -1.], [2., -1.]]), 2)
        >>> out, c
        (tensor([[1., 0.], [2., 0.]]), tensor([0]))
    """
    _require()
    return torch.ops.lcfast.crossing_act(pre, int(V), act, float(slope))


def crossing_act_(pre: torch.Tensor, V: int, act: str = "relu", slope: float = 0.0) -> torch.Tensor:
    """In-place :func:`crossing_act`: ``pre <- act(pre)``; returns ``counts`` ``(n,)``."""
    _require()
    return torch.ops.lcfast.crossing_act_(pre, int(V), act, float(slope))


def crossing_count(pre: torch.Tensor, V: int) -> torch.Tensor:
    """Counts only: ``(n*V, *F) -> LongTensor (n,)``."""
    _require()
    return torch.ops.lcfast.crossing_count(pre, int(V))
