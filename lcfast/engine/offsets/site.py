"""The one adapter between the site interceptor and the offsets engine.

The interceptor (:class:`lcfast.engine.intercept.SiteInterceptor`) decides what a site is
and names it; at a site it hands this handler the raw site argument, here an
:class:`~.tensor.OffsetTensor`.  The handler tests the crossing rule on ``c + d``
(three-valued signs over the ``2P`` vertices) and, for ReLU/LeakyReLU, returns the
activated offset tensor from the same vertex values (exact case split).  Other
activations are counted, then the model's own call runs (and reaches the general
rule through ``__torch_dispatch__``).  All coupling to the interceptor's protocol is
in this file.
"""
from __future__ import annotations

import torch

from ...sites import SiteSpec
from ..intercept import ActCall, Site, SiteHandler, SiteInterceptor
from .nonlinear import crossed, piecewise, scaled_counts, site_counts
from .tensor import OffsetTensor

__all__ = ["OffsetsSiteHandler", "make_interceptor"]

#: activation kinds with an exact offsets rule at the site
PIECEWISE = {"relu", "leaky_relu"}


def _plain_counts(pre: torch.Tensor, V: int) -> torch.Tensor:
    """Crossing counts of a site value that does not vary (a plain tensor)."""
    n = pre.shape[0] // V
    z = pre.reshape(n, V, -1)
    return crossed(z.amin(1), z.amax(1)).sum(1)


class OffsetsSiteHandler(SiteHandler):
    """Site handler of the offsets engine: ``(site value) -> (activated value, counts (N,))``.

    Args:
        scales: optional offset scales ``k`` (other radii ``k * r``); each site then
            also records :func:`~.nonlinear.scaled_counts` ``(N, K)`` in
            :attr:`scaled` (valid for the points still antisymmetric at that site,
            listed as ``broken`` otherwise).
    """

    def __init__(self, scales=None):
        self.scales = scales
        self.scaled: list[torch.Tensor] = []
        self.broken: list[torch.Tensor | None] = []
        #: per site, in call order: ambiguous neurons per point ``(N,)``, ``None`` when the
        #: site was reached without a band (unbounded), ``False`` when bands are not tracked
        self.ambiguous: list = []

    def site(self, pre, V: int, call: ActCall | None):
        """Counts ``LongTensor (N,)`` and, when ``call`` is given, the activation output."""
        if self.scales is not None:
            if not isinstance(pre, OffsetTensor):
                raise TypeError("several radii need every site value to vary with the input")
            self.scaled.append(scaled_counts(pre, self.scales))
            self.broken.append(pre.bidx)
        if not isinstance(pre, OffsetTensor):
            counts = _plain_counts(pre, V)
            self.ambiguous.append(torch.zeros_like(counts))  # a constant: exact in every dtype
            return (call.run() if call is not None else None), counts
        if call is not None and call.kind in PIECEWISE:
            out, counts, amb = piecewise(pre, call.slope, count=True)
            if call.inplace:
                out = pre.assign(out)
        else:
            counts, amb = site_counts(pre)
            out = call.run() if call is not None else None
        self.ambiguous.append(amb if pre.ctx.track_band else False)
        return out, counts

    # -- the interception protocol (lcfast.engine.intercept) -----------------------
    def batch_dim(self, value, rows: int):
        """An offset tensor says where its batch is (tracked by provenance); a plain
        tensor at a site does not vary with the input, and is counted by the default."""
        if isinstance(value, OffsetTensor):
            return value.lay.bdim
        return super().batch_dim(value, rows)

    def count(self, pre, V):
        return self.site(pre, V, None)[1]

    def handle(self, site: Site, call: ActCall | None):
        out, counts = self.site(site.value, site.V, call)
        return (site.value if call is None else out), counts


def make_interceptor(model, spec: SiteSpec, rows: int, V: int, handler=None) -> SiteInterceptor:
    return SiteInterceptor(model, spec, handler or OffsetsSiteHandler(), rows, V)
