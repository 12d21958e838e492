"""The native backend: the model runs as written, every site goes through the fused
C++/CUDA op ``lcfast::crossing_act`` (count + activation in one pass), and affine
layers that read the vertex batch directly use the cross-polytope antisymmetry.

* **Sites.** ReLU and LeakyReLU calls are replaced by the fused op (the in-place
  variant when the model asked for in place), whose output is bit-identical to
  PyTorch's.  Other kinds (GELU, SiLU, tanh, kinds without a kernel), sites whose batch is not in
  dim 0, and layouts the op would have to copy are counted with the count-only op and
  then the model's own call runs.  GELU is not fused here: the op's GELU uses libm's
  erf/tanh in ATen's scalar formula, PyTorch's CPU GELU its own SIMD erf (float32:
  18% of values differ in the last bits), and any bit of difference would reach the
  next layers.
* **First affine layer** (docs/design.md#numerics).  When ``F.linear`` / ``F.conv{1,2,3}d``
  is applied to the vertex batch itself (or a contiguous reshape of it, e.g. after
  ``nn.Flatten``), it computes the centre ``c = A(x)`` for ``n`` rows and
  ``d = A_0(v_p)`` (no bias) for ``n*P`` rows (``P`` rows for a shared frame) and
  writes the vertex pre-activations ``c + r d, c - r d``: ``n*(P+1)`` products instead
  of ``2nP``.
* **Lazy vertex batch.**  The model receives a vertex buffer that is only written
  when some call reads it (see :class:`_Vertices`); for an MLP the affine stem is the
  only reader, so the ``n*2P*D`` vertex values are never written.  (A forward hook
  that stores the model's input for later, outside the measurement, would see the
  unwritten buffer.)

The reordered first-layer arithmetic rounds differently from pushing the vertices
``fl(x + fl(r v))``.  On the test models the counts equal the reference's exactly at
float32 and float64 (tests/test_native_backend.py forces the path on every zoo
model).  It is not exact in general: on torchvision ResNet18 at 224x224 (2 points,
P = 25, r = 0.005, float32), forcing it on the stem flipped one layer1.1 neuron
against the float32 reference (whose counts equal float64's there); the cost rule of
:meth:`_Vertices.worth_it` does not choose it for that stem, and those counts are
equal.
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.utils._pytree import tree_leaves

from .. import _extension
from ..acts import fused_kinds
from ..ops import native_crossing_act as native_op
from ..neighborhood import vertices
from ..sites import SiteSpec
from .base import Backend, ChunkResult
from .intercept import ActCall, Site, SiteHandler, SiteInterceptor

__all__ = ["NativeBackend"]

#: ActCall kinds run by the fused op (output bit-identical to PyTorch's; lcfast.acts)
FUSED_KINDS = fused_kinds("native")

_AFFINE = tuple(f for f in (F.linear, F.conv1d, F.conv2d, F.conv3d) if f is not None)


def _count(pre: torch.Tensor, V: int) -> torch.Tensor:
    """``(n*V, *F) -> LongTensor (n,)`` with the count-only op."""
    if not native_op.supports(pre):
        pre = pre.to(torch.float64)  # every floating dtype converts exactly
    return torch.ops.lcfast.crossing_count(pre, V)


class _NativeHandler(SiteHandler):
    def count(self, pre, V):
        return _count(pre, V)

    def handle(self, site: Site, call: ActCall | None):
        pre, V = site.value, site.V
        if (call is None or call.kind not in FUSED_KINDS or site.batch_dim != 0
                or not native_op.supports(pre, call.kind) or not native_op.rows_flat(pre)):
            return super().handle(site, call)
        if call.inplace:
            return pre, torch.ops.lcfast.crossing_act_(pre, V, call.kind, call.slope)
        return torch.ops.lcfast.crossing_act(pre, V, call.kind, call.slope)


class _Vertices:
    """The vertex batch ``v`` handed to the model, written only when something reads it.

    For a model whose first op on its input is affine (an MLP, a CNN stem) the
    antisymmetric path never needs the vertex values, and writing them is pure
    overhead (measured, MLP 784-200x4-10, 327 points x 50 vertices, one thread: 25 ms of
    a 100 ms chunk).  So ``v`` starts as an unwritten buffer; any call that touches its
    storage, other than the affine ops evaluated antisymmetrically and view/metadata
    calls (whose tensor results must still share ``v``'s storage, else the call is
    rerun after the fill), first fills it with the exact values of
    :func:`lcfast.neighborhood.vertices` (``x +- fl(r * v_p)``).  Models whose calls
    could bypass ``__torch_function__`` (TorchScript, torch.compile) get ``v`` filled
    up front.

    Args:
        buf: flat buffer with at least ``n*2P*D`` elements (reused across chunks).
        x: ``(n, *S)`` centres.
        directions: ``(n, P, *S)`` or ``(P, *S)`` (any strides).
        radius: ``r``.
        scratch: buffer source for ``r * directions`` when filling.
        lazy: defer the fill.
    """

    def __init__(self, buf: torch.Tensor, x: torch.Tensor, directions: torch.Tensor, radius: float,
                 scratch: "_Buffers", lazy: bool):
        self.x, self.dirs, self.radius, self.scratch = x, directions, radius, scratch
        self.n = x.shape[0]
        self.shared = directions.dim() == x.dim()
        self.P = directions.shape[0] if self.shared else directions.shape[1]
        self.v = buf.view(self.n * 2 * self.P, *x.shape[1:])
        self.storage = self.v.untyped_storage().data_ptr()
        self.filled = False
        if not lazy:
            self.fill()
        self.version = self.v._version

    def fill(self) -> None:
        if self.filled:
            return
        vertices(self.x, self.dirs, self.radius, out=self.v,
                 work=self.scratch.get("rd", self.dirs.numel(), self.x))
        self.filled = True
        self.version = self.v._version

    def shares(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() == self.storage

    def touched(self, args, kwargs) -> bool:
        return any(self.shares(t) for t in tree_leaves((args, kwargs)))

    # -- antisymmetric affine ops ------------------------------------------
    def matches(self, a) -> bool:
        """``a`` is ``v`` or a contiguous reshape of it, unmodified since made."""
        v = self.v
        return (isinstance(a, torch.Tensor) and a.data_ptr() == v.data_ptr() and a.dtype == v.dtype
                and a.device == v.device and a.numel() == v.numel() and a.dim() >= 2
                and a.shape[0] == v.shape[0] and a.is_contiguous() and a._version == self.version)

    #: see :meth:`worth_it`; tests set 0 to force the antisymmetric path
    min_macs = 32

    def worth_it(self, weight, in_per_row: int, out_per_row: int) -> bool:
        """Whether ``c +- r d`` beats pushing the vertices through the affine op.

        It halves the op's products but writes the ``n*2P`` output rows once more
        (``c +- r d``); what it saves besides is the vertex batch itself, which is never
        written when the affine op is its only reader.  So: at least ``min_macs``
        products per output value, and no more output than input values per row.
        Measured (one thread, float32, 2-core Xeon): MLP 784->200, 327 points x 50
        vertices: 82 ms per chunk against 100 ms without (and 145 ms for the bare
        forward with its vertex building); torchvision ResNet18 stem (3x224x224 ->
        64x112x112, 147 products per value), 2 points: conv 0.15 s faster but the
        321 MB write of ``c +- r d`` took 0.29 s, so it is left to the plain path.
        """
        k = weight[0].numel() if isinstance(weight, torch.Tensor) and weight.dim() >= 2 else 0
        return k >= self.min_macs and out_per_row <= in_per_row

    def affine(self, func, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """``func(v, weight, bias, ...)`` as ``c +- r * func(dirs, weight, None, ...)``,
        ``c = func(x, weight, bias, ...)``: ``(n*2P, *O)``; ``None`` when not
        :meth:`worth_it` (then the caller runs ``func`` on the vertices)."""
        rest = args[0].shape[1:]
        n, P = self.n, self.P
        xv = self.x.reshape(n, *rest)
        dv = self.dirs.reshape((P if self.shared else n * P), *rest)
        w = args[1] if len(args) > 1 else kwargs.get("weight")
        # decide on one row's output size: the plain path then wastes no centre op
        if not self.worth_it(w, args[0][0].numel(), func(xv[:1], *args[1:], **kwargs)[0].numel()):
            return None
        c = func(xv, *args[1:], **kwargs)
        if len(args) > 2:  # the bias goes to the centre only
            d = func(dv, args[1], None, *args[3:], **kwargs)
        else:
            d = func(dv, *args[1:], **{**kwargs, "bias": None})
        out_shape = c.shape[1:]
        fmt = torch.contiguous_format
        if c.dim() == 4 and not c.is_contiguous() and c.is_contiguous(memory_format=torch.channels_last):
            fmt = torch.channels_last
        pre = torch.empty((n * 2 * P, *out_shape), dtype=c.dtype, device=c.device, memory_format=fmt)
        pv = pre.view(n, 2, P, *out_shape)
        cv = c.unsqueeze(1)
        dv = d.unsqueeze(0) if self.shared else d.view(n, P, *out_shape)
        torch.add(cv, dv, alpha=self.radius, out=pv[:, 0])
        torch.sub(cv, dv, alpha=self.radius, out=pv[:, 1])
        return pre


def _is_view_or_metadata(func) -> bool:
    return func in _VIEW_FUNCS or getattr(func, "__name__", None) == "__get__"


_T = torch.Tensor
_VIEW_FUNCS = frozenset(f for f in (
    _T.view, _T.view_as, _T.reshape, _T.reshape_as, torch.reshape, _T.flatten, torch.flatten, _T.unflatten,
    _T.unsqueeze, torch.unsqueeze, _T.squeeze, torch.squeeze, _T.transpose, torch.transpose, _T.permute,
    torch.permute, _T.t, _T.narrow, _T.expand, _T.expand_as, _T.detach, _T.contiguous, _T.__getitem__,
    _T.size, _T.dim, _T.ndimension, _T.numel, torch.numel, _T.stride, _T.is_contiguous, _T.data_ptr,
    _T.__len__, _T.untyped_storage, _T.storage_offset, _T.element_size, _T.is_floating_point,
) if f is not None)


class _NativeInterceptor(SiteInterceptor):
    """:class:`SiteInterceptor` that evaluates affine ops on the vertex batch
    antisymmetrically and fills the (lazy) vertex batch when something reads it."""

    def __init__(self, model: nn.Module, spec: SiteSpec, handler: SiteHandler, rows: int, V: int,
                 verts: _Vertices, antisymmetric: bool):
        super().__init__(model, spec, handler, rows, V)
        self._verts = verts
        self._antisym = antisymmetric

    def __torch_function__(self, func, types, args=(), kwargs=None):
        vs = self._verts
        kwargs = kwargs or {}
        if self._antisym and func in _AFFINE and args and vs.matches(args[0]):
            out = vs.affine(func, tuple(args), dict(kwargs))
            if out is not None:
                return out
        if not vs.filled and vs.touched(args, kwargs):
            if _is_view_or_metadata(func):
                out = super().__torch_function__(func, types, args, kwargs)
                if not isinstance(out, torch.Tensor) or vs.shares(out):
                    return out  # no value was read
            vs.fill()  # then (re)run the call on the real values
        return super().__torch_function__(func, types, args, kwargs)


class _Buffers:
    """Flat scratch buffers reused by the chunks of one measurement (one backend
    instance): the vertex batch and ``r * directions``.  A fresh CPU buffer of tens of
    MB costs its page faults on first touch every chunk (measured, MLP 784-200x4-10,
    327 points x 50 vertices, one thread: building the vertices took 32 ms fresh vs
    7 ms in a reused buffer, against an 88 ms forward)."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, key: str, numel: int, like: torch.Tensor) -> torch.Tensor:
        b = self._bufs.get(key)
        if b is None or b.numel() < numel or b.dtype != like.dtype or b.device != like.device:
            b = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._bufs[key] = b
        return b[:numel]


# --- issue 11 item 9: bounded resident memory across chunks and calls --------------
# Two causes, measured with scripts/memory_rss.py and tests/test_memory.py (2 cores):
# (1) a reference cycle (handler.record -> interceptor -> _Vertices) kept each chunk's
#     frames (327 points x 25 x 784 float32: 26 MB) and vertex buffer (51 MB) alive until
#     Python's cyclic GC ran: in-use C memory +100 MB per 654-point call, flat at 139 MB
#     once broken (run_chunk's ``finally``);
# (2) glibc raises its mmap threshold (up to 32 MB) when a large block is freed, so the
#     1-26 MB layer outputs then come from the brk heap and freed space stays resident:
#     heap 243/288/227/182 MiB over 4 calls (test_memory's model) with (1) fixed, 136/135/
#     135/134 with malloc_trim after each chunk (532/471/639/929 with neither), for ~3,000
#     more page faults per 327-point MNIST-MLP chunk (17,700 without).
# (3) what is freed after that trim (the chunk's frames, the interceptor) and the frame
#     drawing's temporaries stayed resident into the next forward, by 0-35 MB depending on
#     where glibc had placed them, so a call's peak moved with them: a second trim before
#     the forward made the peak of every 327-point MNIST-MLP chunk 767-793 MiB in three
#     calls (3,000 points each; 754-830 without it).  Cost measured under load 7 on the
#     2 cores: 248 trims in a 40,000-point call took 7.8 s of 1,134 s (32 ms each).
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; other C libraries have no such call
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_freed_host_memory() -> None:
    """Give the C heap's freed pages back to the OS (no-op without glibc)."""
    if _TRIM is not None:
        _TRIM(0)
# ------------------------------------------------------------------------------------


def _lazy_ok(model: nn.Module) -> bool:
    """Whether every read of the model's input passes through ``__torch_function__``."""
    compiled = getattr(torch._dynamo, "eval_frame", None) if hasattr(torch, "_dynamo") else None
    opt = getattr(compiled, "OptimizedModule", ()) if compiled else ()
    return not any(isinstance(m, (torch.jit.ScriptModule, *((opt,) if opt else ()))) for m in model.modules())


class NativeBackend(Backend):
    """Fused C++/CUDA site op + antisymmetric first affine layer (see the module doc)."""

    name = "native"

    #: evaluate affine ops on the vertex batch antisymmetrically
    antisymmetric_first_layer = True

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        if _extension.ERROR is not None:
            return _extension.ERROR
        device = torch.device(device)
        if device.type not in ("cpu", "cuda"):
            return f"lcfast._C has no kernels for device type {device.type!r}"
        if not _extension.has_kernel("crossing_act", device.type):
            return (f"lcfast._C was built without {device.type.upper()} kernels (rebuild with a CUDA-enabled "
                    "torch and nvcc present, without LCFAST_NO_CUDA=1)")
        return None

    def handler(self) -> SiteHandler:
        return _NativeHandler()

    def __init__(self):
        self._buffers = _Buffers()

    def run_chunk(self, model: nn.Module, x: torch.Tensor, directions: torch.Tensor, radius: float,
                  spec: SiteSpec) -> ChunkResult:
        n = x.shape[0]
        P = directions.shape[-x.dim()]
        V = 2 * P
        buf = self._buffers.get("v", n * V * x[0].numel(), x)
        verts = _Vertices(buf, x, directions, radius, self._buffers,
                          lazy=self.antisymmetric_first_layer and _lazy_ok(model))
        interceptor = _NativeInterceptor(model, spec, self.handler(), n * V, V, verts,
                                         self.antisymmetric_first_layer)
        release_freed_host_memory()  # issue 11 item 9 (3): the forward starts from live memory only
        try:
            with interceptor:
                model(verts.v)
            return ChunkResult.of(interceptor, n)
        finally:
            release_freed_host_memory()  # issue 11 item 9: see release_freed_host_memory
