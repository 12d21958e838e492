"""Exact local complexity for ``P = 2`` neighbourhoods."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..frames import random_frames
from . import engine
from .partition import _check_model
from .trace import float64_copy

__all__ = ["exact_local_complexity", "DIAMOND"]

#: The P = 2 cross-polytope in the plane's coordinates (CCW): x +- r v1, x +- r v2.
DIAMOND = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)


def _frames(x, directions, seed, ids):
    N, S = x.shape[0], tuple(x.shape[1:])
    if directions is None:
        ids = torch.arange(N) if ids is None else torch.as_tensor(ids, dtype=torch.long)
        if ids.shape != (N,):
            raise ValueError(f"ids must have shape ({N},), got {tuple(ids.shape)}")
        return random_frames(S, 2, seed, ids)
    if not isinstance(directions, torch.Tensor):
        raise TypeError(f"directions must be a tensor, got {type(directions).__name__}")
    d = directions.detach().to(torch.float64)
    if d.shape == (2, *S):
        d = d.expand(N, 2, *S)
    if d.shape != (N, 2, *S):
        raise ValueError(f"directions must have shape (2, *S) or (N, 2, *S) = ({N}, 2, {', '.join(map(str, S))}), "
                         f"got {tuple(directions.shape)}")
    if not bool(torch.isfinite(d).all()):
        raise ValueError("directions must be finite")
    return d


def exact_local_complexity(model: nn.Module, x: torch.Tensor, radius: float = 0.005,
                           directions: torch.Tensor | None = None, seed: int = 0, ids=None,
                           chunk_size: int = 256, return_regions: bool = False):
    """Exact LC of ``P = 2`` neighbourhoods: per lcfast site, the neurons whose zero set
    meets the image of the diamond ``conv{x +- r v1, x +- r v2}``; a neuron identically
    zero on the diamond is not counted.  The vertex-sign LC of
    :func:`lcfast.local_complexity` with the same directions is a lower bound.

    Args:
        model: a piecewise-linear ``nn.Module`` (see :func:`partition`).
        x: ``(N, *S)`` centres.
        radius: ``r > 0``.
        directions: ``(N, 2, *S)`` per point or ``(2, *S)`` shared, used as given;
            default: lcfast's random frames for ``(seed, ids)``.
        seed, ids: as in :func:`lcfast.local_complexity` (when ``directions`` is None).
        chunk_size: neighbourhoods partitioned together.
        return_regions: also return the number of linear regions of each diamond.

    Returns:
        ``counts`` LongTensor ``(N, L)`` over the lcfast sites (same order and names as
        ``local_complexity(...).sites``); with ``return_regions``, ``(counts, regions (N,))``.

    Example:
        >>> d = lcfast.shared_frame(x.shape[1:], 2)                  # doctest: +SKIP
        >>> exact_local_complexity(model, x, radius=0.01, directions=d).shape   # doctest: +SKIP
        torch.Size([N, L])
    """
    _check_model(model)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor (N, *S)")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension: (N, *S), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0 or radius == float("inf"):
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    N = x.shape[0]
    x = x.detach().to(torch.float64)
    d = _frames(x, directions, seed, ids) * float(radius)
    m64 = float64_copy(model)
    counts, regions, names = [], [], None
    for idx in engine._chunks(N, chunk_size):
        n = idx.stop - idx.start
        sl = engine.Slices(x[idx], d[idx, 0], d[idx, 1], DIAMOND.expand(n, 4, 2).clone(),
                           torch.full((n,), 4, dtype=torch.long))
        res = engine.run(m64, sl, (2.0, 2.0))
        names = [s.name for s in res.switches if s.lc_site]
        counts.append(torch.stack([res.crossed[k] for k in names], 1) if names
                      else torch.zeros(n, 0, dtype=torch.long))
        regions.append(torch.bincount(res.plane, minlength=n))
    if N == 0:
        counts, regions = [torch.zeros(0, 0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    out = torch.cat(counts).long()
    return (out, torch.cat(regions)) if return_regions else out
