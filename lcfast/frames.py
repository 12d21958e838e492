"""Per-point random frames: the same frame for a point on every device, dtype and chunking.

The frame of point ``id`` is a ``P x D`` matrix (``D = prod(S)``, rows = directions)
whose Gaussian entry ``j = k * D + i`` (row-major: direction ``k``, coordinate ``i``)
is a pure function of ``(seed, id, j)``:

1. ``key = mix(id * golden + mix(seed * golden + c))`` (splitmix64 finaliser ``mix``,
   64-bit wrapping arithmetic), one word per point (:func:`frame_keys`);
2. ``h = mix(key + (j // 2 + 1) * golden)``: a counter-based generator of the
   splitmix / Philox family (a keyed bijective hash of the counter);
3. Box-Muller on the two 24-bit halves of ``h`` (``u1``, ``u2`` in ``(0, 1)``):
   ``sqrt(-2 ln u1) * cos(2 pi u2)`` for even ``j``, ``* sin(2 pi u2)`` for odd ``j``,
   in float32 (``2 pi`` rounded to float32).

The Gaussians come from the native op ``lcfast::counter_normal`` (csrc/counter_normal.h,
CPU and CUDA kernels with the same arithmetic) when the extension is loaded, else from
the same recipe in torch ops (:func:`counter_normal_torch`).  The integer part is exact
everywhere; the two float paths differ in the last bits of ``log``/``cos``/``sin``
(measured on 1000 x 19,600 values: at most 9.5e-7 apart, 3.5e-7 * max(1, |g|), 68%
bit-identical; tests/test_frames.py).  The CPU and CUDA kernels share one source of
correctly rounded IEEE operations with explicit fma, so they should give the same bits
(checked across host ISAs and contraction flags; not yet on a GPU).

The rows are then orthonormalised by CholeskyQR (:func:`orthonormal_rows`: Gram
matrices by :func:`lcfast.ops.row_gram.row_gram` (on the CPU float32 fma lanes summed in
float64, within ~1e-7 of exact; elsewhere float32 ``bmm``), float32 products ``L^-1 q`` by
:func:`lcfast.ops.tril_mix.tril_mix_` (on the CPU a float32 fma chain per column, written
over the Gaussian rows in place; elsewhere ``bmm``; since lcfast-frames-6), ``P x P``
Cholesky factors in float64; one pass when ``D >= 8 P``, two otherwise): orthonormal to
about 1e-6 (measured on the CPU, seeds 0-2, since lcfast-frames-4: 9.0e-8 for
3x224x224 x 25, 1.6e-7 for 784 x 25, 2.0e-7 for 17 x 17; with the float32 ``bmm`` Gram
1.35e-6 and 5.2e-7; tests/test_frames.py).  With one pass a frame is
``mix @ gauss`` (``P x P`` times the Gaussian rows), and :func:`factored_frames` hands
out the two factors so that an engine whose first op is linear never writes the frame
(``W V = mix (W gauss)``, :class:`FactoredFrames`).  A frame is computed once
in float32 and cast, so every compute dtype sees the same directions; it depends on nothing but
``(seed, id)`` (no generator state, no chunk order).  On another device the Gaussians
are the same and the orthonormalisation differs by rounding (~1e-7).

:data:`FRAMES_VERSION` names this recipe (one place: results record it, checkpoint
fingerprints compare it); change it whenever the frames drawn for a ``(seed, id)``
change.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from . import _extension
from .ops.chol_inverse import chol_inverse
from .ops.row_gram import row_gram
from .ops.tril_mix import tril_mix_

__all__ = ["FRAMES_VERSION", "FactoredFrames", "frame_keys", "counter_normal", "counter_normal_torch", "factorable",
           "factored_frames", "gaussian_frames", "orthonormal_rows", "random_frames", "shared_frame"]

FRAMES_VERSION = ("lcfast-frames-6/splitmix64-counter/box-muller-f32/row-major/choleskyqr-f32-1pass-from-8P"
                  "/gram-native-f32-blocks-f64/chol-inverse-native/tril-mix-native-f32-fma-ascending")

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
# id of the frame shared by all points (shared_frame)
_SHARED_ID = -1


def _s64(v: int) -> int:
    """A 64-bit pattern as a signed int64 value (torch holds int64)."""
    v &= _M64
    return v - (1 << 64) if v >> 63 else v


def _mix_int(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def _srl(t: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (t >> s) & ((1 << (64 - s)) - 1)


def _mix(t: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping multiplies)."""
    t = (t ^ _srl(t, 30)) * _s64(_C1)
    t = (t ^ _srl(t, 27)) * _s64(_C2)
    return t ^ _srl(t, 31)


def frame_keys(seed: int, ids) -> torch.Tensor:
    """``LongTensor (N,)``: the per-point key ``mix(ids * golden + mix(seed * golden + c))``
    (on the device of ``ids`` when it is a tensor)."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    base = _mix_int(int(seed) * _GOLDEN + 0x632BE59BD9B4E019)
    return _mix((ids * _s64(_GOLDEN)) + _s64(base))


def counter_normal_torch(keys: torch.Tensor, count: int) -> torch.Tensor:
    """The stream of :func:`counter_normal` in torch ops (the fallback without the
    extension; ATen's ``log``/``cos``/``sin``).  ``(N,)`` int64 -> ``(N, count)`` float32."""
    n, half = keys.numel(), (count + 1) // 2
    ctr = torch.arange(1, half + 1, dtype=torch.long, device=keys.device) * _s64(_GOLDEN)
    h = _mix(keys.reshape(-1, 1) + ctr)
    scale = 2.0 ** -24
    u1 = (_srl(h, 40).to(torch.float32) + 0.5) * scale          # top 24 bits, in (0, 1]
    u2 = ((h & 0xFFFFFF).to(torch.float32) + 0.5) * scale       # low 24 bits
    del h
    rad = torch.sqrt(-2.0 * torch.log(u1))
    ang = (2.0 * math.pi) * u2                                   # float32 product
    g = torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], -1).reshape(n, 2 * half)
    return g[:, :count]


if _extension.available():
    @torch.library.register_fake("lcfast::counter_normal")
    def _counter_normal_fake(keys, count):
        return keys.new_empty((keys.shape[0], count), dtype=torch.float32)


def counter_normal(keys: torch.Tensor, count: int) -> torch.Tensor:
    """Standard normals ``(N, count)`` float32, value ``j`` of row ``n`` a pure function of
    ``(keys[n], j)``: the native op ``lcfast::counter_normal`` where the extension has a
    kernel for ``keys``' device, else :func:`counter_normal_torch`.

    Args:
        keys: ``(N,)`` int64 (:func:`frame_keys`).
        count: values per row.

    Returns:
        ``(N, count)`` float32 on ``keys``' device.

    Example:
        >>> counter_normal(frame_keys(0, [3, 7]), 5).shape
        torch.Size([2, 5])
    """
    if _extension.has_kernel("counter_normal", keys.device.type):
        return torch.ops.lcfast.counter_normal(keys, count)
    return counter_normal_torch(keys, count)


def gaussian_frames(seed: int, ids, D: int, P: int, device=None) -> torch.Tensor:
    """Standard Gaussian matrices, a pure function of ``(seed, id, index)``.

    Args:
        seed: global seed.
        ids: ``(N,)`` sample ids.
        D, P: columns (coordinates) and rows (directions) of each matrix.
        device: where to compute.

    Returns:
        ``(N, P, D)`` float32; entry ``(k, i)`` is value ``k * D + i`` of the stream.

    Example:
        >>> gaussian_frames(0, [3, 7], 784, 25).shape
        torch.Size([2, 25, 784])
    """
    keys = frame_keys(seed, ids).to(device)
    return counter_normal(keys, D * P).reshape(keys.numel(), P, D)


# Ratio max/min of diag(L) of a point's first Cholesky factor (a lower bound of its
# condition number) above which that point is orthonormalised by Householder QR in
# float64 instead: CholeskyQR2 with float32 Gram matrices needs cond << eps32^-1/2
# (~2900).  Unmeasured margin; Gaussian frames with P << D have cond ~1.5 and never
# reach it, square ones (P = D) now and then do.
_COND_LIMIT = 1e3
# One CholeskyQR pass is enough when D >= _ONE_PASS * P: a Gaussian D x P matrix then
# has cond ~ (1 + sqrt(P/D)) / (1 - sqrt(P/D)) <= 2.1, and one pass with a float32 Gram
# matrix is as orthonormal as two.  Measured (max |Q Q^T - I|, seed 0, 2-core CPU,
# 1 Dec 2026), one pass / two passes: 784 x 25 (1,000 points) 5.0e-7 / 5.1e-7, 400 x 25
# 7.9e-7 / 7.0e-7, 200 x 25 5.2e-7 / 5.1e-7, 100 x 25 9.1e-7 / 6.4e-7, 784 x 50
# 5.2e-7 / 5.3e-7, 3072 x 100 3.8e-7 / 3.6e-7, 3x224x224 x 25 7.5e-7 / 7.5e-7; one
# pass differs from two by <= 9e-8 per entry at D >= 8 P.  Closer to square the error
# grows with cond^2 (17 x 17: 0.08 after one pass, 2.7e-7 after two), so two passes.
# (Until lcfast-frames-2 the limit was 32 P: MNIST's 784 x 25 took two passes.)
_ONE_PASS = 8


def _inverse_factor(q: torch.Tensor):
    """``(T, gram, failed, ill)`` for rows ``q`` ``(B, P, D)``: ``T = L^-1`` ``(B, P, P)``
    float64 with ``L L^T = q q^T`` (Cholesky and inverse by
    :func:`lcfast.ops.chol_inverse.chol_inverse`; ``q q^T`` by :func:`lcfast.ops.row_gram.row_gram`:
    the native op for float32 on the CPU, else in ``q``'s dtype, then float64),
    that Gram matrix ``(B, P, P)`` float64, and two ``(B,)`` bool: the points whose
    factor failed, and those whose factor is too ill-conditioned (:data:`_COND_LIMIT`)."""
    gram = row_gram(q)
    T, info, d = chol_inverse(gram)  # one parallel loop on the CPU (lcfast/ops/chol_inverse.py)
    return T, gram, info != 0, d.amax(-1) > _COND_LIMIT * d.amin(-1)


def _orthonormalise(flat: torch.Tensor, own: bool) -> torch.Tensor:
    """:func:`orthonormal_rows` of ``(B, P, D)`` rows; with ``own`` the caller hands over
    ``flat`` (contiguous), which is then overwritten where one pass is enough (the
    product ``L^-1 q`` by :func:`lcfast.ops.tril_mix.tril_mix_` in place, not into a fresh
    ``B x P x D`` buffer).  The rows of the points that need Householder QR are kept
    first; with two passes the first product goes to a copy, so ``flat`` stays intact."""
    P, D = flat.shape[-2:]
    one = D >= _ONE_PASS * P
    q, kept = flat, None
    bad = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
    for p in range(1 if one else 2):
        T, _, failed, ill = _inverse_factor(q)
        bad |= (failed | ill) if p == 0 else failed
        if q is flat:
            if one and own:
                if bool(bad.any()):
                    kept = flat[bad.nonzero().squeeze(1)].to(torch.float64)
            else:
                q = torch.clone(flat, memory_format=torch.contiguous_format)
        tril_mix_(q, T.to(q.dtype))
    if bool(bad.any()):
        idx = bad.nonzero().squeeze(1)
        qh, r = torch.linalg.qr((kept if kept is not None else flat[idx].to(torch.float64)).mT, mode="reduced")
        sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        q[idx] = (qh * sign.unsqueeze(-2)).mT.to(q.dtype)
    return q


def orthonormal_rows(a: torch.Tensor) -> torch.Tensor:
    """Rows of ``a`` orthonormalised: ``Q^T`` of ``a^T = QR`` with ``diag(R) > 0``.

    CholeskyQR (``L = chol(q q^T)``, ``q <- L^-1 q``), once when ``D >= 8 P`` and twice
    otherwise (:data:`_ONE_PASS`; made for Gaussian rows), with the Gram matrix by
    :func:`lcfast.ops.row_gram.row_gram`, the product by :func:`lcfast.ops.tril_mix.tril_mix_`
    in ``a``'s dtype (on a copy: ``a`` is not modified) and the ``P x P``
    factor and its inverse in float64: batched
    matmuls only.  In float32 orthonormal to ~1e-6 (tests/test_frames.py).  A point
    whose Cholesky factor fails or is too ill-conditioned (:data:`_COND_LIMIT`) gets
    Householder QR in float64; the choice depends on the point alone, never on the rest
    of the batch.

    Args:
        a: ``(..., P, D)`` with ``P <= D``.

    Returns:
        ``(..., P, D)`` in ``a``'s dtype.

    Example:
        >>> q = orthonormal_rows(torch.randn(3, 4, 10))
        >>> bool(((q @ q.mT) - torch.eye(4)).abs().max() < 1e-5)
        True
    """
    P, D = a.shape[-2:]
    return _orthonormalise(a.reshape(-1, P, D), own=False).reshape(a.shape)


class FactoredFrames(NamedTuple):
    """Per-point frames ``V = mix @ gauss`` kept as their two factors (issue 10 item 5:
    when the model's first op on the points is linear, ``W V = mix (W gauss)`` and the
    ``N x P x D`` frame is never written; :mod:`lcfast.engine.offsets`).
    :meth:`dense` is, bit for bit, what :func:`random_frames` returns in float32.

    Attributes:
        gauss: ``(n, P, *S)`` float32, the Gaussian rows (:func:`gaussian_frames`).
        mix: ``(n, P, P)`` float32, ``L^-1`` of the one CholeskyQR pass (lower triangular).
        row_norms: ``(n, P)`` float64, ``||row p of mix @ gauss||`` in exact arithmetic
            (``sqrt(diag(mix G mix^T))``, ``G`` the float32 rows' Gram matrix): 1 to ~1e-6.
        mix_l1: ``(n, P)`` float64, ``sum_q |mix[p, q]| ||gauss_q||``: the scale of the
            rounding of a product by ``mix`` (a bound on ``|mix| |W gauss|`` per unit ``||W||``).
    """

    gauss: torch.Tensor
    mix: torch.Tensor
    row_norms: torch.Tensor
    mix_l1: torch.Tensor

    @property
    def n_dirs(self) -> int:
        return self.gauss.shape[1]

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(n, P, *S)`` the frames in ``dtype`` (computed in float32, then cast)."""
        g = self.gauss
        # random_frames' product: the same op (in place on a contiguous copy), the same bits
        q = torch.clone(g.reshape(g.shape[0], g.shape[1], -1), memory_format=torch.contiguous_format)
        return tril_mix_(q, self.mix).reshape(g.shape).to(dtype)

    def select(self, idx: torch.Tensor) -> "FactoredFrames":
        """The frames of points ``idx`` ``(k,)``."""
        return FactoredFrames(*(t[idx.to(t.device)] for t in self))


def factorable(shape, n_dirs: int) -> bool:
    """Whether :func:`factored_frames` can give frames of this size (one CholeskyQR pass:
    ``D >= 8 P``)."""
    return math.prod(tuple(shape)) >= _ONE_PASS * int(n_dirs)


def factored_frames(shape, n_dirs: int, seed: int, ids, device=None) -> FactoredFrames | None:
    """The frames of :func:`random_frames` as factors ``mix @ gauss`` (:class:`FactoredFrames`).

    Args:
        shape, n_dirs, seed, ids, device: as :func:`random_frames`.

    Returns:
        :class:`FactoredFrames` (``(n, P, *S)`` Gaussians and ``(n, P, P)`` factors), or
        ``None`` when one CholeskyQR pass is not enough (``D < 8 P``) or a point's Gram
        matrix needs Householder QR (then use :func:`random_frames`).

    Example:
        >>> f = factored_frames((1, 28, 28), 25, 0, torch.arange(4))
        >>> torch.equal(f.dense(), random_frames((1, 28, 28), 25, 0, torch.arange(4), dtype=torch.float32))
        True
    """
    shape, D = _check(shape, n_dirs, seed)
    P = int(n_dirs)
    if not factorable(shape, P):
        return None
    g = gaussian_frames(int(seed), ids, D, P, device)
    T, gram, failed, ill = _inverse_factor(g)
    if bool((failed | ill).any()):
        return None
    mix = T.to(torch.float32)
    m64 = mix.to(torch.float64)
    # diag(mix G mix^T) as a row-wise dot: 3 ms against the einsum's 14 ms (1,000 points,
    # P = 25, one thread, measured)
    norms = ((m64 @ gram) * m64).sum(-1).clamp_min(0).sqrt()
    l1 = m64.abs() @ gram.diagonal(dim1=-2, dim2=-1).sqrt().unsqueeze(-1)
    return FactoredFrames(g.reshape(g.shape[0], P, *shape), mix, norms, l1[..., 0])


def _check(shape, n_dirs, seed) -> tuple[tuple, int]:
    shape = tuple(shape)
    D = math.prod(shape)
    if isinstance(n_dirs, bool) or not isinstance(n_dirs, numbers.Integral) or not 1 <= n_dirs <= D:
        raise ValueError(f"n_dirs must be an int in [1, D={D}] for inputs of shape {shape}, got {n_dirs!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return shape, D


def random_frames(shape, n_dirs: int, seed: int, ids, device=None,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-point random orthonormal frames (the default of :func:`lcfast.local_complexity`).

    Args:
        shape: point shape ``S`` (``D = prod(S)``).
        n_dirs: ``P`` (``1 <= P <= D``).
        seed: global seed.
        ids: ``(N,)`` global sample ids (tensor or sequence of ints).
        device: where to compute.
        dtype: returned dtype (the frame is computed once in float32 and cast, so every
            dtype sees the same directions).

    Returns:
        ``(N, P, *S)``; row ``i`` depends only on ``(seed, ids[i])``.

    Example:
        >>> random_frames((1, 28, 28), 25, 0, torch.arange(4)).shape
        torch.Size([4, 25, 1, 28, 28])
    """
    shape, D = _check(shape, n_dirs, seed)
    n_dirs = int(n_dirs)
    g = gaussian_frames(int(seed), ids, D, n_dirs, device)
    # the Gaussian buffer is ours: mixed in place (no fresh N x P x D output)
    q = _orthonormalise(g, own=True) if g.shape[0] else g
    return q.reshape(g.shape[0], n_dirs, *shape).to(dtype)


def shared_frame(shape, n_dirs: int, seed: int = 0, device=None,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """One random orthonormal frame for all points (what the paper's code does): the
    frame :func:`random_frames` gives the id ``-1``.

    Returns:
        ``(P, *S)``; pass it as ``directions=`` to :func:`lcfast.local_complexity`.

    Example:
        >>> shared_frame((3, 8, 8), 4).shape
        torch.Size([4, 3, 8, 8])
    """
    return random_frames(shape, n_dirs, seed, [_SHARED_ID], device=device, dtype=dtype)[0]
