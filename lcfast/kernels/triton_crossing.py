"""Crossing epilogue kernel: one read, one write per element of a site.

Layout contract (checked by the launcher in :mod:`lcfast.ops.triton_crossing_act`):
the site tensor is *batch-major dense*: ``rows = n * V`` rows of ``F`` elements each,
row ``r`` at ``pre_ptr + r * F`` and its ``F`` neurons contiguous in *some* order
(NCHW, channels-last, ...).  The crossing count of a group does not depend on the
order of neurons inside a row, so both layouts run the same kernel; the per-channel
affine (folded BatchNorm) finds the channel of element ``f`` as ``(f // CH_DIV) % C``
(``CH_DIV = H*W`` for NCHW, ``1`` for channels-last or ``(M, C)``).

Grid: one axis, ``(n * NT,)`` with ``NT = cdiv(F, BLOCK_F)`` feature tiles
(:func:`lcfast.ops.triton_util.epilogue_grid`).  Grid axes y and z hold at most
65,535 programs, so the tiles are *not* put on an axis of their own: a site of
more than 65,535 * BLOCK_F neurons per row (a ResNet stem at 512 px: 64 x 256 x 256
= 4.2M) would not launch.  Program ``pid`` owns neurons ``[b*BLOCK_F, (b+1)*BLOCK_F)``
of point ``g`` (``g, b = divmod(pid, NT)``: neighbouring programs read neighbouring
tiles) and walks its ``V`` vertex rows in slabs of ``VB`` rows, keeping a running
min/max and a NaN flag per neuron, writing the activation of each slab as it goes;
it then adds its crossed-neuron count into ``counts[g]`` with one integer atomic
(exact and order-independent, so deterministic).  All offsets are int64.

``SLOPE`` (LeakyReLU) is a constexpr: a float *argument* would be specialised as
float32 on the GPU (the interpreter keeps it a Python float, hiding that), so float64
LeakyReLU would multiply by ``0.01f``; a constexpr literal takes the dtype of ``z``.
"""
import triton
import triton.language as tl

from .triton_act import apply_act, crossed_mask, rmax, rmin, rsum, to_out


@triton.jit
def crossing_epilogue_kernel(
    pre_ptr, out_ptr, res_ptr, scale_ptr, shift_ptr, counts_ptr,
    F, C, CH_DIV, NT,
    SLOPE: tl.constexpr, V: tl.constexpr, VB: tl.constexpr, BLOCK_F: tl.constexpr, ACT: tl.constexpr,
    AFFINE: tl.constexpr, RESIDUAL: tl.constexpr, STORE: tl.constexpr, F64: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    g = pid // NT
    cols = (pid - g * NT) * BLOCK_F + tl.arange(0, BLOCK_F)
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
    nan = tl.full([BLOCK_F], 0, tl.int32)
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
        nan = tl.maximum(nan, rmax((m & (z != z)).to(tl.int32), axis=0))
        if STORE:
            y = apply_act(z, SLOPE, ACT)
            tl.store(out_ptr + off, to_out(y, out_ptr.dtype.element_ty), mask=m)
    crossed = crossed_mask(mn, mx, nan != 0) & cmask
    tl.atomic_add(counts_ptr + g, rsum(crossed.to(tl.int64), axis=0))
