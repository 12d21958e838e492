"""``lcfast::triton_bn_crossing_act``: folded eval-mode BatchNorm (+ residual) +
crossing count + activation, one pass after a convolution.

``z = pre * scale[c] + shift[c] (+ residual)``, counts on ``z``, ``out = act(z)``.
With ``scale = w / sqrt(var + eps)``, ``shift = b - mean * scale`` this is
``act(bn(conv) [+ identity])`` of a Conv-BN-ReLU chain or a ResNet block tail.
"""
from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from .triton_crossing_act import launch_epilogue

__all__ = ["triton_bn_crossing_act", "fold_bn"]


def fold_bn(bn: torch.nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` float32 ``(C,)`` (float64 for a float64 BN) of an eval-mode BN."""
    dt = torch.float64 if bn.running_var.dtype == torch.float64 else torch.float32
    inv = torch.rsqrt(bn.running_var.to(dt) + bn.eps)
    scale = inv if bn.weight is None else bn.weight.to(dt) * inv
    shift = -bn.running_mean.to(dt) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dt)
    return scale, shift


@triton_op("lcfast::triton_bn_crossing_act", mutates_args=())
def triton_bn_crossing_act(pre: torch.Tensor, V: int, scale: torch.Tensor, shift: torch.Tensor,
                           residual: torch.Tensor | None, act: str, slope: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Args:
        pre: ``(n*V, C, *spatial)`` conv output (NCHW or channels-last).
        scale, shift: ``(C,)`` float32.
        residual: ``None`` or a ``pre``-shaped tensor added after the affine.
        act, slope: as :func:`lcfast.ops.triton_crossing_act.triton_crossing_act`.

    Returns:
        ``(out, counts)``: ``out`` like ``pre``, ``counts`` ``LongTensor (n,)``.
    """
    return launch_epilogue(pre, V, act, slope, scale=scale, shift=shift, residual=residual, wrap=wrap_triton)


@triton_bn_crossing_act.register_fake
def _(pre, V, scale, shift, residual, act, slope):
    return torch.empty_like(pre), pre.new_empty((pre.shape[0] // V,), dtype=torch.int64)
