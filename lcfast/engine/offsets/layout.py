"""Where the batch goes: layout rules shared by the op rules (no size guessing)."""
from __future__ import annotations

import math

import torch

from .tensor import Layout, OffsetTensor, OffsetsError, from_pm, from_pts, merge, split, to_pts

__all__ = ["norm_dim", "out_layout", "view_sizes", "align_binary", "align", "lift"]


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def out_layout(x: OffsetTensor, c: torch.Tensor, d: torch.Tensor, op, R: int | None = None) -> Layout:
    """Layout of an op's output from its centre (``N`` points) and offset (``N * R``
    rows, default ``ctx.R``) results: the one dimension whose sizes differ by the factor ``R`` holds the
    batch; its merged factors are kept when its size is the input's, else it must be
    exactly ``N``.  Raises :class:`OffsetsError` when that does not decide it (e.g. the
    op reduced over the batch)."""
    R = R or x.ctx.R
    if c.dim() != d.dim():
        raise OffsetsError(f"{op}: centre and offsets results have different ranks")
    diff = [j for j in range(c.dim()) if c.shape[j] != d.shape[j]]
    if len(diff) != 1 or d.shape[diff[0]] != c.shape[diff[0]] * R:
        raise OffsetsError(f"{op}: cannot tell where the vertex batch is in its output "
                           f"(centre {tuple(c.shape)}, offsets {tuple(d.shape)}); the op may mix the vertices "
                           "of a point or reduce over them")
    j = diff[0]
    lay, n = x.lay, x.ctx.n
    if c.shape[j] == x.c.shape[lay.bdim]:
        return Layout(j, lay.outer, lay.inner)
    if c.shape[j] == n:
        return Layout(j)
    raise OffsetsError(f"{op}: the vertex batch dimension changed size in an unknown way ({tuple(c.shape)})")


def view_sizes(x: OffsetTensor, size):
    """``view``/``reshape`` of the apparent tensor to ``size``: ``(sizes, layout)`` with
    ``sizes(pts, rows)`` the size of a part of ``pts`` points and ``rows`` rows.  The batch must stay one contiguous factor of a single
    output dimension (it may merge with neighbours: ``outer``/``inner``)."""
    app = list(x.shape)
    total = math.prod(app)
    size = [int(s) for s in size]
    if size.count(-1) == 1:
        known = math.prod(s for s in size if s != -1)
        size[size.index(-1)] = total // known if known else 0
    if math.prod(size) != total:
        raise OffsetsError(f"view: shape {size} is invalid for {tuple(app)}")
    lay, ctx = x.lay, x.ctx
    B = ctx.n * 2 * ctx.P
    bs = lay.inner * math.prod(app[lay.bdim + 1:])  # flat stride of the batch digit
    stride = 1
    for j in range(len(size) - 1, -1, -1):
        lo, hi = stride, stride * size[j]
        if lo <= bs and bs % lo == 0 and hi >= bs * B and hi % (bs * B) == 0:
            inner, outer = bs // lo, hi // (bs * B)

            def sizes(pts, rows, j=j, inner=inner, outer=outer):
                out = list(size)
                out[j] = outer * pts * rows * inner
                return out
            return sizes, Layout(j, outer, inner)
        stride = hi
    raise OffsetsError(f"view to {size} splits the vertex batch of shape {tuple(app)} ({lay}) across dimensions")


def align_binary(a, b, op):
    """Broadcasting of two operands of which at least one is an :class:`OffsetTensor`:
    returns ``(a, b, layout)`` with plain operands that carry the batch lifted, and
    offset operands on a common set of broken points."""
    nd = max(t.dim() if isinstance(t, torch.Tensor) else 0 for t in (a, b))
    ref = a if isinstance(a, OffsetTensor) else b
    pos = ref.lay.bdim + nd - ref.dim()

    def fix(t):
        if isinstance(t, OffsetTensor) or not isinstance(t, torch.Tensor):
            return t
        p = pos - (nd - t.dim())
        if p >= 0 and t.shape[p] != 1:
            return lift(t, ref, p)
        return t

    a, b = fix(a), fix(b)
    lays = [(t.lay.bdim + nd - t.dim(), t.lay.outer, t.lay.inner) for t in (a, b) if isinstance(t, OffsetTensor)]
    if len(set(lays)) != 1:
        raise OffsetsError(f"{op}: operands hold the vertex batch in different places {lays}")
    a, b = align([a, b])
    return a, b, Layout(*lays[0])


def lift(t: torch.Tensor, like: OffsetTensor, bdim: int) -> OffsetTensor:
    """A plain tensor that has the apparent batch size in dimension ``bdim`` (e.g. a
    class token expanded to the batch): zero offsets when its rows are equal within each
    point, else its differences to the point's first row."""
    ctx, lay = like.ctx, like.lay
    lay_t = Layout(bdim, lay.outer, lay.inner)
    if t.dim() <= bdim or t.shape[bdim] != lay.outer * ctx.n * 2 * ctx.P * lay.inner:
        raise OffsetsError(f"a constant of shape {tuple(t.shape)} meets the vertex batch in dimension {bdim}")
    t4 = split(t, lay_t, ctx.n, 2 * ctx.P).to(like.c.dtype)
    c4 = t4.narrow(bdim + 2, 0, 1)
    if bool((t4 == c4).all()):
        shape = list(c4.shape)
        shape[bdim + 2] = ctx.R
        a = torch.zeros(shape, dtype=ctx.dtype, device=t.device)
        return OffsetTensor(merge(c4, bdim), merge(a, bdim), None, None, lay_t, ctx)
    d = t4 - c4
    return from_pm(c4, d.narrow(bdim + 2, 0, ctx.P), d.narrow(bdim + 2, ctx.P, ctx.P), lay_t, ctx)


def align(xs: list) -> list:
    """The tensors with a common set of broken points (the union; zeros added) and a
    common symmetric basis: the union of their basis blocks (a block two tensors share
    is one set of columns), or dense when that would exceed ``R`` rows or one is dense."""
    parts = [x for x in xs if isinstance(x, OffsetTensor)]
    if all(x.s is None for x in parts):
        return xs
    keys = {(None if x.bidx is None else tuple(x.bidx.tolist()), x.blocks, x.coef is None and x.s is not None)
            for x in parts}
    if len(keys) == 1:
        return xs
    ref = parts[0]
    ctx, dev = ref.ctx, ref.a.device
    union = torch.unique(torch.cat([x.bidx for x in parts if x.bidx is not None]))
    nu = union.numel()
    blocks: dict = {}
    for x in parts:
        for bid, k in (x.blocks or ()):
            blocks.setdefault(bid, k)
    dense = any(x.s is not None and x.coef is None for x in parts) or sum(blocks.values()) > ctx.R
    K = ctx.R if dense else sum(blocks.values())
    offset, at = {}, 0
    for bid, k in blocks.items():
        offset[bid] = at
        at += k
    coef = None if dense else torch.zeros(nu, ctx.R, K, dtype=next(x.coef for x in parts if x.coef is not None).dtype,
                                           device=dev)
    filled = set()
    out = []
    for x in xs:
        if not isinstance(x, OffsetTensor):
            out.append(x)
            continue
        b = x.lay.bdim
        shape4 = list(x.a4().shape)
        shape4[b + 1], shape4[b + 2] = nu, K
        T = torch.zeros(nu, K, math.prod(shape4) // (nu * K), dtype=x.a.dtype, device=dev)
        if x.s is not None:
            pos = torch.searchsorted(union, x.bidx)
            if dense:
                T[pos] = to_pts(x.s_dense4(x.a.dtype), b)
            else:
                cols, poff = [], 0
                for bid, k in x.blocks:
                    cols += range(offset[bid], offset[bid] + k)
                    if bid not in filled:
                        coef[pos, :, offset[bid]:offset[bid] + k] = x.coef[:, :, poff:poff + k]
                        filled.add(bid)
                    poff += k
                T[pos[:, None], torch.tensor(cols, device=dev)[None, :]] = to_pts(x.s4(), b)
        s = merge(from_pts(T, shape4, b), b)
        o = OffsetTensor(x.c, x.a, s, union, x.lay, x.ctx, coef, None if dense else tuple(blocks.items()))
        o.band = x.band
        out.append(o)
    return out
