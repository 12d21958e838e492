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
from .trace import Payload, Segment, Switch, chain_segments, run_segment, run_to

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
    ``Kc = 1``, the candidates are ``(z, 0)``) also whether the zero set of ``z`` meets
    the closed polygon and whether ``z`` is not identically zero there."""
    mask = pg._mask(verts, nv)
    filled = torch.where(mask[..., None], verts, verts[:, :1])          # padding: a real vertex
    if relu:
        c = coef[..., 0, :]                                              # (n, M, 3)
        tol = pg.tolerance(c, size)
        # interval bound over the polygon's bounding box: a unit whose |z| at the box's
        # centre exceeds its slope times the half-size (+ 2 tol, far above rounding)
        # keeps one sign, away from 0: no cut, no touch, not zero
        lo = torch.where(mask[..., None], verts, verts.new_tensor(torch.inf)).amin(1)
        hi = torch.where(mask[..., None], verts, verts.new_tensor(-torch.inf)).amax(1)
        mid, half = (lo + hi) / 2, (hi - lo) / 2                          # (n, 2)
        zc = c[..., 0] + c[..., 1] * mid[:, :1] + c[..., 2] * mid[:, 1:]
        near = zc.abs() <= c[..., 1].abs() * half[:, :1] + c[..., 2].abs() * half[:, 1:] + 2 * tol
        r, u = near.nonzero(as_tuple=True)
        cr = c[r, u]                                                     # (P, 3)
        z = cr[:, None, 0] + cr[:, None, 1] * filled[r, :, 0] + cr[:, None, 2] * filled[r, :, 1]   # (P, K)
        zmn, zmx, t = z.amin(1), z.amax(1), tol[r, u]
        split, touch = torch.zeros_like(near), torch.zeros_like(near)
        nonzero = torch.ones_like(near)
        split[r, u] = (zmn < -t) & (zmx > t)
        touch[r, u] = (zmn <= t) & (zmx >= -t)
        nonzero[r, u] = (zmn < -t) | (zmx > t)
        return split, touch, nonzero
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


def _gather(maps, verts, nv, pid, size, n_planes, crossed_acc, keep=False):
    """Units that cut each region at one switch: ``(region, unit)`` pairs and their
    maps ``(npairs, Kc, 3)``; updates the crossing counts of an lcfast site.

    ``maps(idx, st)``: the :class:`Payload` and the maps ``(n, M, Kc, 3)`` of the
    switch's units on regions ``idx`` (a slice) with interior points ``st (n, 2)``.
    With ``keep``, also returns every region's maps of the first candidate
    ``(R, M, 3)`` (ReLU: the pre-activation), else None."""
    R = verts.shape[0]
    st = pg.centroid(verts, nv)
    regs, units, coefs, kept = [], [], [], []
    valid = None
    per = None
    i = 0
    while i < R:
        j = min(R, i + 1) if per is None else min(R, i + per)  # first: one region, for the switch's size
        idx = slice(i, j)
        pl, coef = maps(idx, st[idx])
        valid = pl.valid
        M, Kc = coef.shape[1], coef.shape[2]
        relu = pl.switch.kind != "maxpool"
        split, touch, nonzero = _violations(coef, verts[idx], nv[idx], st[idx], valid, size, relu=relu)
        if pl.switch.lc_site:
            t = touch.to(torch.int32)
            acc = crossed_acc.setdefault(pl.switch.name, [torch.zeros(n_planes, M, dtype=torch.int32),
                                                          torch.zeros(n_planes, M, dtype=torch.int32)])
            acc[0].index_add_(0, pid[idx], t)
            acc[1].index_add_(0, pid[idx], nonzero.to(torch.int32))
        r, u = split.nonzero(as_tuple=True)
        regs.append(r + i)
        units.append(u)
        c = coef[r, u]
        coefs.append(torch.cat([c, torch.zeros_like(c)], 1) if relu else c)   # ReLU: add its 0 candidate
        if keep:
            kept.append(coef[:, :, 0])
        per = _BUDGET // max(1, verts.shape[1] * M * Kc)
        i = j
    return (pl.switch, torch.cat(regs), torch.cat(units), torch.cat(coefs), valid,
            torch.cat(kept) if keep else None)


def _cut(sw, verts, nv, pid, regs, units, coefs, valid, size, knots):
    """Apply the cutting pairs in rounds; returns the new ``verts, nv, pid`` and the
    region each new region came from ``(R',)``."""
    R = verts.shape[0]
    cnt = torch.bincount(regs, minlength=R)
    off = torch.cumsum(cnt, 0) - cnt
    group = torch.arange(R)
    done_v, done_n, done_p, done_g = [], [], [], []
    segs, segu, segp = [], [], []
    k = 0
    while group.numel():
        act = cnt[group] > k
        if not bool(act.all()):
            rest = ~act
            done_v.append(verts[rest]), done_n.append(nv[rest]), done_p.append(pid[rest])
            done_g.append(group[rest])
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
    group = torch.cat(done_g) if done_g else group
    if segs:
        knots[sw.name] = (torch.cat(segs), torch.cat(segu), torch.cat(segp))
    else:
        knots[sw.name] = (torch.zeros(0, 2, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.long),
                          torch.zeros(0, dtype=torch.long))
    kk = int(nv.max()) if nv.numel() else 1
    return verts[:, :kk], nv, pid, group


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
    need = _violations(coef[:, None, :1] if relu else coef[:, None], verts, nv, st,
                       valid[:, None] if valid is not None else None, size, relu=relu)[0][:, 0]
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


def _from_input(model, sl: Slices, pid, target):
    """``maps`` for :func:`_gather`: the model's forward from the input up to switch
    ``target`` at every region's interior point."""
    def maps(idx, st):
        pl, _, _ = run_to(model, sl.basis, st, pid[idx], target)
        return pl, _coef(pl, st)
    return maps


def _carried(sw: Switch, seg: Segment, prev: Segment | None, state, parent):
    """``maps`` for :func:`_gather` on a chain (:func:`~.trace.chain_segments`): each
    region's maps at the previous switch (``state (R_prev, M, 3)``, pre-activations, of
    the region ``parent (R,)`` it was cut from) go through that switch with the region's
    own pattern (the sign at its interior point) and then through ``seg`` only.  At the
    first switch (``prev`` None) ``state`` is the planes' ``(origin, u, v)``."""
    def maps(idx, st):
        if prev is None:
            abc = torch.stack([x[parent[idx]] for x in state])              # (3, n, *S)
        else:
            m = state[parent[idx]]                                          # (n, M, 3)
            on = (m[..., 0] + m[..., 1] * st[:, :1] + m[..., 2] * st[:, 1:] > 0)[..., None]
            m = torch.where(on, m, m * prev.slope if prev.slope else torch.zeros_like(m))
            abc = m.permute(2, 0, 1).reshape(3, -1, *prev.shape)
        pl = dataclasses.replace(run_segment(seg, abc), switch=sw)
        return pl, torch.stack([pl.value, pl.ds, pl.dt], -1)
    return maps


def run(model, sl: Slices, size: tuple[float, float], max_regions: int | None = None,
        switches: list[Switch] | None = None, chain: bool = True) -> Result:
    """Partition every plane's polygon (see the module docstring).

    Args:
        model: a :func:`~.trace.float64_copy` of the user's model.
        sl: the planes and their starting polygons.
        size: ``(w, h)`` scale of the polygons (for tolerances).
        max_regions: stop with a ``ValueError`` when more regions appear.
        switches: the model's switches (default: found by one forward).
        chain: carry each region's maps from switch to switch when the model is a plain
            chain (:func:`~.trace.chain_segments`); False: always run the forward from
            the input (the reference path).
    """
    if switches is None:
        switches, _ = switches_of(model, sl)
    N = sl.verts.shape[0]
    verts, nv, pid = sl.verts, sl.nv, torch.arange(N)
    segs = chain_segments(model, switches, sl.origin[:1]) if chain else None
    state, parent = (sl.basis, pid) if segs else (None, None)
    knots, acc = {}, {}
    for target, sw0 in enumerate(switches):
        if segs:
            maps = _carried(sw0, segs[target], segs[target - 1] if target else None, state, parent)
        else:
            maps = _from_input(model, sl, pid, target)
        keep = segs is not None and target + 1 < len(switches)
        sw, regs, units, coefs, valid, state = _gather(maps, verts, nv, pid, size, N, acc, keep=keep)
        if sw.name != sw0.name:
            raise RuntimeError(f"geometry: the forward pass changed its switches ({sw.name} vs {sw0.name})")
        verts, nv, pid, parent = _cut(sw0, verts, nv, pid, regs, units, coefs, valid, size, knots)
        if max_regions is not None and verts.shape[0] > max_regions:
            raise ValueError(f"max_regions: the partition has {verts.shape[0]} regions after {sw0.name} "
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
