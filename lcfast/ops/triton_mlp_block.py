"""``lcfast::triton_mlp_block``: transformer MLP ``Linear -> act -> Linear``.

The first GEMM is the fused linear-crossing kernel (count on the act *input*, then
the act in its epilogue); the second GEMM runs through the same kernel with
``COUNT=False`` and an identity epilogue (adding its bias), so the hidden
activation is written once and read once.
"""
from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from .triton_linear_crossing_act import launch_linear

__all__ = ["triton_mlp_block"]


@triton_op("lcfast::triton_mlp_block", mutates_args=())
def triton_mlp_block(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                     b2: torch.Tensor | None, V: int, T: int, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Args:
        x: ``(n*V*T, D)``; w1 ``(H, D)``, b1 ``(H,)``; w2 ``(D2, H)``, b2 ``(D2,)``.
        V, T: vertices per point, tokens per vertex row.
        act: ``"gelu"`` (torchvision ViT), ``"gelu_tanh"`` (GPT-2), ``"relu"``, ...

    Returns:
        ``(out, counts)``: ``out`` ``(n*V*T, D2)``; ``counts`` ``LongTensor (n,)``
        crossed hidden neurons (over ``T*H``) at the act input.
    """
    h, counts = launch_linear(x, w1, b1, V, T, act, 0.0, True, wrap=wrap_triton)
    out, _ = launch_linear(h, w2, b2, V, T, "identity", 0.0, False, wrap=wrap_triton)
    return out, counts


@triton_mlp_block.register_fake
def _(x, w1, b1, w2, b2, V, T, act):
    return (x.new_empty((x.shape[0], w2.shape[0])),
            x.new_empty((x.shape[0] // (V * T),), dtype=torch.int64))
