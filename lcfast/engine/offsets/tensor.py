"""The centre + offsets tensor: one value per point (``c``) and its vertices' offsets (``d``).

:class:`OffsetTensor` is an aten-level tensor subclass (``__torch_dispatch__``).  It
presents itself to the model's unmodified ``forward`` as the vertex batch (shape with
``N * 2P`` vertices in its batch dimension, point-major), while it stores

* ``c``: the centres, the same shape with ``N`` in place of ``N * 2P``, in the centre
  dtype (float32 or float64);
* ``d``: the offsets of the vertices from their centre, ``N * R`` in place of
  ``N * 2P``, in the compute dtype (float32, bfloat16, float16, float64).  ``R = P``
  while every point is *antisymmetric* (the offset of vertex ``-v_p`` is ``-d_p``, so
  only ``+v_1..+v_P`` are stored), ``R = 2P`` (order ``+v_1..+v_P, -v_1..-v_P``) after.

Where the batch is, is known by provenance, never guessed from sizes: a
:class:`Layout` says which dimension holds it and which factors were merged with it
(``outer * N * 2P * inner`` after e.g. the ``view(L * B, E)`` and
``view(L, B * heads, e)`` of ``nn.MultiheadAttention``).  Each op rule
(:mod:`.rules`) computes the output layout; when it cannot be decided the rule raises
:class:`OffsetsError`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["Layout", "OffsetContext", "OffsetTensor", "OffsetsError"]


class OffsetsError(RuntimeError):
    """The offsets engine cannot follow this model (it never guesses)."""


class Layout(NamedTuple):
    """Where the batch lives: dimension ``bdim`` has size ``outer * batch * inner``
    (``batch`` = ``N`` for ``c``, ``N * R`` for ``d``, ``N * 2P`` apparent)."""

    bdim: int
    outer: int = 1
    inner: int = 1


class OffsetContext:
    """Per-chunk state shared by all offset tensors of one forward.

    Args:
        n: ``N`` points.
        P: directions per point.
        dtype: compute dtype of the offsets.

    Attributes:
        cache: constants (weights) cast to ``dtype``, keyed by storage and version.
        first_break: ``LongTensor (N,)``: index of the offset op at which each point
            stopped being antisymmetric (``-1`` while it still is).
        breaks: ``{reason: points}`` that broke antisymmetry for that reason.
        ops / row_work: offset ops run and ``sum (1 + R)`` over them (rows per point).
    """

    def __init__(self, n: int, P: int, dtype: torch.dtype):
        self.n, self.P, self.dtype = n, P, dtype
        self.cache: dict = {}
        self.first_break = torch.full((n,), -1, dtype=torch.long)
        self.breaks: dict[str, int] = {}
        self.ops = 0
        self.row_work = 0

    def cast(self, t):
        """A constant (weight, scale) in the offsets dtype; cached per storage/version."""
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype == self.dtype:
            return t
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
               t.dtype, t._version)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = t.to(self.dtype)
        return hit

    def count_op(self, R: int) -> None:
        self.ops += 1
        self.row_work += 1 + R

    def mark_break(self, points: torch.Tensor, reason: str) -> None:
        """Record that the points in bool mask ``points`` (N,) lose antisymmetry now."""
        points = points.cpu()
        new = points & (self.first_break < 0)
        if bool(new.any()):
            self.first_break[new] = self.ops
            self.breaks[reason] = self.breaks.get(reason, 0) + int(new.sum())


def _split(t: torch.Tensor, lay: Layout, n: int, rows: int) -> torch.Tensor:
    """View dimension ``lay.bdim`` of ``t`` as ``(outer, n, rows, inner)``."""
    b = lay.bdim
    s = t.shape
    return t.reshape(*s[:b], lay.outer, n, rows, lay.inner, *s[b + 1:])


def _merge(t: torch.Tensor, b: int) -> torch.Tensor:
    """Inverse of :func:`_split`: dims ``b..b+3`` back into one."""
    return t.flatten(b, b + 3)


class OffsetTensor(torch.Tensor):
    """Centre ``c`` and offsets ``d`` of ``N`` points, seen by the model as the
    ``N * 2P``-vertex batch (see the module docstring).

    Args:
        c: centres, batch dimension ``outer * N * inner``; centre dtype.
        d: offsets, batch dimension ``outer * N * R * inner``; compute dtype.
        layout: where the batch is.
        ctx: the chunk's :class:`OffsetContext`.
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, c: torch.Tensor, d: torch.Tensor, layout: Layout, ctx: OffsetContext):
        shape = list(c.shape)
        shape[layout.bdim] = c.shape[layout.bdim] * 2 * ctx.P
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=c.dtype, device=c.device)

    def __init__(self, c, d, layout, ctx):
        self._set(c, d, layout, ctx)

    def _set(self, c, d, layout, ctx):
        b = layout.bdim
        cb = c.shape[b]
        if cb != layout.outer * ctx.n * layout.inner or d.shape[b] % cb or c.dim() != d.dim():
            raise OffsetsError(f"internal: centre {tuple(c.shape)} / offsets {tuple(d.shape)} disagree with "
                               f"{layout} for N={ctx.n}")
        R = d.shape[b] // cb
        if R not in (ctx.P, 2 * ctx.P) or (ctx.P == 1 and R == 1):
            raise OffsetsError(f"internal: {R} offset rows per point (P={ctx.P})")
        self.c, self.d, self.lay, self.ctx = c, d, layout, ctx

    # -- shape of the stored parts -------------------------------------------
    @property
    def R(self) -> int:
        return self.d.shape[self.lay.bdim] // self.c.shape[self.lay.bdim]

    @property
    def sym(self) -> bool:
        """Antisymmetric: only ``+v`` offsets stored."""
        return self.R == self.ctx.P and self.ctx.P > 1

    def __repr__(self):  # printing must not run ops
        return (f"OffsetTensor(shape={tuple(self.shape)}, centre={self.c.dtype}, offsets={self.d.dtype}, "
                f"rows={self.R}, {self.lay})")

    # -- views of c and d with (outer, N, rows, inner) split out ----------------
    def c4(self) -> torch.Tensor:
        return _split(self.c, self.lay, self.ctx.n, 1)

    def d4(self, full: bool = False) -> torch.Tensor:
        d = _split(self.d, self.lay, self.ctx.n, self.R)
        if full and self.sym:
            d = torch.cat([d, -d], dim=self.lay.bdim + 2)
        return d

    def full_d(self) -> torch.Tensor:
        """Offsets of all ``2P`` vertices (dense), compute dtype."""
        if not self.sym:
            return self.d
        return _merge(self.d4(full=True), self.lay.bdim)

    def vertices(self) -> torch.Tensor:
        """The vertex values ``c + d`` (apparent shape), in the centre dtype."""
        v = self.c4() + self.d4(full=True).to(self.c.dtype)
        return _merge(v, self.lay.bdim)

    def centre_rows(self, rows: int, dtype=None) -> torch.Tensor:
        """The centre repeated for ``rows`` rows per point (layout of ``d``)."""
        c = self.c4()
        if dtype is not None:
            c = c.to(dtype)
        shape = list(c.shape)
        shape[self.lay.bdim + 2] = rows
        return _merge(c.expand(shape), self.lay.bdim)

    def per_point(self, t4: torch.Tensor) -> torch.Tensor:
        """Reduce a bool ``(.., outer, N, rows, inner, ..)`` tensor to ``(N,)`` by ``any``."""
        b = self.lay.bdim + 1
        return t4.movedim(b, 0).reshape(self.ctx.n, -1).any(1)

    @staticmethod
    def dense_like(c: torch.Tensor, dv: torch.Tensor, layout: Layout, ctx: OffsetContext) -> "OffsetTensor":
        """From a centre and ``2P``-row values/offsets already in layout form."""
        return OffsetTensor(c, dv, layout, ctx)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from .rules import dispatch
        return dispatch(func, args, kwargs or {})


def lift(t: torch.Tensor, like: OffsetTensor, bdim: int) -> OffsetTensor:
    """A plain tensor that has the apparent batch size in dimension ``bdim`` (e.g. a
    class token expanded to the batch): its rows must be equal within each point
    (then zero offsets), else its differences to the point's first row are offsets."""
    ctx, lay = like.ctx, like.lay
    lay_t = Layout(bdim, lay.outer, lay.inner)
    if t.dim() <= bdim or t.shape[bdim] != lay.outer * ctx.n * 2 * ctx.P * lay.inner:
        raise OffsetsError(f"a constant of shape {tuple(t.shape)} meets the vertex batch in dimension {bdim}")
    t4 = _split(t, lay_t, ctx.n, 2 * ctx.P)
    c4 = t4.narrow(bdim + 2, 0, 1)
    c = _merge(c4, bdim).to(like.c.dtype)
    if bool((t4 == c4).all()):
        rows = ctx.P if like.sym else 2 * ctx.P
        shape = list(c4.shape)
        shape[bdim + 2] = rows
        d = torch.zeros(shape, dtype=ctx.dtype, device=t.device)
        return OffsetTensor(c, _merge(d, bdim), lay_t, ctx)
    return OffsetTensor(c, _merge((t4 - c4).to(ctx.dtype), bdim), lay_t, ctx)


def rows_per_point(ctx: OffsetContext) -> float:
    """Mean rows per point and offset op, ``1 + R`` averaged over the ops run."""
    return ctx.row_work / ctx.ops if ctx.ops else 1.0 + ctx.P


def numel_per_point(t: torch.Tensor, lay: Layout, n: int) -> int:
    return t.numel() // max(1, n) if t.numel() else math.prod(t.shape) // max(1, n)
