"""The centre + offsets tensor: one value per point (``c``) and its vertices' offsets.

:class:`OffsetTensor` is an aten-level tensor subclass (``__torch_dispatch__``).  It
presents itself to the model's unmodified ``forward`` as the vertex batch (``N * 2P``
vertices in its batch dimension, point-major, ``+v_1..+v_P, -v_1..-v_P``), while it
stores, per point, the value of vertex ``+-v_p`` as ``c + s_p +- a_p``:

* ``c``: the centres, ``N`` in place of ``N * 2P``, centre dtype (float32 / float64);
* ``a``: the antisymmetric part, ``N * R`` rows, compute dtype (bf16, fp16, fp32, fp64);
* ``s``: the symmetric part, only for the points whose antisymmetry broke
  (``bidx``, sorted indices), ``None`` while no point broke.  Either *dense*
  (``coef is None``: ``Nb * R`` rows, row ``p`` is ``s_p``) or *low-rank*: ``Nb * K``
  basis rows ``E`` with per-point coefficients ``coef`` ``(Nb, R, K)`` (centre
  dtype), ``s_p = sum_k coef[p, k] E_k``.  A crossed ReLU neuron or a switched
  max-pool window adds one basis row (a unit vector at that neuron, its values in
  ``coef``), so a point that broke at a few neurons costs ``1 + P + K`` rows
  instead of ``1 + 2P``; the basis is kept while ``K <= R`` (never more rows than
  dense) and made dense otherwise.  ``blocks`` names the basis columns (one id per
  op that added them) so that two tensors derived from one (a residual add) share
  their common columns instead of stacking them.

So a point costs ``1 + P`` rows while antisymmetric and ``1 + P + min(K, P)``
after, decided per point and op.  ``R = max(P, 2)``: for ``P = 1`` the single row is stored twice (the
duplicate vertex changes no crossing) so that centre and offset results always
differ in size along the batch.

Where the batch is, is known by provenance, never guessed from sizes: a
:class:`Layout` says which dimension holds it and which factors were merged with it
(``outer * N * 2P * inner`` after e.g. the ``view(L * B, E)`` of
``nn.MultiheadAttention``).  Each op rule (:mod:`.rules`, :mod:`.nonlinear`) computes
the output layout; when it cannot be decided the rule raises :class:`OffsetsError`.
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch

__all__ = ["Layout", "OffsetContext", "OffsetTensor", "OffsetsError", "RowMix", "split", "merge", "to_pts",
           "from_pts", "mix_rows"]


class OffsetsError(RuntimeError):
    """The offsets engine cannot follow this model (it never guesses)."""


class Layout(NamedTuple):
    """Where the batch lives: dimension ``bdim`` has size ``outer * batch * inner``."""

    bdim: int
    outer: int = 1
    inner: int = 1


class RowMix(NamedTuple):
    """A pending per-point mix of the input's offset rows (frames drawn as
    :class:`lcfast.frames.FactoredFrames`): the antisymmetric part is ``a_p = sum_q
    t[n, p, q] raw_q``, not yet multiplied out.  It commutes with every linear op, so
    the first dense layer or convolution applies it to its (smaller) output instead of
    the ``N x P x D`` input (:func:`lcfast.engine.offsets.rules._weighted`).

    Attributes:
        t: ``(N, R, R)`` the mix (radius folded in), offsets dtype.
        norms: ``(N,)`` centre dtype, ``max_p ||a_p||`` (the band's Cauchy-Schwarz scale).
        l1: ``(N,)`` centre dtype, ``max_p sum_q |t[p, q]| ||raw_q||``: the scale of the
            mix's own rounding (:func:`lcfast.engine.offsets.band.producer_band`).
    """

    t: torch.Tensor
    norms: torch.Tensor
    l1: torch.Tensor


class OffsetContext:
    """Per-chunk state shared by all offset tensors of one forward.

    Args:
        n: ``N`` points.
        P: directions per point.
        dtype: compute dtype of the offsets.
        tf32: allow TF32 in the offsets' linear ops on CUDA (:meth:`offset_math`).
        track_band: carry the rounding band (:mod:`.band`) for the accuracy report.

    Attributes:
        R: offset rows per point and part (``max(P, 2)``).
        cache: constants (weights) cast to ``dtype``, keyed by storage and version.
        first_break: ``LongTensor (N,)``: index of the offset op at which each point
            stopped being antisymmetric (``-1`` while it still is).
        breaks: ``{reason: points}`` that broke antisymmetry for that reason.
        ops / row_work: offset ops run and the sum of their rows per point.
        symmetric: ``{"low_rank_ops", "dense_ops"}``: offset ops that met a low-rank /
            dense symmetric part.
    """

    def __init__(self, n: int, P: int, dtype: torch.dtype, tf32: bool = False, track_band: bool = False,
                 u_offsets: float = 0.0):
        self.n, self.P, self.dtype, self.tf32 = n, P, dtype, tf32
        self.track_band, self.u_offsets = track_band, u_offsets
        self.R = max(P, 2)
        self.cache: dict = {}
        self.first_break = torch.full((n,), -1, dtype=torch.long)
        self.breaks: dict[str, int] = {}
        self.ops = 0
        self.row_work = 0.0
        self.symmetric = {"low_rank_ops": 0, "dense_ops": 0}
        #: where a pending :class:`RowMix` (factored frames) was applied: ``"input"`` or
        #: ``"output of the first linear op"`` (``None``: none was pending)
        self.frames_mix: str | None = None
        #: set while a pooling call that returns no indices runs (:meth:`OffsetTensor.__torch_function__`)
        self.pool_indices_unused = False
        self._blocks = 0

    def new_block(self) -> int:
        """A fresh id for basis columns of the low-rank symmetric part."""
        self._blocks += 1
        return self._blocks

    @contextlib.contextmanager
    def offset_math(self, device: torch.device):
        """Where the offsets' own linear ops run: with ``tf32`` (float32 offsets on CUDA)
        TF32 is allowed there, while the centre's ops keep the model guard's strict
        float32.  Anywhere else a no-op."""
        if not (self.tf32 and device.type == "cuda"):
            yield
            return
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags

    def cast(self, t):
        """A constant (weight, scale) in the offsets dtype; cached per storage/version."""
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype == self.dtype:
            return t
        return self.derived(t, "cast", lambda w: w.to(self.dtype))

    def derived(self, t: torch.Tensor, tag: str, fn):
        """``fn(t)`` of a constant ``t``, cached per ``tag``, storage and version (a weight's
        cast, absolute value, row norms: computed once per chunk)."""
        key = (tag, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
               t.dtype, t._version)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = fn(t)
        return hit

    def count_op(self, x: "OffsetTensor") -> None:
        """Account one op on ``x``'s offsets (``1 + P`` or ``1 + 2P`` rows per point)."""
        extra = 0 if x.s is None else x.nb * min(x.K, self.P)
        self.ops += 1
        self.row_work += 1 + self.P + extra / max(1, self.n)
        if x.s is not None:
            kind = "dense_ops" if x.coef is None else "low_rank_ops"
            self.symmetric[kind] += 1

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


def to_pts(t4: torch.Tensor, b: int) -> torch.Tensor:
    """Split form (batch dimension ``b``) to ``(pts, rows, F)``, ``F`` = every other
    dimension flattened (a view when the batch leads, else a copy)."""
    t = t4.movedim((b + 1, b + 2), (0, 1))
    return t.reshape(t.shape[0], t.shape[1], -1)


def product_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """Where a product of a 16-bit tensor ``t`` (bf16/fp16 offsets, 8-11 bits) with a
    ``dtype`` operand runs: float32 (exact to ``2^-24`` relative, far below the offsets'
    own rounding; a float64 centre's float64 there cost ResNet18 224 px at r = 5e-3 ~0.1 s
    of a 1.9 s bf16 call, one CPU thread, measured 1 Dec 2026), else ``dtype``."""
    return torch.float32 if t.element_size() < 4 else dtype


def basis_values(e4: torch.Tensor, coef: torch.Tensor, b: int) -> torch.Tensor:
    """``s_p = sum_k coef[p, k] E_k``: basis rows ``e4`` (split form, ``K`` rows per point)
    with coefficients ``coef`` ``(pts, R, K)`` as ``R`` rows per point, in ``coef``'s dtype
    (float32 for a 16-bit basis: :func:`product_dtype`)."""
    work = product_dtype(e4, coef.dtype)
    return from_pts(torch.bmm(coef.to(work), to_pts(e4, b).to(work)), e4.shape, b)


def from_pts(tp: torch.Tensor, shape4, b: int) -> torch.Tensor:
    """Inverse of :func:`to_pts` for a split-form ``shape4`` (points and rows from ``tp``)."""
    other = list(shape4[:b + 1]) + list(shape4[b + 3:])
    return tp.reshape(tp.shape[0], tp.shape[1], *other).movedim((0, 1), (b + 1, b + 2))


def mix_rows(raw: torch.Tensor, lay: Layout, n: int, t: torch.Tensor) -> torch.Tensor:
    """``out_p = sum_q t[n, p, q] raw_q`` for every point: ``raw`` merged form (``R``
    rows per point, layout ``lay``), ``t`` ``(n, R, R)``; in ``raw``'s dtype, or float32
    when that is narrower (then cast back)."""
    R = t.shape[-1]
    r4 = split(raw, lay, n, R)
    work = torch.promote_types(raw.dtype, torch.float32)
    out = torch.bmm(t.to(work), to_pts(r4, lay.bdim).to(work)).to(raw.dtype)
    return merge(from_pts(out, r4.shape, lay.bdim), lay.bdim)


class OffsetTensor(torch.Tensor):
    """Centre ``c``, antisymmetric part ``a`` and symmetric part ``s`` (points ``bidx``)
    of ``N`` points, seen by the model as the ``N * 2P``-vertex batch (module docstring).
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """As ``torch._C._disabled_torch_function_impl``, and a max pooling that returns no
        indices (``torch.max_pool2d``, ``F.max_pool2d(return_indices=False)``, ...) tells the
        max-pool rule so: its ATen op must still return the vertex batch's int64 indices,
        which nobody reads then (ResNet18 224 px, 2 points: 2 x 50 x 200,704, ~54 ms)."""
        kwargs = kwargs or {}
        pos = _POOLS.get(func, -1)  # -1: not a max pooling (the common case, checked first)
        unused = pos != -1 and args and isinstance(args[0], OffsetTensor) and not (
            kwargs.get("return_indices", False) or (pos is not None and len(args) > pos and args[pos]))
        with torch._C.DisableTorchFunctionSubclass():
            if not unused:
                return func(*args, **kwargs)
            ctx = args[0].ctx
            ctx.pool_indices_unused = True
            try:
                return func(*args, **kwargs)
            finally:
                ctx.pool_indices_unused = False

    @staticmethod
    def __new__(cls, c, a, s, bidx, layout: Layout, ctx: OffsetContext, coef=None, blocks=None, scale=1.0):
        shape = list(c.shape)
        shape[layout.bdim] = c.shape[layout.bdim] * 2 * ctx.P
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=c.dtype, device=c.device)

    def __init__(self, c, a, s, bidx, layout, ctx, coef=None, blocks=None, scale=1.0):
        #: ``run(out_scale) -> (a, s)``: the parts not yet computed (:meth:`pending_product`)
        self.pending = None
        self._set(c, a, s, bidx, layout, ctx, coef, blocks, scale)
        #: centre-shaped rounding band of the values (:mod:`.band`), ``None``: not tracked
        self.band = None

    @classmethod
    def pending_product(cls, like: "OffsetTensor", c, layout, run) -> "OffsetTensor":
        """A linear op's output whose parts are computed on first use: ``run(None)`` gives
        ``(a, s)``; a following per-output-channel scale (batch norm in eval) calls
        ``run(scale)`` instead and folds it into the weight, saving a pass over the offsets
        (:mod:`.conv_bn`).  The broken points and basis are ``like``'s."""
        out = cls.__new__(cls, c, c, None, None, layout, like.ctx)
        out.c, out.lay, out.ctx, out.bidx, out.coef = c, layout, like.ctx, like.bidx, like.coef
        out.blocks, out.scale, out.band, out.pending = like.blocks, 1.0, None, run
        return out

    def _force(self):
        run, self.pending = self.pending, None
        a, s = run(None)
        self._set(self.c, a, s, self.bidx, self.lay, self.ctx, self.coef, self.blocks)

    @property
    def s(self):
        """The symmetric part (``None`` while every point is antisymmetric)."""
        if self.pending is not None:
            self._force()
        return self._s

    def _set(self, c, a, s, bidx, layout, ctx, coef=None, blocks=None, scale=1.0):
        b = layout.bdim
        unit = layout.outer * layout.inner
        ok = c.dim() == a.dim() and c.shape[b] == unit * ctx.n and a.shape[b] == unit * ctx.n * ctx.R
        if s is not None:
            K = ctx.R if coef is None else coef.shape[-1]
            ok = ok and bidx is not None and s.dim() == c.dim() and s.shape[b] == unit * bidx.numel() * K
            if coef is not None:
                ok = ok and coef.shape == (bidx.numel(), ctx.R, K) and sum(k for _, k in blocks) == K
            if bidx.numel() == 0:
                s = bidx = None
        if s is None:
            bidx = coef = blocks = None
        if not ok:
            raise OffsetsError(f"internal: centre {tuple(c.shape)} / offsets {tuple(a.shape)} / "
                               f"{None if s is None else tuple(s.shape)} disagree with {layout} for N={ctx.n}")
        if scale != 1.0 and s is not None:
            raise OffsetsError("internal: a pending offset scale with a symmetric part")
        self.c, self._a, self._s, self.bidx, self.lay, self.ctx = c, a, s, bidx, layout, ctx
        self.coef, self.blocks = coef, (None if coef is None else tuple(blocks))
        self.scale = scale

    @property
    def a(self) -> torch.Tensor:
        """The antisymmetric part; a pending scale (the radius, while the input's offsets
        are still the unscaled directions) or :class:`RowMix` is applied on first use."""
        if self.pending is not None:
            self._force()
        if isinstance(self.scale, RowMix):
            self._a, self.scale = mix_rows(self._a, self.lay, self.ctx.n, self.scale.t), 1.0
            self.ctx.frames_mix = self.ctx.frames_mix or "input"
        elif self.scale != 1.0:
            self._a, self.scale = self._a * self.scale, 1.0
        return self._a

    def raw_a(self):
        """``(a_unscaled, scale)``: for a linear op that folds the scale into its weight
        (``W (r V) = (r W) V``: the radius never touches the ``N * P * D`` input offsets);
        ``scale`` is a float or a :class:`RowMix`."""
        if self.pending is not None:
            self._force()
        return self._a, self.scale

    def assign(self, other: "OffsetTensor") -> "OffsetTensor":
        """Become ``other`` (for in-place ops)."""
        self.pending = None
        self._set(other.c, other.a, other.s, other.bidx, other.lay, other.ctx, other.coef, other.blocks)
        self.band = other.band
        return self

    @property
    def nb(self) -> int:
        return 0 if self.bidx is None else self.bidx.numel()

    @property
    def K(self) -> int:
        """Rows per broken point of ``s`` (``R`` when dense)."""
        return self.ctx.R if self.coef is None else self.coef.shape[-1]

    def __repr__(self):  # printing must not run ops
        return (f"OffsetTensor(shape={tuple(self.shape)}, centre={self.c.dtype}, offsets={self.a.dtype}, "
                f"broken points={self.nb}/{self.ctx.n}, {self.lay})")

    # -- split views -----------------------------------------------------------
    def c4(self) -> torch.Tensor:
        return split(self.c, self.lay, self.ctx.n, 1)

    def a4(self) -> torch.Tensor:
        return split(self.a, self.lay, self.ctx.n, self.ctx.R)

    def s4(self) -> torch.Tensor | None:
        return None if self.s is None else split(self.s, self.lay, self.nb, self.K)

    def s_dense4(self, dtype=None) -> torch.Tensor | None:
        """The symmetric part ``s_p`` of the broken points, ``R`` rows, split form
        (``coef @ E`` in the centre dtype when low-rank)."""
        if self.s is None:
            return None
        s4 = self.s4()
        if self.coef is None:
            return s4 if dtype is None else s4.to(dtype)
        return basis_values(s4, self.coef, self.lay.bdim).to(dtype or self.a.dtype)

    def at_broken(self, t4: torch.Tensor) -> torch.Tensor:
        """Rows of the broken points of a split-form tensor over all points."""
        return t4.index_select(self.lay.bdim + 1, self.bidx)

    def s_full4(self, dtype=None) -> torch.Tensor | None:
        """The symmetric part over all points (zeros where antisymmetric), split form."""
        if self.s is None:
            return None
        s4 = self.s_dense4(dtype or self.a.dtype)
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

    def with_parts(self, c, a, s, layout=None, scale=1.0, band=None) -> "OffsetTensor":
        """A tensor with the same broken points (and basis coefficients) and new parts
        (``band``: its rounding band, :mod:`.band`)."""
        out = OffsetTensor(c, a, s, self.bidx, layout or self.lay, self.ctx, self.coef, self.blocks, scale)
        out.band = band
        return out

    def densified(self) -> "OffsetTensor":
        """The same values with a dense symmetric part."""
        if self.coef is None:
            return self
        return OffsetTensor(self.c, self.a, merge(self.s_dense4(), self.lay.bdim), self.bidx, self.lay, self.ctx)

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


def rows_per_point(ctx: OffsetContext) -> float:
    """Mean rows per point and offset op (``1 + P`` antisymmetric, ``1 + 2P`` not)."""
    return ctx.row_work / ctx.ops if ctx.ops else 1.0 + ctx.P


# max poolings -> position of their ``return_indices`` argument (F.*), or ``None``: they
# never return indices (torch.max_pool*d)
_POOLS = {getattr(torch, f"max_pool{k}d"): None for k in (1, 2, 3)}
_POOLS.update({getattr(torch.nn.functional, f"max_pool{k}d"): 6 for k in (1, 2, 3)})
