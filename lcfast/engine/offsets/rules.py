"""How each aten op acts on centre + offsets: structural and linear ops.

Linear ops map the centre with their bias and the offsets without it (``W c + b``,
``W d``), so antisymmetry is kept; structural ops (views, permutes, cat, ...) move the
batch dimension, which each rule tracks.  Nonlinear rules live in :mod:`.nonlinear`;
:func:`dispatch` picks the rule, and an op without one goes to the verified general
fallback (:func:`.nonlinear.fallback`), never a silent guess.
"""
from __future__ import annotations

import torch

from . import nonlinear as nl
from .nonlinear import RULES, rule as _rule
from .layout import align, align_binary, lift, norm_dim, out_layout, view_sizes
from .band import BAND_DTYPE, abs_const, column_norms, producer_band
from .tensor import Layout, OffsetTensor, OffsetsError, RowMix, mix_rows

aten = torch.ops.aten
__all__ = ["dispatch", "RULES"]

def _g(packet, overload):
    return getattr(getattr(aten, packet, None), overload, None)


def dispatch(func, args, kwargs):
    rule = RULES.get(func)
    if rule is None:
        name = func._schema.name.split("::")[-1]
        if name.endswith("_") and not name.startswith("_"):
            return _inplace(func, name[:-1], args, kwargs)
        return nl.fallback(func, args, kwargs)
    return rule(func, args, kwargs)


def _inplace(func, base, args, kwargs):
    """``op_(self, ...)``: the functional op's result, then written into ``self``.
    (Known limit: other views of ``self`` do not see the write.)"""
    functional = _g(base, func._overloadname)
    if functional is None:
        raise OffsetsError(f"{func}: in-place op without a functional form")
    self = args[0]
    out = dispatch(functional, args, kwargs)
    if not isinstance(self, OffsetTensor):
        raise OffsetsError(f"{func} writes values that vary over the vertices into a constant tensor")
    if not isinstance(out, OffsetTensor) or tuple(out.shape) != tuple(self.shape):
        raise OffsetsError(f"{func}: in-place result of another shape")
    return self.assign(out)


@_rule(aten.copy_.default)
def _copy_(func, args, kwargs):
    dst, src = args[0], args[1]
    if not isinstance(dst, OffsetTensor) or not isinstance(src, OffsetTensor) or dst.shape != src.shape:
        raise OffsetsError("copy_ of vertex values into a constant tensor (or between shapes)")
    return dst.assign(src)


def _wrap(x: OffsetTensor, c, a, s, op, band=None) -> OffsetTensor:
    return x.with_parts(c, a, s, out_layout(x, c, a, op), band=band)


def _band(x, fn):
    """``fn`` of ``x``'s rounding band (:mod:`.band`), ``None`` when it has none."""
    return None if x.band is None else fn(x.band)


def _both(x, fn, lay: Layout, band_fn=None):
    """Apply a structural (or scalar-linear) ``fn`` to centre and offsets (and
    ``band_fn``, default ``fn``, to the band); a pending offset scale commutes with it
    and stays pending."""
    a, scale = x.raw_a()
    return x.with_parts(fn(x.c), fn(a), None if x.s is None else fn(x.s), lay, scale, _band(x, band_fn or fn))


def _weighted(x, fn, k, c_out=None):
    """A linear ``fn(t, k)`` (constant operand ``k``, no bias) on both offset parts, the
    pending offset scale folded into ``k`` (far smaller than the ``N * P`` offset rows); a
    pending :class:`RowMix` goes on the output when the op keeps ``x``'s layout (``c_out``,
    its centre, given) and is no larger (``W V = mix (W gauss)``), else on the input."""
    x.ctx.count_op(x)
    a, scale = x.raw_a()
    mix = scale if isinstance(scale, RowMix) else None
    if mix is not None and (c_out is None or c_out.numel() > x.c.numel()):
        a, scale, mix = x.a, 1.0, None  # cheaper multiplied out on the input
    ka = k if mix is not None or scale == 1.0 else k * scale
    with x.ctx.offset_math(a.device):
        da = fn(a, ka)
        if mix is not None:
            da = mix_rows(da, x.lay, x.ctx.n, mix.t)
            x.ctx.frames_mix = "output of the first linear op"
        return da, (None if x.s is None else fn(x.s, k))


def _parts(x, fn, count=True):
    """A linear ``fn`` (no bias) applied to both offset parts."""
    if count:
        x.ctx.count_op(x)
    with x.ctx.offset_math(x.a.device):
        return fn(x.a), (None if x.s is None else fn(x.s))


# ---------------------------------------------------------------------------
# structural ops
# ---------------------------------------------------------------------------


@_rule(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def _view(func, args, kwargs):
    x, size = args[0], args[1]
    sizes, lay = view_sizes(x, size)
    a, scale = x.raw_a()
    s = None if x.s is None else x.s.reshape(sizes(x.nb, x.K))
    return x.with_parts(x.c.reshape(sizes(x.ctx.n, 1)), a.reshape(sizes(x.ctx.n, x.ctx.R)), s, lay, scale,
                        _band(x, lambda t: t.reshape(sizes(x.ctx.n, 1))))


@_rule(aten.expand.default)
def _expand(func, args, kwargs):
    x, size = args[0], list(args[1])
    b = x.lay.bdim + len(size) - x.dim()
    if size[b] not in (-1, x.shape[x.lay.bdim]):
        raise OffsetsError(f"expand to {size} changes the vertex batch size")
    size[b] = -1
    return _both(x, lambda t: t.expand(size), x.lay._replace(bdim=b))


@_rule(aten.permute.default)
def _permute(func, args, kwargs):
    x = args[0]
    dims = [norm_dim(d, x.dim()) for d in args[1]]
    return _both(x, lambda t: t.permute(dims), x.lay._replace(bdim=dims.index(x.lay.bdim)))


@_rule(aten.transpose.int)
def _transpose(func, args, kwargs):
    x = args[0]
    d0, d1 = norm_dim(args[1], x.dim()), norm_dim(args[2], x.dim())
    b = x.lay.bdim
    nb = d1 if b == d0 else d0 if b == d1 else b
    return _both(x, lambda t: t.transpose(d0, d1), x.lay._replace(bdim=nb))


@_rule(aten.t.default)
def _t(func, args, kwargs):
    x = args[0]
    nb = (1 - x.lay.bdim) if x.dim() == 2 else x.lay.bdim
    return _both(x, lambda t: t.t(), x.lay._replace(bdim=nb))


@_rule(aten.unsqueeze.default)
def _unsqueeze(func, args, kwargs):
    x = args[0]
    dim = norm_dim(args[1], x.dim() + 1)
    b = x.lay.bdim
    return _both(x, lambda t: t.unsqueeze(dim), x.lay._replace(bdim=b + (dim <= b)))


@_rule(aten.squeeze.default, aten.squeeze.dim, _g("squeeze", "dims"))
def _squeeze(func, args, kwargs):
    x = args[0]
    if len(args) > 1:
        dims = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        dims = [norm_dim(d, x.dim()) for d in dims]
    else:
        dims = list(range(x.dim()))
    b = x.lay.bdim
    dims = tuple(d for d in dims if x.shape[d] == 1 and d != b)  # the batch is never 1
    return _both(x, lambda t: t.squeeze(dims) if dims else t,
                 x.lay._replace(bdim=b - sum(d < b for d in dims)))


@_rule(aten.select.int)
def _select(func, args, kwargs):
    x = args[0]
    dim = norm_dim(args[1], x.dim())
    b = x.lay.bdim
    if dim == b:
        raise OffsetsError("select() picks one vertex out of the batch")
    return _both(x, lambda t: t.select(dim, args[2]), x.lay._replace(bdim=b - (dim < b)))


@_rule(aten.slice.Tensor)
def _slice(func, args, kwargs):
    x = args[0]
    dim = norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), x.dim())
    rest = list(args[2:])
    if dim == x.lay.bdim:
        start = rest[0] if rest else kwargs.get("start")
        end = rest[1] if len(rest) > 1 else kwargs.get("end")
        step = rest[2] if len(rest) > 2 else kwargs.get("step", 1)
        if (start in (None, 0)) and (end is None or end >= x.shape[dim]) and step == 1:
            return x
        raise OffsetsError("slicing the vertex batch dimension")
    return _both(x, lambda t: func(t, dim, *rest, **kwargs), x.lay)


@_rule(aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh.default,
       aten.contiguous.default if hasattr(aten, "contiguous") else None)
def _same(func, args, kwargs):
    x = args[0]
    return _both(x, lambda t: func(t, *args[1:], **kwargs), x.lay)


@_rule(aten._to_copy.default)
def _to_copy(func, args, kwargs):
    x = args[0]
    kw = {k: v for k, v in kwargs.items() if k not in ("dtype",)}
    if kwargs.get("dtype") is not None and not kwargs["dtype"].is_floating_point:
        return nl.fallback(func, args, kwargs)
    # centre and offsets keep their own dtypes: the engine decides precision
    return _both(x, lambda t: func(t, **kw), x.lay)


@_rule(aten.cat.default)
def _cat(func, args, kwargs):
    tensors = [t for t in args[0] if not (t.dim() == 1 and t.numel() == 0)]
    ref = next(t for t in tensors if isinstance(t, OffsetTensor))
    dim = norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), ref.dim())
    b = ref.lay.bdim
    if dim == b:
        raise OffsetsError("cat along the vertex batch dimension")
    ts = [t if isinstance(t, OffsetTensor) else lift(t, ref, b) for t in tensors]
    if any(t.lay != ref.lay for t in ts):
        raise OffsetsError("cat of tensors holding the vertex batch in different places")
    bands = [t.band if isinstance(t0, OffsetTensor) else t.c.new_zeros(t.c.shape, dtype=BAND_DTYPE)
             for t0, t in zip(tensors, ts)]
    ts = align(ts)
    s = None if ts[0].s is None else torch.cat([t.s for t in ts], dim)
    band = None if any(b is None for b in bands) else torch.cat(bands, dim)
    return ts[0].with_parts(torch.cat([t.c for t in ts], dim), torch.cat([t.a for t in ts], dim), s, band=band)


@_rule(aten.stack.default)
def _stack(func, args, kwargs):
    ref = next(t for t in args[0] if isinstance(t, OffsetTensor))
    dim = norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), ref.dim() + 1)
    parts = [aten.unsqueeze.default(t, dim) for t in args[0]]
    return _cat(aten.cat.default, (parts, dim), {})


@_rule(aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int)
def _split(func, args, kwargs):
    x = args[0]
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    if func is aten.unbind.int:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    dim = norm_dim(dim, x.dim())
    b = x.lay.bdim
    if dim == b:
        raise OffsetsError(f"{func} along the vertex batch dimension")
    cs, as_ = func(x.c, *args[1:], **kwargs), func(x.a, *args[1:], **kwargs)
    ss = [None] * len(cs) if x.s is None else func(x.s, *args[1:], **kwargs)
    bs = [None] * len(cs) if x.band is None else func(x.band, *args[1:], **kwargs)
    lay = x.lay._replace(bdim=b - (dim < b) if func is aten.unbind.int else b)
    return [x.with_parts(c, a, s, lay, band=bb) for c, a, s, bb in zip(cs, as_, ss, bs)]


@_rule(aten.constant_pad_nd.default)
def _pad(func, args, kwargs):
    x, pad = args[0], list(args[1])
    value = args[2] if len(args) > 2 else kwargs.get("value", 0)
    if x.lay.bdim >= x.dim() - len(pad) // 2:
        raise OffsetsError("padding the vertex batch dimension")
    a, s = _parts(x, lambda t: func(t, pad, 0), count=False)
    return x.with_parts(func(x.c, pad, value), a, s, band=_band(x, lambda t: func(t, pad, 0)))


@_rule(aten.index_select.default, aten.flip.default, aten.roll.default)
def _dim_ops(func, args, kwargs):
    x = args[0]
    dims = args[1] if func is not aten.roll.default else args[2] if len(args) > 2 else kwargs.get("dims", [])
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    if not dims or x.lay.bdim in [norm_dim(d, x.dim()) for d in dims]:
        raise OffsetsError(f"{func} over the vertex batch dimension")
    return _both(x, lambda t: func(t, *args[1:], **kwargs), x.lay)


# ---------------------------------------------------------------------------
# linear ops: bias to the centre only
# ---------------------------------------------------------------------------


def _contracted(x: OffsetTensor, k: int, op):
    if x.lay.bdim == k:
        raise OffsetsError(f"{op} contracts over the vertex batch dimension")


@_rule(aten.mm.default, aten.bmm.default)
def _mm(func, args, kwargs):
    a, b = args[0], args[1]
    va, vb = isinstance(a, OffsetTensor), isinstance(b, OffsetTensor)
    if va and vb:
        return nl.bilinear(func, a, b)
    x = a if va else b
    _contracted(x, x.dim() - 1 if va else x.dim() - 2, func)
    ctx = x.ctx
    c = func(a.c if va else a, b.c if vb else b)
    k0 = b if va else a
    band = producer_band(x, (lambda t: func(t, abs_const(x, k0))) if va else (lambda t: func(abs_const(x, k0), t)),
                         weight_norms=column_norms(x, k0) if va and func is aten.mm.default else None)
    da, ds = _weighted(x, (lambda t, kk: func(t, kk)) if va else (lambda t, kk: func(kk, t)), ctx.cast(k0),
                       c if va else None)
    return _wrap(x, c, da, ds, func, band)


@_rule(aten.addmm.default, aten.baddbmm.default)
def _addmm(func, args, kwargs):
    bias, a, b = args[:3]
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if isinstance(bias, OffsetTensor):
        mul = (aten.mm.default if func is aten.addmm.default else aten.bmm.default)(a, b)
        return _add(aten.add.Tensor, (_scale(mul, alpha), _scale(bias, beta)), {})
    mm = aten.mm.default if func is aten.addmm.default else aten.bmm.default
    if isinstance(a, OffsetTensor) and isinstance(b, OffsetTensor):
        return _add(aten.add.Tensor, (_scale(mm(a, b), alpha), bias * beta), {})
    x = a if isinstance(a, OffsetTensor) else b
    _contracted(x, x.dim() - 1 if x is a else x.dim() - 2, func)
    ctx = x.ctx
    c = func(bias, a.c if x is a else a, b.c if x is b else b, beta=beta, alpha=alpha)
    k0 = b if x is a else a

    def lin(t, kk):
        out = mm(t, kk) if x is a else mm(kk, t)
        return out if alpha == 1 else out * alpha
    norms = column_norms(x, k0) if x is a and func is aten.addmm.default else None
    band = producer_band(x, lambda t: abs(alpha) * lin(t, abs_const(x, k0)), abs(beta) * abs_const(x, bias),
                         None if norms is None else abs(alpha) * norms)
    da, ds = _weighted(x, lin, ctx.cast(k0), c if x is a else None)
    return _wrap(x, c, da, ds, func, band)


def _like_centre(d, c, lay):
    """Offsets broadcast to the centre's shape (a constant operand may have widened it)."""
    target = list(c.shape)
    target[lay.bdim] = -1
    if d.dim() == c.dim() and all(t in (-1, s) for t, s in zip(target, d.shape)):
        return d
    return d.expand(target) if d.dim() == c.dim() else d.expand(*c.shape[:c.dim() - d.dim()], *d.shape).expand(target)


def _scale(t, k):
    return t if k == 1 else aten.mul.Scalar(t, k)


_POOL_SPATIAL = {}
for _k in (1, 2, 3):
    for _op in (_g(f"avg_pool{_k}d", "default"), _g(f"_adaptive_avg_pool{_k}d", "default"),
                _g(f"adaptive_avg_pool{_k}d", "default")):
        if _op is not None:
            _POOL_SPATIAL[_op] = _k


@_rule(*_POOL_SPATIAL, aten.mean.dim, aten.sum.dim_IntList)
def _linear_unary(func, args, kwargs):
    """Ops linear in their only varying input, with no bias (pooling, mean, sum)."""
    x = args[0]
    k = _POOL_SPATIAL.get(func)
    if k is not None and x.lay.bdim >= x.dim() - k:
        raise OffsetsError(f"{func} pools over the vertex batch dimension")
    c = func(x.c, *args[1:], **kwargs)
    a, s = _parts(x, lambda t: func(t, *args[1:], **kwargs))
    # non-negative coefficients: the band goes through the op itself
    return _wrap(x, c, a, s, func, _band(x, lambda t: func(t, *args[1:], **kwargs)))


@_rule(aten.neg.default)
def _neg(func, args, kwargs):
    x = args[0]
    return _both(x, torch.neg, x.lay, band_fn=lambda t: t)


@_rule(aten.mul.Scalar, aten.div.Scalar)
def _scalar(func, args, kwargs):
    x = args[0]
    return _both(x, lambda t: func(t, args[1]), x.lay, band_fn=lambda t: func(t, abs(args[1])))


@_rule(aten.add.Scalar, aten.sub.Scalar)
def _add_scalar(func, args, kwargs):
    x = args[0]
    return x.with_parts(func(x.c, *args[1:], **kwargs), x.a, x.s, band=x.band)


@_rule(aten.rsub.Scalar)
def _rsub_scalar(func, args, kwargs):
    x = args[0]
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    a, s = _parts(x, lambda t: t * (-alpha), count=False)
    return x.with_parts(func(x.c, *args[1:], **kwargs), a, s, band=x.band)


@_rule(aten.add.Tensor, aten.sub.Tensor, aten.rsub.Tensor)
def _add(func, args, kwargs):
    a, b = args[0], args[1]
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    if func is aten.rsub.Tensor:
        a, b, func = b, a, aten.sub.Tensor
    if func is aten.sub.Tensor:
        alpha = -alpha
    if not isinstance(a, torch.Tensor):
        a = torch.tensor(a, dtype=b.dtype)
    if not isinstance(b, torch.Tensor):
        b = torch.tensor(b, dtype=a.dtype)
    a, b, lay = align_binary(a, b, func)
    va, vb = isinstance(a, OffsetTensor), isinstance(b, OffsetTensor)
    ref = a if va else b
    c = torch.add(a.c if va else a, b.c if vb else b, alpha=alpha)
    if va and vb:
        da = torch.add(a.a, b.a, alpha=alpha)
        ds = None if a.s is None else torch.add(a.s, b.s, alpha=alpha)
        band = None if a.band is None or b.band is None else torch.add(a.band, b.band, alpha=abs(alpha))
    elif va:
        da, ds = a.a, a.s
        band = a.band
    else:
        da, ds = _parts(b, lambda t: t * alpha if alpha != 1 else t, count=False)
        band = _band(b, lambda t: t * abs(alpha))
    if band is not None and band.shape != c.shape:
        band = band.expand_as(c)
    return ref.with_parts(c, _like_centre(da, c, lay), None if ds is None else _like_centre(ds, c, lay), lay,
                          band=band)


@_rule(aten.mul.Tensor, aten.div.Tensor)
def _mul(func, args, kwargs):
    a, b = args[0], args[1]
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or kwargs:
        return nl.fallback(func, args, kwargs)
    a, b, lay = align_binary(a, b, func)
    va, vb = isinstance(a, OffsetTensor), isinstance(b, OffsetTensor)
    if va and vb:
        return nl.product(a, b, lay) if func is aten.mul.Tensor else nl.smooth(func, (a, b), {})
    if vb and func is aten.div.Tensor:
        return nl.smooth(func, (a, b), {})
    x, k = (a, b) if va else (b, a)
    c = func(a.c if va else a, b.c if vb else b)
    kk = x.ctx.cast(k)
    da, ds = _parts(x, (lambda t: func(t, kk)) if va else (lambda t: func(kk, t)), count=False)
    band = _band(x, (lambda t: func(t, abs_const(x, k))) if va else (lambda t: func(abs_const(x, k), t)))
    if band is not None and band.shape != c.shape:
        band = band.expand_as(c)
    return x.with_parts(c, _like_centre(da, c, lay), None if ds is None else _like_centre(ds, c, lay), lay,
                        band=band)


@_rule(_g("native_dropout", "default"))
def _dropout(func, args, kwargs):
    train = args[2] if len(args) > 2 else kwargs.get("train")
    if train:
        raise OffsetsError("dropout in training mode")
    x = args[0]
    return x, torch.ones(x.shape, dtype=torch.bool, device=x.device)


from . import conv_bn  # noqa: E402,F401  (registers the convolution and batch-norm rules)
