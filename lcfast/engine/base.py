"""What every backend shares: the backend protocol, its chunk result and the model guard.

A backend decides two things: what happens at a site (its
:class:`~lcfast.engine.intercept.SiteHandler`: count, or count and activate in one
fused pass) and how the vertex batch of one chunk is pushed through the model (its
:meth:`Backend.run_chunk`: the plain vertex forward, the antisymmetry of the first
affine layer, fused blocks).  Validation is in :mod:`lcfast.request`, the chunk loop in :mod:`lcfast.api`,
chunk sizing in :mod:`lcfast.engine.chunking`, identical for all backends.  Backends
never import :mod:`lcfast.engine.reference` (the oracle).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
import torch.nn as nn

from ..sites import SiteSpec
from .intercept import SiteHandler, SiteInterceptor

__all__ = ["Backend", "ChunkResult", "model_guard", "model_device"]


class ChunkResult:
    """Counts of one chunk: ``counts`` ``(n, L)``, ``names`` (L), ``neurons`` (L)."""

    __slots__ = ("counts", "names", "neurons")

    def __init__(self, counts: torch.Tensor, names: list[str], neurons: list[int]):
        self.counts, self.names, self.neurons = counts, names, neurons

    @classmethod
    def of(cls, interceptor: SiteInterceptor, n: int) -> "ChunkResult":
        """What an interceptor saw during the forward of ``n`` points."""
        return cls(interceptor.counts(n), interceptor.names, interceptor.neurons)


class Backend:
    """Base class of the LC backends.

    Subclasses set :attr:`name`, implement :meth:`handler` and :meth:`run_chunk`, and
    may override :meth:`unavailable`.
    """

    name = "base"
    #: :meth:`run_chunk` also takes per-point frames as :class:`lcfast.frames.FactoredFrames`
    #: (``directions``); others get them multiplied out (:class:`lcfast.engine.policy.FallbackEngine`).
    factored_frames = False

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """``None`` when the backend can run on ``device``, else the reason it cannot."""
        return None

    def handler(self) -> SiteHandler:
        raise NotImplementedError

    def interceptor(self, model: nn.Module, spec: SiteSpec, rows: int, V: int) -> SiteInterceptor:
        return SiteInterceptor(model, spec, self.handler(), rows, V)

    def run_chunk(self, model: nn.Module, x: torch.Tensor, directions: torch.Tensor, radius: float,
                  spec: SiteSpec) -> ChunkResult:
        """Measure ``n`` points.

        Args:
            model: the model, already in eval mode, compute dtype and device.
            x: ``(n, *S)`` centres, compute dtype.
            directions: ``(n, P, *S)`` or ``(P, *S)``, compute dtype.
            radius: ``r``.
            spec: the resolved sites.

        Returns:
            :class:`ChunkResult` with counts ``(n, L)``.
        """
        raise NotImplementedError


# ---------------------------------------------------------------------------
# Leaving the model exactly as found
# ---------------------------------------------------------------------------


def _tf32_flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32(flags):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def cast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` in ``dtype`` (the user's model is never cast in place)."""
    return copy.deepcopy(model).to(dtype)


@contextlib.contextmanager
def model_guard(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Iterator[nn.Module]:
    """Yield the model to measure: eval mode, compute dtype, no grad, TF32 off for
    float32 on CUDA, compiled code run eagerly (``torch.compiler.set_stance``).  On exit (also on exceptions) every module's ``training`` flag,
    the TF32 flags and every buffer the forward changed are restored.  When ``dtype`` differs from the model's, a
    cast *copy* is measured and the user's model is never touched.
    """
    modes = [(m, m.training) for m in model.modules()]
    tf32 = _tf32_flags()
    buffers = _BufferSnapshot(model)
    try:
        target = model
        if _model_dtype(model) != dtype and any(True for _ in _floating_tensors(model)):
            target = cast_copy(model, dtype)
        target.eval()
        if device.type == "cuda" and dtype == torch.float32:
            _set_tf32((False, False))
        # torch.compile'd modules and forwards run their original Python code: compiled
        # graphs hide the activation calls (and dynamo fails on the interceptor's
        # mutations: "already tracked for mutation")
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            yield target
    finally:
        for m, flag in modes:
            m.training = flag
        _set_tf32(tf32)
        buffers.restore()


class _BufferSnapshot:
    """Every buffer of ``model`` as found, restored by :meth:`restore` if the model's
    own forward changed it (a call counter, statistics updated by custom code).

    Taking it clones each buffer once (BatchNorm statistics of torchvision ResNet50:
    0.2 MB); restoring writes back only the buffers whose version counter moved (an
    in-place write) and puts back any buffer the forward replaced by another tensor.
    """

    def __init__(self, model: nn.Module):
        self.entries = []  # (module, name, tensor, version)
        self.copies: dict[int, torch.Tensor] = {}  # id(tensor) -> clone (shared buffers once)
        for m in model.modules():
            for name, b in m._buffers.items():
                self.entries.append((m, name, b, None if b is None else b._version))
                if b is not None and id(b) not in self.copies:
                    self.copies[id(b)] = b.detach().clone()

    def restore(self) -> None:
        restored: set[int] = set()
        with torch.no_grad():
            for m, name, b, version in self.entries:
                if m._buffers.get(name, None) is not b:
                    m._buffers[name] = b  # the forward assigned another tensor
                if b is not None and b._version != version and id(b) not in restored:
                    b.copy_(self.copies[id(b)])
                    restored.add(id(b))


def _floating_tensors(model: nn.Module):
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            yield t


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in _floating_tensors(model):
        return t.dtype
    return torch.get_default_dtype()


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return fallback


def merge_chunk_meta(acc: dict, meta: dict, n: int) -> dict:
    """Fold one chunk's report ``meta`` (``n`` points) into ``acc`` (for ``LCResult.meta``).

    Rules by value: a key ending in ``_per_point`` is averaged over points (weighted by
    ``n``); an int is summed (points, ops); a dict of ints is summed per key (points per
    break reason); a string is kept (it is the same for every chunk); anything else (per
    point lists) is left out.
    """
    seen = acc.get("_points", 0)
    for k, v in meta.items():
        if k.endswith("_per_point") and isinstance(v, (int, float)):
            acc[k] = (acc.get(k, 0.0) * seen + float(v) * n) / max(seen + n, 1)
        elif isinstance(v, bool) or isinstance(v, str):
            acc.setdefault(k, v)
        elif isinstance(v, int):
            acc[k] = acc.get(k, 0) + v
        elif isinstance(v, dict) and all(isinstance(x, int) for x in v.values()):
            d = acc.setdefault(k, {})
            for kk, x in v.items():
                d[kk] = d.get(kk, 0) + x
    acc["_points"] = seen + n
    return acc
