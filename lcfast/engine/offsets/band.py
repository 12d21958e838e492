"""The engine's own rounding band: which site values it cannot resolve in its dtypes.

The float64 tolerance rule (:mod:`lcfast.tolerance`) calls a neuron *ambiguous* when a
vertex value lies within ``K * u * S`` of zero, ``S`` the magnitude scale of the
arithmetic that produced it (``|W|.|h| + |b|`` at a dot product, carried through the
elementwise ops up to the site).  The offsets engine computes a vertex value as
``c + d`` with ``c`` in the centre dtype (``u_c``) and ``d`` in the offsets dtype
(``u_d``), so its band per neuron is

    ``band = K * (u_c * S_c + u_d * S_d)``,

``S_c = |W| |c_in| + |b|`` the centre's scale and ``S_d = |W| D_in`` the offsets'
scale, ``D_in`` a bound on ``max_p |d_p|`` of the producer's input (the screen's
bound).  Both are one row per point (the centre's shape), so a producer costs one
extra centre-sized op: ``|W| (u_c |c_in| + u_d D_in)``, one matmul or convolution
on absolute values.  The band is carried, like the scale of the tolerance rule,
through the ops between a producer and a site: batch norm in eval (an elementwise
affine), adds (the sum of the bands), scaling, views, average and max pooling, and
ReLU outputs (``band + K u_c |out|``, as the rule's ``L s(x) + |out|``).  Any other op
(a smooth op, a product, the general fallback) leaves no band: the next producer
starts afresh, and a site reached without one is *unbounded* (reported by name).

A neuron is **ambiguous** at a point when some vertex value ``z`` has ``|z| < band``
(:func:`ambiguous_at`): the engine's sign for it may differ from float64's.  Every
other neuron's sign, hence its crossing status, is resolved, which is what the
certified mode relies on: a point with no ambiguous neuron at any (bounded) site has
float64's counts; the others are recomputed in float64 (:mod:`.runner`).  The band
uses the tolerance rule's ``K`` (measured for the vertex push; the certified-mode tests
compare with float64 on the zoo models at bf16, fp16 and fp32, which would expose a
``K`` too small for the offsets' arithmetic).

The band itself is carried in :data:`BAND_DTYPE` (float32) whatever the centre dtype:
it is a scale, not a value, and its convolutions on absolute values would otherwise run
in float64 with a float64 centre (the default of ``dtype=torch.bfloat16``), where the
CPU has no fast convolution.  Its own float32 rounding (relative ``<= n u_32`` for a
sum of ``n`` non-negative terms, 2.7e-4 at ``n = 4,608``) is far inside the factor
``K = 32``; the unit roundoffs in it stay those of the centre and offsets dtypes.
"""
from __future__ import annotations

import torch

from ...tolerance import K, unit_roundoff
from .tensor import OffsetTensor, from_pts, merge, split, to_pts

__all__ = ["BAND_DTYPE", "offsets_unit_roundoff", "abs_const", "column_norms", "bn_band", "activation_band", "producer_band", "point_band", "ambiguous_at", "with_band"]


# dtype of the band (above).  ResNet18 224 px, 2 points, P = 25, bf16 offsets around a
# float64 centre, one thread, CPU time (AMD EPYC with AVX-512, 1 Dec 2026, load ~1): the
# band's float64 convolutions (torch's slow_conv2d: no oneDNN for float64) cost 0.21-0.28 s
# of a 1.3 / 2.0 s call at r = 1e-4 / 5e-3.
BAND_DTYPE = torch.float32


def offsets_unit_roundoff(dtype: torch.dtype, tf32: bool) -> float:
    """``u`` of the offsets' linear ops: the dtype's, or TF32's ``2^-11`` (10 stored
    mantissa bits) when TF32 is allowed there."""
    return 2.0 ** -11 if tf32 else unit_roundoff(dtype)


def abs_const(x: OffsetTensor, t):
    """``|t|`` of a constant operand (weight, bias) in :data:`BAND_DTYPE`, cached per
    storage and version like the offsets' cast weights; ``None`` stays ``None``."""
    if not isinstance(t, torch.Tensor):
        return None if t is None else abs(t)
    return x.ctx.derived(t, "abs", lambda w: w.detach().abs().to(BAND_DTYPE))


def column_norms(x: OffsetTensor, w: torch.Tensor):
    """``(F_out,)`` 2-norms of the columns of a constant ``(F_in, F_out)`` right operand
    (a dense layer's weight rows), computed in the centre dtype, kept in :data:`BAND_DTYPE`,
    cached; ``None`` unless bands are tracked."""
    if not x.ctx.track_band:
        return None
    return x.ctx.derived(w, "colnorm",
                         lambda t: torch.linalg.vector_norm(t.detach().to(x.c.dtype), dim=0).to(BAND_DTYPE))


def bn_band(band: torch.Tensor, g: torch.Tensor, bias, mean: torch.Tensor, u: float) -> torch.Tensor:
    """Batch norm's output band (an elementwise affine ``g (x - mean) + bias``, ``g``
    per channel, broadcastable to ``band``): ``|g| band + K u (|g| |mean| + |bias|)``, the
    tolerance rule's batch-norm scale, ``u`` the centre's unit roundoff."""
    g = g.abs()
    own = g * mean.to(band.dtype).abs().reshape(g.shape)
    if bias is not None:
        own = own + bias.to(band.dtype).abs().reshape(g.shape)
    return band * g + own * (K * u)


def activation_band(band, c_out: torch.Tensor, slope: float):
    """A ReLU/LeakyReLU output's band: the input's (``|f'| <= max(1, |slope|)``) plus
    ``K u |out|``, as the tolerance rule's ``L s(x) + |out|``; ``None`` stays ``None``."""
    if band is None:
        return None
    return band * max(1.0, abs(slope)) + (c_out.abs() * (K * unit_roundoff(c_out.dtype))).to(band.dtype)


def _offset_bound(x: OffsetTensor) -> torch.Tensor:
    """A bound on ``max_p |s_p +- a_p|`` per neuron, centre-shaped, centre dtype."""
    from .screen import bound_pts  # the screen's bound, one row per point
    _, m = bound_pts(x)
    c4 = x.c4()
    return merge(from_pts(m[:, None], c4.shape, x.lay.bdim), x.lay.bdim)


def _row_norm_bound(x: OffsetTensor) -> torch.Tensor:
    """``(N, 1)``: ``max_p ||a_p||_2`` per point of a 2-d antisymmetric ``x`` (batch in
    dimension 0), centre dtype; the pending radius applied to the ``N`` values only."""
    raw, scale = x.raw_a()
    if not isinstance(scale, (int, float)):  # a pending RowMix: its rows' norms, plus the mix's own rounding scale
        return (scale.norms + scale.l1).unsqueeze(1)
    n, R, P = x.ctx.n, x.ctx.R, x.ctx.P
    norms = torch.linalg.vector_norm(raw, dim=1).reshape(n, R)[:, :P].amax(1, keepdim=True).to(x.c.dtype)
    return norms if scale == 1.0 else norms * scale


def producer_band(x: OffsetTensor, abs_op, bias_abs=None, weight_norms=None):
    """The band of a dot-product op's output (``band`` above), or ``None`` when the
    engine does not track bands (no accuracy report asked for).

    Args:
        x: the op's varying input.
        abs_op: ``t -> op(t, |W|)`` on a centre-shaped tensor ``t`` (no bias).
        bias_abs: ``|b|`` broadcastable to the output, or ``None``.
        weight_norms: ``(F_out,)`` the 2-norms of the weight's output rows, for a 2-d
            ``x @ W`` (dense layers): then ``S_d <= ||W_j|| max_p ||d_p||`` (Cauchy-Schwarz)
            replaces ``|W| D_in`` while ``x`` is antisymmetric.  It is the tighter of the two
            for dense random-sign weights (``sqrt(F)`` against ``~1.6 F`` times ``|w| |d|``,
            reasoned) and needs one contiguous norm over the offsets instead of a max over
            the rows (MNIST MLP 784-200x4-10, 1,000 points, P = 25, r = 5e-3, one thread,
            CPU time: the report's overhead on the engine's call 22% with ``|W| D_in`` at
            every layer, 4.4% with this, measured).

    Returns:
        centre-shaped band of the output, :data:`BAND_DTYPE`, or ``None``.
    """
    ctx = x.ctx
    if not ctx.track_band:
        return None
    u_c = unit_roundoff(x.c.dtype)
    if weight_norms is not None and x.s is None and x.dim() == 2 and x.lay.bdim == 0 and x.lay.outer == 1 \
            and x.lay.inner == 1:
        band = abs_op((x.c.abs() * (K * u_c)).to(BAND_DTYPE)) \
            + _row_norm_bound(x).to(BAND_DTYPE) * weight_norms * (K * ctx.u_offsets)
    else:
        band = abs_op((x.c.abs() * (K * u_c) + _offset_bound(x) * (K * ctx.u_offsets)).to(BAND_DTYPE))
    if bias_abs is not None:
        band = band + bias_abs * (K * u_c)
    return band


def with_band(out, band):
    """``out`` (an :class:`OffsetTensor`) carrying ``band`` (``None``: unbounded)."""
    if isinstance(out, OffsetTensor):
        out.band = band
    return out


def point_band(x: OffsetTensor) -> torch.Tensor | None:
    """``(N, F)`` the band per point and neuron (the screen's points form), or ``None``."""
    if x.band is None:
        return None
    return to_pts(split(x.band, x.lay, x.ctx.n, 1), x.lay.bdim)[:, 0]


def ambiguous_at(zp: torch.Tensor, zm: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """``(m,)`` bool: some vertex value of the neuron lies within its band of zero.

    Args:
        zp, zm: ``(m, P)`` vertex values of ``m`` (point, neuron) pairs.
        band: ``(m,)`` their bands.
    """
    return torch.minimum(zp.abs().amin(1), zm.abs().amin(1)) < band
