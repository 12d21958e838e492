"""Which backend ``backend="auto"`` runs, and what happens when a backend's first
chunk fails.

The policy (README "GPU status"; issue 14):

1. **auto on CPU**: ``native``, else ``reference`` (both are tested in CI on CPU).
2. **auto on CUDA**: the simplest verified path first.  The Triton backend reorders
   arithmetic (fused GEMM, folded BatchNorm, FMA contraction, its own ``exp``), so its
   counts are not bit-identical to the reference's; ``auto`` picks it only on a
   device class listed in :data:`VERIFIED_TRITON`, i.e. one where
   ``benchmarks/gpu_check.sh`` has passed.  Everywhere else (today: every GPU)
   ``auto`` runs ``native`` (a plain per-neuron kernel on the model's own
   pre-activations), else ``reference``.  ``backend="triton"`` still runs Triton
   when asked for by name.
3. **Fallback**: when a backend's *first* chunk raises (a kernel that does not
   compile or launch on this GPU, driver or Triton version), the chunk is re-run on
   the next backend of :data:`FALLBACK` (triton -> native -> reference) with a
   ``RuntimeWarning``; ``LCResult.meta`` records it.  This holds for a named backend
   too.  Errors after a first chunk succeeded, and out-of-memory errors, are raised:
   they are not compile or launch failures.  The reference never falls back.
"""
from __future__ import annotations

import warnings

import torch

from . import BACKENDS, get_backend, why_unavailable
from ..frames import FactoredFrames
from ..oom import is_out_of_memory
from .base import Backend, ChunkResult

__all__ = ["VERIFIED_TRITON", "FALLBACK", "device_class", "auto_order", "FallbackEngine", "engine_for"]

#: Device classes (``torch.cuda.get_device_name()``, e.g. ``"NVIDIA H200"``) on which
#: ``benchmarks/gpu_check.sh`` passed for the Triton backend *and* Triton is worth
#: picking over native.  Add a class only with its committed result file under
#: ``benchmarks/results/``.  Empty: on the one GPU run so far (NVIDIA H200,
#: benchmarks/results/nvidia-h200/) Triton was correct but not faster than native
#: (ResNet18 224 px, 1,000 points: 4.62 s vs 4.79 s; MNIST MLP: 12.2 ms vs 6.8 ms).
VERIFIED_TRITON: frozenset[str] = frozenset()

#: Backend tried next when a backend's first chunk fails.
FALLBACK = {"triton": "native", "native": "reference"}


def device_class(device: torch.device) -> str:
    """``"cpu"``, or the CUDA device's name (``torch.cuda.get_device_name``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cuda (not available)"
    return device.type


def auto_order(device_type: str, dev_class: str) -> tuple[str, ...]:
    """Backends ``"auto"`` tries, in order, on a device of type ``device_type``
    (``"cpu"``, ``"cuda"``) and class ``dev_class`` (see :func:`device_class`)."""
    if device_type == "cuda" and dev_class in VERIFIED_TRITON:
        return ("triton", "native", "reference")
    if device_type in ("cuda", "cpu"):
        return ("native", "reference")
    return ("reference",)


def _chain(name: str) -> list[str]:
    out = [name]
    while out[-1] in FALLBACK and FALLBACK[out[-1]] not in out:
        out.append(FALLBACK[out[-1]])
    return out


class FallbackEngine:
    """A backend that hands its first chunk to the next backend of its chain when it
    raises (see the module docstring).  Same interface as :class:`Backend`
    (``name``, ``run_chunk``); :attr:`fallbacks` lists ``"from -> to: error"``.

    Args:
        engines: the backend first tried, then the ones to fall back to, in order;
            either instances or names (a name that cannot run on ``device`` is skipped).
        device: the device (for names).
    """

    def __init__(self, engines: list, device: torch.device | None = None):
        self._queue = list(engines)
        self._device = device
        self._engine: Backend = self._next()
        self._first_done = False
        self.fallbacks: list[str] = []

    def _next(self) -> Backend | None:
        while self._queue:
            e = self._queue.pop(0)
            if not isinstance(e, str):
                return e
            if why_unavailable(e, self._device) is None:
                return get_backend(e, self._device)
        return None

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def factored_frames(self) -> bool:
        """Whether the current backend takes :class:`lcfast.frames.FactoredFrames`."""
        return self._engine.factored_frames

    def _call(self, args, kwargs) -> ChunkResult:
        """The current backend's ``run_chunk``, factored frames multiplied out for a backend
        that does not take them (the first chunk may have been planned for another)."""
        if not self._engine.factored_frames:
            args = tuple(a.dense(a.gauss.dtype) if isinstance(a, FactoredFrames) else a for a in args)
            kwargs = {k: (v.dense(v.gauss.dtype) if isinstance(v, FactoredFrames) else v) for k, v in kwargs.items()}
        return self._engine.run_chunk(*args, **kwargs)

    @property
    def meta(self) -> dict:
        """``{"fallback": [...]}`` when a fallback happened, else ``{}`` (for LCResult.meta)."""
        return {"fallback": list(self.fallbacks)} if self.fallbacks else {}

    def run_chunk(self, *args, **kwargs) -> ChunkResult:
        """:meth:`Backend.run_chunk` of the current backend; on the first chunk, a failure
        moves to the next backend (with a ``RuntimeWarning``) and re-runs the chunk."""
        if self._first_done:
            return self._call(args, kwargs)
        while True:
            try:
                res = self._call(args, kwargs)
            except Exception as e:
                if is_out_of_memory(e):  # not a compile/launch failure: the chunk loop halves the chunk
                    raise
                nxt = self._next()
                if nxt is None:
                    raise
                msg = f"{self._engine.name} -> {nxt.name}: {type(e).__name__}: {str(e)[:300]}"
                warnings.warn(f"lcfast: backend {self._engine.name!r} failed on its first chunk; falling back "
                              f"to {nxt.name!r} ({msg})", RuntimeWarning, stacklevel=3)
                self.fallbacks.append(msg)
                self._engine = nxt
                continue
            self._first_done = True
            return res


def engine_for(name: str, device: torch.device) -> FallbackEngine:
    """The engine :func:`lcfast.local_complexity` runs for ``backend=name`` on ``device``.

    Raises:
        ValueError: unknown name.
        RuntimeError: a named backend that cannot run here, or no backend at all.
    """
    device = torch.device(device)
    if name == "auto":
        order = [n for n in auto_order(device.type, device_class(device)) if why_unavailable(n, device) is None]
        if not order:
            raise RuntimeError(f"no backend can run on {device}")
        return FallbackEngine(_chain(order[0]), device)
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {['auto', *BACKENDS]}, got {name!r}")
    first = get_backend(name, device)  # raises RuntimeError with the reason when unavailable
    return FallbackEngine([first, *_chain(name)[1:]], device)
