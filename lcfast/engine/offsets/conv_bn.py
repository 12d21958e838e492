"""Convolution and batch norm (eval) on centre + offsets, and the fold between them.

A convolution maps the centre with its bias and the offsets without it.  Its offsets are
left pending (:meth:`.tensor.OffsetTensor.pending_product`): when the next op is batch
norm in eval, that op's per-channel scale ``g / sqrt(var + eps)`` is folded into the
convolution's weight (``s (W * d) = (s W) * d``, the product in float32 or wider, cast
once to the offsets dtype) and the offsets are written once instead of twice; any other
use computes them as before.  ResNet18 224 px, 2 points, P = 25, float32, r = 5e-3, one
CPU thread (Zen 5, 1 Dec 2026): batch norm's multiply of the offsets was ~0.2 s of a
3.3 s call (torch profiler).  A transposed convolution, and the frames' pending row mix
at the first layer, are not folded.
"""
from __future__ import annotations

import torch

from . import nonlinear as nl
from .band import abs_const, bn_band, producer_band
from .nonlinear import rule as _rule
from .rules import _band, _g, _parts, _weighted, _wrap
from .tensor import Layout, OffsetTensor, OffsetsError, RowMix
from ...tolerance import BATCH_NORM_WITH_TRAINING_FLAG, unit_roundoff

aten = torch.ops.aten
__all__: list = []


@_rule(aten.convolution.default)
def _conv(func, args, kwargs):
    x, w, bias = args[:3]
    if not isinstance(x, OffsetTensor) or isinstance(w, OffsetTensor) or isinstance(bias, OffsetTensor):
        return nl.fallback(func, args, kwargs)
    if x.lay.bdim != 0:
        raise OffsetsError("convolution input without the vertex batch in dimension 0")
    ctx = x.ctx
    c = func(x.c, w, bias, *args[3:], **kwargs)
    band = producer_band(x, lambda t: func(t, abs_const(x, w), None, *args[3:], **kwargs),
                         None if bias is None else abs_const(x, bias).reshape(1, -1, *([1] * (c.dim() - 2))))

    def conv(t, wk):
        return func(t, wk, None, *args[3:], **kwargs)
    transposed = args[6] if len(args) > 6 else kwargs.get("transposed", False)
    a, scale = x.raw_a()
    if transposed or isinstance(scale, RowMix):
        da, ds = _weighted(x, conv, ctx.cast(w), c)
        return _wrap(x, c, da, ds, func, band)
    ctx.count_op(x)
    s_in = x.s

    def run(out_scale):
        """The offsets, with ``out_scale`` ``(C_out,)`` float64 folded into the weight."""
        if out_scale is None:
            k = ctx.cast(w)
        else:
            work = torch.promote_types(w.dtype, torch.float32)
            k = (w.detach().to(work) * out_scale.to(work).reshape(-1, *[1] * (w.dim() - 1))).to(ctx.dtype)
        with ctx.offset_math(a.device):
            return conv(a, k if scale == 1.0 else k * scale), (None if s_in is None else conv(s_in, k))
    out = OffsetTensor.pending_product(x, c, Layout(0, x.lay.outer, x.lay.inner), run)
    out.band = band
    return out


def _bn_scale64(weight, var, eps) -> torch.Tensor:
    """``(C,)`` float64: batch norm's per-channel scale ``weight / sqrt(var + eps)``."""
    s = torch.rsqrt(var.to(torch.float64) + eps)
    return s if weight is None else s * weight.to(torch.float64)


def _bn_scale(s64, like):
    """The per-channel scale ``s64`` ``(C,)`` in ``like``'s dtype, broadcastable to it."""
    return s64.to(like.dtype).reshape(1, -1, *([1] * (like.dim() - 2)))


# the batch-norm ops with a ``training`` flag (lcfast.tolerance keeps the list); on CUDA
# ``aten.cudnn_batch_norm`` returns (out, mean, invstd, reserve)
_BN_TRAINING_FLAG = tuple(p.default for p in BATCH_NORM_WITH_TRAINING_FLAG)


@_rule(_g("_native_batch_norm_legit_no_training", "default"), *_BN_TRAINING_FLAG)
def _batch_norm(func, args, kwargs):
    x, weight, bias, mean, var = args[:5]
    training = func in _BN_TRAINING_FLAG and (args[5] if len(args) > 5 else kwargs["training"])
    if training or not isinstance(x, OffsetTensor) or any(isinstance(t, OffsetTensor) for t in args[1:5]):
        raise OffsetsError("batch norm must run in eval mode on the vertex batch only")
    if x.lay.bdim != 0:
        raise OffsetsError("batch norm input without the vertex batch in dimension 0")
    eps = args[-1] if len(args) > 5 else kwargs.get("eps", 1e-5)
    out = func(x.c, *args[1:], **kwargs)
    s64 = _bn_scale64(weight, var, eps)
    band = _band(x, lambda t: bn_band(t, _bn_scale(s64, t), bias, mean, unit_roundoff(x.c.dtype)))
    if x.pending is not None:  # a convolution's offsets: the scale goes into its weight
        a, s = x.pending(s64)
        res = x.with_parts(out[0], a, s, band=band)
        x.ctx.count_op(res)
        return (res, *out[1:])
    scale = _bn_scale(s64, x.a)
    a, s = _parts(x, lambda t: t * scale)
    return (x.with_parts(out[0], a, s, band=band), *out[1:])
