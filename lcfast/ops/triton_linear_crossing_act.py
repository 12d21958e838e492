"""``lcfast::triton_linear_crossing_act``: ``act(x @ W.T + b)`` as one Triton GEMM
whose epilogue adds the bias, counts crossings per vertex group and applies the
activation (tiling of groups: see :mod:`lcfast.kernels.triton_linear_crossing`).
"""
from __future__ import annotations

import torch
import triton
from torch.library import triton_op, wrap_triton

from ..kernels.triton_linear_crossing import linear_crossing_kernel
from ..acts import GEMM_DTYPES
from .triton_util import act_code, check_grid, check_runnable

__all__ = ["triton_linear_crossing_act", "launch_linear", "linear_tiles", "MAX_FUSED_V"]

#: Largest ``V`` whose padded group (``next_pow2(V)`` rows) fits one tile
#: (``BLOCK_M <= 128``); beyond it callers use ``F.linear`` + the epilogue.
MAX_FUSED_V = 128

#: Target rows per tile.  64 rows x 64 columns of fp32 accumulator = 32 registers
#: per thread at 4 warps; reasoned (register budget), *not measured* on a GPU.
_BLOCK_M_TARGET = 64


def linear_tiles(V: int, K: int, NOUT: int) -> dict:
    """Tile sizes: ``VP = next_pow2(V)``, ``G = max(1, 64 // VP)`` groups per tile
    (``BLOCK_M = G*VP`` >= 16 as ``tl.dot`` requires), ``BLOCK_N`` in [16, 64],
    ``BLOCK_K`` in [16, 32].  Unmeasured defaults; see the GPU script."""
    vp = 1 << max(0, (V - 1).bit_length())
    g = max(1, _BLOCK_M_TARGET // vp)
    while g * vp < 16:
        g *= 2
    bn = max(16, min(64, triton.next_power_of_2(NOUT)))
    bk = max(16, min(32, triton.next_power_of_2(K)))
    return dict(VP=vp, G=g, BLOCK_N=bn, BLOCK_K=bk)


def launch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, V: int, T: int,
                  act: str, slope: float = 0.0, count: bool = True, wrap=wrap_triton
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Args:
        x: ``(n*V*T, K)`` rows ordered ``(point, vertex, token)``.
        weight: ``(NOUT, K)``; bias: ``(NOUT,)`` or ``None``; same dtype as ``x``
            (float32, bfloat16 or float16).
        V: vertices per point (``<= MAX_FUSED_V``); T: tokens per vertex row.
        act, slope: activation; count: whether to count crossings.

    Returns:
        ``(out, counts)``: ``out`` ``(n*V*T, NOUT)`` contiguous, ``counts``
        ``LongTensor (n,)`` (zeros when ``count`` is false).
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x (M, K) and weight (NOUT, K) expected, got {tuple(x.shape)}, {tuple(weight.shape)}")
    if x.dtype not in GEMM_DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"x and weight must share a dtype in float32/bfloat16/float16, got {x.dtype}, {weight.dtype}")
    if not 1 <= V <= MAX_FUSED_V:
        raise ValueError(f"V must be in [1, {MAX_FUSED_V}], got {V}")
    M, K = x.shape
    NOUT = weight.shape[0]
    if M % (V * T):
        raise ValueError(f"x rows {M} are not a multiple of V*T = {V * T}")
    check_runnable(linear_crossing_kernel, x)
    n = M // (V * T)
    out = torch.empty(M, NOUT, dtype=x.dtype, device=x.device)
    counts = torch.zeros(n, dtype=torch.int64, device=x.device)
    if M == 0 or NOUT == 0:
        return out, counts
    t = linear_tiles(V, K, NOUT)
    upcast = x.dtype == torch.bfloat16 and x.device.type == "cpu"  # interpreter bf16 dot bug
    n_groups = n * T
    grid = check_grid((triton.cdiv(n_groups, t["G"]), triton.cdiv(NOUT, t["BLOCK_N"])))
    wrap(linear_crossing_kernel)[grid](
        x, weight, bias if bias is not None else weight, out, counts,
        n_groups, K, NOUT, T,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), float(slope),
        V=V, VP=t["VP"], G=t["G"], BLOCK_N=t["BLOCK_N"], BLOCK_K=t["BLOCK_K"], ACT=act_code(act),
        HAS_BIAS=bias is not None, COUNT=count,
        PRECISION="ieee" if (x.dtype == torch.float32 or upcast) else "tf32",
        UPCAST=upcast,
        num_warps=4,
    )
    return out, counts


@triton_op("lcfast::triton_linear_crossing_act", mutates_args=())
def triton_linear_crossing_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, V: int,
                               T: int, act: str, slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused linear block.

    Args:
        x: ``(n*V*T, K)``; weight ``(NOUT, K)``; bias ``(NOUT,)`` or ``None``.
        V: vertices per point; T: tokens per vertex row (1 for an MLP).
        act, slope: activation applied after the count.

    Returns:
        ``(out, counts)``: ``act(x @ W.T + b)`` ``(n*V*T, NOUT)`` and ``LongTensor (n,)``
        crossed neurons (over ``T*NOUT`` neurons) per point.
    """
    return launch_linear(x, weight, bias, V, T, act, slope, True, wrap=wrap_triton)


@triton_linear_crossing_act.register_fake
def _(x, weight, bias, V, T, act, slope):
    return (x.new_empty((x.shape[0], weight.shape[0])),
            x.new_empty((x.shape[0] // (V * T),), dtype=torch.int64))
