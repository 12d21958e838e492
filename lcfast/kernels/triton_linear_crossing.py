"""Fused ``act(x @ W.T + b)`` GEMM with per-vertex-group crossing counts.

Rows of ``x`` (``(n*V*T, K)``, row ``(i*V + v)*T + t`` = point ``i``, vertex ``v``,
token ``t``; ``T = 1`` for a plain MLP) are grouped by ``(i, t)``: a *group* holds
the ``V`` vertex rows whose pre-activations decide crossings of the neurons
``(t, o)``.

**How tiles cover groups.**  ``V = 2P`` is rarely a power of two (``P = 25`` gives
``V = 50``) while ``tl.dot`` needs power-of-two tile sides, so each group is padded
to ``VP = next_pow2(V)`` tile rows and a tile holds ``G`` whole groups
(``BLOCK_M = G * VP``).  Tile row ``r`` is vertex ``r % VP`` of group
``pid_m*G + r // VP``; padded rows are masked on load (no memory traffic) and
ignored by the min/max.  The accumulator ``(BLOCK_M, BLOCK_N)`` is then reshaped
to ``(G, VP, BLOCK_N)`` and reduced over the vertex axis *inside the tile*, so no
group straddles two tiles: no cross-tile min/max buffers, no second pass, and the
only atomics are one integer add per (group, N-tile) into ``counts[point]``
(exact, hence deterministic).  The price is padded MMA work (``1 - V/VP``: 22% at
V = 50, 0% at V = 2, 25% at V = 6); padding costs no memory bandwidth.  The
alternatives (dense ``BLOCK_M`` tiles plus a segmented reduction with float
atomic min/max for the two groups cut by each tile edge) save that MMA work but
need an extra ``(groups, N)`` buffer and a completion counter per group.  The
MLP layers this targets (K, N ~ 200..800) are memory- or latency-bound rather
than MMA-bound, which is why padding was chosen; this is reasoned, not measured
(no GPU in the session that wrote it) -- ``benchmarks/gpu_triton_check.py``
reports the fused GEMM against ``F.linear`` + epilogue to check it.

float32 inputs use ``input_precision="ieee"`` (no TF32, docs/design.md#numerics);
bf16/fp16 inputs accumulate in float32.  Offsets are int64.  ``UPCAST`` is set only
under the Triton interpreter for bf16 (see the comment at the dot).
"""
import triton
import triton.language as tl

from .triton_act import apply_act, crossed_mask, rmax, rmin, rsum, to_out


@triton.jit
def linear_crossing_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, counts_ptr,
    n_groups, K, NOUT, T,
    stride_xm, stride_xk, stride_wn, stride_wk, slope,
    V: tl.constexpr, VP: tl.constexpr, G: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr, COUNT: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    BLOCK_M: tl.constexpr = G * VP
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    r = tl.arange(0, BLOCK_M)
    vert = r % VP
    grp = pid_m * G + r // VP
    rvalid = (vert < V) & (grp < n_groups)
    point = grp // T
    row = (point * V + vert) * T + (grp % T)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cvalid = cols < NOUT

    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kvalid = ks < K
        a = tl.load(x_ptr + row[:, None] * stride_xm + ks[None, :] * stride_xk,
                    mask=rvalid[:, None] & kvalid[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * stride_wn + ks[:, None] * stride_wk,
                    mask=kvalid[:, None] & cvalid[None, :], other=0.0)
        if UPCAST:
            # Triton 3.8 interpreter only: it multiplies bf16 operands as their raw
            # uint16 bits.  bf16 x bf16 products are exact in fp32, so this computes
            # what the GPU's bf16 MMA with fp32 accumulation computes, up to the
            # order of the sum.
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + cols, mask=cvalid, other=0.0).to(tl.float32)[None, :]

    if COUNT:
        valid = rvalid[:, None] & cvalid[None, :]
        z3 = tl.reshape(acc, [G, VP, BLOCK_N])
        v3 = tl.reshape(valid, [G, VP, BLOCK_N])
        mn = rmin(tl.where(v3, z3, float("inf")), axis=1)
        mx = rmax(tl.where(v3, z3, float("-inf")), axis=1)
        nan = rmax((v3 & (z3 != z3)).to(tl.int32), axis=1)
        crossed = crossed_mask(mn, mx, nan != 0) & cvalid[None, :]
        cnt = rsum(crossed.to(tl.int64), axis=1)
        gi = pid_m * G + tl.arange(0, G)
        tl.atomic_add(counts_ptr + gi // T, cnt, mask=gi < n_groups)

    y = apply_act(acc, slope, ACT)
    tl.store(out_ptr + row[:, None] * NOUT + cols[None, :], to_out(y, out_ptr.dtype.element_ty),
             mask=rvalid[:, None] & cvalid[None, :])
