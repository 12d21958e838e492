"""What every backend shares: the backend protocol, the model guard and the chunk loop.

A backend decides two things: what happens at a site (its
:class:`~lcfast.sites.SiteHandler`: count, or count and activate in one fused pass)
and, optionally, how the vertex batch is pushed through the model (its
:meth:`Backend.run_chunk`, e.g. to use the antisymmetry of the first affine layer or
fused blocks).  Everything else -- validation, frames, chunking, progress, leaving
the model as found -- is here and in :mod:`lcfast.api`, identical for all backends.
Backends never import :mod:`lcfast.engine.reference` (the oracle).
"""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..neighborhood import vertices
from ..sites import SiteHandler, SiteInterceptor, SiteSpec

__all__ = ["Backend", "ChunkResult", "model_guard", "memory_budget", "SizeProbe"]


class ChunkResult:
    """Counts of one chunk: ``counts`` ``(n, L)``, ``names`` (L), ``neurons`` (L)."""

    __slots__ = ("counts", "names", "neurons")

    def __init__(self, counts: torch.Tensor, names: list[str], neurons: list[int]):
        self.counts, self.names, self.neurons = counts, names, neurons

    @classmethod
    def of(cls, icpt: SiteInterceptor, n: int) -> "ChunkResult":
        """What an interceptor saw during the forward of ``n`` points."""
        return cls(icpt.counts(n), icpt.names, icpt.neurons)


class Backend:
    """Base class of the LC backends.

    Subclasses set :attr:`name`, implement :meth:`handler`, and may override
    :meth:`unavailable` and :meth:`run_chunk`.
    """

    name = "base"

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
        n = x.shape[0]
        P = directions.shape[-x.dim()]
        V = 2 * P
        v = vertices(x, directions, radius)
        icpt = self.interceptor(model, spec, n * V, V)
        with icpt:
            model(v)
        return ChunkResult.of(icpt, n)


# ---------------------------------------------------------------------------
# Leaving the model exactly as found
# ---------------------------------------------------------------------------


def _tf32_flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32(flags):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@contextlib.contextmanager
def model_guard(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Iterator[nn.Module]:
    """Yield the model to measure: eval mode, compute dtype, no grad, TF32 off for
    float32 on CUDA.  On exit (also on exceptions) every module's ``training`` flag
    and the TF32 flags are restored.  When ``dtype`` differs from the model's, a
    cast *copy* is measured and the user's model is never touched.
    """
    modes = [(m, m.training) for m in model.modules()]
    tf32 = _tf32_flags()
    try:
        target = model
        if _model_dtype(model) != dtype and any(True for _ in _floating_tensors(model)):
            target = copy.deepcopy(model).to(dtype)
        target.eval()
        if device.type == "cuda" and dtype == torch.float32:
            _set_tf32((False, False))
        with torch.no_grad():
            yield target
    finally:
        for m, flag in modes:
            m.training = flag
        _set_tf32(tf32)


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


# ---------------------------------------------------------------------------
# Chunk sizing
# ---------------------------------------------------------------------------


def memory_budget(device: torch.device) -> int:
    """Bytes one chunk may use: 40% of free GPU memory, or on CPU 25% of available
    RAM capped at 2 GiB (larger CPU batches were not faster in our measurements and
    the 10,000-point MNIST run must stay under 4 GiB).  ``LCFAST_CHUNK_BYTES``
    overrides."""
    env = os.environ.get("LCFAST_CHUNK_BYTES")
    if env:
        return int(env)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.4)
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    cap = 2 << 30
    return min(cap, avail // 4) if avail else cap


class SizeProbe(TorchFunctionMode):
    """Records the largest tensor any call of the forward returns (bytes)."""

    def __init__(self):
        super().__init__()
        self.max_bytes = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):  # custom ops may return tuples
            if isinstance(t, torch.Tensor):
                self.max_bytes = max(self.max_bytes, t.numel() * t.element_size())
        return out


def points_per_chunk(probe_bytes_per_row: float, input_bytes_per_point: int, V: int,
                     device: torch.device, max_rows: int) -> int:
    """How many points fit the memory budget.  Live memory of a forward is taken as
    4x its largest intermediate (input, output, a residual and a workspace)."""
    per_point = V * (4 * probe_bytes_per_row + 2 * input_bytes_per_point / V) + 1
    n = int(memory_budget(device) // per_point)
    return max(1, min(n, max(1, max_rows // V)))


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(n, s + size)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

