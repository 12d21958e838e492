"""Packed convex polygons in the plane and their splitting, vectorised over polygons.

A batch of ``P`` convex polygons is ``verts (P, K, 2)`` float64 (counter-clockwise,
padded) with ``nv (P,)`` valid vertex counts.  Every function here works on the whole
batch at once: there is no Python loop over polygons.

Affine functions on the plane are ``(..., 3)`` coefficient rows ``(a, b, c)`` with
value ``a + b*s + c*t``.
"""
from __future__ import annotations

import torch

__all__ = ["rectangle", "area", "centroid", "evaluate", "clip", "argmax_cells", "edges_on"]

# A vertex whose |value| is below REL_TOL * (|a| + |b|*w + |c|*h) of its affine function
# (w, h: the extent's size) is taken to lie on the line.  Unmeasured margin over the
# float64 rounding of the forward-mode maps (~1e-15 relative per layer): slivers thinner
# than this fraction of the extent are not cut off.
REL_TOL = 1e-10


def rectangle(s0: float, s1: float, t0: float, t1: float) -> torch.Tensor:
    """The rectangle ``[s0, s1] x [t0, t1]`` as a ``(4, 2)`` float64 polygon (CCW)."""
    return torch.tensor([[s0, t0], [s1, t0], [s1, t1], [s0, t1]], dtype=torch.float64)


def _mask(verts: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
    return torch.arange(verts.shape[1], device=verts.device) < nv[:, None]


def _next(verts: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
    i = torch.arange(verts.shape[1], device=verts.device).expand(verts.shape[0], -1)
    return torch.where(i + 1 < nv[:, None], i + 1, torch.zeros_like(i))


def area(verts: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
    """Signed (CCW positive) areas ``(P,)`` of packed polygons ``verts (P, K, 2)``."""
    nxt = _next(verts, nv)
    w = torch.gather(verts, 1, nxt[..., None].expand(-1, -1, 2))
    cross = verts[..., 0] * w[..., 1] - verts[..., 1] * w[..., 0]
    return 0.5 * (cross * _mask(verts, nv)).sum(1)


def centroid(verts: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
    """Vertex means ``(P, 2)``: interior points of convex polygons with area."""
    m = _mask(verts, nv)[..., None]
    return (verts * m).sum(1) / nv.clamp(min=1)[:, None].to(verts.dtype)


def evaluate(coef: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    """Values of affine functions at polygon vertices.

    Args:
        coef: ``(P, ..., 3)`` rows ``(a, b, c)``.
        verts: ``(P, K, 2)``.

    Returns:
        ``(P, K, ...)``: ``a + b*s + c*t`` at every vertex.
    """
    extra = coef.dim() - 2
    v = verts.reshape(verts.shape[0], verts.shape[1], *([1] * extra), 2)
    c = coef.unsqueeze(1)
    return c[..., 0] + c[..., 1] * v[..., 0] + c[..., 2] * v[..., 1]


def tolerance(coef: torch.Tensor, size: tuple[float, float]) -> torch.Tensor:
    """Per-function absolute tolerance ``(...)`` of coefficient rows ``(..., 3)`` on an
    extent of size ``(w, h)`` (see ``REL_TOL``)."""
    return REL_TOL * (coef[..., 0].abs() + coef[..., 1].abs() * size[0] + coef[..., 2].abs() * size[1])


def clip(verts: torch.Tensor, nv: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the part ``f >= 0`` of each convex polygon (Sutherland-Hodgman, one half-plane).

    Args:
        verts: ``(P, K, 2)`` packed polygons, ``nv (P,)`` vertex counts.
        f: ``(P, K)`` values of an affine function at the vertices; exact zeros are on
            the line (snap values within tolerance to 0 first).

    Returns:
        ``(verts (P, K', 2), nv (P,))``; a polygon with nothing left has ``nv < 3``.
    """
    P, K = f.shape
    valid = _mask(verts, nv)
    nxt = _next(verts, nv)
    fn = torch.gather(f, 1, nxt)
    vn = torch.gather(verts, 1, nxt[..., None].expand(-1, -1, 2))
    keep = valid & (f >= 0)
    cross = valid & (((f > 0) & (fn < 0)) | ((f < 0) & (fn > 0)))
    lam = torch.where(cross, f / torch.where(cross, f - fn, torch.ones_like(f)), torch.zeros_like(f))
    pts = verts + lam[..., None] * (vn - verts)
    flags = torch.stack([keep, cross], 2).reshape(P, 2 * K)
    cand = torch.stack([verts, pts], 2).reshape(P, 2 * K, 2)
    pos = torch.cumsum(flags, 1) - 1
    count = flags.sum(1)
    kout = max(int(count.max()) if P else 0, 1)
    out = torch.zeros(P, kout, 2, dtype=verts.dtype, device=verts.device)
    rows = torch.arange(P, device=verts.device)[:, None].expand(-1, 2 * K)
    out[rows[flags], pos[flags]] = cand[flags]
    return out, count


def argmax_cells(verts: torch.Tensor, nv: torch.Tensor, coef: torch.Tensor, tol: torch.Tensor,
                 valid: torch.Tensor | None = None):
    """Split each polygon into the cells where each of ``Kc`` affine functions is the largest.

    Args:
        verts: ``(P, K, 2)``, ``nv (P,)``: the polygons.
        coef: ``(P, Kc, 3)`` the candidates of each polygon.
        tol: ``(P,)`` absolute tolerance of the differences.
        valid: ``(P, Kc)`` bool, candidates that take part (default all).

    Returns:
        ``(verts (Q, K', 2), nv (Q,), parent (Q,), cand (Q,))``: the non-empty cells,
        the polygon each came from and its winning candidate.
    """
    P, Kc, _ = coef.shape
    if valid is None:
        valid = torch.ones(P, Kc, dtype=torch.bool, device=coef.device)
    # copy (polygon, candidate) and clip by z_k - z_j >= 0 for every j != k
    cv = verts.repeat_interleave(Kc, 0)
    cn = nv.repeat_interleave(Kc, 0).clone()
    diff = coef[:, :, None, :] - coef[:, None, :, :]          # (P, k, j, 3)
    ok = valid.reshape(-1)
    cn[~ok] = 0
    t = tol.repeat_interleave(Kc, 0)
    for j in range(Kc):
        d = diff[:, :, j, :].reshape(P * Kc, 3)
        need = ok & valid[:, j].repeat_interleave(Kc) & (torch.arange(P * Kc, device=coef.device) % Kc != j)
        need &= cn >= 3
        if not bool(need.any()):
            continue
        idx = need.nonzero().squeeze(1)
        f = evaluate(d[idx], cv[idx])
        f = torch.where(f.abs() <= t[idx, None], torch.zeros_like(f), f)
        nvv, nnv = clip(cv[idx], cn[idx], f)
        if nvv.shape[1] > cv.shape[1]:
            cv = torch.cat([cv, cv.new_zeros(cv.shape[0], nvv.shape[1] - cv.shape[1], 2)], 1)
        cv[idx] = 0
        cv[idx, :nvv.shape[1]] = nvv
        cn[idx] = nnv
    a = area(cv, cn)
    scale = area(verts, nv).abs().repeat_interleave(Kc, 0)
    keep = (cn >= 3) & (a > 1e-12 * scale)  # drop slivers below 1e-12 of the parent's area (unmeasured)
    idx = keep.nonzero().squeeze(1)
    kmax = int(cn[idx].max()) if idx.numel() else 1
    return cv[idx, :kmax], cn[idx], idx // Kc, idx % Kc


def edges_on(verts: torch.Tensor, nv: torch.Tensor, coef: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Edges of polygons that lie on the zero line of an affine function.

    Args:
        verts: ``(P, K, 2)``, ``nv (P,)``.
        coef: ``(P, 3)`` one function per polygon; ``tol (P,)``.

    Returns:
        ``(E, 2, 2)`` segments ``[[s0, t0], [s1, t1]]`` and, as a second value, the
        polygon index ``(E,)`` of each.
    """
    f = evaluate(coef, verts).abs() <= tol[:, None]
    nxt = _next(verts, nv)
    on = f & torch.gather(f, 1, nxt) & _mask(verts, nv)
    p, i = on.nonzero(as_tuple=True)
    seg = torch.stack([verts[p, i], verts[p, nxt[p, i]]], 1)
    return seg, p
