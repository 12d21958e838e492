"""The centre + offsets tensor: one value per point (``c``) and its vertices' offsets.

:class:`OffsetTensor` is an aten-level tensor subclass (``__torch_dispatch__``).  It
presents itself to the model's unmodified ``forward`` as the vertex batch (``N * 2P``
vertices in its batch dimension, point-major, ``+v_1..+v_P, -v_1..-v_P``), while it
stores, per point, the value of vertex ``+-v_p`` as ``c + s_p +- a_p``:

* ``c``: the centres, ``N`` in place of ``N * 2P``, centre dtype (float32 / float64);
* ``a``: the antisymmetric part, ``N * R`` rows, compute dtype (bf16, fp16, fp32, fp64);
* ``s``: the symmetric part, only for the points whose antisymmetry broke
  (``bidx``, sorted indices; ``Nb * R`` rows), ``None`` while no point broke.

So a point costs ``1 + P`` rows while antisymmetric and ``1 + 2P`` after, decided
per point.  ``R = max(P, 2)``: for ``P = 1`` the single row is stored twice (the
duplicate vertex changes no crossing) so that centre and offset results always
differ in size along the batch.

Where the batch is, is known by provenance, never guessed from sizes: a
:class:`Layout` says which dimension holds it and which factors were merged with it
(``outer * N * 2P * inner`` after e.g. the ``view(L * B, E)`` of
``nn.MultiheadAttention``).  Each op rule (:mod:`.rules`, :mod:`.nonlinear`) computes
the output layout; when it cannot be decided the rule raises :class:`OffsetsError`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Layout", "OffsetContext", "OffsetTensor", "OffsetsError", "split", "merge", "lift"]


class OffsetsError(RuntimeError):
    """The offsets engine cannot follow this model (it never guesses)."""


class Layout(NamedTuple):
    """Where the batch lives: dimension ``bdim`` has size ``outer * batch * inner``."""

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
        R: offset rows per point and part (``max(P, 2)``).
        cache: constants (weights) cast to ``dtype``, keyed by storage and version.
        first_break: ``LongTensor (N,)``: index of the offset op at which each point
            stopped being antisymmetric (``-1`` while it still is).
        breaks: ``{reason: points}`` that broke antisymmetry for that reason.
        ops / row_work: offset ops run and the sum of their rows per point.
    """

    def __init__(self, n: int, P: int, dtype: torch.dtype):
        self.n, self.P, self.dtype = n, P, dtype
        self.R = max(P, 2)
        self.cache: dict = {}
        self.first_break = torch.full((n,), -1, dtype=torch.long)
        self.breaks: dict[str, int] = {}
        self.ops = 0
        self.row_work = 0.0

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

    def count_op(self, x: "OffsetTensor") -> None:
        """Account one op on ``x``'s offsets (``1 + P`` or ``1 + 2P`` rows per point)."""
        nb = 0 if x.bidx is None else x.bidx.numel()
        self.ops += 1
        self.row_work += 1 + self.P * (1 + nb / max(1, self.n))

    def mark_break(self, points: torch.Tensor, reason: str) -> None:
        """Record that the points in bool mask ``points`` (N,) lose antisymmetry now."""
        points = points.cpu()
        new = points & (self.first_break < 0)
        if bool(new.any()):
            self.first_break[new] = self.ops
            self.breaks[reason] = self.breaks.get(reason, 0) + int(new.sum())


def split(t: torch.Tensor, lay: Layout, pts: int, rows: int) -> torch.Tensor:
    """View dimension ``lay.bdim`` of ``t`` as ``(outer, pts, rows, inner)``."""
    b = lay.bdim
    s = t.shape
    return t.reshape(*s[:b], lay.outer, pts, rows, lay.inner, *s[b + 1:])


def merge(t: torch.Tensor, b: int) -> torch.Tensor:
    """Inverse of :func:`split`: dims ``b..b+3`` back into one."""
    return t.flatten(b, b + 3)


class OffsetTensor(torch.Tensor):
    """Centre ``c``, antisymmetric part ``a`` and symmetric part ``s`` (points ``bidx``)
    of ``N`` points, seen by the model as the ``N * 2P``-vertex batch (module docstring).
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, c, a, s, bidx, layout: Layout, ctx: OffsetContext):
        shape = list(c.shape)
        shape[layout.bdim] = c.shape[layout.bdim] * 2 * ctx.P
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=c.dtype, device=c.device)

    def __init__(self, c, a, s, bidx, layout, ctx):
        self._set(c, a, s, bidx, layout, ctx)

    def _set(self, c, a, s, bidx, layout, ctx):
        b = layout.bdim
        unit = layout.outer * layout.inner
        ok = c.dim() == a.dim() and c.shape[b] == unit * ctx.n and a.shape[b] == unit * ctx.n * ctx.R
        if s is not None:
            ok = ok and bidx is not None and s.dim() == c.dim() and s.shape[b] == unit * bidx.numel() * ctx.R
            if bidx.numel() == 0:
                s = bidx = None
        else:
            bidx = None
        if not ok:
            raise OffsetsError(f"internal: centre {tuple(c.shape)} / offsets {tuple(a.shape)} / "
                               f"{None if s is None else tuple(s.shape)} disagree with {layout} for N={ctx.n}")
        self.c, self.a, self.s, self.bidx, self.lay, self.ctx = c, a, s, bidx, layout, ctx

    def assign(self, other: "OffsetTensor") -> "OffsetTensor":
        """Become ``other`` (for in-place ops)."""
        self._set(other.c, other.a, other.s, other.bidx, other.lay, other.ctx)
        return self

    @property
    def nb(self) -> int:
        return 0 if self.bidx is None else self.bidx.numel()

    def __repr__(self):  # printing must not run ops
        return (f"OffsetTensor(shape={tuple(self.shape)}, centre={self.c.dtype}, offsets={self.a.dtype}, "
                f"broken points={self.nb}/{self.ctx.n}, {self.lay})")

    # -- split views -----------------------------------------------------------
    def c4(self) -> torch.Tensor:
        return split(self.c, self.lay, self.ctx.n, 1)

    def a4(self) -> torch.Tensor:
        return split(self.a, self.lay, self.ctx.n, self.ctx.R)

    def s4(self) -> torch.Tensor | None:
        return None if self.s is None else split(self.s, self.lay, self.nb, self.ctx.R)

    def at_broken(self, t4: torch.Tensor) -> torch.Tensor:
        """Rows of the broken points of a split-form tensor over all points."""
        return t4.index_select(self.lay.bdim + 1, self.bidx)

    def s_full4(self, dtype=None) -> torch.Tensor | None:
        """The symmetric part over all points (zeros where antisymmetric), split form."""
        if self.s is None:
            return None
        s4 = self.s4().to(dtype or self.a.dtype)
        shape = list(self.a4().shape)
        out = torch.zeros(shape, dtype=s4.dtype, device=s4.device)
        return out.index_copy(self.lay.bdim + 1, self.bidx, s4)

    def pm(self):
        """``(z+, z-)``: values of vertices ``+v_p`` and ``-v_p`` (``P`` rows each, split
        form), in the centre dtype."""
        cd = self.c.dtype
        P, b = self.ctx.P, self.lay.bdim + 2
        a = self.a4().narrow(b, 0, P).to(cd)
        base = self.c4()
        sf = self.s_full4(cd)
        if sf is not None:
            base = base + sf.narrow(b, 0, P)
        return base + a, base - a

    def vertices(self) -> torch.Tensor:
        """All ``2P`` vertex values ``c + s +- a`` (apparent shape), centre dtype."""
        zp, zm = self.pm()
        return merge(torch.cat([zp, zm], self.lay.bdim + 2), self.lay.bdim)

    def centre_rows(self, rows: int, dtype=None) -> torch.Tensor:
        """The centre repeated ``rows`` times per point (merged form)."""
        c = self.c4() if dtype is None else self.c4().to(dtype)
        shape = list(c.shape)
        shape[self.lay.bdim + 2] = rows
        return merge(c.expand(shape), self.lay.bdim)

    def per_point(self, t4: torch.Tensor) -> torch.Tensor:
        """Reduce a bool split-form tensor to ``(pts,)`` by ``any``."""
        b = self.lay.bdim + 1
        return t4.movedim(b, 0).reshape(t4.shape[b], -1).any(1)

    def with_parts(self, c, a, s, layout=None) -> "OffsetTensor":
        """A tensor with the same broken points and new parts."""
        return OffsetTensor(c, a, s, self.bidx, layout or self.lay, self.ctx)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from .rules import dispatch
        return dispatch(func, args, kwargs or {})


def from_pm(c4: torch.Tensor, op4: torch.Tensor, om4: torch.Tensor, layout: Layout, ctx: OffsetContext,
            keep_a4=None) -> OffsetTensor:
    """Every point broken: the offsets ``o+-`` (split form, ``P`` rows, any float dtype)
    of vertices ``+-v_p`` from centre ``c4`` become ``a = (o+ - o-)/2``, ``s = (o+ + o-)/2``."""
    b = layout.bdim
    a = ((op4 - om4) * 0.5).to(ctx.dtype)
    s = ((op4 + om4) * 0.5).to(ctx.dtype)
    if ctx.R != ctx.P:  # P = 1: the row stored twice
        a, s = torch.cat([a, a], b + 2), torch.cat([s, s], b + 2)
    bidx = torch.arange(ctx.n, device=c4.device)
    return OffsetTensor(merge(c4, b), merge(a, b), merge(s, b), bidx, layout, ctx)


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
    """The tensors with a common set of broken points (the union; zeros added)."""
    parts = [x for x in xs if isinstance(x, OffsetTensor)]
    if all(x.bidx is None for x in parts) or (
            len({None if x.bidx is None else tuple(x.bidx.tolist()) for x in parts}) == 1):
        return xs
    union = torch.unique(torch.cat([x.bidx for x in parts if x.bidx is not None]))
    out = []
    for x in xs:
        if not isinstance(x, OffsetTensor):
            out.append(x)
            continue
        b = x.lay.bdim + 1
        shape = list(x.a4().shape)
        shape[b] = union.numel()
        s = torch.zeros(shape, dtype=x.a.dtype, device=x.a.device)
        if x.bidx is not None:
            s = s.index_copy(b, torch.searchsorted(union, x.bidx), x.s4())
        out.append(OffsetTensor(x.c, x.a, merge(s, x.lay.bdim), union, x.lay, x.ctx))
    return out


def rows_per_point(ctx: OffsetContext) -> float:
    """Mean rows per point and offset op (``1 + P`` antisymmetric, ``1 + 2P`` not)."""
    return ctx.row_work / ctx.ops if ctx.ops else 1.0 + ctx.P
