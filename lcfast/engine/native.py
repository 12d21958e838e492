"""The native backend: the model runs as written, every site goes through the fused
C++/CUDA op ``lcfast::crossing_act`` (count + activation in one pass), and affine
layers that read the vertex batch directly use the cross-polytope antisymmetry.

* **Sites.** ReLU and LeakyReLU calls are replaced by the fused op (the in-place
  variant when the model asked for in place), whose output is bit-identical to
  PyTorch's.  Other kinds (GELU, SiLU, tanh, "other"), sites whose batch is not in
  dim 0, and layouts the op would have to copy are counted with the count-only op and
  then the model's own call runs: GELU is not fused here because PyTorch's CPU GELU
  is not bit-reproducible elementwise (SIMD polynomial erf in the vector body, libm
  erf in the tails), and any bit of difference would reach the next layers.
* **First affine layer** (DESIGN.md section 4).  When ``F.linear`` / ``F.conv{1,2,3}d``
  is applied to the vertex batch itself (or a contiguous reshape of it, e.g. after
  ``nn.Flatten``), it computes the centre ``c = A(x)`` for ``n`` rows and the offsets
  ``d = A_0(r v)`` (no bias) for ``n*P`` rows (``P`` rows for a shared frame) and
  writes the vertex pre-activations ``c + d, c - d``: ``n*(P+1)`` products instead of
  ``2nP``.

The reordered first-layer arithmetic rounds differently from pushing the vertices
``fl(x + r v)``; on the test models the counts still equal the reference's exactly at
float32 and float64 (tests/test_native_backend.py checks it).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _native
from ..ops import crossing_act as _op
from ..sites import ActCall, SiteHandler, SiteInterceptor, SiteSpec
from .base import Backend, ChunkResult

__all__ = ["NativeBackend"]

#: ActCall kinds run by the fused op (output bit-identical to PyTorch's)
FUSED_KINDS = ("relu", "leaky_relu")

_AFFINE = tuple(f for f in (F.linear, F.conv1d, F.conv2d, F.conv3d) if f is not None)


def _count(pre: torch.Tensor, V: int) -> torch.Tensor:
    """``(n*V, *F) -> LongTensor (n,)`` with the count-only op."""
    if not _op.supports(pre):
        pre = pre.to(torch.float64)  # every floating dtype converts exactly
    return torch.ops.lcfast.crossing_count(pre, V)


class _NativeHandler(SiteHandler):
    def count(self, pre, V):
        return _count(pre, V)

    def count_act(self, pre: torch.Tensor, V: int, call: ActCall) -> torch.Tensor:
        if (call.kind not in FUSED_KINDS or call.batch_dim != 0 or not _op.supports(pre, call.kind)
                or not _op._rows_flat(pre)):
            self.record(_count(pre, V))
            return call.run()
        if call.inplace:
            self.record(torch.ops.lcfast.crossing_act_(pre, V, call.kind, call.slope))
            return pre
        out, counts = torch.ops.lcfast.crossing_act(pre, V, call.kind, call.slope)
        self.record(counts)
        return out


class _FirstAffine:
    """Antisymmetric evaluation of affine ops applied to the vertex batch ``v``.

    Args:
        v: ``(n*2P, *S)`` contiguous vertex batch handed to the model.
        x: ``(n, *S)`` centres.
        rd: ``(n, P, *S)`` or ``(P, *S)``: ``radius * directions``, the tensor ``v`` was built from.
    """

    def __init__(self, v: torch.Tensor, x: torch.Tensor, rd: torch.Tensor):
        self.v, self.x, self.rd = v, x, rd
        self.version = v._version
        self.n = x.shape[0]
        self.shared = rd.dim() == x.dim()
        self.P = rd.shape[0] if self.shared else rd.shape[1]

    def matches(self, a) -> bool:
        v = self.v
        return (isinstance(a, torch.Tensor) and a.data_ptr() == v.data_ptr() and a.dtype == v.dtype
                and a.device == v.device and a.numel() == v.numel() and a.dim() >= 2
                and a.shape[0] == v.shape[0] and a.is_contiguous() and a._version == self.version)

    def __call__(self, func, args: tuple, kwargs: dict) -> torch.Tensor:
        a = args[0]
        rest = a.shape[1:]
        n, P = self.n, self.P
        xv = self.x.reshape(n, *rest)
        dv = self.rd.reshape((P if self.shared else n * P), *rest)
        # the bias goes to the centre only
        if len(args) > 2:
            c = func(xv, *args[1:], **kwargs)
            d = func(dv, args[1], None, *args[3:], **kwargs)
        else:
            c = func(xv, *args[1:], **kwargs)
            d = func(dv, *args[1:], **{**kwargs, "bias": None})
        out_shape = c.shape[1:]
        fmt = torch.contiguous_format
        if c.dim() == 4 and not c.is_contiguous() and c.is_contiguous(memory_format=torch.channels_last):
            fmt = torch.channels_last
        pre = torch.empty((n * 2 * P, *out_shape), dtype=c.dtype, device=c.device, memory_format=fmt)
        pv = pre.view(n, 2, P, *out_shape)
        cv = c.unsqueeze(1)
        dv = d.unsqueeze(0) if self.shared else d.view(n, P, *out_shape)
        torch.add(cv, dv, out=pv[:, 0])
        torch.sub(cv, dv, out=pv[:, 1])
        return pre


class _NativeInterceptor(SiteInterceptor):
    """:class:`SiteInterceptor` that also evaluates affine ops on the vertex batch
    antisymmetrically (see :class:`_FirstAffine`)."""

    def __init__(self, model: nn.Module, spec: SiteSpec, handler: SiteHandler, rows: int, V: int,
                 first: _FirstAffine | None):
        super().__init__(model, spec, handler, rows, V)
        self._first = first

    def __torch_function__(self, func, types, args=(), kwargs=None):
        first = self._first
        if first is not None and func in _AFFINE and args and first.matches(args[0]):
            return first(func, tuple(args), dict(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


def _vertices(x: torch.Tensor, rd: torch.Tensor) -> torch.Tensor:
    """``x +- rd`` as ``(n*2P, *S)``, point-major, ``+`` group first; the same values as
    :func:`lcfast.neighborhood.vertices` (same two roundings), written once."""
    n = x.shape[0]
    shared = rd.dim() == x.dim()
    P = rd.shape[0] if shared else rd.shape[1]
    v = torch.empty((n, 2, P, *x.shape[1:]), dtype=x.dtype, device=x.device)
    c = x.unsqueeze(1)
    d = rd.unsqueeze(0) if shared else rd
    torch.add(c, d, out=v[:, 0])
    torch.sub(c, d, out=v[:, 1])
    return v.view(n * 2 * P, *x.shape[1:])


class NativeBackend(Backend):
    """Fused C++/CUDA site op + antisymmetric first affine layer (see the module doc)."""

    name = "native"

    #: evaluate affine ops on the vertex batch antisymmetrically
    antisymmetric_first_layer = True

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        if _native.ERROR is not None:
            return _native.ERROR
        device = torch.device(device)
        if device.type not in ("cpu", "cuda"):
            return f"lcfast._C has no kernels for device type {device.type!r}"
        if not _native.has_kernel("crossing_act", device.type):
            return (f"lcfast._C was built without {device.type.upper()} kernels (rebuild with a CUDA-enabled "
                    "torch and nvcc present, without LCFAST_NO_CUDA=1)")
        return None

    def handler(self) -> SiteHandler:
        return _NativeHandler()

    def run_chunk(self, model: nn.Module, x: torch.Tensor, directions: torch.Tensor, radius: float,
                  spec: SiteSpec) -> ChunkResult:
        n = x.shape[0]
        P = directions.shape[-x.dim()]
        V = 2 * P
        rd = directions * radius
        v = _vertices(x, rd)
        first = _FirstAffine(v, x, rd) if self.antisymmetric_first_layer else None
        icpt = _NativeInterceptor(model, spec, self.handler(), n * V, V, first)
        with icpt:
            model(v)
        return ChunkResult(icpt.counts(n), icpt.names, icpt.neurons)
