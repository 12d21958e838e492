"""Shared helpers of the Triton launchers (no op is registered here).

Activation codes, layout checks and the rule that picks a kernel's tile sizes live
here so that every ``triton_*`` op file uses the same ones.

Tuning constants and their status (the session that wrote these kernels had no
GPU; every constant below is *reasoned, not measured*, and
``benchmarks/gpu_triton_check.py`` sweeps the alternatives so they can be set
from a real run):

=====================  =========================  ==========================================
constant               value                      reason
=====================  =========================  ==========================================
epilogue ``VB``        ``min(next_pow2(V), 64)``  one slab for P <= 32 (V = 50 -> 64 rows);
                                                  masked padding rows move no bytes
epilogue ``BLOCK_F``   ``4096 // VB`` in [16,512] ~4096 elements per program: 16 fp32 per
                                                  thread at 8 warps, coalesced along F
epilogue warps         8 (4 for small tiles)      enough loads in flight for a pure
                                                  streaming kernel
GEMM ``BLOCK_M``       ``G * next_pow2(V)``, 64   whole vertex groups per tile (see
                                                  kernels/triton_linear_crossing.py)
GEMM ``BLOCK_N``       <= 64                      64x64 fp32 accumulator = 32 regs/thread
GEMM ``BLOCK_K``       <= 32                      2 x (64x32) operand tiles in registers
GEMM warps             4                          standard for 64x64 tiles
``MAX_FUSED_V``        128                        largest padded group in one tile; above
                                                  it: F.linear + epilogue
=====================  =========================  ==========================================
"""
from __future__ import annotations

import math

import torch

from ..acts import KERNEL_DTYPES, kernel_codes

__all__ = ["ACT_CODES", "act_code", "check_runnable", "dense_batch_major", "channel_div",
           "epilogue_blocks", "epilogue_grid", "check_grid", "GRID_LIMITS", "SUPPORTED_DTYPES"]

#: Activation name -> ``ACT`` constexpr of :func:`lcfast.kernels.triton_act.apply_act`
#: (the :mod:`lcfast.acts` rows with a Triton kernel).
ACT_CODES = kernel_codes("triton")

SUPPORTED_DTYPES = KERNEL_DTYPES


def act_code(act: str) -> int:
    try:
        return ACT_CODES[act]
    except KeyError:
        raise ValueError(f"act must be one of {sorted(ACT_CODES)}, got {act!r}") from None


def check_runnable(kernel, t: torch.Tensor) -> None:
    """Raise a clear error when ``kernel`` cannot run on ``t``'s device.

    Triton decides at *import* time whether ``@triton.jit`` builds a compiled
    kernel or an interpreted one (``TRITON_INTERPRET=1``); CPU tensors need the
    interpreted kind."""
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu":
        from triton.runtime.interpreter import InterpretedFunction
        if isinstance(kernel, InterpretedFunction):
            return
        raise RuntimeError(
            "lcfast Triton kernels run on CPU tensors only under the Triton interpreter: set "
            "TRITON_INTERPRET=1 before lcfast's Triton kernels are first imported")
    raise RuntimeError(f"lcfast Triton kernels do not run on device {t.device}")


def dense_batch_major(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(t', channels_last)``: ``t`` itself when its rows (dim 0) are dense blocks of
    ``numel/rows`` elements (contiguous or channels-last), else a contiguous copy."""
    if t.is_contiguous():
        return t, False
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t, True
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return t, True
    return t.contiguous(), False


def channel_div(t: torch.Tensor, channels_last: bool) -> int:
    """Elements between consecutive channels (dim 1) in memory order: ``prod(shape[2:])``
    for contiguous tensors, ``1`` for channels-last or 2-D ``(M, C)``."""
    if channels_last or t.dim() <= 2:
        return 1
    return math.prod(t.shape[2:])


def epilogue_blocks(V: int, F: int) -> tuple[int, int]:
    """``(VB, BLOCK_F)`` of the crossing epilogue.

    ``VB = min(next_pow2(V), 64)`` vertex rows per slab (one slab for P <= 32) and
    ``BLOCK_F`` neurons so a slab is ~4096 elements (16 fp32 per thread at 8 warps,
    contiguous along F for coalescing), clamped to [16, 512] and to ``next_pow2(F)``.
    Reasoned from register pressure and coalescing, *not measured*: tune on the GPU
    with ``benchmarks/gpu_triton_check.py`` (it reports achieved GB/s vs a copy).
    """
    vp = 1 << max(0, (V - 1).bit_length())
    vb = min(vp, 64)
    bf = max(16, min(512, 4096 // vb))
    fp = 1 << max(0, (max(F, 1) - 1).bit_length())
    return vb, max(16, min(bf, fp))


#: Most programs a CUDA launch grid holds per axis (x, y, z): 2^31 - 1, 65,535, 65,535.
GRID_LIMITS = (2 ** 31 - 1, 65535, 65535)


def check_grid(grid: tuple[int, ...]) -> tuple[int, ...]:
    """``grid`` itself, or a ``ValueError`` naming the axis over its CUDA limit (a clear
    message instead of a launch failure deep in the driver)."""
    for axis, (size, limit) in enumerate(zip(grid, GRID_LIMITS)):
        if size > limit:
            raise ValueError(f"Triton launch grid {grid}: axis {'xyz'[axis]} has {size} programs, over "
                             f"the CUDA limit {limit}; use smaller chunks (chunk_size=)")
    return grid


def epilogue_grid(n: int, F: int, block_f: int) -> tuple[int]:
    """Grid of the crossing epilogue: ``(n * cdiv(F, block_f),)`` on axis x, whose limit
    is 2^31 - 1 programs (axis y would stop at 65,535 feature tiles, i.e. ~4.19M
    neurons per row at ``block_f = 64``).  The kernel splits the program id into
    ``(point, tile)``."""
    return check_grid((n * (-(-F // block_f)),))
