"""Counter-based random frames: the same frame for a point on every device, dtype and chunking.

The Gaussian entry ``(i, k)`` of point ``id``'s ``D x P`` matrix (``k`` = column,
``i`` = row, flat index ``j = i * P + k``) is a pure function of ``(seed, id, j)``:

1. ``key = mix(seed, id)`` (splitmix64 finaliser of the seeded id), one 64-bit word
   per point;
2. ``h = mix(key + (j // 2 + 1) * 0x9E3779B97F4A7C15)`` (a counter-based generator of
   the splitmix / Philox family: a keyed bijective hash of the counter);
3. Box-Muller on the two 24-bit halves of ``h`` (``u1``, ``u2`` in ``(0, 1)``):
   ``sqrt(-2 ln u1) * cos(2 pi u2)`` for even ``j``, ``* sin(2 pi u2)`` for odd ``j``,
   in float32.

Then the columns are orthonormalised by CholeskyQR2 (Gram matrices in float64, the
``D x P`` solves in float32: orthonormal to ~1e-6, measured in tests/test_frames.py).
The result depends on nothing but ``(seed, id)``: no generator state, no chunk
order; every compute dtype gets the same float32 frame, cast.  Integer arithmetic is
exact on every device; ``log``/``cos``/``sin`` may differ in the last bits between
CPU and GPU libraries (not measured here: no GPU in this session).

:data:`FRAMES_VERSION` names this generator; results record it, since any change
of the recipe changes every frame.
"""
from __future__ import annotations

import math

import torch

from .neighborhood import _orthonormal

__all__ = ["FRAMES_VERSION", "frame_keys", "gaussian_frames", "orthonormal", "counter_frames"]

FRAMES_VERSION = "lcfast-frames-1/splitmix64-counter/box-muller-f32/choleskyqr2"

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


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
    """``LongTensor (N,)``: the per-point key ``mix(seed * golden + id)``."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    base = _mix_int(int(seed) * _GOLDEN + 0x632BE59BD9B4E019)
    return _mix((ids * _s64(_GOLDEN)) + _s64(base))


def gaussian_frames(seed: int, ids, D: int, P: int, device=None) -> torch.Tensor:
    """Standard Gaussian matrices, a pure function of ``(seed, id, index)``.

    Args:
        seed: global seed.
        ids: ``(N,)`` sample ids.
        D, P: rows and columns of each matrix.
        device: where to compute (integer part exact on every device).

    Returns:
        ``(N, D, P)`` float32.

    Example:
        >>> gaussian_frames(0, [3, 7], 784, 25).shape
        torch.Size([2, 784, 25])
    """
    keys = frame_keys(seed, ids).to(device)
    n = keys.numel()
    half = (D * P + 1) // 2
    ctr = (torch.arange(1, half + 1, dtype=torch.long, device=keys.device) * _s64(_GOLDEN))
    h = _mix(keys[:, None] + ctr[None, :])
    scale = 2.0 ** -24
    u1 = (_srl(h, 40).to(torch.float32) + 0.5) * scale          # top 24 bits, in (0, 1)
    u2 = ((h & 0xFFFFFF).to(torch.float32) + 0.5) * scale       # low 24 bits
    rad = torch.sqrt(-2.0 * torch.log(u1))
    ang = (2.0 * math.pi) * u2
    g = torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], -1).reshape(n, 2 * half)
    return g[:, :D * P].reshape(n, D, P)


def orthonormal(g: torch.Tensor) -> torch.Tensor:
    """``Q`` of ``g = QR`` with ``diag(R) > 0``; ``(..., D, P)`` in ``g``'s dtype: the one
    CholeskyQR2 of :func:`lcfast.neighborhood._orthonormal`, in float64."""
    return _orthonormal(g.to(torch.float64)).to(g.dtype)


def counter_frames(shape, n_dirs: int, seed: int, ids, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-point orthonormal frames from :func:`gaussian_frames`.

    Args:
        shape: point shape ``S`` (``D = prod(S)``).
        n_dirs: ``P`` (``1 <= P <= D``).
        seed: global seed.
        ids: ``(N,)`` sample ids.
        device: where to compute.
        dtype: returned dtype (the frame is computed once in float32 and cast, so every
            dtype sees the same directions).

    Returns:
        ``(N, P, *S)``; row ``i`` depends only on ``(seed, ids[i])``.

    Example:
        >>> counter_frames((1, 28, 28), 25, 0, torch.arange(4)).shape
        torch.Size([4, 25, 1, 28, 28])
    """
    shape = tuple(shape)
    D = math.prod(shape)
    if isinstance(n_dirs, bool) or not isinstance(n_dirs, int) or not 1 <= n_dirs <= D:
        raise ValueError(f"n_dirs must be an int in [1, D={D}], got {n_dirs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    g = gaussian_frames(seed, ids, D, n_dirs, device)
    q = orthonormal(g) if g.shape[0] else g
    return q.transpose(-1, -2).reshape(g.shape[0], n_dirs, *shape).to(dtype)
