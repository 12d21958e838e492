"""The exact partition of 2-D slices, layer by layer.

For every switch of the forward pass (an lcfast ReLU/LeakyReLU site or a max pooling
call, :mod:`.trace`), in call order: run the model's own forward at one interior point
of every current region (float64, forward-mode AD along the slice's two directions)
up to that switch; there every unit is affine on each region, so the regions are cut
into the cells where each unit's active candidate is constant (ReLU: the two sides of
the neuron's zero line; max pooling: the cells of the window's argmax).  Cuts are made
in rounds: round ``k`` applies the ``k``-th unit that crosses each region's original
polygon to all of its current pieces at once, vectorised over all regions (and over
all planes, for many neighbourhoods at once).
"""
from __future__ import annotations

import dataclasses

import torch

from . import polygons as pg
from .trace import Payload, Switch, run_to

__all__ = ["Slices", "Result", "run"]

# elements of the largest temporary (points x vertices x units x candidates) per chunk:
# 2^22 float64 = 32 MiB (unmeasured; keeps the shared box's memory modest)
_BUDGET = 1 << 22


@dataclasses.dataclass
class Slices:
    """``N`` planes at once: ``origin, u, v (N, *S)`` float64 and the starting convex
    polygons ``verts (N, K, 2)`` (``nv (N,)``) in each plane's ``(s, t)``."""

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    verts: torch.Tensor
    nv: torch.Tensor

    @property
    def basis(self):
        return self.origin, self.u, self.v


@dataclasses.dataclass
class Result:
    """Final regions ``verts (R, K, 2)``, ``nv (R,)``, ``plane (R,)``; ``switches``;
    per switch name: knot segments ``(E, 2, 2)``, their unit ``(E,)`` and plane ``(E,)``;
    per lcfast site: ``crossed (N,)`` neurons whose zero set meets the polygon (not
    identically zero on it)."""

    verts: torch.Tensor
    nv: torch.Tensor
    plane: torch.Tensor
    switches: list[Switch]
    knots: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    crossed: dict[str, torch.Tensor]


def _coef(pl: Payload, st: torch.Tensor) -> torch.Tensor:
    """Affine maps ``(n, M, Kc, 3)`` in the plane's coordinates from values and
    derivatives at the points ``st (n, 2)``."""
    a = pl.value - pl.ds * st[:, 0, None, None] - pl.dt * st[:, 1, None, None]
    return torch.stack([a, pl.ds, pl.dt], -1)


def _best(coef: torch.Tensor, st: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Index of the largest candidate at interior points: ``coef (..., Kc, 3)``,
    ``st`` broadcastable to ``(..., 2)``."""
    z = coef[..., 0] + coef[..., 1] * st[..., 0, None] + coef[..., 2] * st[..., 1, None]
    if valid is not None:
        z = torch.where(valid, z, torch.full_like(z, -torch.inf))
    return z.argmax(-1)


def _violations(coef, verts, nv, st, valid, size, relu=False):
    """For units ``coef (n, M, Kc, 3)`` on polygons ``(n, K, 2)``: whether the unit's
    active candidate changes inside the polygon ``(n, M)``; for ReLU units (``relu``:
    candidates ``(z, 0)``) also whether the zero set of ``z`` meets the closed polygon
    and whether ``z`` is not identically zero there."""
    filled = torch.where(pg._mask(verts, nv)[..., None], verts, verts[:, :1])  # padding: a real vertex
    if relu:
        c = coef[..., 0, :]                                              # (n, M, 3)
        ones = torch.ones_like(filled[..., :1])
        z = torch.bmm(torch.cat([ones, filled], 2), c.transpose(1, 2))   # (n, K, M)
        zmn, zmx = z.amin(1), z.amax(1)
        tol = pg.tolerance(c, size)
        return (zmn < -tol) & (zmx > tol), (zmn <= tol) & (zmx >= -tol), (zmn < -tol) | (zmx > tol)
    k = _best(coef, st[:, None, :], valid)                              # (n, M)
    top = torch.gather(coef, 2, k[..., None, None].expand(-1, -1, 1, 3))  # (n, M, 1, 3)
    diff = top - coef                                                   # (n, M, Kc, 3)
    mn = pg.evaluate(diff, filled).amin(1)                              # (n, M, Kc)
    if valid is not None:
        mn = torch.where(valid, mn, torch.zeros_like(mn))
    return (mn < -pg.tolerance(diff, size)).any(-1), None, None


def _chunks(total: int, per: int):
    per = max(1, per)
    for i in range(0, total, per):
        yield slice(i, min(total, i + per))


def _gather(model, sl: Slices, verts, nv, pid, target, size, n_planes, crossed_acc):
    """Units that cut each region at switch ``target``: ``(region, unit)`` pairs and
    their maps ``(npairs, Kc, 3)``; updates the crossing counts of an lcfast site."""
    R = verts.shape[0]
    st = pg.centroid(verts, nv)
    regs, units, coefs = [], [], []
    valid = None
    per = None
    i = 0
    while i < R:
        j = R if per is None else min(R, i + per)
        if per is None:
            j = min(R, i + 1)  # probe one region for the switch's size
        idx = slice(i, j)
        pl, _, _ = run_to(model, sl.basis, st[idx], pid[idx], target)
        coef = _coef(pl, st[idx])
        valid = pl.valid
        M, Kc = coef.shape[1], coef.shape[2]
        split, touch, nonzero = _violations(coef, verts[idx], nv[idx], st[idx], valid, size,
                                            relu=pl.switch.kind != "maxpool")
        if pl.switch.lc_site:
            t = touch.to(torch.int32)
            acc = crossed_acc.setdefault(pl.switch.name, [torch.zeros(n_planes, M, dtype=torch.int32),
                                                          torch.zeros(n_planes, M, dtype=torch.int32)])
            acc[0].index_add_(0, pid[idx], t)
            acc[1].index_add_(0, pid[idx], nonzero.to(torch.int32))
        r, u = split.nonzero(as_tuple=True)
        regs.append(r + i)
        units.append(u)
        coefs.append(coef[r, u])
        per = _BUDGET // max(1, verts.shape[1] * M * Kc)
        i = j
    return pl.switch, torch.cat(regs), torch.cat(units), torch.cat(coefs), valid


def _cut(sw, verts, nv, pid, regs, units, coefs, valid, size, knots):
    """Apply the cutting pairs in rounds; returns the new ``verts, nv, pid``."""
    R = verts.shape[0]
    cnt = torch.bincount(regs, minlength=R)
    off = torch.cumsum(cnt, 0) - cnt
    group = torch.arange(R)
    done_v, done_n, done_p = [], [], []
    segs, segu, segp = [], [], []
    k = 0
    while group.numel():
        act = cnt[group] > k
        if not bool(act.all()):
            rest = ~act
            done_v.append(verts[rest]), done_n.append(nv[rest]), done_p.append(pid[rest])
            verts, nv, pid, group = verts[act], nv[act], pid[act], group[act]
            if not group.numel():
                break
        pair = off[group] + k
        coef = coefs[pair]                                                # (A, Kc, 3)
        val = valid[units[pair]] if valid is not None else None
        need, cv, cn, parent, seg, sp = cells(verts, nv, coef, val, size, relu=sw.kind != "maxpool")
        if seg.shape[0]:
            segs.append(seg), segu.append(units[pair][need][sp]), segp.append(pid[need][sp])
        keep = ~need
        kmax = max(verts.shape[1], cv.shape[1])
        verts = torch.cat([_pad(verts[keep], kmax), _pad(cv, kmax)])
        nv = torch.cat([nv[keep], cn])
        pid = torch.cat([pid[keep], pid[need][parent]])
        group = torch.cat([group[keep], group[need][parent]])
        k += 1
    kmax = max([v.shape[1] for v in done_v] + [1])
    verts = torch.cat([_pad(v, kmax) for v in done_v]) if done_v else verts
    nv = torch.cat(done_n) if done_n else nv
    pid = torch.cat(done_p) if done_p else pid
    if segs:
        knots[sw.name] = (torch.cat(segs), torch.cat(segu), torch.cat(segp))
    else:
        knots[sw.name] = (torch.zeros(0, 2, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.long),
                          torch.zeros(0, dtype=torch.long))
    kk = int(nv.max()) if nv.numel() else 1
    return verts[:, :kk], nv, pid


def cells(verts, nv, coef, valid, size, relu=False):
    """Cut the polygons whose active candidate changes inside them into argmax cells.

    Args:
        verts: ``(A, K, 2)``, ``nv (A,)``; coef: ``(A, Kc, 3)`` one unit per polygon;
        valid: ``(A, Kc)`` or None; size: the extent's ``(w, h)``; relu: candidates
        are ``(z, 0)``.

    Returns:
        ``need (A,)`` (polygons cut), the cells ``verts (Q, K', 2), nv (Q,), parent (Q,)``
        (index among the cut polygons), and the switching segments ``(E, 2, 2)`` with
        their parent ``(E,)`` (each boundary once).
    """
    st = pg.centroid(verts, nv)
    need = _violations(coef[:, None], verts, nv, st, valid[:, None] if valid is not None else None, size,
                       relu=relu)[0][:, 0]
    cn_ = coef[need]
    val = valid[need] if valid is not None else None
    cv, cn, parent, cand = pg.argmax_cells(verts[need], nv[need], cn_, pg.tolerance(cn_, size).amax(-1), val)
    ck = cn_[parent]                                                    # (Q, Kc, 3)
    Kc = ck.shape[1]
    segs, sp = [torch.zeros(0, 2, 2, dtype=verts.dtype)], [parent[:0]]
    for j in range(1, Kc):
        # a cell's edges on the line between its candidate and candidate j > its own
        mask = cand < j
        if val is not None:
            mask &= val[parent, j]
        if not bool(mask.any()):
            continue
        q = mask.nonzero().squeeze(1)
        d = torch.gather(ck[q], 1, cand[q, None, None].expand(-1, 1, 3))[:, 0] - ck[q, j]
        seg, e = pg.edges_on(cv[q], cn[q], d, pg.tolerance(d, size))
        segs.append(seg), sp.append(parent[q[e]])
    return need, cv, cn, parent, torch.cat(segs), torch.cat(sp)


def _pad(v: torch.Tensor, k: int) -> torch.Tensor:
    if v.shape[1] >= k:
        return v
    return torch.cat([v, v.new_zeros(v.shape[0], k - v.shape[1], 2)], 1)


def switches_of(model, sl: Slices) -> tuple[list[Switch], torch.Tensor]:
    """The switches of ``model`` (a float64 copy) and its output at one point."""
    st = pg.centroid(sl.verts[:1], sl.nv[:1])
    _, sws, out = run_to(model, sl.basis, st, torch.zeros(1, dtype=torch.long), None)
    return sws, out[0]


def run(model, sl: Slices, size: tuple[float, float], max_regions: int | None = None,
        switches: list[Switch] | None = None) -> Result:
    """Partition every plane's polygon (see the module docstring).

    Args:
        model: a :func:`~.trace.float64_copy` of the user's model.
        sl: the planes and their starting polygons.
        size: ``(w, h)`` scale of the polygons (for tolerances).
        max_regions: stop with a ``ValueError`` when more regions appear.
        switches: the model's switches (default: found by one forward).
    """
    if switches is None:
        switches, _ = switches_of(model, sl)
    N = sl.verts.shape[0]
    verts, nv, pid = sl.verts, sl.nv, torch.arange(N)
    knots, acc = {}, {}
    for target, sw0 in enumerate(switches):
        sw, regs, units, coefs, valid = _gather(model, sl, verts, nv, pid, target, size, N, acc)
        if sw.name != sw0.name:
            raise RuntimeError(f"geometry: the forward pass changed its switches ({sw.name} vs {sw0.name})")
        verts, nv, pid = _cut(sw, verts, nv, pid, regs, units, coefs, valid, size, knots)
        if max_regions is not None and verts.shape[0] > max_regions:
            raise ValueError(f"max_regions: the partition has {verts.shape[0]} regions after {sw.name} "
                             f"(more than {max_regions}); use a smaller extent")
    crossed = {name: ((a[0] > 0) & (a[1] > 0)).sum(1) for name, a in acc.items()}
    return Result(verts, nv, pid, switches, knots, crossed)


def output_maps(model, sl: Slices, verts, nv, pid) -> torch.Tensor:
    """The model's output as affine maps ``(R, O, 3)`` on each region."""
    st = pg.centroid(verts, nv)
    outs = []
    for idx in _chunks(verts.shape[0], 4096):
        _, _, (v, a, b) = run_to(model, sl.basis, st[idx], pid[idx], None)
        outs.append(_coef(Payload(None, v[..., None], a[..., None], b[..., None]), st[idx])[:, :, 0])
    return torch.cat(outs)
