"""The reference backend: the oracle every other backend is tested against.

All ``n * 2P`` vertices of a chunk go through the real model; at each site the
crossing rule of docs/design.md#definition is evaluated with plain PyTorch, then the
model's own activation call runs unchanged.  Reads top to bottom: the rule
(:func:`crossing_counts`), the handler that applies it at a site, the chunk.
Readable on purpose; optimized backends never import this file.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..neighborhood import vertices
from ..sites import SiteSpec
from .base import Backend, ChunkResult
from .intercept import SiteHandler, SiteInterceptor

__all__ = ["crossing_counts", "ReferenceBackend"]


def crossing_counts(pre: torch.Tensor, V: int) -> torch.Tensor:
    """Crossed neurons of each vertex group.

    Args:
        pre: ``(n * V, *F)`` site values, the ``V`` vertices of each point contiguous.
        V: vertices per point.

    Returns:
        ``LongTensor (n,)``: neurons ``j`` whose three-valued signs over the group are
        not all equal, i.e. ``not (min > 0 or max < 0 or (min == 0 and max == 0))``.

    Example:
        >>> crossing_counts(torch.tensor([[1., -1.], [2., -1.]]), 2)
        tensor([1])
    """
    n = pre.shape[0] // V
    z = pre.reshape(n, V, math.prod(pre.shape[1:]))
    mn = z.amin(dim=1)
    mx = z.amax(dim=1)
    same_sign = (mn > 0) | (mx < 0) | ((mn == 0) & (mx == 0))
    return (~same_sign).sum(dim=1)


class _ReferenceHandler(SiteHandler):
    """Counts with :func:`crossing_counts`; the model's own call runs unchanged
    (:meth:`SiteHandler.handle`'s default)."""

    def count(self, pre, V):
        return crossing_counts(pre, V)


class ReferenceBackend(Backend):
    """Naive backend: every vertex through the model, counts with PyTorch ops."""

    name = "reference"

    def handler(self):
        return _ReferenceHandler()

    def run_chunk(self, model: nn.Module, x: torch.Tensor, directions: torch.Tensor, radius: float,
                  spec: SiteSpec) -> ChunkResult:
        """Measure ``n`` points: ``x`` ``(n, *S)``, ``directions`` ``(n, P, *S)`` or
        ``(P, *S)``; every vertex through the model.  Returns counts ``(n, L)``."""
        n = x.shape[0]
        V = 2 * directions.shape[-x.dim()]
        v = vertices(x, directions, radius)
        interceptor = SiteInterceptor(model, spec, self.handler(), n * V, V)
        with interceptor:
            model(v)
        return ChunkResult.of(interceptor, n)
