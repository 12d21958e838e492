"""Nonlinear op rules on centre + offsets, and the crossing test.

* ReLU / LeakyReLU (:func:`piecewise`): exact case split per neuron and vertex:
  centre and vertex both positive -> ``d``; both non-positive -> ``slope * d``; mixed
  -> ``f(c + d) - f(c)`` in the centre dtype.  Antisymmetry survives at a point iff no
  neuron of it is mixed at any vertex (a crossing, or a centre whose sign differs
  from the common sign of its vertices).
* max pooling (:func:`max_pool`): per window, ``out = c[j] - c[i] + d[j]`` with ``i``
  the centre's argmax and ``j`` the vertex's (exactly ``d[i]`` when they agree);
  antisymmetric iff every vertex's argmax equals the centre's.
* products of two varying tensors (:func:`product`, :func:`bilinear`):
  ``(c1 + d1)(c2 + d2) - c1 c2 = (c1 + d1) d2 + d1 c2``; breaks antisymmetry.
* every other op (:func:`smooth`: GELU, SiLU, softmax, LayerNorm, attention, ...):
  ``f(c + d) - f(c)`` evaluated in the centre dtype on all ``2P`` vertices.
* an op without a rule (:func:`fallback`): evaluated on the vertices and on the
  centre repeated per vertex, and accepted only when the latter is equal over the
  vertices of each point (the op did not mix them) and kept its shape; otherwise
  :class:`OffsetsError`.  Never silently wrong.
"""
from __future__ import annotations

import math

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .band import activation_band, ambiguous_at, point_band, with_band
from .layout import norm_dim, out_layout
from .screen import DELTA, antisym_bound_pts, bound_pts, newly_broken, rebuild, values_at
from .tensor import Layout, OffsetTensor, OffsetsError, from_pm, from_pts, merge, split, to_pts

aten = torch.ops.aten
__all__ = ["piecewise", "crossing_counts", "site_counts", "scaled_counts", "max_pool", "product", "bilinear", "smooth", "fallback", "RULES"]

#: aten op -> rule(func, args, kwargs); filled here and in :mod:`.rules`
RULES: dict = {}


def rule(*ops):
    """Register a rule for the given aten ops (``None`` entries are skipped)."""
    def deco(fn):
        for op in ops:
            if op is not None:
                RULES[op] = fn
        return fn
    return deco


def scaled_counts(x: OffsetTensor, scales) -> torch.Tensor:
    """Crossing counts ``(N, K)`` with every offset scaled by ``k`` in ``scales``
    (another radius ``k * r``), exact for the antisymmetric points only: their vertex
    values are ``c +- k a_p``, crossed iff ``c - k M <= 0 <= c + k M`` (three-valued)."""
    c, m = antisym_bound_pts(x)
    return torch.stack([crossed(c - k * m, c + k * m).sum(1) for k in scales], 1)


def crossed(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The crossing rule on the min and max over the vertices (three-valued signs)."""
    return ~((lo > 0) | (hi < 0) | ((lo == 0) & (hi == 0)))


def _candidates(x: OffsetTensor):
    """The screen (:mod:`.screen`): the centre ``(N, F)`` and, at the candidate neurons
    ``(pt, f)``, the vertex values ``z+-`` ``(m, P)`` in the centre dtype, and the
    ambiguous neurons per point ``(N,)`` (:mod:`.band`; ``None`` without a band).  A
    neuron is a candidate when a vertex may reach zero, or its band."""
    c, bound = bound_pts(x)
    band = point_band(x)
    reach = bound * (1 + DELTA) if band is None else bound * (1 + DELTA) + band
    pt, f = torch.nonzero(c.abs() <= reach, as_tuple=True)
    cc, ss, aa = values_at(x, pt, f, c)
    base = cc[:, None] + ss
    zp, zm = base + aa, base - aa
    amb = None if band is None else torch.bincount(pt[ambiguous_at(zp, zm, band[pt, f])], minlength=x.ctx.n)
    return c, pt, f, cc, ss, aa, zp, zm, amb


def _crossed_at(zp, zm):
    lo = torch.minimum(zp.amin(1), zm.amin(1))
    hi = torch.maximum(zp.amax(1), zm.amax(1))
    return crossed(lo, hi)


def crossing_counts(x: OffsetTensor) -> torch.Tensor:
    """Crossed neurons per point, three-valued signs of the ``2P`` vertex values
    (DESIGN.md section 1.4): ``LongTensor (N,)``.  A neuron the screen clears has every
    vertex strictly on its centre's side, so only candidates are evaluated."""
    return site_counts(x)[0]


def site_counts(x: OffsetTensor):
    """``(counts, ambiguous)``: :func:`crossing_counts` and the ambiguous neurons per
    point ``(N,)`` (``None`` when ``x`` carries no band)."""
    _, pt, _, _, _, _, zp, zm, amb = _candidates(x)
    return torch.bincount(pt[_crossed_at(zp, zm)], minlength=x.ctx.n), amb


def piecewise(x: OffsetTensor, slope: float, count: bool = False):
    """ReLU (``slope = 0``) or LeakyReLU of ``x``; with ``count`` also the crossing
    counts ``(N,)`` (from the same vertex values) and the ambiguous neurons ``(N,)``
    (``None`` without a band, :mod:`.band`).  Returns ``(out, counts, ambiguous)``.

    Per neuron and vertex pair: if the centre and both vertices lie on one side, the
    offsets scale exactly (``a, s -> g a, g s``, ``g = 1`` or ``slope``, one factor per
    neuron, so a low-rank basis scales with it); otherwise the pair's offsets
    ``o+- = f(z+-) - f(c)`` are evaluated in the centre dtype and split into
    ``a = (o+ - o-)/2``, ``s = (o+ + o-)/2`` (:func:`.screen.rebuild`).  Only the
    screen's candidates are evaluated.  An antisymmetric point with such a neuron
    becomes broken (reason ``crossing``, or ``centre_sign`` when its vertices agree with
    each other but not with the centre)."""
    ctx, lay = x.ctx, x.lay
    c, pt, f, cc, ss, aa, zp, zm, amb = _candidates(x)
    hit = _crossed_at(zp, zm)
    counts = torch.bincount(pt[hit], minlength=ctx.n) if count else None
    pu = cc > 0
    exact = (pu[:, None] == (zp > 0)) & (pu[:, None] == (zm > 0))
    bad = ~exact.all(1)
    # ReLU in one pass (torch.relu) rather than compare + scale + select: 3 of the ~20
    # elementwise passes of this rule per call (ResNet18 offsets profile, 2-core CPU)
    fn = torch.relu if slope == 0 else (lambda t: torch.where(t > 0, t, t * slope))
    c4 = x.c4()
    c_out = merge(fn(c4), lay.bdim)
    pos4 = c4 > 0
    g4 = pos4.to(ctx.dtype) if slope == 0 else torch.full_like(c4, slope, dtype=ctx.dtype).masked_fill_(pos4, 1)
    a_out4 = x.a4() * g4
    e_out4 = None if x.s is None else x.s4() * x.at_broken(g4)
    ctx.count_op(x)
    pt_all = pt
    pt, f, exact = pt[bad], f[bad], exact[bad]
    if pt.numel():
        cb, zp, zm, aa, ss = cc[bad], zp[bad], zm[bad], aa[bad], ss[bad]
        g = torch.full_like(cb, slope).masked_fill_(cb > 0, 1.0)[:, None]
        fc = fn(cb)[:, None]
        op, om = fn(zp) - fc, fn(zm) - fc
        a_vals = torch.where(exact, g * aa, (op - om) * 0.5)
        s_vals = torch.where(exact, g * ss, (op + om) * 0.5)
        newly = newly_broken(x, pt)
        crossed_pts = torch.zeros_like(newly)
        crossed_pts[pt_all[hit]] = True
        ctx.mark_break(newly & crossed_pts, "crossing")
        ctx.mark_break(newly & ~crossed_pts, "centre_sign")
    else:
        a_vals = s_vals = aa[:0]
    out = rebuild(x, c_out, a_out4, e_out4, lay, pt, f, a_vals, s_vals)
    return with_band(out, activation_band(x.band, c_out, slope)), counts, amb


@rule(aten.relu.default)
def _relu(func, args, kwargs):
    return piecewise(args[0], 0.0)[0]


@rule(aten.leaky_relu.default)
def _leaky(func, args, kwargs):
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    return piecewise(args[0], float(slope))[0]


_MAX_POOLS = {}
for _k in (1, 2, 3):
    _op = getattr(getattr(aten, f"max_pool{_k}d_with_indices", None), "default", None)
    if _op is not None:
        _MAX_POOLS[_op] = _k


def _pool_params(k: int, args, kwargs):
    """``(kernel, stride, padding, dilation)`` of ``max_pool{k}d_with_indices``, each a
    ``k``-tuple."""
    v = dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), args))
    v.update(kwargs)

    def tup(t, default):
        t = default if t is None or (isinstance(t, (list, tuple)) and len(t) == 0) else t
        t = tuple(t) if isinstance(t, (list, tuple)) else (t,)
        return t * k if len(t) == 1 else t
    ks = tup(v["kernel_size"], None)
    return ks, tup(v.get("stride"), ks), tup(v.get("padding"), (0,)), tup(v.get("dilation"), (1,))


def window_index(size_in, size_out, kernel, stride, padding, dilation) -> torch.Tensor:
    """``(L_out, kk)``: the flat input position of each element of each pooling window,
    in the kernel's row-major scan order (the order max pooling breaks ties in), ``-1``
    where the window hangs over the padding."""
    pos, ok = [], []
    for i, o, k, s, p, d in zip(size_in, size_out, kernel, stride, padding, dilation):
        q = torch.arange(o)[:, None] * s - p + torch.arange(k)[None, :] * d  # (o, k)
        pos.append(q)
        ok.append((q >= 0) & (q < i))
    flat = torch.zeros((), dtype=torch.long)
    valid = torch.ones((), dtype=torch.bool)
    nd = len(pos)
    for j, (q, m) in enumerate(zip(pos, ok)):
        shape = [1] * (2 * nd)
        shape[j], shape[nd + j] = q.shape
        flat = flat * size_in[j] + q.reshape(shape)
        valid = valid & m.reshape(shape)
    return torch.where(valid, flat, -1).reshape(math.prod(size_out), -1)


@rule(*_MAX_POOLS)
def max_pool(func, args, kwargs):
    """Per-window rule for ``max_pool{1,2,3}d_with_indices``.

    A window whose centre argmax ``i`` provably stays a maximiser at every vertex
    (``c_i - b_i > c_j + b_j`` for the other elements ``j``, ``b`` the screen's bound)
    passes every part through ``i`` exactly (``a[i]``, basis rows ``E[i]``).  The other
    windows are evaluated at all ``2P`` vertices from their elements' exact values;
    where the centre's argmax is not a maximiser at some vertex (an argmax switch) the
    window's offsets ``max_j v[j] - c_out`` go through :func:`.screen.rebuild`, and the
    point becomes broken (reason ``argmax``).  The returned indices are the vertices'
    own argmaxes (the centre's expanded, materialised only where one differs)."""
    x = args[0]
    k = _MAX_POOLS[func]
    if not isinstance(x, OffsetTensor) or x.dim() != k + 2 or x.lay.bdim != 0:
        raise OffsetsError(f"{func}: batched input with the vertex batch in dimension 0 expected")
    ctx, lay = x.ctx, x.lay
    n, P, R = ctx.n, ctx.P, ctx.R
    c_out, idx_c = func(x.c, *args[1:], **kwargs)
    ctx.count_op(x)
    size_in, size_out = tuple(x.shape[2:]), tuple(c_out.shape[2:])
    lin, lout = math.prod(size_in), math.prod(size_out)
    win = window_index(size_in, size_out, *_pool_params(k, args[1:], kwargs)).to(x.c.device)
    # the screen, one row per point: (N, G, L) with G = channels (and merged batch factors)
    c, bound = bound_pts(x)
    c3 = c.reshape(n, -1, lin)
    bnd = bound.reshape(n, -1, lin) * (1 + DELTA)
    ic4 = split(idx_c, lay, n, 1)
    ic = to_pts(ic4, 0)[:, 0].reshape(n, -1, lout)
    w_star = (c3 - bnd).gather(2, ic)
    u = (c3 + bnd)[:, :, win.clamp(min=0)]  # (N, G, L_out, kk)
    u = u.masked_fill((win < 0) | (win == ic[..., None]), -math.inf)
    pt, gch, o = torch.nonzero(~(w_star > u.amax(-1)), as_tuple=True)
    del u
    pos = win[o]  # (m, kk)
    # ties among exact elements (bound 0: every vertex's value is the centre's, as for the
    # zeros of a ReLU's dead neurons) resolve as at the centre: pooling keeps the first
    # maximiser in scan order and the centre's argmax i is the first, so an exact j before i
    # has c_j < c_i and one after loses the tie.  ResNet18 224 px, r = 5e-3: most of the
    # stem pool's candidate windows, 5,404 of 5,443, were such ties (2 points).
    i_c = ic[pt, gch, o]
    ci, bi = c3[pt, gch, i_c], bnd[pt, gch, i_c]
    cj, bj = (t[pt[:, None], gch[:, None], pos.clamp(min=0)] for t in (c3, bnd))
    ok = (pos < 0) | (pos == i_c[:, None]) | (cj + bj < ci[:, None]) | ((bj == 0) & (cj <= ci[:, None]))
    tie = (bi == 0) & ok.all(1)
    pt, gch, o, pos = pt[~tie], gch[~tie], o[~tie], pos[~tie]
    # candidate windows: every vertex's values at the window's elements
    kk = pos.shape[1]
    cc, ss, aa = values_at(x, pt.repeat_interleave(kk), (gch[:, None] * lin + pos.clamp(min=0)).flatten(),
                           c.reshape(n, -1))
    base = cc[:, None] + ss
    v = torch.cat([base + aa, base - aa], 1).reshape(-1, kk, 2 * P)
    v = v.masked_fill((pos < 0)[:, :, None], -math.inf)
    vmax, amx = v.max(1)  # (m, 2P), first maximiser
    i_c = ic[pt, gch, o][:, None]  # the centre's argmax of each candidate window
    jstar = (pos == i_c).to(torch.int8).argmax(1)
    vstar = v[torch.arange(v.shape[0], device=v.device), jstar]
    bad = ~(vmax == vstar).all(1)
    # the exact parts through the centre's argmax
    a_out = _gather_rows(x.a, ic4, R, out_shape := c_out.shape[1:])
    e_out4 = None
    if x.s is not None:
        e_out4 = split(_gather_rows(x.s, ic4.index_select(1, x.bidx), x.K, out_shape), lay, x.nb, x.K)
    pb, fb = pt[bad], gch[bad] * lout + o[bad]
    ctx.mark_break(newly_broken(x, pb), "argmax")
    co = to_pts(split(c_out, lay, n, 1), 0)[:, 0][pb, fb]
    o_v = vmax[bad] - co[:, None]
    op, om = o_v[:, :P], o_v[:, P:]
    out = rebuild(x, c_out, split(a_out, lay, n, R), e_out4, lay, pb, fb, (op - om) * 0.5, (op + om) * 0.5)
    # the band: a window's value is one of its elements', so the largest band of them
    band = None if x.band is None else func(x.band, *args[1:], **kwargs)[0]
    if ctx.pool_indices_unused:  # the caller drops the indices (OffsetTensor.__torch_function__)
        return with_band(out, band), torch.zeros((), dtype=torch.long, device=c_out.device).expand(
            n * 2 * P * lay.outer * lay.inner, *out_shape)
    # indices of the vertices: the centre's, and each candidate window's own argmax
    iv4 = ic4.expand(*ic4.shape[:2], 2 * P, *ic4.shape[3:])
    chosen = pos.gather(1, amx)  # (m, 2P)
    moved = chosen != i_c
    if bool(moved.any()):
        iv = to_pts(iv4, 0).clone()
        iv[pt, :, gch * lout + o] = chosen
        iv4 = from_pts(iv, iv4.shape, 0)
    return with_band(out, band), merge(iv4, 0).reshape(-1, *out_shape)


def _gather_rows(t: torch.Tensor, ic4: torch.Tensor, rows: int, out_shape) -> torch.Tensor:
    """Rows of ``t`` (``pts * rows`` in dimension 0) read at their point's centre argmax
    (the index broadcast over the rows as a stride-0 view, never written out)."""
    pts = ic4.shape[1]
    t6 = t.reshape(*ic4.shape[:1], pts, rows, *ic4.shape[3:5], -1)  # (outer, pts, rows, inner, C, L_in)
    idx = ic4.reshape(*ic4.shape[:5], -1)
    idx = idx.expand(*idx.shape[:2], rows, *idx.shape[3:])
    return t6.gather(5, idx).reshape(-1, *out_shape)


def product(a: OffsetTensor, b: OffsetTensor, lay: Layout) -> OffsetTensor:
    """Elementwise ``a * b`` of two varying tensors, in the centre dtype:
    ``(c1 + s1 +- a1)(c2 + s2 +- a2) - c1 c2``."""
    ctx = a.ctx
    ctx.mark_break(torch.ones(ctx.n, dtype=torch.bool), "product")
    ctx.count_op(a)
    la, lb = Layout(a.lay.bdim, *lay[1:]), Layout(b.lay.bdim, *lay[1:])
    c = a.c * b.c
    ap, am = (t - split(a.c, la, ctx.n, 1) for t in a.pm())
    bp, bm = (t - split(b.c, lb, ctx.n, 1) for t in b.pm())
    ca, cb = split(a.c, la, ctx.n, 1), split(b.c, lb, ctx.n, 1)
    op = (ca + ap) * bp + ap * cb
    om = (ca + am) * bm + am * cb
    return from_pm(split(c, lay, ctx.n, 1), op, om, lay, ctx)


def bilinear(func, a: OffsetTensor, b: OffsetTensor) -> OffsetTensor:
    """``mm``/``bmm`` of two varying tensors: ``o = f(c1 + d1, d2) + f(d1, c2)`` per
    vertex (``d = s +- a``), in the offsets dtype; the batch must be a batch
    dimension of the product."""
    ctx = a.ctx
    if a.lay != b.lay or a.lay.bdim >= a.dim() - 2:
        raise OffsetsError(f"{func} of two varying tensors over the vertex batch dimension")
    ctx.mark_break(torch.ones(ctx.n, dtype=torch.bool), "product")
    ctx.count_op(a)
    lay, n, P = a.lay, ctx.n, ctx.P
    c = func(a.c, b.c)

    def dense(x):  # (.., n*2P, ..) offsets in the compute dtype
        zp, zm = x.pm()
        c4 = x.c4()
        return merge(torch.cat([zp - c4, zm - c4], lay.bdim + 2).to(ctx.dtype), lay.bdim)
    da, db = dense(a), dense(b)
    d = func(a.centre_rows(2 * P, ctx.dtype) + da, db) + func(da, b.centre_rows(2 * P, ctx.dtype))
    out_lay = out_layout(a, c, d, func, R=2 * P)
    d4 = split(d, out_lay, n, 2 * P)
    return from_pm(split(c, out_lay, n, 1), d4.narrow(out_lay.bdim + 2, 0, P),
                   d4.narrow(out_lay.bdim + 2, P, P), out_lay, ctx)


# ---------------------------------------------------------------------------
# general rule
# ---------------------------------------------------------------------------


def _check_dim(pos: int, trailing: int = 0):
    """An op that works along dimension ``args[pos]`` (or on the last ``trailing``
    dims) must not work along the vertex batch."""
    def check(args, kwargs):
        x = args[0]
        if trailing:
            bad = x.lay.bdim >= x.dim() - trailing
        else:
            bad = norm_dim(args[pos] if len(args) > pos else kwargs["dim"], x.dim()) == x.lay.bdim
        if bad:
            raise OffsetsError("op along the vertex batch dimension")
    return check


def _check_ln(args, kwargs):
    _check_dim(0, len(args[1]))(args, kwargs)


def _check_attention(args, kwargs):
    for t in args[:3]:
        if isinstance(t, OffsetTensor) and t.lay.bdim >= t.dim() - 2:
            raise OffsetsError("attention over the vertex batch dimension")


def smooth(func, args, kwargs, check=None):
    """General rule ``f(c + d) - f(c)``, in the centre dtype, on all ``2P`` vertices."""
    if check is not None:
        check(args, kwargs)
    flat, spec = tree_flatten((args, kwargs))
    xs = [t for t in flat if isinstance(t, OffsetTensor)]
    x, ctx = xs[0], xs[0].ctx
    if any(t.ctx is not ctx for t in xs):
        raise OffsetsError("tensors of two measurements meet")
    cargs, ckw = tree_unflatten([t.c if isinstance(t, OffsetTensor) else t for t in flat], spec)
    vargs, vkw = tree_unflatten([t.vertices() if isinstance(t, OffsetTensor) else t for t in flat], spec)
    out_c, out_v = func(*cargs, **ckw), func(*vargs, **vkw)
    ctx.mark_break(torch.ones(ctx.n, dtype=torch.bool), "smooth")
    P = ctx.P
    ctx.count_op(x)

    def wrap(c, v):
        if not isinstance(c, torch.Tensor) or not c.is_floating_point():
            return v
        lay = out_layout(x, c, v, func, R=2 * P)
        c4 = split(c, lay, ctx.n, 1)
        d = split(v, lay, ctx.n, 2 * P) - c4
        return from_pm(c4, d.narrow(lay.bdim + 2, 0, P), d.narrow(lay.bdim + 2, P, P), lay, ctx)

    if isinstance(out_c, torch.Tensor):
        return wrap(out_c, out_v)
    return type(out_c)(wrap(c, v) for c, v in zip(out_c, out_v))


_SMOOTH = {
    "gelu.default": None, "silu.default": None, "tanh.default": None, "sigmoid.default": None,
    "elu.default": None, "exp.default": None, "log.default": None, "sqrt.default": None,
    "rsqrt.default": None, "erf.default": None, "pow.Tensor_Scalar": None, "pow.Tensor_Tensor": None,
    "reciprocal.default": None, "abs.default": None, "clamp.default": None, "hardtanh.default": None,
    "softplus.default": None, "mish.default": None, "hardswish.default": None, "hardsigmoid.default": None,
    "sin.default": None, "cos.default": None, "log_sigmoid_forward.default": None, "celu.default": None,
    "selu.default": None, "relu6.default": None, "_softmax.default": _check_dim(1),
    "_log_softmax.default": _check_dim(1), "_safe_softmax.default": _check_dim(1),
    "native_layer_norm.default": _check_ln,
    "_scaled_dot_product_flash_attention_for_cpu.default": _check_attention,
    "_scaled_dot_product_efficient_attention.default": _check_attention,
    "_scaled_dot_product_flash_attention.default": _check_attention,
    "_scaled_dot_product_cudnn_attention.default": _check_attention,
    "_native_multi_head_attention.default": _check_attention,
}


def _smooth_rule(check):
    def rule(func, args, kwargs):
        return smooth(func, args, kwargs, check)
    return rule


for _name, _check in _SMOOTH.items():
    _packet, _over = _name.split(".")
    _op = getattr(getattr(aten, _packet, None), _over, None)
    if _op is not None:
        RULES[_op] = _smooth_rule(_check)


def fallback(func, args, kwargs):
    """An op without a rule: see the module docstring."""
    flat, spec = tree_flatten((args, kwargs))
    xs = [t for t in flat if isinstance(t, OffsetTensor)]
    x, ctx = xs[0], xs[0].ctx
    P2 = 2 * ctx.P
    vargs, vkw = tree_unflatten([t.vertices() if isinstance(t, OffsetTensor) else t for t in flat], spec)
    out_v = func(*vargs, **vkw)
    outs = [t for t in tree_flatten(out_v)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not outs:
        return out_v  # indices, masks, scalars: what the vertices give
    cargs, ckw = tree_unflatten(
        [t.centre_rows(P2).contiguous() if isinstance(t, OffsetTensor) else t for t in flat], spec)
    out_cc = func(*cargs, **ckw)
    lay = x.lay
    ctx.mark_break(torch.ones(ctx.n, dtype=torch.bool), "general")
    ctx.count_op(x)

    def wrap(cc, v):
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            return v
        if tuple(v.shape) != tuple(x.shape):
            raise OffsetsError(f"{func} is not known to the offsets engine and changes the shape "
                               f"{tuple(x.shape)} -> {tuple(v.shape)}: cannot follow the vertex batch")
        cc4 = split(cc, lay, ctx.n, P2)
        c4 = cc4.narrow(lay.bdim + 2, 0, 1)
        if not torch.equal(cc4, c4.expand_as(cc4)):
            raise OffsetsError(f"{func} is not known to the offsets engine and mixes the vertices of a point")
        d4 = split(v, lay, ctx.n, P2) - c4
        P = ctx.P
        return from_pm(c4, d4.narrow(lay.bdim + 2, 0, P), d4.narrow(lay.bdim + 2, P, P), lay, ctx)

    flat_v, spec_v = tree_flatten(out_v)
    flat_c = tree_flatten(out_cc)[0]
    return tree_unflatten([wrap(c, v) for c, v in zip(flat_c, flat_v)], spec_v)

