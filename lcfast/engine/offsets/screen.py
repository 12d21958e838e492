"""The screen and the update shared by the nonlinear rules (ReLU, max pooling).

A nonlinear op needs exact vertex values only where a vertex may sit on the other side
of a decision (a ReLU neuron's sign, a max-pool window's argmax).  The *screen* bounds
every vertex's offset per neuron, ``|s_p +- a_p| <= max_p |a_p| + sum_k max_p
|coef[p, k]| |E_k|`` (one row per point), and the rule evaluates the ``2P`` vertex
values only at the *candidate* neurons the bound cannot clear, gathered as ``(point,
neuron)`` pairs.  Everywhere else the op acts on the offsets exactly and linearly.

The *update* (:func:`rebuild`) writes the explicit values of the neurons where the
case split did not hold ("bad" neurons): their antisymmetric part into ``a``, their
symmetric part as new low-rank basis rows (a unit vector per bad neuron, its values in
``coef``), or a dense symmetric part when that would exceed ``R`` rows.
"""
from __future__ import annotations

import torch

from ...ops.absmax_rows import absmax_rows
from .tensor import OffsetTensor, basis_values, from_pts, merge, product_dtype, split, to_pts

__all__ = ["DELTA", "antisym_bound_pts", "bound_pts", "values_at", "newly_broken", "rebuild"]

#: relative margin of the screen: a neuron is cleared only when its centre exceeds the
#: bound by this factor, so that rounding in the bound or in ``c + s +- a`` cannot hide
#: a sign change (float32 rounding of a sum of ``K <= 32`` terms is below 2^-18
#: relative; the margin is generous on purpose, a wider margin only adds candidates).
DELTA = 2.0 ** -10


def antisym_bound_pts(x: OffsetTensor):
    """``(c, m)``, both ``(N, F)`` in the centre dtype: the centre per point and neuron
    and ``max_p |a_p|``."""
    cd, b, P = x.c.dtype, x.lay.bdim, x.ctx.P
    c = to_pts(x.c4(), b)[:, 0]
    raw, scale = x.raw_a()  # a pending (positive) radius scales the bound, not the rows
    if not isinstance(scale, (int, float)):  # a pending RowMix: the rows themselves are needed
        raw, scale = x.a, 1.0
    # one pass (lcfast::absmax_rows) where the extension has the kernel, else amax and
    # amin (not aminmax nor |a|: on (1, 200, 25, 1, 200) float32, one CPU thread, 0.5 ms
    # each against 38 ms (aminmax) and 11 ms (abs + amax), measured earlier).  The op on
    # (1000, 25, 200) float32, one thread: 2.2 ms against 9.3 ms for amax + amin (load
    # 5); in the MNIST MLP 784-200x4-10 call (1000 points, P = 25, one thread, load 1.2)
    # the screen's 32 reductions take 21 ms against 62 ms (torch profiler)
    m = absmax_rows(to_pts(split(raw, x.lay, x.ctx.n, x.ctx.R), b), P).to(cd)
    return c, (m if scale == 1.0 else m * scale)


def bound_pts(x: OffsetTensor):
    """``(c, bound)``, both ``(N, F)`` in the centre dtype: the centre per point and
    neuron and a bound on ``|s_p +- a_p|`` over the vertices."""
    c, m = antisym_bound_pts(x)
    if x.s is not None:
        sb = s_bound(x)
        m = m + sb if x.nb == x.ctx.n else m.index_add(0, x.bidx, sb)
    return c, m


def s_bound(x: OffsetTensor) -> torch.Tensor:
    """``(Nb, F)``: a bound on ``max_p |s_p|`` of the broken points, centre dtype."""
    cd, b, P = x.c.dtype, x.lay.bdim, x.ctx.P
    E = to_pts(x.s4(), b)
    if x.coef is None:
        return absmax_rows(E, P).to(cd)
    work = product_dtype(E, cd)  # float32 rounding of K <= 32 terms is inside DELTA
    w = x.coef.narrow(1, 0, P).abs().amax(1, keepdim=True).to(work)  # (Nb, 1, K)
    return torch.bmm(w, E.abs().to(work))[:, 0].to(cd)


def values_at(x: OffsetTensor, pt: torch.Tensor, f: torch.Tensor, c: torch.Tensor):
    """Exact parts at ``m`` (point, neuron) pairs, centre dtype: ``c`` ``(m,)``, ``s``
    ``(m, P)`` (zero for antisymmetric points), ``a`` ``(m, P)``."""
    cd, b, P, n = x.c.dtype, x.lay.bdim, x.ctx.P, x.ctx.n
    cc = c[pt, f]
    aa = to_pts(x.a4(), b)[pt, :, f].narrow(1, 0, P).to(cd)
    ss = torch.zeros_like(aa)
    if x.s is not None and pt.numel():
        where = torch.full((n,), -1, dtype=torch.long, device=pt.device)
        where[x.bidx] = torch.arange(x.nb, device=pt.device)
        q = where[pt]
        sel = torch.nonzero(q >= 0).flatten()
        E = to_pts(x.s4(), b)[q[sel], :, f[sel]].to(cd)  # (ms, K)
        if x.coef is None:
            ss[sel] = E.narrow(1, 0, P)
        else:
            ss[sel] = torch.bmm(x.coef[q[sel]].narrow(1, 0, P), E.unsqueeze(2))[:, :, 0]
    return cc, ss, aa


def newly_broken(x: OffsetTensor, pt: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the points among ``pt`` that were antisymmetric in ``x``."""
    new = torch.zeros(x.ctx.n, dtype=torch.bool, device=pt.device)
    new[pt] = True
    if x.bidx is not None:
        new[x.bidx] = False
    return new


def _rows(v: torch.Tensor, R: int) -> torch.Tensor:
    """``(m, P)`` values as the ``R`` stored rows (the one row twice when ``P = 1``)."""
    return v if v.shape[1] == R else torch.cat([v, v], 1)


def rebuild(x: OffsetTensor, c_out: torch.Tensor, a_out4: torch.Tensor, e_out4: torch.Tensor | None, lay,
            pt: torch.Tensor, f: torch.Tensor, a_vals: torch.Tensor, s_vals: torch.Tensor) -> OffsetTensor:
    """The op's output from its exact linear part and its bad neurons.

    Args:
        x: the op's input (its broken points, basis and coefficients).
        c_out: output centre (merged form, layout ``lay``).
        a_out4: ``(split form, N points, R rows)`` antisymmetric part where the case split
            held (a fresh tensor: it is written into).
        e_out4: the input basis rows mapped by the same exact rule (split form, ``x.nb``
            points, ``x.K`` rows; a fresh tensor: it may be written into), or ``None``
            when ``x`` has no symmetric part.
        lay: output layout.
        pt, f: ``(m,)`` the bad neurons (point, flat neuron of the output), sorted by point.
        a_vals, s_vals: ``(m, P)`` their antisymmetric and symmetric parts, centre dtype.

    Returns:
        :class:`OffsetTensor` (points with a bad neuron join the broken points).
    """
    ctx = x.ctx
    b, R, dev, dt = lay.bdim, ctx.R, a_out4.device, ctx.dtype
    a_p = to_pts(a_out4, b)
    if pt.numel():
        a_p[pt, :, f] = _rows(a_vals, R).to(dt)
    a = merge(from_pts(a_p, a_out4.shape, b), b)
    new = torch.unique(pt)
    union = new if x.bidx is None else torch.unique(torch.cat([x.bidx, new]))
    if union.numel() == 0:
        return OffsetTensor(c_out, a, None, None, lay, ctx)
    nu, F = union.numel(), a_p.shape[2]
    K = 0 if x.s is None else x.K
    q = torch.searchsorted(union, pt)
    per = torch.bincount(q, minlength=nu)
    M = int(per.max()) if pt.numel() else 0
    shape4 = list(a_out4.shape)
    shape4[b + 1] = nu
    old = None if x.s is None else torch.searchsorted(union, x.bidx)
    if x.s is not None and x.coef is None and nu == x.nb:  # dense, same points: write in place
        S = to_pts(e_out4, b)
        if pt.numel():
            S[q, :, f] = _rows(s_vals, R).to(dt)
        return OffsetTensor(c_out, a, merge(from_pts(S, e_out4.shape, b), b), union, lay, ctx)
    if (x.s is not None and x.coef is None) or K + M > R:  # dense, in the offsets dtype
        S = torch.zeros(nu, R, F, dtype=dt, device=dev)
        if x.s is not None:
            e = e_out4 if x.coef is None else basis_values(e_out4, x.coef, b)
            S[old] = to_pts(e, b).to(dt)
        if pt.numel():
            S[q, :, f] = _rows(s_vals, R).to(dt)
        shape4[b + 2] = R
        return OffsetTensor(c_out, a, merge(from_pts(S, shape4, b), b), union, lay, ctx)
    coef = x.coef if M == 0 else torch.zeros(nu, R, K + M, dtype=c_out.dtype, device=dev)
    blocks = tuple(x.blocks or ())
    if x.s is not None and nu == x.nb:  # the same points: the mapped basis is written in place
        E = to_pts(e_out4, b)
        if M:
            coef[:, :, :K] = x.coef
    else:
        E = torch.zeros(nu, K, F, dtype=dt, device=dev)
        if x.s is not None:
            E[old] = to_pts(e_out4, b)
            coef[old, :, :K] = x.coef
    if M:
        E[q, :, f] = 0  # the bad neurons' old basis values are replaced by the new columns
        start = torch.cumsum(per, 0) - per
        slot = torch.arange(pt.numel(), device=dev) - start[q]
        E_new = torch.zeros(nu, M, F, dtype=dt, device=dev)
        E_new[q, slot, f] = 1
        E = torch.cat([E, E_new], 1) if K else E_new
        coef[q, :, K + slot] = _rows(s_vals, R).to(coef.dtype)
        blocks += ((ctx.new_block(), M),)
    shape4[b + 2] = K + M
    return OffsetTensor(c_out, a, merge(from_pts(E, shape4, b), b), union, lay, ctx, coef, blocks)
