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

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .layout import norm_dim, out_layout
from .tensor import Layout, OffsetTensor, OffsetsError, align, from_pm, merge, split

aten = torch.ops.aten
__all__ = ["piecewise", "crossing_counts", "scaled_counts", "max_pool", "product", "bilinear", "smooth", "fallback", "RULES"]

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


def _antisym_bound(x: OffsetTensor) -> torch.Tensor:
    """``max_p |a_p|`` per neuron (split form, one row), centre dtype."""
    # amax/amin, not aminmax nor |a|: on (1, 200, 25, 1, 200) float32, one CPU thread,
    # 0.5 ms each against 38 ms (aminmax) and 11 ms (abs + amax), measured here
    a4, b = x.a4(), x.lay.bdim + 2
    return torch.maximum(a4.amax(b, keepdim=True), -a4.amin(b, keepdim=True)).to(x.c.dtype)


def scaled_counts(x: OffsetTensor, scales) -> torch.Tensor:
    """Crossing counts ``(N, K)`` with every offset scaled by ``k`` in ``scales``
    (another radius ``k * r``), exact for the antisymmetric points only: their vertex
    values are ``c +- k a_p``, crossed iff ``c - k M <= 0 <= c + k M`` (three-valued)."""
    c4, m = x.c4(), _antisym_bound(x)
    return torch.stack([_count(x, c4 - k * m, c4 + k * m) for k in scales], 1)


def _bounds(x: OffsetTensor):
    """``(lo, hi)``: min and max of the vertex values per neuron (split form, one row),
    centre dtype.  Antisymmetric points: ``c -+ max_p |a_p|`` (rounding is monotone, so
    this equals the min/max of the rounded vertex values); broken points: explicit.
    Also returns the broken points' ``(c, a, s, z+, z-)`` in the centre dtype (or
    ``None``), which :func:`piecewise` reuses."""
    cd = x.c.dtype
    b = x.lay.bdim + 2
    c4 = x.c4()
    if x.s is None:
        m = _antisym_bound(x)
        return c4 - m, c4 + m, None
    # every point broken (bidx sorted, so it is 0..n-1): no antisymmetric bound to take,
    # no selection or scatter (on ResNet18 every point breaks at its first ReLU)
    every = x.bidx.numel() == x.ctx.n
    cb = c4 if every else x.at_broken(c4)
    ab = (x.a4() if every else x.at_broken(x.a4())).narrow(b, 0, x.ctx.P).to(cd)
    sb = x.s4().narrow(b, 0, x.ctx.P).to(cd)
    cs = cb + sb
    zp, zm = cs + ab, cs - ab
    lo_b = torch.minimum(zp.amin(b, keepdim=True), zm.amin(b, keepdim=True))
    hi_b = torch.maximum(zp.amax(b, keepdim=True), zm.amax(b, keepdim=True))
    if every:
        lo, hi = lo_b, hi_b
    else:
        m = _antisym_bound(x)
        lo = (c4 - m).index_copy(b - 1, x.bidx, lo_b)
        hi = (c4 + m).index_copy(b - 1, x.bidx, hi_b)
    return lo, hi, (cb, ab, sb, zp, zm)


def crossed(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The crossing rule on the min and max over the vertices (three-valued signs)."""
    return ~((lo > 0) | (hi < 0) | ((lo == 0) & (hi == 0)))


def _count(x: OffsetTensor, lo, hi) -> torch.Tensor:
    b = x.lay.bdim + 1
    return crossed(lo, hi).movedim(b, 0).reshape(x.ctx.n, -1).sum(1)


def crossing_counts(x: OffsetTensor) -> torch.Tensor:
    """Crossed neurons per point, three-valued signs of the ``2P`` vertex values
    (DESIGN.md section 1.4): ``LongTensor (N,)``."""
    lo, hi, _ = _bounds(x)
    return _count(x, lo, hi)


def piecewise(x: OffsetTensor, slope: float, count: bool = False):
    """ReLU (``slope = 0``) or LeakyReLU of ``x``; with ``count`` also the crossing
    counts ``(N,)`` (from the same bounds).  Returns ``(out, counts)``.

    Per neuron and vertex pair: if the centre and both vertices lie on one side, the
    offsets scale exactly (``a, s -> g a, g s``, ``g = 1`` or ``slope``); otherwise the
    pair's offsets ``o+- = f(z+-) - f(c)`` are evaluated in the centre dtype and split
    into ``a = (o+ - o-)/2``, ``s = (o+ + o-)/2``.  An antisymmetric point with any such
    neuron becomes broken (reason ``crossing``, or ``centre_sign`` when its vertices
    agree with each other but not with the centre)."""
    ctx, lay = x.ctx, x.lay
    b = lay.bdim + 2
    lo, hi, zb = _bounds(x)
    counts = _count(x, lo, hi) if count else None
    c4 = x.c4()
    pos_c = c4 > 0
    keep = torch.where(pos_c, lo > 0, hi <= 0)

    # ReLU in one pass (torch.relu) rather than compare + scale + select: 3 of the ~20
    # elementwise passes of this rule per call (ResNet18 offsets profile, 2-core CPU)
    f = torch.relu if slope == 0 else (lambda t: torch.where(t > 0, t, t * slope))
    keep_scaled = (lambda t, pos: torch.where(pos, t, 0.0)) if slope == 0 else \
        (lambda t, pos: torch.where(pos, t, t * slope))

    def scaled_a4():  # the exact scale of every antisymmetric offset (1 where the centre is positive)
        g = pos_c.to(ctx.dtype) if slope == 0 else torch.full_like(c4, slope, dtype=ctx.dtype).masked_fill_(pos_c, 1)
        return x.a4() * g
    c_out = merge(f(c4), lay.bdim)
    ctx.count_op(x)
    bad = x.per_point(~keep)  # (N,)
    if x.bidx is not None:
        bad[x.bidx] = False
    if not bool(bad.any()):
        if x.s is None:
            return OffsetTensor(c_out, merge(scaled_a4(), lay.bdim), None, None, lay, ctx), counts
        old = x.bidx
    else:
        hit = x.per_point(crossed(lo, hi))
        ctx.mark_break(bad & hit, "crossing")
        ctx.mark_break(bad & ~hit, "centre_sign")
        old = x.bidx
    # broken points after this op: the old ones and the new ones
    new = torch.nonzero(bad).flatten().to(c4.device)
    P = ctx.P
    if new.numel() == 0:  # no newly broken point: the bounds' vertex values are the ones needed
        union = old
        cu, au, su, zp, zm = zb
    else:
        union = new if old is None else torch.unique(torch.cat([old, new]))
        sel = lambda t: t.index_select(b - 1, union)  # noqa: E731
        cu = sel(c4)
        au = sel(x.a4()).narrow(b, 0, P).to(c4.dtype)
        su = torch.zeros_like(au)
        if old is not None:
            su = su.index_copy(b - 1, torch.searchsorted(union, old), x.s4().narrow(b, 0, P).to(c4.dtype))
        cs = cu + su
        zp, zm = cs + au, cs - au
    pu = cu > 0
    exact = (pu == (zp > 0)) & (pu == (zm > 0))
    fc = f(cu)
    op, om = f(zp) - fc, f(zm) - fc
    a_new = torch.where(exact, keep_scaled(au, pu), (op - om) * 0.5)
    s_new = torch.where(exact, keep_scaled(su, pu), (op + om) * 0.5)
    a_new, s_new = a_new.to(ctx.dtype), s_new.to(ctx.dtype)
    if ctx.R != P:
        a_new, s_new = torch.cat([a_new, a_new], b), torch.cat([s_new, s_new], b)
    # union sorted: all n points means a_new is every point's, in order
    a4 = a_new if union.numel() == ctx.n else scaled_a4().index_copy(b - 1, union, a_new)
    return OffsetTensor(c_out, merge(a4, lay.bdim), merge(s_new, lay.bdim), union, lay, ctx), counts


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


@rule(*_MAX_POOLS)
def max_pool(func, args, kwargs):
    """Per-window rule for ``max_pool{1,2,3}d_with_indices`` (see module docstring)."""
    x = args[0]
    k = _MAX_POOLS[func]
    if not isinstance(x, OffsetTensor) or x.lay.bdim != 0 or x.dim() != k + 2:
        raise OffsetsError(f"{func}: batched input with the vertex batch in dimension 0 expected")
    ctx, lay = x.ctx, x.lay
    n, P, R = ctx.n, ctx.P, ctx.R
    rest = args[1:]
    c_out, idx_c = func(x.c, *rest, **kwargs)
    _, idx_v = func(x.vertices(), *rest, **kwargs)
    ctx.count_op(x)
    out_shape = c_out.shape[1:]

    def flat(t):  # (rows, C, *spatial) -> (rows, C, S)
        return t.reshape(t.shape[0], t.shape[1], -1)

    ic4 = split(idx_c, lay, n, 1)
    iv4 = split(idx_v, lay, n, 2 * P)
    switched = x.per_point(iv4 != ic4)
    old = torch.zeros_like(switched)
    if x.bidx is not None:
        old[x.bidx] = True
    ctx.mark_break(switched & ~old, "argmax")
    # the parts gathered at the centre's argmax: exact for every point that did not switch
    ic = merge(ic4.expand(*ic4.shape[:2], R, *ic4.shape[3:]), 0)
    a = flat(x.a).gather(2, flat(ic)).reshape(-1, *out_shape)
    brk = switched | old
    if not bool(brk.any()):
        return OffsetTensor(c_out, a, None, None, lay, ctx), idx_v
    # broken points, every vertex: o = v[j] - c_out = c[j] - c[i] + d[j]; then the a/s split
    bidx = torch.nonzero(brk).flatten()
    zp, zm = x.pm()
    v = merge(torch.cat([zp, zm], 2).index_select(1, bidx), 0)
    iv = merge(iv4.index_select(1, bidx), 0)
    vj = flat(v).gather(2, flat(iv)).reshape(-1, *out_shape)
    cb4 = split(c_out, lay, n, 1).index_select(1, bidx)
    o4 = split(vj, Layout(0, lay.outer, lay.inner), bidx.numel(), 2 * P) - cb4.to(v.dtype)
    a_b = ((o4.narrow(2, 0, P) - o4.narrow(2, P, P)) * 0.5).to(ctx.dtype)
    s_b = ((o4.narrow(2, 0, P) + o4.narrow(2, P, P)) * 0.5).to(ctx.dtype)
    if R != P:
        a_b, s_b = torch.cat([a_b, a_b], 2), torch.cat([s_b, s_b], 2)
    a4 = split(a, lay, n, R).index_copy(1, bidx, a_b)
    return OffsetTensor(c_out, merge(a4, 0), merge(s_b, 0), bidx, lay, ctx), idx_v


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

