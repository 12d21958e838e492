"""``lcfast::triton_crossing_act``: crossing count + activation of a site, one pass.

Same contract as the native op ``lcfast::crossing_act`` so the two are
interchangeable behind ``backend=``.  :func:`launch_epilogue` is the launcher shared
by :mod:`.triton_crossing_count` and :mod:`.triton_bn_crossing_act`.
"""
from __future__ import annotations

import torch
import triton
from torch.library import triton_op, wrap_triton

from ..kernels.triton_crossing import crossing_epilogue_kernel
from .triton_util import act_code, channel_div, check_runnable, dense_batch_major, epilogue_blocks, epilogue_grid

__all__ = ["triton_crossing_act", "launch_epilogue"]


def launch_epilogue(pre: torch.Tensor, V: int, act: str = "identity", slope: float = 0.0, *,
                    store: bool = True, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                    residual: torch.Tensor | None = None, out: torch.Tensor | None = None,
                    wrap=wrap_triton) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run the crossing epilogue.

    Args:
        pre: ``(n*V, *F)`` site values, float32/bfloat16/float16/float64, any layout
            (contiguous and channels-last are read in place; others are copied once).
        V: vertices per point (``pre.shape[0]`` must be a multiple).
        act: activation name (see :data:`lcfast.ops.triton_util.ACT_CODES`).
        slope: negative slope of ``leaky_relu``.
        store: write the activation (``False``: count only, ``out`` is ``None``).
        scale, shift: ``(C,)`` per-channel affine (dim 1) applied first (folded BN).
        residual: ``pre``-shaped tensor added after the affine.
        out: optional output buffer with the same shape and strides as ``pre``.

    Returns:
        ``(out, counts)``: ``out`` like ``pre`` (same strides when ``pre`` was dense),
        ``counts`` ``LongTensor (n,)``.
    """
    if V < 1 or pre.dim() < 1 or pre.shape[0] % V:
        raise ValueError(f"pre must have n*V rows (V={V}), got shape {tuple(pre.shape)}")
    check_runnable(crossing_epilogue_kernel, pre)
    pre, cl = dense_batch_major(pre)
    rows = pre.shape[0]
    n = rows // V
    F = pre.numel() // rows if rows else 0
    counts = torch.zeros(n, dtype=torch.int64, device=pre.device)
    if store and out is None:
        out = torch.empty_like(pre)
    if store and out.stride() != pre.stride():
        raise ValueError("out must have the strides of pre")
    affine = scale is not None
    if affine:
        C = pre.shape[1]
        scale = scale.to(device=pre.device).contiguous()
        shift = shift.to(device=pre.device).contiguous()
        if scale.numel() != C or shift.numel() != C:
            raise ValueError(f"scale/shift must have {C} elements (dim 1 of pre)")
    else:
        C = 1
    if residual is not None:
        if residual.shape != pre.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} != pre {tuple(pre.shape)}")
        if residual.stride() != pre.stride():
            residual = torch.empty_like(pre).copy_(residual)
    if n == 0 or F == 0:
        return out, counts
    vb, bf = epilogue_blocks(V, F)
    grid = epilogue_grid(n, F, bf)
    dummy = pre
    code = act_code(act)
    wrap(crossing_epilogue_kernel)[grid](
        pre, out if store else dummy, residual if residual is not None else dummy,
        scale if affine else dummy, shift if affine else dummy, counts,
        F, C, channel_div(pre, cl), triton.cdiv(F, bf),
        # a constexpr, so float64 math uses the float64 slope (see the kernel's docstring);
        # 0.0 for other activations so that they share one compiled variant
        SLOPE=float(slope) if code == act_code("leaky_relu") else 0.0,
        V=V, VB=vb, BLOCK_F=bf, ACT=code, AFFINE=affine, RESIDUAL=residual is not None,
        STORE=store, F64=pre.dtype == torch.float64,
        num_warps=8 if vb * bf >= 4096 else 4,
    )
    return out, counts


@triton_op("lcfast::triton_crossing_act", mutates_args=())
def triton_crossing_act(pre: torch.Tensor, V: int, act: str, slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Crossed neurons per point and the activation, in one read and one write.

    Args:
        pre: ``(n*V, *F)`` pre-activations, the ``V`` vertices of a point contiguous
            rows; float32/bfloat16/float16/float64 (math in float32, float64 for
            float64), NCHW or channels-last.
        V: vertices per point.
        act: ``"relu"``, ``"leaky_relu"``, ``"gelu"``, ``"gelu_tanh"``, ``"silu"``,
            ``"tanh"``, ``"sigmoid"`` or ``"identity"``.
        slope: negative slope (``leaky_relu`` only).

    Returns:
        ``(out, counts)``: ``out`` ``(n*V, *F)`` like ``pre``; ``counts`` ``LongTensor (n,)``
        with the docs/design.md#definition rule on ``pre``.

    Example:
        >>> out, c = torch.ops.lcfast.triton_crossing_act(torch.tensor([[1., -1.], [2., -1.]]), 2, "relu", 0.0)
        >>> c
        tensor([1])
    """
    out, counts = launch_epilogue(pre, V, act, slope)
    return out, counts


@triton_crossing_act.register_fake
def _(pre, V, act, slope):
    # the launcher's layout rule: contiguous/channels-last kept, anything else (also
    # dense but permuted) copied to contiguous first, so the output is contiguous
    return torch.empty_like(dense_batch_major(pre)[0]), pre.new_empty((pre.shape[0] // V,), dtype=torch.int64)
