"""Where the batch goes: layout rules shared by the op rules (no size guessing)."""
from __future__ import annotations

import math

import torch

from .tensor import Layout, OffsetTensor, OffsetsError, align, lift

__all__ = ["norm_dim", "out_layout", "view_sizes", "align_binary"]


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
