"""Crossing epilogue kernel: one read, one write per element of a site.

Layout contract (checked by the launcher in :mod:`lcfast.ops.triton_crossing_act`):
the site tensor is *batch-major dense*: ``rows = n * V`` rows of ``F`` elements each,
row ``r`` at ``pre_ptr + r * F`` and its ``F`` neurons contiguous in *some* order
(NCHW, channels-last, ...).  The crossing count of a group does not depend on the
order of neurons inside a row, so both layouts run the same kernel; the per-channel
affine (folded BatchNorm) finds the channel of element ``f`` as ``(f // CH_DIV) % C``
(``CH_DIV = H*W`` for NCHW, ``1`` for channels-last or ``(M, C)``).

Grid: ``(n, cdiv(F, BLOCK_F))``.  Program ``(g, b)`` owns neurons
``[b*BLOCK_F, (b+1)*BLOCK_F)`` of point ``g`` and walks its ``V`` vertex rows in
slabs of ``VB`` rows, keeping a running min/max per neuron, writing the activation
of each slab as it goes; it then adds its crossed-neuron count into ``counts[g]``
with one integer atomic (exact and order-independent, so deterministic).
All offsets are int64.
"""
import triton
import triton.language as tl

from .triton_act import apply_act, crossed_mask, rmax, rmin, rsum, to_out


@triton.jit
def crossing_epilogue_kernel(
    pre_ptr, out_ptr, res_ptr, scale_ptr, shift_ptr, counts_ptr,
    F, C, CH_DIV, slope,
    V: tl.constexpr, VB: tl.constexpr, BLOCK_F: tl.constexpr, ACT: tl.constexpr,
    AFFINE: tl.constexpr, RESIDUAL: tl.constexpr, STORE: tl.constexpr, F64: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_F + tl.arange(0, BLOCK_F)
    cmask = cols < F
    if F64:
        cdt = tl.float64
    else:
        cdt = tl.float32
    if AFFINE:
        ch = (cols // CH_DIV) % C
        sc = tl.load(scale_ptr + ch, mask=cmask, other=1.0).to(cdt)
        sh = tl.load(shift_ptr + ch, mask=cmask, other=0.0).to(cdt)
    mn = tl.full([BLOCK_F], float("inf"), cdt)
    mx = tl.full([BLOCK_F], float("-inf"), cdt)
    for v0 in range(0, V, VB):
        rows = v0 + tl.arange(0, VB)
        m = (rows < V)[:, None] & cmask[None, :]
        off = (g * V + rows)[:, None] * F + cols[None, :]
        z = tl.load(pre_ptr + off, mask=m, other=0.0).to(cdt)
        if AFFINE:
            z = z * sc[None, :] + sh[None, :]
        if RESIDUAL:
            z = z + tl.load(res_ptr + off, mask=m, other=0.0).to(cdt)
        mn = tl.minimum(mn, rmin(tl.where(m, z, float("inf")), axis=0))
        mx = tl.maximum(mx, rmax(tl.where(m, z, float("-inf")), axis=0))
        if STORE:
            y = apply_act(z, slope, ACT)
            tl.store(out_ptr + off, to_out(y, out_ptr.dtype.element_ty), mask=m)
    crossed = crossed_mask(mn, mx) & cmask
    tl.atomic_add(counts_ptr + g, rsum(crossed.to(tl.int64), axis=0))
