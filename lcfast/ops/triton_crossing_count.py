"""``lcfast::triton_crossing_count``: crossed neurons per point, read-only pass.

Used at sites whose activation Triton does not implement (ELU, Mish, ... see lcfast.acts) and
at module-output sites; the model's own activation then runs unchanged.
"""
from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from .triton_crossing_act import launch_epilogue

__all__ = ["triton_crossing_count"]


@triton_op("lcfast::triton_crossing_count", mutates_args=())
def triton_crossing_count(pre: torch.Tensor, V: int) -> torch.Tensor:
    """Args: ``pre`` ``(n*V, *F)``; ``V``.  Returns ``LongTensor (n,)`` (docs/design.md#definition)."""
    _, counts = launch_epilogue(pre, V, "identity", 0.0, store=False, wrap=wrap_triton)
    return counts


@triton_crossing_count.register_fake
def _(pre, V):
    return pre.new_empty((pre.shape[0] // V,), dtype=torch.int64)
