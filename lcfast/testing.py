"""Checking a backend against float64 (docs/design.md#testing, second tier).

A backend that computes in a lower precision, or in another order (fused GEMM, the
antisymmetric first layer), may legitimately disagree with float64 on a neuron whose
float64 value is within rounding distance of zero at some vertex.  The rule that
decides "within rounding distance" and "few enough" lives in :mod:`lcfast.tolerance`;
here are the test-facing helpers: the float64 oracle (reference counts, ambiguous
neurons, per point) and :func:`assert_counts_match`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .engine.base import model_device, model_guard
from .engine.reference import crossing_counts
from .frames import random_frames
from .neighborhood import vertices
from .sites import SiteSpec
from .tolerance import (AMBIGUOUS_BACKGROUND, AMBIGUOUS_FLOOR, AMBIGUOUS_RATIO, K, ScaleTracker, ToleranceReport,
                        ambiguous_counts, check_counts, unit_roundoff)

from .engine.intercept import SiteHandler, SiteInterceptor

__all__ = ["Float64Oracle", "float64_oracle", "assert_counts_match", "site_values", "low_precision_criterion"]


class _OracleHandler(SiteHandler):
    """float64 crossing counts, and each site's ambiguous neurons for ``dtype``."""

    def __init__(self, tracker: ScaleTracker, dtype: torch.dtype, k: float, keep: bool = False):
        self.tracker, self.dtype, self.k = tracker, dtype, k
        self.ambiguous: list[torch.Tensor] = []
        self.values: list[tuple[torch.Tensor, torch.Tensor]] = [] if keep else None

    def count(self, pre, V):
        with self.tracker.paused():
            scale = self.tracker.scale(pre)
            self.ambiguous.append(ambiguous_counts(pre, scale, V, self.dtype, self.k))
            if self.values is not None:
                self.values.append((pre.detach().clone(), scale.clone()))
            return crossing_counts(pre, V)


class _Capture(SiteHandler):
    def __init__(self):
        self.values: list[torch.Tensor] = []

    def count(self, pre, V):
        self.values.append(pre.detach().clone())
        return crossing_counts(pre, V)


@dataclass
class Float64Oracle:
    """The float64 oracle of ``N`` points and ``L`` sites.

    Attributes:
        counts: ``(N, L)`` float64 crossing counts.
        ambiguous: ``(N, L)`` neurons within ``k * u(dtype) * S`` of zero at some vertex.
        neurons: ``(L,)``; sites: ``L`` names.
        dtype: the compute dtype whose rounding ``ambiguous`` allows for.
        unknown_ops: ATen ops seen without a scale rule (should be empty).
    """

    counts: torch.Tensor
    ambiguous: torch.Tensor
    neurons: torch.Tensor
    sites: list[str]
    dtype: torch.dtype
    unknown_ops: set[str]


def _frames(x, directions, i, n_dirs, seed, ids_t, device, dtype):
    S = tuple(x.shape[1:])
    if directions is None:
        return random_frames(S, n_dirs, seed, ids_t[i:i + 1], device=device)
    if directions.dim() == x.dim():
        return directions.to(device=device, dtype=dtype)
    return directions[i:i + 1].to(device=device, dtype=dtype)


def float64_oracle(model: nn.Module, x: torch.Tensor, *, radius: float, directions: torch.Tensor | None = None,
                   n_dirs: int = 25, seed: int = 0, ids=None, sites="activations",
                   dtype: torch.dtype = torch.float32, k: float = K) -> Float64Oracle:
    """Float64 counts plus, per (point, site), the neurons whose crossing status the
    rounding of ``dtype`` may flip, with the scale rule of :mod:`lcfast.tolerance`.

    Args:
        model: any model (left as found; a float64 copy is measured).
        x: ``(N, *S)`` points.
        radius, n_dirs, seed, ids, sites: as :func:`lcfast.local_complexity`.
        directions: ``(P, *S)``, ``(N, P, *S)`` or ``None`` (then the same per-point
            frames as :func:`lcfast.local_complexity` with ``seed``/``ids``).
        dtype: the compute dtype of the backend being checked.
        k: the safety factor on ``u * S`` (default :data:`lcfast.tolerance.K`).

    Returns:
        :class:`Float64Oracle` with ``counts``/``ambiguous`` ``(N, L)``.
    """
    unit_roundoff(dtype)  # TypeError for a non-floating dtype
    N = x.shape[0]
    device = model_device(model, x.device)
    ids_t = torch.arange(N) if ids is None else torch.as_tensor(ids).long()
    spec = SiteSpec.resolve(model, sites)
    out_c, out_a, unknown = [], [], set()
    names, neurons = None, None
    with model_guard(model, device, torch.float64) as m:
        for i in range(N):
            xi = x[i:i + 1].to(device=device, dtype=torch.float64)
            d = _frames(x, directions, i, n_dirs, seed, ids_t, device, torch.float64)
            V = 2 * d.shape[-x.dim()]
            tracker = ScaleTracker(k * unit_roundoff(dtype))
            h = _OracleHandler(tracker, dtype, k)
            interceptor = SiteInterceptor(m, spec, h, V, V)
            with tracker, interceptor:
                m(vertices(xi, d, radius))
            out_c.append(interceptor.counts(1).cpu())
            out_a.append(torch.stack([a.cpu() for a in h.ambiguous], 1) if h.ambiguous
                         else torch.zeros(1, 0, dtype=torch.long))
            names, neurons = interceptor.names, interceptor.neurons
            unknown |= tracker.unknown
    L = len(names or [])
    cat = (lambda t: torch.cat(t)) if N else (lambda t: torch.zeros(0, L, dtype=torch.long))
    return Float64Oracle(cat(out_c), cat(out_a), torch.tensor(neurons or [], dtype=torch.long), names or [],
                         dtype, unknown)


def site_values(model: nn.Module, x: torch.Tensor, directions: torch.Tensor, radius: float,
                dtype: torch.dtype, k: float = K) -> list[tuple[torch.Tensor, ...]]:
    """Raw site values of the vertices of ``x`` (all points in one batch).

    Args:
        x: ``(N, *S)``; directions: ``(P, *S)`` or ``(N, P, *S)``.
        dtype: compute dtype.

    Returns:
        per site, ``(z,)`` ``(N*2P, *F)`` in ``dtype``; for ``dtype=torch.float64``
        ``(z, S)`` with the scales of :class:`lcfast.tolerance.ScaleTracker` (its
        ReLU band set for float32).
    """
    N = x.shape[0]
    V = 2 * directions.shape[-x.dim()]
    spec = SiteSpec.resolve(model, "activations")
    with model_guard(model, model_device(model, x.device), dtype) as m:
        v = vertices(x.to(dtype), directions.to(dtype), radius)
        if dtype == torch.float64:
            tracker = ScaleTracker(k * unit_roundoff(torch.float32))
            h = _OracleHandler(tracker, torch.float32, k, keep=True)
            with tracker, SiteInterceptor(m, spec, h, N * V, V):
                m(v)
            return h.values
        h = _Capture()
        with SiteInterceptor(m, spec, h, N * V, V):
            m(v)
        return [(z,) for z in h.values]


def assert_counts_match(counts: torch.Tensor, oracle: Float64Oracle, *, ratio: float = AMBIGUOUS_RATIO,
                        background: float = AMBIGUOUS_BACKGROUND, floor: float = AMBIGUOUS_FLOOR) -> ToleranceReport:
    """Assert the tolerance rule (:func:`lcfast.tolerance.check_counts`) for ``counts``
    ``(N, L)`` against the oracle; returns the :class:`~lcfast.tolerance.ToleranceReport`
    (ambiguous and crossed totals, to report)."""
    return check_counts(counts, oracle.counts, oracle.ambiguous, oracle.neurons, sites=oracle.sites, ratio=ratio,
                        background=background, floor=floor)


def low_precision_criterion(counts: torch.Tensor, ref: torch.Tensor) -> str | None:
    """Issue 10's accuracy criterion for low-precision (bf16/fp16) counts: total within
    ``max(1%, 2)`` of float64's and every site within ``max(2%, 2)``.

    Args:
        counts: ``(N, L)`` counts to judge.
        ref: ``(N, L)`` float64 counts of the same points and directions.

    Returns:
        ``None`` when met, else why not (the first total or site that misses).
    """
    tot, tref = int(counts.sum()), int(ref.sum())
    if abs(tot - tref) > max(0.01 * tref, 2):
        return f"total {tot} vs float64 {tref}"
    for l, (a, b) in enumerate(zip(counts.sum(0).tolist(), ref.sum(0).tolist())):
        if abs(a - b) > max(0.02 * b, 2):
            return f"site {l}: {a} vs float64 {b}"
    return None
