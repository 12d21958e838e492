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
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .layout import align_binary, densify, norm_dim, out_layout
from .tensor import Layout, OffsetTensor, OffsetsError, _merge, _split

aten = torch.ops.aten
__all__ = ["piecewise", "crossing_counts", "max_pool", "product", "bilinear", "smooth", "fallback", "RULES"]

RULES: dict = {}


def _rule(*ops):
    def deco(fn):
        for op in ops:
            if op is not None:
                RULES[op] = fn
        return fn
    return deco


def _vertex_values(x: OffsetTensor):
    """``(c4, z4, zm4)``: centre and vertex values (centre dtype) in split form; for an
    antisymmetric tensor ``z4 = c + d``, ``zm4 = c - d`` (else ``zm4`` is None)."""
    c4, d4 = x.c4(), x.d4().to(x.c.dtype)
    return c4, c4 + d4, (c4 - d4 if x.sym else None)


def _neurons_first(t4: torch.Tensor, x: OffsetTensor) -> torch.Tensor:
    """``(.., outer, N, rows, inner, ..)`` -> ``(N, rows, neurons)``."""
    b = x.lay.bdim
    t = t4.movedim(b + 1, 0).movedim(b + 2, 1)
    return t.reshape(t.shape[0], t.shape[1], -1)


def crossing_counts(x: OffsetTensor, z4=None, zm4=None) -> torch.Tensor:
    """Crossed neurons per point, three-valued signs of ``c + d`` over the ``2P``
    vertices (DESIGN.md section 1.4): ``LongTensor (N,)``."""
    if z4 is None:
        _, z4, zm4 = _vertex_values(x)
    z = _neurons_first(z4, x)
    mn, mx = z.amin(1), z.amax(1)
    if zm4 is not None:
        zm = _neurons_first(zm4, x)
        mn, mx = torch.minimum(mn, zm.amin(1)), torch.maximum(mx, zm.amax(1))
    same = (mn > 0) | (mx < 0) | ((mn == 0) & (mx == 0))
    return (~same).sum(1)


def piecewise(x: OffsetTensor, slope: float, count: bool = False):
    """ReLU (``slope = 0``) or LeakyReLU of ``x``; with ``count`` also the crossing
    counts ``(N,)`` of ``x`` (from the same vertex values).  Returns ``(out, counts)``."""
    ctx, lay = x.ctx, x.lay
    c4, z4, zm4 = _vertex_values(x)
    counts = crossing_counts(x, z4, zm4) if count else None
    pos_c = c4 > 0

    def f(t):
        return torch.where(t > 0, t, t * slope)

    c_out = _merge(f(c4), lay.bdim)
    d4 = x.d4()
    if x.sym:
        keep = torch.where(pos_c, (z4 > 0) & (zm4 > 0), (z4 <= 0) & (zm4 <= 0))
        if bool(keep.all()):
            ctx.count_op(x.R)
            d_out = torch.where(pos_c, d4, d4 * slope)
            return OffsetTensor(c_out, _merge(d_out, lay.bdim), lay, ctx), counts
        crossed = x.per_point(((z4 > 0) != (zm4 > 0)) | ((z4 < 0) != (zm4 < 0)))
        ctx.mark_break(crossed, "crossing")
        ctx.mark_break(x.per_point(~keep) & ~crossed, "centre_sign")
        z4 = torch.cat([z4, zm4], lay.bdim + 2)
        d4 = x.d4(full=True)
    ctx.count_op(2 * ctx.P)
    pos_z = z4 > 0
    exact = torch.where(pos_c, d4, d4 * slope)
    mixed = (f(z4) - f(c4)).to(ctx.dtype)
    d_out = torch.where(pos_c == pos_z, exact, mixed)
    return OffsetTensor(c_out, _merge(d_out, lay.bdim), lay, ctx), counts


@_rule(aten.relu.default)
def _relu(func, args, kwargs):
    return piecewise(args[0], 0.0)[0]


@_rule(aten.leaky_relu.default)
def _leaky(func, args, kwargs):
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    return piecewise(args[0], float(slope))[0]


_MAX_POOLS = {}
for _k in (1, 2, 3):
    _op = getattr(getattr(aten, f"max_pool{_k}d_with_indices", None), "default", None)
    if _op is not None:
        _MAX_POOLS[_op] = _k


@_rule(*_MAX_POOLS)
def max_pool(func, args, kwargs):
    """Per-window rule for ``max_pool{1,2,3}d_with_indices`` (see module docstring)."""
    x = args[0]
    k = _MAX_POOLS[func]
    if not isinstance(x, OffsetTensor) or x.lay.bdim != 0 or x.dim() != k + 2:
        raise OffsetsError(f"{func}: batched input with the vertex batch in dimension 0 expected")
    ctx, lay = x.ctx, x.lay
    rest = args[1:]
    c_out, idx_c = func(x.c, *rest, **kwargs)
    _, idx_v = func(x.vertices(), *rest, **kwargs)
    P2 = 2 * ctx.P

    def flat(t):  # (rows, C, *spatial) -> (rows, C, S)
        return t.reshape(t.shape[0], t.shape[1], -1)

    out_shape = c_out.shape[1:]
    iv4 = _split(idx_v, lay, ctx.n, P2)
    ic4 = _split(idx_c, lay, ctx.n, 1)
    if x.sym:
        same = (iv4 == ic4)
        if bool(same.all()):
            ctx.count_op(x.R)
            ic = _merge(ic4.expand(*ic4.shape[:2], x.R, *ic4.shape[3:]), 0)
            d = flat(x.d).gather(2, flat(ic)).reshape(-1, *out_shape)
            return OffsetTensor(c_out, d, lay, ctx), idx_v
        ctx.mark_break(x.per_point(~same), "argmax")
    ctx.count_op(P2)
    iv = flat(idx_v)
    d_full = flat(x.full_d())
    c_rows = flat(x.centre_rows(P2))
    c_out_rows = flat(_merge(_split(c_out, lay, ctx.n, 1).expand(*ic4.shape[:2], P2, *ic4.shape[3:]), 0))
    dj = d_full.gather(2, iv)
    switched = ((c_rows.gather(2, iv) - c_out_rows) + dj.to(x.c.dtype)).to(ctx.dtype)
    same = iv == flat(_merge(ic4.expand(*ic4.shape[:2], P2, *ic4.shape[3:]), 0))
    d = torch.where(same, dj, switched).reshape(-1, *out_shape)
    return OffsetTensor(c_out, d, lay, ctx), idx_v


def product(a: OffsetTensor, b: OffsetTensor, lay: Layout) -> OffsetTensor:
    """Elementwise ``a * b`` of two varying tensors, in the centre dtype."""
    ctx = a.ctx
    if a.sym or b.sym:
        ctx.mark_break(torch.ones(ctx.n, dtype=torch.bool), "product")
    a, b = densify(a), densify(b)
    la, lb = Layout(a.lay.bdim, *lay[1:]), Layout(b.lay.bdim, *lay[1:])
    ca, cb = _split(a.c, la, ctx.n, 1), _split(b.c, lb, ctx.n, 1)
    da, db = _split(a.d, la, ctx.n, a.R).to(a.c.dtype), _split(b.d, lb, ctx.n, b.R).to(b.c.dtype)
    c = a.c * b.c
    d = ((ca + da) * db + da * cb).to(ctx.dtype)
    ctx.count_op(a.R)
    return OffsetTensor(c, _merge(d, lay.bdim), lay, ctx)


def bilinear(func, a: OffsetTensor, b: OffsetTensor) -> OffsetTensor:
    """``mm``/``bmm`` of two varying tensors: ``f(c1+d1, d2) + f(d1, c2)`` in the
    offsets dtype; the batch must be a batch dimension of the product."""
    ctx = a.ctx
    if a.lay != b.lay or a.lay.bdim >= a.dim() - 2:
        raise OffsetsError(f"{func} of two varying tensors over the vertex batch dimension")
    if a.sym or b.sym:
        ctx.mark_break(torch.ones(ctx.n, dtype=torch.bool), "product")
    a, b = densify(a), densify(b)
    P2 = 2 * ctx.P
    c = func(a.c, b.c)
    av = a.centre_rows(P2, ctx.dtype) + a.d
    d = func(av, b.d) + func(a.d, b.centre_rows(P2, ctx.dtype))
    ctx.count_op(P2)
    return OffsetTensor(c, d, out_layout(a, c, d, P2, func), ctx)


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
    if any(t.sym for t in xs):
        ctx.mark_break(torch.ones(ctx.n, dtype=torch.bool), "smooth")
    P2 = 2 * ctx.P
    ctx.count_op(P2)

    def wrap(c, v):
        if not isinstance(c, torch.Tensor) or not c.is_floating_point():
            return v
        lay = out_layout(x, c, v, P2, func)
        d = _split(v, lay, ctx.n, P2) - _split(c, lay, ctx.n, 1)
        return OffsetTensor(c, _merge(d.to(ctx.dtype), lay.bdim), lay, ctx)

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


@_rule(aten.where.self)
def _where(func, args, kwargs):
    cond = args[0]
    if isinstance(cond, OffsetTensor):
        return fallback(func, args, kwargs)
    return fallback(func, args, kwargs)


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
    ctx.count_op(P2)

    def wrap(cc, v):
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            return v
        if tuple(v.shape) != tuple(x.shape):
            raise OffsetsError(f"{func} is not known to the offsets engine and changes the shape "
                               f"{tuple(x.shape)} -> {tuple(v.shape)}: cannot follow the vertex batch")
        cc4 = _split(cc, lay, ctx.n, P2)
        c4 = cc4.narrow(lay.bdim + 2, 0, 1)
        if not torch.equal(cc4, c4.expand_as(cc4)):
            raise OffsetsError(f"{func} is not known to the offsets engine and mixes the vertices of a point")
        d4 = (_split(v, lay, ctx.n, P2) - c4).to(ctx.dtype)
        return OffsetTensor(_merge(c4, lay.bdim), _merge(d4, lay.bdim), lay, ctx)

    flat_v, spec_v = tree_flatten(out_v)
    flat_c = tree_flatten(out_cc)[0]
    return tree_unflatten([wrap(c, v) for c, v in zip(flat_c, flat_v)], spec_v)


_ = (align_binary, tree_map)
