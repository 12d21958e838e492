"""A workload built on a device: model and points from :mod:`lcfast.zoo` (the same
definitions as ``lcfast measure``), the per-point frames, and (lazily) the reference
counts and the float64 oracle every method is checked against."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import zoo
from .workloads import Workload

__all__ = ["Prepared", "prepare", "build_frames", "sync", "median_seconds"]


def build_frames(shape, P: int, seed: int, n: int, device: torch.device, dtype: torch.dtype,
                 block: int = 64) -> torch.Tensor:
    """The per-point frames ``(n, P, *S)`` that ``local_complexity`` would draw for ids
    ``0..n-1``, built ``block`` points at a time (a 1,000-point ResNet set would need
    30 GB of float32 scratch in one call)."""
    from ..frames import random_frames
    out = torch.empty(n, P, *shape, device=device, dtype=dtype)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        out[lo:hi] = random_frames(shape, P, seed, torch.arange(lo, hi), device=device, dtype=dtype)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, rounds: int, warmup: bool = True) -> float:
    """Median wall seconds of ``rounds`` calls of ``fn`` (the device synchronised after
    each), after one untimed call when ``warmup``."""
    if warmup:
        fn()
        sync(device)
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


@dataclasses.dataclass
class Prepared:
    """A workload built on a device: model, points, frames, and (lazily) the
    reference counts and the float64 oracle on the first ``verify`` points."""

    workload: Workload
    device: torch.device
    dtype: torch.dtype
    model: nn.Module
    x: torch.Tensor
    frames: torch.Tensor
    data: str
    build_s: float
    _ref: tuple[torch.Tensor, list[str]] | None = None
    _oracle: Any = None

    @property
    def V(self) -> int:
        return 2 * self.workload.n_dirs

    def chunks(self):
        n, c = self.workload.n, self.workload.chunk
        return [(lo, min(n, lo + c)) for lo in range(0, n, c)]

    def lc(self, model: nn.Module, backend: str):
        from ..api import local_complexity
        w = self.workload
        return local_complexity(model, self.x, radius=w.radius, directions=self.frames, backend=backend,
                                dtype=self.dtype, chunk_size=w.chunk)

    def reference(self) -> tuple[torch.Tensor, list[str]]:
        if self._ref is None:
            r = self.lc(self.model, "reference")
            self._ref = (r.counts.cpu(), list(r.sites))
        return self._ref

    def oracle(self):
        """The float64 oracle (:func:`lcfast.testing.float64_oracle`, its tolerance at
        float32, the rule's default compute dtype) on the first ``verify`` points."""
        if self._oracle is None:
            from ..testing import float64_oracle
            if self.dtype != torch.float32:
                raise ValueError(f"workload {self.workload.name!r}: the float64 check is set up for float32 "
                                 f"workloads, got dtype {self.workload.dtype}")
            k = max(1, min(self.workload.verify, self.workload.n))
            self._oracle = float64_oracle(self.model, self.x[:k], radius=self.workload.radius,
                                          directions=self.frames[:k])
        return self._oracle


def prepare(w: Workload, device: torch.device | str) -> Prepared:
    """Build model, points and frames of ``w`` on ``device`` (not timed)."""
    device = torch.device(device)
    if w.n == 0:
        raise ValueError(f"workload {w.name!r} is not run at size {w.size!r}: {w.skip}")
    t0 = time.perf_counter()
    dtype = getattr(torch, w.dtype)
    model = zoo.build_model(w.model, seed=w.seed).to(device=device, dtype=dtype).eval()
    x, data = zoo.build_points(w.data, w.n, w.shape, seed=w.seed, fallback=True)
    x = x.to(device=device, dtype=dtype)
    frames = build_frames(w.shape, w.n_dirs, w.seed, w.n, device, dtype)
    sync(device)
    return Prepared(w, device, dtype, model, x, frames, data, time.perf_counter() - t0)
