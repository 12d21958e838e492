"""Cross-polytope vertices (docs/design.md#definition).

The frames they are built from are drawn in :mod:`lcfast.frames` (re-exported here:
:func:`random_frames`, :func:`shared_frame`, :data:`FRAMES_VERSION`).
"""
from __future__ import annotations

import torch

from .frames import FRAMES_VERSION, random_frames, shared_frame

__all__ = ["FRAMES_VERSION", "random_frames", "shared_frame", "vertices"]


def vertices(x: torch.Tensor, directions: torch.Tensor, radius: float, *, out: torch.Tensor | None = None,
             work: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-polytope vertices ``x +- r * v_p``: the only code that forms them.

    Each vertex is ``fl(x + fl(r * v_p))`` (``fl(x - fl(r * v_p))``), whichever buffers
    are used, so every backend pushes bit-identical vertices.

    Args:
        x: ``(n, *S)`` centres.
        directions: ``(n, P, *S)`` per point or ``(P, *S)`` shared, same dtype as ``x``
            (unit vectors; the radius scales them).
        radius: ``r``.
        out: optional buffer to write into, ``n * 2P * D`` elements of the result
            dtype, contiguous (e.g. reused across chunks: a fresh CPU buffer of tens of
            MB pays its page faults on every chunk).
        work: optional buffer for ``r * directions`` (``directions.numel()`` elements).

    Returns:
        ``(n * 2P, *S)``, point-major, within a point ``+v_1..+v_P, -v_1..-v_P``
        (a view of ``out`` when given).

    Example:
        >>> vertices(torch.zeros(1, 2), torch.eye(2), 0.5)
        tensor([[ 0.5000,  0.0000],
                [ 0.0000,  0.5000],
                [-0.5000, -0.0000],
                [-0.0000, -0.5000]])
    """
    n, S = x.shape[0], tuple(x.shape[1:])
    if directions.dim() == x.dim():  # shared (P, *S)
        directions = directions.unsqueeze(0)
    P = directions.shape[1]
    d = torch.mul(directions, radius, out=None if work is None else work.view(directions.shape))
    shape = (n, 2, P, *S)
    if out is None:
        v = torch.empty(shape, dtype=torch.promote_types(x.dtype, d.dtype), device=x.device)
    else:
        v = out.view(shape)
    c = x.unsqueeze(1)
    torch.add(c, d, out=v[:, 0])
    torch.sub(c, d, out=v[:, 1])
    return v.view(n * 2 * P, *S)
