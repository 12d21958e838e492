"""Deformation of neighbourhoods by a network (the paper's Appendix): the graph of the
``2P`` vertices of a cross-polytope as embedded at every site."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from ..frames import random_frames
from ..neighborhood import vertices
from .partition import _check_model
from .trace import float64_copy, site_values

__all__ = ["Deformation", "deformation", "graph_metrics"]


@dataclasses.dataclass
class Deformation:
    """Per point and site: ``eccentricity`` (mean over vertices) and ``diameter``,
    both ``(N, L)`` float64; ``sites``: the L lcfast site names."""

    eccentricity: torch.Tensor
    diameter: torch.Tensor
    sites: list[str]


def graph_metrics(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean eccentricity and diameter of the cross-polytope graphs of embedded vertices.

    The graph joins every pair of the ``2P`` vertices except antipodal ones (``p``
    and ``p + P``), edge length = Euclidean distance; path lengths are shortest paths.

    Args:
        emb: ``(N, 2P, F)`` embedded vertices (order ``+v_1..+v_P, -v_1..-v_P``).

    Returns:
        ``(eccentricity (N,), diameter (N,))``.
    """
    N, V, _ = emb.shape
    P = V // 2
    d = torch.cdist(emb, emb)
    anti = torch.zeros(V, V, dtype=torch.bool)
    idx = torch.arange(P)
    anti[idx, idx + P] = anti[idx + P, idx] = True
    w = d.masked_fill(anti, torch.inf)
    for k in range(V):  # Floyd-Warshall, vectorised over points
        w = torch.minimum(w, w[:, :, k:k + 1] + w[:, k:k + 1, :])
    ecc = w.amax(2)
    return ecc.mean(1), ecc.amax(1)


def deformation(model: nn.Module, x: torch.Tensor, radius: float = 0.005, n_dirs: int = 2, seed: int = 0,
                directions: torch.Tensor | None = None, ids=None) -> Deformation:
    """Eccentricity and diameter of each point's neighbourhood graph at every site.

    Args:
        model: any ``nn.Module`` (sites as in :func:`lcfast.local_complexity`).
        x: ``(N, *S)`` centres.
        radius: ``r > 0``.
        n_dirs: ``P >= 2`` (the graph has ``2P`` vertices).
        seed, ids: lcfast's random frames (when ``directions`` is None).
        directions: ``(N, P, *S)`` or ``(P, *S)``, used as given.

    Returns:
        :class:`Deformation` with ``(N, L)`` tensors.
    """
    _check_model(model)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError("x must be a floating-point tensor (N, *S)")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0 or radius == float("inf"):
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    N, S = x.shape[0], tuple(x.shape[1:])
    x = x.detach().to(torch.float64)
    if directions is None:
        if isinstance(n_dirs, bool) or not isinstance(n_dirs, int) or not 2 <= n_dirs <= x[0].numel():
            raise ValueError(f"n_dirs must be an int in [2, {x[0].numel()}] (with P = 1 the graph has no "
                             f"edge), got {n_dirs!r}")
        ids = torch.arange(N) if ids is None else torch.as_tensor(ids, dtype=torch.long)
        directions = random_frames(S, n_dirs, seed, ids)
    directions = directions.detach().to(torch.float64)
    if directions.shape[-len(S):] != S or directions.dim() not in (len(S) + 1, len(S) + 2) \
            or directions.shape[-len(S) - 1] < 2:
        raise ValueError(f"directions must have shape (P, *S) or (N, P, *S) with P >= 2, S = {S}, "
                         f"got {tuple(directions.shape)}")
    P = directions.shape[-len(S) - 1]
    verts = vertices(x, directions, float(radius))
    names, vals = site_values(float64_copy(model), verts)
    ecc, dia = [], []
    for v in vals:
        e, dm = graph_metrics(v.reshape(N, 2 * P, -1))
        ecc.append(e), dia.append(dm)
    if not names:
        raise ValueError("model has no site (no activation call)")
    return Deformation(torch.stack(ecc, 1), torch.stack(dia, 1), names)
