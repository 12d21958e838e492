"""Checking a backend against float64 (DESIGN.md section 5, second tier).

A backend that computes in a lower precision, or in another order (fused GEMM,
antisymmetric first layer), may legitimately disagree with float64 on a neuron whose
float64 pre-activation is within rounding distance of zero at some vertex.  These
helpers measure the float64 oracle *with* the set of such ambiguous neurons, and
assert that counts agree everywhere else and that the excluded fraction is small
(so the check can fail).
"""
from __future__ import annotations


from dataclasses import dataclass

import torch
import torch.nn as nn

from .engine.base import model_guard, model_device
from .engine.reference import crossing_counts
from .neighborhood import random_frames, vertices
from .sites import SiteHandler, SiteInterceptor, SiteSpec

__all__ = ["REL_TOL", "Float64Oracle", "float64_oracle", "assert_counts_match", "ambiguous_neurons"]

#: Relative tolerance of a pre-activation per compute dtype (times the site's largest
#: |value| of that point).  float32: ~1000 ulps covers accumulation over a few
#: thousand-term dot products through a dozen layers; bf16/fp16 likewise in their ulps.
REL_TOL = {
    torch.float64: 0.0,
    torch.float32: 1e-4,
    torch.float16: 2e-2,
    torch.bfloat16: 1e-1,
}


class _MarginHandler(SiteHandler):
    def __init__(self, rel_tol: float):
        self.rel_tol = rel_tol
        self.ambiguous: list[torch.Tensor] = []

    def count(self, pre, V):
        self.ambiguous.append(ambiguous_neurons(pre, V, self.rel_tol))
        return crossing_counts(pre, V)


def ambiguous_neurons(pre: torch.Tensor, V: int, rel_tol: float) -> torch.Tensor:
    """The tolerance rule on one site: ``LongTensor (n,)``, neurons of each point whose
    value at some vertex is within ``rel_tol * max(1, max |pre| of the point)`` of zero.

    Args:
        pre: ``(n * V, *F)`` float64 site values, the ``V`` vertices of a point contiguous.
        V: vertices per point.
        rel_tol: e.g. ``REL_TOL[compute dtype]``.
    """
    n = pre.shape[0] // V
    z = pre.reshape(n, V, pre[0].numel() if n else 0)
    scale = z.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return (z.abs() <= rel_tol * scale).any(dim=1).sum(1)


@dataclass
class Float64Oracle:
    """``counts`` ``(N, L)`` in float64, ``ambiguous`` ``(N, L)``: neurons whose status
    may flip under the given tolerance, ``neurons`` ``(L,)``, ``sites``."""

    counts: torch.Tensor
    ambiguous: torch.Tensor
    neurons: torch.Tensor
    sites: list[str]


def float64_oracle(model: nn.Module, x: torch.Tensor, *, radius: float, directions: torch.Tensor | None = None,
                   n_dirs: int = 25, seed: int = 0, ids=None, sites="activations",
                   rel_tol: float = 1e-4) -> Float64Oracle:
    """Float64 reference counts plus the ambiguous-neuron counts, point by point.

    Args:
        x: ``(N, *S)``; directions: ``(P, *S)`` or ``(N, P, *S)`` or ``None`` (then the
        same per-point frames as :func:`lcfast.local_complexity` with ``seed``/``ids``).
    """
    N, S = x.shape[0], tuple(x.shape[1:])
    device = model_device(model, x.device)
    ids_t = torch.arange(N) if ids is None else torch.as_tensor(ids).long()
    spec = SiteSpec.resolve(model, sites)
    out_c, out_a = [], []
    names, neurons = None, None
    with model_guard(model, device, torch.float64) as m:
        for i in range(N):
            xi = x[i:i + 1].to(device=device, dtype=torch.float64)
            if directions is None:
                d = random_frames(S, n_dirs, seed, ids_t[i:i + 1], device=device)
            elif directions.dim() == x.dim():
                d = directions.to(device=device, dtype=torch.float64)
            else:
                d = directions[i:i + 1].to(device=device, dtype=torch.float64)
            P = d.shape[-len(S) - 1]
            h = _MarginHandler(rel_tol)
            icpt = SiteInterceptor(m, spec, h, 2 * P, 2 * P)
            with icpt:
                m(vertices(xi, d, radius))
            out_c.append(icpt.counts(1).cpu())
            out_a.append(torch.stack([a.cpu() for a in h.ambiguous], 1) if h.ambiguous
                         else torch.zeros(1, 0, dtype=torch.long))
            names, neurons = icpt.names, icpt.neurons
    L = len(names or [])
    cat = (lambda t: torch.cat(t)) if N else (lambda t: torch.zeros(0, L, dtype=torch.long))
    return Float64Oracle(cat(out_c), cat(out_a), torch.tensor(neurons or [], dtype=torch.long), names or [])


def assert_counts_match(counts: torch.Tensor, oracle: Float64Oracle, max_fraction: float = 0.01) -> float:
    """Assert ``|counts - oracle.counts| <= oracle.ambiguous`` everywhere and that the
    ambiguous neurons are at most ``max_fraction`` of all (point, neuron) pairs.
    Returns the ambiguous fraction."""
    counts = counts.cpu()
    if counts.shape != oracle.counts.shape:
        raise AssertionError(f"counts shape {tuple(counts.shape)} != oracle {tuple(oracle.counts.shape)}")
    total = oracle.counts.shape[0] * int(oracle.neurons.sum())
    frac = float(oracle.ambiguous.sum()) / total if total else 0.0
    if frac > max_fraction:
        raise AssertionError(f"{frac:.2%} of neurons are within tolerance of zero (> {max_fraction:.2%}): "
                             "the comparison would be too loose to fail")
    bad = (counts - oracle.counts).abs() > oracle.ambiguous
    if bool(bad.any()):
        n, l = [int(v) for v in bad.nonzero()[0]]
        raise AssertionError(
            f"{int(bad.sum())} (point, site) counts differ beyond the ambiguous neurons; first: point {n}, "
            f"site {oracle.sites[l]!r}: got {int(counts[n, l])}, float64 {int(oracle.counts[n, l])}, "
            f"ambiguous {int(oracle.ambiguous[n, l])}")
    return frac



